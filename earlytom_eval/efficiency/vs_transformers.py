"""Our ``full`` pipeline against transformers' own ``generate``: time to the first token on identical inputs.

One model, one clip, one process: transformers' ``model.generate(max_new_tokens=1)`` on the processor's inputs,
our ``full`` (``prepare_inputs`` + ``prefill``) and our EarlyTom 0.10 on the same pixel values, interleaved
(every variant once per round, start rotated), medians. Both paths start from preprocessed frames and end at
the first greedy token; the first tokens of transformers and our ``full`` are checked to agree.
"""

from __future__ import annotations

import datetime as _dt
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import torch

from ..compression.config import CompressionConfig, load_config
from ..dtypes import resolve_dtype
from ..models.llava_ov import EarlyTomLlavaOnevision
from ..models.presets import build_model, build_processor
from ..paths import CONFIGS
from .bench import RANDOM_WEIGHTS_NOTE, run_order
from .clip import ClipSpec, load_clip
from .host import hardware_info

__all__ = ["VsTransformersOptions", "format_vs_transformers", "run_vs_transformers"]

TRANSFORMERS = "transformers_generate"
FULL = "ours_full"


@dataclass(frozen=True)
class VsTransformersOptions:
    clip: ClipSpec
    preset: str = "0.5b"
    frames: int = 8
    dtype: str = "bfloat16"
    seed: int = 0
    warmup: int = 1
    repeats: int = 5
    threads: int | None = None
    question: str = "Describe what happens in the video."
    earlytom: str = "earlytom_r0.10"


def run_vs_transformers(options: VsTransformersOptions, *, command: str = "", log: TextIO = sys.stderr) -> dict:
    """Measure the variants interleaved and return the report (medians, ratios, every run)."""
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    dtype = resolve_dtype(options.dtype)
    video, video_info = load_clip(options.clip, options.frames)
    hf = build_model(options.preset, seed=options.seed, dtype=dtype, device="cpu")
    processor = build_processor(options.preset)
    full = EarlyTomLlavaOnevision(hf, processor, CompressionConfig(method="full", num_frames=options.frames))
    earlytom_cfg = load_config(CONFIGS / f"{options.earlytom}.yaml", num_frames=options.frames)
    earlytom = full.with_config(earlytom_cfg)
    prompt = full.build_prompt(options.question)
    hf_inputs = dict(processor(text=[prompt], videos=[video.frames], return_tensors="pt"))
    hf_inputs["pixel_values_videos"] = hf_inputs["pixel_values_videos"].to(dtype)
    pixel_values = hf_inputs["pixel_values_videos"][0]

    def theirs() -> int:
        out = hf.generate(**hf_inputs, max_new_tokens=1, do_sample=False)
        return int(out[0, -1])

    def ours(model: EarlyTomLlavaOnevision) -> Callable[[], int]:
        def run() -> int:
            inputs, encodings, _ = model.prepare_inputs([prompt], [[pixel_values]])
            return int(model.prefill(inputs, encodings=encodings).first_tokens[0])

        return run

    variants: dict[str, Callable[[], int]] = {TRANSFORMERS: theirs, FULL: ours(full), earlytom_cfg.name: ours(earlytom)}
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    firsts: dict[str, set[int]] = {name: set() for name in names}
    runs = []
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    for phase, round_, index in run_order(len(names), options.warmup, options.repeats):
        name = names[index]
        gc.collect()
        with torch.inference_mode():
            start, cpu_start = time.perf_counter(), time.process_time()
            token = variants[name]()
            ms = (time.perf_counter() - start) * 1000.0
            cpu_ms = (time.process_time() - cpu_start) * 1000.0
        print(f"  {phase} round {round_} {name}: {ms:.1f} ms (process CPU {cpu_ms:.0f} ms)", file=log)
        runs.append({"phase": phase, "round": round_, "variant": name, "ms": round(ms, 3), "cpu_ms": round(cpu_ms, 3),
                     "first_token": token})
        if phase == "timed":
            times[name].append(ms)
            cpu_times[name].append(cpu_ms)
            firsts[name].add(token)
    stats = {name: _stats(v) for name, v in times.items()}
    cpu_stats = {name: _stats(v) for name, v in cpu_times.items()}
    theirs_ms, full_ms = stats[TRANSFORMERS]["median"], stats[FULL]["median"]
    return {
        "tool": "earlytom-eval bench-vs-transformers",
        "command": command,
        "created_utc": created,
        "hardware": hardware_info(torch.device("cpu"), dtype, full),
        "model": f"preset '{options.preset}' (seed {options.seed}), {RANDOM_WEIGHTS_NOTE}",
        "video": video_info,
        "protocol": {
            "warmup": options.warmup, "repeats": options.repeats,
            "order": "interleaved: every variant once per round, start rotated each round; warm-up rounds excluded",
            "transformers_generate": "model.generate(**processor(text, videos), max_new_tokens=1, do_sample=False)",
            "ours": "prepare_inputs (tokenise, encode, splice) + prefill + greedy first token, no stage timer",
            "inputs": "the same pixel values (processor output, cast to the dtype), same prompt",
            "process_cpu_ms": "CPU time of this process (all its threads) during the run: less sensitive than wall "
            "time to other processes on a shared machine",
        },
        "ttft_ms": stats,
        "process_cpu_ms": cpu_stats,
        "cpu_time_ratio_transformers_over_full": cpu_stats[TRANSFORMERS]["median"] / cpu_stats[FULL]["median"],
        "first_tokens": {name: sorted(v) for name, v in firsts.items()},
        "first_token_full_matches_transformers": firsts[FULL] == firsts[TRANSFORMERS],
        "speed_ratio_transformers_over_full": theirs_ms / full_ms,
        "ttft_ratio_full_over_transformers": full_ms / theirs_ms,
        "target": "speed_ratio_transformers_over_full >= 1.00 (our full no slower than transformers' generate)",
        "target_met": theirs_ms / full_ms >= 1.0,
        "earlytom_speedup_over_transformers": theirs_ms / stats[earlytom_cfg.name]["median"],
        "runs": runs,
    }


def _stats(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": [round(x, 3) for x in values]}


def format_vs_transformers(report: dict[str, Any]) -> str:
    lines = [f"{name}: TTFT median {s['median']:.1f} ms [{s['min']:.1f}-{s['max']:.1f}]"
             for name, s in report["ttft_ms"].items()]
    lines.append(f"transformers / our full = {report['speed_ratio_transformers_over_full']:.3f} "
                 f"(target >= 1.00: {'met' if report['target_met'] else 'MISSED'}); first tokens agree: "
                 f"{report['first_token_full_matches_transformers']}")
    lines.append(f"process CPU time, transformers / our full = {report['cpu_time_ratio_transformers_over_full']:.3f}")
    lines.append(f"EarlyTom speedup over transformers: {report['earlytom_speedup_over_transformers']:.2f}x")
    return "\n".join(lines)
