"""The ``earlytom-eval`` command line.

The only place that parses arguments: each subcommand's handler turns its arguments into explicit parameters
and typed objects for the library and prints the result. The modules behind ``bench``, ``flops``, ``tables``
and ``reproduce`` import torch, pandas, matplotlib or lmms-eval, so their handlers import them when they run:
quick commands (``env``, run by ``make install``; ``smoke-check``) stay quick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .compression.config import CompressionConfig, ConfigError, load_config
from .dtypes import resolve_dtype
from .efficiency.clip import ClipSpec
from .efficiency.schema import ATTENTION_MODES, BASIS
from .environment import collect, render
from .lmms.manifest import MODEL_ID
from .lmms.smoke_data import SMOKE_TASK, SmokeCheckError, check_run, smoke_documents, write_smoke_data
from .models.checkpoint import CheckpointError
from .models.llava_ov import load_model
from .models.presets import PRESET_NAMES, write_checkpoint
from .paths import CONFIGS
from .video import BACKENDS, VideoLoadError, load_video

__all__ = ["build_parser", "main"]

DEFAULT_QUESTION = "Describe what happens in the video."


def _command_line() -> str:
    """How the running command was typed, for the reports that record it."""
    return " ".join(["earlytom-eval", *sys.argv[1:]]) if sys.argv else ""


def _parse_assignments(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            print(f"error: --set expects FIELD=VALUE (e.g. --set retention=0.25), got {item!r}", file=sys.stderr)
            raise SystemExit(2)  # a usage error, as argparse's
        out[key.strip()] = value
    return out


def _dtype(name: str) -> Any:
    try:
        return resolve_dtype(name)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def _clip(args: argparse.Namespace) -> ClipSpec | None:
    """The ``--video`` / ``--synthetic`` options of ``bench`` and ``flops`` (None when neither is given)."""
    if args.video is None and args.synthetic is None:
        return None
    return ClipSpec(video=args.video, synthetic=args.synthetic, size=args.synthetic_size, seed=args.synthetic_seed,
                    fps=args.synthetic_fps)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


# ------------------------------------------------------------------------------------ model
def _cmd_checkpoint(args: argparse.Namespace) -> int:
    out = write_checkpoint(args.preset, args.out, seed=args.seed, dtype=args.dtype)
    print(f"wrote random-initialised '{args.preset}' checkpoint (seed {args.seed}) to {out}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    overrides = _parse_assignments(args.set)
    cfg = load_config(args.config) if args.config else CompressionConfig()
    if args.frames is not None:
        overrides["num_frames"] = str(args.frames)
    cfg = cfg.with_overrides(overrides) if overrides else cfg

    # Cheap checks first: the video must decode before the model loads.
    video = load_video(args.video, cfg.num_frames, backend=args.backend)
    model = load_model(args.pretrained, cfg, device=args.device, dtype=args.dtype)
    prompt = model.build_prompt(args.question, num_videos=1)
    result = model.generate([prompt], [[video.frames]], max_new_tokens=args.max_new_tokens)[0]
    encoding = result.videos[0]
    pooled = (model.grid + 1) // 2
    report: dict[str, Any] = {
        "answer": result.text,
        "config": cfg.name,
        "method": cfg.method,
        "video": str(args.video),
        "frames_in": encoding.frames_in,
        "frame_indices": video.indices,
        "frames_per_layer": list(encoding.frames_per_layer),
        "frames_out": encoding.frames_out,
        "segments": [list(s) for s in encoding.segments] if encoding.segments is not None else None,
        "rho_eff": encoding.rho_eff,
        "visual_tokens": encoding.visual_tokens,
        "visual_tokens_full": encoding.frames_in * pooled * pooled + 1,
        "prompt_tokens": result.prompt_tokens,
        "llm_tokens_per_layer": list(result.llm_tokens_per_layer),
        "generated_tokens": len(result.token_ids),
        "stages_ms": {k: round(v, 2) for k, v in result.stages_ms.items()},
    }
    if args.save_tokens is not None:
        from .models.encoder import save_tokens  # lazy: safetensors, only for this option

        save_tokens(encoding, args.save_tokens)
        report["saved_tokens"] = str(args.save_tokens)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"answer: {result.text}")
    print(
        f"visual tokens: {report['visual_tokens']} of {report['visual_tokens_full']} "
        f"({report['visual_tokens'] / report['visual_tokens_full']:.1%}; "
        f"{cfg.name}, rho'={report['rho_eff']:.3f})"
    )
    print(f"frames: {report['frames_in']} in, {report['frames_out']} after the encoder")
    print(f"frames per encoder layer: {report['frames_per_layer']}")
    if report["segments"] is not None:
        print(f"final segments: {report['segments']}")
    print(f"prompt tokens: {report['prompt_tokens']}, generated tokens: {report['generated_tokens']}")
    if cfg.merges_in_llm:
        per_layer = report["llm_tokens_per_layer"]
        print(
            f"stage 3: LLM layers 0..{cfg.inner_layer - 1} ran on {per_layer[0]} tokens, "
            f"layers {cfg.inner_layer}.. on {per_layer[-1]}"
        )
    print("stage ms: " + ", ".join(f"{k} {v:.1f}" for k, v in report["stages_ms"].items()))
    if args.save_tokens is not None:
        print(f"wrote visual_tokens [{report['visual_tokens']}, D] and kept [{report['visual_tokens']}] to "
              f"{args.save_tokens}")
    return 0


# ------------------------------------------------------------------------------------ lmms-eval
def _cmd_smoke_data(args: argparse.Namespace) -> int:
    jsonl = write_smoke_data(args.out, seed=args.seed)
    docs = smoke_documents()
    print(f"wrote {len(docs)} smoke documents to {jsonl} and their clips to {jsonl.parent / 'data'}")
    print(
        f"the earlytom_smoke task reads $EARLYTOM_SMOKE_DIR (default results/smoke-data beside tasks/): "
        f"export EARLYTOM_SMOKE_DIR={jsonl.parent.resolve()}"
    )
    return 0


def _cmd_smoke_check(args: argparse.Namespace) -> int:
    failed = False
    for run_dir in args.run_dirs:
        try:
            summary = check_run(run_dir, task=args.task, expected_docs=args.expect_docs)
        except (SmokeCheckError, OSError, ValueError, KeyError) as err:
            print(f"FAIL {run_dir}: {err}")
            failed = True
            continue
        ttft = f"{summary['avg_ttft_ms']:.1f} ms" if summary["avg_ttft_ms"] is not None else "n/a"
        print(
            f"ok   {run_dir}: score {summary['score']:.2f}, {summary['docs']} docs "
            f"({summary['errors']} with data errors), avg TTFT {ttft}, config {summary['config_hash']}"
        )
    return 1 if failed else 0


# ------------------------------------------------------------------------------------ efficiency
def _cmd_bench(args: argparse.Namespace) -> int:
    from .efficiency.bench import BenchOptions, run_bench  # lazy: torch, transformers, the whole pipeline
    from .efficiency.bench_report import format_bench_table

    configs = tuple(load_config(path) for path in args.configs)
    _dtype(args.dtype)  # a bad name fails before anything loads
    options = BenchOptions(
        configs=configs, clip=_clip(args), preset=args.preset,
        pretrained=args.pretrained, frames=args.frames, device=args.device, dtype=args.dtype, seed=args.seed,
        warmup=args.warmup, repeats=args.repeats, decode_tokens=args.decode_tokens, profile=args.profile,
        question=args.question, attention=args.attention, wait_quiet=args.wait_quiet, wait_max=args.wait_max,
        threads=args.threads, max_other_cpu=args.max_other_cpu, max_retries=args.max_retries,
        idle_wait_s=args.idle_wait,
    )
    report = run_bench(options, command=_command_line())
    print(format_bench_table(report))
    if args.json:
        _write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def _cmd_throughput(args: argparse.Namespace) -> int:
    from .efficiency.throughput import ThroughputOptions, format_throughput_table, run_throughput  # lazy: torch

    _dtype(args.dtype)
    options = ThroughputOptions(
        configs=tuple(load_config(path) for path in args.configs), preset=args.preset,
        batch_sizes=tuple(args.batch_sizes), videos=args.videos, frames=args.frames, new_tokens=args.new_tokens,
        rounds=args.rounds, device=args.device, dtype=args.dtype, seed=args.seed, threads=args.threads,
    )
    report = run_throughput(options, command=_command_line())
    print(format_throughput_table(report))
    if args.json:
        _write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def _cmd_gpu_report(args: argparse.Namespace) -> int:
    from .efficiency.gpu_report import GpuReportOptions, run_gpu_report, write_gpu_report  # lazy: torch, the pipeline

    if args.video is None and not args.dry_run:
        raise SystemExit("error: gpu-report needs --video PATH (or --dry-run)")
    clip = ClipSpec(video=args.video) if args.video is not None else ClipSpec(synthetic="static:1")
    options = GpuReportOptions(
        clip=clip, out_dir=args.out, preset=args.preset, frames=args.frames, device=args.device, dtype=args.dtype,
        seed=args.seed, warmup=args.warmup, repeats=args.repeats, decode_tokens=args.decode_tokens,
        question=args.question, configs_dir=args.configs_dir,
    )
    if args.dry_run:
        options = options.dry()
    report = run_gpu_report(options, command=_command_line())
    json_path, md_path = write_gpu_report(report, args.out)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path} in {report['elapsed_s']:.0f} s")
    return 0


def _cmd_vs_transformers(args: argparse.Namespace) -> int:
    from .efficiency.vs_transformers import (  # lazy: torch, transformers, the pipeline
        VsTransformersOptions,
        format_vs_transformers,
        run_vs_transformers,
    )

    options = VsTransformersOptions(
        clip=_clip(args), preset=args.preset, frames=args.frames, dtype=args.dtype, seed=args.seed,
        warmup=args.warmup, repeats=args.repeats, threads=args.threads, question=args.question,
    )
    report = run_vs_transformers(options, command=_command_line())
    print(format_vs_transformers(report))
    if args.json:
        _write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def _cmd_flops(args: argparse.Namespace) -> int:
    # Lazy: the FLOP accounting imports transformers' configs and the presets.
    from .compression.registry import build_method
    from .efficiency.flops import ModelShapes
    from .efficiency.flops_report import flops_report, prompt_text_tokens
    from .efficiency.schedules import schedules_for

    overrides = {"num_frames": args.frames} if args.frames is not None else {}
    configs = [load_config(path, **overrides) for path in args.configs]
    shapes = ModelShapes.from_preset(args.preset) if args.preset else ModelShapes.from_pretrained(args.pretrained)
    facts = shapes.facts()
    for cfg in configs:
        build_method(cfg).check_model(facts)  # one line naming the field, before anything is counted
    text_tokens = args.text_tokens
    if text_tokens is None:
        text_tokens = prompt_text_tokens(args.question, preset=args.preset, pretrained=args.pretrained)
    given: dict[str | None, str] = {}
    for item in args.frames_per_layer:
        name, sep, counts = item.partition("=")
        given[name.strip() if sep else None] = counts if sep else name
    measured = {}
    clip = _clip(args)
    if clip is not None:
        from .efficiency.measure import measure_schedules  # lazy: builds a model, only with a clip

        measured = measure_schedules(configs, clip, preset=args.preset, pretrained=args.pretrained,
                                     device=args.device, dtype=args.dtype, seed=args.seed)
    schedules = schedules_for(configs, shapes.vision_layers, given, measured, facts)
    source = f"preset {args.preset}" if args.preset else str(args.pretrained)
    text, report = flops_report(shapes, configs, schedules, text_tokens, attention=args.attention, source=source,
                                command=_command_line())
    print(text)
    if args.json:
        _write_json(args.json, report)
        print(f"\nwrote {args.json}")
    return 0


# ------------------------------------------------------------------------------------ report
def _cmd_tables(args: argparse.Namespace) -> int:
    from .report.render import write_tables  # lazy: pandas and matplotlib
    from .report.tables import aggregate

    if not args.runs.is_dir():
        what = "is not a folder" if args.runs.exists() else "does not exist"
        print(f"error: runs folder {args.runs} {what} (allowed: a folder holding lmms-eval runs or bench reports, "
              "e.g. results/smoke/reproduce after `make reproduce-tables GRID=configs/grids/smoke.yaml`)",
              file=sys.stderr)
        return 2
    result = aggregate(args.runs, average=args.average or None, label=args.label)
    if not result.cells and not result.bench_runs:
        print(f"error: runs folder {args.runs} holds no lmms-eval run (*_results.json) and no bench report "
              "(bench.json); nothing to aggregate", file=sys.stderr)
        return 2
    write_tables(result, args.out, plots=not args.no_plots, title=args.title)
    summary = Path(args.out) / "tables.md"
    if args.print:
        print(summary.read_text())
    else:
        print(f"wrote {summary} and every table as .md/.csv/.tex" + (" + PNG plots" if result.plots else ""))
    for problem in result.problems:
        print(f"warning: {problem}", file=sys.stderr)
    conflicts = [c for c in result.cells if c.status == "conflict"]
    if conflicts:
        print(f"error: {len(conflicts)} cell(s) have runs that disagree (not mixed); see {args.out}/cells.md",
              file=sys.stderr)
        return 1
    return 1 if args.strict and result.problems else 0


# ------------------------------------------------------------------------------------ reproduce
def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce.grid import GridError, load_grid  # lazy: the runner, the checks and the tables
    from .reproduce.runner import run_grid, write_grid_tables

    try:
        grid = load_grid(args.grid, runs=args.runs, tables=args.out, gpus=args.gpus, environ=os.environ)
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.tables_only:
        write_grid_tables(grid)
        return 0
    return run_grid(grid, force=args.force, only=args.only or (), dry_run=args.dry_run, tables=not args.no_tables)


def _cmd_env(args: argparse.Namespace) -> int:
    report = collect(MODEL_ID, lock_only=args.lock_only, lmms_only=args.lmms_only)
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}))
    elif args.lock_only or args.lmms_only:
        for problem in report.problems:  # quiet checks: only what is wrong
            print(f"error: {problem}", file=sys.stderr)
    else:
        print(render(report))
    return 0 if report.ok else 1


# ------------------------------------------------------------------------------------ parser
def _add_model_source(p: argparse.ArgumentParser, preset_help: str, pretrained_help: str) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=PRESET_NAMES, help=preset_help)
    src.add_argument("--pretrained", help=pretrained_help)


def _add_clip(p: argparse.ArgumentParser, video_help: str, synthetic_help: str, required: bool) -> None:
    clip = p.add_mutually_exclusive_group(required=required)
    clip.add_argument("--video", type=Path, help=video_help)
    clip.add_argument("--synthetic", metavar="SHOTS", help=synthetic_help)
    p.add_argument("--synthetic-size", default="240x320", help="HxW of the generated clip (default 240x320)")
    p.add_argument("--synthetic-seed", type=int, default=0)
    p.add_argument("--synthetic-fps", type=float, default=8.0)


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    ckpt = sub.add_parser("checkpoint", help="write a random-initialised checkpoint for a preset (no download)")
    ckpt.add_argument("--preset", required=True, choices=PRESET_NAMES)
    ckpt.add_argument("--out", required=True, type=Path, help="output directory")
    ckpt.add_argument("--seed", type=int, default=0, help="weights are reproducible for a seed (default 0)")
    ckpt.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 for tiny, else bfloat16)"
    )
    ckpt.set_defaults(func=_cmd_checkpoint)

    gen = sub.add_parser("generate", help="answer a question about a video; print the token budget")
    gen.add_argument("--pretrained", required=True, help="hub id or local checkpoint directory")
    gen.add_argument("--config", help="compression config YAML (default: EarlyTom defaults)")
    gen.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    gen.add_argument("--frames", type=int, help="frames sampled from the video (overrides num_frames)")
    gen.add_argument("--video", required=True, type=Path)
    gen.add_argument("--question", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: where transformers loads)")
    gen.add_argument("--dtype", default=None, help="auto | float32 | bfloat16 | float16 (default: checkpoint's)")
    gen.add_argument("--backend", default="auto", choices=BACKENDS, help="video decoder")
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    gen.add_argument("--save-tokens", type=Path, default=None, metavar="PATH",
                     help="write the video's visual tokens to a safetensors file: visual_tokens [N, D_llm] float32 "
                          "(as spliced into the LLM, newline last) and kept [N] (pooled source index t*S+q per "
                          "token, -1 for merged/contextual tokens and the newline)")
    gen.set_defaults(func=_cmd_generate)


def _add_lmms_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser(
        "smoke-data", help="write the offline earlytom_smoke task data (synthetic clips + VideoMME-format JSONL)"
    )
    data.add_argument("--out", required=True, type=Path, help="output folder (the task's default: results/smoke-data)")
    data.add_argument("--seed", type=int, default=0, help="clips are reproducible for a seed (default 0)")
    data.set_defaults(func=_cmd_smoke_data)

    check = sub.add_parser(
        "smoke-check", help="check lmms-eval output folders: results, samples and efficiency log exist and agree"
    )
    check.add_argument("run_dirs", nargs="+", type=Path, help="lmms-eval --output_path folders")
    check.add_argument("--task", default=SMOKE_TASK, help=f"task name (default {SMOKE_TASK})")
    check.add_argument("--expect-docs", type=int, default=None, help="number of documents each run must have")
    check.set_defaults(func=_cmd_smoke_check)


def _add_efficiency_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="TTFT benchmark with stage breakdown, FLOPs, peak memory and decode throughput",
        description="The TTFT benchmark: ``earlytom-eval bench``. All configs are measured in one run, interleaved.",
    )
    _add_model_source(p, "random-initialised weights of the real shapes, built in memory on the device",
                      "a real checkpoint (hub id or local directory)")
    _add_clip(p, "the clip", "generate a clip with known structure, e.g. static:24,motion:16,static:24", True)
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
    p.add_argument("--question", default=DEFAULT_QUESTION)
    p.add_argument("--attention", choices=ATTENTION_MODES, default="square",
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

    p = sub.add_parser(
        "bench-vs-transformers",
        help="TTFT of our full (and EarlyTom 0.10) against transformers' own generate(max_new_tokens=1), CPU",
        description="Time to the first token on identical inputs, interleaved, medians: transformers' "
        "model.generate(max_new_tokens=1), our full pipeline and our EarlyTom 0.10; prints transformers/ours.",
    )
    p.add_argument("--preset", choices=PRESET_NAMES, default="0.5b", help="model shapes (default 0.5b)")
    _add_clip(p, "the clip", "generate a clip with known structure, e.g. static:24,motion:16,static:24", True)
    p.add_argument("--frames", type=int, default=8, help="frames sampled (default 8)")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 | float32 (default bfloat16)")
    p.add_argument("--seed", type=int, default=0, help="preset weights seed (default 0)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds, excluded (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--question", default=DEFAULT_QUESTION)
    p.add_argument("--json", type=Path, help="write the report as JSON to this path")
    p.set_defaults(func=_cmd_vs_transformers)

    p = sub.add_parser(
        "gpu-report",
        help="the efficiency table on a lent GPU in one command: 7B preset, every config, SDPA and FlashAttention-2",
        description="TTFT (median/min/max, stages), peak GPU memory and decode throughput of full, EarlyTom at "
        "0.25/0.20/0.15/0.10, EarlyTom without its encoder stage and every peer config at 0.10 (configs/*_r0.10.yaml "
        "whose method is registered), on the 7B preset's random weights; with SDPA and, when flash_attn imports, "
        "FlashAttention-2. Writes gpu-<device>.json and .md. Needs neither lmms-eval nor the network.",
    )
    p.add_argument("--video", type=Path, help="the clip (required unless --dry-run)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the command on CPU: tiny preset, 4 frames of a generated clip, 1 repeat")
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder (default results/bench)")
    p.add_argument("--preset", choices=PRESET_NAMES, default="7b", help="model shapes (default 7b)")
    p.add_argument("--frames", type=int, default=32, help="frames sampled from the clip (default 32)")
    p.add_argument("--device", default="cuda", help="cuda | cuda:N (default cuda)")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 | float16 | float32 (default bfloat16)")
    p.add_argument("--seed", type=int, default=0, help="preset weights seed (default 0)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds per kernel (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per kernel (default 5)")
    p.add_argument("--decode-tokens", type=int, default=32, help="greedy tokens decoded after the first (default 32)")
    p.add_argument("--question", default=DEFAULT_QUESTION)
    p.add_argument("--configs-dir", type=Path, default=CONFIGS, help="where the config YAMLs are (default configs/)")
    p.set_defaults(func=_cmd_gpu_report)

    p = sub.add_parser(
        "flops",
        help="FLOPs per stage for each config (no GPU, no weights)",
        description="FLOPs per pipeline stage for each compression config, from the model's shapes. " + BASIS + ".",
    )
    _add_model_source(p, "shapes of a preset (no weights needed)",
                      "shapes from a checkpoint's config.json (hub id or directory)")
    p.add_argument("--configs", nargs="+", required=True, type=Path, help="compression config YAMLs")
    p.add_argument("--frames", type=int, default=None, help="frames per video (default: each config's num_frames)")
    _add_clip(
        p,
        "measure each EarlyTom config's frame schedule on this clip by running the vision encoder "
        "(the preset's random-initialised SigLIP, or the checkpoint's); minutes on CPU for 32 frames",
        "as --video, on a generated clip, e.g. static:24,motion:16,static:24",
        False,
    )
    p.add_argument(
        "--frames-per-layer", action="append", default=[], metavar="[CONFIG=]COUNTS",
        help="explicit schedule: counts per encoder layer (32x11,20x11,12x2,8x2) or frames after each prune "
        "layer (20,12,8); prefix CONFIG= to give one config its own",
    )
    p.add_argument("--question", default=DEFAULT_QUESTION, help="prompt text (sets the text token count)")
    p.add_argument("--text-tokens", type=int, default=None, help="text tokens around the video (overrides --question)")
    p.add_argument("--attention", choices=ATTENTION_MODES, default="square",
                   help="LLM prefill attention counted as a full square (default, FlopCounterMode's basis) or causal")
    p.add_argument("--device", default="cpu", help="device for --video (default cpu)")
    p.add_argument("--dtype", default="bfloat16", help="dtype for --video (default bfloat16)")
    p.add_argument("--seed", type=int, default=0, help="preset weights seed for --video (default 0)")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    p.set_defaults(func=_cmd_flops)


def _add_report_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "throughput",
        help="eval throughput: videos/s through generate at several batch sizes (batched encoding)",
        description="Videos per second through generate (fixed new tokens, EOS ignored) at each batch size, "
        "for each config, on a preset's random weights and generated clips; interleaved rounds, medians.",
    )
    p.add_argument("--preset", default="tiny", help="model shapes (tiny, 0.5b, 7b, 72b; default tiny)")
    p.add_argument("--configs", nargs="+", type=Path, default=[Path("configs/full.yaml")], help="config files")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 8], help="videos per call (default 1 4 8)")
    p.add_argument("--videos", type=int, default=8, help="videos per round (default 8)")
    p.add_argument("--frames", type=int, default=8, help="frames per video (default 8)")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per video (default 16)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds (default 2; medians)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.set_defaults(func=_cmd_throughput)

    p = sub.add_parser(
        "tables",
        help="aggregate lmms-eval runs and bench reports into accuracy / TTFT / FLOP tables and plots",
        description="Aggregate existing runs (nothing is run): lmms-eval results.json + samples + the "
        "per-sample efficiency log, joined by (task, doc_id), and `earlytom-eval bench` reports, into "
        "Markdown, CSV and LaTeX tables and PNG plots.",
    )
    p.add_argument("--runs", type=Path, default=Path("results/runs"), help="folder searched for runs (default "
                   "results/runs)")
    p.add_argument("--out", type=Path, default=Path("results/runs/tables"),
                   help="output folder (default results/runs/tables, git-ignored)")
    p.add_argument("--average", nargs="*", default=None, metavar="TASK",
                   help="tasks of the 'Avg' column (default: the paper's four if all present, else every task)")
    p.add_argument("--label", default=None, help="a line printed above every table (e.g. 'CPU smoke run')")
    p.add_argument("--title", default="Tables", help="title of tables.md")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--print", action="store_true", help="print tables.md")
    p.add_argument("--strict", action="store_true", help="exit 1 when any cell is incomplete")
    p.set_defaults(func=_cmd_tables)

    p = sub.add_parser(
        "reproduce",
        help="run every incomplete cell of an experiment grid (lmms-eval + TTFT bench), then the tables",
        description="Run the cells of an experiment grid that have no complete result yet (lmms-eval for accuracy "
        "and the per-sample efficiency log, `earlytom-eval bench` for TTFT and FLOPs), then write the tables and "
        "plots. Finished cells are kept; an interrupted run resumes; missing weights/data are listed up front.",
    )
    p.add_argument("--grid", type=Path, default=Path("configs/grids/paper.yaml"), help="grid file")
    p.add_argument("--runs", default=None, help="runs folder (default: the grid's `runs`)")
    p.add_argument("--out", default=None, help="tables folder (default: the grid's `tables`)")
    p.add_argument("--gpus", default=None, help="data-parallel processes for lmms-eval: N or auto (default: grid's)")
    p.add_argument("--force", action="store_true", help="run cells again even if complete")
    p.add_argument("--only", nargs="*", metavar="PATTERN",
                   help="only cells whose id (model/task/config, model/bench/settings) matches")
    p.add_argument("--dry-run", action="store_true", help="show the plan, the missing pieces and the commands only")
    p.add_argument("--no-tables", action="store_true", help="do not write tables at the end")
    p.add_argument("--tables-only", action="store_true", help="only aggregate the grid's runs into tables")
    p.set_defaults(func=_cmd_reproduce)


def _add_env_command(sub: argparse._SubParsersAction) -> None:
    env = sub.add_parser("env", help="versions, lock check, GPUs, attention kernels, lmms-eval check (bug reports)")
    only = env.add_mutually_exclusive_group()
    only.add_argument("--lock-only", action="store_true", help="only check the installed versions against the lock")
    only.add_argument("--lmms-only", action="store_true", help="only check that lmms-eval can run our model")
    env.add_argument("--json", action="store_true", help="print one JSON object")
    env.set_defaults(func=_cmd_env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="earlytom-eval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_model_commands(sub)
    _add_env_command(sub)
    _add_lmms_commands(sub)
    _add_efficiency_commands(sub)
    _add_report_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, VideoLoadError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
