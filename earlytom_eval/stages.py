"""The names of the pipeline's stages, defined once for every timer, log, report, table and plot.

From preprocessed frames to the first token a run goes through :data:`STAGES`, in this order; what no stage
accounts for (tokenising the prompt, splicing the visual tokens in) is :data:`OTHER`. Imports nothing.
"""

from __future__ import annotations

__all__ = ["FLOP_STAGES", "OTHER", "PREFILL_FLOP_STAGES", "STAGES", "STAGE_LABELS", "stage_fields"]

_NAMED = (
    ("vision_encoder", "vision encoder"),
    ("compression", "compression"),
    ("projector_pooling", "projector + pooling"),
    ("llm_prefill", "LLM prefill"),
    ("inner_merge", "stage-3 merge"),
    ("first_token", "first token"),
)

#: Timed stages, in pipeline order: what ``GenerationOutput.stages_ms`` holds besides ``ttft`` and ``decode``.
STAGES = tuple(name for name, _ in _NAMED)
#: The rest of the time to first token.
OTHER = "other"
#: Display names, :data:`OTHER` included.
STAGE_LABELS = {**dict(_NAMED), OTHER: "other"}
#: Stages whose matrix products the FLOP accounting counts (stage 3's merge is counted under ``compression``,
#: the first token is an argmax); their sum is the prefill's FLOPs.
PREFILL_FLOP_STAGES = STAGES[:4]
#: What a FLOP count reports: the prefill stages, and one greedy decode step beside them (not summed).
FLOP_STAGES = (*PREFILL_FLOP_STAGES, "decode_step")


def stage_fields(suffix: str = "_ms") -> tuple[str, ...]:
    """``vision_encoder_ms``, ``compression_ms``, ...: the per-stage fields of the efficiency log."""
    return tuple(name + suffix for name in STAGES)
