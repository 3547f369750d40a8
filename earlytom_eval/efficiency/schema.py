"""What a FLOP and TTFT report holds: the fields of ``earlytom-eval bench``'s JSON (its config entries shared with
``flops``), the FLOP basis every output states, and how LLM attention may be counted.

The aggregator reads bench reports with this check and the command line offers the attention modes, so it
imports nothing heavier than the stage names.
"""

from __future__ import annotations

from typing import Any

from ..stages import FLOP_STAGES

__all__ = ["ATTENTION_MODES", "BASIS", "CONFIG_KEYS", "validate_report"]

#: What the FLOP counts are, stated in every output.
BASIS = (
    "real FLOPs (2 per multiply-add) of the matrix products that run: linear layers, patch convolution, "
    "attention QK^T and AV (GQA, per query head), 3-matrix MLP, each method's own products (similarities, "
    "received attention, keys, matching, assignments, LLM-cut scores); elementwise ops (norms, activations, "
    "softmax, pooling, RoPE rotation, merging) not counted: the torch.utils.flop_counter.FlopCounterMode basis "
    "(row-wise cosines of aligned tokens, HoliTom's and DyCoke's, are counted as multiply-adds)"
)

#: How LLM prefill attention is counted: the full square (FlopCounterMode's and the reference's basis) or the
#: causal triangle (what a causal flash kernel computes); the report's ``attention`` field.
ATTENTION_MODES = ("square", "causal")

#: Keys of every ``configs`` entry; a ``flops`` entry has the first five.
CONFIG_KEYS = (
    "name",
    "flops",
    "total_prefill_flops",
    "frames_per_layer",
    "visual_tokens",
    "ttft_ms",
    "stages_ms",
)


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
        for key in FLOP_STAGES:
            if key not in entry.get("flops", {}):
                problems.append(f"config {entry.get('name')!r}: missing flops.{key}")
        if bench and "ttft_ms" in entry:
            for key in ("median", "min", "max"):
                if key not in entry["ttft_ms"]:
                    problems.append(f"config {entry.get('name')!r}: missing ttft_ms.{key}")
    if problems:
        raise ValueError("; ".join(problems))
