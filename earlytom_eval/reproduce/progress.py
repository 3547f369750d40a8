"""What a running grid prints: each cell in one line, and an ETA from the durations of the cells already run."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from .cells import read_cell
from .grid import Cell, EvalCell

__all__ = ["Progress", "describe", "fmt_seconds"]


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Progress:
    """Per-cell progress lines with an ETA from the durations of cells already run (this run or earlier)."""

    def __init__(self, cells: Sequence[Cell], out: Any = sys.stdout):
        self.out = out
        self.known: dict[str, list[float]] = {"eval": [], "bench": []}
        self.by_task: dict[tuple[str, str], list[float]] = {}
        for cell in cells:  # durations recorded by earlier invocations
            record = read_cell(cell.folder) or {}
            if record.get("state") == "complete" and isinstance(record.get("duration_s"), (int, float)):
                self.add(cell, float(record["duration_s"]), seed=True)
        self.started = time.monotonic()

    def add(self, cell: Cell, seconds: float, seed: bool = False) -> None:
        self.known[cell.kind].append(seconds)
        if isinstance(cell, EvalCell):
            self.by_task.setdefault((cell.model.name, cell.task.key), []).append(seconds)

    def estimate(self, cell: Cell) -> float | None:
        if isinstance(cell, EvalCell):
            same = self.by_task.get((cell.model.name, cell.task.key))
            if same:
                return sum(same) / len(same)
        values = self.known[cell.kind]
        return sum(values) / len(values) if values else None

    def eta(self, remaining: Sequence[Cell]) -> str:
        estimates = [self.estimate(c) for c in remaining]
        if any(e is None for e in estimates):
            known = sum(e for e in estimates if e is not None)
            unknown = sum(1 for e in estimates if e is None)
            return f">= {fmt_seconds(known)} ({unknown} cell(s) without an estimate yet)" if known else "unknown"
        return fmt_seconds(sum(estimates))  # type: ignore[arg-type]

    def print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def describe(cell: Cell) -> str:
    if isinstance(cell, EvalCell):
        ratio = "full tokens" if cell.retention is None else f"{cell.method.label} at {cell.retention * 100:g}%"
        return f"{cell.model.name} | {cell.task.key} | {ratio}"
    return f"{cell.model.name} | TTFT bench | {cell.settings} settings ({len(cell.configs)} configs)"
