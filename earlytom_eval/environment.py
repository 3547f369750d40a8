"""What a bug report needs to know about this installation (``earlytom-eval env``).

Versions of the packages the project depends on, whether they are the ones in the lock, the GPUs and
attention kernels torch sees, and whether lmms-eval can actually run: its evaluator imports and it
resolves ``--model earlytom_llava_ov``. Every problem is one line that names the fix.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .paths import LOCK_FILE

__all__ = [
    "EnvReport",
    "REPORTED_PACKAGES",
    "collect",
    "installed_version",
    "lmms_eval_problems",
    "lock_problems",
    "read_lock",
    "render",
]

#: Distributions whose versions every report shows (display name, distribution name).
REPORTED_PACKAGES = (
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("lmms-eval", "lmms-eval"),
    ("decord", "decord"),
    ("PyAV", "av"),
    ("filelock", "filelock"),
    ("earlytom-eval", "earlytom-eval"),
)


def _normalise(name: str) -> str:
    """PEP 503 name normalisation (``Foo_Bar.baz`` -> ``foo-bar-baz``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _public(version: str) -> str:
    """The public part of a version: ``2.14.1+cpu`` -> ``2.14.1`` (a local build of the locked release)."""
    return version.split("+", 1)[0]


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def read_lock(path: Path = LOCK_FILE) -> dict[str, str]:
    """``{normalised name: version}`` of every ``name==version`` line of a pip-style lock file."""
    pins = {}
    for line in path.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        name, sep, version = requirement.partition("==")
        if sep and name and not name.startswith("-"):
            pins[_normalise(name.split("[", 1)[0].strip())] = version.split(";", 1)[0].strip()
    return pins


def lock_problems(lock: Mapping[str, str], installed: Mapping[str, str | None]) -> list[str]:
    """One line per locked package that is missing or at another version than the lock's.

    ``installed`` maps normalised names to installed versions (None: not installed). A local build of the
    locked release (``2.14.1+cpu`` for ``2.14.1``) matches.
    """
    problems = []
    for name, wanted in sorted(lock.items()):
        found = installed.get(name)
        if found is None:
            problems.append(f"{name} is not installed, the lock has {wanted}: run `make install`")
        elif _public(found) != _public(wanted):
            problems.append(
                f"{name} {found} is installed, the lock has {wanted}: run `make install` "
                f"(or `pip install {name}=={wanted}`)"
            )
    return problems


def _installed_for(lock: Mapping[str, str]) -> dict[str, str | None]:
    found: dict[str, str] = {}
    for dist in metadata.distributions():  # sys.path order: the first one found is the one imported
        if dist.metadata["Name"]:
            found.setdefault(_normalise(dist.metadata["Name"]), dist.version)
    return {name: found.get(name) for name in lock}


def lmms_eval_problems(model_id: str) -> list[str]:
    """Why lmms-eval cannot run ``--model <model_id>`` (empty when it can).

    Imports lmms-eval's evaluator and runs the set-up every evaluation starts with (where a broken
    dependency shows, e.g. filelock 4 without ``filelock._api``), then resolves the model through
    lmms-eval's own registry.
    """
    if installed_version("lmms-eval") is None:
        return ["lmms-eval is not installed: run `make install` (or `pip install lmms-eval==0.7.3`)"]
    try:
        evaluator = importlib.import_module("lmms_eval.evaluator")
        # lmms-eval 0.7.3 imports filelock._api here, at the start of every run, not at import time.
        getattr(evaluator, "_enable_reentrant_filelocks", lambda: None)()
    except Exception as err:  # noqa: BLE001 - any import failure is the problem to report
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        fix = "run `make install`"
        filelock = installed_version("filelock")
        if "filelock" in str(err) and filelock and int(filelock.split(".")[0]) >= 4:
            fix = f"filelock {filelock} dropped filelock._api, which lmms-eval 0.7.3 imports: pip install 'filelock<4'"
        return [f"lmms-eval cannot import its evaluator ({reason}): {fix}"]
    try:
        # Lazy: a probe; the report must come out even when lmms-eval is missing or broken.
        from lmms_eval.models import get_model

        get_model(model_id)
    except Exception as err:  # noqa: BLE001
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        return [
            f"lmms-eval does not resolve --model {model_id} ({reason}): reinstall this package "
            "(`make install` or `pip install -e .`) so its lmms_eval.models entry point is registered"
        ]
    return []


@dataclass
class EnvReport:
    """The facts of one installation and the problems found (one line each, naming the fix)."""

    python: str
    platform: str
    versions: dict[str, str | None]
    lock: str
    devices: list[str] = field(default_factory=list)
    attention: dict[str, str] = field(default_factory=dict)
    lmms_eval: str = "not checked"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _torch_facts() -> tuple[list[str], dict[str, str]]:
    try:
        import torch  # lazy: a probe; the report must come out even when torch is missing or broken
    except Exception as err:  # noqa: BLE001
        return [], {"torch": f"not importable ({type(err).__name__}: {err})"}
    devices = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append(
                f"cuda:{index} {props.name} ({props.total_memory / 2**30:.0f} GiB, "
                f"compute {props.major}.{props.minor})"
            )
    attention = {"sdpa": "yes" if hasattr(torch.nn.functional, "scaled_dot_product_attention") else "no"}
    if devices:
        backends = torch.backends.cuda
        attention["sdpa backends"] = ", ".join(
            name
            for name, enabled in (
                ("flash", backends.flash_sdp_enabled()),
                ("mem_efficient", backends.mem_efficient_sdp_enabled()),
                ("math", backends.math_sdp_enabled()),
            )
            if enabled
        )
    flash = installed_version("flash-attn")
    if flash is None:
        attention["flash_attention_2"] = "not installed"
    else:
        try:
            importlib.import_module("flash_attn")
            attention["flash_attention_2"] = f"flash-attn {flash}" + ("" if devices else " (no CUDA device)")
        except Exception as err:  # noqa: BLE001
            attention["flash_attention_2"] = f"flash-attn {flash} does not import ({type(err).__name__})"
    return devices, attention


def collect(
    model_id: str, lock_path: Path = LOCK_FILE, *, lock_only: bool = False, lmms_only: bool = False
) -> EnvReport:
    """Gather the report; ``model_id`` is the name lmms-eval must resolve. ``lock_only``: only the lock
    comparison; ``lmms_only``: only lmms-eval's check."""
    versions = {display: installed_version(dist) for display, dist in REPORTED_PACKAGES}
    report = EnvReport(
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        versions=versions,
        lock="not checked",
    )
    if not lmms_only:
        if lock_path.is_file():
            lock = read_lock(lock_path)
            mismatches = lock_problems(lock, _installed_for(lock))
            report.problems += mismatches
            report.lock = (
                f"matches {lock_path.name} ({len(lock)} packages)"
                if not mismatches
                else f"{len(mismatches)} of {len(lock)} packages differ from {lock_path.name}"
            )
        else:
            report.lock = f"no lock file at {lock_path} (installed from a wheel?): not compared"
    if lock_only:
        return report
    if not lmms_only:
        report.devices, report.attention = _torch_facts()
    lmms = lmms_eval_problems(model_id)
    report.lmms_eval = f"ok: evaluator imports, --model {model_id} resolves" if not lmms else "cannot run"
    report.problems += lmms
    return report


def render(report: EnvReport) -> str:
    """The report as text: ``key: value`` lines, then each problem, then ``ok`` or the problem count."""
    lines = [f"python: {report.python} ({report.platform})"]
    lines += [f"{name}: {version or 'not installed'}" for name, version in report.versions.items()]
    lines.append(f"lock: {report.lock}")
    if report.attention:
        lines.append("cuda devices: " + ("; ".join(report.devices) if report.devices else "none"))
        lines += [f"attention {name}: {value}" for name, value in report.attention.items()]
    lines.append(f"lmms-eval: {report.lmms_eval}")
    lines += [f"problem: {problem}" for problem in report.problems]
    lines.append("ok" if report.ok else f"{len(report.problems)} problem(s)")
    return "\n".join(lines)
