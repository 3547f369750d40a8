"""Device-synchronised stage timing (milliseconds), used by the pipeline and the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

__all__ = ["NULL_TIMER", "NullTimer", "StageTimer", "synchronize"]


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """Accumulates wall time per named stage, synchronising the device around each stage.

    Attributes:
        ms: stage name -> milliseconds, summed over every time the stage ran.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = device
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0


class NullTimer(StageTimer):
    """A timer that records nothing and never synchronises (what untimed code passes)."""

    def stage(self, name: str):  # type: ignore[override]
        return nullcontext()


#: The one shared null timer.
NULL_TIMER = NullTimer()
