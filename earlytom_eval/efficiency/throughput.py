"""Eval throughput: videos per second through ``generate`` at several batch sizes, for several configs.

The same videos (generated clips, one per seed) go through ``generate`` with a fixed number of new tokens
(end-of-sequence ignored), in batches of each size; a batch's videos share every SigLIP layer call
(:func:`earlytom_eval.models.encoder.encode_videos`) and one LLM prefill. Configs and batch sizes are
interleaved round by round so machine noise hits them alike; each figure is the median of the rounds.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import torch

from ..compression.config import CompressionConfig
from ..dtypes import resolve_dtype
from ..models.llava_ov import EarlyTomLlavaOnevision
from ..models.presets import build_pipeline
from ..video import synthetic_frames
from .bench import _eos_ignored
from .host import hardware_info

__all__ = ["ThroughputOptions", "format_throughput_table", "run_throughput"]


@dataclass(frozen=True)
class ThroughputOptions:
    """One ``earlytom-eval throughput`` run.

    Attributes:
        configs: compression configs (their ``num_frames`` is replaced by ``frames``).
        preset: random-initialised weights of a preset's shapes.
        batch_sizes: videos per ``generate`` call.
        videos: videos per round (a multiple of every batch size is best: the last batch may be smaller).
        frames: frames per video; new_tokens: tokens generated per video.
        rounds: timed rounds (one untimed warm-up video per config comes first).
    """

    configs: tuple[CompressionConfig, ...]
    preset: str = "tiny"
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    videos: int = 8
    frames: int = 8
    new_tokens: int = 16
    rounds: int = 2
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    threads: int | None = None


def _clips(count: int, frames: int, size: tuple[int, int]) -> list[Any]:
    half = max(1, frames // 2)
    shots = [("static", half), ("motion", frames - half)]
    return [synthetic_frames(shots, size=size, seed=seed) for seed in range(count)]


def run_throughput(options: ThroughputOptions, *, command: str = "", log: TextIO = sys.stderr) -> dict[str, Any]:
    """Measure videos/s for every (config, batch size); returns the JSON report."""
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    if any(b < 1 for b in options.batch_sizes) or options.videos < 1 or options.rounds < 1:
        raise ValueError("batch sizes, videos and rounds must be >= 1")
    dtype = resolve_dtype(options.dtype)
    configs = [c.replace(num_frames=options.frames, name=c.name) for c in options.configs]
    base = build_pipeline(options.preset, configs[0], seed=options.seed, dtype=dtype, device=options.device)
    models = [base.with_config(cfg) for cfg in configs]
    size = (base.processor.video_processor.size.get("height", 384),) * 2
    clips = _clips(options.videos, options.frames, size)
    prompt = base.build_prompt("Describe the video.")
    seconds: dict[tuple[str, int], list[float]] = {}
    tokens: dict[str, list[int]] = {}

    def one_pass(model: EarlyTomLlavaOnevision, batch: int) -> float:
        started = time.perf_counter()
        with _eos_ignored(model):
            for start in range(0, len(clips), batch):
                part = clips[start : start + batch]
                outputs = model.generate([prompt] * len(part), [[c] for c in part], max_new_tokens=options.new_tokens,
                                         profile_stages=False)
                tokens.setdefault(model.config.name, []).extend(o.visual_tokens for o in outputs)
        return time.perf_counter() - started

    for model in models:  # warm-up: one video, two tokens
        with _eos_ignored(model):
            model.generate([prompt], [[clips[0]]], max_new_tokens=2, profile_stages=False)
    for round_ in range(options.rounds):
        order = [(m, b) for m in models for b in options.batch_sizes]
        if round_ % 2:
            order.reverse()
        for model, batch in order:
            elapsed = one_pass(model, batch)
            seconds.setdefault((model.config.name, batch), []).append(elapsed)
            print(f"  round {round_} {model.config.name} batch {batch}: {len(clips) / elapsed:.2f} videos/s", file=log)

    rows = []
    for cfg in configs:
        single = statistics.median(seconds[(cfg.name, options.batch_sizes[0])])
        for batch in options.batch_sizes:
            median = statistics.median(seconds[(cfg.name, batch)])
            rows.append({
                "config": cfg.name,
                "method": cfg.method,
                "batch_size": batch,
                "videos_per_s": len(clips) / median,
                "seconds_per_round": seconds[(cfg.name, batch)],
                "speedup_vs_first_batch_size": single / median,
                "visual_tokens_per_video": statistics.mean(tokens[cfg.name]),
            })
    return {
        "tool": "earlytom-eval throughput",
        "command": command,
        "hardware": hardware_info(torch.device(options.device), dtype, base),
        "model": {"preset": options.preset, "seed": options.seed, "note": "random-initialised weights"},
        "protocol": {"videos": len(clips), "frames": options.frames, "new_tokens": options.new_tokens,
                     "eos": "ignored (every video generates new_tokens)", "rounds": options.rounds,
                     "statistic": "median over rounds", "warmup": "one video per config"},
        "rows": rows,
    }


def format_throughput_table(report: dict[str, Any]) -> str:
    """A Markdown table: config, batch size, videos/s, speed-up over the first batch size."""
    lines = ["| config | batch | videos/s | vs batch 1 | visual tokens/video |", "|---|---:|---:|---:|---:|"]
    for row in report["rows"]:
        lines.append(
            f"| {row['config']} | {row['batch_size']} | {row['videos_per_s']:.2f} | "
            f"{row['speedup_vs_first_batch_size']:.2f}x | {row['visual_tokens_per_video']:.0f} |"
        )
    return "\n".join(lines)
