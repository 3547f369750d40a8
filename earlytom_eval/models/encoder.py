"""A video through LLaVA-OneVision's SigLIP encoder, projector and pooling, with a compression method applied.

This module knows transformers' modules, not lmms-eval. It runs the model's own SigLIP layers one by one
(SDPA; frames are the batch dimension) and gives the method, at the places its
:class:`~earlytom_eval.compression.methods.EncoderPlan` names, the signals it reads, computed only there:
the received attention of one layer, one layer's head-averaged keys, a merge between attention and MLP
(ToMe), and the attention-pooling head's outputs (FastVID). Frames or tokens a method removes inside the
encoder are gone for every later layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..compression.methods import CompressionMethod, EncoderSignals, pooled_count, spatial_to_token_selection
from ..compression.selection import TokenSelection
from ..compression.spatial import SpatialSelection
from ..compression.temporal import compose_sources
from ..compression.visionzip import pool_grid
from ..timing import StageTimer

__all__ = [
    "VideoEncoding",
    "attention_received",
    "capture_projections",
    "encode_frames",
    "encode_videos",
    "head_averaged",
    "projections_to_heads",
    "received_attention",
    "save_tokens",
]

Segment = tuple[int, int]


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


#: Float32 scratch per step of :func:`attention_received`. Below glibc's largest mmap threshold (32 MiB), so
#: the buffer is recycled from the heap instead of being faulted in afresh at every step.
_SCRATCH_BYTES = 24 * 2**20


def attention_received(queries: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(scale * Q K^T)`` averaged over heads and query positions, per frame, without materialising it.

    Per frame and group of heads: the scores in the inputs' dtype (bf16 scores in a bf16 model, as the
    reference's eager attention computes them), the softmax in float32 (one fused pass per row), the sum
    over heads and queries. The float32 scratch is one group's ``[h, S, S]`` probabilities.

    Args:
        queries, keys: ``[T, H, S, d]`` (any strides with a contiguous last dim).
        scale: the softmax scale (``d ** -0.5``).
    Returns:
        ``[T, S]`` float32.
    """
    frames, heads, tokens, _ = queries.shape
    per_step = max(1, min(heads, _SCRATCH_BYTES // (4 * tokens * tokens)))
    out = torch.zeros(frames, tokens, dtype=torch.float32, device=queries.device)
    for frame in range(frames):
        for head in range(0, heads, per_step):
            q = queries[frame, head : head + per_step] * scale  # contiguous copy
            k = keys[frame, head : head + per_step].contiguous()
            scores = torch.matmul(q, k.transpose(-1, -2))  # [h, S, S] in the inputs' dtype
            # One fused pass per row (max, exp, sum, divide) in float32, then the column sums.
            out[frame] += torch.softmax(scores, dim=-1, dtype=torch.float32).sum(dim=(0, 1))
    return out.div_(heads * tokens)


def projections_to_heads(projected: torch.Tensor, heads: int) -> torch.Tensor:
    """``[T, S, H * d]`` (a ``q_proj`` / ``k_proj`` output) -> ``[T, H, S, d]`` (a view)."""
    frames, tokens, _ = projected.shape
    return projected.view(frames, tokens, heads, -1).transpose(1, 2)


@contextmanager
def capture_projections(attention: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """While active, the outputs of ``attention.q_proj`` and ``attention.k_proj`` land in the yielded dict.

    ``{"q": [T, S, D], "k": [T, S, D]}`` after the layer ran: exactly the projections its attention used.
    """
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured[name] = output

        return hook

    handles = [
        attention.q_proj.register_forward_hook(keep("q")),
        attention.k_proj.register_forward_hook(keep("k")),
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def received_attention(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Attention each token receives in a SigLIP encoder layer, recomputing its queries and keys.

    The pipeline captures the projections instead (:func:`capture_projections`); this form is for callers
    that hold only the layer and its input.

    Args:
        layer: a ``SiglipEncoderLayer``.
        hidden: ``[T, S, D]`` the layer's input.
    Returns:
        ``[T, S]`` float32.
    """
    attn = layer.self_attn
    x = layer.layer_norm1(hidden)
    queries = projections_to_heads(attn.q_proj(x), attn.num_heads)
    keys = projections_to_heads(attn.k_proj(x), attn.num_heads)
    return attention_received(queries, keys, attn.scale)


def head_averaged(projected: torch.Tensor, heads: int) -> torch.Tensor:
    """``[T, N, H * d]`` (a ``k_proj`` output) averaged over heads: ``[T, N, d]`` (VisionZip's and ToMe's metric)."""
    frames, tokens, _ = projected.shape
    return projected.view(frames, tokens, heads, -1).mean(dim=2)


def _layer_output(output: Any) -> torch.Tensor:
    """transformers 5 encoder layers return a tensor, 4.x a 1-tuple."""
    return output[0] if isinstance(output, tuple) else output


def _split_layer(
    layer: torch.nn.Module, hidden: torch.Tensor, merge: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """One SigLIP layer with ``merge(hidden, keys)`` between the attention residual and the MLP (ToMe)."""
    normed = layer.layer_norm1(hidden)
    with capture_projections(layer.self_attn) as captured:  # the keys its own attention used
        attended = layer.self_attn(hidden_states=normed, attention_mask=None)
    hidden = hidden + _layer_output(attended)
    hidden = merge(hidden, head_averaged(captured["k"], layer.self_attn.num_heads))
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
    """One video: :func:`encode_videos` of ``[pixel_values]``."""
    return encode_videos(hf, method, [pixel_values], num_layers, pooling_head=pooling_head, timer=timer)[0]


@torch.inference_mode()
def encode_videos(
    hf: Any,
    method: CompressionMethod,
    videos: list[torch.Tensor],
    num_layers: int,
    *,
    pooling_head: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    timer: StageTimer | None = None,
) -> list[VideoEncoding]:
    """Run the vision encoder with ``method``, then projector, pooling and the method's selection, for a batch.

    SigLIP attends within a frame, so the frames of every video go through each encoder layer in ONE call
    (frames are the batch dimension); where the method acts on a video as a whole (frame merging, in-layer
    merging with its per-video state, selection), it acts on each video's own frames. The result for each
    video is the one it gets alone.

    Args:
        hf: the ``LlavaOnevisionModel`` (``model.model``).
        method: the compression method.
        videos: per video ``[T_i, 3, H, W]`` preprocessed frames, on the model's device and dtype.
        num_layers: encoder layers that run (up to the feature layer).
        pooling_head: for methods that read it, SigLIP's attention-pooling head: encoder output
            ``[T, S_v, D_v]`` -> (probe attention ``[T, S_v]``, frame features ``[T, D_v]``).
        timer: records ``vision_encoder``, ``compression`` and ``projector_pooling`` ms.
    Returns:
        Per video, its visual tokens ``[N_i, D_llm]`` (newline last) with the frame schedule.
    """
    timer = timer or NULL_TIMER
    vision = getattr(hf.vision_tower, "vision_model", hf.vision_tower)  # transformers 4.x nests it
    layers = vision.encoder.layers[:num_layers]
    plan = method.encoder_plan(num_layers)
    hooks = set(plan.hook_layers)
    merges = set(plan.merge_layers)
    counts = [int(v.shape[0]) for v in videos]

    with timer.stage("vision_encoder"):
        hidden = vision.embeddings(torch.cat(videos) if len(videos) > 1 else videos[0])
    patches = int(hidden.shape[1])
    states = [method.encoder_state(n, patches) for n in counts]
    signals = [EncoderSignals(frames_in=n, state=state) for n, state in zip(counts, states)]
    attention: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    sources = [tuple((frame,) for frame in range(n)) for n in counts]
    frames_per_layer: list[list[int]] = [[] for _ in videos]
    tokens_per_layer: list[int] = []
    # Runs of plain layers between the places the method acts are timed as one stage, so the device is
    # synchronised only around those places.
    special = hooks | merges | ({plan.attention_layer, plan.keys_layer} - {None})
    cuts = {0, len(layers)} | {layer + 1 for layer in hooks | merges} | special
    bounds = sorted(c for c in cuts if 0 <= c <= len(layers))
    for start, stop in zip(bounds, bounds[1:]):
        first = start
        if start in (plan.attention_layer, plan.keys_layer) and start not in merges:
            # This layer's own attention projections are the signals: captured while it runs, not recomputed.
            attn = layers[start].self_attn
            with timer.stage("vision_encoder"), capture_projections(attn) as captured:
                for per_video, n in zip(frames_per_layer, counts):
                    per_video.append(n)
                tokens_per_layer.append(int(hidden.shape[1]))
                hidden = _layer_output(layers[start](hidden, None))
            with timer.stage("compression"):
                if start == plan.attention_layer:
                    queries = projections_to_heads(captured["q"], attn.num_heads)
                    attention = attention_received(queries, projections_to_heads(captured["k"], attn.num_heads),
                                                   attn.scale)
                if start == plan.keys_layer:
                    keys = head_averaged(captured["k"], attn.num_heads)
            first = start + 1
        with timer.stage("vision_encoder"):
            for index in range(first, stop):
                for per_video, n in zip(frames_per_layer, counts):
                    per_video.append(n)
                tokens_per_layer.append(int(hidden.shape[1]))
                if index in merges:
                    hidden = _merge_layer(method, layers[index], index, hidden, counts, states)
                else:
                    hidden = _layer_output(layers[index](hidden, None))
        if stop - 1 in hooks:
            with timer.stage("compression"):
                pieces = hidden.split(counts)
                parts = attention.split(counts) if attention is not None else [None] * len(counts)
                outcomes = [method.after_layer(stop - 1, h, a) for h, a in zip(pieces, parts)]
            hidden = _cat([o.hidden for o in outcomes])
            attention = _cat([o.attention for o in outcomes]) if attention is not None else None
            counts = [int(o.hidden.shape[0]) for o in outcomes]
            for v, outcome in enumerate(outcomes):
                if outcome.segments is not None:
                    signals[v].segments = outcome.segments
                if outcome.plan is not None:
                    sources[v] = compose_sources(sources[v], outcome.plan)

    probe = frame_features = None
    if plan.pooling_head:
        if pooling_head is None:
            raise RuntimeError(f"method '{method.name}' reads SigLIP's attention-pooling head, which is not loaded")
        with timer.stage("compression"):
            probe, frame_features = pooling_head(hidden)
            probe = pool_grid(probe.float())
    with timer.stage("projector_pooling"):
        projected = hf.multi_modal_projector(hidden).split(counts)
        features = [method.pool(p, hf.apply_pooling, state) for p, state in zip(projected, states)]  # [T', S, D]
        pooled_attention = pool_grid(attention).split(counts) if attention is not None else None
        pooled_keys = pool_grid(keys).split(counts) if keys is not None else None
    encodings = []
    for v, (video_features, video_signals) in enumerate(zip(features, signals)):
        if pooled_attention is not None:
            video_signals.attention = pooled_attention[v]
        if pooled_keys is not None:
            video_signals.keys = pooled_keys[v]
        if probe is not None:
            video_signals.probe_attention = probe.split(counts)[v]
            video_signals.frame_features = frame_features.split(counts)[v]
        with timer.stage("compression"):
            selection = method.select(video_features, video_signals)
            newline = hf.image_newline[None].to(selection.tokens.dtype)
            tokens = torch.cat([selection.tokens, newline])
        encodings.append(
            # The model's pooled grid, also for a method that pools its merged frames itself (ToMe).
            _encoding(tokens, selection, video_signals, sources[v], frames_per_layer[v], tokens_per_layer,
                      pooled_count(math.isqrt(patches)))
        )
    return encodings


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _merge_layer(
    method: CompressionMethod,
    layer: torch.nn.Module,
    index: int,
    hidden: torch.Tensor,
    counts: list[int],
    states: list[Any],
) -> torch.Tensor:
    """A merge layer on a batch of videos: attention and MLP batched, the merge per video with its state."""

    def merge(batch_hidden: torch.Tensor, batch_keys: torch.Tensor) -> torch.Tensor:
        pieces = zip(batch_hidden.split(counts), batch_keys.split(counts), states)
        return _cat([method.merge_in_layer(index, h, k, state) for h, k, state in pieces])

    return _split_layer(layer, hidden, merge)


def _encoding(
    tokens: torch.Tensor,
    selection: SpatialSelection | TokenSelection,
    signals: EncoderSignals,
    sources: tuple[tuple[int, ...], ...],
    frames_per_layer: list[int],
    tokens_per_layer: list[int],
    per_frame: int,
) -> VideoEncoding:
    if isinstance(selection, TokenSelection):
        source, positions = selection.source, selection.positions
    else:
        source, positions = spatial_to_token_selection(selection, sources, per_frame).source, None
    if positions is not None:
        positions = torch.cat([positions, positions.new_full((1,), signals.frames_in * per_frame)])
    return VideoEncoding(
        tokens=tokens,
        frames_in=signals.frames_in,
        frames_per_layer=tuple(frames_per_layer),
        segments=signals.segments,
        frame_sources=sources,
        selection=selection,
        source=source,
        positions=positions,
        tokens_per_layer=tuple(tokens_per_layer),
        pooled_per_frame=per_frame,
    )
