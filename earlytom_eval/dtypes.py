"""Dtype names as command lines, configs and loaders give them, and back."""

from __future__ import annotations

import torch

__all__ = ["ALLOWED", "dtype_name", "resolve_dtype"]

_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
ALLOWED = ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16")


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A ``torch.dtype`` from a dtype or a name ('bfloat16', 'bf16', 'torch.float16', ...).

    Raises:
        ValueError: an unknown name (the message lists :data:`ALLOWED`).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    resolved = getattr(torch, _ALIASES.get(name, name), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (allowed: {', '.join(ALLOWED)})")
    return resolved


def dtype_name(dtype: torch.dtype | str) -> str:
    """``torch.bfloat16`` -> ``'bfloat16'``."""
    return str(dtype).removeprefix("torch.")
