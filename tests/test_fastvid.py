"""Tests for earlytom_eval.compression.fastvid.

Segmentations are forced through hand-built global features (identical within a segment, orthogonal across);
the DPC scores, cosine assignments and merged values of the small cases are worked out in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch

from earlytom_eval.compression.fastvid import (
    anchor_budget,
    dyseg,
    fastvid_budgets,
    fastvid_select,
    merge_contexts,
)


@pytest.mark.parametrize(
    "rho, expected",
    [(0.10, (19, 12, 7)), (0.15, (29, 18, 11)), (0.20, (39, 24, 15)), (0.25, (49, 30, 19))],
)
def test_budgets_table(rho, expected):
    assert fastvid_budgets(196, rho) == expected


@pytest.mark.parametrize(
    "length, n_ctx, expected",
    [
        (1, 7, ([0], 7)),
        (2, 7, ([1], 14)),  # m = 1
        (4, 7, ([3], 28)),
        (5, 7, ([0, 4], 17)),  # m = 2, floor(35 / 2)
        (9, 7, ([0, 4, 8], 21)),  # m = 3
        (7, 11, ([2, 6], 38)),  # m = 2, floor(77 / 2)
    ],
)
def test_anchor_budget(length, n_ctx, expected):
    assert anchor_budget(length, n_ctx) == expected


def _angles_to_features(sims: list[float]) -> torch.Tensor:
    """``[T, 2]`` unit vectors whose consecutive cosines are ``sims``."""
    angles = [0.0]
    for s in sims:
        angles.append(angles[-1] + math.acos(s))
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64)


def test_dyseg_cuts():
    g = _angles_to_features([0.95, 0.5, 0.99, 0.92, 0.97])
    # c = 3: the 2 smallest sims are at 1 (0.5) and 3 (0.92); below tau 0.9: only 1.
    assert dyseg(g, c=3, tau=0.9) == [(0, 1), (2, 3), (4, 5)]
    # tau 0.96 adds cut 0 (0.95).
    assert dyseg(g, c=3, tau=0.96) == [(0, 0), (1, 1), (2, 3), (4, 5)]
    # c = 1: no forced cut.
    assert dyseg(g, c=1, tau=0.6) == [(0, 1), (2, 5)]


def test_dyseg_ties_and_caps():
    g = torch.ones(6, 3)  # all similarities 1: the forced cuts take the earliest
    assert dyseg(g, c=3, tau=0.9) == [(0, 0), (1, 1), (2, 5)]
    assert dyseg(torch.ones(3, 2), c=8, tau=0.9) == [(0, 0), (1, 1), (2, 2)]  # c - 1 capped at T - 1
    assert dyseg(torch.ones(1, 2)) == [(0, 0)]


def _segment_features(sizes: list[int]) -> torch.Tensor:
    """Global features: one-hot of the segment id, so sims are 1 inside a segment and 0 across."""
    ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return torch.nn.functional.one_hot(ids, len(sizes)).float()


def test_dyseg_32_frames_at_least_c_segments():
    segments = dyseg(_segment_features([5, 5, 5, 5, 4, 4, 2, 2]))
    assert segments == [(0, 4), (5, 9), (10, 14), (15, 19), (20, 23), (24, 27), (28, 29), (30, 31)]
    g = torch.randn(32, 16, generator=torch.Generator().manual_seed(0)).abs() + 5.0  # all sims > 0.9
    assert len(dyseg(g)) == 8


def _video(frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames, 196, 8, generator=g), torch.rand(frames, 196, generator=g)


@pytest.mark.parametrize("rho, n_keep", [(0.10, 19), (0.15, 29), (0.20, 39), (0.25, 49)])
def test_token_count_single_frame_segments(rho, n_keep):
    # Orthogonal global features: every similarity 0 < tau, 32 single-frame segments: 32 n_keep tokens
    # (+ newline: 609 / 929 / 1249 / 1569).
    features, attention = _video(32)
    result = fastvid_select(features, attention, torch.eye(32), retention=rho)
    assert len(result.segments) == 32
    assert result.selection.count == 32 * n_keep
    assert result.selection.count + 1 == {0.10: 609, 0.15: 929, 0.20: 1249, 0.25: 1569}[rho]


@pytest.mark.parametrize(
    "rho, expected",
    [
        # segments 5, 5, 5, 5, 4, 4, 2, 2: 32 n_sal + 4 * 2 * floor(5 n_ctx / 2) + 2 * 4 n_ctx + 2 * 2 n_ctx
        (0.10, 32 * 12 + 4 * 2 * 17 + 2 * 28 + 2 * 14),  # 604 (609 - 1 - 4 lost to floor)
        (0.15, 32 * 18 + 4 * 2 * 27 + 2 * 44 + 2 * 22),  # 924
        (0.20, 32 * 24 + 4 * 2 * 37 + 2 * 60 + 2 * 30),  # 1244
        (0.25, 32 * 30 + 4 * 2 * 47 + 2 * 76 + 2 * 38),  # 1564
    ],
)
def test_token_count_multi_frame_segments(rho, expected):
    features, attention = _video(32, seed=1)
    result = fastvid_select(features, attention, _segment_features([5, 5, 5, 5, 4, 4, 2, 2]), retention=rho)
    assert result.selection.count == expected
    assert expected == {0.10: 604, 0.15: 924, 0.20: 1244, 0.25: 1564}[rho]
    positions = result.selection.positions
    assert torch.equal(positions, positions.sort().values) and positions.unique().numel() == expected


def _remaining_case() -> list[list[float]]:
    """Six remaining tokens r0..r5 with a hand-computed DPC (D = 2, distances / sqrt(2), k = 4).

    Squared distances: r0-r1 1, r0-r2 1, r1-r2 2, r0-r3 32, r0-r4 25, r1-r3 25, r1-r4 18, r2-r4 32, ... and the
    mirror images (r3, r4, r5 mirror r0, r1, r2). 4-NN sums (self included): r0 27, r1 21, r2 35 (and mirrors);
    density exp(-sum / 8). r1, r4 tie as densest -> r1 (earlier): delta = max = sqrt(50 / 2) = 5;
    r4: delta = sqrt(18 / 2) = 3; all others sqrt(1 / 2). Scores: r1 5 e^-2.625 > r4 3 e^-2.625 > the rest.
    """
    return [[4.0, 0.0], [4.0, 1.0], [5.0, 0.0], [0.0, 4.0], [1.0, 4.0], [0.0, 5.0]]


def test_single_frame_segment_by_hand():
    # S = 8, rho = 0.5, d = 0.5: n_keep 4, n_sal 2, n_ctx 2. Salient: positions 3 and 6; the rest 0, 1, 2, 4, 5, 7
    # are r0..r5 -> contexts r1 (position 1) and r4 (position 5). Cosine: r0, r2 and r1 itself -> r1;
    # r3, r5, r4 -> r4. n = 3 each: w = max(1/4, 0.6) = 0.6.
    # r1: 0.6 [4, 1] + 0.4 mean([4, 0], [4, 1], [5, 0]) = [2.4 + 0.4 * 13/3, 0.6 + 0.4 / 3]; r4 mirrors it.
    rest = _remaining_case()
    frame = torch.tensor(rest[:3] + [[70.0, 71.0]] + rest[3:5] + [[80.0, 81.0]] + rest[5:])
    attention = torch.zeros(1, 8)
    attention[0, [3, 6]] = 1.0
    result = fastvid_select(frame[None], attention, torch.ones(1, 4), retention=0.5, d=0.5)
    assert result.budgets == (4, 2, 2)
    ctx = [2.4 + 0.4 * 13 / 3, 0.6 + 0.4 / 3]
    expected = torch.tensor([ctx, [70.0, 71.0], ctx[::-1], [80.0, 81.0]])
    assert torch.allclose(result.selection.tokens, expected, atol=1e-5)
    assert result.selection.positions.tolist() == [1, 3, 5, 6]
    assert result.selection.source.tolist() == [-1, 3, -1, 6]
    # beta = 0.1: w = max(1/4, 0.1) = 0.25 -> 0.25 [4, 1] + 0.75 [13/3, 1/3] = [4.25, 0.5].
    low = fastvid_select(frame[None], attention, torch.ones(1, 4), retention=0.5, d=0.5, beta=0.1)
    assert torch.allclose(low.selection.tokens[0], torch.tensor([4.25, 0.5]), atol=1e-5)


def test_multi_frame_segment_by_hand():
    # T = 2, one segment (c = 1: no forced cut; identical global features). S = 9, rho = 0.5, d = 0.25:
    # n_keep 4, n_sal 3, n_ctx 1; L = 2 -> m = 1, anchor = frame 1, b = 2.
    # Frame 1 salient 2, 5, 8; rest 0, 1, 3, 4, 6, 7 = r0..r5 -> contexts r1 (q 1) and r4 (q 6), score order.
    # Pool = both frames' rest. Frame 0 salient 0, 4, 8; rest 1, 2, 3, 5, 6, 7 = [3,0] [0,3] [2,2] [6,1] [1,6]
    # [5,5]; [2,2] and [5,5] are as close to r1 as to r4 -> r1 (first context).
    # r1 group: [3,0] [2,2] [6,1] [5,5] [4,0] [4,1] [5,0]: n = 7, sum [29, 9]; 0.6 [4,1] + 0.4 [29,9] / 7.
    # r4 group: [0,3] [1,6] [0,4] [1,4] [0,5]: n = 5, sum [2, 22]; 0.6 [1,4] + 0.4 [0.4, 4.4] = [0.76, 4.16].
    rest0 = [[3.0, 0.0], [0.0, 3.0], [2.0, 2.0], [6.0, 1.0], [1.0, 6.0], [5.0, 5.0]]
    rest1 = _remaining_case()
    sal0 = {0: [100.0, 1.0], 4: [104.0, 1.0], 8: [108.0, 1.0]}
    sal1 = {2: [202.0, 1.0], 5: [205.0, 1.0], 8: [208.0, 1.0]}

    def frame(salient: dict[int, list[float]], rest: list[list[float]]) -> torch.Tensor:
        values = iter(rest)
        return torch.tensor([salient[q] if q in salient else next(values) for q in range(9)])

    features = torch.stack([frame(sal0, rest0), frame(sal1, rest1)])
    attention = torch.zeros(2, 9)
    attention[0, [0, 4, 8]] = 1.0
    attention[1, [2, 5, 8]] = 1.0
    result = fastvid_select(features, attention, torch.ones(2, 3), retention=0.5, d=0.25, c=1)
    assert result.segments == ((0, 1),)
    assert result.budgets == (4, 3, 1)
    r1 = [2.4 + 0.4 * 29 / 7, 0.6 + 0.4 * 9 / 7]
    expected = torch.tensor([sal0[0], sal0[4], sal0[8], r1, sal1[2], sal1[5], [0.76, 4.16], sal1[8]])
    assert torch.allclose(result.selection.tokens, expected, atol=1e-5)
    assert result.selection.positions.tolist() == [0, 4, 8, 10, 11, 14, 15, 17]
    assert result.selection.source.tolist() == [0, 4, 8, -1, 11, 14, -1, 17]


def test_merge_contexts_unmatched_context_is_unchanged():
    # Two identical contexts: every pool token goes to the first; the second has n = 0 -> w = 1, unchanged.
    contexts = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    pool = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    out = merge_contexts(contexts, pool, 0.6)
    assert torch.allclose(out, torch.tensor([[[0.6 + 0.4 * 1.5, 0.0], [1.0, 0.0]]]))


def test_batched_frames_equal_single_frame_calls():
    features, attention = _video(4, seed=2)
    whole = fastvid_select(features, attention, torch.eye(4), retention=0.25)
    per_frame = 49
    for t in range(4):
        one = fastvid_select(features[t : t + 1], attention[t : t + 1], torch.ones(1, 1), retention=0.25)
        part = slice(per_frame * t, per_frame * (t + 1))
        assert torch.allclose(whole.selection.tokens[part], one.selection.tokens, atol=1e-6)
        assert torch.equal(whole.selection.positions[part], one.selection.positions + 196 * t)


def test_salient_tokens_unchanged_and_noise_seeded():
    features, attention = _video(6, seed=3)
    g = _segment_features([3, 1, 2])
    runs = [
        fastvid_select(features, attention, g, retention=0.15, c=3, generator=torch.Generator().manual_seed(4))
        for _ in range(2)
    ]
    assert torch.equal(runs[0].selection.tokens, runs[1].selection.tokens)
    selection = runs[0].selection
    salient = selection.source >= 0
    assert int(salient.sum()) == 6 * 18
    assert torch.equal(selection.source[salient], selection.positions[salient])
    assert torch.equal(selection.tokens[salient], features.reshape(-1, 8)[selection.source[salient]])
    for t in range(6):
        picked = selection.source[salient & (selection.positions // 196 == t)] - 196 * t
        assert picked.tolist() == sorted(attention[t].argsort(descending=True)[:18].tolist())


def test_rejects_bad_shapes():
    features, attention = _video(2)
    with pytest.raises(ValueError):
        fastvid_select(features, attention[:, :5], torch.eye(2), retention=0.1)
    with pytest.raises(ValueError):
        fastvid_select(features, attention, torch.eye(3), retention=0.1)
