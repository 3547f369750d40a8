"""Where things are: the repository's folders and the places generated files go by default.

Generated runs and tables go to git-ignored folders (``results/smoke/``, ``results/runs/``); the
committed example tables are refreshed only on purpose (``make example-tables``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CONFIGS", "LOCK_FILE", "REPO", "TASKS", "hf_home"]

#: The repository root (the package is installed editable from it; a wheel install has no configs/tasks).
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TASKS = REPO / "tasks"
#: The lock `make install` installs from (see the README's "Set up and test").
LOCK_FILE = REPO / "requirements.lock"


def hf_home(environ: os._Environ | dict | None = None) -> Path:
    """``$HF_HOME``, defaulting to ``~/.cache/huggingface`` as transformers and lmms-eval do."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
