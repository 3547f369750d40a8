"""`earlytom-eval env`: versions, the lock comparison, and lmms-eval's run check (filelock 4 named)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import filelock
import pytest

from earlytom_eval.environment import installed_version, lock_problems, read_lock
from earlytom_eval.paths import LOCK_FILE

EARLYTOM_EVAL = [sys.executable, "-m", "earlytom_eval.cli"]


def test_read_lock_pins_every_line(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# header\n"
        "Foo_Bar==1.2.3           # via x\n"
        "torch==2.14.1            # via earlytom-eval (setup.cfg)\n"
        "    # via something\n"
        "-e file:///repo\n"
        "baz[extra]==0.1 ; python_version >= '3.10'\n"
    )
    assert read_lock(lock) == {"foo-bar": "1.2.3", "torch": "2.14.1", "baz": "0.1"}


def test_lock_problems_name_the_package_the_versions_and_the_fix():
    lock = {"filelock": "3.32.7", "torch": "2.14.1", "decord": "0.6.0"}
    installed = {"filelock": "4.3.1", "torch": "2.14.1+cpu", "decord": None}
    problems = lock_problems(lock, installed)
    assert problems == [
        "decord is not installed, the lock has 0.6.0: run `make install`",
        "filelock 4.3.1 is installed, the lock has 3.32.7: run `make install` (or `pip install filelock==3.32.7`)",
    ]  # a local build of the locked torch release matches
    assert lock_problems(lock, {"filelock": "3.32.7", "torch": "2.14.1", "decord": "0.6.0"}) == []


def test_committed_lock_pins_the_stack_and_keeps_filelock_below_4():
    lock = read_lock(LOCK_FILE)
    for name in ("torch", "transformers", "lmms-eval", "filelock", "decord", "av", "datasets", "pandas", "pytest"):
        assert name in lock, name
    assert lock["lmms-eval"] == "0.7.3"
    assert int(lock["filelock"].split(".")[0]) < 4
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version) for version in lock.values())


def test_env_reports_versions_and_ok_here():
    """This checkout's venv was installed by `make install` from the lock: everything matches."""
    run = subprocess.run([*EARLYTOM_EVAL, "env", "--json"], capture_output=True, text=True, timeout=300)
    report = json.loads(run.stdout)
    assert run.returncode == 0, report["problems"]
    assert report["ok"] and report["problems"] == []
    assert report["versions"]["torch"] == installed_version("torch")
    assert report["versions"]["filelock"] == installed_version("filelock")
    assert report["lock"].startswith("matches requirements.lock")
    assert report["lmms_eval"].startswith("ok")
    text = subprocess.run([*EARLYTOM_EVAL, "env"], capture_output=True, text=True, timeout=300).stdout
    assert text.splitlines()[-1] == "ok"
    assert f"lmms-eval: {installed_version('lmms-eval')}" in text


def _fake_filelock_4(root: Path) -> Path:
    """A filelock that looks like 4.x to lmms-eval: the installed package with ``_api`` renamed away."""
    package = root / "filelock"
    shutil.copytree(Path(filelock.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "_api.py").rename(package / "_core.py")
    for source in package.rglob("*.py"):
        source.write_text(source.read_text().replace("._api", "._core"))
    info = root / "filelock-4.3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: filelock\nVersion: 4.3.1\n")
    return root


@pytest.mark.parametrize("flags", [["--lmms-only"], []])
def test_env_names_filelock_4(tmp_path, flags):
    fake = _fake_filelock_4(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    run = subprocess.run([*EARLYTOM_EVAL, "env", *flags], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1
    output = run.stdout + run.stderr
    lines = [line for line in output.splitlines() if "filelock" in line and "lmms-eval cannot" in line]
    assert len(lines) == 1, output
    assert "filelock 4.3.1 dropped filelock._api" in lines[0] and "pip install 'filelock<4'" in lines[0]
    if not flags:  # the full report also says the installed filelock is not the locked one
        assert "filelock 4.3.1 is installed, the lock has" in output
        assert output.splitlines()[-1] == "2 problem(s)"
