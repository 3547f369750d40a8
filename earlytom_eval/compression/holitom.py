"""HoliTom's OUTER stage: temporal windows by dynamic programming, static tokens merged over time and
clustered, dynamic tokens kept by attention. Runs after the projector and pooling, before the LLM.

Pure tensor functions. Reference: cokeshao/HoliTom @ e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0,
``holitom/llava_arch.py`` (``prepare_inputs_labels_for_multimodal``, ``select_static_windows``,
``get_static_dynamic_features``, ``holitom``, ``merge_tokens_by_attention_density``,
``merge_tokens_by_density``, ``cluster_dpc_knn``, ``merge_tokens_by_clustering``); EarlyTom's
``holitom/`` folder (viridisGreen/EarlyTom @ b909322) is byte-identical. The inner stage (merging inside the
LLM at layer 18) is the project's stage-3 code (:mod:`.inner`), not here.

Algorithm for features ``F [T, S, D]`` and pooled received attention ``a [T, S]``:

1. ``s[t, q] = cos(F[t, q], F[t+1, q])`` (:func:`adjacent_similarity`).
2. Static gain of a window ``[u, e]``, ``u < e``: ``G = #{q : s[t, q] > tau for all t in [u, e-1]} * (e - u)``;
   singletons 0 (:func:`static_gain`).
3. DP over frames (:func:`segment_windows`): ``B(i) = max(B(i-1), max_w B(i-w) + G(i-w+1, i))`` for
   ``w = 2..min(i+1, max_window)``, updated only on a strictly larger value (ties keep the singleton, then
   the shortest window); backtracking gives the windows, ``R = B(T-1)``.
4. ``r' = min(rho / ((T S - R) / (T S)), 1)`` (:func:`holitom_retention`).
5. Singleton window: its ``ceil(S r')`` highest-attention tokens, raster order.
6. Window ``[u, e]`` of W > 1 frames: static positions ``Q_s`` (all W - 1 similarities > tau), dynamic ``Q_d``
   the rest. Dynamic tokens: per frame the ``ceil(n_d r')`` highest-attention positions of ``Q_d``, raster
   order. Static tokens: the mean over the W frames at each ``Q_s`` position, clustered by DPC-kNN into
   ``round(n_s r')`` tokens (:func:`.dpc.dpc_knn_merge`, ``k = min(K, c_s)``), each
   ``beta * centre + (1 - beta) * mean(members)`` with the members EXCLUDING the centre (reference quirk of
   ``merge_tokens_by_clustering``; the centre alone when it has no members), ordered by centre position.
   Window output: ``[static tokens] ++ [frame u dynamic] ++ ... ++ [frame e dynamic]``.
7. Windows in time order; the newline is appended by the caller. Positions are contiguous.

Optional ``D > 0`` (contextual tokens among the dynamic ones; 0 in every reference script): per frame only
``round(ceil(n r') (1 - D))`` tokens are picked by attention and the other ``ceil(n r') - that`` are DPC-kNN
contextual tokens of the frame's remaining tokens, after the picked ones, exactly like EarlyTom's D > 0
path (:func:`.spatial.dpc_knn_context`). The reference's own D > 0 code cannot run
(``pos.masked_select(mask.unsqueeze(-1))`` does not broadcast); this follows what it evidently computes.

Choices where the reference is loose: similarities in float32 (the reference in fp16); ties in the
attention ranking go to the earlier token; the reference's ``1e-6 * U`` density noise is drawn from an
explicit generator and is off without one; means and merges run in float32 and are cast back to the
features' dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .dpc import dpc_knn_merge, stable_topk
from .selection import MERGED, TokenSelection, frame_major_index

__all__ = [
    "HoliTomOuterResult",
    "WindowSummary",
    "adjacent_similarity",
    "holitom_outer",
    "holitom_retention",
    "segment_windows",
    "static_gain",
]

Window = tuple[int, int]


def adjacent_similarity(features: torch.Tensor) -> torch.Tensor:
    """Per-position cosine similarity of consecutive frames.

    Args:
        features: ``[T, S, D]``.
    Returns:
        ``[T - 1, S]`` float32, ``s[t, q] = cos(F[t, q], F[t + 1, q])``.
    """
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    return (unit[:-1] * unit[1:]).sum(dim=-1)


def static_gain(similarity: torch.Tensor, tau: float) -> torch.Tensor:
    """``G[u, e]`` = (positions static over all of ``[u, e]``) x ``(e - u)``, zero for ``e <= u``.

    Args:
        similarity: ``[T - 1, S]`` (:func:`adjacent_similarity`).
    Returns:
        ``[T, T]`` long.
    """
    steps, tokens = similarity.shape
    frames = steps + 1
    device = similarity.device
    passes = similarity > tau  # [T-1, S]
    # run[t, q]: how many consecutive similarities from t on are > tau (position q static over [t, t+run]).
    t_idx = torch.arange(steps, device=device)[:, None].expand(steps, tokens)
    first_fail = torch.where(passes, torch.full_like(t_idx, steps), t_idx)
    next_fail = first_fail.flip(0).cummin(dim=0).values.flip(0) if steps else first_fail
    run = next_fail - t_idx  # [T-1, S]
    length = torch.arange(frames, device=device)[None, :] - torch.arange(frames, device=device)[:, None]  # e - u
    gain = torch.zeros(frames, frames, dtype=torch.long, device=device)
    if steps:
        static = (run[:, None, :] >= length[:steps, :, None]).sum(dim=-1)  # [T-1, T]: for u < T-1
        gain[:steps] = static * length[:steps]
    return torch.where(length > 0, gain, torch.zeros_like(gain))


def segment_windows(gain: torch.Tensor, max_window: int = 1024) -> tuple[list[Window], int]:
    """HoliTom's DP over frames: the windows maximising the total static gain.

    ``B(i) = B(i-1)`` (singleton) unless some ``B(i-w) + G(i-w+1, i)``, ``w = 2..min(i+1, max_window)`` in
    increasing w, is strictly larger; so ties favour the singleton, then the shortest window.

    Args:
        gain: ``[T, T]`` (:func:`static_gain`).
    Returns:
        ``(windows, R)``: inclusive ``(u, e)`` windows tiling ``0..T-1`` in order, and ``R = B(T-1)``.
    """
    frames = gain.shape[0]
    g = gain.tolist()
    best = [0] * frames
    start = [0] * frames
    for i in range(frames):
        value = best[i - 1] if i > 0 else 0
        begin = i
        for width in range(2, min(i + 1, max_window) + 1):
            u = i - width + 1
            candidate = (best[u - 1] if u > 0 else 0) + g[u][i]
            if candidate > value:
                value, begin = candidate, u
        best[i], start[i] = value, begin
    windows: list[Window] = []
    i = frames - 1
    while i >= 0:
        windows.append((start[i], i))
        i = start[i] - 1
    return windows[::-1], (best[-1] if frames else 0)


def holitom_retention(retention: float, num_frames: int, num_tokens: int, reduced: int) -> float:
    """``r' = min(rho / ((T S - R) / (T S)), 1)``: the budget the static windows saved is given back."""
    total = num_frames * num_tokens
    return min(retention / ((total - reduced) / total), 1.0)


@dataclass(frozen=True)
class WindowSummary:
    """One temporal window of the outer stage, for reporting.

    Attributes:
        start, end: inclusive frame range.
        static: number of static positions n_s (0 for a singleton); dynamic: n_d per frame.
        static_tokens: tokens out of the static positions (``round(n_s r')``); dynamic_tokens: per frame.
    """

    start: int
    end: int
    static: int
    dynamic: int
    static_tokens: int
    dynamic_tokens: int


@dataclass(frozen=True)
class HoliTomOuterResult:
    """Result of :func:`holitom_outer` for one video.

    Attributes:
        selection: the tokens (no newline); ``source`` -1 for static and contextual tokens, ``t * S + q``
            for dynamic tokens kept as they are; positions None (contiguous).
        windows: the DP windows in time order, with their static / dynamic split.
        reduced: R, the DP's total static gain; rho_eff: r'.
    """

    selection: TokenSelection
    windows: tuple[WindowSummary, ...]
    reduced: int
    rho_eff: float


def _dynamic_tokens(
    features: torch.Tensor,
    attention: torch.Tensor,
    positions: torch.Tensor,
    frames: torch.Tensor,
    num_tokens: int,
    rho_eff: float,
    D: float,
    K: int,
    beta: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``merge_tokens_by_attention_density`` for F frames sharing n candidate positions.

    Args:
        features: ``[F, n, D]``; attention: ``[F, n]``; positions: ``[n]`` ascending token indices of the
        candidates; frames: ``[F]`` frame indices.
    Returns:
        ``(tokens [F, m, D], source [F, m])`` with ``m = ceil(n r')``, per frame the attention picks (raster
        order) then the contextual tokens (D > 0).
    """
    count_frames, count, width = features.shape
    total = math.ceil(count * rho_eff)
    picked_n = round(total * (1.0 - D))
    context_n = total - picked_n
    chosen = torch.zeros(count_frames, count, dtype=torch.bool, device=features.device)
    chosen.scatter_(1, stable_topk(attention.float(), picked_n), True)
    order = torch.arange(count, device=features.device).expand(count_frames, count)
    local = order[chosen].view(count_frames, picked_n)
    tokens = features.gather(1, local[..., None].expand(-1, -1, width))
    source = frame_major_index(frames[:, None], positions[local], num_tokens)
    if context_n > 0:
        rest = order[~chosen].view(count_frames, count - picked_n)
        others = features.gather(1, rest[..., None].expand(-1, -1, width))
        context, _ = dpc_knn_merge(others, context_n, min(K, context_n), beta, generator=generator)
        tokens = torch.cat([tokens, context], dim=1)
        source = torch.cat([source, source.new_full((count_frames, context_n), MERGED)], dim=1)
    return tokens, source


def holitom_outer(
    features: torch.Tensor,
    attention: torch.Tensor,
    *,
    retention: float,
    tau: float,
    beta: float = 0.6,
    D: float = 0.0,
    K: int = 7,
    max_window: int = 1024,
    generator: torch.Generator | None = None,
) -> HoliTomOuterResult:
    """HoliTom's outer stage on one video.

    Args:
        features: ``[T, S, D]`` pooled projector output.
        attention: ``[T, S]`` pooled received attention of the last encoder layer.
        retention: rho (``RETAIN_RATIO``); tau: static threshold (``T``: 0.65 at rho = 0.10, else 0.8).
        beta: centre weight of the static clusters (``BETA``); D: share of contextual tokens among the
            dynamic ones (``D``, 0 in the references); K: kNN size cap (``K``); max_window:
            ``MAX_WINDOW_SIZE``.
        generator: source of the density noise (``1e-6 * U``) of every DPC-kNN call; None: no noise.
    Returns:
        :class:`HoliTomOuterResult`; the selection's tokens are in ``features``' dtype.
    """
    num_frames, num_tokens, width = features.shape
    if attention.shape != (num_frames, num_tokens):
        raise ValueError(f"attention must be [T, S] = {(num_frames, num_tokens)}, got {tuple(attention.shape)}")
    if not 0.0 <= D < 1.0:
        raise ValueError(f"D must be in [0, 1), got {D}")
    if max_window < 1:
        raise ValueError(f"max_window must be >= 1, got {max_window}")
    device = features.device
    similarity = adjacent_similarity(features)
    windows, reduced = segment_windows(static_gain(similarity, tau), max_window)
    rho_eff = holitom_retention(retention, num_frames, num_tokens, reduced)
    all_positions = torch.arange(num_tokens, device=device)

    # Singleton windows share one token count: one batched selection for all of them.
    singles = torch.tensor([u for u, e in windows if u == e], dtype=torch.long, device=device)
    single_out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if singles.numel():
        tokens, source = _dynamic_tokens(
            features[singles], attention[singles], all_positions, singles, num_tokens, rho_eff, D, K, beta, generator
        )
        for row, frame in enumerate(singles.tolist()):
            single_out[frame] = (tokens[row], source[row])

    pieces: list[torch.Tensor] = []
    sources: list[torch.Tensor] = []
    summaries: list[WindowSummary] = []
    for u, e in windows:
        if u == e:
            tokens, source = single_out[u]
            pieces.append(tokens)
            sources.append(source)
            summaries.append(WindowSummary(u, e, 0, num_tokens, 0, int(source.numel())))
            continue
        is_static = (similarity[u:e] > tau).all(dim=0)  # [S]
        static_pos = all_positions[is_static]
        dynamic_pos = all_positions[~is_static]
        clusters = round(int(static_pos.numel()) * rho_eff)  # Python round: halves to even
        static_tokens = features.new_zeros(0, width)
        if clusters > 0:
            mean = features[u : e + 1, static_pos].float().mean(dim=0)  # [n_s, D]
            merged, _ = dpc_knn_merge(mean, clusters, min(K, clusters), beta, generator=generator)
            static_tokens = merged.to(features.dtype)
        pieces.append(static_tokens)
        sources.append(torch.full((static_tokens.shape[0],), MERGED, dtype=torch.long, device=device))
        frames = torch.arange(u, e + 1, device=device)
        per_frame = 0
        if dynamic_pos.numel():
            tokens, source = _dynamic_tokens(
                features[u : e + 1, dynamic_pos],
                attention[u : e + 1, dynamic_pos],
                dynamic_pos,
                frames,
                num_tokens,
                rho_eff,
                D,
                K,
                beta,
                generator,
            )
            per_frame = tokens.shape[1]
            pieces.append(tokens.reshape(-1, width))
            sources.append(source.reshape(-1))
        summaries.append(
            WindowSummary(u, e, int(static_pos.numel()), int(dynamic_pos.numel()), static_tokens.shape[0], per_frame)
        )

    selection = TokenSelection(tokens=torch.cat(pieces), source=torch.cat(sources))
    return HoliTomOuterResult(selection=selection, windows=tuple(summaries), reduced=reduced, rho_eff=rho_eff)
