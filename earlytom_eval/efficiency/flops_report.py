"""FLOP results as the ``flops`` command and the bench report give them: one entry per config, ratios against full
tokens, the terminal table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import AutoProcessor

from ..compression.config import CompressionConfig
from ..models.presets import build_processor
from .flops import STAGES, ModelShapes, reference_llm_macs, visual_token_count
from .host import environment_info
from .method_flops import count_stage_flops
from .schedules import FrameSchedule, run_length
from .schema import BASIS

__all__ = [
    "add_ratios",
    "flops_entry",
    "flops_report",
    "format_flops_table",
    "prompt_text_tokens",
    "text_table",
    "text_token_count",
]



def flops_entry(
    shapes: ModelShapes,
    config: CompressionConfig,
    schedule: FrameSchedule,
    text_tokens: int,
    attention: str = "square",
    visual_tokens: int | None = None,
    prompt_tokens: int | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """One JSON entry (``configs`` list) for a config and schedule."""
    visual = visual_tokens if visual_tokens is not None else visual_token_count(shapes, config, schedule)
    prompt = prompt_tokens if prompt_tokens is not None else text_tokens + visual
    counted = count_stage_flops(shapes, config, schedule, prompt, visual, attention=attention)
    return {
        "name": name or config.name,
        "method": config.method,
        "config": config.to_dict(),
        "flops": dict(counted.stages),
        "total_prefill_flops": counted.total_prefill,
        "frames_per_layer": list(schedule.frames_per_layer),
        "frames_out": schedule.frames_out,
        "schedule": schedule.to_dict(),
        "schedule_compact": schedule.compact(),
        "encoder_tokens_compact": schedule.tokens_compact(),
        "counts": _counts_kind(schedule, counted.detail["bounds"]),
        "visual_tokens": visual,
        "prompt_tokens": prompt,
        "flops_detail": counted.detail,
        "reference_llm_macs": reference_llm_macs(shapes, visual - 1),
    }


def _counts_kind(schedule: FrameSchedule, bounds: list[str]) -> str:
    """``exact``, ``measured`` or ``bound``: how the entry's token counts (and data-dependent parts) were got."""
    source = schedule.source
    if source.startswith("measured"):
        kind = "measured"
    elif "bound" in source:
        kind = "bound"
    else:
        kind = "exact" if source in ("full", "") or "exact" in source or source.startswith("given") else "bound"
    if bounds and kind != "bound":
        kind += " (+ bounded parts: " + ", ".join(bounds) + ")"
    return kind


def add_ratios(entries: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Add ``vs_full`` (FLOP ratios per stage and total; None where full's count is 0) to each entry;
    return them by name."""
    full = next((e for e in entries if e.get("method") == "full"), None)
    ratios: dict[str, dict[str, float | None]] = {}
    if full is None:
        return ratios
    for e in entries:
        r: dict[str, float | None] = {}
        for stage in STAGES:
            base = full["flops"][stage]
            r[f"flops_{stage}"] = e["flops"][stage] / base if base else None  # full has no compression
        r["total_prefill_flops"] = e["total_prefill_flops"] / full["total_prefill_flops"]
        r["visual_tokens"] = e["visual_tokens"] / full["visual_tokens"]
        if "ttft_ms" in e and "ttft_ms" in full:
            r["ttft_speedup"] = full["ttft_ms"]["median"] / e["ttft_ms"]["median"]
        e["vs_full"] = r
        ratios[e["name"]] = r
    return ratios


def _tera(value: float) -> str:
    return f"{value / 1e12:.3f}"


def format_flops_table(entries: Sequence[dict[str, Any]], header: Sequence[str] = ()) -> str:
    """The terminal table: one row per config, TFLOPs per stage, totals and ratios against ``full``."""
    lines = list(header)
    cols = ["config", "counts", "frames/layer", "vis.tok", "LLM tok/layer", "encoder", "compress", "proj+pool",
            "LLM prefill", "prefill total", "vs full", "decode step", "ref. formula"]
    rows = []
    full = next((e for e in entries if e.get("method") == "full"), None)
    for e in entries:
        f = e["flops"]
        ratio = f"{e['total_prefill_flops'] / full['total_prefill_flops']:.1%}" if full else "-"
        rows.append([
            e["name"],
            e.get("counts", "").split(" ")[0],
            e.get("schedule_compact", "") + (f" tok {e['encoder_tokens_compact']}" if e.get("encoder_tokens_compact")
                                             else ""),
            str(e["visual_tokens"]),
            run_length(e["flops_detail"]["llm_tokens_per_layer"]),
            _tera(f["vision_encoder"]),
            _tera(f["compression"]),
            _tera(f["projector_pooling"]),
            _tera(f["llm_prefill"]),
            _tera(e["total_prefill_flops"]),
            ratio,
            f"{f['decode_step'] / 1e9:.2f} G",
            f"{e['reference_llm_macs'] / 1e12:.2f} T MAC",
        ])
    lines.append("TFLOPs per stage (decode step in GFLOPs; 'vs full' = total prefill FLOPs / full's; counts: exact, "
                 "measured on a clip, or bound = the method's upper bound where its work depends on the data)")
    lines.extend(text_table(cols, rows, left=(0, 1)))
    return "\n".join(lines)


def text_table(cols: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> list[str]:
    """Aligned text columns (``left`` columns left-aligned, the others right-aligned), header rule included."""
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]

    def line(cells: Sequence[str]) -> str:
        padded = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded)

    return [line(cols), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def text_token_count(processor: Any, question: str) -> int:
    """Text tokens of a one-video chat prompt (the ``<video>`` placeholder not counted)."""
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    return len(processor.tokenizer(prompt)["input_ids"]) - 1


def prompt_text_tokens(question: str, *, preset: str | None = None, pretrained: str | None = None) -> int:
    """Text tokens of a one-video prompt with ``question``, by the preset's or the checkpoint's processor."""
    processor = build_processor(preset) if preset else AutoProcessor.from_pretrained(str(pretrained))
    return text_token_count(processor, question)


def flops_report(
    shapes: ModelShapes,
    configs: Sequence[CompressionConfig],
    schedules: Mapping[str, Sequence[tuple[str, FrameSchedule, int | None]]],
    text_tokens: int,
    *,
    attention: str = "square",
    source: str = "",
    command: str = "",
) -> tuple[str, dict[str, Any]]:
    """The ``flops`` command's output: ``(text, JSON report)``, one entry per config and schedule
    (:func:`~.schedules.schedules_for`); ``source`` names the model, ``command`` the command line."""
    entries = [
        flops_entry(shapes, cfg, schedule, text_tokens, attention, visual_tokens=visual, name=cfg.name + suffix)
        for cfg in configs
        for suffix, schedule, visual in schedules[cfg.name]
    ]
    ratios = add_ratios(entries)
    env = environment_info()
    header = [
        f"computed on: {env.get('cpu')} ({env.get('cpu_cores')} cores), torch {env.get('torch')}, "
        f"transformers {env.get('transformers')} (FLOP counts do not depend on the machine; a measured schedule "
        "ran there)",
        f"model: {shapes.name} shapes: {shapes.describe()}",
        f"prompt: {text_tokens} text tokens + the visual tokens; attention in the LLM counted as "
        f"{'a full square' if attention == 'square' else 'the causal triangle'}",
        "basis: " + BASIS,
        "reference formula: the reference's LLM-only hand count, layers*(4nd^2+2n^2d+2ndm) multiply-adds "
        "(n = visual tokens without the newline; no GQA, 2 MLP matrices, no text)",
    ]
    sources = sorted({e["schedule"]["source"] for e in entries if e["method"] != "full"})
    bounded = [f"{e['name']}: {', '.join(e['flops_detail']['bounds'])}" for e in entries if e["flops_detail"]["bounds"]]
    if bounded:
        header.append("compression parts counted at the method's upper bound (data-dependent): " + "; ".join(bounded))
    header += [f"frame schedule: {s}" for s in sources]
    if any(e["name"].endswith("@no-merge") for e in entries):
        header.append(
            "no clip given (--video / --frames-per-layer): each EarlyTom config is shown at both bounds of its "
            "frame schedule; a real clip's FLOPs lie between them"
        )
    lines = [format_flops_table(entries, header), "", "vision encoder by block (TFLOPs; frames each block ran on):"]
    for e in entries:
        blocks = ", ".join(f"{b['layers']}: {b['frames']} fr {b['flops'] / 1e12:.3f}"
                           for b in e["flops_detail"]["vision_encoder_blocks"])
        lines.append(f"  {e['name']}: {blocks}")
    report = {
        "tool": "earlytom-eval flops",
        "command": command,
        "basis": BASIS,
        "attention": attention,
        "model": {"source": source, "shapes": shapes.__dict__},
        "text_tokens": text_tokens,
        "environment": env,
        "configs": entries,
        "ratios": ratios,
    }
    return "\n".join(lines), report
