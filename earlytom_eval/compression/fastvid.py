"""FastVID: dynamic segmentation, salient tokens by attention, density-based context tokens merged per segment.

Pure tensor functions. Reference: LunarShen/FastVID @ a40a109cb8df20e8c2c17c6850f8269717369990,
``fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py`` (the FastVID block of
``Qwen2Model.forward``); EarlyTom's ``fastvid/`` (viridisGreen/EarlyTom @ b909322) copies it. The reference
acts on the embedded sequence before LLM layer 0; here the same selection is computed on the video's pooled
tokens, and the caller splices them in with the returned positions (original RoPE positions, gaps kept).

Inputs: features ``F [T, S, D]``, probe attention ``w [T, S]`` (SigLIP MAP head, pooled like the features)
and frame global features ``g [T, Dg]`` (the MAP head's output).

1. DySeg (:func:`dyseg`): ``sim_t = cos(g_t, g_{t+1})``; cuts = the ``c - 1`` smallest ``sim`` ∪
   ``{t : sim_t < tau}``; a cut t ends a segment after frame t.
2. Budgets (:func:`fastvid_budgets`): ``n_keep = int(S rho)``, ``n_sal = n_keep - int(d n_keep)``,
   ``n_ctx = n_keep - n_sal``. Anchors (:func:`anchor_budget`): in a segment of L frames, ``m = ceil(L / p)``
   anchor frames (the last, then every p-th backwards), each with ``b = floor(n_ctx L / m)`` contexts.
3. ATS: per frame the ``n_sal`` highest-``w`` tokens are kept unchanged.
4. Per frame, DPC on the other ``S - n_sal`` tokens (ascending position): ``cdist / sqrt(D)``, density over
   the ``k = 4`` nearest (self included), ``score = delta * density`` (:mod:`.dpc`).
5. Single-frame segment: contexts = top ``n_ctx`` scores of the frame; every remaining token of the frame,
   the contexts included, joins the context of highest cosine (the first, in score order, on ties);
   ``out_j = w_j ctx_j + (1 - w_j) mean(assigned_j)`` with ``w_j = max(1 / (n_j + 1), beta)``.
6. Multi-frame segment: each anchor frame takes its top ``b`` scores as contexts; the pool is the remaining
   tokens of ALL L frames of the segment; each anchor independently assigns every pool token to its
   highest-cosine context, same update rule (a token can feed contexts of several anchors).
7. Output: salient tokens and contexts sorted by their original frame-major index ``t * S + q`` (a context
   labelled with its context token's index); those indices are the tokens' positions.

Choices where the reference is loose: ties in every top-k (salient, smallest similarities, context scores)
go to the earlier index; cosines and merges run in float32 (the reference in fp16) and are cast back; the
``1e-6 * U`` density noise is drawn from an explicit generator, none without one; a segment whose anchor
budget ``b`` exceeds the frame's ``S - n_sal`` remaining tokens (impossible at rho <= 0.25 with S = 196,
where the reference would fail in ``topk``) takes all of them; ``c - 1`` is capped at ``T - 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .dpc import dpc_score, stable_topk
from .selection import MERGED, TokenSelection

__all__ = [
    "FastVIDResult",
    "anchor_budget",
    "dyseg",
    "fastvid_budgets",
    "fastvid_select",
    "merge_contexts",
]

Segment = tuple[int, int]


def fastvid_budgets(num_tokens: int, retention: float, d: float = 0.4) -> tuple[int, int, int]:
    """``(n_keep, n_sal, n_ctx)`` per frame: ``int(S rho)``, ``n_keep - int(d n_keep)``, the difference.

    S = 196, d = 0.4: rho 0.10 -> (19, 12, 7), 0.15 -> (29, 18, 11), 0.20 -> (39, 24, 15), 0.25 -> (49, 30, 19).
    """
    keep = int(num_tokens * retention)
    salient = keep - int(keep * d)
    return keep, salient, keep - salient


def dyseg(global_features: torch.Tensor, c: int = 8, tau: float = 0.9) -> list[Segment]:
    """FastVID's dynamic segmentation of T frames.

    Args:
        global_features: ``[T, Dg]`` frame global features.
        c: at least ``c - 1`` cuts (capped at ``T - 1``), at the smallest similarities (earlier on ties).
        tau: every similarity below tau is also a cut.
    Returns:
        inclusive ``(start, end)`` segments tiling ``0..T-1``.
    """
    frames = global_features.shape[0]
    if frames == 0:
        return []
    unit = global_features.float()
    unit = unit / unit.norm(dim=-1, keepdim=True)
    sim = (unit[:-1] * unit[1:]).sum(dim=-1)  # [T-1]
    forced = stable_topk(sim, min(max(c - 1, 0), frames - 1), largest=False)
    below = (sim < tau).nonzero().squeeze(1)
    cuts = sorted(set(forced.tolist()) | set(below.tolist()))
    segments, start = [], 0
    for cut in cuts:
        segments.append((start, cut))
        start = cut + 1
    segments.append((start, frames - 1))
    return segments


def anchor_budget(length: int, n_ctx: int, p: int = 4) -> tuple[list[int], int]:
    """Anchor frames of a segment of ``length`` frames and their context count.

    Returns:
        ``(anchors, b)``: local indices j with ``(length - 1 - j) % p == 0`` (ascending: the last frame, every
        p-th backwards), and ``b = floor(n_ctx * length / ceil(length / p))``. ``length = 1`` gives ``b = n_ctx``.
    """
    anchors_n = math.ceil(length / p)
    anchors = [j for j in range(length) if (length - 1 - j) % p == 0]
    return anchors, (n_ctx * length) // anchors_n


def merge_contexts(
    contexts: torch.Tensor,
    pool: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """FastVID's DTM update: every pool token joins its highest-cosine context (the first on ties).

    ``out_j = w_j ctx_j + (1 - w_j) mean(assigned_j)``, ``w_j = max(1 / (n_j + 1), beta)``; a context with no
    assigned token stays as it is.

    Args:
        contexts: ``[B, C, D]``; pool: ``[B, P, D]`` (the contexts are normally among the pool tokens).
    Returns:
        ``[B, C, D]`` float32.
    """
    count = contexts.shape[1]
    pool_f, ctx_f = pool.float(), contexts.float()
    tiny = torch.finfo(torch.float32).tiny
    unit_pool = pool_f / pool_f.norm(dim=-1, keepdim=True).clamp(min=tiny)
    unit_ctx = ctx_f / ctx_f.norm(dim=-1, keepdim=True).clamp(min=tiny)
    similarity = unit_pool @ unit_ctx.transpose(1, 2)  # [B, P, C]
    one_hot = torch.nn.functional.one_hot(similarity.argmax(dim=-1), count).to(torch.float32)
    sizes = one_hot.sum(dim=1)[..., None]  # [B, C, 1]
    weight = (1.0 / (sizes + 1.0)).clamp(min=beta)
    mean = one_hot.transpose(1, 2) @ pool_f / sizes.clamp(min=1.0)
    return weight * ctx_f + (1.0 - weight) * mean


@dataclass(frozen=True)
class FastVIDResult:
    """Result of :func:`fastvid_select` for one video.

    Attributes:
        selection: tokens sorted by ``positions`` (original frame-major indices ``t * S + q``; a context at
            its context token's index); ``source`` equals ``positions`` for salient tokens, -1 for contexts.
        segments: DySeg's segments; budgets: ``(n_keep, n_sal, n_ctx)``.
    """

    selection: TokenSelection
    segments: tuple[Segment, ...]
    budgets: tuple[int, int, int]


def fastvid_select(
    features: torch.Tensor,
    attention: torch.Tensor,
    global_features: torch.Tensor,
    *,
    retention: float,
    c: int = 8,
    tau: float = 0.9,
    d: float = 0.4,
    p: int = 4,
    beta: float = 0.6,
    k: int = 4,
    generator: torch.Generator | None = None,
) -> FastVIDResult:
    """FastVID's token selection of one video (reference defaults: c 8, tau 0.9, d 0.4, p 4, beta 0.6, k 4).

    Args:
        features: ``[T, S, D]`` pooled projector output; attention: ``[T, S]`` pooled probe attention;
        global_features: ``[T, Dg]``.
        generator: source of the DPC density noise; None: no noise (deterministic).
    Returns:
        :class:`FastVIDResult`; ``T n_sal + sum over segments of m b`` tokens, i.e. ``T n_keep`` when every
        segment is a single frame, fewer when ``floor`` rounds a multi-frame budget down.
    """
    frames, tokens, width = features.shape
    if attention.shape != (frames, tokens):
        raise ValueError(f"attention must be [T, S] = {(frames, tokens)}, got {tuple(attention.shape)}")
    if global_features.shape[0] != frames:
        raise ValueError(f"global_features must be [T, Dg] with T = {frames}, got {tuple(global_features.shape)}")
    device = features.device
    segments = dyseg(global_features, c, tau)
    budgets = fastvid_budgets(tokens, retention, d)
    _, n_sal, n_ctx = budgets
    remaining = tokens - n_sal
    frame_offset = torch.arange(frames, device=device)[:, None] * tokens

    # ATS: salient tokens; the rest in ascending position.
    salient = stable_topk(attention.float(), n_sal)  # [T, n_sal]
    is_salient = torch.zeros(frames, tokens, dtype=torch.bool, device=device).scatter_(1, salient, True)
    order = torch.arange(tokens, device=device).expand(frames, tokens)
    salient = order[is_salient].view(frames, n_sal)
    rest = order[~is_salient].view(frames, remaining)
    out_tokens = [features.gather(1, salient[..., None].expand(-1, -1, width)).reshape(-1, width)]
    out_index = [(salient + frame_offset).reshape(-1)]
    out_source = [out_index[0]]
    rest_x = features.gather(1, rest[..., None].expand(-1, -1, width))  # [T, R, D]
    rest_index = rest + frame_offset  # [T, R] frame-major

    if n_ctx > 0 and remaining > 0:
        # Per-frame DPC scores of the remaining tokens, all frames at once.
        score, _ = dpc_score(rest_x, k, generator=generator)  # [T, R]
        singles = [u for u, e in segments if u == e]
        if singles:
            rows = torch.tensor(singles, dtype=torch.long, device=device)
            count = min(n_ctx, remaining)
            ctx_local = stable_topk(score[rows], count)  # [F, n_ctx], score order
            pool = rest_x[rows]
            contexts = pool.gather(1, ctx_local[..., None].expand(-1, -1, width))
            out_tokens.append(merge_contexts(contexts, pool, beta).to(features.dtype).reshape(-1, width))
            out_index.append(rest_index[rows].gather(1, ctx_local).reshape(-1))
            out_source.append(torch.full((len(singles) * count,), MERGED, dtype=torch.long, device=device))
        for u, e in segments:
            if u == e:
                continue
            length = e - u + 1
            anchors, budget = anchor_budget(length, n_ctx, p)
            budget = min(budget, remaining)
            rows = torch.tensor(anchors, dtype=torch.long, device=device) + u
            ctx_local = stable_topk(score[rows], budget)  # [m, b]
            contexts = rest_x[rows].gather(1, ctx_local[..., None].expand(-1, -1, width))
            pool = rest_x[u : e + 1].reshape(1, length * remaining, width).expand(len(anchors), -1, -1)
            out_tokens.append(merge_contexts(contexts, pool, beta).to(features.dtype).reshape(-1, width))
            out_index.append(rest_index[rows].gather(1, ctx_local).reshape(-1))
            out_source.append(torch.full((len(anchors) * budget,), MERGED, dtype=torch.long, device=device))

    index = torch.cat(out_index)
    order_out = torch.argsort(index)
    selection = TokenSelection(
        tokens=torch.cat(out_tokens)[order_out],
        source=torch.cat(out_source)[order_out],
        positions=index[order_out],
    )
    return FastVIDResult(selection=selection, segments=tuple(segments), budgets=budgets)
