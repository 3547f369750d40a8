"""The TTFT benchmark: ``earlytom-eval bench``.

Protocol (the reference's, made explicit):

* **TTFT** runs from pre-decoded, pre-processed frames already on the device (pixel values in the
  model's dtype) to the first generated token: tokenising the prompt, the vision encoder with the
  method, projector and pooling, token selection, splicing, the LLM prefill and greedy sampling of the
  first token. The device is synchronised before and after. Batch 1, one video.
* **All configs in one run, interleaved**: round by round, each config once per round, the order
  rotated every round so no config always runs first; warm-up rounds run the same way and are
  excluded. Median, min and max over the timed rounds.
* **Stage breakdown** (vision encoder, compression, projector+pooling, LLM prefill, stage-3 merge,
  first-token sampling) from runs whose timer synchronises the device around each stage. On CPU a
  synchronisation is a no-op, so the same runs give TTFT and stages (``inline``); on a GPU the
  stage-timed runs are separate from the TTFT runs (``separate``), so the headline TTFT carries no
  extra synchronisation.
* **Peak memory** over a run (TTFT and decoding): ``torch.cuda.max_memory_allocated`` on CUDA, the
  process's peak resident set (``VmHWM``, reset before each run) on CPU; both include the weights.
* **Decode throughput**: ``--decode-tokens`` greedy tokens after the first one (end-of-sequence
  ignored so every config decodes the same number), tokens / second.

FLOPs per stage (:mod:`earlytom_eval.flops`) come from the token counts of the measured runs.
With ``--preset`` the weights are random: the timing depends on the shapes and on how many frames the
clip lets the encoder merge, not on trained values (every output says so).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..compression.config import CompressionConfig
from .flops import (
    BASIS,
    ModelShapes,
    add_ratios,
    count_stage_flops,
    environment_info,
    reference_llm_macs,
    schedule_from_encoding,
    text_table,
)

__all__ = [
    "RunRecord",
    "BenchRunner",
    "build_report",
    "run_order",
    "validate_report",
]

RANDOM_WEIGHTS_NOTE = (
    "random-initialised weights of the real shapes: the timing depends on the shapes and on how many frames "
    "the clip lets the encoder merge, not on trained values"
)
#: Stages recorded by the pipeline's timer, in pipeline order ("other" = TTFT minus their sum).
TIMED_STAGES = (
    "vision_encoder",
    "compression",
    "projector_pooling",
    "llm_prefill",
    "inner_merge",
    "first_token",
)
CONFIG_KEYS = (
    "name",
    "flops",
    "total_prefill_flops",
    "frames_per_layer",
    "visual_tokens",
    "ttft_ms",
    "stages_ms",
)
FLOP_KEYS = ("vision_encoder", "projector_pooling", "compression", "llm_prefill", "decode_step")


# ------------------------------------------------------------------------------------ scheduling
def run_order(num_configs: int, warmup: int, repeats: int) -> list[tuple[str, int, int]]:
    """The interleaved measurement order: ``(phase, round, config index)``.

    ``warmup`` rounds, then ``repeats`` timed rounds; each round runs every config once, starting at a
    different config each round (round r starts at config ``r mod n``).
    """
    if num_configs < 1 or warmup < 0 or repeats < 1:
        raise ValueError(f"need >= 1 config, warmup >= 0, repeats >= 1 (got {num_configs}, {warmup}, {repeats})")
    order = []
    for phase, rounds in (("warmup", warmup), ("timed", repeats)):
        for r in range(rounds):
            for i in range(num_configs):
                order.append((phase, r, (r + i) % num_configs))
    return order


# ------------------------------------------------------------------------------------ one run
@dataclass
class RunRecord:
    """One measured run of one config."""

    phase: str  # "warmup" | "timed"
    round: int
    config: str
    kind: str  # "ttft" (headline, decode) | "stages" (profiled) | "both" (inline)
    ttft_ms: float
    stages_ms: dict[str, float] = field(default_factory=dict)
    decode_ms: float | None = None
    decode_tokens: int = 0
    peak_memory_bytes: int | None = None
    baseline_memory_bytes: int | None = None
    visual_tokens: int = 0
    prompt_tokens: int = 0
    frames_per_layer: tuple[int, ...] = ()
    frames_out: int = 0
    segments: tuple[tuple[int, int], ...] | None = None
    llm_tokens_per_layer: tuple[int, ...] = ()
    first_token: int = -1
    #: Share of the machine's CPU used by other processes during the run (None if unknown).
    other_cpu_share: float | None = None
    #: Disturbed by other processes (``other_cpu_share`` above the runner's limit) and measured again.
    discarded: bool = False


class _Memory:
    """Peak memory over a run: CUDA allocator peak, or the process's peak RSS on CPU."""

    def __init__(self, device: Any):
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def reset(self) -> int | None:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return int(torch.cuda.memory_allocated(self.device))
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current RSS
        return _proc_status_kib("VmRSS")

    def peak(self) -> int | None:
        import torch

        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        return _proc_status_kib("VmHWM")


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            match = re.search(rf"^{key}:\s+(\d+)\s+kB", handle.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


@contextlib.contextmanager
def _eos_ignored(model: Any) -> Iterator[None]:
    """Decode a fixed number of tokens: no end-of-sequence token ends the generation."""
    config = model.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = None
    try:
        yield
    finally:
        config.eos_token_id = saved


class BenchRunner:
    """Measures TTFT, stages, memory and decoding for several configs of one model, interleaved.

    Args:
        model: an ``EarlyTomLlavaOnevision`` (its weights serve every config, via ``with_config``).
        configs: the compression configs, measured in this order within a round (rotated per round).
        pixel_values: ``[T, 3, S, S]`` preprocessed frames, already on the model's device and dtype.
        prompt: the chat prompt with one video placeholder.
        decode_tokens: greedy tokens decoded after the first (0: no decoding).
        profile: ``inline`` (stage timers in the TTFT runs) or ``separate`` (extra stage-timed runs).
        max_other_cpu: if set, a run during which other processes used more than this share of the
            machine's CPU is discarded (kept in the log, flagged) and measured again once the machine is
            idle, at most ``max_retries`` times (a shared machine's noise guard; CPU runs).
    """

    def __init__(
        self,
        model: Any,
        configs: Sequence[CompressionConfig],
        pixel_values: Any,
        prompt: str,
        *,
        decode_tokens: int = 32,
        profile: str = "inline",
        max_other_cpu: float | None = None,
        max_retries: int = 3,
        idle_wait_s: float = 600.0,
    ):
        if profile not in ("inline", "separate"):
            raise ValueError(f"profile must be 'inline' or 'separate', got {profile!r}")
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"config names must be distinct, got {names}")
        self.models = [model.with_config(c) for c in configs]
        self.configs = list(configs)
        self.pixel_values = pixel_values
        self.prompt = prompt
        self.decode_tokens = decode_tokens
        self.profile = profile
        self.device = model.device
        self.memory = _Memory(self.device)
        self.max_other_cpu = max_other_cpu
        self.max_retries = max_retries
        self.idle_wait_s = idle_wait_s

    def measure(self, index: int, phase: str = "timed", round_: int = 0) -> list[RunRecord]:
        """Run config ``index`` once (twice with ``separate`` profiling); returns its records."""
        if self.profile == "inline":
            return [self._run(index, phase, round_, kind="both")]
        return [self._run(index, phase, round_, kind="ttft"), self._run(index, phase, round_, kind="stages")]

    def _run(self, index: int, phase: str, round_: int, kind: str) -> RunRecord:
        import torch

        from ..timing import StageTimer, synchronize

        model = self.models[index]
        profiled = kind in ("both", "stages")
        decode = kind in ("both", "ttft") and self.decode_tokens > 0
        gc.collect()
        synchronize(self.device)
        baseline = self.memory.reset()
        activity = _CpuActivity()
        timer = StageTimer(self.device)
        stage_timer = timer if profiled else None
        with torch.inference_mode():
            with timer.stage("ttft"):
                inputs, encodings, lengths = model.prepare_inputs(
                    [self.prompt], [[self.pixel_values]], timer=stage_timer
                )
                state = model.prefill(inputs, timer=stage_timer, encodings=encodings)
            first = int(state.first_tokens[0])
            decode_ms = None
            if decode:
                with _eos_ignored(model), timer.stage("decode"):
                    model.decode(state, self.decode_tokens + 1)
                decode_ms = timer.ms["decode"]
        peak = self.memory.peak()
        encoding = encodings[0][0]
        stages = {k: v for k, v in timer.ms.items() if k in TIMED_STAGES} if profiled else {}
        if profiled:
            stages["other"] = max(0.0, timer.ms["ttft"] - sum(stages.values()))
        per_layer = tuple(state.llm.tokens_per_layer[0]) if hasattr(state, "llm") else ()
        return RunRecord(
            phase=phase,
            round=round_,
            config=self.configs[index].name,
            kind=kind,
            ttft_ms=timer.ms["ttft"],
            stages_ms=stages,
            decode_ms=decode_ms,
            decode_tokens=self.decode_tokens if decode else 0,
            peak_memory_bytes=peak,
            baseline_memory_bytes=baseline,
            visual_tokens=encoding.visual_tokens,
            prompt_tokens=lengths[0],
            frames_per_layer=tuple(encoding.frames_per_layer),
            frames_out=encoding.frames_out,
            segments=tuple(tuple(s) for s in encoding.segments) if encoding.segments is not None else None,
            llm_tokens_per_layer=per_layer,
            first_token=first,
            other_cpu_share=activity.other_share(),
        )

    def run(
        self, warmup: int, repeats: int, on_record: Callable[[RunRecord], None] | None = None
    ) -> list[RunRecord]:
        """Warm-up rounds then timed rounds, interleaved (see :func:`run_order`); every record, in order
        (runs discarded by the noise guard included, flagged)."""
        records = []
        for phase, round_, index in run_order(len(self.configs), warmup, repeats):
            attempt = 0
            while True:
                batch = self.measure(index, phase, round_)
                noisy = self._noisy(batch) and attempt < self.max_retries
                for record in batch:
                    record.discarded = noisy
                    records.append(record)
                    if on_record is not None:
                        on_record(record)
                if not noisy:
                    break
                attempt += 1
                wait_until_idle(self.max_other_cpu, self.idle_wait_s)
        return records

    def _noisy(self, batch: Sequence[RunRecord]) -> bool:
        if self.max_other_cpu is None:
            return False
        return any(r.other_cpu_share is not None and r.other_cpu_share > self.max_other_cpu for r in batch)


# ------------------------------------------------------------------------------------ summary
def _stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "runs": [round(float(v), 3) for v in values],
    }


def summarize_config(
    config: CompressionConfig, records: Sequence[RunRecord], shapes: ModelShapes, attention: str = "square"
) -> dict[str, Any]:
    """One ``configs`` entry from a config's timed records (warm-ups must already be excluded)."""
    timed = [r for r in records if r.config == config.name and r.phase == "timed" and not r.discarded]
    if not timed:
        raise ValueError(f"no timed runs for config {config.name!r}")
    ttft_runs = [r for r in timed if r.kind in ("ttft", "both")]
    stage_runs = [r for r in timed if r.kind in ("stages", "both")]
    decode_runs = [r for r in timed if r.decode_ms is not None]
    first = timed[0]
    counts = {(r.visual_tokens, r.prompt_tokens, r.frames_per_layer, r.llm_tokens_per_layer) for r in timed}
    schedule = schedule_from_encoding(_EncodingView(first), source="measured in this run")
    counted = count_stage_flops(
        shapes,
        config,
        schedule,
        first.prompt_tokens,
        first.visual_tokens,
        llm_tokens_per_layer=first.llm_tokens_per_layer or None,
        attention=attention,
    )
    stage_names = [s for s in (*TIMED_STAGES, "other") if any(s in r.stages_ms for r in stage_runs)]
    stages_ms = {s: _stats([r.stages_ms.get(s, 0.0) for r in stage_runs]) for s in stage_names}
    ttft = _stats([r.ttft_ms for r in ttft_runs])
    profiled_ttft = _stats([r.ttft_ms for r in stage_runs])
    ours = [r.stages_ms.get("compression", 0.0) + r.stages_ms.get("inner_merge", 0.0) for r in stage_runs]
    entry: dict[str, Any] = {
        "name": config.name,
        "method": config.method,
        "config": config.to_dict(),
        "ttft_ms": ttft,
        "stages_ms": stages_ms,
        "ttft_profiled_ms": profiled_ttft,
        "compression_ms": _stats(ours),
        "compression_share_of_ttft": statistics.median(ours) / profiled_ttft["median"],
        "flops": dict(counted.stages),
        "total_prefill_flops": counted.total_prefill,
        "flops_detail": counted.detail,
        "reference_llm_macs": reference_llm_macs(shapes, first.visual_tokens - 1),
        "frames_per_layer": list(first.frames_per_layer),
        "frames_out": first.frames_out,
        "segments": [list(s) for s in first.segments] if first.segments is not None else None,
        "schedule_compact": schedule.compact(),
        "visual_tokens": first.visual_tokens,
        "prompt_tokens": first.prompt_tokens,
        "llm_tokens_per_layer": list(first.llm_tokens_per_layer),
        "token_counts_identical_across_runs": len(counts) == 1,
        "peak_memory_bytes": max(r.peak_memory_bytes for r in timed if r.peak_memory_bytes is not None)
        if any(r.peak_memory_bytes is not None for r in timed)
        else None,
        "timed_runs": len(ttft_runs),
        "discarded_runs": sum(1 for r in records if r.config == config.name and r.discarded),
        "other_cpu_share_max": max((r.other_cpu_share for r in timed if r.other_cpu_share is not None), default=None),
    }
    baselines = [r.baseline_memory_bytes for r in timed if r.baseline_memory_bytes is not None]
    if baselines and entry["peak_memory_bytes"] is not None:
        entry["peak_memory_above_baseline_bytes"] = entry["peak_memory_bytes"] - min(baselines)
    if decode_runs:
        rates = [r.decode_tokens / (r.decode_ms / 1000.0) for r in decode_runs]
        entry["decode"] = {
            "tokens": decode_runs[0].decode_tokens,
            "tokens_per_s": _stats(rates),
            "ms": _stats([r.decode_ms for r in decode_runs]),
        }
    return entry


@dataclass
class _EncodingView:
    """Adapts a RunRecord to what :func:`schedule_from_encoding` reads."""

    record: RunRecord

    @property
    def frames_per_layer(self) -> tuple[int, ...]:
        return self.record.frames_per_layer

    @property
    def frames_out(self) -> int:
        return self.record.frames_out

    @property
    def segments(self):
        return self.record.segments


def build_report(
    configs: Sequence[CompressionConfig],
    records: Sequence[RunRecord],
    shapes: ModelShapes,
    *,
    meta: dict[str, Any] | None = None,
    attention: str = "square",
) -> dict[str, Any]:
    """The JSON report: metadata, one entry per config (timed runs only), ratios against ``full``, raw runs."""
    entries = [summarize_config(c, records, shapes, attention) for c in configs]
    ratios = add_ratios(entries)
    for entry in entries:
        full = next((e for e in entries if e["method"] == "full"), None)
        if full is not None and "decode" in entry and "decode" in full:
            ratio = entry["decode"]["tokens_per_s"]["median"] / full["decode"]["tokens_per_s"]["median"]
            entry["vs_full"]["decode_throughput"] = ratio
            ratios[entry["name"]]["decode_throughput"] = ratio
        if full is not None and entry.get("peak_memory_bytes") and full.get("peak_memory_bytes"):
            ratio = entry["peak_memory_bytes"] / full["peak_memory_bytes"]
            entry["vs_full"]["peak_memory"] = ratio
            ratios[entry["name"]]["peak_memory"] = ratio
    report = dict(meta or {})
    report["flops_basis"] = BASIS
    report["configs"] = entries
    report["ratios"] = ratios
    report["runs"] = [_record_json(r) for r in records]
    return report


def _record_json(record: RunRecord) -> dict[str, Any]:
    out = asdict(record)
    out["ttft_ms"] = round(out["ttft_ms"], 3)
    out["stages_ms"] = {k: round(v, 3) for k, v in out["stages_ms"].items()}
    out.pop("segments")
    out.pop("llm_tokens_per_layer")
    out["frames_per_layer"] = list(out["frames_per_layer"])
    return out


def validate_report(report: dict[str, Any], *, bench: bool = True) -> None:
    """Raise ValueError if the report lacks a field the issue's JSON schema names."""
    problems = []
    for key in ("configs", "ratios"):
        if key not in report:
            problems.append(f"missing top-level '{key}'")
    if bench:
        hardware = report.get("hardware", {})
        for key in ("device", "device_name", "dtype", "torch", "transformers", "attention_kernel"):
            if key not in hardware:
                problems.append(f"missing hardware.{key}")
    for entry in report.get("configs", []):
        keys = CONFIG_KEYS if bench else CONFIG_KEYS[:5]
        for key in keys:
            if key not in entry:
                problems.append(f"config {entry.get('name')!r}: missing '{key}'")
        for key in FLOP_KEYS:
            if key not in entry.get("flops", {}):
                problems.append(f"config {entry.get('name')!r}: missing flops.{key}")
        if bench and "ttft_ms" in entry:
            for key in ("median", "min", "max"):
                if key not in entry["ttft_ms"]:
                    problems.append(f"config {entry.get('name')!r}: missing ttft_ms.{key}")
    if problems:
        raise ValueError("; ".join(problems))


# ------------------------------------------------------------------------------------ machine
def hardware_info(device: Any, dtype: Any, model: Any) -> dict[str, Any]:
    """Device name, dtype, versions, attention kernel and the host (CPU, cores, memory)."""
    import torch

    device = torch.device(device)
    info = environment_info()
    info["device"] = str(device)
    info["dtype"] = str(dtype).removeprefix("torch.")
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


class _CpuActivity:
    """Share of the machine's CPU time used by OTHER processes while measuring (noise indicator)."""

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
        activity = _CpuActivity()
        time.sleep(window_s)
        share = activity.other_share()
        if share is None or share <= max_share or time.monotonic() - start >= max_wait_s:
            return share
        print(f"  other processes use {share:.0%} of the CPU; waiting", file=sys.stderr)


def _loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_for_quiet(threshold: float, max_wait_s: float, poll_s: float = 15.0) -> dict[str, Any]:
    """Wait until the 1-minute load average is below ``threshold`` (at most ``max_wait_s``)."""
    start = time.monotonic()
    load = _loadavg()
    while load is not None and load >= threshold and time.monotonic() - start < max_wait_s:
        print(f"  waiting for a quiet machine: 1-min load {load:.2f} >= {threshold}", file=sys.stderr)
        time.sleep(poll_s)
        load = _loadavg()
    quiet = load is None or load < threshold
    return {"threshold": threshold, "load_at_start": load, "quiet": quiet,
            "waited_s": round(time.monotonic() - start, 1)}


# ------------------------------------------------------------------------------------ video
def parse_shots(spec: str) -> list[tuple[str, int]]:
    """``static:24,motion:16,static:24`` -> ``[("static", 24), ("motion", 16), ("static", 24)]``."""
    shots = []
    for item in spec.split(","):
        kind, _, count = item.strip().partition(":")
        if not kind or not count.isdigit():
            raise ValueError(f"bad --synthetic shot {item!r} (use KIND:FRAMES, e.g. static:24,motion:16)")
        shots.append((kind, int(count)))
    return shots


def load_clip(args: argparse.Namespace, num_frames: int) -> tuple[Any, dict[str, Any]]:
    """Decode the clip (a file, or a generated one written to a temporary .mp4 and read back)."""
    from ..video import load_video, synthetic_frames, write_video

    if args.video is not None:
        video = load_video(args.video, num_frames)
        info = {"path": str(args.video)}
    else:
        height, width = (int(x) for x in args.synthetic_size.lower().split("x"))
        frames = synthetic_frames(parse_shots(args.synthetic), size=(height, width), seed=args.synthetic_seed)
        with tempfile.TemporaryDirectory() as tmp:
            path = write_video(Path(tmp) / "synthetic.mp4", frames, fps=args.synthetic_fps)
            video = load_video(path, num_frames)
        info = {
            "synthetic": args.synthetic,
            "size": [height, width],
            "seed": args.synthetic_seed,
            "fps": args.synthetic_fps,
            "how": "earlytom_eval.video.synthetic_frames -> write_video (H.264) -> load_video",
        }
    info.update(
        {"frames": len(video), "indices": list(video.indices), "total_frames": video.total_frames,
         "frame_shape": list(video.frames.shape[1:])}
    )
    return video, info


# ------------------------------------------------------------------------------------ output
def _fmt_ms(stats: dict[str, float]) -> str:
    return f"{stats['median']:.1f} [{stats['min']:.1f}-{stats['max']:.1f}]"


def format_bench_table(report: dict[str, Any]) -> str:
    lines = []
    hw = report.get("hardware", {})
    lines.append(f"device: {hw.get('device_name')} | {hw.get('dtype')} | torch {hw.get('torch')} | "
                 f"transformers {hw.get('transformers')} | attention {hw.get('attention_kernel')}")
    model = report.get("model", {})
    lines.append(f"model: {model.get('source')}")
    if model.get("note") and model["note"] not in str(model.get("source")):
        lines.append(f"note: {model['note']}")
    proto = report.get("protocol", {})
    lines.append(
        f"protocol: {proto.get('warmup')} warm-up + {proto.get('repeats')} timed rounds, configs interleaved "
        f"(order rotated per round), stages {proto.get('profile')}; TTFT = preprocessed frames on device -> first "
        "token; median [min-max] ms"
    )
    cols = ["config", "vis.tok", "frames/layer", "TTFT ms", "speedup", "encoder", "compress", "proj+pool",
            "LLM prefill", "inner merge", "1st tok", "other", "ours/TTFT", "peak mem", "decode tok/s",
            "prefill TFLOPs", "FLOPs vs full"]
    rows = []
    for e in report["configs"]:
        st = e["stages_ms"]
        vs = e.get("vs_full", {})

        def med(key: str, st: dict = st) -> str:
            return f"{st[key]['median']:.1f}" if key in st else "-"

        rows.append([
            e["name"], str(e["visual_tokens"]), e.get("schedule_compact", ""), _fmt_ms(e["ttft_ms"]),
            f"{vs['ttft_speedup']:.2f}x" if "ttft_speedup" in vs else "-",
            med("vision_encoder"), med("compression"), med("projector_pooling"), med("llm_prefill"),
            med("inner_merge"), med("first_token"), med("other"), f"{e['compression_share_of_ttft']:.2%}",
            f"{e['peak_memory_bytes'] / 2**30:.2f} GiB" if e.get("peak_memory_bytes") else "-",
            f"{e['decode']['tokens_per_s']['median']:.2f}" if "decode" in e else "-",
            f"{e['total_prefill_flops'] / 1e12:.3f}",
            f"{vs['total_prefill_flops']:.1%}" if "total_prefill_flops" in vs else "-",
        ])
    lines.extend(text_table(cols, rows, left=(0, 2)))
    lines.append("stage columns: median ms of the stage-timed runs; 'ours/TTFT' = (compression + inner merge) / TTFT; "
                 "peak mem includes the weights")
    shares = [e["other_cpu_share_max"] for e in report["configs"] if e.get("other_cpu_share_max") is not None]
    discarded = sum(e.get("discarded_runs", 0) for e in report["configs"])
    if shares:
        lines.append(f"other processes' CPU share during the kept runs: at most {max(shares):.1%}; "
                     f"runs discarded as noisy and measured again: {discarded}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ CLI
def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``earlytom-eval bench``."""
    from ..models.presets import PRESET_NAMES

    p = subparsers.add_parser(
        "bench",
        help="TTFT benchmark with stage breakdown, FLOPs, peak memory and decode throughput",
        description=__doc__.split("\n\n")[0] + " All configs are measured in one run, interleaved.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=PRESET_NAMES,
                     help="random-initialised weights of the real shapes, built in memory on the device")
    src.add_argument("--pretrained", help="a real checkpoint (hub id or local directory)")
    clip = p.add_mutually_exclusive_group(required=True)
    clip.add_argument("--video", type=Path, help="the clip")
    clip.add_argument("--synthetic", metavar="SHOTS",
                      help="generate a clip with known structure, e.g. static:24,motion:16,static:24")
    p.add_argument("--synthetic-size", default="240x320", help="HxW of the generated clip (default 240x320)")
    p.add_argument("--synthetic-seed", type=int, default=0)
    p.add_argument("--synthetic-fps", type=float, default=8.0)
    p.add_argument("--frames", type=int, default=None, help="frames sampled (default: the first config's num_frames)")
    p.add_argument("--configs", nargs="+", required=True, type=Path, help="compression config YAMLs")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 | float16 | float32 (default bfloat16)")
    p.add_argument("--seed", type=int, default=0, help="preset weights seed (default 0)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up rounds, excluded (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--decode-tokens", type=int, default=32,
                   help="greedy tokens decoded after the first, for throughput (default 32; 0 = skip)")
    p.add_argument("--profile", choices=("auto", "inline", "separate"), default="auto",
                   help="stage timing inside the TTFT runs (inline) or in extra runs (separate); "
                   "auto: inline on CPU, separate on GPU")
    p.add_argument("--question", default="Describe what happens in the video.")
    p.add_argument("--attention", choices=("square", "causal"), default="square",
                   help="how LLM attention FLOPs are counted (default square, FlopCounterMode's basis)")
    p.add_argument("--wait-quiet", type=float, default=None, metavar="LOAD",
                   help="before measuring, wait until the 1-minute load average is below LOAD")
    p.add_argument("--wait-max", type=float, default=1200.0, help="longest wait for --wait-quiet, s (default 1200)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--max-other-cpu", type=float, default=None, metavar="SHARE",
                   help="noise guard for shared machines: redo a run when other processes used more than SHARE (0-1) "
                   "of the machine's CPU during it, after waiting for the machine to be idle")
    p.add_argument("--max-retries", type=int, default=3, help="noise guard: re-measurements per run (default 3)")
    p.add_argument("--idle-wait", type=float, default=600.0,
                   help="noise guard: longest wait for an idle machine before a re-measurement, s (default 600)")
    p.add_argument("--json", type=Path, help="write the report as JSON to this path")
    p.set_defaults(func=_cmd_bench)


def _resolve_torch_dtype(name: str):
    import torch

    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise SystemExit(f"error: unknown dtype {name!r}")
    return dtype


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from ..compression.config import load_config

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    configs = [load_config(path) for path in args.configs]
    frames = args.frames if args.frames is not None else configs[0].num_frames
    configs = [c.replace(num_frames=frames, name=c.name) for c in configs]
    dtype = _resolve_torch_dtype(args.dtype)
    device = torch.device(args.device)
    video, video_info = load_clip(args, frames)  # cheap checks before any model is built

    quiet = wait_for_quiet(args.wait_quiet, args.wait_max) if args.wait_quiet is not None else None
    started = time.perf_counter()
    if args.preset:
        from ..models.llava_ov import EarlyTomLlavaOnevision
        from ..models.presets import build_model, build_processor

        hf_model = build_model(args.preset, seed=args.seed, dtype=dtype, device=device)
        model = EarlyTomLlavaOnevision(hf_model, build_processor(args.preset), configs[0])
        source = f"preset '{args.preset}' (seed {args.seed}), {RANDOM_WEIGHTS_NOTE}"
    else:
        from ..models.llava_ov import load_model

        model = load_model(args.pretrained, configs[0], device=device, dtype=dtype)
        source = f"checkpoint {args.pretrained}"
    for cfg in configs:
        model.with_config(cfg)  # validates every config against the model before measuring
    print(f"model ready in {time.perf_counter() - started:.0f} s: {source}", file=sys.stderr)
    shapes = ModelShapes.from_hf_config(model.model.config, name=args.preset or str(args.pretrained))
    pixel_values = model.preprocess_video(video.frames).to(device, dtype)
    prompt = model.build_prompt(args.question)
    profile = args.profile if args.profile != "auto" else ("separate" if device.type == "cuda" else "inline")
    runner = BenchRunner(
        model, configs, pixel_values, prompt, decode_tokens=args.decode_tokens, profile=profile,
        max_other_cpu=args.max_other_cpu, max_retries=args.max_retries, idle_wait_s=args.idle_wait,
    )

    def progress(record: RunRecord) -> None:
        share = f", other processes {record.other_cpu_share:.0%} CPU" if record.other_cpu_share is not None else ""
        flag = " DISCARDED (noisy), measuring again" if record.discarded else ""
        print(f"  {record.phase} round {record.round} {record.config} ({record.kind}): TTFT {record.ttft_ms:.1f} ms"
              f"{share}{flag}", file=sys.stderr)

    activity = _CpuActivity()
    load_before = _loadavg()
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    records = runner.run(args.warmup, args.repeats, on_record=progress)
    hardware = hardware_info(device, dtype, model)
    hardware["load_average_1min_before"] = load_before
    hardware["load_average_1min_after"] = _loadavg()
    hardware["other_processes_cpu_share_during_runs"] = activity.other_share()
    if quiet is not None:
        hardware["quiet_wait"] = quiet
    meta = {
        "tool": "earlytom-eval bench",
        "command": " ".join(["earlytom-eval", *sys.argv[1:]]),
        "created_utc": created,
        "hardware": hardware,
        "model": {"source": source, "note": RANDOM_WEIGHTS_NOTE if args.preset else "",
                  "shapes": shapes.__dict__},
        "video": video_info,
        "prompt": {"question": args.question},
        "protocol": {
            "warmup": args.warmup,
            "repeats": args.repeats,
            "order": "interleaved: every config once per round, start rotated each round; warm-up rounds excluded",
            "noise_guard": (
                f"a run during which other processes used > {args.max_other_cpu:.0%} of the CPU was discarded and "
                f"measured again after the machine was idle (at most {args.max_retries} times; the last attempt is "
                "kept whatever its share, and each config reports the largest share among its kept runs)"
                if args.max_other_cpu is not None else "off"
            ),
            "profile": profile,
            "ttft": "pre-decoded, pre-processed frames on the device -> first generated token (prompt tokenisation, "
            "vision encoder with the method, projector+pooling, selection, LLM prefill, greedy first token); "
            "device synchronised before and after; batch 1",
            "decode_tokens": args.decode_tokens,
            "decode": "greedy tokens after the first (EOS ignored), tokens/s",
            "memory": "CUDA: torch.cuda.max_memory_allocated; CPU: process peak RSS (VmHWM, reset per run); "
            "both include the weights",
        },
    }
    report = build_report(configs, records, shapes, meta=meta, attention=args.attention)
    validate_report(report)
    print(format_bench_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
