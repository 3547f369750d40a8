"""PNG plots of the aggregated tables (matplotlib, no display needed).

* ``accuracy_vs_ttft.png``: per task, accuracy (%) against the median TTFT (ms) of the evaluated documents;
  one line per method across its retention ratios, full tokens as a reference point;
* ``ttft_breakdown.png``: stacked median TTFT per stage for each method at each ratio (the benchmark's
  stage timings; without a benchmark, the per-document medians of the evaluated runs);
* ``flops_per_stage.png``: stacked prefill FLOPs per stage for each method at each ratio (the benchmark's
  token counts).

Sized for a README (about 1000 px wide). A figure with nothing to show is not written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .tables import Tables

__all__ = ["make_plots"]

STAGE_COLORS = {
    "vision_encoder": "#4C72B0",
    "compression": "#DD8452",
    "projector_pooling": "#55A868",
    "llm_prefill": "#C44E52",
    "inner_merge": "#8172B3",
    "first_token": "#937860",
    "other": "#BBBBBB",
}
METHOD_STYLES = {
    "full": {"color": "black", "marker": "*", "markersize": 13},
    "earlytom": {"color": "#C44E52", "marker": "o", "markersize": 6},
    "earlytom_postenc": {"color": "#4C72B0", "marker": "s", "markersize": 6},
}
WIDTH_IN = 9.5
DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8})
    return plt


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ratio(method: str, retention: float | None) -> str:
    return "full" if method == "full" or retention is None else f"{retention * 100:g}%"


def _style(method: str, index: int) -> dict[str, Any]:
    fallback = ["#55A868", "#8172B3", "#DD8452", "#937860"]
    return METHOD_STYLES.get(method, {"color": fallback[index % len(fallback)], "marker": "^", "markersize": 6})


def _suptitle(fig: Any, title: str, header: Sequence[str]) -> None:
    smoke = [h for h in header if "smoke" in h.lower()]
    text = title + ("\nCPU smoke run: tiny random-weight model, synthetic clips (not the paper's numbers)"
                    if smoke else "")
    fig.suptitle(text, fontsize=10)


def accuracy_vs_ttft(result: Tables, out: Path) -> list[Path]:
    from .tables import document_efficiency, task_label

    points: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in result.cells:
        if cell.status != "complete" or cell.outcome is None or cell.outcome.accuracy is None:
            continue
        stats = document_efficiency(cell.outcome.rows)
        if not _num(stats["ttft_ms"]):
            continue
        points.setdefault((cell.model, cell.task), []).append(
            {"method": cell.method, "label": cell.method_label, "retention": cell.retention,
             "accuracy": cell.outcome.accuracy, "ttft": stats["ttft_ms"]})
    if not points:
        return []
    plt = _plt()
    written = []
    models = list(dict.fromkeys(m for m, _ in points))
    for model in models:
        tasks = [t for m, t in points if m == model]
        cols = min(3, len(tasks))
        rows = math.ceil(len(tasks) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(WIDTH_IN, 3.0 * rows + 0.6), squeeze=False)
        methods_seen: dict[str, Any] = {}
        for ax, task in zip(axes.flat, tasks):
            data = points[(model, task)]
            methods = list(dict.fromkeys(p["method"] for p in data))
            for index, method in enumerate(methods):
                mine = sorted((p for p in data if p["method"] == method), key=lambda p: p["ttft"])
                style = _style(method, index)
                line = ax.plot([p["ttft"] for p in mine], [p["accuracy"] for p in mine],
                               linestyle="none" if method == "full" else "-", label=mine[0]["label"], **style)[0]
                methods_seen.setdefault(mine[0]["label"], line)
                for p in mine:
                    if method != "full":
                        ax.annotate(_ratio(method, p["retention"]), (p["ttft"], p["accuracy"]),
                                    textcoords="offset points", xytext=(4, 4), fontsize=7, color=style["color"])
            full = [p for p in data if p["method"] == "full"]
            if full:
                ax.axhline(full[0]["accuracy"], color="black", linewidth=0.6, linestyle=":")
            values = [p["accuracy"] for p in data]
            if max(values) - min(values) < 1.0:  # flat (e.g. a random model's 0%): a readable window
                ax.set_ylim(max(-1.0, min(values) - 5.0), min(101.0, max(values) + 5.0))
            ax.set_title(task_label(task))
            ax.set_xlabel("median TTFT per document (ms)")
            ax.set_ylabel("accuracy (%)")
            ax.grid(True, linewidth=0.3, alpha=0.6)
            ax.margins(x=0.15, y=0.2)
        for ax in list(axes.flat)[len(tasks):]:
            ax.axis("off")
        fig.legend(list(methods_seen.values()), list(methods_seen), loc="lower center", ncol=len(methods_seen),
                   frameon=False)
        _suptitle(fig, f"Accuracy vs TTFT, {model}", result.header)
        fig.tight_layout(rect=(0, 0.07, 1, 0.95 if len(fig.texts) else 1))
        name = "accuracy_vs_ttft.png" if len(models) == 1 else f"accuracy_vs_ttft_{_slug(model)}.png"
        path = out / name
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        written.append(path)
    return written


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _groups(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    out: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault((row["model"], row["settings"]), []).append(row)
    return out


def _bars(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """Bars in order: full, then per ratio (high to low) each method; label 'ratio\\nmethod'."""
    from .tables import METHOD_ORDER

    def rank(row: Mapping[str, Any]) -> tuple:
        method = row["method"]
        return (0 if method == "full" else 1, -(row["retention"] or 1.0),
                METHOD_ORDER.index(method) if method in METHOD_ORDER else 9, method)

    out = []
    for row in sorted(rows, key=rank):
        short = {"full": "full", "earlytom": "EarlyTom", "earlytom_postenc": "w/o enc."}.get(row["method"],
                                                                                            row["method"])
        out.append(("full" if row["method"] == "full" else f"{_ratio(row['method'], row['retention'])}\n{short}",
                    row))
    return out


def _stacked(ax: Any, bars: list[tuple[str, Mapping[str, Any]]], stages: Sequence[str], key: str, scale: float,
             labels: Mapping[str, str]) -> None:
    x = list(range(len(bars)))
    bottom = [0.0] * len(bars)
    for stage in stages:
        values = [(row.get(key.format(stage)) or 0.0) / scale if _num(row.get(key.format(stage))) else 0.0
                  for _, row in bars]
        if not any(values):
            continue
        ax.bar(x, values, bottom=bottom, color=STAGE_COLORS.get(stage, "#999999"), label=labels.get(stage, stage),
               width=0.7, edgecolor="white", linewidth=0.4)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(x)
    ax.set_xticklabels([label for label, _ in bars], fontsize=7)
    ax.grid(True, axis="y", linewidth=0.3, alpha=0.6)


def ttft_breakdown(result: Tables, out: Path) -> list[Path]:
    from .tables import BENCH_STAGES, STAGE_LABELS, document_efficiency, task_label

    bench = next((t for t in result.tables if t.name == "bench"), None)
    groups = _groups(bench.data) if bench is not None else {}
    key, source = "{}_ms", "benchmark"
    if not groups:  # no benchmark: the evaluated documents' medians
        rows = []
        for cell in result.cells:
            if cell.status == "complete" and cell.outcome is not None:
                stats = document_efficiency(cell.outcome.rows)
                row = {"model": cell.model, "settings": task_label(cell.task), "method": cell.method,
                       "retention": cell.retention}
                row.update({s: stats.get(f"{s}_ms") for s in BENCH_STAGES})
                row["other"] = stats.get("other_ms")
                rows.append(row)
        groups = _groups(rows)
        key, source = "{}", "evaluated documents"
    if not groups:
        return []
    plt = _plt()
    n = len(groups)
    cols = min(2, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(WIDTH_IN, 3.3 * nrows + 0.7), squeeze=False)
    for ax, ((model, settings), rows) in zip(axes.flat, groups.items()):
        _stacked(ax, _bars(rows), BENCH_STAGES, key, 1.0, STAGE_LABELS)
        ax.set_ylabel("median TTFT (ms)")
        ax.set_title(f"{model}, {settings} settings" if source == "benchmark" else f"{model}, {settings}")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(7, len(labels)), frameon=False)
    _suptitle(fig, f"TTFT by stage ({source}; medians)", result.header)
    fig.tight_layout(rect=(0, 0.07, 1, 0.93))
    path = out / "ttft_breakdown.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return [path]


def flops_per_stage(result: Tables, out: Path) -> list[Path]:
    from .tables import FLOP_STAGES, STAGE_LABELS, _flop_unit

    bench = next((t for t in result.tables if t.name == "bench"), None)
    if bench is None or not bench.data:
        return []
    groups = _groups(bench.data)
    scale, unit = _flop_unit(bench.data)
    plt = _plt()
    n = len(groups)
    cols = min(2, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(WIDTH_IN, 3.3 * nrows + 0.7), squeeze=False)
    for ax, ((model, settings), rows) in zip(axes.flat, groups.items()):
        bars = _bars(rows)
        _stacked(ax, bars, FLOP_STAGES, "flops_{}", scale, STAGE_LABELS)
        for x, (_, row) in enumerate(bars):
            pct = row.get("flops_pct_of_full")
            total = row.get("total_prefill_flops")
            if _num(pct) and _num(total) and row["method"] != "full":
                ax.annotate(f"{pct:.0f}%", (x, total / scale), textcoords="offset points", xytext=(0, 2),
                            ha="center", fontsize=7)
        ax.set_ylabel(f"prefill {unit}")
        ax.set_title(f"{model}, {settings} settings")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    _suptitle(fig, "Prefill FLOPs by stage (real FLOPs, 2 per multiply-add; % = of full tokens)", result.header)
    fig.tight_layout(rect=(0, 0.07, 1, 0.93))
    path = out / "flops_per_stage.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return [path]


def make_plots(result: Tables, out: str | Path) -> list[Path]:
    """Write every plot that has data into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for plot in (accuracy_vs_ttft, ttft_breakdown, flops_per_stage):
        written += plot(result, out)
    return written
