"""The offline smoke set of the ``earlytom_smoke`` lmms-eval task, and the check of its runs' output files.

The clips have a known temporal structure (a static shot, a scene cut, motion, three shots), plus one corrupt
and one missing clip; the questions are VideoMME documents. lmms-eval exits 0 even when a run failed, so
:func:`check_run` checks the files. ``make smoke`` (README, "The smoke run") uses both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..video import synthetic_frames, write_video
from .efficiency_log import read_log

__all__ = ["SMOKE_TASK", "SmokeCheckError", "check_run", "smoke_documents", "write_smoke_data"]

SMOKE_TASK = "earlytom_smoke"
JSONL_NAME = "earlytom_smoke.jsonl"
METRIC = "videomme_perception_score,none"
SIZE = (96, 128)
FPS = 8.0


@dataclass(frozen=True)
class _Clip:
    video_id: str
    shots: tuple[tuple[str, int], ...]
    task_type: str
    question: str
    options: tuple[str, str, str, str]
    answer: str
    kind: str = "ok"  # "ok" | "corrupt" | "missing"


_SCENES = "How many distinct scenes (shots separated by a hard cut) does the video show?"
_CLIPS = (
    _Clip("smoke_static", (("static", 24),), "Counting Problem", _SCENES, ("A. 1", "B. 2", "C. 3", "D. 4"), "A"),
    _Clip(
        "smoke_cut",
        (("static", 12), ("static", 12)),
        "Counting Problem",
        _SCENES,
        ("A. 1", "B. 2", "C. 3", "D. 4"),
        "B",
    ),
    _Clip(
        "smoke_motion",
        (("static", 8), ("motion", 16)),
        "Temporal Perception",
        "When does a bright square move across the picture?",
        (
            "A. Only in the second part of the video",
            "B. Only in the first part of the video",
            "C. During the whole video",
            "D. Never",
        ),
        "A",
    ),
    _Clip(
        "smoke_three_shots",
        (("static", 8), ("static", 8), ("motion", 8)),
        "Counting Problem",
        "How many hard scene cuts does the video contain?",
        ("A. 0", "B. 1", "C. 2", "D. 3"),
        "C",
    ),
    _Clip(
        "smoke_corrupt",
        (("static", 24),),
        "Counting Problem",
        _SCENES,
        ("A. 1", "B. 2", "C. 3", "D. 4"),
        "A",
        kind="corrupt",
    ),
    _Clip(
        "smoke_missing",
        (("static", 24),),
        "Counting Problem",
        _SCENES,
        ("A. 1", "B. 2", "C. 3", "D. 4"),
        "A",
        kind="missing",
    ),
)


def _structure(clip: _Clip) -> str:
    text = " | cut | ".join(f"{kind} x{n}" for kind, n in clip.shots)
    if clip.kind == "corrupt":
        return text + " (file truncated: not decodable)"
    if clip.kind == "missing":
        return text + " (file deliberately absent)"
    return text


def smoke_documents() -> list[dict[str, Any]]:
    """The smoke set's documents, VideoMME fields first, plus ``structure`` (what the clip holds)."""
    docs = []
    for number, clip in enumerate(_CLIPS, start=1):
        docs.append(
            {
                "video_id": f"{number:03d}",
                "duration": "short",
                "domain": "Knowledge",
                "sub_category": "Technology",
                "url": "",
                "videoID": clip.video_id,
                "question_id": f"{number:03d}-1",
                "task_type": clip.task_type,
                "question": clip.question,
                "options": list(clip.options),
                "answer": clip.answer,
                "structure": _structure(clip),
            }
        )
    return docs


def write_smoke_data(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the clips and ``earlytom_smoke.jsonl`` into ``out_dir``; return the JSONL path.

    Deterministic for a seed. The corrupt clip is a real clip cut to its first 300 bytes; the missing
    clip's file is removed if an earlier run left one.
    """
    out = Path(out_dir)
    videos = out / "data"
    videos.mkdir(parents=True, exist_ok=True)
    for number, clip in enumerate(_CLIPS):
        path = videos / f"{clip.video_id}.mp4"
        if clip.kind == "missing":
            path.unlink(missing_ok=True)
            continue
        frames = synthetic_frames(list(clip.shots), size=SIZE, seed=seed + number)
        write_video(path, frames, fps=FPS)
        if clip.kind == "corrupt":
            data = path.read_bytes()[:300]
            path.write_bytes(data)
    jsonl = out / JSONL_NAME
    tmp = jsonl.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for doc in smoke_documents():
            handle.write(json.dumps(doc) + "\n")
    tmp.replace(jsonl)
    return jsonl


# ---------------------------------------------------------------------------------- run checks
class SmokeCheckError(RuntimeError):
    """An lmms-eval output folder is missing a file or its files disagree (one line)."""


def check_run(run_dir: str | Path, task: str = SMOKE_TASK, expected_docs: int | None = None) -> dict[str, Any]:
    """Check the latest lmms-eval run in ``run_dir`` (its ``--output_path``) for ``task``.

    Requires ``<date>_results.json`` with a numeric score for the task, ``<date>_samples_<task>.jsonl``
    and ``<date>_efficiency*.jsonl`` in the same folder, with the same document ids in samples and
    efficiency log (and ``expected_docs`` of them when given).

    Returns:
        ``{"results", "samples", "efficiency", "score", "docs", "errors", "avg_ttft_ms", "config_hash"}``.
    Raises:
        SmokeCheckError: naming the missing file or the disagreement.
    """
    run_dir = Path(run_dir)
    results_files = sorted(run_dir.glob("**/*_results.json"))
    if not results_files:
        raise SmokeCheckError(f"no *_results.json under {run_dir}: the lmms-eval run failed (see its log)")
    results_path = results_files[-1]
    date_id = results_path.name[: -len("_results.json")]
    folder = results_path.parent
    results = json.loads(results_path.read_text())
    score = results.get("results", {}).get(task, {}).get(METRIC)
    if not isinstance(score, (int, float)) or isinstance(score, bool):
        raise SmokeCheckError(f"{results_path}: no numeric '{METRIC}' for task {task} (got {score!r})")
    samples_path = folder / f"{date_id}_samples_{task}.jsonl"
    if not samples_path.is_file():
        raise SmokeCheckError(f"samples file missing: {samples_path} (was --log_samples given?)")
    efficiency_paths = sorted(folder.glob(f"{date_id}_efficiency*.jsonl"))
    if not efficiency_paths:
        raise SmokeCheckError(f"efficiency log missing: {folder}/{date_id}_efficiency.jsonl")
    samples = read_log(samples_path)
    records = [r for path in efficiency_paths for r in read_log(path) if r.get("task") == task]
    sample_ids = sorted(int(s["doc_id"]) for s in samples)
    record_ids = sorted(int(r["doc_id"]) for r in records)
    if sample_ids != record_ids:
        raise SmokeCheckError(
            f"samples and efficiency log disagree: doc ids {sample_ids} in {samples_path.name}, "
            f"{record_ids} in {', '.join(p.name for p in efficiency_paths)}"
        )
    if expected_docs is not None and len(sample_ids) != expected_docs:
        raise SmokeCheckError(f"{samples_path.name}: {len(sample_ids)} documents, expected {expected_docs}")
    hashes = sorted({r.get("config_hash") for r in records})
    if len(hashes) != 1 or not hashes[0]:
        raise SmokeCheckError(f"efficiency log: expected one config hash, got {hashes}")
    good = [r for r in records if not r.get("error")]
    ttfts = [r["ttft_ms"] for r in good if isinstance(r.get("ttft_ms"), (int, float))]
    return {
        "results": str(results_path),
        "samples": str(samples_path),
        "efficiency": [str(p) for p in efficiency_paths],
        "score": float(score),
        "docs": len(sample_ids),
        "errors": len(records) - len(good),
        "avg_ttft_ms": sum(ttfts) / len(ttfts) if ttfts else None,
        "config_hash": hashes[0],
    }
