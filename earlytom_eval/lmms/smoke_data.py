"""The offline smoke set for the ``earlytom_smoke`` lmms-eval task, and a checker for its runs.

``earlytom-eval smoke-data --out DIR`` writes a handful of short synthetic clips with known temporal
structure (a static shot, a scene cut, motion, three shots) plus one corrupt clip and one missing clip,
and ``DIR/earlytom_smoke.jsonl``: one multiple-choice question per clip in the VideoMME document format
(``videoID``, ``duration``, ``domain``, ``sub_category``, ``task_type``, ``question``, ``options``,
``answer``, ...). Videos go to ``DIR/data/<videoID>.mp4``, VideoMME's layout. The task reads
``$EARLYTOM_SMOKE_DIR`` (default ``results/smoke-data`` beside ``tasks/``).

``earlytom-eval smoke-check RUN_DIR ...`` checks an lmms-eval output folder of that task: results.json
with a numeric score, the samples file and the efficiency log present and covering the same documents.
lmms-eval exits 0 even when a run failed, so the files are what is checked.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    from ..video import synthetic_frames, write_video

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


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
    return rows


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
    samples = _read_jsonl(samples_path)
    records = [r for path in efficiency_paths for r in _read_jsonl(path) if r.get("task") == task]
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


# ---------------------------------------------------------------------------------- CLI
def _cmd_smoke_data(args: argparse.Namespace) -> int:
    jsonl = write_smoke_data(args.out, seed=args.seed)
    docs = smoke_documents()
    print(f"wrote {len(docs)} smoke documents to {jsonl} and their clips to {jsonl.parent / 'data'}")
    print(
        f"the earlytom_smoke task reads $EARLYTOM_SMOKE_DIR (default results/smoke-data beside tasks/): "
        f"export EARLYTOM_SMOKE_DIR={jsonl.parent.resolve()}"
    )
    return 0


def _cmd_smoke_check(args: argparse.Namespace) -> int:
    failed = False
    for run_dir in args.run_dirs:
        try:
            summary = check_run(run_dir, task=args.task, expected_docs=args.expect_docs)
        except (SmokeCheckError, OSError, ValueError, KeyError) as err:
            print(f"FAIL {run_dir}: {err}")
            failed = True
            continue
        ttft = f"{summary['avg_ttft_ms']:.1f} ms" if summary["avg_ttft_ms"] is not None else "n/a"
        print(
            f"ok   {run_dir}: score {summary['score']:.2f}, {summary['docs']} docs "
            f"({summary['errors']} with data errors), avg TTFT {ttft}, config {summary['config_hash']}"
        )
    return 1 if failed else 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register this module's subcommands on the ``earlytom-eval`` parser."""
    data = subparsers.add_parser(
        "smoke-data", help="write the offline earlytom_smoke task data (synthetic clips + VideoMME-format JSONL)"
    )
    data.add_argument("--out", required=True, type=Path, help="output folder (the task's default: results/smoke-data)")
    data.add_argument("--seed", type=int, default=0, help="clips are reproducible for a seed (default 0)")
    data.set_defaults(func=_cmd_smoke_data)

    check = subparsers.add_parser(
        "smoke-check", help="check lmms-eval output folders: results, samples and efficiency log exist and agree"
    )
    check.add_argument("run_dirs", nargs="+", type=Path, help="lmms-eval --output_path folders")
    check.add_argument("--task", default=SMOKE_TASK, help=f"task name (default {SMOKE_TASK})")
    check.add_argument("--expect-docs", type=int, default=None, help="number of documents each run must have")
    check.set_defaults(func=_cmd_smoke_check)


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - convenience
    parser = argparse.ArgumentParser(prog="earlytom_eval.smoke_data")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
