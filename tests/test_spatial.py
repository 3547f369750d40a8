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
    """``ctx = beta * centre + (1 - beta) * mean(other members)`` for some centre among ``members``.

    The reference (HoliTom / EarlyTom ``merge_tokens_by_clustering``) averages only the members that are not
    the centre.
    """
    errors = []
    for i in range(members.shape[0]):
        others = torch.cat([members[:i], members[i + 1 :]])
        expected = beta * members[i] + (1.0 - beta) * others.mean(dim=0)
        errors.append(float((ctx - expected).abs().max()))
    assert min(errors) < 1e-4, errors


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


def _line_frame(picked: dict[int, float], rest: list[float], frame: float) -> torch.Tensor:
    """``[S, 2]`` tokens ``(value, frame)``: ``picked`` maps position -> value, the other positions take
    ``rest`` in ascending order."""
    size = len(picked) + len(rest)
    values = iter(rest)
    column = [picked[q] if q in picked else next(values) for q in range(size)]
    return torch.tensor([[v, frame] for v in column])


# Rest values [0, 1, 2, 10, 11, 12], k = min(K, 2) = 2 (the token itself included): every token's nearest other
# token is 1 apart (x / sqrt(2) after scaling), so all densities tie; the earlier token counts as denser. delta:
# token 0 (densest) -> max distance 12; token 3 (value 10) -> 8 (to value 2); all others 1. Centres = top-2
# delta * density = values 0 and 10; 1, 2 join 0 and 11, 12 join 10. beta = 0.6, members exclude the centre:
# 0.6 * 0 + 0.4 * 1.5 = 0.6 and 0.6 * 10 + 0.4 * 11.5 = 10.6.
_REST_A = [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]
_CONTEXT_A = [0.6, 10.6]
# Rest values [5, 6, 7, 8, 50, 51]: densities tie again; delta: token 0 -> 46, token 4 (value 50) -> 42, others 1.
# Centres 5 and 50: 0.6 * 5 + 0.4 * mean(6, 7, 8) = 5.8 and 0.6 * 50 + 0.4 * 51 = 50.4.
_REST_B = [5.0, 6.0, 7.0, 8.0, 50.0, 51.0]
_CONTEXT_B = [5.8, 50.4]


def test_select_tokens_D_one_dynamic_frame_by_hand():
    # S = 8, rho' = 0.5 -> n = ceil(4) = 4; D = 0.5 -> round(2) = 2 by attention, 2 contextual (k = min(7, 2)).
    frame = _line_frame({3: 100.0, 6: 200.0}, _REST_A, 0.0)
    attention = torch.zeros(1, 8)
    attention[0, 6], attention[0, 3] = 0.9, 0.8
    result = select_tokens(frame[None], attention, [(0, 0)], retention=0.5, frames_in=1, D=0.5)
    assert result.dynamic_count == 4
    assert result.kept[0].tolist() == [3, 6]
    expected = torch.tensor([[100.0, 0.0], [200.0, 0.0], [_CONTEXT_A[0], 0.0], [_CONTEXT_A[1], 0.0]])
    assert torch.allclose(result.tokens, expected, atol=1e-5)


def test_select_tokens_D_two_dynamic_frames_by_hand():
    # The reference's D > 0 path crashes on a segment of two dynamic frames; here each frame is clustered alone.
    frames = torch.stack(
        [_line_frame({3: 100.0, 6: 200.0}, _REST_A, 0.0), _line_frame({0: 300.0, 7: 400.0}, _REST_B, 1.0)]
    )
    attention = torch.zeros(2, 8)
    attention[0, [3, 6]] = 1.0
    attention[1, [0, 7]] = 1.0
    result = select_tokens(frames, attention, [(0, 1)], retention=0.5, frames_in=2, D=0.5)
    assert [k.tolist() for k in result.kept] == [[3, 6], [0, 7]]
    expected = torch.tensor(
        [
            [100.0, 0.0], [200.0, 0.0], [_CONTEXT_A[0], 0.0], [_CONTEXT_A[1], 0.0],
            [300.0, 1.0], [400.0, 1.0], [_CONTEXT_B[0], 1.0], [_CONTEXT_B[1], 1.0],
        ]
    )  # fmt: skip
    assert torch.allclose(result.tokens, expected, atol=1e-5)
    # Two single-frame segments give the same tokens.
    split = select_tokens(frames, attention, [(0, 0), (1, 1)], retention=0.5, frames_in=2, D=0.5)
    assert torch.equal(split.tokens, result.tokens)


def test_select_tokens_D_three_frame_segment_layout():
    # Segment (0, 2): frames 0, 2 dynamic (2 picked + 2 contextual), frame 1 static: round(8 * 0.5) = 4 windows
    # of 2 tokens, the best of each. Order: frame 0 [picked, contextual], frame 1, frame 2 [picked, contextual].
    frames = torch.stack(
        [
            _line_frame({3: 100.0, 6: 200.0}, _REST_A, 0.0),
            torch.stack([torch.arange(8.0), torch.ones(8)], dim=-1),
            _line_frame({0: 300.0, 7: 400.0}, _REST_B, 2.0),
        ]
    )
    attention = torch.zeros(3, 8)
    attention[0, [3, 6]] = 1.0
    attention[1, [1, 2, 5, 6]] = 1.0  # windows [0,1], [2,3], [4,5], [6,7] -> 1, 2, 5, 6
    attention[2, [0, 7]] = 1.0
    result = select_tokens(frames, attention, [(0, 2)], retention=0.5, frames_in=3, D=0.5)
    assert [k.tolist() for k in result.kept] == [[3, 6], [1, 2, 5, 6], [0, 7]]
    expected = torch.tensor(
        [
            [100.0, 0.0], [200.0, 0.0], [_CONTEXT_A[0], 0.0], [_CONTEXT_A[1], 0.0],
            [1.0, 1.0], [2.0, 1.0], [5.0, 1.0], [6.0, 1.0],
            [300.0, 2.0], [400.0, 2.0], [_CONTEXT_B[0], 2.0], [_CONTEXT_B[1], 2.0],
        ]
    )  # fmt: skip
    assert torch.allclose(result.tokens, expected, atol=1e-5)


def test_select_tokens_D_noise_is_seeded():
    tokens, _ = _three_cluster_frame()
    features = tokens[None].repeat(2, 1, 1)
    attention = torch.rand(2, 20, generator=torch.Generator().manual_seed(1))
    kwargs = dict(retention=0.25, frames_in=2, D=0.6)
    first = select_tokens(features, attention, [(0, 1)], generator=torch.Generator().manual_seed(5), **kwargs)
    second = select_tokens(features, attention, [(0, 1)], generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(first.tokens, second.tokens)
    # The 1e-6 noise cannot change these well-separated clusters.
    plain = select_tokens(features, attention, [(0, 1)], **kwargs)
    assert torch.allclose(first.tokens, plain.tokens)


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
    # beta = 0: the mean of each cluster's members other than its centre (the centre is left out).
    out = dpc_knn_context(tokens, num_clusters=2, k=5, beta=0.0)
    _assert_context_token(out[0], a, beta=0.0)
    _assert_context_token(out[1], b, beta=0.0)
    assert not torch.allclose(out[0], a.mean(dim=0), atol=1e-5)  # not the plain cluster mean
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


def test_dpc_knn_context_exact_values():
    tokens = torch.tensor([[v, 0.0] for v in _REST_A])
    out = dpc_knn_context(tokens, num_clusters=2, k=2, beta=0.6)
    assert torch.allclose(out, torch.tensor([[_CONTEXT_A[0], 0.0], [_CONTEXT_A[1], 0.0]]), atol=1e-6)


def test_dpc_knn_context_token_counts_among_its_own_neighbours():
    # Values 0, 1, 3 and k = 2 with the token itself: the 2-NN distances are (0, 1), (0, 1), (0, 2); values 0 and 1
    # tie as densest, value 0 wins (earlier) and is the one centre. Members exclude it: 0.6 * 0 + 0.4 * mean(1, 3).
    # (Without the token itself value 1 would be densest and the centre.)
    tokens = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    out = dpc_knn_context(tokens, num_clusters=1, k=2, beta=0.6)
    assert torch.allclose(out, torch.tensor([[0.8, 0.0]]), atol=1e-6)


def test_dpc_knn_context_batched_matches_rows():
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(3, 15, 6, generator=g)
    batched = dpc_knn_context(tokens, num_clusters=4, k=4, beta=0.6)
    assert batched.shape == (3, 4, 6)
    for row in range(3):
        assert torch.allclose(batched[row], dpc_knn_context(tokens[row], num_clusters=4, k=4, beta=0.6), atol=1e-6)
