"""Peak memory of a run: the CUDA allocator's peak on the GPUs that hold the model, else the process's peak RSS."""

from __future__ import annotations

import contextlib
import re
import resource
import sys
from collections.abc import Sequence

import torch

__all__ = ["PeakMemory"]


class PeakMemory:
    """Measures the peak memory between :meth:`reset` and :meth:`peak` (bytes; weights included).

    Args:
        devices: the devices the model lives on; the CUDA ones are measured with
            ``torch.cuda.max_memory_allocated`` (summed). With none, the process's peak resident set is read.
        reset_cpu: on CPU, whether :meth:`reset` restarts the high-water mark (``VmHWM``, per run: the bench)
            or leaves the process's high-water mark (per process: the lmms-eval model).
    """

    def __init__(self, devices: Sequence[torch.device | str], *, reset_cpu: bool = True):
        self.cuda = [d for d in map(torch.device, devices) if d.type == "cuda"]
        self.reset_cpu = reset_cpu

    @property
    def kind(self) -> str:
        """What :meth:`peak` measures: ``cuda_max_allocated`` or ``cpu_max_rss``."""
        return "cuda_max_allocated" if self.cuda else "cpu_max_rss"

    def reset(self) -> int | None:
        """Start a measurement; returns the memory in use now (bytes; None where unknown)."""
        if self.cuda:
            for device in self.cuda:
                torch.cuda.reset_peak_memory_stats(device)
            return sum(int(torch.cuda.memory_allocated(d)) for d in self.cuda)
        if self.reset_cpu:
            with contextlib.suppress(OSError):
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")  # resets VmHWM to the current RSS
        return _proc_status_bytes("VmRSS")

    def peak(self) -> int | None:
        """The peak since :meth:`reset` (bytes; None where unknown)."""
        if self.cuda:
            return sum(int(torch.cuda.max_memory_allocated(d)) for d in self.cuda)
        peak = _proc_status_bytes("VmHWM")
        if peak is None:  # no /proc (macOS): the process's maximum RSS, KiB on Linux, bytes on macOS
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = rss if sys.platform == "darwin" else rss * 1024
        return peak


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            match = re.search(rf"^{key}:\s+(\d+)\s+kB", handle.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None
