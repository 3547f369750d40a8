"""FLOPs per stage of any compression method, read from the method object (:mod:`earlytom_eval.compression`).

:mod:`.flops` has the model's shapes and the formulas; this module asks the method where it acts and counts:

- vision encoder: each layer on its own frames and tokens per frame (:class:`~.schedules.FrameSchedule`:
  EarlyTom merges frames after layers, ToMe merges tokens inside every layer);
- compression: the signals its :class:`~earlytom_eval.compression.methods.EncoderPlan` asks for (one layer's
  received attention, one layer's keys, the keys and bipartite matching of every merge layer, SigLIP's
  pooling head), its own selection after the projector (by method), and every LLM cut's scoring (the last
  prompt token's query against the layer's keys) and, for a merging cut, its cosine assignment;
- LLM prefill: each decoder layer on its own token count; the cuts apply in layer order, so layers before
  each cut process the longer sequence;
- one decode step: every layer attends to its cache; with DyCoke's decode pruning layers >= L attend to the
  pruned one.

Counts are exact where the method's :meth:`planned_counts` are (or a run measured them). Where the work depends
on the data (HoliTom's static windows, FastVID's segments), the count is the method's upper bound and the
part is listed in ``detail["bounds"]``. Row-wise cosine similarities of aligned tokens (HoliTom's adjacent
frames, DyCoke's frame pairs) are elementwise products and sums, counted as 2 FLOPs per multiply-add like the
matrix products but not seen by ``FlopCounterMode``; nor are DPC-kNN's pairwise distances (``torch.cdist``,
which ``FlopCounterMode`` counts as 0), counted here as the product ``X X^T`` they amount to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..compression.config import CompressionConfig, LlmCut
from ..compression.dycoke import kv_keep_count, stage2_image_length, ttm_frame_plan
from ..compression.fastvid import fastvid_budgets
from ..compression.inner import inner_keep_count
from ..compression.methods import CompressionMethod
from ..compression.registry import build_method
from ..compression.tome import choose_merge_num
from ..stages import PREFILL_FLOP_STAGES
from .flops import (
    ModelShapes,
    decode_step_flops,
    earlytom_compression_parts,
    llm_prefill_flops,
    projector_pooling_flops,
    received_attention_flops,
    vision_encoder_flops,
)
from .schedules import FrameSchedule

__all__ = [
    "StageFlops",
    "as_method",
    "count_stage_flops",
    "cut_flops",
    "dpc_flops",
    "encoder_tokens_out",
    "llm_cut_plan",
    "method_compression_parts",
    "pooling_head_flops",
    "tome_matching_flops",
]


def _linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def as_method(config: CompressionConfig | CompressionMethod) -> CompressionMethod:
    """The method object of a config (built from the registry), or the method itself."""
    return config if isinstance(config, CompressionMethod) else build_method(config)


# ------------------------------------------------------------------------------------------ formulas
def tome_matching_flops(frames: int, tokens: int, metric_dim: int) -> int:
    """ToMe's bipartite soft matching of ``tokens`` per frame: ``A @ B^T`` of the normalised metric, A the
    ``ceil(N/2)`` even tokens, B the ``floor(N/2)`` odd ones (the sort and gathers are not counted)."""
    return 2 * frames * ((tokens + 1) // 2) * (tokens // 2) * metric_dim


def pooling_head_flops(shapes: ModelShapes, frames: int, tokens: int | None = None) -> int:
    """SigLIP's attention-pooling head on ``frames`` frames of ``tokens`` tokens: the probe's query, keys and
    values of every token, one query row of attention per head, the output projection and the MLP of the
    pooled token per frame."""
    tokens = shapes.encoder_tokens if tokens is None else tokens
    d = shapes.vision_hidden
    kv = 2 * _linear(frames * tokens, d, d)
    probe = _linear(frames, d, d) + _linear(frames, d, d)  # probe query, output projection
    attention = 2 * 2 * frames * tokens * d  # one query: q k^T and p v, all heads
    mlp = 2 * _linear(frames, d, shapes.vision_mlp)
    return kv + probe + attention + mlp


def dpc_flops(tokens: int, clusters: int, dim: int) -> int:
    """DPC-kNN on ``tokens`` tokens of width ``dim`` into ``clusters``: the pairwise distances (as one product)
    and the cluster sums (one-hot ``[C, N] @ [N, D]``)."""
    return 2 * tokens * tokens * dim + 2 * clusters * tokens * dim


# ------------------------------------------------------------------------------------------ encoder side
def encoder_tokens_out(method: CompressionMethod, shapes: ModelShapes, schedule: FrameSchedule) -> int:
    """Tokens per frame leaving the encoder: the schedule's, else ToMe's merge schedule, else the last layer's
    input count (``S_v`` without token merging)."""
    if schedule.tokens_out is not None:
        return schedule.tokens_out
    if schedule.tokens_per_layer is None:
        return shapes.encoder_tokens
    if method.name == "tome":
        return shapes.encoder_tokens - _tome_merge_num(method.config, shapes, schedule.frames_in)
    return schedule.tokens_per_layer[-1]


def _tome_merge_num(config: CompressionConfig, shapes: ModelShapes, frames: int) -> int:
    merge_num = getattr(config.params, "merge_num", None)
    if merge_num is not None:
        return merge_num
    inflect = getattr(config.params, "inflect", -0.5)
    setting = choose_merge_num(config.retention, frames, shapes.encoder_tokens, shapes.vision_layers,
                               pooled_per_frame=shapes.pooled_tokens, inflect=inflect)
    return setting.merge_num


def method_compression_parts(
    shapes: ModelShapes, method: CompressionMethod, schedule: FrameSchedule
) -> tuple[dict[str, int], list[str]]:
    """FLOPs of the method's work before the LLM: ``(parts, names of the parts that are upper bounds)``."""
    config = method.config
    if method.name == "earlytom":
        return earlytom_compression_parts(shapes, config, schedule), []
    layers = shapes.vision_layers
    fpl = schedule.frames_per_layer
    tpl = schedule.tokens_per_layer or (shapes.encoder_tokens,) * layers
    out_tokens = encoder_tokens_out(method, shapes, schedule)
    after = [*tpl[1:], out_tokens]
    plan = method.encoder_plan(layers)
    parts: dict[str, int] = {}
    bounds: list[str] = []

    def add(name: str, flops: int) -> None:
        parts[name] = parts.get(name, 0) + flops

    if plan.attention_layer is not None:
        layer = plan.attention_layer
        add("received_attention", received_attention_flops(shapes, fpl[layer], tpl[layer]))
    # Keys (VisionZip's and ToMe's metric) are the layer's own, captured while it runs: averaging is elementwise.
    metric_dim = shapes.vision_hidden // shapes.vision_heads
    for layer in plan.merge_layers:
        if after[layer] < tpl[layer]:
            add("bipartite_matching", tome_matching_flops(fpl[layer], tpl[layer], metric_dim))
    if plan.pooling_head:
        add("pooling_head", pooling_head_flops(shapes, schedule.frames_out, out_tokens))

    frames, per_frame, width = schedule.frames_out, shapes.pooled_tokens, shapes.hidden
    if method.name == "visionzip":
        dominant, contextual = method.counts(per_frame)
        others = per_frame - dominant - contextual
        add("key_assignment", 2 * frames * others * contextual * metric_dim)
        add("contextual_merge", 2 * frames * contextual * others * width)
    elif method.name == "holitom":
        add("adjacent_similarity", 2 * max(frames - 1, 0) * per_frame * width)
        # Upper bound: at most T // 2 windows of several frames, each clustering at most S static tokens.
        add("dpc_knn", (frames // 2) * dpc_flops(per_frame, per_frame, width))
        bounds.append("dpc_knn")
    elif method.name == "fastvid":
        params = config.params
        _, salient, context = fastvid_budgets(per_frame, config.retention, params.d)
        rest = per_frame - salient
        add("dyseg_similarity", 2 * max(frames - 1, 0) * shapes.vision_hidden)
        if context > 0 and rest > 0:
            add("dpc_score", frames * 2 * rest * rest * width)
            # Context merges: every anchor's contexts against its segment's pool; with at least min(c, T)
            # segments the sum of squared segment lengths is largest for one long segment (upper bound).
            segments = min(params.c, frames)
            longest = frames - segments + 1
            add("context_merge", 4 * rest * context * width * (longest**2 + segments - 1))
            bounds.append("context_merge")
    elif method.name == "dycoke":
        pairs = int((ttm_frame_plan(frames) >= 0).sum())
        add("pair_similarity", 2 * pairs * per_frame * width)
    return parts, bounds


# ------------------------------------------------------------------------------------------ LLM cuts
@dataclass(frozen=True)
class CutCount:
    """One LLM cut as counted: its spec, the sequence entering layer ``cut.layer - 1`` (the scores' keys), the
    visual tokens before and after."""

    cut: LlmCut
    tokens_before: int
    visual_in: int
    visual_out: int

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.cut.layer, "ratio": self.cut.ratio, "mode": self.cut.mode,
                "tokens_before": self.tokens_before, "visual_in": self.visual_in, "visual_out": self.visual_out}


def llm_cut_plan(
    layers: int, cuts: Sequence[LlmCut], prompt_tokens: int, visual_tokens: int
) -> tuple[list[int], list[CutCount]]:
    """Tokens per decoder layer with the cuts applied in layer order, and each cut's counts.

    Each cut keeps ``round(Nv (1 - ratio))`` of the visual tokens it sees (newline included in the span), as
    the model does; layers before it keep the longer sequence.
    """
    tokens = [prompt_tokens] * layers
    counted: list[CutCount] = []
    current, visual = prompt_tokens, visual_tokens
    for cut in sorted(cuts, key=lambda c: c.layer):
        kept = inner_keep_count(visual, cut.ratio)
        counted.append(CutCount(cut, current, visual, kept))
        current = current - visual + kept
        visual = kept
        tokens[cut.layer:] = [current] * (layers - cut.layer)
    return tokens, counted


def cut_flops(shapes: ModelShapes, count: CutCount) -> dict[str, int]:
    """One cut's own work: the last prompt token's query (q projection) against the ``tokens_before`` cached
    keys of layer ``k - 1`` (``inner_scores``), and for a merging cut the cosine similarity of the visual
    tokens that merge to the kept ones (``inner_assign``: only those are scored; a drop cut has none)."""
    q_width = shapes.heads * shapes.head_dim
    parts = {"inner_scores": _linear(1, shapes.hidden, q_width) + 2 * count.tokens_before * q_width}
    if count.cut.mode != "drop":
        parts["inner_assign"] = 2 * (count.visual_in - count.visual_out) * count.visual_out * shapes.hidden
    return parts


# ------------------------------------------------------------------------------------------ all stages
@dataclass
class StageFlops:
    """FLOPs per stage for one config and the token counts they came from."""

    stages: dict[str, int]
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def total_prefill(self) -> int:
        """Preprocessed frames to first token: every stage but ``decode_step``."""
        return sum(self.stages[s] for s in PREFILL_FLOP_STAGES)


def _decode_contexts(
    shapes: ModelShapes, method: CompressionMethod, tokens: Sequence[int], visual_tokens: int
) -> tuple[list[int], int, dict[str, Any] | None]:
    """Keys each layer attends to in the first decode step, the extra scoring FLOPs, and a note (DyCoke)."""
    contexts = [n + 1 for n in tokens]
    params = method.config.params
    if method.name != "dycoke" or not getattr(params, "decode_pruning", False):
        return contexts, 0, None
    image = stage2_image_length(visual_tokens - 1)
    pruned = image - kv_keep_count(image, params.decode_prune)
    layer = params.decode_layer
    contexts = [c - pruned if i >= layer else c for i, c in enumerate(contexts)]
    scores = 2 * contexts[layer - 1] * shapes.heads * shapes.head_dim  # layer L-1's attention row, re-read
    note = {"decode_layer": layer, "image_span": image, "pruned_entries": pruned, "scores_flops": scores}
    return contexts, scores, note


def count_stage_flops(
    shapes: ModelShapes,
    config: CompressionConfig | CompressionMethod,
    schedule: FrameSchedule,
    prompt_tokens: int,
    visual_tokens: int,
    *,
    llm_tokens_per_layer: Sequence[int] | None = None,
    decode_context_per_layer: Sequence[int] | None = None,
    attention: str = "square",
) -> StageFlops:
    """Per-stage FLOPs of one prompt with one video, for any method.

    Args:
        config: the config (its method is built from the registry) or the method object itself.
        schedule: frames (and tokens per frame) per encoder layer, e.g. :func:`schedule_from_encoding`.
        prompt_tokens: tokens entering the LLM (text + visual, newline included).
        visual_tokens: the video's tokens in the prompt (newline included).
        llm_tokens_per_layer: tokens per decoder layer as they occurred (``LlmState.tokens_per_layer``);
            default: ``prompt_tokens`` cut by the method's LLM cuts.
        decode_context_per_layer: keys each layer attends to in the first decode step (default: its
            prefill tokens + 1, fewer for layers that attend to a pruned cache).
    """
    method = as_method(config)
    cfg = method.config
    planned_tokens, cuts = llm_cut_plan(shapes.layers, method.llm_cuts(), prompt_tokens, visual_tokens)
    tokens = list(llm_tokens_per_layer) if llm_tokens_per_layer is not None else planned_tokens
    prune = cfg.prune_layers if cfg.compresses else ()
    tokens_out = encoder_tokens_out(method, shapes, schedule)
    encoder, blocks = vision_encoder_flops(
        shapes, schedule.frames_per_layer, prune, schedule.tokens_per_layer, tokens_out
    )
    parts, bounds = method_compression_parts(shapes, method, schedule)
    for count in cuts:
        for name, flops in cut_flops(shapes, count).items():
            parts[name] = parts.get(name, 0) + flops
    llm, _ = llm_prefill_flops(shapes, tokens, attention)
    contexts, decode_extra, decode_note = _decode_contexts(shapes, method, tokens, visual_tokens)
    if decode_context_per_layer is not None:
        contexts = list(decode_context_per_layer)
    stages = {
        "vision_encoder": encoder,
        "compression": sum(parts.values()),
        "projector_pooling": projector_pooling_flops(shapes, schedule.frames_out, tokens_out),
        "llm_prefill": llm,
        "decode_step": decode_step_flops(shapes, contexts) + decode_extra,
    }
    detail: dict[str, Any] = {
        "method": method.name,
        "vision_encoder_blocks": blocks,
        "compression_parts": parts,
        "bounds": bounds,
        "llm_cuts": [c.to_dict() for c in cuts],
        "llm_tokens_per_layer": tokens,
        "attention": attention,
    }
    if schedule.tokens_per_layer is not None:
        detail["encoder_tokens_per_layer"] = list(schedule.tokens_per_layer)
        detail["encoder_tokens_out"] = tokens_out
    if decode_note is not None:
        detail["decode_pruning"] = decode_note
    return StageFlops(stages, detail)

