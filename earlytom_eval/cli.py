"""The ``earlytom-eval`` command line.

Subcommands:
  checkpoint   write a random-initialised LLaVA-OneVision checkpoint for a preset (offline)
  generate     answer a question about a video with a compression config, print the token budget
  smoke-data   write the tiny synthetic clips and questions of the earlytom_smoke task
  smoke-check  check that smoke runs produced agreeing results, samples and efficiency logs
  bench        time TTFT per stage for several configs in one interleaved run
  flops        count FLOPs per stage for several configs (no weights needed)
  tables       aggregate lmms-eval runs, efficiency logs and bench reports into tables and plots
  reproduce    run every missing cell of an experiment grid, then the tables (make reproduce-tables)
  env          versions, lock check, GPUs and attention kernels, and whether lmms-eval can run (for bug reports)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _parse_assignments(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set expects FIELD=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    from .models.presets import write_checkpoint

    out = write_checkpoint(args.preset, args.out, seed=args.seed, dtype=args.dtype)
    print(f"wrote random-initialised '{args.preset}' checkpoint (seed {args.seed}) to {out}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .compression.config import CompressionConfig, load_config
    from .video import load_video

    overrides = _parse_assignments(args.set)
    cfg = load_config(args.config) if args.config else CompressionConfig()
    if args.frames is not None:
        overrides["num_frames"] = str(args.frames)
    cfg = cfg.with_overrides(overrides) if overrides else cfg

    # Cheap checks first: the video must decode before the model loads.
    video = load_video(args.video, cfg.num_frames, backend=args.backend)

    from .models.llava_ov import load_model

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
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .environment import collect, render

    report = collect(lock_only=args.lock_only, lmms_only=args.lmms_only)
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}))
    elif args.lock_only or args.lmms_only:
        for problem in report.problems:  # quiet checks: only what is wrong
            print(f"error: {problem}", file=sys.stderr)
    else:
        print(render(report))
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    from .models.presets import PRESET_NAMES

    parser = argparse.ArgumentParser(prog="earlytom-eval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

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
    gen.add_argument("--backend", default="auto", choices=("auto", "decord", "pyav"), help="video decoder")
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    gen.set_defaults(func=_cmd_generate)

    env = sub.add_parser("env", help="versions, lock check, GPUs, attention kernels, lmms-eval check (bug reports)")
    only = env.add_mutually_exclusive_group()
    only.add_argument("--lock-only", action="store_true", help="only check the installed versions against the lock")
    only.add_argument("--lmms-only", action="store_true", help="only check that lmms-eval can run our model")
    env.add_argument("--json", action="store_true", help="print one JSON object")
    env.set_defaults(func=_cmd_env)

    # Subcommands that live with their feature: each module registers its own parser.
    from .efficiency import bench, flops
    from .lmms import smoke_data
    from .report import tables
    from .reproduce import runner as reproduce

    for module in (smoke_data, bench, flops, tables, reproduce):
        module.add_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .compression.config import ConfigError
    from .video import VideoLoadError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, VideoLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
