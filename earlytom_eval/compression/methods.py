"""One interface for every place a compression method acts, and the ``full`` and ``earlytom`` methods.

A method is a :class:`CompressionMethod` built from its :class:`~.config.CompressionConfig`. The model
integration (:mod:`earlytom_eval.models.llava_ov`) drives every method through the same pipeline and asks
it, at each place:

1. **inside the vision encoder** (:meth:`~CompressionMethod.encoder_plan`): after which layers to call
   :meth:`~CompressionMethod.after_layer` (merge or drop frames: EarlyTom), in which layers to call
   :meth:`~CompressionMethod.merge_in_layer` between the attention residual and the MLP (ToMe), and which
   signals to compute, once and only where read: the attention each token receives at one layer, that
   layer's head-averaged keys, the SigLIP attention-pooling head's probe attention and frame features;
2. **after projector and pooling** (:meth:`~CompressionMethod.select`): the tokens sent to the LLM, as a
   :class:`~.selection.TokenSelection` (with original positions where the method keeps RoPE gaps);
3. **inside the LLM** (:meth:`~CompressionMethod.llm_cuts`): prune or merge visual tokens before chosen
   layers, with a KV cache per layer group (several cuts work);
4. **while decoding** (:meth:`~CompressionMethod.decode_pruning`): which layers attend to a pruned cache.

Methods are pure tensor code plus their config: nothing here imports transformers. Each method is
registered by name in :mod:`.registry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import CompressionConfig, LlmCut, ModelFacts
from .selection import TokenSelection, frame_major_index
from .spatial import SpatialSelection, select_tokens
from .temporal import FrameMergePlan, coarse_segments, frame_similarity, similarity_offset, temporal_merge

__all__ = [
    "CompressionMethod",
    "EarlyTomMethod",
    "EncoderPlan",
    "EncoderSignals",
    "FullMethod",
    "LayerOutcome",
    "PlannedCounts",
    "spatial_to_token_selection",
]

Segment = tuple[int, int]


@dataclass(frozen=True)
class EncoderPlan:
    """What a method needs from the vision encoder (0-based layer indices among the layers that run).

    Attributes:
        hook_layers: layers after which :meth:`CompressionMethod.after_layer` is called.
        attention_layer: the layer whose received attention (``[T, S_v]``: softmax of the layer's own
            queries and keys, mean over heads and queries) is computed; None if none is read.
        keys_layer: the layer whose keys, averaged over heads (``[T, S_v, d_head]``), are read.
        merge_layers: layers in which :meth:`CompressionMethod.merge_in_layer` runs between the attention
            residual and the MLP (the layer's keys are passed as the metric).
        pooling_head: whether SigLIP's attention-pooling head runs on the encoder output (probe attention
            ``[T, S_v]`` and frame features ``[T, D_v]``).
    """

    hook_layers: tuple[int, ...] = ()
    attention_layer: int | None = None
    keys_layer: int | None = None
    merge_layers: tuple[int, ...] = ()
    pooling_head: bool = False


@dataclass(frozen=True)
class LayerOutcome:
    """What ``after_layer`` returns: the (possibly fewer) frames, their attention, final segments if decided,
    and the merge plan if frames were merged."""

    hidden: torch.Tensor
    attention: torch.Tensor | None
    segments: tuple[Segment, ...] | None = None
    plan: FrameMergePlan | None = None


@dataclass(frozen=True)
class PlannedCounts:
    """Token counts of one video known before any data is seen (for FLOP accounting and tables).

    Attributes:
        visual_tokens: tokens spliced into the LLM, newline included (an upper bound if not ``exact``).
        exact: whether every clip gets exactly this count (False: data-dependent, the count is a bound).
        tokens_per_layer: tokens per frame each encoder layer processes (None: every layer sees all patches).
        frames_per_layer: frames each encoder layer processes (None: every layer sees all frames).
    """

    visual_tokens: int
    exact: bool = True
    tokens_per_layer: tuple[int, ...] | None = None
    frames_per_layer: tuple[int, ...] | None = None


@dataclass
class EncoderSignals:
    """What the encoder hands to :meth:`CompressionMethod.select`, pooled to the LLM's token grid.

    Attributes:
        frames_in: T0, frames that entered the encoder.
        attention: ``[T', S]`` received attention (float32), or None.
        keys: ``[T', S, d_head]`` head-averaged keys, or None.
        probe_attention: ``[T', S]`` the pooling head's attention over the patches, or None.
        frame_features: ``[T', D_v]`` the pooling head's output per frame, or None.
        segments: final segments (post-merge frame indices) if the method decided them in the encoder.
        state: the method's own per-video state (:meth:`CompressionMethod.encoder_state`).
    """

    frames_in: int
    attention: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    probe_attention: torch.Tensor | None = None
    frame_features: torch.Tensor | None = None
    segments: tuple[Segment, ...] | None = None
    state: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class CompressionMethod:
    """Base class, and the ``full`` method: every frame, every token, transformers' own pooling."""

    name = "full"

    def __init__(self, config: CompressionConfig):
        self.config = config

    # -------------------------------------------------------------------------- checks
    def check_model(self, facts: ModelFacts) -> None:
        """Raise ConfigError (one line) if the method cannot run on a model with these facts."""
        self.config.check_encoder_depth(facts.encoder_layers)
        self.config.check_llm_depth(facts.llm_layers)

    # -------------------------------------------------------------------------- encoder
    def encoder_plan(self, num_layers: int) -> EncoderPlan:
        """``num_layers``: encoder layers that run (those up to the feature layer)."""
        return EncoderPlan()

    def encoder_state(self, frames_in: int, tokens_per_frame: int) -> Any:
        """A fresh per-video state for :meth:`merge_in_layer` and :meth:`pool` (None if none is kept)."""
        return None

    def after_layer(self, layer: int, hidden: torch.Tensor, attention: torch.Tensor | None) -> LayerOutcome:
        """Called after each layer of ``encoder_plan().hook_layers`` with ``hidden`` ``[T, S_v, D_v]``."""
        return LayerOutcome(hidden, attention)

    def merge_in_layer(self, layer: int, hidden: torch.Tensor, keys: torch.Tensor, state: Any) -> torch.Tensor:
        """Inside a layer of ``merge_layers``: ``hidden`` ``[T, N, D_v]`` after the attention residual, ``keys``
        ``[T, N, d_head]`` the layer's head-averaged keys; returns the (fewer) tokens entering the MLP."""
        return hidden

    # -------------------------------------------------------------------------- after the projector
    def pool(self, projected: torch.Tensor, pool_fn: Any, state: Any) -> torch.Tensor:
        """``[T', N, D]`` projected tokens -> ``[T', S, D]`` with the model's own pooling (``pool_fn``)."""
        return pool_fn(projected)

    def select(self, features: torch.Tensor, signals: EncoderSignals) -> TokenSelection | SpatialSelection:
        """Pick the tokens sent to the LLM from the pooled ``features`` ``[T', S, D]`` (newline not included)."""
        frames, per_frame, dim = features.shape
        source = torch.arange(frames * per_frame, device=features.device)
        return TokenSelection(features.reshape(frames * per_frame, dim), source)

    def planned_counts(self, facts: ModelFacts, frames: int) -> PlannedCounts | None:
        """Counts known without data (see :class:`PlannedCounts`); None where only a run can tell (EarlyTom's
        frame merging: :mod:`earlytom_eval.efficiency.schedules` bounds it)."""
        return PlannedCounts(frames * facts.pooled_per_frame + 1)

    # -------------------------------------------------------------------------- LLM
    def llm_cuts(self) -> tuple[LlmCut, ...]:
        """Cuts of the visual tokens inside the LLM during the prefill."""
        return self.config.llm_cuts()

    def decode_pruning(self) -> Any:
        """Settings of KV-cache pruning while decoding (DyCoke), or None."""
        return None


class FullMethod(CompressionMethod):
    """``full``: no compression (an LLM cut from ``inner_layer`` is allowed as an ablation)."""


class EarlyTomMethod(CompressionMethod):
    """EarlyTom: temporal merging after each prune layer, then decoupled spatial selection, stage 3 optional.

    The received attention is computed only at the last prune layer. With no prune layers (the
    post-encoder ablation) nothing merges inside the encoder; the attention and the final segments are
    then taken at the last encoder layer that runs.
    """

    name = "earlytom"

    def planned_counts(self, facts: ModelFacts, frames: int) -> PlannedCounts | None:
        return None

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

    def select(self, features: torch.Tensor, signals: EncoderSignals) -> SpatialSelection:
        if signals.attention is None or signals.segments is None:
            raise RuntimeError("earlytom selection needs the received attention and the final segments of the encoder")
        cfg = self.config
        return select_tokens(
            features,
            signals.attention,
            signals.segments,
            retention=cfg.retention,
            frames_in=signals.frames_in,
            D=cfg.D,
            K=cfg.K,
            beta=cfg.beta,
        )


def spatial_to_token_selection(
    selection: SpatialSelection, frame_sources: tuple[tuple[int, ...], ...], tokens_per_frame: int
) -> TokenSelection:
    """EarlyTom's per-frame selection as a :class:`TokenSelection`: a kept token of a frame that is one input
    frame unchanged gets its frame-major source index; tokens of merged frames and contextual tokens get -1."""
    device = selection.tokens.device
    sources = []
    for frame, kept in enumerate(selection.kept):
        origin = frame_sources[frame] if frame < len(frame_sources) else ()
        count = int(kept.numel())
        if len(origin) == 1:
            frames = torch.full((count,), origin[0], device=device)
            sources.append(frame_major_index(frames, kept.to(device), tokens_per_frame))
        else:
            sources.append(torch.full((count,), -1, dtype=torch.long, device=device))
        budget = selection.static_count if bool(selection.is_static[frame]) else selection.dynamic_count
        if budget > count:  # D > 0: the frame's contextual tokens follow its picks
            sources.append(torch.full((budget - count,), -1, dtype=torch.long, device=device))
    source = torch.cat(sources) if sources else torch.zeros(0, dtype=torch.long, device=device)
    return TokenSelection(selection.tokens, source)


def pooled_count(grid: int) -> int:
    """Tokens per frame after LLaVA-OV's 2x2 bilinear pooling of a ``grid x grid`` patch map."""
    side = math.ceil(grid / 2)
    return side * side
