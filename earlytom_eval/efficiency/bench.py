"""The TTFT benchmark: several compression configs of one model measured in one run, interleaved.

TTFT runs from pre-processed frames on the device to the first greedy token, with the stage breakdown, peak
memory and decode throughput; the README's "Measuring efficiency" section states the protocol.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import torch

from ..compression.config import CompressionConfig
from ..dtypes import resolve_dtype
from ..models.compat import set_attention
from ..models.llava_ov import EarlyTomLlavaOnevision, load_model
from ..models.presets import build_pipeline
from ..stages import OTHER, STAGES
from ..timing import NULL_TIMER, StageTimer, synchronize
from .bench_report import RunRecord, build_report
from .clip import ClipSpec, load_clip
from .flops import ModelShapes
from .host import CpuActivity, hardware_info, load_average, wait_for_quiet, wait_until_idle
from .memory import PeakMemory
from .schema import validate_report

__all__ = ["BenchOptions", "BenchRunner", "run_bench", "run_order"]

RANDOM_WEIGHTS_NOTE = (
    "random-initialised weights of the real shapes: the timing depends on the shapes and on how many frames "
    "the clip lets the encoder merge, not on trained values"
)


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
        self.memory = PeakMemory([self.device])
        self.max_other_cpu = max_other_cpu
        self.max_retries = max_retries
        self.idle_wait_s = idle_wait_s

    def measure(self, index: int, phase: str = "timed", round_: int = 0) -> list[RunRecord]:
        """Run config ``index`` once (twice with ``separate`` profiling); returns its records."""
        if self.profile == "inline":
            return [self._run(index, phase, round_, kind="both")]
        return [self._run(index, phase, round_, kind="ttft"), self._run(index, phase, round_, kind="stages")]

    def _run(self, index: int, phase: str, round_: int, kind: str) -> RunRecord:
        model = self.models[index]
        profiled = kind in ("both", "stages")
        decode = kind in ("both", "ttft") and self.decode_tokens > 0
        gc.collect()
        synchronize(self.device)
        baseline = self.memory.reset()
        activity = CpuActivity()
        timer = StageTimer(self.device)
        stage_timer = timer if profiled else NULL_TIMER
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
        stages = {k: v for k, v in timer.ms.items() if k in STAGES} if profiled else {}
        if profiled:
            stages[OTHER] = max(0.0, timer.ms["ttft"] - sum(stages.values()))
        per_layer = tuple(state.llm.tokens_per_layer[0])
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
            encoder_tokens_per_layer=tuple(getattr(encoding, "tokens_per_layer", ()) or ()),
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


@dataclass(frozen=True)
class BenchOptions:
    """One ``earlytom-eval bench`` run.

    Attributes:
        configs: the compression configs, measured in this order within a round; ``frames`` (if set) replaces
            their ``num_frames``, else the first config's count is every config's.
        clip: the clip whose frames every config encodes.
        preset / pretrained: random-initialised weights of a preset's shapes, or a checkpoint (exactly one).
        profile: ``auto`` (inline on CPU, separate on a GPU), ``inline`` or ``separate`` (see :class:`BenchRunner`).
        attention: how LLM attention FLOPs are counted (``square`` or ``causal``).
        wait_quiet: wait until the 1-minute load average is below this before measuring (at most ``wait_max`` s).
        threads: torch's intra-op threads (None: torch's default).
        max_other_cpu / max_retries / idle_wait_s: the noise guard of :class:`BenchRunner`.
    """

    configs: tuple[CompressionConfig, ...]
    clip: ClipSpec
    preset: str | None
    pretrained: str | None
    frames: int | None
    device: str
    dtype: str
    seed: int
    warmup: int
    repeats: int
    decode_tokens: int
    profile: str
    question: str
    attention: str
    wait_quiet: float | None
    wait_max: float
    threads: int | None
    max_other_cpu: float | None
    max_retries: int
    idle_wait_s: float
    attn_implementation: str = "sdpa"


def run_bench(
    options: BenchOptions,
    *,
    command: str = "",
    log: TextIO = sys.stderr,
    model: EarlyTomLlavaOnevision | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Build the model, measure every config (progress on ``log``) and return the validated JSON report.

    The clip is decoded before any model is built, so a bad clip fails at once. ``command`` is recorded in the
    report. ``model`` (with ``source``, how the report names it): an already built model of ``options``' preset
    or checkpoint, measured instead of building one (several runs on one set of weights: ``gpu-report``); it is
    switched to ``options.attn_implementation``.
    """
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    frames = options.frames if options.frames is not None else options.configs[0].num_frames
    configs = [c.replace(num_frames=frames, name=c.name) for c in options.configs]
    dtype = resolve_dtype(options.dtype)
    device = torch.device(options.device)
    video, video_info = load_clip(options.clip, frames)  # cheap checks before any model is built

    quiet = wait_for_quiet(options.wait_quiet, options.wait_max) if options.wait_quiet is not None else None
    started = time.perf_counter()
    if model is not None:
        source = source or "a model built by the caller"
    elif options.preset:
        model = build_pipeline(options.preset, configs[0], seed=options.seed, dtype=dtype, device=device)
        source = f"preset '{options.preset}' (seed {options.seed}), {RANDOM_WEIGHTS_NOTE}"
    else:
        model = load_model(options.pretrained, configs[0], device=device, dtype=dtype)
        source = f"checkpoint {options.pretrained}"
    if getattr(model.model.config, "_attn_implementation", None) != options.attn_implementation:
        set_attention(model.model, options.attn_implementation)
    for cfg in configs:
        model.with_config(cfg)  # validates every config against the model before measuring
    print(f"model ready in {time.perf_counter() - started:.0f} s: {source}", file=log)
    shapes = ModelShapes.from_hf_config(model.model.config, name=options.preset or str(options.pretrained))
    pixel_values = model.preprocess_video(video.frames).to(device, dtype)
    prompt = model.build_prompt(options.question)
    profile = options.profile
    if profile == "auto":
        profile = "separate" if device.type == "cuda" else "inline"
    runner = BenchRunner(
        model, configs, pixel_values, prompt, decode_tokens=options.decode_tokens, profile=profile,
        max_other_cpu=options.max_other_cpu, max_retries=options.max_retries, idle_wait_s=options.idle_wait_s,
    )

    def progress(record: RunRecord) -> None:
        share = f", other processes {record.other_cpu_share:.0%} CPU" if record.other_cpu_share is not None else ""
        flag = " DISCARDED (noisy), measuring again" if record.discarded else ""
        print(f"  {record.phase} round {record.round} {record.config} ({record.kind}): TTFT {record.ttft_ms:.1f} ms"
              f"{share}{flag}", file=log)

    activity = CpuActivity()
    load_before = load_average()
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    records = runner.run(options.warmup, options.repeats, on_record=progress)
    hardware = hardware_info(device, dtype, model)
    hardware["load_average_1min_before"] = load_before
    hardware["load_average_1min_after"] = load_average()
    hardware["other_processes_cpu_share_during_runs"] = activity.other_share()
    if quiet is not None:
        hardware["quiet_wait"] = quiet
    meta = {
        "tool": "earlytom-eval bench",
        "command": command,
        "created_utc": created,
        "hardware": hardware,
        "model": {"source": source, "note": RANDOM_WEIGHTS_NOTE if options.preset else "",
                  "shapes": shapes.__dict__},
        "video": video_info,
        "prompt": {"question": options.question},
        "protocol": _protocol(options, profile),
    }
    report = build_report(configs, records, shapes, meta=meta, attention=options.attention)
    validate_report(report)
    return report


def _protocol(options: BenchOptions, profile: str) -> dict[str, Any]:
    """The report's statement of how it measured."""
    return {
        "warmup": options.warmup,
        "repeats": options.repeats,
        "order": "interleaved: every config once per round, start rotated each round; warm-up rounds excluded",
        "noise_guard": (
            f"a run during which other processes used > {options.max_other_cpu:.0%} of the CPU was discarded and "
            f"measured again after the machine was idle (at most {options.max_retries} times; the last attempt is "
            "kept whatever its share, and each config reports the largest share among its kept runs)"
            if options.max_other_cpu is not None else "off"
        ),
        "profile": profile,
        "ttft": "pre-decoded, pre-processed frames on the device -> first generated token (prompt tokenisation, "
        "vision encoder with the method, projector+pooling, selection, LLM prefill, greedy first token); "
        "device synchronised before and after; batch 1",
        "decode_tokens": options.decode_tokens,
        "decode": "greedy tokens after the first (EOS ignored), tokens/s",
        "memory": "CUDA: torch.cuda.max_memory_allocated; CPU: process peak RSS (VmHWM, reset per run); "
        "both include the weights",
    }
