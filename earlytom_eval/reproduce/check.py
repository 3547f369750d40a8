"""Before a grid runs: everything its pending cells need (weights, data, the bench clip, GPUs, lmms-eval), found
missing all at once, each with where it goes."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from loguru import logger

from ..efficiency.host import cuda_device_count
from ..environment import lmms_eval_problems
from ..lmms.datasets import MissingDataError, data_problem, downloads_allowed
from ..lmms.manifest import MODEL_ID
from ..paths import TASKS, hf_home
from .grid import BenchCell, Cell, EvalCell, Grid, ModelSpec, TaskSpec, local_path

__all__ = ["check_missing"]

Environ = Mapping[str, str]


def _hub_cached(repo: str, filename: str, cache_dir: Path, repo_type: str = "model") -> str | None:
    try:
        found = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir), repo_type=repo_type)
    except Exception:
        return None
    return found if isinstance(found, str) else None


def _weights_problem(model: ModelSpec, environ: Environ) -> str | None:
    """Why ``model``'s checkpoint cannot load offline (None when it can)."""
    local = local_path(model.pretrained)
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
    cache = Path(environ.get("HF_HUB_CACHE") or hf_home(environ) / "hub")
    how = (f"download it with `huggingface-cli download {model.pretrained}` (into HF_HOME={hf_home(environ)}), or set "
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


def _annotations_cached(hub_id: str, environ: Environ) -> bool:
    org_name = hub_id.replace("/", "--")
    hub = Path(environ.get("HF_HUB_CACHE") or hf_home(environ) / "hub") / f"datasets--{org_name}"
    datasets_cache = Path(environ.get("HF_DATASETS_CACHE") or hf_home(environ) / "datasets")
    return hub.is_dir() or any(datasets_cache.glob(hub_id.replace("/", "___") + "*"))


def _offline(environ: Environ) -> bool:
    return any(environ.get(v, "").strip().lower() in ("1", "true", "yes")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _name_task(problem: str, tasks: Sequence[TaskSpec]) -> str:
    """Prefix a subtask's problem (``mvbench_action_sequence: ...``) with the grid task it belongs to."""
    name = problem.split(":", 1)[0]
    if any(name == t.key for t in tasks):
        return problem
    owner = next((t for t in tasks if name.startswith(t.lmms_task)), None)
    return f"{owner.key} ({problem}" + ")" if owner else problem


def check_missing(grid: Grid, cells: Sequence[Cell]) -> tuple[list[tuple[str, str]], list[str]]:
    """Everything the cells to run need that is not there: ``([(what, message)], notes)``. Nothing runs.

    Reads the grid's environment (:attr:`Grid.environ`), the one its runs get.
    """
    environ = grid.environ
    problems: list[tuple[str, str]] = []
    notes: list[str] = []
    eval_cells = [c for c in cells if isinstance(c, EvalCell)]
    bench_cells = [c for c in cells if isinstance(c, BenchCell)]
    allow = downloads_allowed(environ)
    # weights
    for model in dict.fromkeys([c.model for c in cells]):
        if model.preset and not any(isinstance(c, EvalCell) and c.model == model for c in cells):
            continue
        problem = _weights_problem(model, environ)
        if problem and allow and local_path(model.pretrained) is None:
            notes.append(problem.split(";")[0] + "; it will be downloaded (EARLYTOM_ALLOW_DOWNLOAD=1)")
        elif problem:
            problems.append(("weights", problem))
    # datasets and videos
    tasks = list(dict.fromkeys(c.task for c in eval_cells))
    quick = [t for t in tasks if t.data]
    for task in quick:
        problem = data_problem(task.data, environ=environ)
        if problem and not allow:
            problems.append(("data", f"{task.key}: {problem}"))
    rest = [t for t in tasks if not t.data]
    lmms_problems = lmms_eval_problems(MODEL_ID) if eval_cells else []
    problems += [("lmms-eval", problem) for problem in lmms_problems]
    if rest and not allow and not lmms_problems:
        try:
            logger.disable("lmms_eval")
            # Lazy: lmms-eval's task index takes seconds to import and build; only a grid with tasks the plugin
            # does not locate itself (no `data:` key) needs it.
            from lmms_eval.tasks import TaskManager

            from ..lmms.task_check import check_tasks

            manager = TaskManager(include_path=str(TASKS))
            unknown = [t.lmms_task for t in rest if t.lmms_task not in manager.task_index]
            for name in unknown:
                problems.append(("data", f"{name}: no such lmms-eval task (in lmms-eval or tasks/)"))
            check_tasks([t.lmms_task for t in rest if t.lmms_task not in unknown], manager, environ)
        except MissingDataError as err:
            problems += [("data", _name_task(p, rest)) for p in err.problems]
        finally:
            try:
                logger.enable("lmms_eval")
            except Exception:  # pragma: no cover
                pass
    uncached = [t for t in tasks if t.annotations and not _annotations_cached(t.annotations, environ)]
    if uncached and _offline(environ):
        for task in uncached:
            problems.append(("data", f"{task.key}: annotations {task.annotations} are not in the Hugging Face cache "
                             f"(HF_HOME={hf_home(environ)}) and HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set; run once "
                             "with network (lmms-eval fetches them, small) or unset those variables"))
    elif uncached:
        notes.append(f"annotations not in the Hugging Face cache (HF_HOME={hf_home(environ)}): "
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
        visible = cuda_device_count()
        wanted = grid.gpu_count() if eval_cells else 1
        wanted = wanted if wanted is not None else 1
        if visible == 0:
            problems.append(("GPUs", f"the grid runs on CUDA (device: {grid.device}) but no CUDA GPU is visible "
                             "here; run on a GPU machine (CUDA_VISIBLE_DEVICES selects GPUs)"))
        elif wanted > visible:
            problems.append(("GPUs", f"the grid asks for {wanted} GPUs (gpus: {grid.gpus}) but {visible} are "
                             f"visible; run with GPUS={visible} (make reproduce-tables GPUS={visible}) or --gpus"))
    if grid.gpu_count() and eval_cells and shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None:
        if importlib.util.find_spec("accelerate") is None:
            problems.append(("tools", "accelerate is not installed (pip install accelerate)"))
    return problems, notes
