"""Tests for earlytom_eval.compression.spatial (stage 2: decoupled spatial token selection).

Features encode (frame, token) in their values so the selected tokens can be decoded; every expected
count and index is derived by hand from the method's definition.
"""

from __future__ import annotations

import pytest
import torch

from earlytom_eval.compression.spatial import (
    dpc_knn_context,
    dynamic_token_count,
    effective_retention,
    frame_is_static,
    select_dynamic,
    select_static,
    select_tokens,
    static_token_count,
    static_windows,
)

# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def _coded_features(num_frames: int, num_tokens: int) -> torch.Tensor:
    """``[T, S, 3]`` features whose token (f, t) holds (f, t, 1000 f + t)."""
    f = torch.arange(num_frames, dtype=torch.float32)[:, None].expand(num_frames, num_tokens)
    t = torch.arange(num_tokens, dtype=torch.float32)[None, :].expand(num_frames, num_tokens)
    return torch.stack([f, t, 1000 * f + t], dim=-1)


def _decode(tokens: torch.Tensor) -> list[tuple[int, int]]:
    assert torch.equal(tokens[:, 2], 1000 * tokens[:, 0] + tokens[:, 1])
    return [(int(f), int(t)) for f, t in tokens[:, :2].tolist()]


# --------------------------------------------------------------------------- #
# budgets
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "rho, frames_in, frames_kept, expected",
    [
        (0.1, 32, 16, 0.2),
        (0.5, 32, 8, 1.0),  # 0.5 * 32 / 8 = 2 -> capped at 1
        (0.1, 32, 32, 0.1),
        (0.25, 32, 20, 0.4),
        (1.0, 8, 8, 1.0),
    ],
)
def test_effective_retention(rho, frames_in, frames_kept, expected):
    assert effective_retention(rho, frames_in, frames_kept) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "num_tokens, rho_eff, dynamic, static",
    [
        (196, 0.1, 20, 20),  # 19.6: ceil 20, round 20
        (196, 0.15, 30, 29),  # 29.4: ceil 30, round 29
        (16, 0.25, 4, 4),  # 4.0 exactly
        (10, 0.25, 3, 2),  # 2.5: ceil 3, round half to even 2
        (10, 0.35, 4, 4),  # 3.5: ceil 4, round half to even 4
        (196, 1.0, 196, 196),
        (10, 0.01, 1, 1),  # 0.1: ceil 1, round 0 -> at least 1
        (196, 0.002, 1, 1),
    ],
)
def test_token_counts_ceil_vs_round(num_tokens, rho_eff, dynamic, static):
    assert dynamic_token_count(num_tokens, rho_eff) == dynamic
    assert static_token_count(num_tokens, rho_eff) == static


# --------------------------------------------------------------------------- #
# static windows / selection
# --------------------------------------------------------------------------- #


def test_static_windows_boundaries():
    assert static_windows(10, 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]  # sizes 4, 3, 3
    assert static_windows(10, 4).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]  # sizes 3, 3, 2, 2
    assert static_windows(6, 3).tolist() == [0, 0, 1, 1, 2, 2]
    assert static_windows(5, 1).tolist() == [0] * 5
    assert static_windows(4, 4).tolist() == [0, 1, 2, 3]


def test_static_windows_rejects_bad_count():
    with pytest.raises(ValueError):
        static_windows(10, 0)
    with pytest.raises(ValueError):
        static_windows(10, 11)


def test_select_static_argmax_per_window():
    attention = torch.tensor(
        [
            # windows [0..3], [4..6], [7..9]
            [0.1, 0.5, 0.3, 0.2, 0.9, 0.1, 0.3, 0.2, 0.2, 0.8],
            [0.0, 0.0, 0.0, 0.7, 0.1, 0.6, 0.2, 0.9, 0.1, 0.3],
        ]
    )
    assert select_static(attention, 3).tolist() == [[1, 4, 9], [3, 5, 7]]


def test_select_static_ties_go_to_first():
    attention = torch.tensor(
        [
            [0.5] * 10,
            [0.1, 0.5, 0.5, 0.2, 0.3, 0.3, 0.3, 0.0, 0.4, 0.4],
        ]
    )
    assert select_static(attention, 3).tolist() == [[0, 4, 7], [1, 4, 8]]


def test_select_static_negative_attention_and_uneven_last_window():
    # Negative scores must not lose to the padding of shorter windows. S=7, n=3 -> sizes 3, 2, 2.
    attention = torch.tensor([[-3.0, -1.0, -2.0, -5.0, -4.0, -0.5, -0.7]])
    assert select_static(attention, 3).tolist() == [[1, 4, 5]]


def test_select_dynamic_top_n_in_raster_order():
    attention = torch.tensor(
        [
            [0.1, 0.9, 0.3, 0.8, 0.2],
            [0.7, 0.0, 0.6, 0.1, 0.65],
        ]
    )
    assert select_dynamic(attention, 2).tolist() == [[1, 3], [0, 4]]
    assert select_dynamic(attention, 3).tolist() == [[1, 2, 3], [0, 2, 4]]
    assert select_dynamic(attention, 5).tolist() == [[0, 1, 2, 3, 4]] * 2


# --------------------------------------------------------------------------- #
# frame roles
# --------------------------------------------------------------------------- #


def test_frame_is_static_roles():
    segments = [(0, 0), (1, 2), (3, 7), (8, 10)]
    expected = [False, False, False, False, True, True, True, False, False, True, False]
    assert frame_is_static(segments, 11).tolist() == expected


def test_frame_is_static_short_segments_all_dynamic():
    assert frame_is_static([(0, 1), (2, 2), (3, 4)], 5).tolist() == [False] * 5
    assert frame_is_static(((0, 2),), 3).tolist() == [False, True, False]


@pytest.mark.parametrize(
    "segments, num_frames",
    [
        ([(0, 1), (3, 4)], 5),  # gap
        ([(0, 2), (2, 4)], 5),  # overlap
        ([(0, 2)], 5),  # does not reach the last frame
        ([(0, 4)], 3),  # past the last frame
        ([(2, 4), (0, 1)], 5),  # out of order
        ([(1, 4)], 5),  # does not start at 0
        ([(0, 1), (2, 1), (2, 4)], 5),  # end < start
    ],
)
def test_frame_is_static_invalid_segments(segments, num_frames):
    with pytest.raises(ValueError):
        frame_is_static(segments, num_frames)


# --------------------------------------------------------------------------- #
# select_tokens
# --------------------------------------------------------------------------- #


def test_select_tokens_order_and_gather():
    # T' = 4 frames of S = 10 tokens, one final segment (0, 3): frames 0, 3 dynamic, 1, 2 static.
    # frames_in = 8, rho = 0.125 -> rho' = 0.125 * 8 / 4 = 0.25; dynamic n = ceil(2.5) = 3,
    # static n = round(2.5) = 2 (half to even) -> windows [0..4], [5..9].
    features = _coded_features(4, 10)
    attention = torch.full((4, 10), 0.01)
    attention[0, [7, 2, 5, 9]] = torch.tensor([0.9, 0.8, 0.7, 0.6])  # top-3: 7, 2, 5
    attention[1, [3, 1, 8]] = torch.tensor([0.5, 0.4, 0.9])  # window 0 -> 3, window 1 -> 8
    attention[2, [0, 9, 6]] = torch.tensor([0.3, 0.2, 0.1])  # window 0 -> 0, window 1 -> 9
    attention[3, [0, 1, 4, 6]] = torch.tensor([0.2, 0.95, 0.4, 0.3])  # top-3: 1, 4, 6
    result = select_tokens(features, attention, [(0, 3)], retention=0.125, frames_in=8)
    assert result.rho_eff == pytest.approx(0.25)
    assert result.dynamic_count == 3
    assert result.static_count == 2
    assert result.is_static.tolist() == [False, True, True, False]
    expected = [(0, 2), (0, 5), (0, 7), (1, 3), (1, 8), (2, 0), (2, 9), (3, 1), (3, 4), (3, 6)]
    assert _decode(result.tokens) == expected
    assert result.tokens.shape == (10, 3)
    assert [k.tolist() for k in result.kept] == [[2, 5, 7], [3, 8], [0, 9], [1, 4, 6]]


def test_select_tokens_counts_for_a_segmentation():
    # T' = 8, segments (0,1), (2,6), (7,7): frames 3, 4, 5 static, the other 5 dynamic.
    # S = 196, rho' = 0.15 (no frames removed): dynamic ceil(29.4) = 30, static round(29.4) = 29.
    torch.manual_seed(0)
    features = _coded_features(8, 196)
    attention = torch.rand(8, 196)
    result = select_tokens(features, attention, [(0, 1), (2, 6), (7, 7)], retention=0.15, frames_in=8)
    assert result.is_static.tolist() == [False, False, False, True, True, True, False, False]
    assert (result.dynamic_count, result.static_count) == (30, 29)
    assert [int(k.numel()) for k in result.kept] == [30, 30, 30, 29, 29, 29, 30, 30]
    assert result.tokens.shape[0] == 5 * 30 + 3 * 29
    decoded = _decode(result.tokens)
    # Frames in order, each frame's tokens in raster order.
    assert decoded == sorted(decoded)
    for frame in (0, 1, 2, 6, 7):
        picked = [t for f, t in decoded if f == frame]
        top = sorted(attention[frame].argsort(descending=True)[:30].tolist())
        assert picked == top
    for frame in (3, 4, 5):
        picked = [t for f, t in decoded if f == frame]
        # 196 = 29 * 6 + 22: the first 22 windows hold 7 tokens, the other 7 hold 6.
        bounds, start = [], 0
        for w in range(29):
            size = 7 if w < 22 else 6
            bounds.append((start, start + size))
            start += size
        assert start == 196
        expected = [lo + int(attention[frame, lo:hi].argmax()) for lo, hi in bounds]
        assert picked == expected


def test_select_tokens_full_retention_keeps_everything():
    features = _coded_features(3, 6)
    attention = torch.rand(3, 6)
    result = select_tokens(features, attention, [(0, 2)], retention=0.5, frames_in=6)  # rho' = 1
    assert result.rho_eff == 1.0
    assert _decode(result.tokens) == [(f, t) for f in range(3) for t in range(6)]


def test_select_tokens_budget_given_back_by_removed_frames():
    # 32 frames entered, 16 left: rho' = 0.1 * 32 / 16 = 0.2; S = 196 -> ceil(39.2) = 40, round(39.2) = 39.
    features = _coded_features(16, 196)
    attention = torch.rand(16, 196)
    segments = [(0, 4), (5, 9), (10, 14), (15, 15)]
    result = select_tokens(features, attention, segments, retention=0.1, frames_in=32)
    assert result.rho_eff == pytest.approx(0.2)
    assert (result.dynamic_count, result.static_count) == (40, 39)
    # 7 dynamic frames (0, 4, 5, 9, 10, 14, 15), 9 static.
    assert int((~result.is_static).sum()) == 7
    assert result.tokens.shape[0] == 7 * 40 + 9 * 39


def test_select_tokens_rejects_bad_attention_shape():
    with pytest.raises(ValueError):
        select_tokens(_coded_features(2, 4), torch.rand(2, 5), [(0, 1)], retention=0.5, frames_in=2)


def _three_cluster_frame() -> tuple[torch.Tensor, list[list[int]]]:
    """``[20, 4]`` tokens: 0 and 1 far apart; 2..7, 8..13, 14..19 three tight, well separated clusters."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.zeros(20, 4)
    tokens[0] = torch.tensor([0.0, 0.0, 50.0, 0.0])
    tokens[1] = torch.tensor([0.0, 0.0, 0.0, 50.0])
    centres = [
        torch.tensor([10.0, 0.0, 0.0, 0.0]),
        torch.tensor([-10.0, 0.0, 0.0, 0.0]),
        torch.tensor([0.0, 10.0, 0.0, 0.0]),
    ]
    clusters = [list(range(2, 8)), list(range(8, 14)), list(range(14, 20))]
    for centre, members in zip(centres, clusters, strict=True):
        tokens[members] = centre + 0.1 * torch.randn(len(members), 4, generator=g)
    return tokens, clusters


def _assert_context_token(ctx: torch.Tensor, members: torch.Tensor, beta: float) -> None:
    """``ctx = beta * centre + (1 - beta) * mean(members)`` for a centre among ``members``."""
    centre = (ctx - (1.0 - beta) * members.mean(dim=0)) / beta
    distances = (members - centre).norm(dim=-1)
    assert float(distances.min()) < 1e-4, distances


def test_select_tokens_contextual_tokens_with_D():
    # One dynamic frame: S = 20, rho' = 0.25 -> n = ceil(5) = 5; D = 0.6 -> round(5 * 0.4) = 2 by attention,
    # 3 contextual tokens from DPC-KNN of the 18 remaining tokens (k = min(7, 3) = 3).
    tokens, clusters = _three_cluster_frame()
    features = tokens[None]
    attention = torch.zeros(1, 20)
    attention[0, 0] = 1.0
    attention[0, 1] = 0.9
    result = select_tokens(features, attention, [(0, 0)], retention=0.25, frames_in=1, D=0.6, K=7, beta=0.6)
    assert result.dynamic_count == 5
    assert result.tokens.shape == (5, 4)
    assert result.kept[0].tolist() == [0, 1]
    assert torch.equal(result.tokens[:2], tokens[[0, 1]])
    context = result.tokens[2:]
    # One contextual token per cluster, ordered by their centre's position.
    for ctx, members in zip(context, clusters, strict=True):
        _assert_context_token(ctx, tokens[members], beta=0.6)


def test_select_tokens_contextual_counts_dynamic_and_static():
    # T' = 3, one segment (0, 2): frames 0, 2 dynamic, frame 1 static. S = 20, rho' = 0.25:
    # dynamic 5 tokens (2 by attention + 3 contextual with D = 0.6), static round(5) = 5 (no contextual tokens).
    tokens, _ = _three_cluster_frame()
    features = tokens[None].repeat(3, 1, 1)
    attention = torch.rand(3, 20, generator=torch.Generator().manual_seed(3))
    result = select_tokens(features, attention, [(0, 2)], retention=0.25, frames_in=3, D=0.6)
    assert (result.dynamic_count, result.static_count) == (5, 5)
    assert [int(k.numel()) for k in result.kept] == [2, 5, 2]
    assert result.tokens.shape[0] == 15
    # The static frame's tokens sit between the two dynamic frames' 5 tokens each.
    assert torch.equal(result.tokens[5:10], features[1, result.kept[1]])
    # The dynamic frames' first two tokens are their top-2 by attention, in raster order.
    for frame, offset in ((0, 0), (2, 10)):
        top2 = sorted(attention[frame].argsort(descending=True)[:2].tolist())
        assert result.kept[frame].tolist() == top2
        assert torch.equal(result.tokens[offset : offset + 2], features[frame, top2])


def test_select_tokens_D_zero_has_no_contextual_tokens():
    tokens, _ = _three_cluster_frame()
    attention = torch.arange(20, dtype=torch.float32)[None]
    result = select_tokens(tokens[None], attention, [(0, 0)], retention=0.25, frames_in=1, D=0.0)
    assert result.kept[0].tolist() == [15, 16, 17, 18, 19]
    assert torch.equal(result.tokens, tokens[15:20])


# --------------------------------------------------------------------------- #
# dpc_knn_context
# --------------------------------------------------------------------------- #


def _two_clusters() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([5.0, 5.0, 0.0, 0.0]) + 0.1 * torch.randn(10, 4, generator=g)
    b = torch.tensor([-5.0, -5.0, 0.0, 0.0]) + 0.1 * torch.randn(8, 4, generator=g)
    return torch.cat([a, b]), a, b


def test_dpc_knn_context_two_clusters():
    tokens, a, b = _two_clusters()
    beta = 0.6
    out = dpc_knn_context(tokens, num_clusters=2, k=7, beta=beta)
    assert out.shape == (2, 4)
    assert out.dtype == tokens.dtype
    # Ordered by centre position: cluster a (indices 0..9) first.
    for ctx, members in ((out[0], a), (out[1], b)):
        assert float((ctx - members.mean(dim=0)).norm()) < 0.5  # in the cluster's region
        _assert_context_token(ctx, members, beta)


def test_dpc_knn_context_beta_extremes():
    tokens, a, b = _two_clusters()
    # beta = 0: the plain cluster means.
    out = dpc_knn_context(tokens, num_clusters=2, k=5, beta=0.0)
    assert torch.allclose(out[0], a.mean(dim=0), atol=1e-5)
    assert torch.allclose(out[1], b.mean(dim=0), atol=1e-5)
    # beta = 1: the centres themselves, which are tokens of each cluster.
    out = dpc_knn_context(tokens, num_clusters=2, k=5, beta=1.0)
    assert float((a - out[0]).norm(dim=-1).min()) < 1e-6
    assert float((b - out[1]).norm(dim=-1).min()) < 1e-6


def test_dpc_knn_context_deterministic():
    tokens, _, _ = _two_clusters()
    first = dpc_knn_context(tokens, num_clusters=2, k=7, beta=0.6)
    second = dpc_knn_context(tokens.clone(), num_clusters=2, k=7, beta=0.6)
    assert torch.equal(first, second)


def test_dpc_knn_context_bfloat16_keeps_dtype():
    tokens, a, b = _two_clusters()
    out = dpc_knn_context(tokens.to(torch.bfloat16), num_clusters=2, k=7, beta=0.6)
    assert out.dtype == torch.bfloat16
    assert float((out[0].float() - a.mean(dim=0)).norm()) < 0.5
    assert float((out[1].float() - b.mean(dim=0)).norm()) < 0.5


def test_dpc_knn_context_more_clusters_than_tokens():
    tokens = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    out = dpc_knn_context(tokens, num_clusters=5, k=3, beta=0.6)
    # Each token is its own cluster: beta * x + (1 - beta) * x = x.
    assert torch.allclose(out, tokens)
