"""Compression methods by name.

A method is a :class:`VideoCompressor`: the model integration asks it which encoder layers it acts on
(:meth:`~VideoCompressor.encoder_plan`), calls :meth:`~VideoCompressor.after_layer` after each of them,
and hands it the projected, pooled features to :meth:`~VideoCompressor.select` from. Every method
therefore runs through the same pipeline, under identical conditions. A new method (FastV, VisionZip,
HoliTom...) subclasses :class:`VideoCompressor`, registers itself with :func:`register`, and is named in
:data:`earlytom_eval.compression.config.METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import CompressionConfig
from .spatial import SpatialSelection, select_tokens
from .temporal import FrameMergePlan, coarse_segments, frame_similarity, similarity_offset, temporal_merge

__all__ = ["EncoderPlan", "LayerOutcome", "VideoCompressor", "build_compressor", "register", "registered_methods"]

Segment = tuple[int, int]


@dataclass(frozen=True)
class EncoderPlan:
    """What a method needs from the vision encoder.

    Attributes:
        hook_layers: 0-based layers after which :meth:`VideoCompressor.after_layer` is called.
        attention_layer: the layer whose received attention (``[T, S_v]``, mean over heads and queries)
            is computed and passed to ``after_layer``; None if the method needs none.
    """

    hook_layers: tuple[int, ...] = ()
    attention_layer: int | None = None


@dataclass(frozen=True)
class LayerOutcome:
    """What ``after_layer`` returns: the (possibly fewer) frames, their attention, final segments if decided,
    and the merge plan if frames were merged."""

    hidden: torch.Tensor
    attention: torch.Tensor | None
    segments: tuple[Segment, ...] | None = None
    plan: FrameMergePlan | None = None


class VideoCompressor:
    """Base class, and the ``full`` method: every frame, every token."""

    name = "full"

    def __init__(self, config: CompressionConfig):
        self.config = config

    def encoder_plan(self, num_layers: int) -> EncoderPlan:
        """``num_layers``: encoder layers that run (those before the feature layer)."""
        return EncoderPlan()

    def after_layer(self, layer: int, hidden: torch.Tensor, attention: torch.Tensor | None) -> LayerOutcome:
        """Called after each layer of ``encoder_plan().hook_layers`` with ``hidden`` ``[T, S_v, D_v]``."""
        return LayerOutcome(hidden, attention)

    def select(
        self,
        features: torch.Tensor,
        attention: torch.Tensor | None,
        segments: tuple[Segment, ...] | None,
        frames_in: int,
    ) -> SpatialSelection:
        """Pick the tokens sent to the LLM from ``features`` ``[T', S, D]`` (pooled); newline not included."""
        num_frames, num_tokens, dim = features.shape
        every = torch.arange(num_tokens, device=features.device)
        return SpatialSelection(
            tokens=features.reshape(num_frames * num_tokens, dim),
            kept=tuple(every for _ in range(num_frames)),
            is_static=torch.zeros(num_frames, dtype=torch.bool),
            rho_eff=1.0,
            dynamic_count=num_tokens,
            static_count=num_tokens,
        )


class EarlyTomCompressor(VideoCompressor):
    """EarlyTom: temporal merging after each prune layer, then decoupled spatial selection.

    The received attention is computed only at the last prune layer. With no prune layers (the
    post-encoder ablation) nothing merges inside the encoder; the attention and the final segments are
    then taken at the last encoder layer that runs.
    """

    name = "earlytom"

    def encoder_plan(self, num_layers: int) -> EncoderPlan:
        layers = self.config.prune_layers or (num_layers - 1,)
        return EncoderPlan(hook_layers=tuple(layers), attention_layer=layers[-1])

    def after_layer(self, layer: int, hidden: torch.Tensor, attention: torch.Tensor | None) -> LayerOutcome:
        cfg = self.config
        if layer not in cfg.prune_layers:  # post-encoder ablation: segment, never merge
            sim = frame_similarity(hidden, similarity_offset(cfg.max_window))
            segments = coarse_segments(sim.cpu(), cfg.tau, cfg.max_window, cfg.ema)
            return LayerOutcome(hidden, attention, tuple(segments))
        final = layer == cfg.prune_layers[-1]
        result = temporal_merge(
            hidden, tau=cfg.tau, max_window=cfg.max_window, ema=cfg.ema, attention=attention, final=final
        )
        return LayerOutcome(result.hidden, result.attention, result.final_segments, result.plan)

    def select(self, features, attention, segments, frames_in):
        if attention is None or segments is None:
            raise RuntimeError("earlytom selection needs the received attention and the final segments of the encoder")
        cfg = self.config
        return select_tokens(
            features,
            attention,
            segments,
            retention=cfg.retention,
            frames_in=frames_in,
            D=cfg.D,
            K=cfg.K,
            beta=cfg.beta,
        )


_REGISTRY: dict[str, type[VideoCompressor]] = {}


def register(cls: type[VideoCompressor]) -> type[VideoCompressor]:
    """Make a compressor available by its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


register(VideoCompressor)
register(EarlyTomCompressor)


def registered_methods() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def build_compressor(config: CompressionConfig) -> VideoCompressor:
    """The compressor for ``config.method``."""
    try:
        return _REGISTRY[config.method](config)
    except KeyError:
        raise ValueError(
            f"no compressor registered for method {config.method!r} (registered: {', '.join(_REGISTRY)})"
        ) from None
