"""The methods side by side: one row per model, method and retention ratio of the runs, with the average accuracy
and its % of full, the visual tokens (nominal ratio and the retention reached), TTFT, speedup, prefill FLOPs and
peak memory from the TTFT bench, and the published % of full beside ours."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .metrics import is_number
from .names import METHOD_ORDER, method_label
from .published import EARLYTOM_CLAIMS, PEER_PUBLISHED, RELATIVE_ACCURACY
from .table import Table, fmt, ratio_label

__all__ = ["bench_settings_for_comparison", "methods_table", "published_pct_of_full"]


def published_pct_of_full(method: str, retention: float | None) -> tuple[float | None, str]:
    """The published average accuracy as % of full for a method and ratio, and how to read it ('' if none)."""
    if retention is None:
        return None, ""
    entry = PEER_PUBLISHED.get(method, {}).get(round(retention, 4)) or {}
    if is_number(entry.get("pct_of_full")):
        return float(entry["pct_of_full"]), entry["source"]
    if method == "earlytom":
        return EARLYTOM_CLAIMS["relative_accuracy_min"], "> (EarlyTom's claim)"
    value = RELATIVE_ACCURACY.get(method_label(method), {}).get(round(retention, 4))
    return (value, "earlytom_paper_comparison") if is_number(value) else (None, "")


def bench_settings_for_comparison(bench_rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Per model, the bench row to compare methods in: the one that measured the most methods (the peers are
    benchmarked in one row only), VideoMME's on a tie."""
    counts: dict[tuple[str, str], set] = {}
    for row in bench_rows:
        counts.setdefault((row["model"], row["settings"]), set()).add(row["method"])
    out: dict[str, str] = {}
    for (model, settings), methods in counts.items():
        current = out.get(model)
        score = (len(methods), settings == "videomme")
        if current is None or score > (len(counts[(model, current)]), current == "videomme"):
            out[model] = settings
    return out


def methods_table(accuracy: Table, bench_rows: Sequence[Mapping[str, Any]]) -> Table:
    """One row per (model, method, ratio): accuracy, tokens, TTFT, FLOPs and memory side by side."""
    averages = {(r["model"], r["method"], r["retention"]): r for r in accuracy.data if r.get("task") == "average"}
    statuses: dict[tuple, str] = {}  # a row without an average says why: its cells' status (not available, ...)
    for r in accuracy.data:
        if r.get("task") != "average" and r.get("status") != "complete":
            statuses.setdefault((r["model"], r["method"], r["retention"]), r.get("status") or "not run")
    settings = bench_settings_for_comparison(bench_rows)
    bench = {(r["model"], r["method"], r["retention"]): r for r in bench_rows
             if settings.get(r["model"]) == r["settings"]}
    keys = list(dict.fromkeys([*averages, *bench]))
    keys.sort(key=lambda k: (k[0], METHOD_ORDER.index(k[1]) if k[1] in METHOD_ORDER else len(METHOD_ORDER), k[1],
                             -(k[2] or 1.0)))
    totals = [r["total_prefill_flops"] for r in bench.values() if is_number(r.get("total_prefill_flops"))]
    scale, unit = (1e12, "TFLOPs") if totals and max(totals) >= 1e12 else (1e9, "GFLOPs")
    columns = ["Model", "Method", "Retention", "Reached", "After LLM cuts", "Visual tokens", "Avg acc.",
               "% of full", "Published % of full", "TTFT ms", "Speedup", f"Prefill {unit}", "FLOPs % of full",
               "Peak mem GiB"]
    data, display = [], []
    for key in keys:
        model, method, retention = key
        acc, b = averages.get(key) or {}, bench.get(key) or {}
        label = acc.get("method_label") or b.get("method_label") or method_label(method)
        published, source = published_pct_of_full(method, retention)
        record = {
            "model": model, "method": method, "method_label": label, "retention": retention,
            "reached_retention": b.get("reached_retention"),
            "reached_retention_last_layer": b.get("reached_retention_last_layer"),
            "visual_tokens": b.get("visual_tokens"), "average_accuracy": acc.get("accuracy"),
            "pct_of_full": acc.get("pct_of_full"), "published_pct_of_full": published, "published_source": source,
            "ttft_ms": b.get("ttft_ms"), "speedup_vs_full": b.get("speedup_vs_full"),
            "total_prefill_flops": b.get("total_prefill_flops"), "flops_pct_of_full": b.get("flops_pct_of_full"),
            "peak_memory_gib": b.get("peak_memory_gib"), "bench_settings": b.get("settings"),
        }
        data.append(record)
        shown = (f"> {published:g}" if source.startswith(">") else fmt(published)) if is_number(published) else "—"
        display.append([
            model, label, ratio_label(method, retention),
            fmt(100.0 * b["reached_retention"], 1, "%") if is_number(b.get("reached_retention")) else "—",
            fmt(100.0 * b["reached_retention_last_layer"], 1, "%")
            if is_number(b.get("reached_retention_last_layer")) else "—",
            fmt(b.get("visual_tokens"), 0),
            fmt(acc.get("accuracy")) if is_number(acc.get("accuracy")) else statuses.get(key, "—"),
            fmt(acc.get("pct_of_full")) if method != "full" else "—", shown, fmt(b.get("ttft_ms")),
            fmt(b.get("speedup_vs_full"), 2, "x"),
            fmt(b["total_prefill_flops"] / scale if is_number(b.get("total_prefill_flops")) else None, 3),
            fmt(b.get("flops_pct_of_full"), 1, "%"), fmt(b.get("peak_memory_gib"), 2),
        ])
    used = ", ".join(f"{m}: {s}" for m, s in settings.items())
    notes = [
        "One row per method and ratio. Accuracy: the average of the accuracy table (its tasks), % of full = of the "
        "same model's full-token average. Retention = the nominal ratio; reached = the share of the full-token "
        "video spliced into the LLM, after LLM cuts = the share left in the LLM's last layer (newline excluded; "
        "FastV keeps every token into the LLM and cuts inside it; DyCoke cannot go below ~28% before the LLM).",
        "Tokens, TTFT (median), speedup (vs full tokens in the same run), prefill FLOPs and peak memory: the TTFT "
        "bench" + (f" ({used} settings)" if used else " (none here)") + "; per-stage FLOPs in the FLOPs table.",
        "Published % of full: the source's four-task average (HoliTom README table; the EarlyTom paper's "
        "comparison; EarlyTom's own claim is a bound), on LLaVA-OV-7B at 32 frames: compare only a run of that "
        "model; the published-number tables give each figure with its source.",
    ]
    return Table("methods", "Methods side by side", data, columns, display, notes, align="lll" + "r" * 11)
