"""The per-sample efficiency log: one JSON line per evaluated document, appended and flushed as soon as it is known.

A crash loses nothing already measured; one file per process under ``accelerate launch``. The README's "What
lands where" lists the fields (:data:`FIELDS`). Imports neither torch nor lmms-eval.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ..stages import stage_fields

__all__ = ["FIELDS", "EfficiencyLog", "default_log_path", "json_safe", "read_log", "summarize"]

FIELDS = (
    "task",
    "doc_id",
    "split",
    "rank",
    "model",
    "method",
    "config",
    "config_hash",
    "videos",
    "frames_in",
    "frames_per_layer",
    "frames_out",
    "rho_eff",
    "visual_tokens",
    "prompt_tokens",
    "llm_tokens_per_layer",
    "generated_tokens",
    "video_load_ms",
    "preprocess_ms",
    *stage_fields(),
    "ttft_ms",
    "decode_ms",
    "peak_memory_mb",
    "peak_memory_kind",
    "batch_size",
    "error",
    "time",
)

#: Suffix of the log file, after lmms-eval's ``<date>`` prefix (``<date>_results.json``, ``<date>_samples_*``).
SUFFIX = "_efficiency"


def default_log_path(output_dir: str | Path, date_id: str, rank: int = 0, world_size: int = 1) -> Path:
    """``<output_dir>/<date_id>_efficiency.jsonl`` (``_efficiency_rank<r>.jsonl`` with several processes)."""
    name = f"{date_id}{SUFFIX}" + (f"_rank{rank}" if world_size > 1 else "") + ".jsonl"
    return Path(output_dir) / name


def json_safe(value: Any) -> Any:
    """JSON-safe: tuples to lists, NaN/inf to None, numpy scalars to Python, anything else unknown to a string."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if hasattr(value, "item") and callable(value.item):
        try:
            return json_safe(value.item())
        except (TypeError, ValueError):
            return str(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


class EfficiencyLog:
    """Append-only JSONL writer; the file is created (with its folder) on the first record.

    Args:
        path: the file; appended to if it exists.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle: TextIO | None = None
        self._lock = threading.Lock()
        self.records = 0

    def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Write one document's line (known fields first, in :data:`FIELDS` order) and flush it."""
        line = {name: record.get(name) for name in FIELDS}
        line.update({k: v for k, v in record.items() if k not in line})
        if line.get("time") is None:
            line["time"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
        line = json_safe(line)
        text = json.dumps(line, ensure_ascii=False)
        with self._lock:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
            self._handle.write(text + "\n")
            self._handle.flush()
            self.records += 1
        return line

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.flush()
                os.fsync(self._handle.fileno())
                self._handle.close()
                self._handle = None

    def __del__(self) -> None:  # best effort; every line was already flushed
        try:
            self.close()
        except Exception:
            pass


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """All records of an efficiency log, or of any JSONL file (a partial last line, from a crash mid-write, is
    skipped)."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


_MEAN_FIELDS = (
    "frames_in",
    "frames_out",
    "visual_tokens",
    "prompt_tokens",
    "generated_tokens",
    "vision_encoder_ms",
    "compression_ms",
    "llm_prefill_ms",
    "ttft_ms",
    "decode_ms",
)


def summarize(records: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Means of the numeric fields over the documents without error, plus counts."""
    ok = [r for r in records if not r.get("error")]
    summary: dict[str, Any] = {"docs": len(records), "errors": len(records) - len(ok)}
    for name in _MEAN_FIELDS:
        values = [r[name] for r in ok if isinstance(r.get(name), (int, float))]
        summary[f"avg_{name}"] = sum(values) / len(values) if values else None
    peaks = [r["peak_memory_mb"] for r in ok if isinstance(r.get("peak_memory_mb"), (int, float))]
    summary["max_peak_memory_mb"] = max(peaks) if peaks else None
    return summary
