"""Exact FLOP accounting per pipeline stage, and the ``earlytom-eval flops`` command.

Basis (stated in every output): **real FLOPs, 2 per multiply-add**, of the matrix products the
pipeline actually runs (linear layers, the patch convolution, attention scores and weighted sums,
the frame-similarity products and the received-attention recomputation of EarlyTom), from the token
and frame counts that actually occurred. That is exactly what ``torch.utils.flop_counter.FlopCounterMode``
counts (tested per stage within 1%); elementwise work (norms, activations, softmax, bilinear pooling,
RoPE rotation, frame merging, top-k) is not counted, as there. Qwen2's grouped-query attention
(fewer K/V heads) and its 3-matrix MLP (gate, up, down) are included; bias additions are not counted.
Attention in the LLM prefill is counted as a full square by default (what FlopCounterMode and the
reference's hand formula do); ``attention="causal"`` counts only the causal triangle
(what a causal flash kernel computes).

Stages (keys of :attr:`StageFlops.stages`):

* ``vision_encoder``: the patch embedding and every SigLIP layer that runs, each on the frames it saw;
* ``compression``: our selection/merging code: frame similarities and the received attention at one
  encoder layer (stage 1-2), and with stage 3 the last prompt token's attention row at LLM layer k-1
  and the visual tokens' similarity to the kept ones;
* ``projector_pooling``: the 2-layer projector on the frames leaving the encoder (pooling is elementwise);
* ``llm_prefill``: every decoder layer on its own token count (a list, one per layer: stage 3 gives
  the layers from k on fewer tokens) and the LM head on the last token;
* ``decode_step``: one greedy step with a KV cache of the prompt (not part of the prefill total).

Nothing here needs weights: shapes come from a preset or a checkpoint's ``config.json``. The frames
each encoder layer processes depend on the clip (and the weights): they come from a measured run, an
explicit ``--frames-per-layer``, or, by default, the two bounds of the algorithm (no frame merged; the
most merging the coarse window allows).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compression.config import CompressionConfig

__all__ = [
    "ATTENTION_MODES",
    "STAGES",
    "FrameSchedule",
    "ModelShapes",
    "StageFlopCounter",
    "StageFlops",
    "compression_flops",
    "inner_merge_flops",
    "count_stage_flops",
    "decode_step_flops",
    "encoder_layer_flops",
    "llm_layer_flops",
    "llm_prefill_flops",
    "max_merge_schedule",
    "no_merge_schedule",
    "parse_frames_per_layer",
    "projector_pooling_flops",
    "reference_llm_macs",
    "schedule_from_encoding",
    "stage3_tokens_per_layer",
    "vision_encoder_flops",
    "visual_token_count",
]

#: Stage keys, in pipeline order. ``decode_step`` is reported beside the prefill, not summed into it.
STAGES = ("vision_encoder", "compression", "projector_pooling", "llm_prefill", "decode_step")
PREFILL_STAGES = ("vision_encoder", "compression", "projector_pooling", "llm_prefill")
ATTENTION_MODES = ("square", "causal")

BASIS = (
    "real FLOPs (2 per multiply-add) of the matrix products that run: linear layers, patch convolution, "
    "attention QK^T and AV (GQA, per query head), 3-matrix MLP, EarlyTom's similarity and received-attention "
    "products; elementwise ops (norms, activations, softmax, pooling, RoPE rotation, merging) not counted: "
    "the torch.utils.flop_counter.FlopCounterMode basis"
)

Segment = tuple[int, int]


# ------------------------------------------------------------------------------------------ shapes
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
        from ..models.presets import preset_config

        return cls.from_hf_config(preset_config(preset), name=preset)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ModelShapes:
        from transformers import AutoConfig

        return cls.from_hf_config(AutoConfig.from_pretrained(str(path)), name=str(path))

    def describe(self) -> str:
        return (
            f"SigLIP {self.vision_hidden}/{self.vision_mlp}/{self.vision_heads}h x{self.vision_layers} layers, "
            f"{self.encoder_tokens} tokens/frame -> {self.pooled_tokens} pooled; projector "
            f"{self.vision_hidden}->{self.hidden}->{self.hidden}; Qwen2 {self.hidden}/{self.mlp} x{self.layers} "
            f"layers, {self.heads} heads, {self.kv_heads} KV heads, head dim {self.head_dim}, vocab {self.vocab}"
        )


# ---------------------------------------------------------------------------------- the formulas
def _linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def patch_embedding_flops(shapes: ModelShapes, frames: int) -> int:
    """The patch convolution: ``2 * T * S_v * (C * p * p) * D_v``."""
    return _linear(frames * shapes.encoder_tokens, shapes.channels * shapes.patch_size**2, shapes.vision_hidden)


def encoder_layer_flops(shapes: ModelShapes, frames: int) -> int:
    """One SigLIP layer on ``frames`` frames: q, k, v, out projections, attention (full square), 2-matrix MLP."""
    rows = frames * shapes.encoder_tokens
    d = shapes.vision_hidden
    projections = 4 * _linear(rows, d, d)
    attention = 2 * 2 * frames * shapes.encoder_tokens * shapes.encoder_tokens * d  # QK^T and AV, all heads
    mlp = 2 * _linear(rows, d, shapes.vision_mlp)
    return projections + attention + mlp


def vision_encoder_flops(
    shapes: ModelShapes, frames_per_layer: Sequence[int], prune_layers: Sequence[int] = ()
) -> tuple[int, list[dict[str, Any]]]:
    """Patch embedding + each layer on its own frame count.

    Returns ``(total, blocks)``: ``blocks`` splits the layers at the prune layers (``layers`` inclusive,
    the frames they ran on, their FLOPs); the patch embedding is its own first block.
    """
    frames_per_layer = list(frames_per_layer)
    if len(frames_per_layer) != shapes.vision_layers:
        raise ValueError(
            f"frames_per_layer needs one entry per encoder layer that runs ({shapes.vision_layers}), "
            f"got {len(frames_per_layer)}"
        )
    embed = patch_embedding_flops(shapes, frames_per_layer[0])
    blocks: list[dict[str, Any]] = [{"layers": "patch embedding", "frames": frames_per_layer[0], "flops": embed}]
    cuts = sorted({0, len(frames_per_layer)} | {p + 1 for p in prune_layers if p + 1 < len(frames_per_layer)})
    total = embed
    for start, stop in zip(cuts, cuts[1:]):
        counts = frames_per_layer[start:stop]
        flops = sum(encoder_layer_flops(shapes, t) for t in counts)
        frames = counts[0] if len(set(counts)) == 1 else counts
        blocks.append({"layers": f"{start}-{stop - 1}", "frames": frames, "flops": flops})
        total += flops
    return total, blocks


def projector_pooling_flops(shapes: ModelShapes, frames_out: int) -> int:
    """Projector (linear, GELU, linear) on all S_v tokens of the frames leaving the encoder.

    The bilinear 2x2 pooling that follows is elementwise (not counted).
    """
    rows = frames_out * shapes.encoder_tokens
    return _linear(rows, shapes.vision_hidden, shapes.hidden) + _linear(rows, shapes.hidden, shapes.hidden)


def frame_similarity_flops(shapes: ModelShapes, frames: int) -> int:
    """EarlyTom's ``[T, T]`` frame similarity, one product ``[T, S_v*D_v] @ [S_v*D_v, T]``."""
    return 2 * frames * frames * shapes.encoder_tokens * shapes.vision_hidden


def received_attention_flops(shapes: ModelShapes, frames: int) -> int:
    """Recomputing one layer's queries and keys, and QK^T over all heads (the softmax is elementwise)."""
    rows = frames * shapes.encoder_tokens
    d = shapes.vision_hidden
    return 2 * _linear(rows, d, d) + 2 * frames * shapes.encoder_tokens * shapes.encoder_tokens * d


def inner_merge_flops(shapes: ModelShapes, visual_tokens: int, prompt_tokens: int, ratio: float) -> dict[str, int]:
    """Stage 3's own work at layer k: the last prompt token's query (q projection) against the
    layer's ``prompt_tokens`` cached keys, and the cosine similarity of the ``Nv`` visual tokens to the kept ones."""
    from ..compression.inner import inner_keep_count

    keep = inner_keep_count(visual_tokens, ratio)
    q_width = shapes.heads * shapes.head_dim
    return {
        "inner_scores": _linear(1, shapes.hidden, q_width) + 2 * prompt_tokens * q_width,
        "inner_assign": 2 * visual_tokens * keep * shapes.hidden,
    }


def stage3_tokens_per_layer(
    shapes: ModelShapes, config: CompressionConfig, prompt_tokens: int, visual_tokens: int
) -> list[int]:
    """Tokens per LLM layer: ``prompt_tokens`` everywhere, or with stage 3 fewer from layer k on
    (``Nv - round(Nv (1 - r))`` visual tokens merged away, newline included in the span)."""
    if not config.merges_in_llm:
        return [prompt_tokens] * shapes.layers
    from ..compression.inner import inner_keep_count

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
    parts: dict[str, int] = {}
    if config.compresses:
        fpl = schedule.frames_per_layer
        parts = {"frame_similarity": 0, "received_attention": 0}
        if not config.prune_layers:
            last = len(fpl) - 1
            parts["received_attention"] += received_attention_flops(shapes, fpl[last])
            parts["frame_similarity"] += frame_similarity_flops(shapes, fpl[last])
        else:
            for layer in config.prune_layers:
                parts["frame_similarity"] += frame_similarity_flops(shapes, fpl[layer])
            last = config.prune_layers[-1]
            after = fpl[last + 1] if last + 1 < len(fpl) else schedule.frames_out
            parts["received_attention"] += received_attention_flops(shapes, fpl[last])
            parts["frame_similarity"] += frame_similarity_flops(shapes, after)
    if config.merges_in_llm:
        if visual_tokens is None or prompt_tokens is None:
            raise ValueError("stage 3's FLOPs need the visual and prompt token counts")
        parts.update(inner_merge_flops(shapes, visual_tokens, prompt_tokens, config.inner_ratio))
    return sum(parts.values()), parts


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


# ------------------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class FrameSchedule:
    """Frames each encoder layer processed, frames leaving the encoder, and the final segments.

    ``segments`` (post-merge frame indices) decide which frames are static in the spatial selection;
    None when unknown (the token count then takes every frame as dynamic).
    """

    frames_per_layer: tuple[int, ...]
    frames_out: int
    segments: tuple[Segment, ...] | None = None
    source: str = ""

    @property
    def frames_in(self) -> int:
        return self.frames_per_layer[0]

    def compact(self) -> str:
        """Run-length form, e.g. ``32x11 20x11 12x2 8x2``."""
        runs: list[list[int]] = []
        for value in self.frames_per_layer:
            if runs and runs[-1][0] == value:
                runs[-1][1] += 1
            else:
                runs.append([value, 1])
        return " ".join(f"{v}x{n}" for v, n in runs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "frames_per_layer": list(self.frames_per_layer),
            "frames_out": self.frames_out,
            "segments": [list(s) for s in self.segments] if self.segments is not None else None,
        }


def schedule_from_encoding(encoding: Any, source: str = "measured") -> FrameSchedule:
    """From a :class:`~earlytom_eval.llava_ov.VideoEncoding` (what actually ran)."""
    return FrameSchedule(
        frames_per_layer=tuple(encoding.frames_per_layer),
        frames_out=encoding.frames_out,
        segments=tuple(tuple(s) for s in encoding.segments) if encoding.segments is not None else None,
        source=source,
    )


def no_merge_schedule(config: CompressionConfig, frames: int, layers: int) -> FrameSchedule:
    """Upper bound for any clip: no frame merges (every frame its own segment, all frames dynamic)."""
    segments = tuple((i, i) for i in range(frames)) if config.compresses else None
    return FrameSchedule((frames,) * layers, frames, segments, source="bound: no frame merged (upper bound)")


def _window_segments(frames: int, window: int) -> list[Segment]:
    return [(s, min(s + window, frames) - 1) for s in range(0, frames, window)]


def _max_merge_out(length: int) -> int:
    """Fewest frames a coarse segment of ``length`` frames can leave: ends kept, middle pairs merged.

    With L middle frames every pair can merge (L // 2 outputs); an odd last middle frame is dropped by the
    reference's loop (its quirk), so 5 -> 3, 4 -> 3, 3 -> 3.
    """
    if length <= 2:
        return length
    return 2 + max(1, (length - 2) // 2)


def max_merge_schedule(config: CompressionConfig, frames: int, layers: int) -> FrameSchedule:
    """Lower bound for any clip: the most merging the algorithm allows.

    The coarse segmentation cuts a segment at ``max_window - 1`` frames at the latest; with every
    similarity above the thresholds each segment keeps only ``_max_merge_out`` frames. The final
    re-segmentation then also tiles the merged frames by that window.
    """
    if not config.compresses:
        return FrameSchedule((frames,) * layers, frames, None, source="full")
    window = config.max_window - 1
    counts = []
    current = frames
    out_after: dict[int, int] = {}
    for layer in config.prune_layers:
        current = sum(_max_merge_out(e - s + 1) for s, e in _window_segments(current, window))
        out_after[layer] = current
    current = frames
    for layer in range(layers):
        counts.append(current)
        if layer in out_after:
            current = out_after[layer]
    segments = tuple(_window_segments(current, window))
    return FrameSchedule(
        tuple(counts), current, segments, source=f"bound: most merging window {config.max_window} allows (lower bound)"
    )


def parse_frames_per_layer(
    text: str, config: CompressionConfig, frames: int, layers: int
) -> FrameSchedule:
    """An explicit schedule: one count per encoder layer (``32x11,20x11,12x2,8x2`` run-length allowed),
    or one count per prune layer of the config (frames left after each, e.g. ``20,12,8``)."""
    values: list[int] = []
    for item in text.replace(";", ",").replace(" ", ",").split(","):
        item = item.strip()
        if not item:
            continue
        count, _, repeat = item.partition("x")
        try:
            values.extend([int(count)] * (int(repeat) if repeat else 1))
        except ValueError:
            raise ValueError(f"bad --frames-per-layer item {item!r} (use counts like 32x11,20x11 or 20,12,8)") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"--frames-per-layer needs positive frame counts, got {text!r}")
    if len(values) == layers:
        per_layer = values
        last = config.prune_layers[-1] if config.prune_layers else layers - 1
        frames_out = per_layer[-1] if last < layers - 1 else per_layer[-1]
    elif config.prune_layers and len(values) == len(config.prune_layers):
        per_layer, current = [], frames
        after = dict(zip(config.prune_layers, values))
        for layer in range(layers):
            per_layer.append(current)
            current = after.get(layer, current)
        frames_out = current
    else:
        raise ValueError(
            f"--frames-per-layer for '{config.name}' needs {layers} per-layer counts or "
            f"{len(config.prune_layers)} counts (frames after each prune layer), got {len(values)}"
        )
    if per_layer[0] != frames:
        raise ValueError(f"--frames-per-layer starts at {per_layer[0]} frames but the clip has {frames}")
    if any(b > a for a, b in zip(per_layer, per_layer[1:])) or frames_out > per_layer[-1]:
        raise ValueError(f"--frames-per-layer must never increase: {per_layer}")
    return FrameSchedule(tuple(per_layer), frames_out, None, source=f"given: {text}")


def visual_token_count(shapes: ModelShapes, config: CompressionConfig, schedule: FrameSchedule) -> int:
    """Visual tokens sent to the LLM (newline included) by the spatial selection for this schedule."""
    from ..compression.spatial import dynamic_token_count, effective_retention, static_token_count

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


# -------------------------------------------------------------------------------------- the total
@dataclass
class StageFlops:
    """FLOPs per stage for one config and the token counts they came from."""

    stages: dict[str, int]
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def total_prefill(self) -> int:
        """Preprocessed frames to first token: every stage but ``decode_step``."""
        return sum(self.stages[s] for s in PREFILL_STAGES)


def count_stage_flops(
    shapes: ModelShapes,
    config: CompressionConfig,
    schedule: FrameSchedule,
    prompt_tokens: int,
    visual_tokens: int,
    *,
    llm_tokens_per_layer: Sequence[int] | None = None,
    decode_context_per_layer: Sequence[int] | None = None,
    attention: str = "square",
) -> StageFlops:
    """Per-stage FLOPs of one prompt with one video.

    Args:
        schedule: frames per encoder layer (and out), e.g. :func:`schedule_from_encoding`.
        prompt_tokens: tokens entering the LLM (text + visual, newline included).
        visual_tokens: the video's tokens in the prompt (newline included).
        llm_tokens_per_layer: tokens per decoder layer as they occurred (e.g. ``LlmState.tokens_per_layer``);
            default: ``prompt_tokens`` everywhere, or stage 3's counts when the config merges in the LLM.
        decode_context_per_layer: keys each layer attends to in the first decode step (default: its
            prefill tokens + 1).
    """
    tokens = (
        list(llm_tokens_per_layer)
        if llm_tokens_per_layer is not None
        else stage3_tokens_per_layer(shapes, config, prompt_tokens, visual_tokens)
    )
    contexts = (
        list(decode_context_per_layer) if decode_context_per_layer is not None else [n + 1 for n in tokens]
    )
    prune = config.prune_layers if config.compresses else ()
    encoder, blocks = vision_encoder_flops(shapes, schedule.frames_per_layer, prune)
    compression, parts = compression_flops(shapes, config, schedule, visual_tokens, prompt_tokens)
    llm, _ = llm_prefill_flops(shapes, tokens, attention)
    stages = {
        "vision_encoder": encoder,
        "compression": compression,
        "projector_pooling": projector_pooling_flops(shapes, schedule.frames_out),
        "llm_prefill": llm,
        "decode_step": decode_step_flops(shapes, contexts),
    }
    detail = {
        "vision_encoder_blocks": blocks,
        "compression_parts": parts,
        "llm_tokens_per_layer": tokens,
        "attention": attention,
    }
    return StageFlops(stages, detail)


# ------------------------------------------------------------------ measuring with FlopCounterMode
#: SDPA kernels whose FLOPs a torch version may not count (torch 2.14.1 counts 0 for the CPU kernel).
_SDPA_KERNELS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
)


def _sdpa_flops(query_shape, key_shape, value_shape, *args: Any, **kwargs: Any) -> int:
    """FLOPs of one fused attention call: ``Q K^T`` and ``P V`` as two batched matmuls (2 per multiply-add).

    Shapes ``[B, H, Sq, D]``, ``[B, H_kv, Sk, D]``, ``[B, H_kv, Sk, Dv]``; grouped KV heads are counted per
    query head, as the matmuls of the unfused computation would be.
    """
    *batch, queries, dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    rows = math.prod(batch) * queries
    return 2 * rows * keys * dim + 2 * rows * keys * value_dim


def attention_flop_counter():
    """A ``FlopCounterMode`` that counts every fused SDPA kernel as its two matmuls.

    torch's own registrations cover the fused kernels only in some versions and on some devices; with
    these, the count does not depend on which kernel SDPA dispatched to.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {getattr(torch.ops.aten, name): _sdpa_flops for name in _SDPA_KERNELS if hasattr(torch.ops.aten, name)}
    return FlopCounterMode(display=False, custom_mapping=mapping)


class StageFlopCounter:
    """A stand-in for :class:`~earlytom_eval.timing.StageTimer` that counts FLOPs per stage instead.

    Pass it as ``timer=`` to ``encode_video`` / ``prepare_inputs`` / ``prefill``: each stage runs under its
    own :func:`attention_flop_counter`, so the counts are the profiler's, per stage, on the real pipeline.
    ``flops`` maps stage -> FLOPs.
    """

    def __init__(self) -> None:
        self.flops: dict[str, int] = {}
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        counter = attention_flop_counter()
        with counter:
            yield
        self.flops[name] = self.flops.get(name, 0) + int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------ output
def _tera(value: float) -> str:
    return f"{value / 1e12:.3f}"


def format_flops_table(entries: Sequence[dict[str, Any]], header: Sequence[str] = ()) -> str:
    """The terminal table: one row per config, TFLOPs per stage, totals and ratios against ``full``."""
    lines = list(header)
    cols = ["config", "frames/layer", "vis.tok", "encoder", "compress", "proj+pool", "LLM prefill",
            "prefill total", "vs full", "decode step", "ref. formula"]
    rows = []
    full = next((e for e in entries if e.get("method") == "full"), None)
    for e in entries:
        f = e["flops"]
        ratio = f"{e['total_prefill_flops'] / full['total_prefill_flops']:.1%}" if full else "-"
        rows.append([
            e["name"],
            e.get("schedule_compact", ""),
            str(e["visual_tokens"]),
            _tera(f["vision_encoder"]),
            _tera(f["compression"]),
            _tera(f["projector_pooling"]),
            _tera(f["llm_prefill"]),
            _tera(e["total_prefill_flops"]),
            ratio,
            f"{f['decode_step'] / 1e9:.2f} G",
            f"{e['reference_llm_macs'] / 1e12:.2f} T MAC",
        ])
    lines.append("TFLOPs per stage (decode step in GFLOPs; 'vs full' = total prefill FLOPs / full's)")
    lines.extend(text_table(cols, rows, left=(0, 1)))
    return "\n".join(lines)


def text_table(cols: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> list[str]:
    """Aligned text columns (``left`` columns left-aligned, the others right-aligned), header rule included."""
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]

    def line(cells: Sequence[str]) -> str:
        padded = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded)

    return [line(cols), line(["-" * w for w in widths]), *(line(r) for r in rows)]


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
        "visual_tokens": visual,
        "prompt_tokens": prompt,
        "flops_detail": counted.detail,
        "reference_llm_macs": reference_llm_macs(shapes, visual - 1),
    }


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


def environment_info() -> dict[str, Any]:
    """Software versions and the host, for every JSON this project writes."""
    import os
    import platform

    info: dict[str, Any] = {"python": platform.python_version(), "host": platform.node(), "cpu": _cpu_name(),
                            "cpu_cores": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        with open("/proc/meminfo") as handle:
            kb = int(handle.readline().split()[1])
        info["ram_gib"] = round(kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def _cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def text_token_count(processor: Any, question: str) -> int:
    """Text tokens of a one-video chat prompt (the ``<video>`` placeholder not counted)."""
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    return len(processor.tokenizer(prompt)["input_ids"]) - 1


# --------------------------------------------------------------------------------------------- CLI
DEFAULT_QUESTION = "Describe what happens in the video."


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``earlytom-eval flops``."""
    from ..models.presets import PRESET_NAMES

    p = subparsers.add_parser(
        "flops",
        help="FLOPs per stage for each config (no GPU, no weights)",
        description="FLOPs per pipeline stage for each compression config, from the model's shapes. " + BASIS + ".",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=PRESET_NAMES, help="shapes of a preset (no weights needed)")
    src.add_argument("--pretrained", help="shapes from a checkpoint's config.json (hub id or directory)")
    p.add_argument("--configs", nargs="+", required=True, type=Path, help="compression config YAMLs")
    p.add_argument("--frames", type=int, default=None, help="frames per video (default: each config's num_frames)")
    clip = p.add_mutually_exclusive_group()
    clip.add_argument(
        "--video", type=Path,
        help="measure each EarlyTom config's frame schedule on this clip by running the vision encoder "
        "(the preset's random-initialised SigLIP, or the checkpoint's); minutes on CPU for 32 frames",
    )
    clip.add_argument("--synthetic", metavar="SHOTS",
                      help="as --video, on a generated clip, e.g. static:24,motion:16,static:24")
    p.add_argument("--synthetic-size", default="240x320", help="HxW of the generated clip (default 240x320)")
    p.add_argument("--synthetic-seed", type=int, default=0)
    p.add_argument("--synthetic-fps", type=float, default=8.0)
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


def _schedules_for(args: argparse.Namespace, shapes: ModelShapes, configs: list[CompressionConfig]):
    """Per config, a list of (label suffix, schedule, measured visual tokens or None)."""
    given: dict[str | None, str] = {}
    for item in args.frames_per_layer:
        name, sep, counts = item.partition("=")
        given[name.strip() if sep else None] = counts if sep else name
    measured: dict[str, Any] = {}
    if args.video is not None or args.synthetic is not None:
        measured = measure_schedules(args, configs)
    out = {}
    for cfg in configs:
        frames = cfg.num_frames
        if not cfg.compresses:
            out[cfg.name] = [("", FrameSchedule((frames,) * shapes.vision_layers, frames, None, "full"), None)]
        elif cfg.name in given or None in given:
            text = given.get(cfg.name, given.get(None))
            out[cfg.name] = [("", parse_frames_per_layer(text, cfg, frames, shapes.vision_layers), None)]
        elif cfg.name in measured:
            schedule, visual = measured[cfg.name]
            out[cfg.name] = [("", schedule, visual)]
        else:
            out[cfg.name] = [
                ("@no-merge", no_merge_schedule(cfg, frames, shapes.vision_layers), None),
                ("@max-merge", max_merge_schedule(cfg, frames, shapes.vision_layers), None),
            ]
    return out


def measure_schedules(args: argparse.Namespace, configs: list[CompressionConfig]) -> dict[str, Any]:
    """Run each EarlyTom config's encoder on the clip; return ``name -> (schedule, visual tokens)``."""
    import time

    import torch

    from .bench import load_clip

    earlytom = [c for c in configs if c.compresses]
    if not earlytom:
        return {}
    frames = {c.num_frames for c in earlytom}
    # Stage 3 acts inside the LLM only; the schedule model may have a 1-layer LLM, so it is off here.
    encoder_only = [c.replace(inner_layer=None, name=c.name) for c in earlytom]
    model = schedule_model(args.preset, args.pretrained, encoder_only[0], device=args.device, dtype=args.dtype,
                           seed=args.seed)
    weights = (f"the checkpoint's weights ({args.pretrained})" if args.pretrained
               else f"the '{args.preset}' preset's random-initialised SigLIP (seed {args.seed}; random weights "
               "do not merge frames as trained ones would)")
    out = {}
    clips = {n: load_clip(args, n) for n in frames}
    videos = {n: clip[0] for n, clip in clips.items()}
    clip_name = args.video.name if args.video is not None else f"generated clip '{args.synthetic}'"
    for cfg in encoder_only:
        start = time.perf_counter()
        wrapped = model.with_config(cfg)
        pixels = wrapped.preprocess_video(videos[cfg.num_frames].frames)
        with torch.inference_mode():
            encoding = wrapped.encode_video(pixels)
        source = f"measured: {clip_name}, {cfg.num_frames} frames, {weights}, {args.dtype} on {args.device}"
        out[cfg.name] = (schedule_from_encoding(encoding, source), encoding.visual_tokens)
        print(f"  schedule of {cfg.name}: {out[cfg.name][0].compact()} ({time.perf_counter() - start:.0f} s)",
              file=sys.stderr)
    return out


def schedule_model(
    preset: str | None, pretrained: str | None, config: CompressionConfig, *, device: str = "cpu",
    dtype: str = "bfloat16", seed: int = 0,
):
    """A model whose vision encoder decides the frame schedule.

    For a preset, only the vision tower matters: the real SigLIP shapes with a 1-layer, 64-wide LLM
    (seeded random initialisation), so no multi-GB language model is built. For a checkpoint, the
    whole model is loaded.
    """
    import torch

    from ..models.llava_ov import EarlyTomLlavaOnevision, load_model

    if pretrained:
        return load_model(pretrained, config, device=device, dtype=dtype)
    from transformers import LlavaOnevisionForConditionalGeneration

    from ..models.presets import build_processor, preset_config

    hf_config = preset_config(preset)
    text = hf_config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 64, 128, 1
    text.num_attention_heads, text.num_key_value_heads = 4, 2
    text.head_dim = 16
    text.layer_types = text.layer_types[:1]
    torch_dtype = getattr(torch, dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = LlavaOnevisionForConditionalGeneration._from_config(
                hf_config, dtype=torch_dtype, attn_implementation="sdpa"
            )
    return EarlyTomLlavaOnevision(model.eval(), build_processor(preset), config)


def _cmd_flops(args: argparse.Namespace) -> int:
    from ..compression.config import load_config

    configs = []
    for path in args.configs:
        overrides = {"num_frames": args.frames} if args.frames is not None else {}
        configs.append(load_config(path, **overrides))
    if args.preset:
        shapes = ModelShapes.from_preset(args.preset)
        from ..models.presets import build_processor

        processor = build_processor(args.preset) if args.text_tokens is None else None
    else:
        shapes = ModelShapes.from_pretrained(args.pretrained)
        if args.text_tokens is None:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(str(args.pretrained))
    for cfg in configs:
        cfg.check_encoder_depth(shapes.vision_layers)
    text_tokens = args.text_tokens if args.text_tokens is not None else text_token_count(processor, args.question)
    schedules = _schedules_for(args, shapes, configs)

    entries = []
    for cfg in configs:
        for suffix, schedule, visual in schedules[cfg.name]:
            entry = flops_entry(shapes, cfg, schedule, text_tokens, args.attention, visual_tokens=visual,
                                name=cfg.name + suffix)
            entries.append(entry)
    ratios = add_ratios(entries)
    env = environment_info()
    header = [
        f"computed on: {env.get('cpu')} ({env.get('cpu_cores')} cores), torch {env.get('torch')}, "
        f"transformers {env.get('transformers')} (FLOP counts do not depend on the machine; a measured schedule "
        "ran there)",
        f"model: {shapes.name} shapes: {shapes.describe()}",
        f"prompt: {text_tokens} text tokens + the visual tokens; attention in the LLM counted as "
        f"{'a full square' if args.attention == 'square' else 'the causal triangle'}",
        "basis: " + BASIS,
        "reference formula: the reference's LLM-only hand count, layers*(4nd^2+2n^2d+2ndm) multiply-adds "
        "(n = visual tokens without the newline; no GQA, 2 MLP matrices, no text)",
    ]
    sources = sorted({e["schedule"]["source"] for e in entries if e["method"] != "full"})
    header += [f"frame schedule: {s}" for s in sources]
    if any(e["name"].endswith("@no-merge") for e in entries):
        header.append(
            "no clip given (--video / --frames-per-layer): each EarlyTom config is shown at both bounds of its "
            "frame schedule; a real clip's FLOPs lie between them"
        )
    print(format_flops_table(entries, header))
    print()
    print("vision encoder by block (TFLOPs; frames each block ran on):")
    for e in entries:
        blocks = ", ".join(f"{b['layers']}: {b['frames']} fr {b['flops'] / 1e12:.3f}"
                           for b in e["flops_detail"]["vision_encoder_blocks"])
        print(f"  {e['name']}: {blocks}")
    if args.json:
        report = {
            "tool": "earlytom-eval flops",
            "command": " ".join(["earlytom-eval", *sys.argv[1:]]) if sys.argv else "",
            "basis": BASIS,
            "attention": args.attention,
            "model": {"source": f"preset {args.preset}" if args.preset else str(args.pretrained),
                      "shapes": shapes.__dict__},
            "text_tokens": text_tokens,
            "environment": env,
            "configs": entries,
            "ratios": ratios,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0
