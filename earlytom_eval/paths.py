"""Where things are: the repository's folders, the Hugging Face home, config files by name, safe file names.

Generated runs and tables go to git-ignored folders (``results/smoke/``, ``results/runs/``); the
committed example tables are refreshed only on purpose (``make example-tables``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["CONFIGS", "LOCK_FILE", "REPO", "TASKS", "find_config", "hf_home", "slug"]

#: The repository root (the package is installed editable from it; a wheel install has no configs/tasks).
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TASKS = REPO / "tasks"
#: The lock `make install` installs from (see the README's "Set up and test").
LOCK_FILE = REPO / "requirements.lock"


def hf_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$HF_HOME``, defaulting to ``~/.cache/huggingface`` as transformers and lmms-eval do."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()


def find_config(value: str | os.PathLike[str]) -> Path | None:
    """A compression config YAML given as a path or a name (``earlytom_r0.10``): the path itself, the name plus
    ``.yaml``, then, for a relative one, the same under ``./configs``, ``<repo>/configs`` and ``<repo>``.
    None when no such file exists."""
    path = Path(os.path.expanduser(str(value)))
    names = [path] if path.suffix == ".yaml" or not path.name else [path, path.with_name(path.name + ".yaml")]
    roots = () if path.is_absolute() else (Path.cwd() / "configs", CONFIGS, REPO)
    for candidate in [*names, *(root / name for root in roots for name in names)]:
        if candidate.is_file():
            return candidate
    return None


def slug(text: str) -> str:
    """``text`` as a file or folder name: runs of other characters than letters, digits, ``._-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"
