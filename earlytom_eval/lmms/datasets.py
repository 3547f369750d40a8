"""Where the benchmarks' data lives: the single source for the plugin's tasks (``tasks/``), the model's check
before it loads any weights, and the grid runner's check before anything runs.

Each dataset's folder comes from an environment variable, else from ``$HF_HOME`` (lmms-eval's own place); the
README's "Where the data goes" lists them. Missing data is one :class:`MissingDataError` naming the place.
Every function reads the environment it is given (default: the process's). Imports neither torch nor lmms-eval.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..paths import TASKS, hf_home

__all__ = [
    "ALLOW_DOWNLOAD_ENV",
    "DATASETS",
    "MissingDataError",
    "VIDEO_SUFFIXES",
    "VideoData",
    "annotations_file",
    "data_problem",
    "data_root",
    "downloads_allowed",
    "find_video",
    "first_video",
    "has_video",
    "video_folder",
    "where_to_set",
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
Environ = Mapping[str, str]


def _environ(environ: Environ | None) -> Environ:
    return os.environ if environ is None else environ


def downloads_allowed(environ: Environ | None = None) -> bool:
    """``EARLYTOM_ALLOW_DOWNLOAD=1``: let lmms-eval fetch missing data instead of stopping the run."""
    return _environ(environ).get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")


def default_smoke_dir(tasks_dir: str | Path | None = None) -> Path:
    """``<repo>/results/smoke-data``: next to the ``tasks/`` folder of the checkout."""
    tasks_dir = Path(tasks_dir) if tasks_dir is not None else TASKS
    return tasks_dir.resolve().parent / "results" / "smoke-data"


def data_root(key: str, tasks_dir: str | Path | None = None, environ: Environ | None = None) -> Path:
    """The folder a dataset's data is read from: its environment variable, else the default."""
    spec = DATASETS[key]
    value = _environ(environ).get(spec.env, "").strip()
    if value:
        return Path(os.path.expanduser(value)).resolve()
    if key == "earlytom_smoke":
        return default_smoke_dir(tasks_dir)
    return hf_home(environ) / spec.hf_cache_dir


def annotations_file(key: str, tasks_dir: str | Path | None = None, environ: Environ | None = None) -> Path | None:
    """The local annotation file: the smoke set's JSONL, else the one named by the dataset's variable, if any."""
    spec = DATASETS[key]
    if key == "earlytom_smoke":
        return data_root(key, tasks_dir, environ) / SMOKE_JSONL
    value = _environ(environ).get(spec.annotations_env or "", "").strip()
    return Path(os.path.expanduser(value)).resolve() if value else None


def where_to_set(spec: VideoData, environ: Environ | None = None) -> str:
    """How a message tells the user to point the dataset's variable at the data."""
    if spec.key == "earlytom_smoke":
        return f"set {spec.env} to its folder"
    return f"set {spec.env} (default $HF_HOME/{spec.hf_cache_dir}, HF_HOME={hf_home(environ)})"


def data_problem(key: str, tasks_dir: str | Path | None = None, environ: Environ | None = None) -> str | None:
    """What is missing for dataset ``key``, as one line naming the place; None when the data is there."""
    spec = DATASETS[key]
    root = data_root(key, tasks_dir, environ)
    if key == "earlytom_smoke":
        jsonl = annotations_file(key, tasks_dir, environ)
        if not jsonl.is_file():
            return (
                f"{spec.title} data not found: {jsonl} does not exist; generate it with "
                f"`earlytom-eval smoke-data --out {root}` (or `make smoke`), or {where_to_set(spec, environ)}"
            )
        return None
    annotations = annotations_file(key, environ=environ)
    if annotations is not None and not annotations.is_file():
        return f"{spec.title} annotations not found: {spec.annotations_env}={annotations} does not exist"
    videos = video_folder(spec, root)
    if not videos.is_dir():
        return (f"{spec.title} videos not found: {videos} does not exist; {spec.how_to}, "
                f"or {where_to_set(spec, environ)}")
    if not has_video(videos):
        return (f"{spec.title} videos not found: {videos} holds no video files; {spec.how_to}, "
                f"or {where_to_set(spec, environ)}")
    return None


def video_folder(spec: VideoData, root: Path) -> Path:
    """The folder holding a dataset's videos under its data folder ``root``."""
    return root / spec.video_subdir if spec.video_subdir else root


def first_video(key: str, environ: Environ | None = None) -> Path | None:
    """The first video of a dataset on disk (sorted by path), or None."""
    spec = DATASETS.get(key)
    if spec is None:
        return None
    folder = video_folder(spec, data_root(key, environ=environ))
    if not folder.is_dir():
        return None
    videos = sorted(p for p in folder.rglob("*") if p.suffix in VIDEO_SUFFIXES and p.is_file())
    return videos[0] if videos else None


def has_video(folder: Path, limit: int = 20000) -> bool:
    """Whether ``folder`` holds a video file (the first ``limit`` files are looked at)."""
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
