"""The Qwen2 language model of LLaVA-OneVision, driven layer by layer (prefill and greedy decode steps).

This module knows transformers (the decoder layers, rotary embedding, ``create_causal_mask``,
``DynamicCache``) but does not fork the model file: it calls the model's own modules in the order
``Qwen2Model.forward`` does, which is what allows stage 3 to cut the sequence between two layers.

Layers are run in *groups* that share a 2-D attention mask over the tokens they hold in the cache.
Without LLM cuts there is one group (all layers, the full sequence) and the result is exactly
transformers' forward. Each cut at layer k (EarlyTom's stage 3, HoliTom's inner stage, FastV) starts a new
group: layers before k keep the longer sequence in their cache, layers from k on the cut one; every token
keeps its original position id, and new tokens are numbered from the full length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..compression.config import LlmCut
from ..compression.dycoke import BatchedDecodePruneState, DecodePruning, decode_keep_mask
from ..compression.inner import (
    InnerMergeDecision,
    inner_keep_count,
    last_query_attention,
    merge_into_kept,
    plan_inner_drop,
    plan_inner_merge,
)
from ..timing import StageTimer
from . import compat

__all__ = ["DecodePruner", "InnerMerge", "LayerGroup", "LlmState", "decode_step", "prefill"]

#: A cut inside the LLM (kept under its stage-3 name for callers that build one by hand).
InnerMerge = LlmCut


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
        decisions: per row, the decision of the first LLM cut (None without cuts).
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
    spec: LlmCut,
    forced: list[InnerMergeDecision | None] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[InnerMergeDecision | None]]:
    """Cut each row's visual span (merge or drop) and re-pad the shorter rows on the left.

    Returns ``(hidden [B, L', D], mask2d [B, L'], positions [B, L'], visual_mask [B, L'], decisions)``.
    """
    rows, row_positions, row_visual, decisions = [], [], [], []
    for b in range(hidden.shape[0]):
        real = mask2d[b].bool()
        span = (visual_mask[b] & real).nonzero().squeeze(1)
        row = hidden[b]
        keep = real.clone()
        decision = None
        if span.numel():
            if forced is not None:
                decision = forced[b]
            elif spec.mode == "drop":
                decision = plan_inner_drop(scores[b, span], inner_keep_count(span.numel(), spec.ratio))
            else:
                count = inner_keep_count(span.numel(), spec.ratio)
                decision = plan_inner_merge(scores[b, span], hidden[b, span], count)
            if spec.mode != "drop":
                row = row.clone()
                row[span[decision.kept]] = merge_into_kept(hidden[b, span], decision, spec.mode)
            keep[span] = False
            keep[span[decision.kept]] = True
        index = keep.nonzero().squeeze(1)
        rows.append(row[index])
        row_positions.append(positions[b, index])
        row_visual.append(visual_mask[b, index])
        decisions.append(decision)
    length = max(int(r.shape[0]) for r in rows)
    batch, dim = hidden.shape[0], hidden.shape[-1]
    out = hidden.new_zeros(batch, length, dim)
    out_mask = mask2d.new_zeros(batch, length)
    out_positions = positions.new_zeros(batch, length)
    out_visual = visual_mask.new_zeros(batch, length)
    for b, (row, pos, vis) in enumerate(zip(rows, row_positions, row_visual)):
        out[b, length - row.shape[0] :] = row
        out_mask[b, length - row.shape[0] :] = 1
        out_positions[b, length - row.shape[0] :] = pos
        out_visual[b, length - row.shape[0] :] = vis
    return out, out_mask, out_positions, out_visual, decisions


def prefill(
    model: Any,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    visual_mask: torch.Tensor | None = None,
    cuts: Sequence[LlmCut] = (),
    inner: LlmCut | None = None,
    positions: torch.Tensor | None = None,
    forced: list[InnerMergeDecision | None] | None = None,
    all_logits: bool = False,
    timer: StageTimer | None = None,
) -> LlmState:
    """LLM prefill of a left-padded batch, with the visual tokens cut at zero or more layers.

    Args:
        model: ``LlavaOnevisionForConditionalGeneration``.
        inputs_embeds: ``[B, L, D]``; attention_mask: ``[B, L]`` (0 = left padding).
        visual_mask: ``[B, L]`` bool, the video tokens (the cuts' visual span, newline included).
        cuts: the LLM cuts, each at its own layer (``inner``: one cut, the stage-3 spelling).
        positions: ``[B, L]`` position ids (default: counted over the real tokens); a method that keeps
            original RoPE positions (FastVID) passes them with gaps.
        forced: per row, decisions to apply at the first cut instead of computing them (tests: a cache-free
            forward with the same decisions as a decode run).
        all_logits: return logits for every position instead of the last one.
        timer: records ``llm_prefill`` (the cuts' scoring and merging: ``inner_merge``).
    """
    timer = timer or StageTimer(None)
    lm = _language_model(model)

    cuts = sorted([*cuts, *([inner] if inner is not None else [])], key=lambda cut: cut.layer)
    if cuts and visual_mask is None:
        raise ValueError("an LLM cut needs the visual-token mask of the batch")
    if positions is None:
        positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    next_positions = positions[:, -1] + 1
    cache = compat.new_cache(lm.config)
    num_layers = len(lm.layers)
    groups: list[LayerGroup] = []
    decisions = None
    per_layer: list[list[int]] = [[] for _ in range(inputs_embeds.shape[0])]
    hidden, mask, start = inputs_embeds, attention_mask, 0
    for number, cut in enumerate(cuts):
        k = cut.layer
        with timer.stage("llm_prefill"):
            hidden, layer_input = _run_layers(lm, hidden, mask, positions, cache, start, k, keep_input_of=k - 1)
        groups.append(LayerGroup(start, k, mask, positions))
        for row, n in zip(per_layer, mask.sum(-1).tolist()):
            row.extend([int(n)] * (k - start))
        with timer.stage("inner_merge"):
            given = forced if number == 0 else None
            scores = None
            if given is None:
                scores = _last_token_scores(lm, k - 1, layer_input, positions, cache, mask)
            hidden, mask, positions, visual_mask, cut_decisions = _merge_rows(
                hidden, mask, positions, visual_mask, scores, cut, given
            )
        if decisions is None:
            decisions = cut_decisions
        start = k
    with timer.stage("llm_prefill"):
        hidden, _ = _run_layers(lm, hidden, mask, positions, cache, start, num_layers)
    groups.append(LayerGroup(start, num_layers, mask, positions))
    for row, n in zip(per_layer, mask.sum(-1).tolist()):
        row.extend([int(n)] * (num_layers - start))
    with timer.stage("llm_prefill"):
        normed = lm.norm(hidden)
        logits = model.lm_head(normed if all_logits else normed[:, -1])
    return LlmState(logits, cache, groups, next_positions, decisions, [tuple(row) for row in per_layer])


@dataclass
class DecodePruner:
    """DyCoke's stage 2 for one batch: which image-span cache entries layers >= L attend to at each decode step.

    Attributes:
        settings: layer L, prune ratio P and similarity threshold.
        starts: ``[B]`` each row's first image position in the (left-padded) cache, s0.
        image_lengths: ``[B]`` each row's image span n_img (:func:`~earlytom_eval.compression.dycoke.
            stage2_image_length`: the video's tokens minus the newline and minus the last one, reference quirk).
        state: the previous step's image-span rows. One pruner per ``generate`` call: PROJECT CHOICE, the
            reference keeps the previous row across samples too (so a sample's first step depends on the sample
            before it, i.e. on evaluation order and sharding); here every call starts fresh, so its first step
            always prunes.
    """

    settings: DecodePruning
    starts: torch.Tensor
    image_lengths: torch.Tensor
    state: BatchedDecodePruneState = field(default_factory=BatchedDecodePruneState)


def decode_step(model: Any, state: LlmState, tokens: torch.Tensor, pruner: DecodePruner | None = None) -> torch.Tensor:
    """Feed one token per row through every layer group; returns ``[B, V]`` logits and advances ``state``.

    With ``pruner`` (DyCoke's stage 2; one layer group), layer L - 1's attention row of the current token (mean
    over heads, one query row on the cache's keys) picks the kept image entries, and layers >= L attend only to
    those at this step: their 2-D mask is narrowed for this step while the cache keeps every entry.
    """
    lm = _language_model(model)
    hidden = model.get_input_embeddings()(tokens[:, None])
    positions = state.next_positions[:, None]
    if pruner is not None and len(state.groups) != 1:
        raise ValueError("decode-time cache pruning needs a single layer group (no LLM cuts)")
    for group in state.groups:
        group.mask = torch.cat([group.mask, group.mask.new_ones(group.mask.shape[0], 1)], dim=1)
        if pruner is None:
            hidden, _ = _run_layers(lm, hidden, group.mask, positions, state.cache, group.start, group.stop)
            continue
        layer = pruner.settings.layer
        hidden, layer_input = _run_layers(
            lm, hidden, group.mask, positions, state.cache, group.start, layer, keep_input_of=layer - 1
        )
        scores = _last_token_scores(lm, layer - 1, layer_input, positions, state.cache, group.mask)
        seq_lens = torch.full_like(pruner.starts, group.mask.shape[1])
        keep, _ = decode_keep_mask(
            scores,
            pruner.state,
            starts=pruner.starts,
            image_lengths=pruner.image_lengths,
            seq_lens=seq_lens,
            prune_ratio=pruner.settings.prune_ratio,
            threshold=pruner.settings.threshold,
        )
        step_mask = group.mask * keep.to(group.mask.dtype)
        hidden, _ = _run_layers(lm, hidden, step_mask, positions, state.cache, layer, group.stop)
    state.next_positions = state.next_positions + 1
    return model.lm_head(lm.norm(hidden)[:, -1])
