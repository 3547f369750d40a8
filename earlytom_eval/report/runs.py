"""Loading what runs left on disk: lmms-eval runs (results, samples and the efficiency log, joined per document)
and bench reports, each with the runner's ``cell.json`` when there is one."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..compression.config import CompressionConfig, ConfigError, load_config
from ..efficiency.schema import validate_report
from ..lmms.efficiency_log import read_log
from ..paths import find_config
from .metrics import METRICS, MetricRule, aggregate_scores, is_number, metric_of, sample_outcome
from .names import method_from_name, method_of, task_key

__all__ = [
    "CELL_FILE",
    "BenchRun",
    "EvalRun",
    "TaskOutcome",
    "config_from_model_args",
    "discover_bench_runs",
    "discover_eval_runs",
    "eval_cell_problems",
    "fingerprint",
    "join_samples_and_log",
    "load_bench_run",
    "load_eval_run",
]

#: The file in which the grid runner describes a cell (its folder's run); read here to name the run's cell.
CELL_FILE = "cell.json"


def _model_name(pretrained: str) -> str:
    parts = [p for p in str(pretrained).replace("\\", "/").rstrip("/").split("/") if p]
    return parts[-1] if parts else str(pretrained)


def _parse_model_args(text: str) -> dict[str, str]:
    out = {}
    for item in (text or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def config_from_model_args(model_args: str) -> dict[str, Any] | None:
    """Rebuild a run's compression config from its ``model_args`` (config file + overrides), or None."""
    args = _parse_model_args(model_args)
    try:
        source = args.get("config")
        base = load_config(find_config(source) or source) if source else CompressionConfig()
        overrides = {k: v for k, v in args.items() if k in CompressionConfig.all_field_names() and k != "description"}
        if args.get("max_frames_num"):
            overrides["num_frames"] = args["max_frames_num"]
        return (base.with_overrides(overrides) if overrides else base).to_dict()
    except (ConfigError, OSError, ValueError):
        return None


def fingerprint(config: Mapping[str, Any] | None) -> str | None:
    """The config's :meth:`~CompressionConfig.fingerprint` (None when there is no valid config)."""
    if not config:
        return None
    try:
        return CompressionConfig.from_mapping(dict(config)).fingerprint()
    except (ConfigError, TypeError):
        return None


def _find_cell_json(folder: Path, root: Path | None) -> tuple[Path | None, dict | None]:
    """The nearest ``cell.json`` at or above ``folder`` (not above ``root``)."""
    folder = folder.resolve()
    stop = root.resolve() if root is not None else None
    for candidate in (folder, *folder.parents):
        path = candidate / CELL_FILE
        if path.is_file():
            try:
                return candidate, json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return candidate, None
        if stop is not None and candidate == stop:
            break
    return None, None


@dataclass
class TaskOutcome:
    """One task of one lmms-eval run: its accuracy and its documents joined with the efficiency log."""

    task: str  # table key (``mlvu`` for a run of ``earlytom_mlvu_dev`` ...)
    run_task: str  # the name as run
    leaves: list[str]
    metric: str | None
    accuracy: float | None  # percent, lmms-eval's aggregation (results.json)
    accuracy_from_samples: float | None  # percent, recomputed from the samples
    docs_expected: int | None  # lmms-eval's n-samples (effective), all leaves
    rows: list[dict[str, Any]]  # one per document: samples joined with the efficiency log
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems


@dataclass
class EvalRun:
    """One lmms-eval run (one ``<date>_results.json``, or a cell folder whose run has none)."""

    folder: Path
    date_id: str
    results_path: Path | None
    cell_dir: Path | None
    cell: dict[str, Any] | None
    pretrained: str
    model_name: str
    config: dict[str, Any] | None
    config_hash: str | None
    method: str
    retention: float | None
    frames: int | None
    limit: Any
    tasks: dict[str, TaskOutcome]
    problems: list[str] = field(default_factory=list)
    label: str | None = None


def load_eval_run(results_path: Path, root: Path | None = None) -> EvalRun:
    """Read one lmms-eval run: results.json, its samples and efficiency logs, and the cell.json above it."""
    results_path = Path(results_path)
    folder = results_path.parent
    date_id = results_path.name[: -len("_results.json")]
    cell_dir, cell = _find_cell_json(folder, root)
    spec = (cell or {}).get("spec") or {}
    problems: list[str] = []
    try:
        results = json.loads(results_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        results = {}
        problems.append(f"{results_path.name} unreadable: {err}")
    run_config = results.get("config") or {}
    model_args = str(run_config.get("model_args") or "")
    args = _parse_model_args(model_args)
    efficiency = []
    for path in _efficiency_files(folder, date_id):
        efficiency.extend(read_log(path))
    pretrained = (spec.get("model") or {}).get("pretrained") or args.get("pretrained") or (
        efficiency[0].get("model") if efficiency else "") or str(results.get("model_name") or "")
    model_name = (spec.get("model") or {}).get("name") or _model_name(pretrained)
    config = spec.get("config") or config_from_model_args(model_args)
    hashes = sorted({str(r.get("config_hash")) for r in efficiency if r.get("config_hash")})
    log_hash = hashes[0] if len(hashes) == 1 else None
    config_hash = spec.get("config_hash") or log_hash or fingerprint(config)
    if len(hashes) > 1:
        problems.append(f"efficiency log mixes configs {', '.join(hashes)}")
    elif log_hash and config_hash and log_hash != config_hash:
        problems.append(f"efficiency log config {log_hash} differs from the cell's config {config_hash}")
    models = sorted({str(r.get("model")) for r in efficiency if r.get("model")})
    if len(models) > 1:
        problems.append(f"efficiency log mixes models {', '.join(models)}")
    if spec.get("method"):
        method, retention = spec["method"], spec.get("retention")
    elif config:
        method, retention = method_of(config)
    else:  # the config file named in model_args is gone: the name the run logged
        method, retention = method_from_name(efficiency[0].get("config") if efficiency else None,
                                             efficiency[0].get("method") if efficiency else None)
    frames = spec.get("frames") or (config or {}).get("num_frames")
    run = EvalRun(
        folder=folder,
        date_id=date_id,
        results_path=results_path,
        cell_dir=cell_dir,
        cell=cell,
        pretrained=str(pretrained),
        model_name=str(model_name),
        config=config,
        config_hash=config_hash,
        method=str(method),
        retention=retention,
        frames=frames,
        limit=run_config.get("limit"),
        tasks={},
        problems=problems,
        label=(cell or {}).get("label"),
    )
    for top, leaves in _top_tasks(results).items():
        outcome = _task_outcome(results, top, leaves, folder, date_id, efficiency)
        if spec.get("task") and task_key(top) != spec["task"] and top != spec.get("lmms_task"):
            outcome.notes.append(f"run task {top} is not the cell's task {spec['task']}")
        run.tasks[outcome.task] = outcome
    if spec.get("task") and not run.tasks:
        run.tasks[spec["task"]] = _missing_outcome(spec["task"], "results.json lists no task")
    return run


def _stamp(date_id: str) -> float | None:
    try:
        return _dt.datetime.strptime(date_id[:15], "%Y%m%d_%H%M%S").timestamp()
    except ValueError:
        return None


def _efficiency_files(folder: Path, date_id: str) -> list[Path]:
    """The efficiency logs of the run ``date_id`` in ``folder``: its own date prefix, plus rank files whose
    prefix is a few seconds off (each process of a data-parallel run takes its own clock reading) when no
    other run of the folder is closer in time."""
    runs = sorted(p.name[: -len("_results.json")] for p in folder.glob("*_results.json"))
    out = []
    for path in sorted(folder.glob("*_efficiency*.jsonl")):
        prefix = path.name.split("_efficiency")[0]
        if prefix == date_id:
            out.append(path)
            continue
        if prefix in runs:
            continue
        mine, theirs = _stamp(date_id), _stamp(prefix)
        if mine is None or theirs is None or abs(theirs - mine) > 300:
            continue
        nearest = min(runs, key=lambda d: abs((_stamp(d) or 0.0) - theirs))
        if nearest == date_id:
            out.append(path)
    return out


def _top_tasks(results: Mapping[str, Any]) -> dict[str, list[str]]:
    """Top-level tasks of a results.json and their leaf tasks."""
    groups = results.get("group_subtasks") or {}
    entries = results.get("results") or {}
    children = {c for subs in groups.values() for c in (subs or [])}
    names = [n for n in list(groups) + [n for n in entries if n not in groups] if n not in children]

    def leaves(name: str, seen: frozenset = frozenset()) -> list[str]:
        subs = groups.get(name) or []
        if not subs or name in seen:
            return [name]
        return [leaf for sub in subs for leaf in leaves(sub, seen | {name})]

    return {name: leaves(name) for name in dict.fromkeys(names)}


def _missing_outcome(task: str, problem: str) -> TaskOutcome:
    return TaskOutcome(task=task_key(task), run_task=task, leaves=[], metric=None, accuracy=None,
                       accuracy_from_samples=None, docs_expected=None, rows=[], problems=[problem])


def _task_outcome(
    results: Mapping[str, Any], top: str, leaves: list[str], folder: Path, date_id: str,
    efficiency: list[dict[str, Any]],
) -> TaskOutcome:
    entries = results.get("results") or {}
    n_samples = results.get("n-samples") or {}
    problems: list[str] = []
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    leaf_reported: list[float] = []
    leaf_recomputed: list[float | None] = []
    leaf_sizes: list[int] = []
    expected_total = 0
    metric_top: str | None = None
    log = _log_frame(efficiency)
    for leaf in leaves:
        entry = entries.get(leaf) or {}
        metric = metric_of(entry)
        metric_top = metric_top or metric
        rule = METRICS.get(metric or "", MetricRule())
        value = entry.get(f"{metric},none") if metric else None
        if not is_number(value):
            problems.append(f"{leaf}: results.json has no numeric score")
        else:
            leaf_reported.append(float(value) * rule.scale)
        expected = (n_samples.get(leaf) or {}).get("effective")
        expected = int(expected) if is_number(expected) else None
        expected_total += expected or 0
        samples_path = folder / f"{date_id}_samples_{leaf}.jsonl"
        if not samples_path.is_file():
            problems.append(f"{leaf}: samples file {samples_path.name} missing (run without --log_samples?)")
            leaf_recomputed.append(None)
            continue
        samples = read_log(samples_path)
        leaf_sizes.append(len(samples))
        if expected is not None and len(samples) != expected:
            problems.append(f"{leaf}: {len(samples)} samples, results.json counted {expected}")
        outcomes = [sample_outcome(metric or "", s.get(metric)) if metric else (None, True, None) for s in samples]
        leaf_recomputed.append(aggregate_scores(rule, outcomes))
        joined, missing, extra, duplicated = join_samples_and_log(leaf, samples, outcomes, log)
        for row in joined:
            row["task"] = task_key(top)
        rows.extend(joined)
        if missing == len(samples) and samples:
            problems.append(f"{leaf}: no efficiency log lines (expected {len(samples)})")
        elif missing or extra:
            problems.append(f"{leaf}: efficiency log covers {len(samples) - missing} of {len(samples)} documents"
                            + (f", plus {extra} not in the samples" if extra else ""))
        if duplicated:
            problems.append(f"{leaf}: {duplicated} documents logged twice in the efficiency log")
    rule = METRICS.get(metric_top or "", MetricRule())
    top_value = (entries.get(top) or {}).get(f"{metric_top},none") if metric_top else None
    if len(leaves) == 1:
        accuracy = leaf_reported[0] if leaf_reported else None
        recomputed = leaf_recomputed[0] if leaf_recomputed else None
    elif is_number(top_value):  # a group with its own aggregate (weighted by size, lmms-eval's default)
        accuracy = float(top_value) * rule.scale
        parts = [(v, n) for v, n in zip(leaf_recomputed, leaf_sizes) if v is not None]
        recomputed = (sum(v * n for v, n in parts) / sum(n for _, n in parts)
                      if len(parts) == len(leaves) and sum(n for _, n in parts) else None)
    else:  # a group without an aggregate (MVBench): mean over its subtasks, as papers report it
        accuracy = sum(leaf_reported) / len(leaf_reported) if len(leaf_reported) == len(leaves) else None
        recomputed = (sum(leaf_recomputed) / len(leaf_recomputed)  # type: ignore[arg-type]
                      if leaf_recomputed and all(v is not None for v in leaf_recomputed) else None)
        if len(leaves) > 1:
            notes.append(f"mean over {len(leaves)} subtasks")
    if accuracy is not None and recomputed is not None and abs(accuracy - recomputed) > 1e-6:
        problems.append(f"results.json says {accuracy:.4f}% but the samples give {recomputed:.4f}%")
    if accuracy is not None and recomputed is None and rule.kind == "external":
        notes.append("scored by an external server: not recomputed from the samples")
    return TaskOutcome(
        task=task_key(top), run_task=top, leaves=leaves, metric=metric_top, accuracy=accuracy,
        accuracy_from_samples=recomputed, docs_expected=expected_total or None, rows=rows, problems=problems,
        notes=notes,
    )


def _log_frame(efficiency: list[dict[str, Any]]) -> Any:
    """The efficiency log as a DataFrame keyed by (task, doc_id) (``videos`` dropped)."""
    frame = pd.DataFrame(efficiency)
    if frame.empty:
        return pd.DataFrame(columns=["task", "doc_id"])
    return frame.drop(columns=[c for c in ("videos",) if c in frame.columns])


def join_samples_and_log(
    leaf: str, samples: list[dict[str, Any]], outcomes: list[tuple[float | None, bool, str | None]], log: Any,
) -> tuple[list[dict[str, Any]], int, int, int]:
    """Join one task's samples with its efficiency-log lines by (task, doc_id) (pandas).

    Returns ``(rows, documents missing from the log, log lines of unknown documents, documents logged twice)``;
    one row per sample: ``leaf``, ``doc_id``, ``score`` (0-1), ``answered``, ``category``,
    ``in_efficiency_log`` and the log's fields.
    """
    left = pd.DataFrame({
        "task": leaf,
        "doc_id": [s.get("doc_id") for s in samples],
        "score": [o[0] for o in outcomes],
        "answered": [o[1] for o in outcomes],
        "category": [o[2] for o in outcomes],
    }, columns=["task", "doc_id", "score", "answered", "category"])
    right = log[log["task"] == leaf] if "task" in log.columns else log.iloc[0:0]
    duplicated = int(right.duplicated(subset=["doc_id"]).sum())
    right = right.drop_duplicates(subset=["doc_id"], keep="last")
    overlap = [c for c in right.columns if c in left.columns and c not in ("task", "doc_id")]
    merged = left.merge(right.drop(columns=overlap), on=["task", "doc_id"], how="outer", indicator=True)
    missing = int((merged["_merge"] == "left_only").sum())
    extra = int((merged["_merge"] == "right_only").sum())
    merged = merged[merged["_merge"] != "right_only"].copy()
    merged["in_efficiency_log"] = merged["_merge"] == "both"
    merged = merged.drop(columns=["_merge"]).rename(columns={"task": "leaf"})
    merged = merged.astype(object).where(merged.notna(), None)  # NaN of absent fields -> None
    return merged.to_dict("records"), missing, extra, duplicated


def _cell_without_results(cell_dir: Path, cell: dict[str, Any]) -> EvalRun:
    """A runner's cell folder whose lmms-eval run left no results.json (failed, interrupted or running)."""
    spec = cell.get("spec") or {}
    lines = sum(len(read_log(p)) for p in cell_dir.rglob("*_efficiency*.jsonl"))
    log = cell_dir / "lmms-eval.log"
    where = f"see {log}" if log.is_file() else "not started"
    state = cell.get("state") or "unknown"
    problem = (f"no results.json: lmms-eval {state} ({lines} documents in the efficiency log; {where})")
    model = spec.get("model") or {}
    return EvalRun(
        folder=cell_dir, date_id="", results_path=None, cell_dir=cell_dir, cell=cell,
        pretrained=str(model.get("pretrained", "")), model_name=str(model.get("name", "")),
        config=spec.get("config"), config_hash=spec.get("config_hash"), method=str(spec.get("method", "unknown")),
        retention=spec.get("retention"), frames=spec.get("frames"), limit=spec.get("limit"),
        tasks={spec.get("task", "?"): _missing_outcome(spec.get("task", "?"), problem)}, label=cell.get("label"),
    )


def discover_eval_runs(runs_dir: Path) -> list[EvalRun]:
    """Every lmms-eval run under ``runs_dir``, plus runner cell folders without a results.json."""
    runs_dir = Path(runs_dir)
    runs = [load_eval_run(p, runs_dir) for p in sorted(runs_dir.rglob("*_results.json"))]
    with_results = {r.cell_dir for r in runs if r.cell_dir is not None}
    for path in sorted(runs_dir.rglob(CELL_FILE)):
        try:
            cell = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (cell.get("spec") or {}).get("kind") == "eval" and path.parent.resolve() not in with_results:
            runs.append(_cell_without_results(path.parent.resolve(), cell))
    return runs


def eval_cell_problems(cell_dir: Path, spec: Mapping[str, Any]) -> list[str]:
    """Why a runner's eval cell folder is not a complete result for ``spec`` (empty list = complete)."""
    cell_dir = Path(cell_dir)
    results = sorted(cell_dir.rglob("*_results.json"))
    if not results:
        return ["no results.json"]
    problems = []
    runs = [load_eval_run(p, cell_dir) for p in results]
    if len(runs) > 1:
        problems.append(f"{len(runs)} lmms-eval runs in one cell folder")
    run = runs[-1]
    outcome = run.tasks.get(spec["task"])
    if outcome is None:
        return problems + [f"results.json has no task {spec['task']} (has {', '.join(run.tasks) or 'none'})"]
    problems += run.problems + outcome.problems
    hashes = {r.get("config_hash") for r in outcome.rows if r.get("config_hash")}
    if hashes and hashes != {spec.get("config_hash")}:
        problems.append(f"efficiency log config {sorted(hashes)} is not the cell's {spec.get('config_hash')}")
    return problems


@dataclass
class BenchRun:
    path: Path
    report: dict[str, Any]
    cell: dict[str, Any] | None
    model_name: str
    pretrained: str
    settings: str
    created: str
    problems: list[str] = field(default_factory=list)
    label: str | None = None

    @property
    def frames(self) -> int | None:
        video = self.report.get("video") or {}
        return video.get("frames")


def _looks_like_bench(data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    if data.get("tool") == "earlytom-eval bench":
        return True
    configs = data.get("configs")
    return isinstance(configs, list) and "ratios" in data and all(isinstance(c, dict) and "ttft_ms" in c
                                                                   for c in configs)


def load_bench_run(path: Path, root: Path | None = None) -> BenchRun | None:
    """A bench report (None when the file is not one)."""
    path = Path(path)
    try:
        if path.stat().st_size > 50 * 2**20:
            return None
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not _looks_like_bench(data):
        return None
    problems = []
    try:
        validate_report(data)
    except ValueError as err:
        problems.append(f"bench report incomplete: {err}")
    cell_dir, cell = _find_cell_json(path.parent, root)
    spec = (cell or {}).get("spec") or {}
    source = str((data.get("model") or {}).get("source", ""))
    if spec.get("model"):
        model_name, pretrained = spec["model"].get("name", ""), spec["model"].get("pretrained", "")
    elif source.startswith("checkpoint "):
        pretrained = source[len("checkpoint "):].strip()
        model_name = _model_name(pretrained)
    else:
        pretrained = source
        model_name = "preset-" + source.split("'")[1] if source.count("'") >= 2 else (source or path.stem)
    settings = spec.get("settings") or path.stem
    if spec.get("configs"):
        want = sorted(c.get("config_hash", "") for c in spec["configs"])
        have = sorted(fingerprint(e.get("config")) or "" for e in data.get("configs", []))
        if want != have:
            problems.append(f"bench report configs {have} are not the cell's {want}")
    return BenchRun(path=path, report=data, cell=cell, model_name=str(model_name), pretrained=str(pretrained),
                    settings=str(settings), created=str(data.get("created_utc", "")), problems=problems,
                    label=(cell or {}).get("label"))


def discover_bench_runs(runs_dir: Path) -> list[BenchRun]:
    out = []
    for path in sorted(Path(runs_dir).rglob("*.json")):
        if path.name.endswith("_results.json") or path.name == CELL_FILE:
            continue
        run = load_bench_run(path, Path(runs_dir))
        if run is not None:
            out.append(run)
    return out
