"""The peer methods on the one interface of :mod:`.methods`: VisionZip, HoliTom, FastVID and FastV.

Thin adapters: each says where it acts and which signals it reads, and calls its pure tensor functions
(:mod:`.visionzip`, :mod:`.holitom`, :mod:`.fastvid`; FastV is an LLM cut, done by the model integration).
Sources followed:
see each tensor module's docstring.
"""

from __future__ import annotations

import math

import torch

from .config import ConfigError, ModelFacts
from .fastvid import fastvid_budgets, fastvid_select
from .holitom import holitom_outer
from .methods import CompressionMethod, EncoderPlan, EncoderSignals, PlannedCounts
from .selection import TokenSelection
from .visionzip import visionzip_counts, visionzip_select

__all__ = ["FastVIDMethod", "FastVMethod", "HoliTomMethod", "VisionZipMethod", "seeded_generator"]


def seeded_generator(enabled: bool, seed: int, device: torch.device) -> torch.Generator | None:
    """The generator of the references' density noise: a fresh one per video, seeded, or None (no noise)."""
    if not enabled:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class VisionZipMethod(CompressionMethod):
    """VisionZip (HoliTom's LLaVA-OV port): per frame, dominant tokens by the last encoder layer's received
    attention and contextual tokens merged by that layer's head-averaged keys, after projector and pooling."""

    name = "visionzip"

    def counts(self, tokens_per_frame: int) -> tuple[int, int]:
        """(dominant, contextual) tokens per frame."""
        params = self.config.params
        spatial = params.spatial_tokens or max(1, round(tokens_per_frame * self.config.retention))
        return visionzip_counts(min(spatial, tokens_per_frame), params.dominant_ratio)

    def check_model(self, facts: ModelFacts) -> None:
        super().check_model(facts)
        spatial = self.config.params.spatial_tokens
        if spatial is not None and spatial > facts.pooled_per_frame:
            raise ConfigError(
                f"invalid visionzip field 'spatial_tokens': {spatial} (allowed: 1..{facts.pooled_per_frame}, "
                "the tokens of a pooled frame)"
            )

    def planned_counts(self, facts: ModelFacts, frames: int) -> PlannedCounts:
        dominant, contextual = self.counts(facts.pooled_per_frame)
        return PlannedCounts(frames * (dominant + contextual) + 1)

    def encoder_plan(self, num_layers: int) -> EncoderPlan:
        last = num_layers - 1
        return EncoderPlan(attention_layer=last, keys_layer=last)

    def select(self, features: torch.Tensor, signals: EncoderSignals) -> TokenSelection:
        dominant, contextual = self.counts(features.shape[1])
        return visionzip_select(features, signals.attention, signals.keys, dominant, contextual)


class HoliTomMethod(CompressionMethod):
    """HoliTom: the outer stage after projector and pooling (last encoder layer's received attention), and the
    inner stage inside the LLM (an LLM cut, ``fold`` merge at ``inner_layer``)."""

    name = "holitom"

    def planned_counts(self, facts: ModelFacts, frames: int) -> PlannedCounts:
        """Upper bound: no static window (every frame keeps ``ceil(S * rho)``; exact on such clips)."""
        per_frame = min(facts.pooled_per_frame, math.ceil(facts.pooled_per_frame * self.config.retention))
        return PlannedCounts(frames * per_frame + 1, exact=False)

    def encoder_plan(self, num_layers: int) -> EncoderPlan:
        return EncoderPlan(attention_layer=num_layers - 1)

    def select(self, features: torch.Tensor, signals: EncoderSignals) -> TokenSelection:
        params = self.config.params
        result = holitom_outer(
            features,
            signals.attention,
            retention=self.config.retention,
            tau=params.tau,
            beta=params.beta,
            D=params.D,
            K=params.K,
            max_window=params.max_window,
            generator=seeded_generator(params.density_noise, params.seed, features.device),
        )
        return result.selection


class FastVIDMethod(CompressionMethod):
    """FastVID: SigLIP's attention-pooling head on the encoder output gives each frame's probe attention and
    global feature; after projector and pooling, :func:`~.fastvid.fastvid_select` keeps salient tokens and
    merges density contexts per DySeg segment. Tokens keep their original positions (RoPE gaps), as the
    reference's in-LLM pruning before layer 0 does; DySeg's segments are reported as the video's segments."""

    name = "fastvid"

    def check_model(self, facts: ModelFacts) -> None:
        super().check_model(facts)
        per_frame = facts.pooled_per_frame
        if int(per_frame * self.config.retention) < 1:
            raise ConfigError(
                f"invalid fastvid field 'retention': {self.config.retention} keeps int({per_frame} * rho) = 0 tokens "
                f"per frame (allowed: a number in [{1 / per_frame:.4g}, 1] for {per_frame} tokens per frame)"
            )

    def planned_counts(self, facts: ModelFacts, frames: int) -> PlannedCounts:
        """Upper bound ``T int(S rho) + 1``, reached when every segment is one frame; exact when ``d`` leaves
        no contexts (multi-frame segments round their context budget down)."""
        keep, _, contexts = fastvid_budgets(facts.pooled_per_frame, self.config.retention, self.config.params.d)
        return PlannedCounts(frames * keep + 1, exact=contexts == 0)

    def encoder_plan(self, num_layers: int) -> EncoderPlan:
        return EncoderPlan(pooling_head=True)

    def select(self, features: torch.Tensor, signals: EncoderSignals) -> TokenSelection:
        if signals.probe_attention is None or signals.frame_features is None:
            raise RuntimeError("fastvid selection needs the pooling head's probe attention and frame features")
        params = self.config.params
        result = fastvid_select(
            features,
            signals.probe_attention,
            signals.frame_features,
            retention=self.config.retention,
            c=params.c,
            tau=params.tau,
            d=params.d,
            p=params.p,
            beta=params.beta,
            k=params.k,
            generator=seeded_generator(params.density_noise, params.seed, features.device),
        )
        signals.segments = result.segments
        return result.selection


class FastVMethod(CompressionMethod):
    """FastV: every visual token enters the LLM; before layer K the last prompt token's attention at layer
    K - 1 keeps ``round(N * retention)`` of them and drops the rest (an LLM cut, ``drop``)."""

    name = "fastv"
