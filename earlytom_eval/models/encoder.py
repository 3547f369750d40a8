"""A video through LLaVA-OneVision's SigLIP encoder, projector and pooling, with a compression method applied.

This module knows transformers' modules, not lmms-eval. It runs the model's own SigLIP layers one by one
(SDPA; frames are the batch dimension) and gives the method, at the places its
:class:`~earlytom_eval.compression.methods.EncoderPlan` names, the signals it reads, computed only there:
the received attention of one layer, one layer's head-averaged keys, a merge between attention and MLP
(ToMe), and the attention-pooling head's outputs (FastVID). Frames or tokens a method removes inside the
encoder are gone for every later layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..compression.methods import CompressionMethod, EncoderSignals, spatial_to_token_selection
from ..compression.selection import TokenSelection
from ..compression.spatial import SpatialSelection
from ..compression.temporal import compose_sources
from ..compression.visionzip import pool_grid
from ..timing import StageTimer

__all__ = ["VideoEncoding", "encode_frames", "head_averaged_keys", "received_attention", "save_tokens"]

Segment = tuple[int, int]
# Bytes of float32 attention probabilities materialised at once when computing the received attention.
_ATTENTION_CHUNK_BYTES = 256 * 2**20


@dataclass(frozen=True)
class VideoEncoding:
    """The visual tokens of one video and how they came to be.

    Attributes:
        tokens: ``[N, D_llm]`` tokens sent to the LLM, the ``image_newline`` token last.
        frames_in: T0, frames that entered the encoder.
        frames_per_layer: frames each encoder layer processed (one entry per layer that ran).
        segments: final segments as ``(start, end)`` post-merge frame indices (None if the method has none).
        frame_sources: for each frame leaving the encoder, the input frames merged into it.
        selection: the method's selection (EarlyTom: per-frame kept indices and roles; peers: tokens, sources).
        source: ``[N - 1]`` for each token but the newline, the frame-major index ``t * S + q`` of the pooled
            input token it is unchanged from, or -1 (merged, contextual, or from merged frames).
        positions: ``[N]`` each token's offset inside the uncompressed video span (newline at ``T0 * S``) for
            a method that keeps original RoPE positions; None: contiguous positions.
        tokens_per_layer: tokens per frame each encoder layer processed (fewer with ToMe).
        offset: where the tokens start in their (unpadded) prompt, once spliced in; -1 before.
    """

    tokens: torch.Tensor
    frames_in: int
    frames_per_layer: tuple[int, ...]
    segments: tuple[Segment, ...] | None
    frame_sources: tuple[tuple[int, ...], ...]
    selection: SpatialSelection | TokenSelection
    source: torch.Tensor
    positions: torch.Tensor | None = None
    tokens_per_layer: tuple[int, ...] = ()
    offset: int = -1
    pooled_per_frame: int = 0

    @property
    def visual_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def rho_eff(self) -> float:
        """EarlyTom's effective per-frame retention; for other methods the share of pooled tokens kept."""
        rho = getattr(self.selection, "rho_eff", None)
        if rho is not None:
            return float(rho)
        total = self.frames_in * self.pooled_per_frame
        return (self.visual_tokens - 1) / total if total else 1.0

    @property
    def frames_out(self) -> int:
        return len(self.frame_sources)

    @property
    def span(self) -> int:
        """Positions the video occupies in the prompt: its tokens, or with kept RoPE gaps the full span."""
        return self.frames_in * self.pooled_per_frame + 1 if self.positions is not None else self.visual_tokens


def save_tokens(encoding: VideoEncoding, path: str | Path) -> dict[str, torch.Tensor]:
    """Write one video's visual tokens as a safetensors file, for inspecting and comparing methods.

    Tensors: ``visual_tokens`` ``[N, D_llm]`` float32, exactly the embeddings spliced into the LLM input
    (newline last); ``kept`` ``[N]`` long, per token the frame-major index ``t * S + q`` of the pooled source
    token it is unchanged from, -1 for a merged or contextual token and for the newline (last). Metadata:
    ``frames_in``, ``pooled_per_frame``, ``frames_out``. Returns the tensors written.
    """
    from safetensors.torch import save_file  # lazy: only this command writes safetensors

    source = encoding.source.detach().to("cpu", torch.long).reshape(-1)
    tensors = {
        "visual_tokens": encoding.tokens.detach().to("cpu", torch.float32).contiguous(),
        "kept": torch.cat([source, source.new_full((1,), -1)]).contiguous(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"frames_in": str(encoding.frames_in), "pooled_per_frame": str(encoding.pooled_per_frame),
            "frames_out": str(encoding.frames_out)}
    save_file(tensors, str(path), metadata=meta)
    return tensors


def received_attention(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Attention each token receives in a SigLIP encoder layer: softmax(QK^T) averaged over heads and queries.

    Only this layer's queries and keys are recomputed (from ``layer_norm1`` and ``q_proj``/``k_proj``);
    the probabilities are materialised a few frames at a time and reduced at once.

    Args:
        layer: a ``SiglipEncoderLayer``.
        hidden: ``[T, S, D]`` the layer's input.
    Returns:
        ``[T, S]`` float32.
    """
    attn = layer.self_attn
    num_frames, num_tokens, _ = hidden.shape
    heads = attn.num_heads
    x = layer.layer_norm1(hidden)
    queries = attn.q_proj(x).view(num_frames, num_tokens, heads, -1).transpose(1, 2)
    keys = attn.k_proj(x).view(num_frames, num_tokens, heads, -1).transpose(1, 2)
    chunk = max(1, _ATTENTION_CHUNK_BYTES // (4 * heads * num_tokens * num_tokens))
    out = []
    for start in range(0, num_frames, chunk):
        q = queries[start : start + chunk].float() * attn.scale
        k = keys[start : start + chunk].float()
        probs = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # [t, H, S, S]
        out.append(probs.mean(dim=(1, 2)))
    return torch.cat(out)


def head_averaged_keys(layer: torch.nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """A SigLIP layer's keys averaged over heads, ``[T, N, d_head]``, from its ``layer_norm1`` output ``normed``."""
    attn = layer.self_attn
    frames, tokens, _ = normed.shape
    return attn.k_proj(normed).view(frames, tokens, attn.num_heads, -1).mean(dim=2)


def _layer_output(output: Any) -> torch.Tensor:
    """transformers 5 encoder layers return a tensor, 4.x a 1-tuple."""
    return output[0] if isinstance(output, tuple) else output


def _split_layer(
    layer: torch.nn.Module, hidden: torch.Tensor, merge: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """One SigLIP layer with ``merge(hidden, keys)`` between the attention residual and the MLP (ToMe)."""
    normed = layer.layer_norm1(hidden)
    attended = layer.self_attn(hidden_states=normed, attention_mask=None)
    hidden = hidden + _layer_output(attended)
    hidden = merge(hidden, head_averaged_keys(layer, normed))
    return hidden + layer.mlp(layer.layer_norm2(hidden))


class _NullTimer(StageTimer):
    """A timer that records nothing and never synchronises."""

    def stage(self, name: str):  # type: ignore[override]
        from contextlib import nullcontext

        return nullcontext()


NULL_TIMER = _NullTimer()


@torch.inference_mode()
def encode_frames(
    hf: Any,
    method: CompressionMethod,
    pixel_values: torch.Tensor,
    num_layers: int,
    *,
    pooling_head: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    timer: StageTimer | None = None,
) -> VideoEncoding:
    """Run the vision encoder with ``method``, then projector, pooling and the method's selection.

    Args:
        hf: the ``LlavaOnevisionModel`` (``model.model``).
        method: the compression method.
        pixel_values: ``[T, 3, H, W]`` one video's preprocessed frames, on the model's device and dtype.
        num_layers: encoder layers that run (up to the feature layer).
        pooling_head: for methods that read it, SigLIP's attention-pooling head: encoder output
            ``[T, S_v, D_v]`` -> (probe attention ``[T, S_v]``, frame features ``[T, D_v]``).
        timer: records ``vision_encoder``, ``compression`` and ``projector_pooling`` ms.
    Returns:
        The video's visual tokens ``[N, D_llm]`` (newline last) with the frame schedule.
    """
    timer = timer or NULL_TIMER
    vision = getattr(hf.vision_tower, "vision_model", hf.vision_tower)  # transformers 4.x nests it
    layers = vision.encoder.layers[:num_layers]
    plan = method.encoder_plan(num_layers)
    hooks = set(plan.hook_layers)
    merges = set(plan.merge_layers)
    frames_in = int(pixel_values.shape[0])

    with timer.stage("vision_encoder"):
        hidden = vision.embeddings(pixel_values)
    state = method.encoder_state(frames_in, int(hidden.shape[1]))
    signals = EncoderSignals(frames_in=frames_in, state=state)
    attention = None
    sources = tuple((frame,) for frame in range(frames_in))
    frames_per_layer: list[int] = []
    tokens_per_layer: list[int] = []
    # Runs of plain layers between the places the method acts are timed as one stage, so the device is
    # synchronised only around those places.
    special = set(hooks) | merges | {plan.attention_layer, plan.keys_layer} - {None}
    cuts = {0, len(layers)} | {layer + 1 for layer in hooks} | {layer for layer in special} | {
        layer + 1 for layer in merges
    }
    bounds = sorted(c for c in cuts if 0 <= c <= len(layers))
    for start, stop in zip(bounds, bounds[1:]):
        if start == plan.attention_layer:
            with timer.stage("compression"):
                attention = received_attention(layers[start], hidden)
        if start == plan.keys_layer:
            with timer.stage("compression"):
                signals.keys = head_averaged_keys(layers[start], layers[start].layer_norm1(hidden))
        with timer.stage("vision_encoder"):
            for index in range(start, stop):
                frames_per_layer.append(int(hidden.shape[0]))
                tokens_per_layer.append(int(hidden.shape[1]))
                if index in merges:
                    merge = _bound_merge(method, index, state)
                    hidden = _split_layer(layers[index], hidden, merge)
                else:
                    hidden = _layer_output(layers[index](hidden, None))
        if stop - 1 in hooks:
            with timer.stage("compression"):
                outcome = method.after_layer(stop - 1, hidden, attention)
            hidden, attention = outcome.hidden, outcome.attention
            if outcome.segments is not None:
                signals.segments = outcome.segments
            if outcome.plan is not None:
                sources = compose_sources(sources, outcome.plan)

    if plan.pooling_head:
        if pooling_head is None:
            raise RuntimeError(f"method '{method.name}' reads SigLIP's attention-pooling head, which is not loaded")
        with timer.stage("compression"):
            probe, signals.frame_features = pooling_head(hidden)
            signals.probe_attention = pool_grid(probe.float())
    with timer.stage("projector_pooling"):
        projected = hf.multi_modal_projector(hidden)
        features = method.pool(projected, hf.apply_pooling, state)  # [T', S, D_llm]
        if attention is not None:
            signals.attention = pool_grid(attention)
        if signals.keys is not None:
            signals.keys = pool_grid(signals.keys)
    with timer.stage("compression"):
        selection = method.select(features, signals)
        newline = hf.image_newline[None].to(selection.tokens.dtype)
        tokens = torch.cat([selection.tokens, newline])
    per_frame = int(features.shape[1])
    if isinstance(selection, TokenSelection):
        source, positions = selection.source, selection.positions
    else:
        source, positions = spatial_to_token_selection(selection, sources, per_frame).source, None
    if positions is not None:
        positions = torch.cat([positions, positions.new_full((1,), frames_in * per_frame)])
    return VideoEncoding(
        tokens=tokens,
        frames_in=frames_in,
        frames_per_layer=tuple(frames_per_layer),
        segments=signals.segments,
        frame_sources=sources,
        selection=selection,
        source=source,
        positions=positions,
        tokens_per_layer=tuple(tokens_per_layer),
        pooled_per_frame=per_frame,
    )


def _bound_merge(method: CompressionMethod, layer: int, state: Any):
    def merge(hidden: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return method.merge_in_layer(layer, hidden, keys, state)

    return merge
