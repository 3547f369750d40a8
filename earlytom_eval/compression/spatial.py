"""Stage 2 of EarlyTom: decoupled spatial token selection after the projector and pooling.

Pure tensor functions. Inputs are the pooled features of the T' frames left after stage 1
(``[T', S, D]``), the received attention pooled the same way (``[T', S]``), and the final segments.
Frames of one role share a token count, so selection is batched per role (one ``topk`` for all
dynamic frames, one windowed ``argmax`` for all static frames); no Python loop runs per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .dpc import dpc_knn_merge

__all__ = [
    "SpatialSelection",
    "dpc_knn_context",
    "dynamic_token_count",
    "effective_retention",
    "frame_is_static",
    "select_dynamic",
    "select_static",
    "select_tokens",
    "static_token_count",
    "static_windows",
]

Segment = tuple[int, int]


def effective_retention(retention: float, frames_in: int, frames_kept: int) -> float:
    """``rho' = min(rho * T0 / T', 1)``: frames removed in the encoder give their budget back."""
    if frames_kept < 1 or frames_in < frames_kept:
        raise ValueError(f"need 1 <= frames_kept <= frames_in, got frames_in={frames_in}, frames_kept={frames_kept}")
    return min(retention * frames_in / frames_kept, 1.0)


def dynamic_token_count(num_tokens: int, rho_eff: float) -> int:
    """Tokens kept in a dynamic frame: ``ceil(S * rho')``."""
    return min(num_tokens, math.ceil(num_tokens * rho_eff))


def static_token_count(num_tokens: int, rho_eff: float) -> int:
    """Tokens kept in a static frame: ``max(1, round(S * rho'))``.

    ``round`` is Python's (half to even), as in the reference; with ``ceil`` for dynamic frames the total
    can differ from ``rho * T0 * S`` by a few tokens.
    """
    return min(num_tokens, max(1, round(num_tokens * rho_eff)))


def frame_is_static(segments: list[Segment] | tuple[Segment, ...], num_frames: int) -> torch.Tensor:
    """``[T']`` bool: the middle frames of segments with 3 or more frames are static, all others dynamic."""
    is_static = torch.zeros(num_frames, dtype=torch.bool)
    covered = 0
    for start, end in segments:
        if start != covered or end < start:
            raise ValueError(f"segments must tile frames 0..{num_frames - 1} in order, got {list(segments)}")
        covered = end + 1
        if end - start + 1 >= 3:
            is_static[start + 1 : end] = True
    if covered != num_frames:
        raise ValueError(f"segments must tile frames 0..{num_frames - 1} in order, got {list(segments)}")
    return is_static


def select_dynamic(attention: torch.Tensor, count: int) -> torch.Tensor:
    """Top-``count`` tokens by attention per frame, returned in raster order.

    Args:
        attention: ``[F, S]``.
    Returns:
        ``[F, count]`` long token indices, ascending in each row.
    """
    top = attention.topk(count, dim=-1, sorted=False).indices
    return top.sort(dim=-1).values


def static_windows(num_tokens: int, count: int) -> torch.Tensor:
    """Window id of each token when S tokens (raster order) are split into ``count`` contiguous windows.

    Sizes are as equal as possible, the first ``S mod count`` windows one token larger (``torch.tensor_split``).
    Returns ``[S]`` long.
    """
    if not 1 <= count <= num_tokens:
        raise ValueError(f"window count must be in [1, {num_tokens}], got {count}")
    base, extra = divmod(num_tokens, count)
    sizes = torch.full((count,), base, dtype=torch.long)
    sizes[:extra] += 1
    return torch.repeat_interleave(torch.arange(count), sizes)


def select_static(attention: torch.Tensor, count: int) -> torch.Tensor:
    """The highest-attention token of each of ``count`` contiguous windows, per frame, in window order.

    Args:
        attention: ``[F, S]``.
    Returns:
        ``[F, count]`` long token indices (ascending, one per window). Ties go to the first token.
    """
    num_frames, num_tokens = attention.shape
    window = static_windows(num_tokens, count).to(attention.device)
    width = int(torch.bincount(window).max())
    starts = torch.searchsorted(window, torch.arange(count, device=attention.device))
    # [count, width] token index grid, padded past each window's end with -1.
    offsets = torch.arange(width, device=attention.device)
    grid = starts[:, None] + offsets[None, :]
    valid = grid < torch.cat([starts[1:], starts.new_tensor([num_tokens])])[:, None]
    grid = torch.where(valid, grid, torch.zeros_like(grid))
    scores = attention.float()[:, grid]  # [F, count, width]
    scores = scores.masked_fill(~valid, float("-inf"))
    best = scores.argmax(dim=-1)  # first maximum on ties
    return grid[None].expand(num_frames, -1, -1).gather(-1, best[..., None]).squeeze(-1)


def dpc_knn_context(
    tokens: torch.Tensor,
    num_clusters: int,
    k: int,
    beta: float,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Contextual tokens from DPC-KNN clustering (density peaks with k nearest neighbours), as EarlyTom does.

    Follows ``merge_tokens_by_attention_frame`` -> ``cluster_dpc_knn`` + ``merge_tokens_by_clustering`` of
    viridisGreen/EarlyTom @ b90932217325d986d11364c5d31466ab1812caa1, ``earlytom/llava_arch.py`` (the same
    code as cokeshao/HoliTom @ e9b2972, ``holitom/llava_arch.py``), through :mod:`.dpc`:

    - density of a token: ``exp(-mean squared distance to its k nearest neighbours)``, the token itself
      counting among them; distances are ``cdist / sqrt(D)`` in float32;
    - peak distance: distance to the nearest denser token (the densest gets the largest distance); of two
      equally dense tokens the earlier counts as denser. The reference's ``1e-6 * U(0, 1)`` density noise is
      added only when ``generator`` is given (None: deterministic);
    - the ``num_clusters`` tokens with the highest ``density * peak distance`` are centres (earlier token on
      ties); every other token joins its nearest centre (the first on ties);
    - a contextual token is ``beta * centre + (1 - beta) * mean(members)``, where the members EXCLUDE the
      centre, or the centre alone when nothing joined it (reference quirk of ``merge_tokens_by_clustering``).

    Args:
        tokens: ``[M, D]`` (or ``[B, M, D]``, one clustering per row) tokens to summarise.
        num_clusters: clipped to M; k: neighbourhood size (the caller passes ``min(K, num_clusters)``).
    Returns:
        ``[num_clusters, D]`` (or ``[B, num_clusters, D]``) contextual tokens in ``tokens``' dtype, ordered by
        their centre's position in ``tokens``.
    """
    merged, _ = dpc_knn_merge(tokens, num_clusters, k, beta, generator=generator)
    return merged


@dataclass(frozen=True)
class SpatialSelection:
    """Result of stage 2 for one video.

    Attributes:
        tokens: ``[N, D]`` selected (and contextual) tokens of all frames, in frame order; no newline.
        kept: per frame, the ``[n_f]`` long indices of the tokens picked from its S pooled tokens.
        is_static: ``[T']`` bool, the role of each frame.
        rho_eff: the effective per-frame retention.
        dynamic_count, static_count: tokens per dynamic / static frame (contextual ones included).
    """

    tokens: torch.Tensor
    kept: tuple[torch.Tensor, ...]
    is_static: torch.Tensor
    rho_eff: float
    dynamic_count: int
    static_count: int


def select_tokens(
    features: torch.Tensor,
    attention: torch.Tensor,
    segments: list[Segment] | tuple[Segment, ...],
    *,
    retention: float,
    frames_in: int,
    D: float = 0.0,
    K: int = 7,
    beta: float = 0.6,
    generator: torch.Generator | None = None,
) -> SpatialSelection:
    """Decoupled spatial selection of one video.

    Args:
        features: ``[T', S, D]`` pooled features of the frames left after stage 1.
        attention: ``[T', S]`` received attention pooled the same way.
        segments: final segments, tiling 0..T'-1.
        retention: target rho; frames_in: T0, the frames that entered the encoder.
        D, K, beta: DPC-KNN contextual tokens (D = 0: off); see :func:`dpc_knn_context`.
        generator: D > 0 only: source of the reference's density noise; None (default) adds none.

    Dynamic frames keep ``ceil(S * rho')`` tokens (top by attention; with D > 0 only ``round(n * (1 - D))``
    of them by attention and the rest contextual); static frames keep ``max(1, round(S * rho'))``, the best
    token of each local window. Tokens come out in frame order, which is also the reference's per-segment
    order (first frame, middle frames, last frame).

    D > 0 (EarlyTom ``merge_tokens_by_attention_frame``): each dynamic frame's tokens are its attention picks
    in raster order, then its ``n - round(n * (1 - D))`` contextual tokens from DPC-KNN of that frame's other
    tokens (ascending position), ``k = min(K, n_context)``, ordered by centre position. The reference's own
    D > 0 path crashes for a segment of one or two dynamic frames (``pos.masked_select(mask.unsqueeze(-1))``
    does not broadcast to the intended shape); here every dynamic frame is clustered on its own, batched
    over the dynamic frames.
    """
    num_frames, num_tokens, _ = features.shape
    if attention.shape != (num_frames, num_tokens):
        raise ValueError(f"attention must be [T', S] = {(num_frames, num_tokens)}, got {tuple(attention.shape)}")
    rho_eff = effective_retention(retention, frames_in, num_frames)
    is_static = frame_is_static(segments, num_frames)
    dyn_count = dynamic_token_count(num_tokens, rho_eff)
    stat_count = static_token_count(num_tokens, rho_eff)
    n_by_attention = dyn_count if D <= 0 else round(dyn_count * (1.0 - D))
    n_context = dyn_count - n_by_attention

    device = features.device
    static_idx = is_static.nonzero().squeeze(1).to(device)
    dynamic_idx = (~is_static).nonzero().squeeze(1).to(device)
    kept = torch.empty(num_frames, 0, dtype=torch.long, device=device)
    per_frame: list[torch.Tensor] = [kept[0]] * num_frames
    dyn_picked = kept[dynamic_idx]
    if dynamic_idx.numel():
        if n_by_attention:
            dyn_picked = select_dynamic(attention[dynamic_idx], n_by_attention)
        for row, frame in enumerate(dynamic_idx.tolist()):
            per_frame[frame] = dyn_picked[row]
    if static_idx.numel():
        picked = select_static(attention[static_idx], stat_count)
        for row, frame in enumerate(static_idx.tolist()):
            per_frame[frame] = picked[row]

    # One gather for every frame's picked tokens, in frame order.
    flat = torch.cat([per_frame[frame] + frame * num_tokens for frame in range(num_frames)])
    tokens = features.reshape(num_frames * num_tokens, -1).index_select(0, flat)
    if n_context and dynamic_idx.numel():
        # Optional path (D > 0): contextual tokens follow each dynamic frame's picked tokens. Every dynamic
        # frame has the same number of other tokens, so one batched clustering covers all of them.
        rest = torch.ones(len(dynamic_idx), num_tokens, dtype=torch.bool, device=device)
        rest.scatter_(1, dyn_picked, False)
        others = features[dynamic_idx][rest].view(len(dynamic_idx), num_tokens - n_by_attention, -1)
        context = dpc_knn_context(others, n_context, min(K, n_context), beta, generator=generator)
        pieces = list(tokens.split([int(p.numel()) for p in per_frame]))
        for row, frame in enumerate(dynamic_idx.tolist()):
            pieces[frame] = torch.cat([pieces[frame], context[row]])
        tokens = torch.cat(pieces)
    return SpatialSelection(
        tokens=tokens,
        kept=tuple(per_frame),
        is_static=is_static,
        rho_eff=rho_eff,
        dynamic_count=dyn_count,
        static_count=stat_count,
    )
