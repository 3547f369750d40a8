"""ToMe and DyCoke on the one interface of :mod:`.methods` (the peers that act inside the encoder and while
decoding).

Thin adapters over the pure tensor functions of :mod:`.tome` and :mod:`.dycoke` (sources followed: see their
docstrings). ToMe merges inside every SigLIP layer with a per-layer count and pools its merged frames itself;
DyCoke prunes paired frames after the projector and pooling (stage 1) and hands the model integration its
decode-time cache-pruning settings (stage 2, :class:`~.dycoke.DecodePruning`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import ConfigError, ModelFacts
from .dycoke import DecodePruning, choose_ttm_k, ttm_keep_count, ttm_prune, ttm_token_count
from .methods import CompressionMethod, EncoderPlan, EncoderSignals, PlannedCounts
from .selection import MERGED, TokenSelection
from .tome import (
    ENCODER_LAYERS,
    PATCHES_PER_FRAME,
    ToMeState,
    choose_merge_num,
    feasible_merge_nums,
    merge_schedule,
    tome_llm_token_count,
    tome_pool,
    tome_step,
)

__all__ = ["DyCokeMethod", "ToMeMethod", "ToMeRun"]


@dataclass
class ToMeRun:
    """One video's ToMe state through the encoder (the hidden states themselves travel in the encoder).

    Attributes:
        schedule: tokens merged per frame in each encoder layer (:func:`~.tome.merge_schedule`).
        size: ``[T, N, 1]`` float32 patches each current token stands for (None before the first merge).
        assignment: ``[T, N0]`` the current token of each original patch (None before the first merge).
    """

    schedule: tuple[int, ...]
    size: torch.Tensor | None = None
    assignment: torch.Tensor | None = None


class ToMeMethod(CompressionMethod):
    """ToMe (EarlyTom's ``tome/`` port): bipartite soft matching in every SigLIP layer, then ToMe's own pooling.

    In layer i, ``r_i`` tokens per frame (:func:`~.tome.merge_schedule` of ``merge_num`` with ``inflect``)
    merge between the attention residual and the MLP, size-weighted (:func:`~.tome.tome_step`), with the
    layer's head-averaged keys as the metric; ``class_token`` protects patch 0 (reference quirk). After the
    projector, the port's ``get_2dPool`` (:func:`~.tome.tome_pool`) lays the N merged tokens out as a
    ``sqrt(N) x sqrt(N)`` raster in their merged order and pools them bilinearly, so every token's source is
    -1 (merged). NO PROPORTIONAL ATTENTION (reference quirk): the port sets ``prop_attn=True``, but LLaVA's
    SigLIP attention never adds ``log(size)`` to its logits; sizes only weight the merges.

    ``merge_num`` null resolves with :func:`~.tome.choose_merge_num` for the model's facts (patches, encoder
    depth, pooled tokens per frame) and ``num_frames``; :meth:`check_model` records the facts (LLaVA-OV-7B's
    729 patches and 26 layers until it is called).
    """

    name = "tome"

    def __init__(self, config):
        super().__init__(config)
        self._facts: ModelFacts | None = None

    # -------------------------------------------------------------------------- counts
    def merge_num(self, facts: ModelFacts | None = None) -> int:
        """Tokens merged away per frame over the encoder (``merge_num``, or the choice for ``retention``)."""
        params = self.config.params
        if params.merge_num is not None:
            return params.merge_num
        patches, layers, pooled = _shape(facts or self._facts)
        return choose_merge_num(
            self.config.retention, self.config.num_frames, patches, layers, pooled_per_frame=pooled,
            inflect=params.inflect,
        ).merge_num

    def schedule(self, num_layers: int, facts: ModelFacts | None = None) -> tuple[int, ...]:
        """Tokens merged per frame in each of ``num_layers`` encoder layers."""
        return tuple(merge_schedule(self.merge_num(facts), num_layers, self.config.params.inflect))

    def check_model(self, facts: ModelFacts) -> None:
        super().check_model(facts)
        self._facts = facts
        params = self.config.params
        if params.merge_num is None:
            return
        patches, layers, _ = _shape(facts)
        allowed = feasible_merge_nums(patches, layers, params.inflect, class_token=params.class_token)
        if params.merge_num not in allowed:
            below = [m for m in allowed if m < params.merge_num]
            above = [m for m in allowed if m > params.merge_num]
            nearest = ", ".join(str(m) for m in (below[-1:] + above[:1]))
            raise ConfigError(
                f"invalid tome field 'merge_num': {params.merge_num} (allowed: a count that leaves a square number "
                f"of the {patches} patches per frame for ToMe's pooling and that every one of the {layers} layers "
                f"can merge, nearest: {nearest}; or null to choose it from retention)"
            )

    def planned_counts(self, facts: ModelFacts, frames: int) -> PlannedCounts:
        patches, layers, _ = _shape(facts)
        schedule = self.schedule(layers, facts)
        per_layer = tuple(patches - sum(schedule[:i]) for i in range(layers))
        tokens = tome_llm_token_count(sum(schedule), frames, patches)
        return PlannedCounts(tokens, exact=True, tokens_per_layer=per_layer)

    # -------------------------------------------------------------------------- encoder
    def encoder_plan(self, num_layers: int) -> EncoderPlan:
        schedule = self.schedule(num_layers)
        return EncoderPlan(merge_layers=tuple(i for i, r in enumerate(schedule) if r > 0))

    def encoder_state(self, frames_in: int, tokens_per_frame: int) -> ToMeRun:
        layers = self._facts.encoder_layers if self._facts is not None else ENCODER_LAYERS
        return ToMeRun(schedule=self.schedule(layers))

    def merge_in_layer(self, layer: int, hidden: torch.Tensor, keys: torch.Tensor, state: ToMeRun) -> torch.Tensor:
        r = state.schedule[layer] if layer < len(state.schedule) else 0
        if r <= 0:
            return hidden
        current = ToMeState(hidden, state.size, state.assignment)
        merged = tome_step(current, keys, r, class_token=self.config.params.class_token)
        state.size, state.assignment = merged.size, merged.assignment
        return merged.hidden

    # -------------------------------------------------------------------------- after the projector
    def pool(self, projected: torch.Tensor, pool_fn, state: ToMeRun) -> torch.Tensor:
        """The port's ``get_2dPool`` instead of the model's pooling: ``[T, N, D]`` -> ``[T, m * m, D]``."""
        frames, _, dim = projected.shape
        pooled = tome_pool(projected).tokens
        return pooled.view(frames, -1, dim)

    def select(self, features: torch.Tensor, signals: EncoderSignals) -> TokenSelection:
        frames, per_frame, dim = features.shape
        source = torch.full((frames * per_frame,), MERGED, dtype=torch.long, device=features.device)
        return TokenSelection(features.reshape(frames * per_frame, dim), source)


class DyCokeMethod(CompressionMethod):
    """DyCoke: stage 1 (TTM) prunes paired frames of the pooled video before the LLM; stage 2 prunes the KV
    cache that layers >= ``decode_layer`` attend to at each decode step (:meth:`decode_pruning`, applied by
    the model integration).

    Stage 1 keeps ``k_keep = int((1 - K) * S)`` tokens of each pruned frame, ``K = ttm_k`` or, when null, the K
    of :func:`~.dycoke.choose_ttm_k` for ``retention`` and the video's frames (1.0 below DyCoke's floor of about
    28 %: the retention reached is then above the nominal one, and tables show it).
    """

    name = "dycoke"

    def k_keep(self, frames: int, tokens_per_frame: int) -> int:
        params = self.config.params
        k = params.ttm_k
        if k is None:
            k = choose_ttm_k(self.config.retention, frames, tokens_per_frame).k
        return ttm_keep_count(k, tokens_per_frame)

    def planned_counts(self, facts: ModelFacts, frames: int) -> PlannedCounts:
        per_frame = facts.pooled_per_frame
        return PlannedCounts(ttm_token_count(frames, self.k_keep(frames, per_frame), per_frame), exact=True)

    def select(self, features: torch.Tensor, signals: EncoderSignals) -> TokenSelection:
        frames, per_frame, _ = features.shape
        return ttm_prune(features, self.k_keep(frames, per_frame))

    def decode_pruning(self) -> DecodePruning | None:
        params = self.config.params
        if not params.decode_pruning:
            return None
        return DecodePruning(params.decode_layer, params.decode_prune, params.decode_threshold)


def _shape(facts: ModelFacts | None) -> tuple[int, int, int]:
    """(patches per frame, encoder layers, pooled tokens per frame) of ``facts`` (LLaVA-OV-7B's without)."""
    if facts is None:
        return PATCHES_PER_FRAME, ENCODER_LAYERS, math.ceil(math.isqrt(PATCHES_PER_FRAME) / 2) ** 2
    return facts.patch_grid * facts.patch_grid, facts.encoder_layers, facts.pooled_per_frame
