"""The paper's tables from lmms-eval runs and TTFT benchmarks: ``earlytom-eval tables``.

``earlytom-eval tables --runs results/runs --out results/tables`` finds, anywhere under ``--runs``:

* **lmms-eval runs**: ``<date>_results.json`` with the same folder's ``<date>_samples_<task>.jsonl`` and
  ``<date>_efficiency*.jsonl`` (this plugin's per-sample log, one file per process); a ``cell.json`` in a
  parent folder (written by ``earlytom-eval reproduce``) names the grid cell, otherwise the cell is read
  from the run itself (``model_args``, the config it names, the log's config hash);
* **TTFT benchmarks**: JSON reports of ``earlytom-eval bench`` (any ``*.json`` with its schema).

Per run and task, the samples and the efficiency log are joined by (task, doc_id). A cell (model, task,
method, retention) is *complete* when results.json has the task's metric, the samples cover the documents
lmms-eval counted (``n-samples``) and the efficiency log covers the same documents with one config hash.
Runs of one cell must agree on the model, the config (hash) and the number of samples; otherwise the cell
is a *conflict*, and nothing is averaged. Incomplete and conflicting cells are shown as such, never
silently filled.

Outputs in ``--out`` (each table as ``.md``, ``.csv`` and ``.tex`` (booktabs), all Markdown in
``tables.md``, everything in ``summary.json``), plots from :mod:`earlytom_eval.plots`:

* ``accuracy``: per task and the average, absolute and as % of full tokens, per method and ratio;
* ``efficiency_eval``: from the per-sample logs of the evaluated documents: median TTFT with its stage
  breakdown, speedup vs full (ratio of the medians), visual tokens into the LLM, peak memory, decoding
  throughput;
* ``bench``: the TTFT benchmark (one clip, configs interleaved): median TTFT [min-max], stages, speedup,
  peak memory, decode throughput;
* ``flops``: FLOPs per stage (from the benchmark's token counts) and % of full;
* ``published``: the reference's published numbers (:mod:`earlytom_eval.published`) beside ours, with the
  difference, where our run is comparable (LLaVA-OV-7B, 32 frames);
* ``cells``: every cell's status, documents and run folder.

Accuracies are in percent, as lmms-eval's own aggregation computes them (results.json); the same number
recomputed from the samples is kept in the CSV (``accuracy_from_samples``) and any disagreement is flagged.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..lmms.efficiency_log import read_log as read_jsonl
from ..reproduce.runner import CELL_FILE, REPO  # the runner writes the cells this module reads
from . import published as pub

__all__ = [
    "BenchRun",
    "Cell",
    "EvalRun",
    "METHOD_LABELS",
    "TASK_LABELS",
    "Tables",
    "aggregate",
    "eval_cell_problems",
    "load_bench_run",
    "load_eval_run",
    "write_tables",
]

STAGES_MS = (
    "vision_encoder_ms",
    "compression_ms",
    "projector_pooling_ms",
    "llm_prefill_ms",
    "inner_merge_ms",
    "first_token_ms",
)
STAGE_LABELS = {
    "vision_encoder": "vision encoder",
    "compression": "compression",
    "projector_pooling": "projector + pooling",
    "llm_prefill": "LLM prefill",
    "inner_merge": "stage-3 merge",
    "first_token": "first token",
    "other": "other",
}
BENCH_STAGES = ("vision_encoder", "compression", "projector_pooling", "llm_prefill", "inner_merge", "first_token",
                "other")
FLOP_STAGES = ("vision_encoder", "compression", "projector_pooling", "llm_prefill")

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
}
METHOD_ORDER = ("full", "earlytom", "earlytom_postenc")


# ------------------------------------------------------------------------------------ metrics
@dataclass(frozen=True)
class MetricRule:
    """How one lmms-eval metric turns into an accuracy in percent.

    Attributes:
        scale: results.json value * scale = percent (LongVideoBench reports a fraction).
        kind: ``micro`` (mean over documents), ``answered`` (mean over documents with a parsed answer,
            MVBench's rule), ``macro`` (mean over categories of the per-category accuracy, MLVU dev's rule;
            ``groups`` fixes the categories, an empty one counting 0 as in lmms-eval), ``external``
            (scored by a server: not recomputable from the samples).
    """

    scale: float = 1.0
    kind: str = "micro"
    groups: tuple[str, ...] = ()


METRICS: dict[str, MetricRule] = {
    "videomme_perception_score": MetricRule(),
    "mlvu_percetion_score": MetricRule(
        kind="macro", groups=("anomaly_reco", "count", "ego", "needle", "order", "plotQA", "topic_reasoning")
    ),
    "mvbench_accuracy": MetricRule(kind="answered"),
    "lvb_acc": MetricRule(scale=100.0),
    "score": MetricRule(scale=100.0),  # egoschema_subset: fraction correct
    "submission": MetricRule(kind="external"),  # egoschema: EgoSchema's validation server, percent
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sample_outcome(metric: str, value: Any) -> tuple[float | None, bool, str | None]:
    """``(score in [0, 1] or None, answered, category)`` of one sample's metric value."""
    if _is_number(value):
        return float(value), True, None
    if not isinstance(value, Mapping):
        return None, True, None
    if metric == "videomme_perception_score":
        if _is_number(value.get("score")):
            return float(value["score"]), True, None
        return float(str(value.get("pred_answer", "")).lower() == str(value.get("answer", "")).lower()), True, None
    if metric == "mlvu_percetion_score":
        return float(value.get("pred_answer") == value.get("answer")), True, value.get("task_type")
    if metric == "mvbench_accuracy":
        score = value.get("score")
        return (float(score) if _is_number(score) else 0.0), value.get("pred_answer", "") != "", None
    if metric == "lvb_acc":
        return float(value.get("parsed_pred") == value.get("answer")), True, None
    if metric == "score" and "ground_truth" in value:
        return float(str(value.get("ground_truth")) == str(value.get("pred"))), True, None
    if _is_number(value.get("score")):
        return float(value["score"]), True, None
    return None, True, None


def aggregate_scores(rule: MetricRule, rows: Sequence[tuple[float | None, bool, str | None]]) -> float | None:
    """The task's accuracy in percent from per-sample outcomes (None when not recomputable)."""
    if rule.kind == "external" or not rows or any(score is None for score, _, _ in rows):
        return None
    if rule.kind == "answered":
        answered = [score for score, ok, _ in rows if ok]
        return 100.0 * sum(answered) / len(answered) if answered else 0.0
    if rule.kind == "macro":
        by_group: dict[str, list[float]] = defaultdict(list)
        for score, _, group in rows:
            by_group[str(group)].append(score)
        groups = rule.groups or tuple(sorted(by_group))
        per_group = [100.0 * sum(by_group[g]) / len(by_group[g]) if by_group.get(g) else 0.0 for g in groups]
        return sum(per_group) / len(per_group) if per_group else None
    return 100.0 * sum(score for score, _, _ in rows) / len(rows)


def _metric_of(entry: Mapping[str, Any]) -> str | None:
    """The metric name of a results.json task entry (``"<metric>,none"`` keys, stderr excluded)."""
    names = [k.split(",")[0] for k, v in entry.items() if "," in k and "_stderr" not in k and _is_number(v)]
    for name in names:
        if name in METRICS:
            return name
    return names[0] if names else None


# ------------------------------------------------------------------------------------ config and cells
def method_of(config: Mapping[str, Any] | None, fallback: str | None = None) -> tuple[str, float | None]:
    """``(method key, retention)`` of a config dict: ``full``, ``earlytom`` or ``earlytom_postenc``
    (EarlyTom with no prune layer, i.e. without the encoder stage)."""
    if not config:
        return (fallback or "unknown"), None
    method = config.get("method") or fallback or "unknown"
    if method == "full":
        return "full", None
    retention = config.get("retention")
    retention = round(float(retention), 4) if _is_number(retention) else None
    if method == "earlytom" and not list(config.get("prune_layers") or []):
        return "earlytom_postenc", retention
    return str(method), retention


def method_from_name(name: str | None, method: str | None = None) -> tuple[str, float | None]:
    """``(method key, retention)`` from a config name like ``earlytom_r0.10`` (when the config itself is gone)."""
    import re

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
    from ..compression.config import CompressionConfig, ConfigError, load_config

    args = _parse_model_args(model_args)
    try:
        source = args.get("config")
        base = load_config(_find_config(source)) if source else CompressionConfig()
        overrides = {k: v for k, v in args.items() if k in CompressionConfig.field_names() and k != "description"}
        if args.get("max_frames_num"):
            overrides["num_frames"] = args["max_frames_num"]
        return (base.with_overrides(overrides) if overrides else base).to_dict()
    except (ConfigError, OSError, ValueError):
        return None


def _find_config(value: str) -> Path:
    path = Path(os.path.expanduser(value))
    candidates = [path, path.with_name(path.name + ".yaml")]
    if not path.is_absolute():
        for root in (Path.cwd() / "configs", REPO / "configs", REPO):
            candidates += [root / path, root / (str(path) + ".yaml")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return path


def _fingerprint(config: Mapping[str, Any] | None) -> str | None:
    if not config:
        return None
    from ..compression.config import CompressionConfig, ConfigError

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


# ------------------------------------------------------------------------------------ eval runs
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
        efficiency.extend(read_jsonl(path))
    pretrained = (spec.get("model") or {}).get("pretrained") or args.get("pretrained") or (
        efficiency[0].get("model") if efficiency else "") or str(results.get("model_name") or "")
    model_name = (spec.get("model") or {}).get("name") or _model_name(pretrained)
    config = spec.get("config") or config_from_model_args(model_args)
    hashes = sorted({str(r.get("config_hash")) for r in efficiency if r.get("config_hash")})
    log_hash = hashes[0] if len(hashes) == 1 else None
    config_hash = spec.get("config_hash") or log_hash or _fingerprint(config)
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
        metric = _metric_of(entry)
        metric_top = metric_top or metric
        rule = METRICS.get(metric or "", MetricRule())
        value = entry.get(f"{metric},none") if metric else None
        if not _is_number(value):
            problems.append(f"{leaf}: results.json has no numeric score")
        else:
            leaf_reported.append(float(value) * rule.scale)
        expected = (n_samples.get(leaf) or {}).get("effective")
        expected = int(expected) if _is_number(expected) else None
        expected_total += expected or 0
        samples_path = folder / f"{date_id}_samples_{leaf}.jsonl"
        if not samples_path.is_file():
            problems.append(f"{leaf}: samples file {samples_path.name} missing (run without --log_samples?)")
            leaf_recomputed.append(None)
            continue
        samples = read_jsonl(samples_path)
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
    elif _is_number(top_value):  # a group with its own aggregate (weighted by size, lmms-eval's default)
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
    import pandas as pd

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
    import pandas as pd

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
    lines = sum(len(read_jsonl(p)) for p in cell_dir.rglob("*_efficiency*.jsonl"))
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


# ------------------------------------------------------------------------------------ bench runs
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
        from ..efficiency.bench import validate_report

        validate_report(data)
    except ValueError as err:
        problems.append(f"bench report incomplete: {err}")
    except ImportError:  # pragma: no cover - bench.py is part of the package
        pass
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
        have = sorted(_fingerprint(e.get("config")) or "" for e in data.get("configs", []))
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


# ------------------------------------------------------------------------------------ cells
@dataclass
class Cell:
    """One (model, task, method, retention) cell of the accuracy and per-document efficiency tables."""

    model: str
    task: str
    method: str
    retention: float | None
    status: str  # complete | incomplete | conflict | not run
    reason: str = ""
    run: EvalRun | None = None
    outcome: TaskOutcome | None = None
    runs: list[EvalRun] = field(default_factory=list)
    method_label: str = ""
    order: int = 0

    @property
    def key(self) -> tuple[str, str, str, float | None]:
        return (self.model, self.task, self.method, self.retention)


def _retention_key(value: Any) -> float | None:
    return round(float(value), 4) if _is_number(value) else None


def resolve_cells(runs: Sequence[EvalRun], expected: Sequence[Mapping[str, Any]] = ()) -> list[Cell]:
    """Group runs into cells; refuse to mix runs that disagree; mark incomplete and missing cells."""
    grouped: dict[tuple, list[tuple[EvalRun, TaskOutcome]]] = defaultdict(list)
    labels: dict[tuple, str] = {}
    orders: dict[tuple, int] = {}
    for index, spec in enumerate(expected):
        key = (spec["model"], spec["task"], spec["method"], _retention_key(spec.get("retention")))
        grouped.setdefault(key, [])
        labels[key] = spec.get("method_label") or method_label(spec["method"])
        orders[key] = index
    for run in runs:
        for outcome in run.tasks.values():
            key = (run.model_name, outcome.task, run.method, _retention_key(run.retention))
            grouped[key].append((run, outcome))
            if run.cell:
                labels.setdefault(key, (run.cell.get("spec") or {}).get("method_label") or method_label(run.method))
    cells = []
    for key, members in grouped.items():
        model, task, method, retention = key
        cell = Cell(model=model, task=task, method=method, retention=retention, status="not run",
                    method_label=labels.get(key) or method_label(method), order=orders.get(key, 10**6))
        cell.runs = [run for run, _ in members]
        if not members:
            cell.reason = "no run found"
            cells.append(cell)
            continue
        identities = {}
        for run, outcome in members:
            identity = (run.pretrained, run.config_hash, outcome.docs_expected, str(run.limit))
            identities.setdefault(identity, []).append(run)
        if len(identities) > 1:
            cell.status = "conflict"
            parts = []
            for (pretrained, chash, docs, limit), group in identities.items():
                where = ", ".join(str(r.results_path or r.folder) for r in group)
                parts.append(f"model {pretrained}, config {chash}, {docs} samples, limit {limit}: {where}")
            cell.reason = "runs disagree (not mixed): " + " | ".join(parts)
            cells.append(cell)
            continue
        complete = [(r, o) for r, o in members if o.complete and not r.problems]
        chosen = max(complete or members, key=lambda m: m[0].date_id)
        cell.run, cell.outcome = chosen
        if complete:
            cell.status = "complete"
            if len(members) > 1:
                cell.reason = f"{len(members)} runs of the same config; the latest complete one used"
        else:
            cell.status = "incomplete"
            cell.reason = "; ".join(chosen[0].problems + chosen[1].problems)
        cells.append(cell)
    return sorted(cells, key=_cell_sort_key)


def _cell_sort_key(cell: Cell) -> tuple:
    method_rank = METHOD_ORDER.index(cell.method) if cell.method in METHOD_ORDER else len(METHOD_ORDER)
    task_rank = TASK_ORDER.index(cell.task) if cell.task in TASK_ORDER else len(TASK_ORDER)
    return (cell.model, method_rank, cell.method, -(cell.retention or 1.0), task_rank, cell.task)


# ------------------------------------------------------------------------------------ statistics
def _median(values: Iterable[Any]) -> float | None:
    values = [float(v) for v in values if _is_number(v)]
    return float(statistics.median(values)) if values else None


def _mean(values: Iterable[Any]) -> float | None:
    values = [float(v) for v in values if _is_number(v)]
    return sum(values) / len(values) if values else None


def document_efficiency(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians over the documents without error (TTFT, stages, decoding) and token means."""
    ok = [r for r in rows if r.get("in_efficiency_log") and not r.get("error")]
    out: dict[str, Any] = {"docs_timed": len(ok), "docs_with_error": sum(1 for r in rows if r.get("error"))}
    out["ttft_ms"] = _median(r.get("ttft_ms") for r in ok)
    for name in STAGES_MS:
        out[name] = _median(r.get(name) for r in ok)
    others = []
    for r in ok:
        if _is_number(r.get("ttft_ms")):
            others.append(max(0.0, r["ttft_ms"] - sum(r.get(s) or 0.0 for s in STAGES_MS if _is_number(r.get(s)))))
    out["other_ms"] = _median(others)
    out["visual_tokens"] = _mean(r.get("visual_tokens") for r in ok)
    out["prompt_tokens"] = _mean(r.get("prompt_tokens") for r in ok)
    out["frames_out"] = _mean(r.get("frames_out") for r in ok)
    rates = [(r["generated_tokens"] - 1) / (r["decode_ms"] / 1000.0) for r in ok
             if _is_number(r.get("generated_tokens")) and r["generated_tokens"] > 1
             and _is_number(r.get("decode_ms")) and r["decode_ms"] > 0]
    out["decode_tokens_per_s"] = _median(rates)
    peaks = [r.get("peak_memory_mb") for r in ok if _is_number(r.get("peak_memory_mb"))]
    out["peak_memory_gib"] = max(peaks) / 1024.0 if peaks else None
    kinds = sorted({str(r.get("peak_memory_kind")) for r in ok if r.get("peak_memory_kind")})
    out["peak_memory_kind"] = ", ".join(kinds)
    return out


# ------------------------------------------------------------------------------------ tables
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


@dataclass
class Tables:
    tables: list[Table]
    cells: list[Cell]
    bench_runs: list[BenchRun]
    problems: list[str]
    header: list[str]
    plots: list[Path] = field(default_factory=list)

    def get(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)


def _fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    if not _is_number(value):
        return "—"
    return f"{value:.{digits}f}{suffix}"


def _ratio_label(method: str, retention: float | None) -> str:
    return "100%" if method == "full" or retention is None else f"{retention * 100:g}%"


def _status_mark(cell: Cell | None) -> str:
    if cell is None:
        return "not run"
    if cell.status == "incomplete":
        outcome = cell.outcome
        docs = len(outcome.rows) if outcome else 0
        expected = outcome.docs_expected if outcome else None
        return f"incomplete ({docs}/{expected} docs)" if expected else "incomplete"
    return cell.status


def _average_tasks(tasks: Sequence[str], average: Sequence[str] | None) -> list[str]:
    if average:
        return [t for t in average if t in tasks] or list(tasks)
    paper = [t for t in pub.AVERAGE_TASKS if t in tasks]
    return paper if len(paper) == len(pub.AVERAGE_TASKS) else list(tasks)


def accuracy_table(cells: Sequence[Cell], average: Sequence[str] | None = None) -> Table:
    """Accuracy per task and average, absolute and % of full tokens, per model, method and ratio."""
    by_key = {c.key: c for c in cells}
    models = list(dict.fromkeys(c.model for c in cells))
    data, display = [], []
    columns = ["Model", "Method", "Retention"]
    tasks_all = sorted({c.task for c in cells}, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else 99, t))
    avg_tasks = _average_tasks(tasks_all, average)
    avg_label = "Avg" if len(avg_tasks) == len(tasks_all) else f"Avg ({len(avg_tasks)} tasks)"
    columns += [task_label(t) for t in tasks_all] + [avg_label, "% of full"]
    notes = [
        "Accuracy in %, lmms-eval's own aggregation of each task (results.json); in brackets: % of the same "
        "model's full-token accuracy on that task.",
        f"{avg_label}: mean over {', '.join(task_label(t) for t in avg_tasks)}; % of full = {avg_label} / "
        f"{avg_label} of full tokens.",
        "A cell is shown only when complete (results, samples and efficiency log agree); otherwise its status.",
    ]
    for model in models:
        rows = sorted({(c.method, c.retention) for c in cells if c.model == model},
                      key=lambda mr: (METHOD_ORDER.index(mr[0]) if mr[0] in METHOD_ORDER else 9, mr[0],
                                      -(mr[1] or 1.0)))
        full = {t: by_key.get((model, t, "full", None)) for t in tasks_all}
        full_acc = {t: c.outcome.accuracy for t, c in full.items() if c and c.status == "complete" and c.outcome}
        full_avg = (sum(full_acc[t] for t in avg_tasks) / len(avg_tasks)
                    if all(t in full_acc for t in avg_tasks) else None)
        for method, retention in rows:
            label = next((c.method_label for c in cells if c.model == model and c.method == method), method)
            line = [model, label, _ratio_label(method, retention)]
            values = {}
            for task in tasks_all:
                cell = by_key.get((model, task, method, retention))
                record = {
                    "model": model, "task": task, "method": method, "method_label": label,
                    "retention": retention, "status": cell.status if cell else "not run",
                    "reason": cell.reason if cell else "", "accuracy": None, "accuracy_from_samples": None,
                    "pct_of_full": None, "docs": None, "docs_expected": None, "docs_with_error": None,
                    "config_hash": None, "run": None,
                }
                if cell is not None and cell.outcome is not None:
                    outcome = cell.outcome
                    record.update(
                        docs=len(outcome.rows), docs_expected=outcome.docs_expected,
                        docs_with_error=sum(1 for r in outcome.rows if r.get("error")),
                        config_hash=cell.run.config_hash if cell.run else None,
                        run=_display_path(cell.run.results_path) if cell.run and cell.run.results_path else None,
                    )
                if cell is not None and cell.status == "complete" and cell.outcome is not None:
                    acc = cell.outcome.accuracy
                    record["accuracy"] = acc
                    record["accuracy_from_samples"] = cell.outcome.accuracy_from_samples
                    if task in full_acc and full_acc[task] and acc is not None:
                        record["pct_of_full"] = 100.0 * acc / full_acc[task]
                    values[task] = acc
                    pct = record["pct_of_full"]
                    line.append(_fmt(acc) + (f" ({pct:.1f}%)" if pct is not None and method != "full" else ""))
                else:
                    line.append(_status_mark(cell))
                data.append(record)
            if all(t in values and values[t] is not None for t in avg_tasks):
                avg = sum(values[t] for t in avg_tasks) / len(avg_tasks)
                pct = 100.0 * avg / full_avg if full_avg else None
                line += [_fmt(avg), _fmt(pct)]
            else:
                avg = pct = None
                line += ["incomplete", "—"]
            data.append({"model": model, "task": "average", "method": method, "method_label": label,
                         "retention": retention, "status": "complete" if avg is not None else "incomplete",
                         "reason": "" if avg is not None else "a task of the average is not complete",
                         "accuracy": avg, "pct_of_full": pct, "average_over": ";".join(avg_tasks)})
            display.append(line)
    return Table("accuracy", "Accuracy (%) per task, and as % of full tokens", data, columns, display, notes,
                 align="lll" + "r" * (len(columns) - 3))


def efficiency_eval_table(cells: Sequence[Cell]) -> Table:
    """Per-document efficiency of the evaluated runs (the plugin's log), with speedup vs full."""
    columns = ["Model", "Task", "Method", "Retention", "Docs", "Visual tokens", "TTFT ms", "Speedup",
               "Encoder ms", "Compression ms", "Proj+pool ms", "LLM prefill ms", "Stage-3 ms", "Other ms",
               "Peak mem GiB", "Decode tok/s"]
    data, display = [], []
    full_ttft = {}
    stats = {}
    for cell in cells:
        if cell.status == "complete" and cell.outcome is not None:
            stats[cell.key] = document_efficiency(cell.outcome.rows)
            if cell.method == "full":
                full_ttft[(cell.model, cell.task)] = stats[cell.key]["ttft_ms"]
    kinds = set()
    for cell in cells:
        label = _ratio_label(cell.method, cell.retention)
        s = stats.get(cell.key)
        record = {"model": cell.model, "task": cell.task, "method": cell.method, "method_label": cell.method_label,
                  "retention": cell.retention, "status": cell.status}
        if s is None:
            data.append(record)
            display.append([cell.model, task_label(cell.task), cell.method_label, label, _status_mark(cell)]
                           + [""] * (len(columns) - 5))
            continue
        base = full_ttft.get((cell.model, cell.task))
        speedup = base / s["ttft_ms"] if base and s["ttft_ms"] else None
        record.update(s)
        record["speedup_vs_full"] = speedup
        record["full_ttft_ms"] = base
        kinds.add(s["peak_memory_kind"])
        data.append(record)
        display.append([
            cell.model, task_label(cell.task), cell.method_label, label,
            f"{s['docs_timed']}" + (f" (+{s['docs_with_error']} err)" if s["docs_with_error"] else ""),
            _fmt(s["visual_tokens"], 0), _fmt(s["ttft_ms"]), _fmt(speedup, 2, "x"),
            _fmt(s["vision_encoder_ms"]), _fmt(s["compression_ms"]), _fmt(s["projector_pooling_ms"]),
            _fmt(s["llm_prefill_ms"]), _fmt(s["inner_merge_ms"]), _fmt(s["other_ms"]),
            _fmt(s["peak_memory_gib"], 2), _fmt(s["decode_tokens_per_s"]),
        ])
    notes = [
        "From the per-document efficiency log of each run (documents with a data error excluded): medians "
        "over documents of TTFT (preprocessed frames to first token) and of each stage; speedup = median TTFT "
        "of full tokens / median TTFT of the method, same task; visual tokens into the LLM (mean, newline "
        "included); peak memory = the highest document's "
        + (", ".join(sorted(k for k in kinds if k)) or "peak") + " (includes the weights; cpu_max_rss is the "
        "process high-water mark); decode tok/s = median over documents of (generated tokens - 1) / decode time.",
    ]
    return Table("efficiency_eval", "Efficiency on the evaluated documents (per-document log)", data, columns,
                 display, notes, align="llll" + "r" * (len(columns) - 4))


def _bench_rows(bench_runs: Sequence[BenchRun]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per (bench report, config) with our own ratios against the report's full-token config."""
    chosen: dict[tuple[str, str], BenchRun] = {}
    problems = []
    conflicts = set()
    for run in bench_runs:
        key = (run.model_name, run.settings)
        other = chosen.get(key)
        if other is None:
            chosen[key] = run
            continue
        mine = sorted(_fingerprint(e.get("config")) or "" for e in run.report.get("configs", []))
        theirs = sorted(_fingerprint(e.get("config")) or "" for e in other.report.get("configs", []))
        if mine != theirs:
            conflicts.add(key)
            problems.append(f"bench {run.model_name} / {run.settings}: reports {other.path} and {run.path} "
                            "measure different configs; not mixed, neither used")
        elif run.created > other.created:
            chosen[key] = run
    rows = []
    for key, run in chosen.items():
        if key in conflicts:
            continue
        if run.problems:
            problems.append(f"bench {run.path}: " + "; ".join(run.problems))
            continue
        spec = (run.cell or {}).get("spec") or {}
        names = {c.get("name"): c for c in spec.get("configs", [])}
        entries = run.report.get("configs", [])
        full = next((e for e in entries if (e.get("method") or (e.get("config") or {}).get("method")) == "full"),
                    None)
        hardware = run.report.get("hardware") or {}
        for entry in entries:
            meta = names.get(entry.get("name")) or {}
            method, retention = (meta.get("method"), meta.get("retention")) if meta else method_of(entry.get("config"))
            ttft = entry.get("ttft_ms") or {}
            stages = entry.get("stages_ms") or {}
            flops = entry.get("flops") or {}
            decode = (entry.get("decode") or {}).get("tokens_per_s") or {}
            row = {
                "model": run.model_name, "pretrained": run.pretrained, "settings": run.settings,
                "tasks": ";".join(spec.get("tasks", [])), "config": entry.get("name"), "method": method,
                "method_label": meta.get("method_label") or method_label(method), "retention": retention,
                "frames": run.frames, "visual_tokens": entry.get("visual_tokens"),
                "frames_out": entry.get("frames_out"), "schedule": entry.get("schedule_compact"),
                "ttft_ms": ttft.get("median"), "ttft_min_ms": ttft.get("min"), "ttft_max_ms": ttft.get("max"),
                "timed_runs": entry.get("timed_runs"),
                "peak_memory_gib": entry["peak_memory_bytes"] / 2**30 if _is_number(entry.get("peak_memory_bytes"))
                else None,
                "decode_tokens_per_s": decode.get("median"),
                "total_prefill_flops": entry.get("total_prefill_flops"),
                "device": hardware.get("device_name") or hardware.get("device"), "dtype": hardware.get("dtype"),
                "torch_threads": hardware.get("torch_threads"),
                "report": _display_path(run.path), "created": run.created,
            }
            for stage in BENCH_STAGES:
                row[f"{stage}_ms"] = (stages.get(stage) or {}).get("median")
            for stage in (*FLOP_STAGES, "decode_step"):
                row[f"flops_{stage}"] = flops.get(stage)
            if full is not None:
                base = (full.get("ttft_ms") or {}).get("median")
                row["speedup_vs_full"] = base / row["ttft_ms"] if _is_number(base) and row["ttft_ms"] else None
                fdec = ((full.get("decode") or {}).get("tokens_per_s") or {}).get("median")
                row["decode_vs_full"] = (row["decode_tokens_per_s"] / fdec
                                         if _is_number(fdec) and fdec and _is_number(row["decode_tokens_per_s"])
                                         else None)
                ftot = full.get("total_prefill_flops")
                row["flops_pct_of_full"] = (100.0 * row["total_prefill_flops"] / ftot
                                            if _is_number(ftot) and ftot and _is_number(row["total_prefill_flops"])
                                            else None)
                for stage in FLOP_STAGES:
                    fval = (full.get("flops") or {}).get(stage)
                    val = row[f"flops_{stage}"]
                    row[f"flops_{stage}_pct_of_full"] = (100.0 * val / fval if _is_number(fval) and fval
                                                         and _is_number(val) else None)
            rows.append(row)
    rows.sort(key=lambda r: (r["model"], r["settings"],
                             METHOD_ORDER.index(r["method"]) if r["method"] in METHOD_ORDER else 9,
                             -(r["retention"] or 1.0)))
    return rows, problems


def bench_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    columns = ["Model", "Settings", "Method", "Retention", "Visual tokens", "Frames/layer", "TTFT ms [min-max]",
               "Speedup", "Encoder", "Compression", "Proj+pool", "LLM prefill", "Stage-3", "1st token", "Other",
               "Peak mem GiB", "Decode tok/s", "Decode vs full"]
    display = []
    for r in rows:
        display.append([
            r["model"], r["settings"], r["method_label"], _ratio_label(r["method"], r["retention"]),
            _fmt(r["visual_tokens"], 0), str(r.get("schedule") or ""),
            f"{_fmt(r['ttft_ms'])} [{_fmt(r['ttft_min_ms'])}-{_fmt(r['ttft_max_ms'])}]",
            _fmt(r.get("speedup_vs_full"), 2, "x"),
            *[_fmt(r.get(f"{s}_ms")) for s in BENCH_STAGES],
            _fmt(r["peak_memory_gib"], 2), _fmt(r["decode_tokens_per_s"]), _fmt(r.get("decode_vs_full"), 2, "x"),
        ])
    devices = sorted({f"{r['device']} ({r['dtype']}" + (f", {r['torch_threads']} torch thread(s)"
                                                         if r.get("torch_threads") and "CPU" in str(r["device"])
                                                         else "") + ")" for r in rows if r.get("device")})
    notes = [
        "`earlytom-eval bench`: one clip, batch 1, all configs of a settings row in one run, interleaved; TTFT = "
        "preprocessed frames on the device to the first token; median [min-max] over the timed rounds, stage "
        "columns in ms (medians of the stage-timed runs); speedup = full tokens' median TTFT / the method's; "
        "peak memory includes the weights; decode tok/s = greedy tokens after the first, per second.",
    ]
    if devices:
        notes.append("Measured on: " + "; ".join(devices) + ".")
    return Table("bench", "TTFT benchmark: stage breakdown, speedup, memory, decoding", list(rows), columns, display,
                 notes, align="llll" + "r" * (len(columns) - 4))


def _flop_unit(rows: Sequence[Mapping[str, Any]]) -> tuple[float, str]:
    totals = [r["total_prefill_flops"] for r in rows if _is_number(r.get("total_prefill_flops"))]
    return (1e12, "TFLOPs") if totals and max(totals) >= 1e12 else (1e9, "GFLOPs")


def flops_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    scale, unit = _flop_unit(rows)
    columns = ["Model", "Settings", "Method", "Retention", f"Encoder {unit}", f"Compression {unit}",
               f"Proj+pool {unit}", f"LLM prefill {unit}", f"Prefill total {unit}", "% of full",
               "Encoder % of full", "LLM % of full"]
    display = []
    for r in rows:
        display.append([
            r["model"], r["settings"], r["method_label"], _ratio_label(r["method"], r["retention"]),
            *[_fmt(r.get(f"flops_{s}") / scale if _is_number(r.get(f"flops_{s}")) else None, 3) for s in FLOP_STAGES],
            _fmt(r["total_prefill_flops"] / scale if _is_number(r.get("total_prefill_flops")) else None, 3),
            _fmt(r.get("flops_pct_of_full"), 1, "%"), _fmt(r.get("flops_vision_encoder_pct_of_full"), 1, "%"),
            _fmt(r.get("flops_llm_prefill_pct_of_full"), 1, "%"),
        ])
    data = [{k: v for k, v in r.items() if k.startswith("flops") or k in
             ("model", "settings", "config", "method", "method_label", "retention", "total_prefill_flops",
              "visual_tokens", "schedule", "report")} for r in rows]
    notes = [
        "Real FLOPs (2 per multiply-add) of the matrix products that ran, per stage, from the token and frame "
        "counts of the benchmark run (`earlytom-eval flops` basis; LLM attention counted as a full square); "
        "% of full = the method's / full tokens' prefill FLOPs.",
    ]
    return Table("flops", "FLOPs per stage", data, columns, display, notes, align="llll" + "r" * (len(columns) - 4))


def published_tables(cells: Sequence[Cell], bench_rows: Sequence[Mapping[str, Any]],
                     accuracy: Table) -> list[Table]:
    """The reference's published numbers beside ours (LLaVA-OV-7B, 32 frames only), with the difference."""
    comparable = {c.model for c in cells if c.run and pub.matches_model(c.run.pretrained, c.run.frames)}
    acc = {(r["model"], r["task"], r["method"], r["retention"]): r for r in accuracy.data}
    model = sorted(comparable)[0] if comparable else None
    note_model = (f"Ours: {model}." if model else
                  "Ours: — no run of LLaVA-OV-7B at 32 frames here (the published numbers are for that model), so "
                  "no difference is computed.")
    # 1. full-token accuracy per task
    rows, display = [], []
    for task, values in pub.FULL_ACCURACY.items():
        ours = (acc.get((model, task, "full", None)) or {}).get("accuracy") if model else None
        holi, llava = values.get("holitom_repro"), values.get("llava_ov_paper")
        rows.append({"task": task, "ours": ours, "holitom_repro": holi, "diff_vs_holitom": _diff(ours, holi),
                     "llava_ov_paper": llava, "diff_vs_llava_ov": _diff(ours, llava)})
        display.append([task_label(task), _fmt(ours), _fmt(holi), _fmt(_diff(ours, holi), 1),
                        _fmt(llava), _fmt(_diff(ours, llava), 1)])
    full = Table("published_full", "Full-token accuracy: ours vs published (LLaVA-OV-7B, 32 frames)", rows,
                 ["Task", "Ours", "HoliTom repro.", "Ours − HoliTom", "LLaVA-OV paper", "Ours − LLaVA-OV"],
                 display, [note_model, "Sources: HoliTom repro. = " + pub.SOURCES["holitom_repro"]
                           + "; LLaVA-OV paper = " + pub.SOURCES["llava_ov_paper"] + "."], align="lrrrrr")
    # 2. average accuracy as % of full, per ratio
    methods = list(pub.RELATIVE_ACCURACY)
    rows, display = [], []
    avg_label = " / ".join(task_label(t) for t in pub.AVERAGE_TASKS)
    for retention in (0.25, 0.20, 0.15, 0.10):
        ours = ours_post = None
        if model:
            ours = (acc.get((model, "average", "earlytom", retention)) or {}).get("pct_of_full")
            ours_post = (acc.get((model, "average", "earlytom_postenc", retention)) or {}).get("pct_of_full")
            avg_over = (acc.get((model, "average", "earlytom", retention)) or {}).get("average_over", "")
            if avg_over and avg_over.split(";") != list(pub.AVERAGE_TASKS):
                ours = ours_post = None  # not the same average
        holi = pub.RELATIVE_ACCURACY["HoliTom"].get(retention)
        claim = pub.EARLYTOM_CLAIMS["relative_accuracy_min"]
        record = {"retention": retention, "ours_earlytom": ours, "ours_postenc": ours_post,
                  "earlytom_paper_min": claim, "diff_vs_claim": _diff(ours, claim),
                  "diff_vs_holitom": _diff(ours, holi)}
        record.update({m: pub.RELATIVE_ACCURACY[m].get(retention) for m in methods})
        rows.append(record)
        display.append([f"{retention * 100:g}%", _fmt(ours), _fmt(ours_post), f"> {claim:g}",
                        _fmt(_diff(ours, claim), 1)] + [_fmt(pub.RELATIVE_ACCURACY[m].get(retention)) for m in methods]
                       + [_fmt(_diff(ours, holi), 1)])
    relative = Table(
        "published_relative", "Average accuracy as % of full tokens: ours vs published", rows,
        ["Retention", "Ours EarlyTom", "Ours w/o enc. stage", "EarlyTom paper", "Ours − 96"] + methods
        + ["Ours − HoliTom"], display,
        [note_model, f"Average over {avg_label}, as % of the full-token average. Published: "
         + pub.SOURCES["earlytom_paper_comparison"] + "; EarlyTom's own figure is its claim of > 96% at every "
         "ratio (" + pub.SOURCES["earlytom_paper"] + "). Where each method compresses: "
         + "; ".join(f"{m}: {w}" for m, w in pub.WHERE.items()) + "."],
        align="l" + "r" * (len(methods) + 5))
    # 3. efficiency claims
    bench = [r for r in bench_rows if pub.matches_model(r.get("pretrained"), r.get("frames"))]
    settings = "videomme" if any(r["settings"] == "videomme" for r in bench) else (bench[0]["settings"] if bench
                                                                                    else None)
    pick = {(r["method"], r["retention"]): r for r in bench if r["settings"] == settings}
    ten = pick.get(("earlytom", pub.EARLYTOM_CLAIMS["ttft_speedup_retention"])) or {}
    full_b = pick.get(("full", None)) or {}
    speedup = ten.get("speedup_vs_full")
    flops_cut = 100.0 - ten["flops_pct_of_full"] if _is_number(ten.get("flops_pct_of_full")) else None
    share = (100.0 * full_b["vision_encoder_ms"] / full_b["ttft_ms"]
             if _is_number(full_b.get("vision_encoder_ms")) and full_b.get("ttft_ms") else None)
    claims = [
        ("TTFT speedup at 10% retention", speedup, pub.EARLYTOM_CLAIMS["ttft_speedup_max"], "x (up to; A100)"),
        ("Prefill FLOPs reduction at 10% (%)", flops_cut, 100 * pub.EARLYTOM_CLAIMS["flops_reduction_max"],
         "% (up to; basis not stated)"),
        ("Decode throughput vs full at 10%", ten.get("decode_vs_full"),
         pub.EARLYTOM_CLAIMS["decode_throughput_ratio"], "x (about)"),
        ("Vision encoder share of full-token TTFT (%)", share,
         100 * pub.TTFT_CONTEXT["earlytom_baseline_vision_share"], "% (A100)"),
        ("Full-token TTFT (ms)", full_b.get("ttft_ms"), pub.TTFT_CONTEXT["holitom_full_ttft_ms"],
         "ms (HoliTom's breakdown, its GPU)"),
    ]
    rows, display = [], []
    for name, ours, theirs, unit in claims:
        rows.append({"metric": name, "ours": ours, "published": theirs, "unit": unit, "diff": _diff(ours, theirs)})
        display.append([name, _fmt(ours, 2), f"{theirs:g} {unit}", _fmt(_diff(ours, theirs), 2)])
    eff = Table(
        "published_efficiency", "Efficiency: ours vs the EarlyTom paper's claims", rows,
        ["Metric", "Ours", "Published", "Ours − published"], display,
        [("Ours: bench of " + f"{bench[0]['model']}, {settings} settings, {bench[0].get('device')}." if bench else
          "Ours: — no benchmark of LLaVA-OV-7B at 32 frames here, so no difference is computed."),
         "Published: " + pub.SOURCES["earlytom_paper"] + "; full-token TTFT: " + pub.SOURCES["holitom_ttft"]
         + ". Timings depend on the GPU: compare like with like."],
        align="lrrr")
    return [full, relative, eff]


def _diff(ours: Any, theirs: Any) -> float | None:
    return float(ours) - float(theirs) if _is_number(ours) and _is_number(theirs) else None


def cells_table(cells: Sequence[Cell], runs_dir: Path | None) -> Table:
    columns = ["Model", "Task", "Method", "Retention", "Status", "Docs", "Config", "Run", "Why"]
    data, display = [], []
    for cell in cells:
        outcome, run = cell.outcome, cell.run
        where = ""
        if run is not None:
            path = run.results_path or run.folder
            try:
                where = str(Path(path).resolve().relative_to(Path(runs_dir).resolve())) if runs_dir else str(path)
            except ValueError:
                where = str(path)
        docs = f"{len(outcome.rows)}/{outcome.docs_expected}" if outcome and outcome.docs_expected else ""
        data.append({"model": cell.model, "task": cell.task, "method": cell.method, "retention": cell.retention,
                     "status": cell.status, "docs": len(outcome.rows) if outcome else None,
                     "docs_expected": outcome.docs_expected if outcome else None,
                     "config_hash": run.config_hash if run else None, "run": where, "reason": cell.reason,
                     "notes": "; ".join(outcome.notes) if outcome else ""})
        display.append([cell.model, task_label(cell.task), cell.method_label,
                        _ratio_label(cell.method, cell.retention), cell.status, docs,
                        (run.config_hash or "") if run else "", where, cell.reason])
    return Table("cells", "Cells", data, columns, display,
                 ["complete = results.json has the score, the samples cover lmms-eval's document count and the "
                  "efficiency log covers the same documents with one config."], align="lllllrlll")


# ------------------------------------------------------------------------------------ rendering
def markdown_table(table: Table) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |"]
    aligns = table.align or "l" * len(table.columns)
    lines.append("|" + "|".join("---:" if a == "r" else "---" for a in aligns.ljust(len(table.columns), "l")) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.display]
    return "\n".join(lines)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "−": "--",
                  "—": "---", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def latex_table(table: Table, caption_note: str = "") -> str:
    """A booktabs table (``\\usepackage{booktabs}``)."""
    align = (table.align or "l" * len(table.columns)).ljust(len(table.columns), "l")
    caption = latex_escape(table.title + (f" ({caption_note})" if caption_note else ""))
    lines = [
        "% Generated by `earlytom-eval tables`; needs \\usepackage{booktabs}.",
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{{caption}}}",
        f"\\label{{tab:{table.name.replace('_', '-')}}}",
        f"\\begin{{tabular}}{{{align}}}",
        "\\toprule",
        " & ".join(latex_escape(c) for c in table.columns) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(latex_escape(c) for c in row) + " \\\\" for row in table.display]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _display_path(path: Path) -> str:
    """A path relative to the working folder when it lies inside it (committed tables carry no home paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------ entry points
def aggregate(
    runs_dir: str | Path,
    expected: Sequence[Mapping[str, Any]] = (),
    average: Sequence[str] | None = None,
    label: str | None = None,
) -> Tables:
    """Read every run and benchmark under ``runs_dir`` and build all tables (nothing written)."""
    runs_dir = Path(runs_dir)
    eval_runs = discover_eval_runs(runs_dir) if runs_dir.is_dir() else []
    bench_runs = discover_bench_runs(runs_dir) if runs_dir.is_dir() else []
    cells = resolve_cells(eval_runs, expected)
    problems = [f"{c.model} / {task_label(c.task)} / {c.method_label} {_ratio_label(c.method, c.retention)}: "
                f"{c.status}: {c.reason}" for c in cells if c.status in ("conflict", "incomplete")]
    accuracy = accuracy_table(cells, average)
    bench_rows, bench_problems = _bench_rows(bench_runs)
    problems += bench_problems
    tables = [accuracy, efficiency_eval_table(cells)]
    if bench_rows:
        tables += [bench_table(bench_rows), flops_table(bench_rows)]
    tables += published_tables(cells, bench_rows, accuracy)
    tables.append(cells_table(cells, runs_dir))
    labels = [label] if label else list(dict.fromkeys(
        x for x in [r.label for r in eval_runs] + [b.label for b in bench_runs] if x))
    cpu = any(str(r.get("peak_memory_kind", "")).startswith("cpu") for c in cells if c.outcome for r in c.outcome.rows)
    cpu = cpu or any(str((b.report.get("hardware") or {}).get("device", "")).startswith("cpu") for b in bench_runs)
    header = [f"> **{text}**" for text in labels]
    if cpu:
        header.append("> Measured on CPU: timings show the pipeline's structure, not GPU latency.")
    header.append(f"Generated by `earlytom-eval tables` from `{_display_path(runs_dir)}` on "
                  f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}: "
                  f"{sum(c.status == 'complete' for c in cells)} of {len(cells)} cells complete, "
                  f"{len(bench_runs)} benchmark report(s).")
    return Tables(tables=tables, cells=cells, bench_runs=bench_runs, problems=problems, header=header)


def write_tables(result: Tables, out_dir: str | Path, plots: bool = True, title: str = "Tables") -> list[Path]:
    """Write every table as .md/.csv/.tex, ``tables.md``, ``summary.json`` and the plots into ``out_dir``."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    label_note = "CPU smoke run" if any("smoke" in h.lower() for h in result.header) else ""
    for table in result.tables:
        frame = pd.DataFrame(table.data)
        for column in frame.columns:  # whole numbers stay whole (no 6.0 for a count of 6)
            values = [v for v in table.data_column(column) if v is not None]
            if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                frame[column] = frame[column].astype("Int64")
        csv = out / f"{table.name}.csv"
        frame.to_csv(csv, index=False)
        md = out / f"{table.name}.md"
        md.write_text(f"### {table.title}\n\n" + "\n\n".join(result.header) + "\n\n" + markdown_table(table) + "\n\n"
                      + "\n".join(f"- {n}" for n in table.notes) + "\n")
        tex = out / f"{table.name}.tex"
        tex.write_text(latex_table(table, label_note))
        written += [csv, md, tex]
    if plots:
        from .plots import make_plots

        result.plots = make_plots(result, out)
        written += result.plots
    lines = [f"# {title}", ""] + [x for h in result.header for x in (h, "")]
    for table in result.tables:
        lines += [f"## {table.title}", "", markdown_table(table), ""]
        lines += [f"- {n}" for n in table.notes] + [""]
    if result.problems:
        lines += ["## Incomplete or conflicting cells", ""] + [f"- {p}" for p in result.problems] + [""]
    if result.plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in result.plots] + [""]
    summary_md = out / "tables.md"
    summary_md.write_text("\n".join(lines))
    summary = {
        "header": result.header,
        "problems": result.problems,
        "tables": {t.name: {"title": t.title, "rows": t.data, "notes": t.notes} for t in result.tables},
        "plots": [p.name for p in result.plots],
    }
    summary_json = out / "summary.json"
    summary_json.write_text(json.dumps(_json_safe(summary), indent=1) + "\n")
    return [*written, summary_md, summary_json]


def _cmd_tables(args: argparse.Namespace) -> int:
    if not args.runs.is_dir():
        print(f"error: runs folder {args.runs} does not exist", file=sys.stderr)
        return 2
    result = aggregate(args.runs, average=args.average or None, label=args.label)
    write_tables(result, args.out, plots=not args.no_plots, title=args.title)
    summary = Path(args.out) / "tables.md"
    if args.print:
        print(summary.read_text())
    else:
        print(f"wrote {summary} and every table as .md/.csv/.tex" + (" + PNG plots" if result.plots else ""))
    for problem in result.problems:
        print(f"warning: {problem}", file=sys.stderr)
    conflicts = [c for c in result.cells if c.status == "conflict"]
    if conflicts:
        print(f"error: {len(conflicts)} cell(s) have runs that disagree (not mixed); see {args.out}/cells.md",
              file=sys.stderr)
        return 1
    return 1 if args.strict and result.problems else 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``earlytom-eval tables``."""
    p = subparsers.add_parser(
        "tables",
        help="aggregate lmms-eval runs and bench reports into accuracy / TTFT / FLOP tables and plots",
        description="Aggregate existing runs (nothing is run): lmms-eval results.json + samples + the "
        "per-sample efficiency log, joined by (task, doc_id), and `earlytom-eval bench` reports, into "
        "Markdown, CSV and LaTeX tables and PNG plots.",
    )
    p.add_argument("--runs", type=Path, default=Path("results/runs"), help="folder searched for runs (default "
                   "results/runs)")
    p.add_argument(
        "--out", type=Path, default=Path("results/runs/tables"), help="output folder (default results/runs/tables, git-ignored)"
    )
    p.add_argument("--average", nargs="*", default=None, metavar="TASK",
                   help="tasks of the 'Avg' column (default: the paper's four if all present, else every task)")
    p.add_argument("--label", default=None, help="a line printed above every table (e.g. 'CPU smoke run')")
    p.add_argument("--title", default="Tables", help="title of tables.md")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--print", action="store_true", help="print tables.md")
    p.add_argument("--strict", action="store_true", help="exit 1 when any cell is incomplete")
    p.set_defaults(func=_cmd_tables)
