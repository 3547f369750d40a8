"""``make reproduce-tables`` / ``earlytom-eval reproduce``: from an experiment grid to the paper's tables.

A grid file (``configs/grids/paper.yaml``, ``configs/grids/smoke.yaml``) names the models, the tasks with
their per-task hyperparameter rows, the methods and retention ratios, the frames and the GPUs. It expands
to *cells*:

* one **eval cell** per (model, task, method, ratio): an lmms-eval run of that task with that config
  (``accelerate launch --num_processes=N -m lmms_eval ...`` when the grid gives GPUs, plain
  ``python -m lmms_eval`` otherwise), into ``<runs>/<model>/<task>/<config>/``;
* one **bench cell** per (model, hyperparameter row): ``earlytom-eval bench`` of every config of that row
  in one interleaved run, into ``<runs>/<model>/bench/<row>/bench.json``.

Each cell folder holds ``cell.json`` (what the cell is, the command, its state and duration), the configs it
ran and the tool's log. A cell whose outputs are complete (decided from the files: lmms-eval exits 0 on
failure) is never run again unless ``--force``; an interrupted reproduction resumes with the first
incomplete cell; deleting a cell's folder re-runs that cell only. A cell whose definition changed in the
grid (config, model, frames, ...) is run again.

Before anything runs, everything the pending cells need is checked at once (weights, datasets and videos,
the bench clip, GPUs); every missing piece is listed with where it goes and nothing runs. At the end the
tables and plots are written (:mod:`earlytom_eval.tables`).

Grid file keys: ``name``, ``label`` (printed above every table), ``runs`` / ``tables`` (default folders),
``env`` (exported to every run), ``prepare`` (generated inputs: ``checkpoint: {preset, out, seed}``,
``smoke_data: {out}``), ``models`` (``name``, ``pretrained``, ``dtype``, ``model_args``), ``frames``,
``device``, ``gpus`` (null: one plain process; N or ``auto``: accelerate data parallel), ``batch_size``,
``limit``, ``tasks`` (key -> ``lmms_task``, ``settings``, ``data``, ``annotations``, ``docs``, ``note``),
``average``, ``settings`` (row -> ratio -> config fields), ``earlytom`` (fields of every EarlyTom config),
``methods`` (``key``, ``label``, ``base``, ``ratios``, ``overrides``), ``bench`` (``device``, ``dtype``,
``warmup``, ``repeats``, ``decode_tokens``, ``video`` (a path, or ``dataset:<name>`` for the first video of
a dataset) or ``synthetic``, ``settings``, ``args``). Strings may use ``${RUNS}``, ``${REPO}``,
``${HF_HOME}`` and ``${VAR:-default}``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compression.config import CompressionConfig, ConfigError
from ..environment import lmms_eval_problems

__all__ = [
    "BenchCell",
    "EvalCell",
    "Grid",
    "GridError",
    "check_missing",
    "load_grid",
    "run_grid",
]

REPO = Path(__file__).resolve().parents[2]
CELL_FILE = "cell.json"
MODEL_ID = "earlytom_llava_ov"


class GridError(ValueError):
    """The grid file is invalid (one line naming the key)."""


# ------------------------------------------------------------------------------------ grid
@dataclass(frozen=True)
class ModelSpec:
    name: str
    pretrained: str
    dtype: str = "auto"
    model_args: tuple[tuple[str, str], ...] = ()
    preset: str | None = None  # bench only: random weights of a preset instead of the checkpoint

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pretrained": self.pretrained, "dtype": self.dtype,
                "model_args": dict(self.model_args), "preset": self.preset}


@dataclass(frozen=True)
class TaskSpec:
    key: str  # table column and folder name
    lmms_task: str  # --tasks value
    settings: str  # hyperparameter row
    data: str | None = None  # the plugin's dataset key (fast data check without lmms-eval's task index)
    annotations: str | None = None  # hub dataset with the annotations (offline check)
    docs: int | None = None  # documents, for progress and ETA
    note: str = ""


@dataclass(frozen=True)
class MethodSpec:
    key: str
    label: str
    base: str  # "full" | "earlytom"
    ratios: tuple[float, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()


@dataclass
class EvalCell:
    model: ModelSpec
    task: TaskSpec
    method: MethodSpec
    retention: float | None
    config: CompressionConfig
    folder: Path
    grid: Grid

    kind = "eval"

    @property
    def id(self) -> str:
        return f"{self.model.name}/{self.task.key}/{self.config.name}"

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "eval",
            "model": self.model.to_dict(),
            "task": self.task.key,
            "lmms_task": self.task.lmms_task,
            "method": self.method.key,
            "method_label": self.method.label,
            "retention": self.retention,
            "config": self.config.to_dict(),
            "config_hash": self.config.fingerprint(),
            "frames": self.grid.frames,
            "limit": self.grid.limit,
            "batch_size": self.grid.batch_size,
            "device": self.grid.device,
        }

    def expected(self) -> dict[str, Any]:
        return {"model": self.model.name, "task": self.task.key, "method": self.method.key,
                "retention": self.retention, "method_label": self.method.label}


@dataclass
class BenchCell:
    model: ModelSpec
    settings: str
    tasks: list[str]
    configs: list[tuple[MethodSpec, float | None, CompressionConfig]]
    folder: Path
    grid: Grid

    kind = "bench"

    @property
    def id(self) -> str:
        return f"{self.model.name}/bench/{self.settings}"

    def spec(self) -> dict[str, Any]:
        bench = self.grid.bench
        return {
            "kind": "bench",
            "model": self.model.to_dict(),
            "settings": self.settings,
            "tasks": self.tasks,
            "configs": [{"name": c.name, "method": m.key, "method_label": m.label, "retention": r,
                         "config": c.to_dict(), "config_hash": c.fingerprint()} for m, r, c in self.configs],
            "frames": self.grid.frames,
            "clip": self.grid.bench_clip(),
            **{k: bench.get(k) for k in ("device", "dtype", "warmup", "repeats", "decode_tokens", "args")},
        }


Cell = EvalCell | BenchCell


@dataclass
class Grid:
    path: Path
    name: str
    label: str
    runs: Path
    tables: Path
    env: dict[str, str]
    prepare: dict[str, Any]
    models: list[ModelSpec]
    frames: int
    device: str
    gpus: int | str | None
    batch_size: int
    limit: Any
    tasks: list[TaskSpec]
    average: list[str]
    settings: dict[str, dict[float, dict[str, Any]]]
    earlytom: dict[str, Any]
    methods: list[MethodSpec]
    bench: dict[str, Any]
    lmms_args: list[str] = field(default_factory=list)
    progress_s: float = 60.0

    # ------------------------------------------------------------------ configs and cells
    def config_for(self, method: MethodSpec, settings: str, retention: float | None) -> CompressionConfig:
        if method.base == "full":
            values: dict[str, Any] = {"method": "full", "num_frames": self.frames, "name": "full"}
        else:
            row = self.settings.get(settings)
            if row is None:
                raise GridError(f"settings row '{settings}' is not defined (have: {', '.join(self.settings)})")
            fields = row.get(round(float(retention), 4)) if retention is not None else None
            if fields is None:
                raise GridError(f"settings row '{settings}' has no entry for ratio {retention} "
                                f"(has: {', '.join(f'{r:g}' for r in row)})")
            values = {"method": "earlytom", **self.earlytom, **fields, **dict(method.overrides),
                      "retention": retention, "num_frames": self.frames, "name": f"{method.key}_r{retention:.2f}"}
            values["description"] = f"{method.label}, retention {retention:.2f}, {settings} settings (grid {self.name})"
        try:
            return CompressionConfig.from_mapping(values)
        except ConfigError as err:
            where = f"{self.path}: method {method.key}, settings {settings}, ratio {retention}"
            raise GridError(f"{where}: {err}") from None

    def eval_cells(self) -> list[EvalCell]:
        cells = []
        for model in self.models:
            for task in self.tasks:
                for method in self.methods:
                    for retention in (method.ratios if method.base != "full" else (None,)):
                        config = self.config_for(method, task.settings, retention)
                        folder = self.runs / _slug(model.name) / _slug(task.key) / _slug(config.name)
                        cells.append(EvalCell(model, task, method, retention, config, folder, self))
        return cells

    def bench_cells(self) -> list[BenchCell]:
        if not self.bench:
            return []
        rows = self.bench.get("settings") or list(dict.fromkeys(t.settings for t in self.tasks))
        cells = []
        for model in self.models:
            for row in rows:
                configs = []
                for method in self.methods:
                    for retention in (method.ratios if method.base != "full" else (None,)):
                        configs.append((method, retention, self.config_for(method, row, retention)))
                tasks = [t.key for t in self.tasks if t.settings == row]
                folder = self.runs / _slug(model.name) / "bench" / _slug(row)
                cells.append(BenchCell(model, row, tasks, configs, folder, self))
        return cells

    def cells(self) -> list[Cell]:
        return [*self.eval_cells(), *self.bench_cells()]

    def bench_clip(self) -> dict[str, Any]:
        bench = self.bench
        if bench.get("synthetic"):
            return {"synthetic": bench["synthetic"], "size": bench.get("synthetic_size", "240x320")}
        video = str(bench.get("video") or "")
        if video.startswith("dataset:"):
            return {"video": video, "resolved": str(_first_dataset_video(video.split(":", 1)[1]) or "")}
        return {"video": video}

    def gpu_count(self) -> int | None:
        """Data-parallel processes: None (plain lmms-eval), N, or the visible CUDA GPUs for ``auto``."""
        if self.gpus in (None, 0, "", "none"):
            return None
        if str(self.gpus).lower() == "auto":
            try:
                import torch

                return torch.cuda.device_count()
            except ImportError:  # pragma: no cover
                return 0
        return int(self.gpus)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value: Any, variables: Mapping[str, str]) -> Any:
    """``${NAME}`` / ``${NAME:-default}`` in strings (grid variables first, then the environment)."""
    if isinstance(value, str):
        def sub(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in variables:
                return str(variables[name])
            got = os.environ.get(name)
            return got if got else (default if default is not None else "")

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [expand(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, variables) for k, v in value.items()}
    return value


def _hf_home() -> Path:
    return Path(os.path.expanduser(os.environ.get("HF_HOME") or "~/.cache/huggingface"))


def _local_path(text: str) -> Path | None:
    """``text`` as a local path when it is one (exists, or is written like a path); None for a hub id."""
    expanded = os.path.expanduser(text)
    if Path(expanded).exists() or expanded.startswith(("/", "./", "../")):
        return Path(expanded).resolve()
    return None


def load_grid(path: str | Path, runs: str | Path | None = None, tables: str | Path | None = None,
              gpus: str | None = None) -> Grid:
    """Read and validate a grid file; every cell's config is built (so a bad value fails here)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise GridError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise GridError(f"{path} must hold a mapping")
    known = {"name", "label", "description", "runs", "tables", "env", "prepare", "models", "frames", "device", "gpus",
             "batch_size", "limit", "tasks", "average", "settings", "earlytom", "methods", "bench", "lmms_args",
             "progress_s"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise GridError(f"{path}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(known))})")
    name = str(raw.get("name") or path.stem)
    variables = {"REPO": str(REPO), "HF_HOME": str(_hf_home())}
    runs_dir = Path(expand(str(runs or raw.get("runs") or f"results/runs/{name}"), variables)).expanduser().resolve()
    variables["RUNS"] = str(runs_dir)
    tables_dir = Path(expand(str(tables or raw.get("tables") or f"results/runs/{name}-tables"), variables))
    env = {str(k): str(v) for k, v in (expand(raw.get("env") or {}, variables)).items()}
    variables.update({k: v for k, v in env.items() if k not in variables})
    data = expand({k: v for k, v in raw.items() if k not in ("runs", "tables", "env")}, variables)

    models = []
    for entry in data.get("models") or []:
        if not isinstance(entry, dict) or not entry.get("pretrained"):
            raise GridError(f"{path}: every models entry needs 'pretrained' (got {entry!r})")
        pretrained = str(entry["pretrained"])
        local = _local_path(pretrained)
        models.append(ModelSpec(
            name=str(entry.get("name") or _slug(pretrained.rstrip("/").split("/")[-1])),
            pretrained=str(local) if local else pretrained,
            dtype=str(entry.get("dtype", "auto")),
            model_args=tuple((str(k), str(v)) for k, v in (entry.get("model_args") or {}).items()),
            preset=entry.get("preset"),
        ))
    if not models:
        raise GridError(f"{path}: 'models' must list at least one model")
    tasks = []
    for key, entry in (data.get("tasks") or {}).items():
        entry = entry or {}
        tasks.append(TaskSpec(
            key=str(key), lmms_task=str(entry.get("lmms_task", key)), settings=str(entry.get("settings", key)),
            data=entry.get("data"), annotations=entry.get("annotations"),
            docs=int(entry["docs"]) if entry.get("docs") else None, note=str(entry.get("note", "")),
        ))
    if not tasks:
        raise GridError(f"{path}: 'tasks' must name at least one task")
    settings = {}
    for row, ratios in (data.get("settings") or {}).items():
        if not isinstance(ratios, dict):
            raise GridError(f"{path}: settings.{row} must map ratios to config fields")
        settings[str(row)] = {round(float(r), 4): dict(v or {}) for r, v in ratios.items()}
    methods = []
    for entry in data.get("methods") or [{"key": "full"}, {"key": "earlytom", "ratios": [0.1, 0.15, 0.2, 0.25]}]:
        key = str(entry.get("key", ""))
        if not key:
            raise GridError(f"{path}: every methods entry needs a 'key'")
        base = str(entry.get("base") or ("full" if key == "full" else "earlytom"))
        if base not in ("full", "earlytom"):
            raise GridError(f"{path}: method {key}: base must be full or earlytom, got {base!r}")
        ratios = tuple(round(float(r), 4) for r in entry.get("ratios") or [])
        if base != "full" and not ratios:
            raise GridError(f"{path}: method {key} needs 'ratios'")
        from ..report.tables import METHOD_LABELS

        methods.append(MethodSpec(key=key, label=str(entry.get("label") or METHOD_LABELS.get(key, key)), base=base,
                                  ratios=ratios, overrides=tuple((entry.get("overrides") or {}).items())))
    keys = [m.key for m in methods]
    if len(set(keys)) != len(keys):
        raise GridError(f"{path}: method keys must be distinct, got {keys}")
    gpus_value = gpus if gpus not in (None, "") else data.get("gpus")
    bench = dict(data.get("bench") or {})
    if bench:
        bench.setdefault("device", data.get("device", "cuda"))
        bench.setdefault("dtype", "bfloat16")
        bench.setdefault("warmup", 2)
        bench.setdefault("repeats", 5)
        bench.setdefault("decode_tokens", 32)
        if not bench.get("video") and not bench.get("synthetic"):
            raise GridError(f"{path}: bench needs 'video' (a path or dataset:<name>) or 'synthetic'")
    grid = Grid(
        path=path, name=name, label=str(data.get("label") or ""), runs=runs_dir, tables=tables_dir, env=env,
        prepare=dict(data.get("prepare") or {}), models=models, frames=int(data.get("frames", 32)),
        device=str(data.get("device", "cuda")), gpus=gpus_value, batch_size=int(data.get("batch_size", 1)),
        limit=data.get("limit"), tasks=tasks, average=[str(t) for t in data.get("average") or []],
        settings=settings, earlytom=dict(data.get("earlytom") or {}), methods=methods, bench=bench,
        lmms_args=[str(a) for a in data.get("lmms_args") or []], progress_s=float(data.get("progress_s", 60)),
    )
    grid.cells()  # builds and validates every config
    return grid


# ------------------------------------------------------------------------------------ cell state
def _spec_hash(spec: Mapping[str, Any], runs: Path | None = None) -> str:
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
    if record.get("spec_hash") != _spec_hash(spec, cell.grid.runs):
        old = record.get("spec") or {}
        diffs = [k for k in sorted(set(spec) | set(old)) if spec.get(k) != old.get(k)]
        return "changed", "grid changed: " + ", ".join(diffs)
    problems = _cell_problems(cell)
    if not problems:
        return "complete", ""
    state = record.get("state")
    return "incomplete", (f"{state}: " if state and state != "complete" else "") + "; ".join(problems[:3])


def _cell_problems(cell: Cell) -> list[str]:
    if isinstance(cell, EvalCell):
        from ..report.tables import eval_cell_problems

        return eval_cell_problems(cell.folder, cell.spec())
    path = cell.folder / "bench.json"
    if not path.is_file():
        return ["no bench.json"]
    from ..report.tables import load_bench_run

    run = load_bench_run(path, cell.folder)
    if run is None:
        return ["bench.json is not a bench report"]
    return run.problems


# ------------------------------------------------------------------------------------ missing pieces
def _hub_cached(repo: str, filename: str, cache_dir: Path, repo_type: str = "model") -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    try:
        found = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir), repo_type=repo_type)
    except Exception:
        return None
    return found if isinstance(found, str) else None


def _weights_problem(model: ModelSpec) -> str | None:
    """Why ``model``'s checkpoint cannot load offline (None when it can)."""
    local = _local_path(model.pretrained)
    if local is not None:
        if not (local / "config.json").is_file():
            return (f"{model.name}: checkpoint folder {local} has no config.json; put the checkpoint there (a "
                    "`save_pretrained` folder), or set `pretrained:` in the grid to a hub id or another folder")
        weights = list(local.glob("*.safetensors")) + list(local.glob("*.bin"))
        index = local / "model.safetensors.index.json"
        if index.is_file():
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
            absent = sorted(s for s in shards if not (local / s).is_file())
            if absent:
                return f"{model.name}: {local} lacks weight shards {', '.join(absent[:4])}"
        elif not weights:
            return f"{model.name}: checkpoint folder {local} has no weights (*.safetensors)"
        return None
    cache = Path(os.environ.get("HF_HUB_CACHE") or _hf_home() / "hub")
    how = (f"download it with `huggingface-cli download {model.pretrained}` (into HF_HOME={_hf_home()}), or set "
           "`pretrained:` in the grid to a local checkpoint folder")
    if _hub_cached(model.pretrained, "config.json", cache) is None:
        return f"{model.name}: weights of {model.pretrained} are not in the Hugging Face cache ({cache}); {how}"
    index = _hub_cached(model.pretrained, "model.safetensors.index.json", cache)
    if index:
        shards = sorted(set(json.loads(Path(index).read_text()).get("weight_map", {}).values()))
        absent = [s for s in shards if _hub_cached(model.pretrained, s, cache) is None]
        if absent:
            return (f"{model.name}: {model.pretrained} is only partly in the cache ({cache}): missing "
                    f"{', '.join(absent[:4])}{' ...' if len(absent) > 4 else ''}; {how}")
    elif _hub_cached(model.pretrained, "model.safetensors", cache) is None:
        return f"{model.name}: weights (model.safetensors) of {model.pretrained} are not in the cache ({cache}); {how}"
    return None


def _annotations_cached(hub_id: str) -> bool:
    org_name = hub_id.replace("/", "--")
    hub = Path(os.environ.get("HF_HUB_CACHE") or _hf_home() / "hub") / f"datasets--{org_name}"
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or _hf_home() / "datasets")
    return hub.is_dir() or any(datasets_cache.glob(hub_id.replace("/", "___") + "*"))


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _first_dataset_video(key: str) -> Path | None:
    from ..lmms.datasets import DATASETS, VIDEO_SUFFIXES, data_root

    spec = DATASETS.get(key)
    if spec is None:
        return None
    root = data_root(key)
    folder = root / spec.video_subdir if spec.video_subdir else root
    if not folder.is_dir():
        return None
    videos = sorted(p for p in folder.rglob("*") if p.suffix in VIDEO_SUFFIXES and p.is_file())
    return videos[0] if videos else None


def _name_task(problem: str, tasks: Sequence[TaskSpec]) -> str:
    """Prefix a subtask's problem (``mvbench_action_sequence: ...``) with the grid task it belongs to."""
    name = problem.split(":", 1)[0]
    if any(name == t.key for t in tasks):
        return problem
    owner = next((t for t in tasks if name.startswith(t.lmms_task)), None)
    return f"{owner.key} ({problem}" + ")" if owner else problem


def check_missing(grid: Grid, cells: Sequence[Cell]) -> tuple[list[tuple[str, str]], list[str]]:
    """Everything the cells to run need that is not there: ``([(what, message)], notes)``. Nothing runs."""
    from ..lmms.datasets import MissingDataError, data_problem, downloads_allowed

    problems: list[tuple[str, str]] = []
    notes: list[str] = []
    eval_cells = [c for c in cells if isinstance(c, EvalCell)]
    bench_cells = [c for c in cells if isinstance(c, BenchCell)]
    allow = downloads_allowed()
    # weights
    for model in dict.fromkeys([c.model for c in cells]):
        if model.preset and not any(isinstance(c, EvalCell) and c.model == model for c in cells):
            continue
        problem = _weights_problem(model)
        if problem and allow and _local_path(model.pretrained) is None:
            notes.append(problem.split(";")[0] + "; it will be downloaded (EARLYTOM_ALLOW_DOWNLOAD=1)")
        elif problem:
            problems.append(("weights", problem))
    # datasets and videos
    tasks = list(dict.fromkeys(c.task for c in eval_cells))
    quick = [t for t in tasks if t.data]
    for task in quick:
        problem = data_problem(task.data)
        if problem and not allow:
            problems.append(("data", f"{task.key}: {problem}"))
    rest = [t for t in tasks if not t.data]
    lmms_problems = lmms_eval_problems() if eval_cells else []
    problems += [("lmms-eval", problem) for problem in lmms_problems]
    if rest and not allow and not lmms_problems:
        try:
            from loguru import logger

            logger.disable("lmms_eval")
            from lmms_eval.tasks import TaskManager

            from ..lmms.datasets import check_tasks

            manager = TaskManager(include_path=str(REPO / "tasks"))
            unknown = [t.lmms_task for t in rest if t.lmms_task not in manager.task_index]
            for name in unknown:
                problems.append(("data", f"{name}: no such lmms-eval task (in lmms-eval or tasks/)"))
            check_tasks([t.lmms_task for t in rest if t.lmms_task not in unknown], manager)
        except MissingDataError as err:
            problems += [("data", _name_task(p, rest)) for p in err.problems]
        finally:
            try:
                logger.enable("lmms_eval")
            except Exception:  # pragma: no cover
                pass
    uncached = [t for t in tasks if t.annotations and not _annotations_cached(t.annotations)]
    if uncached and _offline():
        for task in uncached:
            problems.append(("data", f"{task.key}: annotations {task.annotations} are not in the Hugging Face cache "
                             f"(HF_HOME={_hf_home()}) and HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set; run once with "
                             "network (lmms-eval fetches them, small) or unset those variables"))
    elif uncached:
        notes.append(f"annotations not in the Hugging Face cache (HF_HOME={_hf_home()}): "
                     + ", ".join(f"{t.key} ({t.annotations})" for t in uncached)
                     + "; lmms-eval downloads them on first use (small)")
    notes += [f"{task.key}: {task.note}" for task in tasks if task.note]
    # the bench clip
    if bench_cells:
        clip = grid.bench_clip()
        if "video" in clip:
            video = clip.get("resolved", clip["video"]) if clip["video"].startswith("dataset:") else clip["video"]
            if not video:
                problems.append(("bench clip", f"bench video {clip['video']}: no video of that dataset on disk (its "
                                 "first video is used once the dataset is in place); or set bench.video in the grid "
                                 "(or EARLYTOM_BENCH_VIDEO) to a video file"))
            elif not Path(video).is_file():
                problems.append(("bench clip", f"bench video {video} not found; put a video there, or set "
                                 "bench.video in the grid (or EARLYTOM_BENCH_VIDEO) to a video file"))
    # devices
    devices = {grid.device} | ({str(grid.bench.get("device"))} if bench_cells else set())
    if any(d.startswith("cuda") for d in devices):
        try:
            import torch

            visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except ImportError:  # pragma: no cover
            visible = 0
        wanted = grid.gpu_count() if eval_cells else 1
        wanted = wanted if wanted is not None else 1
        if visible == 0:
            problems.append(("GPUs", f"the grid runs on CUDA (device: {grid.device}) but no CUDA GPU is visible "
                             "here; run on a GPU machine (CUDA_VISIBLE_DEVICES selects GPUs)"))
        elif wanted > visible:
            problems.append(("GPUs", f"the grid asks for {wanted} GPUs (gpus: {grid.gpus}) but {visible} are "
                             f"visible; run with GPUS={visible} (make reproduce-tables GPUS={visible}) or --gpus"))
    if grid.gpu_count() and eval_cells and shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            problems.append(("tools", "accelerate is not installed (pip install accelerate)"))
    return problems, notes


# ------------------------------------------------------------------------------------ commands
def eval_command(cell: EvalCell) -> list[str]:
    grid = cell.grid
    args = {"pretrained": cell.model.pretrained, "config": str(cell.folder / "config.yaml"),
            "max_frames_num": str(grid.frames), "device": grid.device, "dtype": cell.model.dtype}
    args.update(dict(cell.model.model_args))
    model_args = ",".join(f"{k}={v}" for k, v in args.items())
    lmms = ["-m", "lmms_eval", "--model", MODEL_ID, "--model_args", model_args, "--tasks", cell.task.lmms_task,
            "--include_path", str(REPO / "tasks"), "--batch_size", str(grid.batch_size), "--log_samples",
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


def _write_config(config: CompressionConfig, path: Path) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Written by earlytom-eval reproduce from the grid; the cell's exact config.\n"
                    + yaml.safe_dump(config.to_dict(), sort_keys=False))


def _clear(folder: Path) -> None:
    """Remove a cell's previous outputs (a partial run must not mix with the next one)."""
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def _count_docs(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*_efficiency*.jsonl"):
        try:
            with open(path, encoding="utf-8") as handle:
                total += sum(1 for line in handle if line.strip())
        except OSError:
            pass
    return total


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class _Progress:
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
            return f">= {_fmt_s(known)} ({unknown} cell(s) without an estimate yet)" if known else "unknown"
        return _fmt_s(sum(estimates))  # type: ignore[arg-type]

    def print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def _describe(cell: Cell) -> str:
    if isinstance(cell, EvalCell):
        ratio = "full tokens" if cell.retention is None else f"{cell.method.label} at {cell.retention * 100:g}%"
        return f"{cell.model.name} | {cell.task.key} | {ratio}"
    return f"{cell.model.name} | TTFT bench | {cell.settings} settings ({len(cell.configs)} configs)"


def run_cell(cell: Cell, progress: _Progress, env: Mapping[str, str], index: str) -> tuple[bool, float, str]:
    """Run one cell from scratch; return (complete, seconds, why not)."""
    _clear(cell.folder)
    spec = cell.spec()
    if isinstance(cell, EvalCell):
        _write_config(cell.config, cell.folder / "config.yaml")
        command = eval_command(cell)
        log = cell.folder / "lmms-eval.log"
    else:
        for _, _, config in cell.configs:
            _write_config(config, cell.folder / "configs" / f"{config.name}.yaml")
        command = bench_command(cell)
        log = cell.folder / "bench.log"
    record = {"spec": spec, "spec_hash": _spec_hash(spec, cell.grid.runs), "grid": str(cell.grid.path),
              "grid_name": cell.grid.name, "label": cell.grid.label, "command": command,
              "command_line": shlex.join(command),
              "state": "running", "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "host": os.uname().nodename if hasattr(os, "uname") else ""}
    write_cell(cell.folder, record)
    start = time.monotonic()
    interrupted = False
    with open(log, "w", encoding="utf-8") as handle:
        handle.write("$ " + shlex.join(command) + "\n")
        handle.flush()
        proc = subprocess.Popen(command, cwd=str(REPO), env=dict(env), stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
        last_report = start
        last_docs = -1
        try:
            while True:
                try:
                    proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if isinstance(cell, EvalCell) and now - last_report >= cell.grid.progress_s:
                    last_report = now
                    docs = _count_docs(cell.folder)
                    if docs != last_docs:
                        last_docs = docs
                        total = cell.task.docs if not cell.grid.limit else None
                        rate = docs / (now - start) if docs else 0.0
                        eta = f", cell ETA {_fmt_s((total - docs) / rate)}" if total and rate else ""
                        of = f"/{total}" if total else ""
                        progress.print(f"      ... {docs}{of} documents after {_fmt_s(now - start)}{eta}")
        except KeyboardInterrupt:
            interrupted = True
            _stop(proc)
    seconds = time.monotonic() - start
    problems = ["interrupted"] if interrupted else _cell_problems(cell)
    record.update(state="interrupted" if interrupted else ("complete" if not problems else "failed"),
                  returncode=proc.returncode, duration_s=round(seconds, 1),
                  finished_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  problems=problems)
    write_cell(cell.folder, record)
    if interrupted:
        raise KeyboardInterrupt
    return not problems, seconds, "; ".join(problems[:3])


LOCK_FILE = ".reproduce.lock"


def _lock(runs: Path) -> Path | None:
    """Claim the runs folder (two runners on one folder would clobber each other's cells); None if taken."""
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text().split()[0])
                os.kill(pid, 0)
                return None  # its process is alive
            except PermissionError:
                return None  # alive, another user's
            except (ValueError, IndexError, OSError):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()} {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}\n")
        return path
    return None


def _stop(proc: subprocess.Popen) -> None:
    """Stop a cell's tool and everything it started (its own process group): SIGINT, then SIGTERM, then SIGKILL."""
    for sig, grace in ((signal.SIGINT, 15.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:  # a second Ctrl-C: straight to the next signal
            continue
    try:
        proc.wait(timeout=5.0)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass


def _interrupt_on_term() -> Any:
    """SIGTERM / SIGHUP (a job scheduler's stop, a closed terminal) end the run like Ctrl-C: the running cell's
    tool is stopped and the cell marked interrupted. Returns a function restoring the previous handlers."""
    saved = {}

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is None:
            continue
        try:
            saved[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass

    def restore() -> None:
        for sig, previous in saved.items():
            signal.signal(sig, previous)

    return restore


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("        " + line for line in text[-lines:])


def prepare_inputs(grid: Grid, out: Any = sys.stdout) -> None:
    """The grid's generated inputs (tiny checkpoint, smoke data), made only when absent."""
    ckpt = grid.prepare.get("checkpoint")
    if ckpt:
        folder = Path(ckpt["out"])
        if not (folder / "config.json").is_file() or not list(folder.glob("*.safetensors")):
            from ..models.presets import write_checkpoint

            write_checkpoint(ckpt["preset"], folder, seed=int(ckpt.get("seed", 0)), dtype=ckpt.get("dtype"))
            print(f"prepared: random-initialised '{ckpt['preset']}' checkpoint in {folder}", file=out)
    smoke = grid.prepare.get("smoke_data")
    if smoke:
        folder = Path(smoke["out"])
        if not (folder / "earlytom_smoke.jsonl").is_file():
            from ..lmms.smoke_data import write_smoke_data

            write_smoke_data(folder, seed=int(smoke.get("seed", 0)))
            print(f"prepared: smoke data in {folder}", file=out)


def run_grid(
    grid: Grid,
    *,
    force: bool = False,
    only: Sequence[str] = (),
    dry_run: bool = False,
    tables: bool = True,
    out: Any = sys.stdout,
) -> int:
    """Run every incomplete cell of the grid, then write the tables. Returns an exit status."""
    saved = {k: os.environ.get(k) for k in grid.env}
    os.environ.update(grid.env)  # the data checks read the same variables the runs get
    try:
        return _run_grid(grid, force=force, only=only, dry_run=dry_run, tables=tables, out=out)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_grid(grid: Grid, *, force: bool, only: Sequence[str], dry_run: bool, tables: bool, out: Any) -> int:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **grid.env}
    cells = grid.cells()
    if only:
        cells = [c for c in cells if any(fnmatch.fnmatch(c.id, p) or p in c.id for p in only)]
        if not cells:
            print(f"error: no cell matches {', '.join(only)} (cell ids look like {grid.cells()[0].id})", file=out)
            return 2
    print(f"grid {grid.name} ({grid.path}): {len(cells)} cells -> runs in {grid.runs}, tables in {grid.tables}",
          file=out)
    if grid.label:
        print(f"  {grid.label}", file=out)
    if not dry_run:
        prepare_inputs(grid, out)
    states = {c.id: cell_status(c) for c in cells}
    todo = [c for c in cells if force or states[c.id][0] != "complete"]
    done = len(cells) - len(todo)
    print(f"  {done} complete, {len(todo)} to run" + (" (--force: all)" if force else ""), file=out)
    todo_ids = {c.id for c in todo}
    for cell in cells:
        state, why = states[cell.id]
        mark = "run " if cell.id in todo_ids else "done"
        print(f"  [{mark}] {_describe(cell)}: {state}{(' (' + why + ')') if why and state != 'missing' else ''}",
              file=out)
    if todo:
        problems, notes = check_missing(grid, todo)
        if dry_run:  # what `prepare` generates is not missing: a real run makes it first
            made = [str(v["out"]) for v in grid.prepare.values() if isinstance(v, dict) and v.get("out")]
            generated = [(w, m) for w, m in problems if any(path in m for path in made)]
            problems = [p for p in problems if p not in generated]
            notes += [f"generated by the grid's prepare step on a real run: {m}" for _, m in generated]
        for note in notes:
            print(f"  note: {note}", file=out)
        if problems:
            print(f"\nerror: {len(problems)} thing(s) missing for the {len(todo)} cell(s) to run; nothing was run. "
                  "Put them in place (or point the grid / environment at them) and run again:", file=out)
            for what in dict.fromkeys(w for w, _ in problems):
                print(f"  {what}:", file=out)
                for w, message in problems:
                    if w == what:
                        print(f"    - {message}", file=out)
            return 2
    if dry_run:
        for cell in todo:
            command = eval_command(cell) if isinstance(cell, EvalCell) else bench_command(cell)
            print(f"  would run {cell.id}:\n    {shlex.join(command)}", file=out)
        return 0
    lock = _lock(grid.runs)
    if lock is None:
        print(f"error: another `earlytom-eval reproduce` is running on {grid.runs} "
              f"({grid.runs / LOCK_FILE}); wait for it or remove that file if it is stale", file=out)
        return 2
    progress = _Progress(cells, out)
    failed = []
    restore = _interrupt_on_term()
    try:
        for number, cell in enumerate(todo, start=1):
            index = f"[{number}/{len(todo)}]"
            remaining = todo[number - 1:]
            progress.print(f"{index} {_describe(cell)}: running (estimated {_fmt_s(progress.estimate(cell))}; "
                           f"grid ETA {progress.eta(remaining)}) -> {cell.folder}")
            ok, seconds, why = run_cell(cell, progress, env, index)
            progress.add(cell, seconds)
            left = todo[number:]
            tail = f"; {len(left)} left, ETA {progress.eta(left)}" if left else ""
            if ok:
                progress.print(f"{index} {_describe(cell)}: complete in {_fmt_s(seconds)}{tail}")
            else:
                failed.append(cell)
                log = cell.folder / ("lmms-eval.log" if isinstance(cell, EvalCell) else "bench.log")
                progress.print(f"{index} {_describe(cell)}: FAILED after {_fmt_s(seconds)}: {why}; log {log}{tail}")
                progress.print(_tail(log))
    except KeyboardInterrupt:
        progress.print("\ninterrupted: finished cells are kept; run the same command again to resume")
        return 130
    finally:
        restore()
        lock.unlink(missing_ok=True)
    if tables:
        write_grid_tables(grid, out)
    if failed:
        print(f"error: {len(failed)} cell(s) failed: {', '.join(c.id for c in failed)}; their logs are in their "
              "folders; run again to retry them", file=out)
        return 1
    return 0


def write_grid_tables(grid: Grid, out: Any = sys.stdout) -> Path:
    from ..report.tables import aggregate, write_tables

    expected = [c.expected() for c in grid.eval_cells()]
    result = aggregate(grid.runs, expected=expected, average=grid.average or None, label=grid.label or None)
    title = f"Tables: grid {grid.name}"
    write_tables(result, grid.tables, title=title)
    print(f"tables and plots: {grid.tables}/tables.md (+ .csv, .tex, .png)", file=out)
    for problem in result.problems:
        print(f"  warning: {problem}", file=out)
    return grid.tables / "tables.md"


# ------------------------------------------------------------------------------------ CLI
def _cmd_reproduce(args: argparse.Namespace) -> int:
    try:
        grid = load_grid(args.grid, runs=args.runs, tables=args.out, gpus=args.gpus)
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.tables_only:
        os.environ.update(grid.env)
        write_grid_tables(grid)
        return 0
    return run_grid(grid, force=args.force, only=args.only or (), dry_run=args.dry_run, tables=not args.no_tables)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``earlytom-eval reproduce`` (behind ``make reproduce-tables``)."""
    p = subparsers.add_parser(
        "reproduce",
        help="run every incomplete cell of an experiment grid (lmms-eval + TTFT bench), then the tables",
        description="Run the cells of an experiment grid that have no complete result yet (lmms-eval for accuracy "
        "and the per-sample efficiency log, `earlytom-eval bench` for TTFT and FLOPs), then write the tables and "
        "plots. Finished cells are kept; an interrupted run resumes; missing weights/data are listed up front.",
    )
    p.add_argument("--grid", type=Path, default=Path("configs/grids/paper.yaml"), help="grid file")
    p.add_argument("--runs", default=None, help="runs folder (default: the grid's `runs`)")
    p.add_argument("--out", default=None, help="tables folder (default: the grid's `tables`)")
    p.add_argument("--gpus", default=None, help="data-parallel processes for lmms-eval: N or auto (default: grid's)")
    p.add_argument("--force", action="store_true", help="run cells again even if complete")
    p.add_argument("--only", nargs="*", metavar="PATTERN",
                   help="only cells whose id (model/task/config, model/bench/settings) matches")
    p.add_argument("--dry-run", action="store_true", help="show the plan, the missing pieces and the commands only")
    p.add_argument("--no-tables", action="store_true", help="do not write tables at the end")
    p.add_argument("--tables-only", action="store_true", help="only aggregate the grid's runs into tables")
    p.set_defaults(func=_cmd_reproduce)
