"""FLOP accounting per pipeline stage: the model's shapes and the formulas, from the token and frame counts that ran.

The basis (:data:`BASIS`, stated in every output) is real FLOPs, 2 per multiply-add, of the matrix products the
pipeline runs: what ``torch.utils.flop_counter.FlopCounterMode`` counts (``tests/test_flops.py`` checks each
stage against it). Nothing here needs weights; :mod:`.schedules` says which frames each encoder layer saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from ..compression.config import CompressionConfig, ModelFacts
from ..compression.inner import inner_keep_count
from ..compression.spatial import dynamic_token_count, effective_retention, static_token_count
from ..compression.temporal import similarity_blocks, similarity_offset
from ..models.checkpoint import check_checkpoint
from ..models.presets import preset_config
from ..stages import FLOP_STAGES
from .schedules import FrameSchedule
from .schema import ATTENTION_MODES

__all__ = [
    "STAGES",
    "ModelShapes",
    "compression_flops",
    "decode_step_flops",
    "earlytom_compression_parts",
    "encoder_layer_flops",
    "inner_merge_flops",
    "llm_layer_flops",
    "llm_prefill_flops",
    "projector_pooling_flops",
    "received_attention_flops",
    "reference_llm_macs",
    "stage3_tokens_per_layer",
    "vision_encoder_flops",
    "visual_token_count",
]

#: Stage keys of :attr:`StageFlops.stages`, in pipeline order; ``decode_step`` is reported beside the prefill,
#: not summed into it.
STAGES = FLOP_STAGES




@dataclass(frozen=True)
class ModelShapes:
    """The dimensions that determine the FLOPs of a LLaVA-OneVision model."""

    name: str
    # SigLIP vision encoder
    vision_hidden: int
    vision_mlp: int
    vision_heads: int
    vision_layers: int  # layers that run to produce the features (vision_feature_layer -1: all)
    image_size: int
    patch_size: int
    channels: int
    # projector: vision_hidden -> text hidden -> text hidden
    # Qwen2 language model
    hidden: int
    mlp: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def encoder_tokens(self) -> int:
        """S_v, tokens per frame inside the encoder (729 for SigLIP-so400m at 384 px)."""
        return self.grid * self.grid

    @property
    def pooled_tokens(self) -> int:
        """S, tokens per frame after the bilinear 2x2 pooling (196)."""
        side = math.ceil(self.grid / 2)
        return side * side

    @classmethod
    def from_hf_config(cls, config: Any, name: str = "") -> ModelShapes:
        """From a ``LlavaOnevisionConfig`` (or anything with ``vision_config`` / ``text_config``)."""
        vision, text = config.vision_config, config.text_config
        depth = vision.num_hidden_layers
        layer = getattr(config, "vision_feature_layer", -1)
        run = depth if not isinstance(layer, int) else (layer if layer >= 0 else depth + 1 + layer)
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(
            name=name,
            vision_hidden=vision.hidden_size,
            vision_mlp=vision.intermediate_size,
            vision_heads=vision.num_attention_heads,
            vision_layers=run,
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            channels=getattr(vision, "num_channels", 3),
            hidden=text.hidden_size,
            mlp=text.intermediate_size,
            layers=text.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            vocab=text.vocab_size,
        )

    @classmethod
    def from_preset(cls, preset: str) -> ModelShapes:
        return cls.from_hf_config(preset_config(preset), name=preset)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ModelShapes:
        check_checkpoint(path, weights=False)  # shapes only: config.json must be there and readable
        return cls.from_hf_config(AutoConfig.from_pretrained(str(path)), name=str(path))

    def facts(self) -> ModelFacts:
        """What a method's checks and planned counts need to know of the model."""
        return ModelFacts(self.vision_layers, self.layers, self.grid, math.ceil(self.grid / 2))

    def describe(self) -> str:
        return (
            f"SigLIP {self.vision_hidden}/{self.vision_mlp}/{self.vision_heads}h x{self.vision_layers} layers, "
            f"{self.encoder_tokens} tokens/frame -> {self.pooled_tokens} pooled; projector "
            f"{self.vision_hidden}->{self.hidden}->{self.hidden}; Qwen2 {self.hidden}/{self.mlp} x{self.layers} "
            f"layers, {self.heads} heads, {self.kv_heads} KV heads, head dim {self.head_dim}, vocab {self.vocab}"
        )


def _linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def patch_embedding_flops(shapes: ModelShapes, frames: int) -> int:
    """The patch convolution: ``2 * T * S_v * (C * p * p) * D_v``."""
    return _linear(frames * shapes.encoder_tokens, shapes.channels * shapes.patch_size**2, shapes.vision_hidden)


def encoder_layer_flops(
    shapes: ModelShapes, frames: int, tokens: int | None = None, mlp_tokens: int | None = None
) -> int:
    """One SigLIP layer on ``frames`` frames of ``tokens`` tokens each (default: all ``S_v`` patches): q, k, v,
    out projections, attention (full square), 2-matrix MLP. ``mlp_tokens``: tokens per frame entering the MLP
    when a merge between the attention residual and the MLP (ToMe) left fewer (default ``tokens``)."""
    tokens = shapes.encoder_tokens if tokens is None else tokens
    mlp_tokens = tokens if mlp_tokens is None else mlp_tokens
    rows = frames * tokens
    d = shapes.vision_hidden
    projections = 4 * _linear(rows, d, d)
    attention = 2 * 2 * frames * tokens * tokens * d  # QK^T and AV, all heads
    mlp = 2 * _linear(frames * mlp_tokens, d, shapes.vision_mlp)
    return projections + attention + mlp


def vision_encoder_flops(
    shapes: ModelShapes,
    frames_per_layer: Sequence[int],
    prune_layers: Sequence[int] = (),
    tokens_per_layer: Sequence[int] | None = None,
    tokens_out: int | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """Patch embedding + each layer on its own frame count and tokens per frame.

    Args:
        frames_per_layer: frames each layer processed (frames merge AFTER a layer: EarlyTom).
        prune_layers: layers after which frames merge (only splits the ``blocks``).
        tokens_per_layer: tokens per frame entering each layer (default: ``S_v`` everywhere). Fewer tokens
            entering layer ``i + 1`` than layer ``i`` means layer ``i`` merged between its attention and its MLP
            (ToMe, the only place a method shrinks tokens inside the encoder): its MLP runs on the fewer.
        tokens_out: tokens per frame leaving the last layer (default: the last layer's input count).
    Returns ``(total, blocks)``: ``blocks`` splits the layers at the prune layers (``layers`` inclusive,
    the frames they ran on, their FLOPs; with ``tokens_per_layer`` also the tokens); the patch embedding is
    its own first block.
    """
    frames_per_layer = list(frames_per_layer)
    if len(frames_per_layer) != shapes.vision_layers:
        raise ValueError(
            f"frames_per_layer needs one entry per encoder layer that runs ({shapes.vision_layers}), "
            f"got {len(frames_per_layer)}"
        )
    given_tokens = tokens_per_layer is not None
    tokens = list(tokens_per_layer) if given_tokens else [shapes.encoder_tokens] * len(frames_per_layer)
    if len(tokens) != len(frames_per_layer):
        raise ValueError(
            f"tokens_per_layer needs one entry per encoder layer ({len(frames_per_layer)}), got {len(tokens)}"
        )
    after = tokens[1:] + [tokens[-1] if tokens_out is None else tokens_out]
    embed = patch_embedding_flops(shapes, frames_per_layer[0])
    blocks: list[dict[str, Any]] = [{"layers": "patch embedding", "frames": frames_per_layer[0], "flops": embed}]
    cuts = sorted({0, len(frames_per_layer)} | {p + 1 for p in prune_layers if p + 1 < len(frames_per_layer)})
    total = embed
    for start, stop in zip(cuts, cuts[1:]):
        counts = frames_per_layer[start:stop]
        flops = sum(
            encoder_layer_flops(shapes, frames_per_layer[i], tokens[i], min(tokens[i], after[i]))
            for i in range(start, stop)
        )
        frames = counts[0] if len(set(counts)) == 1 else counts
        block: dict[str, Any] = {"layers": f"{start}-{stop - 1}", "frames": frames, "flops": flops}
        if given_tokens:
            block_tokens = tokens[start:stop]
            block["tokens"] = block_tokens[0] if len(set(block_tokens)) == 1 else block_tokens
        blocks.append(block)
        total += flops
    return total, blocks


def projector_pooling_flops(shapes: ModelShapes, frames_out: int, tokens_out: int | None = None) -> int:
    """Projector (linear, GELU, linear) on all tokens of the frames leaving the encoder (``tokens_out`` per
    frame, default all ``S_v``).

    The bilinear 2x2 pooling that follows is elementwise (not counted).
    """
    rows = frames_out * (shapes.encoder_tokens if tokens_out is None else tokens_out)
    return _linear(rows, shapes.vision_hidden, shapes.hidden) + _linear(rows, shapes.hidden, shapes.hidden)


def frame_similarity_flops(shapes: ModelShapes, frames: int, max_window: int | None = None) -> int:
    """EarlyTom's frame similarities on ``frames`` frames: the blocks :func:`frame_similarity` multiplies.

    With ``max_window`` only the pairs less than ``max_window`` frames apart are computed, a block of frames
    against itself and the block before (:func:`~earlytom_eval.compression.temporal.similarity_blocks`);
    without it, the whole ``[T, T]`` matrix, ``2 T^2 S_v D_v``.
    """
    offset = frames - 1 if max_window is None else similarity_offset(max_window)
    pairs = sum((stop - start) * (stop - start + before) for start, stop, before in similarity_blocks(frames, offset))
    return 2 * pairs * shapes.encoder_tokens * shapes.vision_hidden


def received_attention_flops(shapes: ModelShapes, frames: int, tokens: int | None = None) -> int:
    """QK^T over all heads of one layer (``2 T S^2 D_v``) on ``frames`` frames of ``tokens`` tokens (default
    ``S_v``); the queries and keys are the layer's own (captured while it runs, counted in the encoder) and
    the softmax and sums are elementwise."""
    tokens = shapes.encoder_tokens if tokens is None else tokens
    return 2 * frames * tokens * tokens * shapes.vision_hidden


def inner_merge_flops(shapes: ModelShapes, visual_tokens: int, prompt_tokens: int, ratio: float) -> dict[str, int]:
    """Stage 3's own work at layer k: the last prompt token's query (q projection) against the
    layer's ``prompt_tokens`` cached keys, and the cosine similarity of the ``Nv - keep`` merged visual tokens
    to the kept ones (only the tokens that merge are scored)."""
    keep = inner_keep_count(visual_tokens, ratio)
    q_width = shapes.heads * shapes.head_dim
    return {
        "inner_scores": _linear(1, shapes.hidden, q_width) + 2 * prompt_tokens * q_width,
        "inner_assign": 2 * (visual_tokens - keep) * keep * shapes.hidden,
    }


def stage3_tokens_per_layer(
    shapes: ModelShapes, config: CompressionConfig, prompt_tokens: int, visual_tokens: int
) -> list[int]:
    """Tokens per LLM layer: ``prompt_tokens`` everywhere, or with stage 3 fewer from layer k on
    (``Nv - round(Nv (1 - r))`` visual tokens merged away, newline included in the span)."""
    if not config.merges_in_llm:
        return [prompt_tokens] * shapes.layers
    after = prompt_tokens - visual_tokens + inner_keep_count(visual_tokens, config.inner_ratio)
    k = config.inner_layer
    return [prompt_tokens] * k + [after] * (shapes.layers - k)


def compression_flops(
    shapes: ModelShapes,
    config: CompressionConfig,
    schedule: FrameSchedule,
    visual_tokens: int | None = None,
    prompt_tokens: int | None = None,
) -> tuple[int, dict[str, int]]:
    """FLOPs of the compression code itself, from the frame schedule (and, for stage 3, the token counts).

    EarlyTom, per prune layer ``l`` (``T_l`` frames in, ``T_l'`` out): one similarity on ``T_l`` frames;
    at the last prune layer also the received attention of that layer's input (``T_l`` frames) and the
    re-segmentation similarity on the ``T_l'`` merged frames. With no prune layers (post-encoder ablation)
    attention and one similarity at the last encoder layer. The token selection is top-k / argmax
    (not counted); DPC-KNN contextual tokens (``D > 0``, off in every shipped config) are not counted.
    Stage 3 (``inner_layer`` set) adds :func:`inner_merge_flops`. Returns ``(total, parts)``.
    """
    parts = earlytom_compression_parts(shapes, config, schedule) if config.compresses else {}
    if config.merges_in_llm:
        if visual_tokens is None or prompt_tokens is None:
            raise ValueError("stage 3's FLOPs need the visual and prompt token counts")
        parts.update(inner_merge_flops(shapes, visual_tokens, prompt_tokens, config.inner_ratio))
    return sum(parts.values()), parts


def earlytom_compression_parts(
    shapes: ModelShapes, config: CompressionConfig, schedule: FrameSchedule
) -> dict[str, int]:
    """EarlyTom's work inside the encoder (see :func:`compression_flops`): ``frame_similarity`` and
    ``received_attention``."""
    fpl = schedule.frames_per_layer
    parts = {"frame_similarity": 0, "received_attention": 0}
    if not config.prune_layers:
        last = len(fpl) - 1
        parts["received_attention"] += received_attention_flops(shapes, fpl[last])
        parts["frame_similarity"] += frame_similarity_flops(shapes, fpl[last], config.max_window)
    else:
        for layer in config.prune_layers:
            parts["frame_similarity"] += frame_similarity_flops(shapes, fpl[layer], config.max_window)
        last = config.prune_layers[-1]
        after = fpl[last + 1] if last + 1 < len(fpl) else schedule.frames_out
        parts["received_attention"] += received_attention_flops(shapes, fpl[last])
        parts["frame_similarity"] += frame_similarity_flops(shapes, after, config.max_window)
    return parts


def _attention_pairs(queries: int, keys: int, attention: str) -> int:
    """Query-key pairs: all of them (square), or the causal triangle for the last ``queries`` of ``keys``."""
    if attention == "square":
        return queries * keys
    if attention == "causal":
        first = keys - queries + 1
        return (first + keys) * queries // 2
    raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")


def llm_layer_flops(shapes: ModelShapes, queries: int, keys: int | None = None, attention: str = "square") -> int:
    """One Qwen2 decoder layer on ``queries`` tokens attending to ``keys`` tokens (default: the same).

    q and o projections ``D x H*hd``, k and v ``D x KV*hd`` (GQA), attention ``4 * pairs * H * hd``,
    MLP gate, up (``D x I``) and down (``I x D``).
    """
    keys = queries if keys is None else keys
    d, q_width, kv_width = shapes.hidden, shapes.heads * shapes.head_dim, shapes.kv_heads * shapes.head_dim
    projections = 2 * _linear(queries, d, q_width) + 2 * _linear(queries, d, kv_width)
    attn = 4 * _attention_pairs(queries, keys, attention) * q_width
    mlp = 3 * _linear(queries, d, shapes.mlp)
    return projections + attn + mlp


def llm_prefill_flops(
    shapes: ModelShapes,
    tokens_per_layer: int | Sequence[int],
    attention: str = "square",
    logits_tokens: int = 1,
) -> tuple[int, list[int]]:
    """The LLM prefill: each decoder layer on its own token count, and the LM head on the last token.

    Args:
        tokens_per_layer: one count per decoder layer, or one int for all (plain prefill). With token
            merging inside the LLM (stage 3) the layers from k on get fewer tokens; each layer is
            counted as its tokens attending to each other.
        attention: ``square`` (FlopCounterMode and the reference count) or ``causal``.
        logits_tokens: positions the LM head runs on (1: only the last prompt token).
    Returns:
        ``(total, per_layer)``.
    """
    counts = _per_layer(tokens_per_layer, shapes.layers, "tokens_per_layer")
    per_layer = [llm_layer_flops(shapes, n, n, attention) for n in counts]
    total = sum(per_layer) + _linear(logits_tokens, shapes.hidden, shapes.vocab)
    return total, per_layer


def decode_step_flops(shapes: ModelShapes, context_per_layer: int | Sequence[int]) -> int:
    """One greedy decode step: one new token per layer attending to its ``context`` (cached + new) tokens,
    and the LM head."""
    contexts = _per_layer(context_per_layer, shapes.layers, "context_per_layer")
    layers = sum(llm_layer_flops(shapes, 1, c, "square") for c in contexts)
    return layers + _linear(1, shapes.hidden, shapes.vocab)


def reference_llm_macs(shapes: ModelShapes, tokens: int) -> int:
    """The reference's hand formula, LLM only: ``layers * (4 n d^2 + 2 n^2 d + 2 n d m)`` multiply-adds.

    (No GQA, two MLP matrices, no text tokens; 40.8e12 for n = 32 x 196 on Qwen2-7B.)
    """
    n, d, m = tokens, shapes.hidden, shapes.mlp
    return shapes.layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)


def _per_layer(value: int | Sequence[int], layers: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * layers
    counts = [int(v) for v in value]
    if len(counts) != layers:
        raise ValueError(f"{name} needs one entry per decoder layer ({layers}), got {len(counts)}")
    return counts


def visual_token_count(shapes: ModelShapes, config: CompressionConfig, schedule: FrameSchedule) -> int:
    """Visual tokens sent to the LLM (newline included) by the spatial selection for this schedule."""
    per_frame = shapes.pooled_tokens
    if not config.compresses:
        return schedule.frames_in * per_frame + 1
    frames = schedule.frames_out
    rho = effective_retention(config.retention, schedule.frames_in, frames)
    static = 0
    if schedule.segments is not None:
        static = sum(max(0, e - s - 1) for s, e in schedule.segments)
    dynamic = frames - static
    return dynamic * dynamic_token_count(per_frame, rho) + static * static_token_count(per_frame, rho) + 1
