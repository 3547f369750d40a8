"""The Qwen2 language model of LLaVA-OneVision, driven layer by layer (prefill and greedy decode steps).

This module knows transformers (the decoder layers, rotary embedding, ``create_causal_mask``,
``DynamicCache``) but does not fork the model file: it calls the model's own modules in the order
``Qwen2Model.forward`` does, which is what allows stage 3 to cut the sequence between two layers.

Layers are run in *groups* that share a 2-D attention mask over the tokens they hold in the cache.
Without stage 3 there is one group (all layers, the full sequence) and the result is exactly
transformers' forward. With stage 3 (layer k) there are two: layers ``< k`` keep the full sequence in
their cache, layers ``>= k`` the merged one; every token keeps its original position id, and new tokens
are numbered from the full length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..compression.inner import (
    InnerMergeDecision,
    inner_keep_count,
    last_query_attention,
    merge_into_kept,
    plan_inner_merge,
)
from ..timing import StageTimer
from . import compat

__all__ = ["InnerMerge", "LayerGroup", "LlmState", "decode_step", "prefill"]


@dataclass(frozen=True)
class InnerMerge:
    """Stage-3 settings: merge at layer ``layer`` (k), keeping ``round(Nv * (1 - ratio))`` visual tokens."""

    layer: int
    ratio: float
    mode: str = "fold"


@dataclass
class LayerGroup:
    """Layers ``start..stop-1``, the ``[B, L_g]`` mask of the tokens their cache holds (1 = real) and
    those tokens' ``[B, L_g]`` position ids (prompt tokens only; decoding appends to the mask)."""

    start: int
    stop: int
    mask: torch.Tensor
    positions: torch.Tensor


@dataclass
class LlmState:
    """Everything decoding needs after a prefill.

    Attributes:
        logits: ``[B, V]`` logits of the last position (or ``[B, L', V]`` with ``all_logits``).
        cache: the ``DynamicCache`` (its layers may hold different lengths).
        groups: the layer groups with their masks.
        next_positions: ``[B]`` position id of each row's next token (counted on the FULL sequence).
        decisions: stage-3 merge decisions per row (None without stage 3).
        tokens_per_layer: per row, the tokens each LLM layer processed during the prefill.
    """

    logits: torch.Tensor
    cache: Any
    groups: list[LayerGroup]
    next_positions: torch.Tensor
    decisions: list[InnerMergeDecision | None] | None
    tokens_per_layer: list[tuple[int, ...]]


def _language_model(model: Any) -> Any:
    return model.model.language_model


def _run_layers(
    lm: Any,
    hidden: torch.Tensor,
    mask2d: torch.Tensor,
    positions: torch.Tensor,
    cache: Any,
    start: int,
    stop: int,
    keep_input_of: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run layers ``start..stop-1`` as ``Qwen2Model.forward`` does; optionally return one layer's input."""
    mask = compat.causal_mask(lm.config, hidden, mask2d, cache, positions, start)
    position_embeddings = lm.rotary_emb(hidden, positions)
    kept_input = None
    for index in range(start, stop):
        if index == keep_input_of:
            kept_input = hidden
        hidden = compat.run_decoder_layer(lm.layers[index], hidden, mask, positions, cache, position_embeddings)
    return hidden, kept_input


def _last_token_scores(
    lm: Any, layer_index: int, layer_input: torch.Tensor, positions: torch.Tensor, cache: Any, mask2d: torch.Tensor
) -> torch.Tensor:
    """``[B, L]``: layer ``layer_index``'s attention of the last prompt token, mean over heads (one query row)."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    layer = lm.layers[layer_index]
    attn = layer.self_attn
    x = layer.input_layernorm(layer_input[:, -1:])
    query = attn.q_proj(x).view(x.shape[0], 1, -1, attn.head_dim).transpose(1, 2)  # [B, H, 1, d]
    cos, sin = lm.rotary_emb(x, positions[:, -1:])
    query, _ = apply_rotary_pos_emb(query, query, cos, sin)
    keys = compat.layer_keys(cache, layer_index)  # [B, H_kv, L, d], RoPE applied
    return last_query_attention(query[:, :, 0], keys, mask2d.bool(), attn.scaling)


def _merge_rows(
    hidden: torch.Tensor,
    mask2d: torch.Tensor,
    positions: torch.Tensor,
    visual_mask: torch.Tensor,
    scores: torch.Tensor | None,
    spec: InnerMerge,
    forced: list[InnerMergeDecision | None] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[InnerMergeDecision | None]]:
    """Merge each row's visual span and re-pad the shorter rows on the left.

    Returns ``(hidden [B, L', D], mask2d [B, L'], positions [B, L'], decisions)``.
    """
    rows, row_positions, decisions = [], [], []
    for b in range(hidden.shape[0]):
        real = mask2d[b].bool()
        span = (visual_mask[b] & real).nonzero().squeeze(1)
        row = hidden[b]
        keep = real.clone()
        decision = None
        if span.numel():
            if forced is not None:
                decision = forced[b]
            else:
                count = inner_keep_count(span.numel(), spec.ratio)
                decision = plan_inner_merge(scores[b, span], hidden[b, span], count)
            row = row.clone()
            row[span[decision.kept]] = merge_into_kept(hidden[b, span], decision, spec.mode)
            keep[span] = False
            keep[span[decision.kept]] = True
        index = keep.nonzero().squeeze(1)
        rows.append(row[index])
        row_positions.append(positions[b, index])
        decisions.append(decision)
    length = max(int(r.shape[0]) for r in rows)
    batch, dim = hidden.shape[0], hidden.shape[-1]
    out = hidden.new_zeros(batch, length, dim)
    out_mask = mask2d.new_zeros(batch, length)
    out_positions = positions.new_zeros(batch, length)
    for b, (row, pos) in enumerate(zip(rows, row_positions)):
        out[b, length - row.shape[0] :] = row
        out_mask[b, length - row.shape[0] :] = 1
        out_positions[b, length - row.shape[0] :] = pos
    return out, out_mask, out_positions, decisions


def prefill(
    model: Any,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    visual_mask: torch.Tensor | None = None,
    inner: InnerMerge | None = None,
    forced: list[InnerMergeDecision | None] | None = None,
    all_logits: bool = False,
    timer: StageTimer | None = None,
) -> LlmState:
    """LLM prefill of a left-padded batch, with optional stage-3 merging.

    Args:
        model: ``LlavaOnevisionForConditionalGeneration``.
        inputs_embeds: ``[B, L, D]``; attention_mask: ``[B, L]`` (0 = left padding).
        visual_mask: ``[B, L]`` bool, the video tokens (stage 3's visual span, newline included).
        inner: stage-3 settings, or None.
        forced: per row, merge decisions to apply instead of computing them (tests: a cache-free
            forward with the same decisions as a decode run).
        all_logits: return logits for every position instead of the last one.
        timer: records ``llm_prefill`` (stage 3's scoring and merging: ``inner_merge``).
    """
    timer = timer or StageTimer(None)
    lm = _language_model(model)

    positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    cache = compat.new_cache(lm.config)
    num_layers = len(lm.layers)
    lengths = attention_mask.sum(-1).tolist()
    if inner is None:
        with timer.stage("llm_prefill"):
            hidden, _ = _run_layers(lm, inputs_embeds, attention_mask, positions, cache, 0, num_layers)
        groups = [LayerGroup(0, num_layers, attention_mask, positions)]
        decisions = None
        tokens_per_layer = [(int(n),) * num_layers for n in lengths]
        next_positions = positions[:, -1] + 1
    else:
        if visual_mask is None:
            raise ValueError("stage 3 needs the visual-token mask of the batch")
        k = inner.layer
        with timer.stage("llm_prefill"):
            hidden, layer_input = _run_layers(
                lm, inputs_embeds, attention_mask, positions, cache, 0, k, keep_input_of=k - 1
            )
        with timer.stage("inner_merge"):
            scores = None
            if forced is None:
                scores = _last_token_scores(lm, k - 1, layer_input, positions, cache, attention_mask)
            next_positions = positions[:, -1] + 1
            merged, merged_mask, merged_positions, decisions = _merge_rows(
                hidden, attention_mask, positions, visual_mask, scores, inner, forced
            )
        with timer.stage("llm_prefill"):
            hidden, _ = _run_layers(lm, merged, merged_mask, merged_positions, cache, k, num_layers)
        groups = [LayerGroup(0, k, attention_mask, positions), LayerGroup(k, num_layers, merged_mask, merged_positions)]
        after = merged_mask.sum(-1).tolist()
        tokens_per_layer = [(int(n),) * k + (int(m),) * (num_layers - k) for n, m in zip(lengths, after)]
    with timer.stage("llm_prefill"):
        normed = lm.norm(hidden)
        logits = model.lm_head(normed if all_logits else normed[:, -1])
    return LlmState(logits, cache, groups, next_positions, decisions, tokens_per_layer)


def decode_step(model: Any, state: LlmState, tokens: torch.Tensor) -> torch.Tensor:
    """Feed one token per row through every layer group; returns ``[B, V]`` logits and advances ``state``."""
    lm = _language_model(model)
    hidden = model.get_input_embeddings()(tokens[:, None])
    positions = state.next_positions[:, None]
    for group in state.groups:
        group.mask = torch.cat([group.mask, group.mask.new_ones(group.mask.shape[0], 1)], dim=1)
        hidden, _ = _run_layers(lm, hidden, group.mask, positions, state.cache, group.start, group.stop)
    state.next_positions = state.next_positions + 1
    return model.lm_head(lm.norm(hidden)[:, -1])
