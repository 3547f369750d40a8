"""VisionZip on LLaVA-OneVision, as HoliTom ports it (and EarlyTom reuses): dominant + contextual tokens per frame.

Pure tensor functions. Reference: cokeshao/HoliTom @ e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0,
``visionzip/llava_arch.py`` (the nested ``visionzip`` function of ``prepare_inputs_labels_for_multimodal``)
with ``visionzip/main.py`` and ``visionzip/utils.py``. EarlyTom's own port (viridisGreen/EarlyTom @ b909322)
cannot run as committed (``from .main import tome`` fails, its encoder never stores the key metric), so the
runnable HoliTom twin is followed; their ``llava_arch.py`` files are identical.

Inputs are per frame, after the projector and the 2x2 bilinear pooling: features ``F [T, S, D]``, the
received attention ``a [T, S]`` and the head-averaged keys ``m [T, S, Dk]`` of the last encoder layer, both
pooled the same way as the features (:func:`pool_grid` is a pure twin of that pooling). Per frame:

1. dominant: the ``d`` tokens with the highest ``a``, output in ascending raster order;
2. the other ``n_r = S - d`` tokens (ascending), their keys L2-normalised;
3. targets: the remaining-local indices ``0, step, 2 step, ...`` (first ``c``), ``step = max(1, n_r // c)``;
4. every non-target remaining token joins the target of highest key cosine (the first on ties);
5. contextual token ``j = F[target_j] + mean(F of its members)`` (reference quirk, as in the original
   VisionZip: the target is ADDED to the mean, not averaged with it); a target without members is unchanged;
6. frame output ``[d dominant] ++ [c contextual]`` (target order); frames in order. Positions are contiguous.

All frames are processed at once (gathers and one batched matmul); nothing loops per frame or token.
"""

from __future__ import annotations

import math

import torch

from .dpc import stable_topk
from .selection import MERGED, TokenSelection

__all__ = [
    "DOMINANT_RATIO",
    "SPATIAL_TOKENS",
    "pool_grid",
    "visionzip_counts",
    "visionzip_select",
    "visionzip_targets",
]

#: HoliTom's default ``DOMINANT_RATIO`` (the env var is unset in every script).
DOMINANT_RATIO = 54 / 64

#: ``SPATIAL_TOKENS`` (tokens per frame) of the HoliTom / EarlyTom scripts, per retention ratio.
SPATIAL_TOKENS = {0.10: 20, 0.15: 30, 0.20: 40, 0.25: 50}


def visionzip_counts(spatial_tokens: int, dominant_ratio: float = DOMINANT_RATIO) -> tuple[int, int]:
    """``(d, c)`` = ``(int(S_k * ratio), S_k - d)``: 20 -> (16, 4), 30 -> (25, 5), 40 -> (33, 7), 50 -> (42, 8)."""
    if spatial_tokens < 0:
        raise ValueError(f"spatial_tokens must be >= 0, got {spatial_tokens}")
    dominant = int(spatial_tokens * dominant_ratio)
    return dominant, spatial_tokens - dominant


def pool_grid(x: torch.Tensor) -> torch.Tensor:
    """LLaVA-OV's 2x2 pooling of per-frame grids: bilinear resize G x G -> ceil(G/2) x ceil(G/2).

    ``interpolate(mode="bilinear", align_corners=False)`` to an explicit size, as HF's ``apply_pooling``.

    Args:
        x: ``[T, G*G, C]`` or ``[T, G*G]`` (a score map), raster order.
    Returns:
        ``[T, ceil(G/2)^2, C]`` or ``[T, ceil(G/2)^2]``, same dtype.
    """
    squeeze = x.dim() == 2
    if squeeze:
        x = x[..., None]
    frames, tokens, channels = x.shape
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"pool_grid needs a square grid of tokens, got {tokens}")
    half = math.ceil(side / 2)
    grid = x.reshape(frames, side, side, channels).permute(0, 3, 1, 2)
    pooled = torch.nn.functional.interpolate(grid, size=(half, half), mode="bilinear", align_corners=False)
    out = pooled.permute(0, 2, 3, 1).reshape(frames, half * half, channels)
    return out[..., 0] if squeeze else out


def visionzip_targets(num_remaining: int, contextual: int) -> torch.Tensor:
    """Remaining-local indices of the contextual targets: ``arange(0, n_r, max(1, n_r // c))[:c]``.

    E.g. S = 196: S_k = 20 (n_r = 180, c = 4) -> 0, 45, 90, 135; S_k = 30 (n_r = 171, c = 5) -> 0, 34, ..., 136.
    """
    if contextual <= 0:
        return torch.empty(0, dtype=torch.long)
    if contextual > num_remaining:
        # The reference then gets fewer targets than c and fails to broadcast; refuse instead.
        raise ValueError(f"need contextual <= S - dominant, got c={contextual} > n_r={num_remaining}")
    step = max(1, num_remaining // contextual)
    return torch.arange(0, num_remaining, step)[:contextual]


def visionzip_select(
    features: torch.Tensor,
    attention: torch.Tensor,
    metric: torch.Tensor,
    dominant: int,
    contextual: int,
) -> TokenSelection:
    """VisionZip's dominant + contextual tokens of every frame.

    Args:
        features: ``[T, S, D]`` pooled projector output.
        attention: ``[T, S]`` pooled received attention (mean over heads, then over queries).
        metric: ``[T, S, Dk]`` pooled head-averaged keys of the same encoder layer.
        dominant: d tokens kept by attention per frame; contextual: c merged tokens per frame
            (see :func:`visionzip_counts`).
    Returns:
        :class:`TokenSelection` of ``T * (d + c)`` tokens in ``features``' dtype: per frame
        ``[d dominant (raster order)] ++ [c contextual (target order)]``; ``source`` is ``t * S + q`` for
        dominant tokens and -1 for contextual ones; ``positions`` None (contiguous).

    Ties in the attention ranking go to the earlier token (the reference's ``topk`` has no tie rule).
    Merging runs in float32 (the reference in fp16) and is cast back to the features' dtype.
    """
    frames, tokens, width = features.shape
    if attention.shape != (frames, tokens):
        raise ValueError(f"attention must be [T, S] = {(frames, tokens)}, got {tuple(attention.shape)}")
    if metric.shape[:2] != (frames, tokens):
        raise ValueError(f"metric must be [T, S, Dk] with T, S = {(frames, tokens)}, got {tuple(metric.shape)}")
    if not 0 <= dominant <= tokens:
        raise ValueError(f"dominant must be in [0, {tokens}], got {dominant}")
    device = features.device
    remaining = tokens - dominant
    targets = visionzip_targets(remaining, contextual).to(device)
    contextual = int(targets.numel())

    # 1. Dominant tokens, raster order; 2. the rest, ascending.
    is_dominant = torch.zeros(frames, tokens, dtype=torch.bool, device=device)
    is_dominant.scatter_(1, stable_topk(attention.float(), dominant), True)
    order = torch.arange(tokens, device=device).expand(frames, tokens)
    dom_idx = order[is_dominant].view(frames, dominant)
    rest_idx = order[~is_dominant].view(frames, remaining)
    frame_offset = torch.arange(frames, device=device)[:, None] * tokens
    dom_tokens = features.gather(1, dom_idx[..., None].expand(-1, -1, width))
    dom_source = (dom_idx + frame_offset).reshape(-1)
    if contextual == 0:
        return TokenSelection(tokens=dom_tokens.reshape(-1, width), source=dom_source)

    rest_x = features.gather(1, rest_idx[..., None].expand(-1, -1, width)).float()  # [T, n_r, D]
    rest_m = metric.gather(1, rest_idx[..., None].expand(-1, -1, metric.shape[-1])).float()
    rest_m = rest_m / rest_m.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)

    # 3.-5. Positional targets; the others join the most similar target.
    is_target = torch.zeros(remaining, dtype=torch.bool, device=device)
    is_target[targets] = True
    others = (~is_target).nonzero().squeeze(1)
    similarity = rest_m[:, others] @ rest_m[:, targets].transpose(1, 2)  # [T, n_r - c, c]
    one_hot = torch.nn.functional.one_hot(similarity.argmax(dim=-1), contextual).to(torch.float32)
    counts = one_hot.sum(dim=1).clamp(min=1.0)[..., None]  # [T, c, 1]
    merged_mean = one_hot.transpose(1, 2) @ rest_x[:, others] / counts
    context = rest_x[:, targets] + merged_mean  # REFERENCE QUIRK: added, not averaged

    # 6. Per frame [dominant, contextual].
    out = torch.cat([dom_tokens, context.to(features.dtype)], dim=1).reshape(-1, width)
    ctx_source = torch.full((frames, contextual), MERGED, dtype=torch.long, device=device)
    source = torch.cat([dom_source.view(frames, dominant), ctx_source], dim=1).reshape(-1)
    return TokenSelection(tokens=out, source=source)
