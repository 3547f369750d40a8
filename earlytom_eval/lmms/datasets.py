"""lmms-eval integration points that must stay light: the model's entry point and where benchmark data lives.

lmms-eval imports this module at start-up, through the ``lmms_eval.models`` entry point declared in
``setup.cfg``; :func:`manifests` then tells it that ``--model earlytom_llava_ov`` is
:class:`earlytom_eval.lmms.model.EarlyTomLlavaOV`. Nothing here imports torch, transformers or
lmms-eval at import time.

The rest of the module is the single source of truth for the data the plugin's tasks (``tasks/``) read,
shared by the task classes and by the model wrapper's check before it loads any weights:

=================  =================================  ==============================================
dataset            videos (environment variable)      default location
=================  =================================  ==============================================
VideoMME           ``EARLYTOM_VIDEOMME_DIR``           ``$HF_HOME/videomme`` (videos in ``data/``)
MLVU dev           ``EARLYTOM_MLVU_DIR``               ``$HF_HOME/mlvu``
earlytom_smoke     ``EARLYTOM_SMOKE_DIR``              ``<repo>/results/smoke-data``
=================  =================================  ==============================================

``$HF_HOME`` defaults to ``~/.cache/huggingface``, lmms-eval's own convention, so a VideoMME or MLVU
folder already fetched by lmms-eval is reused. Missing data stops the run with one message
(:class:`MissingDataError`) instead of a download attempt, unless ``EARLYTOM_ALLOW_DOWNLOAD=1``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DATASETS",
    "MissingDataError",
    "VIDEO_SUFFIXES",
    "VideoData",
    "check_tasks",
    "data_problem",
    "data_root",
    "downloads_allowed",
    "find_video",
    "hf_home",
]

VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")
ALLOW_DOWNLOAD_ENV = "EARLYTOM_ALLOW_DOWNLOAD"
SMOKE_JSONL = "earlytom_smoke.jsonl"


class MissingDataError(SystemExit):
    """A benchmark's videos or annotations are not where the run expects them.

    A ``SystemExit`` on purpose: lmms-eval catches ``Exception``, prints a traceback and exits 0; this
    stops the run with the message alone and a non-zero status.
    """

    def __init__(self, problems: str | Iterable[str]):
        problems = [problems] if isinstance(problems, str) else list(problems)
        self.problems = problems
        if len(problems) == 1:
            message = f"error: {problems[0]}"
        else:
            message = "error: data missing for this run:\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.code)


@dataclass(frozen=True)
class VideoData:
    """Where one benchmark's data is expected.

    Attributes:
        key: the name task YAMLs use in ``metadata: {earlytom_data: KEY}``.
        title: human name in messages.
        env: environment variable naming the data folder.
        hf_cache_dir: default folder under ``$HF_HOME`` (lmms-eval's ``dataset_kwargs.cache_dir``).
        video_subdir: folder under the root holding the videos ('' = the root itself).
        annotations_env: environment variable naming a local annotation file (parquet / json / jsonl),
            used instead of the hub dataset when set.
        hub_id: the hub dataset lmms-eval fetches annotations (and, when allowed, videos) from.
        how_to: one sentence on how to get the data.
    """

    key: str
    title: str
    env: str
    hf_cache_dir: str
    video_subdir: str
    annotations_env: str | None
    hub_id: str | None
    how_to: str


DATASETS: dict[str, VideoData] = {
    "videomme": VideoData(
        key="videomme",
        title="VideoMME",
        env="EARLYTOM_VIDEOMME_DIR",
        hf_cache_dir="videomme",
        video_subdir="data",
        annotations_env="EARLYTOM_VIDEOMME_ANNOTATIONS",
        hub_id="lmms-eval/Video-MME",
        how_to="unzip the videos_chunked_*.zip files of the hub dataset lmms-eval/Video-MME there "
        "(they hold data/<videoID>.mp4)",
    ),
    "mlvu_dev": VideoData(
        key="mlvu_dev",
        title="MLVU dev",
        env="EARLYTOM_MLVU_DIR",
        hf_cache_dir="mlvu",
        video_subdir="",
        annotations_env="EARLYTOM_MLVU_ANNOTATIONS",
        hub_id="sy1998/MLVU_dev",
        how_to="unzip the video archives of the hub dataset sy1998/MLVU_dev there (paths as in its video_name column)",
    ),
    "earlytom_smoke": VideoData(
        key="earlytom_smoke",
        title="earlytom_smoke",
        env="EARLYTOM_SMOKE_DIR",
        hf_cache_dir="",
        video_subdir="data",
        annotations_env=None,
        hub_id=None,
        how_to="generate it with `earlytom-eval smoke-data --out DIR` (or `make smoke`)",
    ),
}


# ------------------------------------------------------------------------------------ locations
def hf_home() -> Path:
    """``$HF_HOME``, or ``~/.cache/huggingface`` as lmms-eval's video tasks assume."""
    return Path(os.path.expanduser(os.environ.get("HF_HOME") or "~/.cache/huggingface"))


def downloads_allowed() -> bool:
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")


def default_smoke_dir(tasks_dir: str | Path | None = None) -> Path:
    """``<repo>/results/smoke-data``: next to the ``tasks/`` folder of the checkout."""
    tasks_dir = Path(tasks_dir) if tasks_dir is not None else Path(__file__).resolve().parents[2] / "tasks"
    return tasks_dir.resolve().parent / "results" / "smoke-data"


def data_root(key: str, tasks_dir: str | Path | None = None) -> Path:
    """The folder a dataset's data is read from: its environment variable, else the default."""
    spec = DATASETS[key]
    value = os.environ.get(spec.env, "").strip()
    if value:
        return Path(os.path.expanduser(value)).resolve()
    if key == "earlytom_smoke":
        return default_smoke_dir(tasks_dir)
    return hf_home() / spec.hf_cache_dir


def annotations_file(key: str, tasks_dir: str | Path | None = None) -> Path | None:
    """The local annotation file: the smoke set's JSONL, else the one named by the dataset's variable, if any."""
    spec = DATASETS[key]
    if key == "earlytom_smoke":
        return data_root(key, tasks_dir) / SMOKE_JSONL
    value = os.environ.get(spec.annotations_env or "", "").strip()
    return Path(os.path.expanduser(value)).resolve() if value else None


def _where(spec: VideoData) -> str:
    if spec.key == "earlytom_smoke":
        return f"set {spec.env} to its folder"
    return f"set {spec.env} (default $HF_HOME/{spec.hf_cache_dir}, HF_HOME={hf_home()})"


def data_problem(key: str, tasks_dir: str | Path | None = None) -> str | None:
    """What is missing for dataset ``key``, as one line naming the place; None when the data is there."""
    spec = DATASETS[key]
    root = data_root(key, tasks_dir)
    if key == "earlytom_smoke":
        jsonl = annotations_file(key, tasks_dir)
        if not jsonl.is_file():
            return (
                f"{spec.title} data not found: {jsonl} does not exist; generate it with "
                f"`earlytom-eval smoke-data --out {root}` (or `make smoke`), or {_where(spec)}"
            )
        return None
    annotations = annotations_file(key)
    if annotations is not None and not annotations.is_file():
        return f"{spec.title} annotations not found: {spec.annotations_env}={annotations} does not exist"
    videos = root / spec.video_subdir if spec.video_subdir else root
    if not videos.is_dir():
        return f"{spec.title} videos not found: {videos} does not exist; {spec.how_to}, or {_where(spec)}"
    if not _has_video(videos):
        return f"{spec.title} videos not found: {videos} holds no video files; {spec.how_to}, or {_where(spec)}"
    return None


def _has_video(folder: Path, limit: int = 20000) -> bool:
    seen = 0
    for _, _, files in os.walk(folder):
        for name in files:
            if name.endswith(VIDEO_SUFFIXES):
                return True
            seen += 1
            if seen > limit:
                return False
    return False


_VIDEO_INDEX: dict[str, dict[str, str]] = {}


def find_video(root: str | Path, relative: str) -> str:
    """Path of a benchmark video under ``root``; never raises.

    Tries ``root/relative``, then the same stem with the usual suffixes (VideoMME ships a few ``.MP4``
    and ``.mkv`` files), then a file of that name anywhere under ``root`` (archives unpacked one folder
    deeper). When nothing matches it returns ``root/relative``: the loader then reports that file as
    missing for this one document and the run goes on.
    """
    root = Path(root)
    direct = root / relative
    if direct.is_file():
        return str(direct)
    stem = direct.with_suffix("")
    for suffix in VIDEO_SUFFIXES:
        candidate = stem.with_suffix(suffix)
        if candidate.is_file():
            return str(candidate)
    key = str(root)
    if key not in _VIDEO_INDEX and root.is_dir():
        index: dict[str, str] = {}
        for folder, _, files in os.walk(root):
            for name in files:
                if name.endswith(VIDEO_SUFFIXES):
                    index.setdefault(name, os.path.join(folder, name))
                    index.setdefault(os.path.splitext(name)[0], os.path.join(folder, name))
        _VIDEO_INDEX[key] = index
    index = _VIDEO_INDEX.get(key, {})
    name = Path(relative).name
    found = index.get(name) or index.get(os.path.splitext(name)[0])
    return found if found else str(direct)


# ------------------------------------------------------------------------------------ checks
def _builtin_video_root(config: Mapping[str, Any]) -> Path | None:
    kwargs = config.get("dataset_kwargs")
    if not isinstance(kwargs, Mapping) or not kwargs.get("video") or not isinstance(kwargs.get("cache_dir"), str):
        return None
    cache_dir = os.path.expanduser(os.path.expandvars(kwargs["cache_dir"]))
    return Path(cache_dir) if os.path.isabs(cache_dir) else hf_home() / cache_dir


def _leaf_configs(names: Iterable[Any], task_manager: Any, seen: set[str]) -> Iterable[tuple[str, dict, str | None]]:
    """(task name, YAML config read without importing functions, YAML path) of every task the names expand to."""
    from lmms_eval import utils

    index = getattr(task_manager, "task_index", {}) or {}
    for name in names:
        if isinstance(name, Mapping):
            if isinstance(name.get("task"), str):
                yield name["task"], dict(name), None
            elif isinstance(name.get("task"), list):
                yield from _leaf_configs(name["task"], task_manager, seen)
            continue
        if not isinstance(name, str) or name in seen or name not in index:
            continue
        seen.add(name)
        entry = index[name]
        kind, path = entry.get("type"), entry.get("yaml_path")
        if kind == "tag":
            yield from _leaf_configs(entry.get("task") or [], task_manager, seen)
            continue
        if not isinstance(path, str):
            continue
        config = utils.load_yaml_config(path, mode="simple")
        if kind == "group":
            yield from _leaf_configs(config.get("task") or [], task_manager, seen)
        else:
            yield name, config, path


def check_tasks(names: Iterable[Any], task_manager: Any) -> None:
    """Raise :class:`MissingDataError` listing every requested video task whose data is not on disk.

    Covers the plugin's tasks (``metadata: {earlytom_data: ...}``) and lmms-eval's own video tasks
    (``dataset_kwargs: {video: true, cache_dir: ...}``, read from ``$HF_HOME/<cache_dir>``, which
    lmms-eval would otherwise try to download). A no-op with ``EARLYTOM_ALLOW_DOWNLOAD=1``.
    """
    if downloads_allowed():
        return
    problems: list[str] = []
    checked: set[str] = set()
    for task, config, path in _leaf_configs(names, task_manager, set()):
        metadata = config.get("metadata")
        key = metadata.get("earlytom_data") if isinstance(metadata, Mapping) else None
        if key in DATASETS:
            if key in checked:
                continue
            checked.add(key)
            problem = data_problem(key, Path(path).parent if path else None)
            if problem:
                problems.append(f"{task}: {problem}")
            continue
        root = _builtin_video_root(config)
        if root is None or str(root) in checked:
            continue
        checked.add(str(root))
        known = next((s for s in DATASETS.values() if s.hf_cache_dir and s.hf_cache_dir == root.name), None)
        if known is not None:
            videos = root / known.video_subdir if known.video_subdir else root
            if not videos.is_dir() or not _has_video(videos):
                state = "does not exist" if not videos.is_dir() else "holds no video files"
                problems.append(
                    f"{task}: {known.title} videos not found: lmms-eval's {task} reads them from {videos}, which "
                    f"{state} (HF_HOME={hf_home()}); {known.how_to}, or set {ALLOW_DOWNLOAD_ENV}=1 to let "
                    f"lmms-eval download {config.get('dataset_path')}"
                )
            continue
        if not root.is_dir():
            problems.append(
                f"{task}: videos not found: lmms-eval's task reads them from {root} (HF_HOME={hf_home()}), "
                f"which does not exist; put the dataset's videos there or set {ALLOW_DOWNLOAD_ENV}=1 to let "
                f"lmms-eval download {config.get('dataset_path')}"
            )
    if problems:
        raise MissingDataError(problems)
