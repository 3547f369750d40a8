"""A cell on disk: its ``cell.json`` record, whether its outputs are complete, and the command that runs it."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..compression.config import CompressionConfig
from ..lmms.manifest import MODEL_ID
from ..paths import TASKS
from ..report.runs import CELL_FILE, eval_cell_problems, load_bench_run
from .grid import BenchCell, Cell, EvalCell

__all__ = [
    "bench_command",
    "cell_problems",
    "cell_status",
    "eval_command",
    "read_cell",
    "spec_hash",
    "write_cell",
    "write_config",
]


def spec_hash(spec: Mapping[str, Any], runs: Path | None = None) -> str:
    """Hash of a cell's definition; paths inside the runs folder count relative to it (a moved runs folder
    keeps its cells)."""
    text = json.dumps(spec, sort_keys=True, default=str)
    if runs is not None:
        text = text.replace(str(runs), "${RUNS}")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_cell(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / CELL_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_cell(folder: Path, record: Mapping[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (CELL_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    tmp.replace(folder / CELL_FILE)


def cell_status(cell: Cell) -> tuple[str, str]:
    """``(state, why)``: ``complete``, ``missing`` (nothing there), ``changed`` (the grid now defines this
    cell differently) or ``incomplete`` (failed, interrupted, or outputs that do not agree)."""
    record = read_cell(cell.folder)
    if record is None:
        if cell.folder.exists() and any(cell.folder.iterdir()):
            return "incomplete", "outputs without cell.json"
        return "missing", "not run yet"
    spec = cell.spec()
    if record.get("spec_hash") != spec_hash(spec, cell.grid.runs):
        old = record.get("spec") or {}
        diffs = [k for k in sorted(set(spec) | set(old)) if spec.get(k) != old.get(k)]
        return "changed", "grid changed: " + ", ".join(diffs)
    problems = cell_problems(cell)
    if not problems:
        return "complete", ""
    state = record.get("state")
    return "incomplete", (f"{state}: " if state and state != "complete" else "") + "; ".join(problems[:3])


def cell_problems(cell: Cell) -> list[str]:
    """Why the cell's outputs are not a complete result (empty: complete), decided from the files."""
    if isinstance(cell, EvalCell):
        return eval_cell_problems(cell.folder, cell.spec())
    path = cell.folder / "bench.json"
    if not path.is_file():
        return ["no bench.json"]
    run = load_bench_run(path, cell.folder)
    if run is None:
        return ["bench.json is not a bench report"]
    return run.problems


def eval_command(cell: EvalCell) -> list[str]:
    grid = cell.grid
    args = {"pretrained": cell.model.pretrained, "config": str(cell.folder / "config.yaml"),
            "max_frames_num": str(grid.frames), "device": grid.device, "dtype": cell.model.dtype}
    args.update(dict(cell.model.model_args))
    model_args = ",".join(f"{k}={v}" for k, v in args.items())
    lmms = ["-m", "lmms_eval", "--model", MODEL_ID, "--model_args", model_args, "--tasks", cell.task.lmms_task,
            "--include_path", str(TASKS), "--batch_size", str(grid.batch_size), "--log_samples",
            "--output_path", str(cell.folder / "lmms")]
    if grid.limit not in (None, ""):
        lmms += ["--limit", str(grid.limit)]
    lmms += grid.lmms_args
    processes = grid.gpu_count()
    if processes:
        launcher = Path(sys.executable).parent / "accelerate"
        head = [str(launcher), "launch"] if launcher.exists() else [sys.executable, "-m",
                                                                     "accelerate.commands.launch"]
        return [*head, f"--num_processes={processes}", *lmms]
    return [sys.executable, *lmms]


def bench_command(cell: BenchCell) -> list[str]:
    bench = cell.grid.bench
    cmd = [sys.executable, "-m", "earlytom_eval.cli", "bench"]
    cmd += ["--preset", cell.model.preset] if cell.model.preset else ["--pretrained", cell.model.pretrained]
    clip = cell.grid.bench_clip()
    if "synthetic" in clip:
        cmd += ["--synthetic", clip["synthetic"], "--synthetic-size", clip["size"]]
    else:
        cmd += ["--video", clip.get("resolved") or clip["video"]]
    cmd += ["--configs", *[str(cell.folder / "configs" / f"{c.name}.yaml") for _, _, c in cell.configs]]
    cmd += ["--frames", str(cell.grid.frames), "--device", str(bench["device"]), "--dtype", str(bench["dtype"]),
            "--warmup", str(bench["warmup"]), "--repeats", str(bench["repeats"]),
            "--decode-tokens", str(bench["decode_tokens"]), "--json", str(cell.folder / "bench.json")]
    cmd += [str(a) for a in bench.get("args") or []]
    return cmd


def write_config(config: CompressionConfig, path: Path) -> None:
    """The cell's exact config, as a YAML file its command reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by earlytom-eval reproduce from the grid; the cell's exact config.\n"
                    + yaml.safe_dump(config.to_dict(), sort_keys=False))
