"""``earlytom-eval gpu-report``: one command for a lent GPU, every config of the efficiency table in one run.

The 7B preset (random-initialised LLaVA-OV-7B shapes) on a real clip: full, EarlyTom at each retention, EarlyTom
without its encoder stage (the post-encoder ablation) and every peer config at 0.10 that the installed package
can run, measured with :func:`earlytom_eval.efficiency.bench.run_bench` once per attention kernel (SDPA, and
FlashAttention-2 when ``flash_attn`` imports), on one set of weights. Writes ``gpu-<device>.json`` (every bench
report in full) and ``.md`` (one table per kernel). The dry mode runs the same code on the tiny preset on CPU.
The machine it is meant for has an older transformers, no lmms-eval and no network: nothing here needs them.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import torch

from ..compression.config import CompressionConfig, ConfigError, load_config
from ..compression.registry import registered_methods
from ..dtypes import resolve_dtype
from ..models.compat import transformers_version
from ..models.presets import build_pipeline
from ..paths import CONFIGS
from ..stages import OTHER, STAGES
from .bench import RANDOM_WEIGHTS_NOTE, BenchOptions, run_bench
from .clip import ClipSpec
from .host import environment_info

__all__ = [
    "GpuReportOptions",
    "attention_kernels",
    "device_slug",
    "format_markdown",
    "report_configs",
    "run_gpu_report",
    "write_gpu_report",
]

#: EarlyTom's retentions in the report, each from ``configs/earlytom_r<retention>.yaml``.
RETENTIONS = ("0.25", "0.20", "0.15", "0.10")
#: The retention the peer methods are compared at (``configs/*_r0.10.yaml``).
PEER_RETENTION = "0.10"
#: Name of the EarlyTom 0.10 config without its encoder stage (``prune_layers`` empty).
ABLATION_NAME = f"earlytom_r{PEER_RETENTION}_no_encoder_stage"
#: The dry mode's generated clip (4 frames are sampled from it).
DRY_CLIP = ClipSpec(synthetic="static:6,motion:6", size="96x128")
#: The wall-clock target of the GPU run, s.
TARGET_S = 8 * 60


@dataclass(frozen=True)
class GpuReportOptions:
    """One ``gpu-report`` run (see :meth:`dry` for the CPU dry mode's settings)."""

    clip: ClipSpec
    out_dir: Path
    preset: str = "7b"
    frames: int = 32
    device: str = "cuda"
    dtype: str = "bfloat16"
    seed: int = 0
    warmup: int = 1
    repeats: int = 5
    decode_tokens: int = 32
    question: str = "Describe what happens in the video."
    configs_dir: Path = CONFIGS
    kernels: tuple[str, ...] | None = None  # None: SDPA, and FlashAttention-2 where it imports
    dry_run: bool = False

    def dry(self) -> GpuReportOptions:
        """The CPU dry mode: the same code on the tiny preset, 4 frames of a generated clip, 1 repeat."""
        return replace(self, clip=DRY_CLIP, preset="tiny", frames=4, device="cpu", dtype="float32", warmup=0,
                       repeats=1, decode_tokens=2, kernels=("sdpa",), dry_run=True)


def report_configs(configs_dir: Path, frames: int) -> tuple[list[CompressionConfig], list[str]]:
    """The configs of the report, at ``frames`` frames, and a note for each config file left out.

    full, ``earlytom_r{0.25,0.20,0.15,0.10}``, the ablation, then every other ``*_r0.10.yaml`` in ``configs_dir``
    (found at run time: peer configs come and go) whose method this package registers and which validates.
    """
    notes: list[str] = []
    configs: list[CompressionConfig] = []
    methods = set(registered_methods())

    def add(path: Path) -> CompressionConfig | None:
        try:
            cfg = load_config(path, num_frames=frames)
        except (ConfigError, ValueError, OSError) as err:
            notes.append(f"skipped {path.name}: does not validate ({_one_line(err)})")
            return None
        if cfg.method not in methods:
            notes.append(f"skipped {path.name}: method {cfg.method!r} is not registered in this package")
            return None
        configs.append(cfg)
        return cfg

    add(configs_dir / "full.yaml")
    for retention in RETENTIONS:
        cfg = add(configs_dir / f"earlytom_r{retention}.yaml")
        if cfg is not None and retention == PEER_RETENTION:
            configs.append(cfg.replace(prune_layers=(), name=ABLATION_NAME))
    known = {"full.yaml", *(f"earlytom_r{r}.yaml" for r in RETENTIONS)}
    for path in sorted(configs_dir.glob(f"*_r{PEER_RETENTION}.yaml")):
        if path.name not in known:
            add(path)
    return configs, notes


def attention_kernels(device: torch.device) -> tuple[list[str], list[str]]:
    """The LLM/encoder attention kernels to measure on ``device``, and notes on those left out."""
    if device.type != "cuda":
        return ["sdpa"], ["FlashAttention-2 not measured: not a CUDA device"]
    try:
        importlib.import_module("flash_attn")  # lazy: optional dependency, its absence is reported
    except Exception as err:  # ImportError, or a build that does not match this torch
        return ["sdpa"], [f"FlashAttention-2 not measured: flash_attn does not import ({_one_line(err)})"]
    return ["sdpa", "flash_attention_2"], []


def device_slug(name: str) -> str:
    """``'NVIDIA H200'`` -> ``'nvidia-h200'`` (file names)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def run_gpu_report(options: GpuReportOptions, *, command: str = "", log: TextIO = sys.stderr) -> dict[str, Any]:
    """Build the model once, run the bench for every kernel, and return the combined report."""
    started = time.perf_counter()
    device = torch.device(options.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("gpu-report needs a CUDA device (use --dry-run on a machine without one)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    configs, notes = report_configs(options.configs_dir, options.frames)
    kernels, kernel_notes = attention_kernels(device)
    if options.kernels is not None:
        kernels = [k for k in options.kernels if k in kernels or k == "sdpa"]
    notes.extend(kernel_notes)

    built = time.perf_counter()
    dtype = resolve_dtype(options.dtype)
    model = build_pipeline(options.preset, configs[0], seed=options.seed, dtype=dtype, device=device)
    source = f"preset '{options.preset}' (seed {options.seed}), {RANDOM_WEIGHTS_NOTE}"
    build_s = time.perf_counter() - built
    print(f"model built in {build_s:.0f} s: {source}", file=log)
    runnable = []
    for cfg in configs:
        try:
            model.with_config(cfg)
        except (ConfigError, ValueError) as err:
            notes.append(f"skipped {cfg.name}: does not validate against the model ({_one_line(err)})")
            continue
        runnable.append(cfg)
    for note in notes:
        print(f"note: {note}", file=log)

    reports = {}
    for kernel in kernels:
        print(f"== attention {kernel}: {len(runnable)} configs", file=log)
        bench = BenchOptions(
            configs=tuple(runnable), clip=options.clip, preset=options.preset, pretrained=None, frames=options.frames,
            device=str(device), dtype=options.dtype, seed=options.seed, warmup=options.warmup,
            repeats=options.repeats, decode_tokens=options.decode_tokens, profile="auto", question=options.question,
            attention="square", wait_quiet=None, wait_max=0.0, threads=None, max_other_cpu=None, max_retries=0,
            idle_wait_s=0.0, attn_implementation=kernel,
        )
        reports[kernel] = run_bench(bench, command=command, log=log, model=model, source=source)
    elapsed = time.perf_counter() - started
    name = _device_name(device)
    return {
        "tool": "earlytom-eval gpu-report",
        "command": command,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dry_run": options.dry_run,
        "device_name": name,
        "device_slug": device_slug(name),
        "transformers": transformers_version(),
        "environment": environment_info(),
        "preset": options.preset,
        "frames": options.frames,
        "dtype": options.dtype,
        "video": str(options.clip.video) if options.clip.video is not None else options.clip.name,
        "configs": [cfg.name for cfg in runnable],
        "attention_kernels": kernels,
        "notes": notes,
        "model_build_s": round(build_s, 1),
        "elapsed_s": round(elapsed, 1),
        "target_s": TARGET_S,
        "within_target": elapsed <= TARGET_S,
        "summary": {kernel: [_summary_row(entry) for entry in report["configs"]] for kernel, report in reports.items()},
        "reports": reports,
    }


def _summary_row(entry: dict[str, Any]) -> dict[str, Any]:
    """The figures of one config that the Markdown table shows."""
    ttft = entry["ttft_ms"]
    return {
        "config": entry["name"],
        "method": entry["method"],
        "visual_tokens": entry["visual_tokens"],
        "ttft_ms": {k: ttft[k] for k in ("median", "min", "max")},
        "ttft_speedup_vs_full": entry.get("vs_full", {}).get("ttft_speedup"),
        "stages_ms": {k: v["median"] for k, v in entry["stages_ms"].items()},
        "peak_memory_gib": entry["peak_memory_bytes"] / 2**30 if entry.get("peak_memory_bytes") else None,
        "decode_tokens_per_s": entry["decode"]["tokens_per_s"]["median"] if "decode" in entry else None,
    }


def format_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: how it was run, then one table per attention kernel."""
    env = report["environment"]
    kind = "DRY RUN (tiny preset on CPU: checks the command, the figures mean nothing)" if report["dry_run"] else ""
    first = next(iter(report["reports"].values()), {})
    proto = first.get("protocol", {})
    lines = [
        f"# gpu-report: {report['device_name']}",
        "",
        *([f"**{kind}**", ""] if kind else []),
        f"- command: `{report['command']}`",
        f"- created: {report['created_utc']}; elapsed {report['elapsed_s']:.0f} s (model build "
        f"{report['model_build_s']:.0f} s); target {report['target_s']} s: "
        f"{'met' if report['within_target'] else 'MISSED'}",
        f"- torch {env.get('torch')}, transformers {report['transformers']}, {report['dtype']}",
        f"- model: preset '{report['preset']}', {RANDOM_WEIGHTS_NOTE}",
        f"- clip: {report['video']}, {report['frames']} frames",
        f"- protocol: {proto.get('warmup')} warm-up + {proto.get('repeats')} timed rounds, configs interleaved "
        f"(order rotated per round); stage breakdown {proto.get('profile')}; decode {proto.get('decode_tokens')} "
        "tokens after the first; peak memory: " + str(proto.get("memory", "")),
        "- TTFT: " + str(proto.get("ttft", "")),
    ]
    lines += [f"- note: {note}" for note in report["notes"]]
    stage_names = [s for s in (*STAGES, OTHER) if s not in ("ttft", "decode", "preprocess")]
    for kernel, rows in report["summary"].items():
        shown = [s for s in stage_names if any(s in r["stages_ms"] for r in rows)]
        lines += ["", f"## attention: {kernel}", ""]
        head = ["config", "visual tokens", "TTFT ms median [min-max]", "speedup vs full", *shown,
                "peak GPU memory GiB" if not report["dry_run"] else "peak memory GiB", "decode tokens/s"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in rows:
            t = r["ttft_ms"]
            cells = [
                r["config"], str(r["visual_tokens"]), f"{t['median']:.1f} [{t['min']:.1f}-{t['max']:.1f}]",
                f"{r['ttft_speedup_vs_full']:.2f}x" if r["ttft_speedup_vs_full"] is not None else "-",
                *(f"{r['stages_ms'][s]:.1f}" if s in r["stages_ms"] else "-" for s in shown),
                f"{r['peak_memory_gib']:.2f}" if r["peak_memory_gib"] is not None else "-",
                f"{r['decode_tokens_per_s']:.1f}" if r["decode_tokens_per_s"] is not None else "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Stage columns: median ms of the stage-timed runs (separate runs on a GPU, so the headline TTFT "
              "has no stage synchronisation in it). Peak memory includes the weights."]
    return "\n".join(lines) + "\n"


def write_gpu_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``gpu-<device>.json`` and ``.md`` (``gpu-dry-run-cpu`` in the dry mode) into ``out_dir``."""
    stem = "gpu-dry-run-cpu" if report["dry_run"] else f"gpu-{report['device_slug']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(format_markdown(report))
    return json_path, md_path


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
