"""The machine a measurement runs on: versions and hardware for every JSON report, and probes of how busy it is."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

import torch

from ..dtypes import dtype_name
from ..environment import installed_version

__all__ = [
    "CpuActivity",
    "cuda_device_count",
    "environment_info",
    "hardware_info",
    "load_average",
    "wait_for_quiet",
    "wait_until_idle",
]


def environment_info() -> dict[str, Any]:
    """Software versions and the host, for every JSON this project writes."""
    info: dict[str, Any] = {"python": platform.python_version(), "host": platform.node(), "cpu": _cpu_name(),
                            "cpu_cores": os.cpu_count()}
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    info["transformers"] = installed_version("transformers")
    try:
        with open("/proc/meminfo") as handle:
            kb = int(handle.readline().split()[1])
        info["ram_gib"] = round(kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device: torch.device | str, dtype: torch.dtype | str, model: Any) -> dict[str, Any]:
    """:func:`environment_info` plus the device, its name and memory, the dtype and ``model``'s attention kernel
    (``model``: an ``EarlyTomLlavaOnevision``)."""
    device = torch.device(device)
    info = environment_info()
    info["device"] = str(device)
    info["dtype"] = dtype_name(dtype)
    impl = getattr(model.model.config, "_attn_implementation", None) or "unknown"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = torch.cuda.get_device_name(device)
        info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
        backends = [
            name
            for name, enabled in (
                ("flash", torch.backends.cuda.flash_sdp_enabled()),
                ("mem_efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                ("cudnn", torch.backends.cuda.cudnn_sdp_enabled()),
                ("math", torch.backends.cuda.math_sdp_enabled()),
            )
            if enabled
        ]
        info["attention_kernel"] = f"{impl} (torch SDPA backends enabled: {', '.join(backends)})"
    else:
        info["device_name"] = f"CPU: {info.get('cpu', 'unknown')} ({info.get('cpu_cores')} cores)"
        info["attention_kernel"] = f"{impl} (torch SDPA, CPU kernel)"
    return info


def cuda_device_count() -> int:
    """CUDA GPUs visible to this process."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class CpuActivity:
    """Share of the machine's CPU time used by OTHER processes since this object was made (noise indicator)."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as handle:
                fields = [float(x) for x in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0.0)) / ticks
        own = sum(os.times()[:2])
        return busy, own, time.monotonic()

    def other_share(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy = end[0] - self.start[0]
        own = end[1] - self.start[1]
        wall = end[2] - self.start[2]
        cores = os.cpu_count() or 1
        return max(0.0, (busy - own) / (wall * cores)) if wall > 0 else None


def wait_until_idle(max_share: float | None, max_wait_s: float, window_s: float = 5.0) -> float | None:
    """Sleep until other processes use at most ``max_share`` of the CPU over a ``window_s`` window
    (or ``max_wait_s`` passed); returns the last share seen."""
    if max_share is None:
        return None
    start = time.monotonic()
    while True:
        activity = CpuActivity()
        time.sleep(window_s)
        share = activity.other_share()
        if share is None or share <= max_share or time.monotonic() - start >= max_wait_s:
            return share
        print(f"  other processes use {share:.0%} of the CPU; waiting", file=sys.stderr)


def load_average() -> float | None:
    """The 1-minute load average (None where unknown)."""
    try:
        with open("/proc/loadavg") as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_for_quiet(threshold: float, max_wait_s: float, poll_s: float = 15.0) -> dict[str, Any]:
    """Wait until the 1-minute load average is below ``threshold`` (at most ``max_wait_s``)."""
    start = time.monotonic()
    load = load_average()
    while load is not None and load >= threshold and time.monotonic() - start < max_wait_s:
        print(f"  waiting for a quiet machine: 1-min load {load:.2f} >= {threshold}", file=sys.stderr)
        time.sleep(poll_s)
        load = load_average()
    quiet = load is None or load < threshold
    return {"threshold": threshold, "load_at_start": load, "quiet": quiet,
            "waited_s": round(time.monotonic() - start, 1)}
