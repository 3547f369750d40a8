"""The table every builder returns (rows for CSV, display rows for Markdown and LaTeX) and how a cell is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cells import Cell
from .metrics import is_number

__all__ = ["Table", "display_path", "fmt", "ratio_label", "status_mark"]


@dataclass
class Table:
    """One output table: machine-readable rows (CSV) and display rows (Markdown, LaTeX)."""

    name: str
    title: str
    data: list[dict[str, Any]]  # CSV rows (numbers)
    columns: list[str]  # display columns
    display: list[list[str]]  # display rows (strings)
    notes: list[str] = field(default_factory=list)
    align: str = ""  # LaTeX column alignment, one letter per column

    def data_column(self, name: str) -> list[Any]:
        return [row.get(name) for row in self.data]


def fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    if not is_number(value):
        return "—"
    return f"{value:.{digits}f}{suffix}"


def ratio_label(method: str, retention: float | None, full: str = "100%") -> str:
    """``25%`` for a retention of 0.25; ``full`` for full tokens."""
    return full if method == "full" or retention is None else f"{retention * 100:g}%"


def status_mark(cell: Cell | None) -> str:
    if cell is None:
        return "not run"
    if cell.status == "incomplete":
        outcome = cell.outcome
        docs = len(outcome.rows) if outcome else 0
        expected = outcome.docs_expected if outcome else None
        return f"incomplete ({docs}/{expected} docs)" if expected else "incomplete"
    return cell.status


def display_path(path: Path) -> str:
    """A path relative to the working folder when it lies inside it (committed tables carry no home paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
