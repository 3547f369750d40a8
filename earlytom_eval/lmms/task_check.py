"""Before any weights load: every video task a run asks for has its data on disk (the plugin's and lmms-eval's own).

Reads the tasks' YAML through lmms-eval's task index, so it imports lmms-eval; the data locations themselves are
:mod:`.datasets`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lmms_eval import utils

from ..paths import hf_home
from .datasets import (
    ALLOW_DOWNLOAD_ENV,
    DATASETS,
    Environ,
    MissingDataError,
    data_problem,
    downloads_allowed,
    has_video,
    video_folder,
)

__all__ = ["check_tasks"]

#: ``$NAME`` / ``${NAME}`` in a task's ``cache_dir``.
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _builtin_video_root(config: Mapping[str, Any], environ: Environ) -> Path | None:
    kwargs = config.get("dataset_kwargs")
    if not isinstance(kwargs, Mapping) or not kwargs.get("video") or not isinstance(kwargs.get("cache_dir"), str):
        return None
    cache_dir = os.path.expanduser(_VARIABLE.sub(lambda m: environ.get(m.group(1) or m.group(2), m.group(0)),
                                                 kwargs["cache_dir"]))
    return Path(cache_dir) if os.path.isabs(cache_dir) else hf_home(environ) / cache_dir


def _leaf_configs(names: Iterable[Any], task_manager: Any, seen: set[str]) -> Iterable[tuple[str, dict, str | None]]:
    """(task name, YAML config read without importing functions, YAML path) of every task the names expand to."""
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


def check_tasks(names: Iterable[Any], task_manager: Any, environ: Environ | None = None) -> None:
    """Raise :class:`MissingDataError` listing every requested video task whose data is not on disk.

    Covers the plugin's tasks (``metadata: {earlytom_data: ...}``) and lmms-eval's own video tasks
    (``dataset_kwargs: {video: true, cache_dir: ...}``, read from ``$HF_HOME/<cache_dir>``, which
    lmms-eval would otherwise try to download). A no-op with ``EARLYTOM_ALLOW_DOWNLOAD=1``. ``environ``: the
    run's environment (default: the process's).
    """
    environ = os.environ if environ is None else environ
    if downloads_allowed(environ):
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
            problem = data_problem(key, Path(path).parent if path else None, environ)
            if problem:
                problems.append(f"{task}: {problem}")
            continue
        root = _builtin_video_root(config, environ)
        if root is None or str(root) in checked:
            continue
        checked.add(str(root))
        known = next((s for s in DATASETS.values() if s.hf_cache_dir and s.hf_cache_dir == root.name), None)
        if known is not None:
            videos = video_folder(known, root)
            if not videos.is_dir() or not has_video(videos):
                state = "does not exist" if not videos.is_dir() else "holds no video files"
                problems.append(
                    f"{task}: {known.title} videos not found: lmms-eval's {task} reads them from {videos}, which "
                    f"{state} (HF_HOME={hf_home(environ)}); {known.how_to}, or set {ALLOW_DOWNLOAD_ENV}=1 to let "
                    f"lmms-eval download {config.get('dataset_path')}"
                )
            continue
        if not root.is_dir():
            problems.append(
                f"{task}: videos not found: lmms-eval's task reads them from {root} (HF_HOME={hf_home(environ)}), "
                f"which does not exist; put the dataset's videos there or set {ALLOW_DOWNLOAD_ENV}=1 to let "
                f"lmms-eval download {config.get('dataset_path')}"
            )
    if problems:
        raise MissingDataError(problems)
