"""The lmms-eval ``--model_args`` of ``earlytom_llava_ov``, checked before any data or weights are touched.

:func:`parse_model_args` turns the keyword arguments lmms-eval passes (strings, or numbers it converted) into
a :class:`ModelArgs`: the compression config and the loading options. A bad value raises one line
(:class:`ConfigError`, :class:`CheckpointError` or ``ValueError``) naming the argument and what is allowed;
:func:`exit_on_bad_input` turns such an error into that line alone on stderr and exit status 2, since
lmms-eval catches every ``Exception``, prints a traceback and exits 0.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..compression.config import CompressionConfig, ConfigError, load_config, parse_field_value
from ..dtypes import ALLOWED as DTYPE_NAMES
from ..models.checkpoint import CheckpointError, check_checkpoint
from ..paths import CONFIGS, find_config
from ..video import BACKENDS, VideoLoadError
from .manifest import MODEL_ID

__all__ = ["BAD_INPUT", "MODEL_ARGS", "ModelArgs", "exit_on_bad_input", "parse_model_args"]

#: Model arguments besides the config fields (``batch_size``, ``max_batch_size`` come from lmms-eval).
MODEL_ARGS = (
    "pretrained",
    "config",
    "max_frames_num",
    "device",
    "dtype",
    "attn_implementation",
    "device_map",
    "video_backend",
    "efficiency_log",
    "warmup",
    "batch_size",
    "max_batch_size",
)
OVERRIDABLE = tuple(f for f in CompressionConfig.all_field_names() if f != "description")
DTYPES = ("auto", *DTYPE_NAMES)
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
#: Errors that mean bad input (a one-line message), not a bug.
BAD_INPUT = (ConfigError, CheckpointError, VideoLoadError, ValueError)


@dataclass(frozen=True)
class ModelArgs:
    """Checked ``--model_args``: what the wrapper needs to load the model."""

    pretrained: str
    config: CompressionConfig
    device: str
    dtype: str
    attn_implementation: str
    device_map: str | None
    video_backend: str
    batch_size: int
    warmup: int


def parse_model_args(
    *,
    pretrained: str,
    config: str | None,
    max_frames_num: Any,
    device: str | None,
    dtype: Any,
    attn_implementation: Any,
    device_map: Any,
    video_backend: Any,
    batch_size: Any,
    warmup: Any,
    overrides: dict[str, Any],
    processes: int = 1,
    local_index: int = 0,
    cuda_available: Callable[[], bool] = torch.cuda.is_available,
) -> ModelArgs:
    """Check every argument; raise one line (see the module docstring) on the first bad one.

    ``processes`` / ``local_index``: accelerate's data-parallel processes (each takes its own GPU).
    A local ``pretrained`` folder is checked too (:func:`check_checkpoint`, its weight files later, by the
    loader); hub ids are left to transformers.
    """
    unknown = sorted(set(overrides) - set(OVERRIDABLE), key=str)
    if unknown:
        raise ValueError(
            f"{MODEL_ID}: unknown model_args key(s) {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(MODEL_ARGS[:-2])}, and config fields {', '.join(OVERRIDABLE)})"
        )
    cfg = build_config(config, overrides, max_frames_num)
    batch = int_at_least("batch_size", batch_size, 1)
    dtype = str(dtype)
    if dtype not in DTYPES:
        raise ValueError(f"{MODEL_ID}: invalid dtype {dtype!r} (allowed: {', '.join(DTYPES)})")
    attention = str(attn_implementation)
    if attention not in ATTENTION and "/" not in attention:
        raise ValueError(
            f"{MODEL_ID}: invalid attn_implementation {attention!r} "
            f"(allowed: {', '.join(ATTENTION)}, or a hub kernel 'org/repo')"
        )
    if video_backend not in BACKENDS:
        raise ValueError(f"{MODEL_ID}: invalid video_backend {video_backend!r} (allowed: {', '.join(BACKENDS)})")
    warm = int_at_least("warmup", warmup, 0)
    device_map = None if device_map in (None, "", False) else str(device_map)
    if processes > 1:
        if device_map is not None:
            raise ValueError(
                f"{MODEL_ID}: device_map={device_map} splits one model over several GPUs and cannot be combined "
                "with data parallelism (accelerate launch --num_processes > 1); use one process for device_map"
            )
        device = f"cuda:{local_index}" if cuda_available() else "cpu"
    else:
        device = str(device) if device else ("cuda" if cuda_available() else "cpu")
    if device.startswith("cuda") and not cuda_available():
        raise ValueError(f"{MODEL_ID}: device {device!r} requested but CUDA is not available (allowed here: cpu)")
    pretrained = str(pretrained)
    check_checkpoint(pretrained, weights=False)  # the weight files are checked by load_model, after the config
    return ModelArgs(pretrained=pretrained, config=cfg, device=device, dtype=dtype, attn_implementation=attention,
                     device_map=device_map, video_backend=str(video_backend), batch_size=batch, warmup=warm)


@contextmanager
def exit_on_bad_input() -> Iterator[None]:
    """Bad input inside the block: ``error: <the line>`` alone on stderr and ``SystemExit(2)``.

    lmms-eval catches ``Exception`` (traceback, exit status 0) but not ``SystemExit``.
    """
    try:
        yield
    except BAD_INPUT as err:
        print(f"error: {_one_line(err)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def build_config(config: Any, overrides: dict[str, Any], max_frames_num: Any) -> CompressionConfig:
    """The compression config: ``config`` (a YAML path or a name in ``configs/``), then the overrides."""
    assignments = {key: _as_text(value) for key, value in overrides.items()}
    if max_frames_num is not None:
        frames = str(int_at_least("max_frames_num", max_frames_num, 1))
        if "num_frames" in assignments and parse_field_value("num_frames", assignments["num_frames"]) != int(frames):
            raise ConfigError(
                f"max_frames_num={frames} and num_frames={assignments['num_frames']} disagree (give one of them)"
            )
        assignments["num_frames"] = frames
    base = load_config(config_path(config)) if config not in (None, "") else CompressionConfig()
    return base.with_overrides(assignments) if assignments else base


def config_path(value: Any) -> Path:
    """A config YAML path as given, or a name looked up in ``configs/`` (of the working folder, then the repo)."""
    try:
        found = find_config(value)
    except (OSError, ValueError):  # a name too long for the file system, a NUL character
        found = None
    if found is not None:
        return found
    shipped = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    hint = f" or a name from configs/: {', '.join(shipped)}" if shipped else ""
    raise ConfigError(f"config file not found: '{value}' (allowed: a YAML path{hint})")


def _as_text(value: Any) -> str:
    """lmms-eval turns ``8`` into 8 and ``0.15`` into 0.15; configs parse strings."""
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    return str(value)


def int_at_least(name: str, value: Any, minimum: int) -> int:
    try:
        number = int(str(value))
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ValueError(f"{MODEL_ID}: invalid {name} {value!r} (allowed: an integer >= {minimum})")
    return number


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
