"""PNG plots of the aggregated tables (matplotlib, no display needed): accuracy against TTFT, TTFT by stage,
prefill FLOPs by stage; sized for a README, and a figure with nothing to show is not written."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt

from ..paths import slug
from ..stages import PREFILL_FLOP_STAGES, STAGE_LABELS
from .cells import document_efficiency
from .metrics import is_number
from .names import METHOD_ORDER, method_label, task_label
from .table import ratio_label
from .tables import BENCH_STAGES, Tables, flop_unit

__all__ = ["make_plots"]

#: One colour per stage, in pipeline order, the rest of the TTFT last.
STAGE_COLORS = dict(
    zip(BENCH_STAGES, ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#BBBBBB"), strict=True)
)
METHOD_STYLES = {
    "full": {"color": "black", "marker": "*", "markersize": 13},
    "earlytom": {"color": "#C44E52", "marker": "o", "markersize": 6},
    "earlytom_postenc": {"color": "#4C72B0", "marker": "s", "markersize": 6},
    "visionzip": {"color": "#55A868", "marker": "^", "markersize": 6},
    "holitom": {"color": "#8172B3", "marker": "D", "markersize": 5},
    "fastvid": {"color": "#DD8452", "marker": "v", "markersize": 6},
    "fastv": {"color": "#937860", "marker": "P", "markersize": 6},
    "dycoke": {"color": "#DA8BC3", "marker": "X", "markersize": 6},
    "tome": {"color": "#8C8C8C", "marker": "h", "markersize": 6},
}
WIDTH_IN = 9.5
DPI = 110


def _plt():
    matplotlib.use("Agg")  # files only, no display
    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8})
    return plt


def _style(method: str, index: int) -> dict[str, Any]:
    fallback = ["#55A868", "#8172B3", "#DD8452", "#937860"]
    return METHOD_STYLES.get(method, {"color": fallback[index % len(fallback)], "marker": "^", "markersize": 6})


def _suptitle(fig: Any, title: str, header: Sequence[str]) -> None:
    smoke = [h for h in header if "smoke" in h.lower()]
    text = title + ("\nCPU smoke run: tiny random-weight model, synthetic clips (not the paper's numbers)"
                    if smoke else "")
    fig.suptitle(text, fontsize=10)


def accuracy_vs_ttft(result: Tables, out: Path) -> list[Path]:
    points: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in result.cells:
        if cell.status != "complete" or cell.outcome is None or cell.outcome.accuracy is None:
            continue
        stats = document_efficiency(cell.outcome.rows)
        if not is_number(stats["ttft_ms"]):
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
                        ax.annotate(ratio_label(method, p["retention"], full="full"), (p["ttft"], p["accuracy"]),
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
        fig.legend(list(methods_seen.values()), list(methods_seen), loc="lower center",
                   ncol=min(5, len(methods_seen)), frameon=False)
        _suptitle(fig, f"Accuracy vs TTFT, {model}", result.header)
        fig.tight_layout(rect=(0, 0.07, 1, 0.95 if len(fig.texts) else 1))
        name = "accuracy_vs_ttft.png" if len(models) == 1 else f"accuracy_vs_ttft_{slug(model)}.png"
        path = out / name
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        written.append(path)
    return written


def _groups(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    out: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault((row["model"], row["settings"]), []).append(row)
    return out


def _bars(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """Bars in order: full, then per ratio (high to low) each method; label 'ratio\\nmethod'."""
    def rank(row: Mapping[str, Any]) -> tuple:
        method = row["method"]
        return (0 if method == "full" else 1, -(row["retention"] or 1.0),
                METHOD_ORDER.index(method) if method in METHOD_ORDER else 9, method)

    out = []
    for row in sorted(rows, key=rank):
        short = {"full": "full", "earlytom_postenc": "w/o enc."}.get(row["method"], method_label(row["method"]))
        ratio = ratio_label(row["method"], row["retention"], full="full")
        out.append(("full" if row["method"] == "full" else f"{ratio}\n{short}", row))
    return out


def _stacked(ax: Any, bars: list[tuple[str, Mapping[str, Any]]], stages: Sequence[str], key: str, scale: float,
             labels: Mapping[str, str]) -> None:
    x = list(range(len(bars)))
    bottom = [0.0] * len(bars)
    for stage in stages:
        values = [(row.get(key.format(stage)) or 0.0) / scale if is_number(row.get(key.format(stage))) else 0.0
                  for _, row in bars]
        if not any(values):
            continue
        ax.bar(x, values, bottom=bottom, color=STAGE_COLORS.get(stage, "#999999"), label=labels.get(stage, stage),
               width=0.7, edgecolor="white", linewidth=0.4)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(x)
    ax.set_xticklabels([label for label, _ in bars], fontsize=7)
    ax.grid(True, axis="y", linewidth=0.3, alpha=0.6)


def _stage_panels(
    groups: Mapping[tuple[str, str], list[Mapping[str, Any]]],
    draw: Callable[[Any, str, str, list[Mapping[str, Any]]], None],
    title: str,
    header: Sequence[str],
    path: Path,
    legend_columns: int,
) -> list[Path]:
    """One panel of stacked stage bars per (model, settings) group, two panels a row, one legend; writes ``path``."""
    plt = _plt()
    n = len(groups)
    cols = min(2, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(WIDTH_IN, 3.3 * nrows + 0.7), squeeze=False)
    for ax, ((model, settings), rows) in zip(axes.flat, groups.items()):
        draw(ax, model, settings, rows)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(legend_columns, len(labels)), frameon=False)
    _suptitle(fig, title, header)
    fig.tight_layout(rect=(0, 0.07, 1, 0.93))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return [path]


def ttft_breakdown(result: Tables, out: Path) -> list[Path]:
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
                rows.append(row)
        groups = _groups(rows)
        key, source = "{}", "evaluated documents"
    if not groups:
        return []

    def draw(ax: Any, model: str, settings: str, rows: list[Mapping[str, Any]]) -> None:
        _stacked(ax, _bars(rows), BENCH_STAGES, key, 1.0, STAGE_LABELS)
        ax.set_ylabel("median TTFT (ms)")
        ax.set_title(f"{model}, {settings} settings" if source == "benchmark" else f"{model}, {settings}")

    return _stage_panels(groups, draw, f"TTFT by stage ({source}; medians)", result.header,
                         out / "ttft_breakdown.png", legend_columns=7)


def flops_per_stage(result: Tables, out: Path) -> list[Path]:
    bench = next((t for t in result.tables if t.name == "bench"), None)
    if bench is None or not bench.data:
        return []
    scale, unit = flop_unit(bench.data)

    def draw(ax: Any, model: str, settings: str, rows: list[Mapping[str, Any]]) -> None:
        bars = _bars(rows)
        _stacked(ax, bars, PREFILL_FLOP_STAGES, "flops_{}", scale, STAGE_LABELS)
        for x, (_, row) in enumerate(bars):
            pct = row.get("flops_pct_of_full")
            total = row.get("total_prefill_flops")
            if is_number(pct) and is_number(total) and row["method"] != "full":
                ax.annotate(f"{pct:.0f}%", (x, total / scale), textcoords="offset points", xytext=(0, 2),
                            ha="center", fontsize=7)
        ax.set_ylabel(f"prefill {unit}")
        ax.set_title(f"{model}, {settings} settings")

    return _stage_panels(_groups(bench.data), draw,
                         "Prefill FLOPs by stage (real FLOPs, 2 per multiply-add; % = of full tokens)", result.header,
                         out / "flops_per_stage.png", legend_columns=len(PREFILL_FLOP_STAGES))


def make_plots(result: Tables, out: str | Path) -> list[Path]:
    """Write every plot that has data into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for plot in (accuracy_vs_ttft, ttft_breakdown, flops_per_stage):
        written += plot(result, out)
    return written
