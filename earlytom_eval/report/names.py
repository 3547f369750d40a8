"""How runs are named in the tables: task and method keys, their labels and their order."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .metrics import is_number

__all__ = [
    "METHOD_LABELS",
    "METHOD_ORDER",
    "TASK_ALIASES",
    "TASK_LABELS",
    "TASK_ORDER",
    "method_from_name",
    "method_label",
    "method_of",
    "task_key",
    "task_label",
]


TASK_LABELS = {
    "mvbench": "MVBench",
    "egoschema": "EgoSchema",
    "egoschema_subset": "EgoSchema (subset)",
    "longvideobench_val_v": "LongVideoBench",
    "videomme": "VideoMME",
    "mlvu": "MLVU dev",
    "earlytom_smoke": "smoke (synthetic)",
}

TASK_ORDER = ("mvbench", "egoschema", "egoschema_subset", "longvideobench_val_v", "videomme", "mlvu",
              "earlytom_smoke")

#: Run task names that are the same benchmark as a table column.
TASK_ALIASES = {"earlytom_videomme": "videomme", "earlytom_mlvu_dev": "mlvu", "mlvu_dev": "mlvu"}

METHOD_LABELS = {
    "full": "Full tokens",
    "earlytom": "EarlyTom",
    "earlytom_postenc": "EarlyTom w/o encoder stage",
    "visionzip": "VisionZip",
    "holitom": "HoliTom",
    "fastvid": "FastVID",
    "fastv": "FastV",
    "dycoke": "DyCoke",
    "tome": "ToMe",
}

#: Rows in this order (full tokens, EarlyTom and its ablation, then the peers as the spec lists them).
METHOD_ORDER = ("full", "earlytom", "earlytom_postenc", "visionzip", "holitom", "fastvid", "fastv", "dycoke", "tome")


def method_of(config: Mapping[str, Any] | None, fallback: str | None = None) -> tuple[str, float | None]:
    """``(method key, retention)`` of a config dict: ``full``, ``earlytom`` or ``earlytom_postenc``
    (EarlyTom with no prune layer, i.e. without the encoder stage)."""
    if not config:
        return (fallback or "unknown"), None
    method = config.get("method") or fallback or "unknown"
    if method == "full":
        return "full", None
    retention = config.get("retention")
    retention = round(float(retention), 4) if is_number(retention) else None
    if method == "earlytom" and not list(config.get("prune_layers") or []):
        return "earlytom_postenc", retention
    return str(method), retention


def method_from_name(name: str | None, method: str | None = None) -> tuple[str, float | None]:
    """``(method key, retention)`` from a config name like ``earlytom_r0.10`` (when the config itself is gone)."""
    if method == "full" or name == "full":
        return "full", None
    match = re.search(r"_r(\d*\.?\d+)$", str(name or ""))
    retention = round(float(match.group(1)), 4) if match else None
    key = str(name)[: match.start()] if match else (method or "unknown")
    return key or (method or "unknown"), retention


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def task_key(name: str) -> str:
    return TASK_ALIASES.get(name, name)


def task_label(name: str) -> str:
    return TASK_LABELS.get(name, name)
