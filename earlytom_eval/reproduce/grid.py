"""The experiment grid: a YAML file that names models, tasks, methods and ratios, expanded to cells.

An *eval cell* is one lmms-eval run of one task with one config; a *bench cell* is one ``earlytom-eval bench``
of every config of one hyperparameter row. EarlyTom's configs come from the grid's per-task ``settings`` rows;
a peer method's from its shipped ``configs/<method>_r<ratio>.yaml`` (one per ratio, every task), with the
method entry's ``overrides`` on top. A cell whose method is not registered yet, or whose config file is not
there, is kept as *unavailable* with one line saying why (it is listed, never run). The README's "The grid"
section lists the file's keys. A grid carries the environment its runs get (the process's, the grid's ``env``
on top), passed on explicitly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..compression.config import METHODS, CompressionConfig, ConfigError
from ..compression.registry import registered_methods
from ..efficiency.host import cuda_device_count
from ..lmms.datasets import first_video
from ..paths import REPO, find_config, hf_home, slug
from ..report.names import METHOD_LABELS

__all__ = [
    "BenchCell",
    "Cell",
    "EvalCell",
    "Grid",
    "GridError",
    "MethodSpec",
    "ModelSpec",
    "TaskSpec",
    "Unavailable",
    "expand",
    "load_grid",
    "local_path",
]


class GridError(ValueError):
    """The grid file is invalid (one line naming the key)."""


class Unavailable(Exception):
    """A cell cannot run in this checkout: its method is not registered, or its config file is not there."""


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
    base: str  # a method of METHODS: "full", "earlytom" (settings rows) or a peer (its shipped configs)
    ratios: tuple[float, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()
    config: str = ""  # a peer's config per ratio: a name or path pattern with {method}, {key}, {ratio}

    @property
    def peer(self) -> bool:
        """Configs come from shipped files (one per ratio, for every task), not from settings rows."""
        return self.base not in ("full", "earlytom")

    def cell_name(self, retention: float | None) -> str:
        return "full" if self.base == "full" else f"{self.key}_r{retention:.2f}"


#: A peer method's config file per ratio (``configs/visionzip_r0.10.yaml``).
PEER_CONFIG = "{method}_r{ratio:.2f}"


@dataclass
class EvalCell:
    model: ModelSpec
    task: TaskSpec
    method: MethodSpec
    retention: float | None
    config: CompressionConfig | None  # None when unavailable
    folder: Path
    grid: Grid
    unavailable: str = ""  # why the cell cannot run here (method not registered, config file absent)

    kind = "eval"

    @property
    def name(self) -> str:
        return self.config.name if self.config is not None else self.method.cell_name(self.retention)

    @property
    def id(self) -> str:
        return f"{self.model.name}/{self.task.key}/{self.name}"

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
                "retention": self.retention, "method_label": self.method.label, "unavailable": self.unavailable}


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
    #: The environment of the runs: the process's when the grid was loaded, ``TOKENIZERS_PARALLELISM=false``,
    #: and the grid's ``env`` on top. Every run gets it, every check reads it; nothing changes ``os.environ``.
    environ: dict[str, str] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ configs and cells
    def config_for(self, method: MethodSpec, settings: str, retention: float | None) -> CompressionConfig:
        """The exact config of one cell (raises :class:`Unavailable` for a method or config file not here)."""
        if method.base == "full":
            values: dict[str, Any] = {"method": "full", "num_frames": self.frames, "name": "full"}
        elif method.peer:
            values = self._peer_values(method, retention)
        else:
            row = self.settings.get(settings)
            if row is None:
                raise GridError(f"settings row '{settings}' is not defined (have: {', '.join(self.settings)})")
            fields = row.get(round(float(retention), 4)) if retention is not None else None
            if fields is None:
                raise GridError(f"settings row '{settings}' has no entry for ratio {retention} "
                                f"(has: {', '.join(f'{r:g}' for r in row)})")
            values = {"method": "earlytom", **self.earlytom, **fields, **dict(method.overrides),
                      "retention": retention, "num_frames": self.frames, "name": method.cell_name(retention)}
            values["description"] = f"{method.label}, retention {retention:.2f}, {settings} settings (grid {self.name})"
        try:
            return CompressionConfig.from_mapping(values)
        except ConfigError as err:
            where = f"{self.path}: method {method.key}, settings {settings}, ratio {retention}"
            raise GridError(f"{where}: {err}") from None

    def _peer_values(self, method: MethodSpec, retention: float | None) -> dict[str, Any]:
        if method.base not in registered_methods():
            raise Unavailable(f"method '{method.base}' is not registered yet (registered: "
                              f"{', '.join(registered_methods())})")
        pattern = method.config or PEER_CONFIG
        name = pattern.format(method=method.base, key=method.key, ratio=retention)
        path = find_config(name)
        if path is None:
            raise Unavailable(f"config {name} not found (looked for {name}.yaml in configs/)")
        try:
            values = dict(yaml.safe_load(path.read_text()) or {})
        except (OSError, yaml.YAMLError) as err:
            raise GridError(f"{self.path}: method {method.key}: {path} is unreadable: {err}") from None
        if values.get("method") != method.base:
            raise GridError(f"{self.path}: method {method.key}: {path} has method {values.get('method')!r}, "
                            f"not {method.base!r}")
        if values.get("retention") is not None and round(float(values["retention"]), 4) != retention:
            raise GridError(f"{self.path}: method {method.key}: {path} has retention {values['retention']}, "
                            f"not {retention}")
        overrides = dict(method.overrides)
        described = f"{method.label}, retention {retention:.2f}, from {path.name}"
        if overrides:
            described += " with " + ", ".join(f"{k}={v}" for k, v in overrides.items())
        values.update(overrides)
        values.update(retention=retention, num_frames=self.frames, name=method.cell_name(retention),
                      description=f"{described} (grid {self.name})")
        return values

    def _cell_config(self, method: MethodSpec, settings: str,
                     retention: float | None) -> tuple[CompressionConfig | None, str]:
        try:
            return self.config_for(method, settings, retention), ""
        except Unavailable as why:
            return None, str(why)

    def eval_cells(self) -> list[EvalCell]:
        cells = []
        for model in self.models:
            for task in self.tasks:
                for method in self.methods:
                    for retention in (method.ratios if method.base != "full" else (None,)):
                        config, why = self._cell_config(method, task.settings, retention)
                        name = config.name if config is not None else method.cell_name(retention)
                        folder = self.runs / slug(model.name) / slug(task.key) / slug(name)
                        cells.append(EvalCell(model, task, method, retention, config, folder, self, why))
        return cells

    def bench_rows(self) -> list[str]:
        """The hyperparameter rows benchmarked: ``bench.settings``, default every task's row in task order."""
        return list(self.bench.get("settings") or dict.fromkeys(t.settings for t in self.tasks))

    def bench_cells(self) -> list[BenchCell]:
        """One bench per (model, row): full tokens and EarlyTom's configs of that row; the peers' configs, the
        same for every row, only in ``bench.peer_settings`` (default: the first row). Unavailable configs are
        left out."""
        if not self.bench:
            return []
        rows = self.bench_rows()
        peer_row = str(self.bench.get("peer_settings") or rows[0])
        cells = []
        for model in self.models:
            for row in rows:
                configs = []
                for method in self.methods:
                    if method.peer and row != peer_row:
                        continue
                    for retention in (method.ratios if method.base != "full" else (None,)):
                        config, _ = self._cell_config(method, row, retention)
                        if config is not None:
                            configs.append((method, retention, config))
                tasks = [t.key for t in self.tasks if t.settings == row]
                folder = self.runs / slug(model.name) / "bench" / slug(row)
                cells.append(BenchCell(model, row, tasks, configs, folder, self))
        return cells

    def cells(self) -> list[Cell]:
        return [*self.eval_cells(), *self.bench_cells()]

    def unavailable(self) -> list[EvalCell]:
        return [c for c in self.eval_cells() if c.unavailable]

    def bench_clip(self) -> dict[str, Any]:
        bench = self.bench
        if bench.get("synthetic"):
            return {"synthetic": bench["synthetic"], "size": bench.get("synthetic_size", "240x320")}
        video = str(bench.get("video") or "")
        if video.startswith("dataset:"):
            return {"video": video, "resolved": str(first_video(video.split(":", 1)[1], self.environ) or "")}
        return {"video": video}

    def gpu_count(self) -> int | None:
        """Data-parallel processes: None (plain lmms-eval), N, or the visible CUDA GPUs for ``auto``."""
        if self.gpus in (None, 0, "", "none"):
            return None
        if str(self.gpus).lower() == "auto":
            return cuda_device_count()
        return int(self.gpus)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value: Any, variables: Mapping[str, str], environ: Mapping[str, str] | None = None) -> Any:
    """``${NAME}`` / ``${NAME:-default}`` in strings (grid variables first, then ``environ``, default the
    process's environment)."""
    environ = os.environ if environ is None else environ
    if isinstance(value, str):
        def sub(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in variables:
                return str(variables[name])
            got = environ.get(name)
            return got if got else (default if default is not None else "")

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [expand(v, variables, environ) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, variables, environ) for k, v in value.items()}
    return value


def local_path(text: str) -> Path | None:
    """``text`` as a local path when it is one (exists, or is written like a path); None for a hub id."""
    expanded = os.path.expanduser(text)
    if Path(expanded).exists() or expanded.startswith(("/", "./", "../")):
        return Path(expanded).resolve()
    return None


def load_grid(path: str | Path, runs: str | Path | None = None, tables: str | Path | None = None,
              gpus: str | None = None, environ: Mapping[str, str] | None = None) -> Grid:
    """Read and validate a grid file; every cell's config is built (so a bad value fails here).

    ``environ``: the environment the runs start from (default: this process's); the grid's ``env`` goes on top.
    """
    environ = dict(os.environ if environ is None else environ)
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
    variables = {"REPO": str(REPO), "HF_HOME": str(hf_home(environ))}
    runs_dir = Path(expand(str(runs or raw.get("runs") or f"results/runs/{name}"), variables, environ))
    runs_dir = runs_dir.expanduser().resolve()
    variables["RUNS"] = str(runs_dir)
    tables_dir = Path(expand(str(tables or raw.get("tables") or f"results/runs/{name}-tables"), variables, environ))
    env = {str(k): str(v) for k, v in (expand(raw.get("env") or {}, variables, environ)).items()}
    variables.update({k: v for k, v in env.items() if k not in variables})
    data = expand({k: v for k, v in raw.items() if k not in ("runs", "tables", "env")}, variables, environ)

    models = []
    for entry in data.get("models") or []:
        if not isinstance(entry, dict) or not entry.get("pretrained"):
            raise GridError(f"{path}: every models entry needs 'pretrained' (got {entry!r})")
        pretrained = str(entry["pretrained"])
        local = local_path(pretrained)
        models.append(ModelSpec(
            name=str(entry.get("name") or slug(pretrained.rstrip("/").split("/")[-1])),
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
        base = str(entry.get("base") or (key if key in METHODS else "earlytom"))
        if base not in METHODS:
            raise GridError(f"{path}: method {key}: base must be one of {', '.join(METHODS)}, got {base!r}")
        ratios = tuple(round(float(r), 4) for r in entry.get("ratios") or [])
        if base != "full" and not ratios:
            raise GridError(f"{path}: method {key} needs 'ratios'")
        methods.append(MethodSpec(key=key, label=str(entry.get("label") or METHOD_LABELS.get(key, key)), base=base,
                                  ratios=ratios, overrides=tuple((entry.get("overrides") or {}).items()),
                                  config=str(entry.get("config") or "")))
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
        if bench.get("peer_settings") and str(bench["peer_settings"]) not in (
                bench.get("settings") or [t.get("settings", k) if isinstance(t, dict) else k
                                          for k, t in (data.get("tasks") or {}).items()]):
            raise GridError(f"{path}: bench.peer_settings {bench['peer_settings']!r} is not a benchmarked row")
    grid = Grid(
        path=path, name=name, label=str(data.get("label") or ""), runs=runs_dir, tables=tables_dir, env=env,
        prepare=dict(data.get("prepare") or {}), models=models, frames=int(data.get("frames", 32)),
        device=str(data.get("device", "cuda")), gpus=gpus_value, batch_size=int(data.get("batch_size", 1)),
        limit=data.get("limit"), tasks=tasks, average=[str(t) for t in data.get("average") or []],
        settings=settings, earlytom=dict(data.get("earlytom") or {}), methods=methods, bench=bench,
        lmms_args=[str(a) for a in data.get("lmms_args") or []], progress_s=float(data.get("progress_s", 60)),
        environ={**environ, "TOKENIZERS_PARALLELISM": "false", **env},
    )
    grid.cells()  # builds and validates every config
    return grid
