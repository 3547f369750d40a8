"""Cells: one (model, task, method, retention) each; the runs of a cell must agree or the cell is a conflict.

Also the per-document efficiency statistics of a cell's documents.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..stages import stage_fields
from .metrics import is_number
from .names import METHOD_ORDER, TASK_ORDER, method_label
from .runs import EvalRun, TaskOutcome

__all__ = ["Cell", "document_efficiency", "reached_retention", "resolve_cells", "visual_tokens_after_cuts"]

STAGES_MS = stage_fields()


@dataclass
class Cell:
    """One (model, task, method, retention) cell of the accuracy and per-document efficiency tables."""

    model: str
    task: str
    method: str
    retention: float | None
    status: str  # complete | incomplete | conflict | not run | not available (method or config not here)
    reason: str = ""
    run: EvalRun | None = None
    outcome: TaskOutcome | None = None
    runs: list[EvalRun] = field(default_factory=list)
    method_label: str = ""
    order: int = 0

    @property
    def key(self) -> tuple[str, str, str, float | None]:
        return (self.model, self.task, self.method, self.retention)


def _retention_key(value: Any) -> float | None:
    return round(float(value), 4) if is_number(value) else None


def resolve_cells(runs: Sequence[EvalRun], expected: Sequence[Mapping[str, Any]] = ()) -> list[Cell]:
    """Group runs into cells; refuse to mix runs that disagree; mark incomplete and missing cells."""
    grouped: dict[tuple, list[tuple[EvalRun, TaskOutcome]]] = defaultdict(list)
    labels: dict[tuple, str] = {}
    orders: dict[tuple, int] = {}
    unavailable: dict[tuple, str] = {}
    for index, spec in enumerate(expected):
        key = (spec["model"], spec["task"], spec["method"], _retention_key(spec.get("retention")))
        grouped.setdefault(key, [])
        labels[key] = spec.get("method_label") or method_label(spec["method"])
        orders[key] = index
        if spec.get("unavailable"):
            unavailable[key] = str(spec["unavailable"])
    for run in runs:
        for outcome in run.tasks.values():
            key = (run.model_name, outcome.task, run.method, _retention_key(run.retention))
            grouped[key].append((run, outcome))
            if run.cell:
                labels.setdefault(key, (run.cell.get("spec") or {}).get("method_label") or method_label(run.method))
    cells = []
    for key, members in grouped.items():
        model, task, method, retention = key
        cell = Cell(model=model, task=task, method=method, retention=retention, status="not run",
                    method_label=labels.get(key) or method_label(method), order=orders.get(key, 10**6))
        cell.runs = [run for run, _ in members]
        if not members:
            if key in unavailable:  # the grid could not run it here: one line saying why
                cell.status, cell.reason = "not available", unavailable[key]
            else:
                cell.reason = "no run found"
            cells.append(cell)
            continue
        identities = {}
        for run, outcome in members:
            identity = (run.pretrained, run.config_hash, outcome.docs_expected, str(run.limit))
            identities.setdefault(identity, []).append(run)
        if len(identities) > 1:
            cell.status = "conflict"
            parts = []
            for (pretrained, chash, docs, limit), group in identities.items():
                where = ", ".join(str(r.results_path or r.folder) for r in group)
                parts.append(f"model {pretrained}, config {chash}, {docs} samples, limit {limit}: {where}")
            cell.reason = "runs disagree (not mixed): " + " | ".join(parts)
            cells.append(cell)
            continue
        complete = [(r, o) for r, o in members if o.complete and not r.problems]
        chosen = max(complete or members, key=lambda m: m[0].date_id)
        cell.run, cell.outcome = chosen
        if complete:
            cell.status = "complete"
            if len(members) > 1:
                cell.reason = f"{len(members)} runs of the same config; the latest complete one used"
        else:
            cell.status = "incomplete"
            cell.reason = "; ".join(chosen[0].problems + chosen[1].problems)
        cells.append(cell)
    return sorted(cells, key=_cell_sort_key)


def _cell_sort_key(cell: Cell) -> tuple:
    method_rank = METHOD_ORDER.index(cell.method) if cell.method in METHOD_ORDER else len(METHOD_ORDER)
    task_rank = TASK_ORDER.index(cell.task) if cell.task in TASK_ORDER else len(TASK_ORDER)
    return (cell.model, method_rank, cell.method, -(cell.retention or 1.0), task_rank, cell.task)


def visual_tokens_after_cuts(visual_tokens: Any, llm_tokens_per_layer: Any) -> float | None:
    """Visual tokens left in the LLM's last layer: those spliced in, less what cuts inside the LLM removed
    (FastV, HoliTom's inner stage, EarlyTom's stage 3). None when a count is missing."""
    if not is_number(visual_tokens):
        return None
    per_layer = [v for v in (llm_tokens_per_layer or []) if is_number(v)]
    if len(per_layer) < 2:
        return float(visual_tokens)
    return float(visual_tokens) - (float(per_layer[0]) - float(per_layer[-1]))


def reached_retention(visual_tokens: Any, full_visual_tokens: Any) -> float | None:
    """The share of the full-token video kept, newline excluded on both sides: ``(N - 1) / (N_full - 1)``."""
    if not is_number(visual_tokens) or not is_number(full_visual_tokens) or full_visual_tokens <= 1:
        return None
    return (float(visual_tokens) - 1.0) / (float(full_visual_tokens) - 1.0)


def _median(values: Iterable[Any]) -> float | None:
    values = [float(v) for v in values if is_number(v)]
    return float(statistics.median(values)) if values else None


def _mean(values: Iterable[Any]) -> float | None:
    values = [float(v) for v in values if is_number(v)]
    return sum(values) / len(values) if values else None


def document_efficiency(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians over the documents without error (TTFT, stages, decoding) and token means."""
    ok = [r for r in rows if r.get("in_efficiency_log") and not r.get("error")]
    out: dict[str, Any] = {"docs_timed": len(ok), "docs_with_error": sum(1 for r in rows if r.get("error"))}
    out["ttft_ms"] = _median(r.get("ttft_ms") for r in ok)
    for name in STAGES_MS:
        out[name] = _median(r.get(name) for r in ok)
    others = []
    for r in ok:
        if is_number(r.get("ttft_ms")):
            others.append(max(0.0, r["ttft_ms"] - sum(r.get(s) or 0.0 for s in STAGES_MS if is_number(r.get(s)))))
    out["other_ms"] = _median(others)
    out["visual_tokens"] = _mean(r.get("visual_tokens") for r in ok)
    out["visual_tokens_last_layer"] = _mean(visual_tokens_after_cuts(r.get("visual_tokens"),
                                                                     r.get("llm_tokens_per_layer")) for r in ok)
    out["prompt_tokens"] = _mean(r.get("prompt_tokens") for r in ok)
    out["frames_out"] = _mean(r.get("frames_out") for r in ok)
    rates = [(r["generated_tokens"] - 1) / (r["decode_ms"] / 1000.0) for r in ok
             if is_number(r.get("generated_tokens")) and r["generated_tokens"] > 1
             and is_number(r.get("decode_ms")) and r["decode_ms"] > 0]
    out["decode_tokens_per_s"] = _median(rates)
    peaks = [r.get("peak_memory_mb") for r in ok if is_number(r.get("peak_memory_mb"))]
    out["peak_memory_gib"] = max(peaks) / 1024.0 if peaks else None
    kinds = sorted({str(r.get("peak_memory_kind")) for r in ok if r.get("peak_memory_kind")})
    out["peak_memory_kind"] = ", ".join(kinds)
    return out
