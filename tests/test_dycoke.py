"""Tests for earlytom_eval.compression.dycoke (DyCoke stage 1 TTM pruning and stage 2 KV-cache pruning).

Every expected index and count is derived by hand from the method's definition (spec section 6 and
KD-TAO/DyCoke @ dd7463498203479d0ff6f2d29c4e72928c0af244).
"""

from __future__ import annotations

import math

import pytest
import torch

from earlytom_eval.compression.dycoke import (
    DROPPED,
    WHOLE,
    BatchedDecodePruneState,
    DecodePruneState,
    attention_similarity,
    choose_ttm_k,
    decode_keep_indices,
    decode_keep_mask,
    keep_mask_to_indices,
    kv_keep_count,
    kv_keep_indices,
    stage2_image_length,
    ttm_frame_plan,
    ttm_keep_count,
    ttm_prune,
    ttm_token_count,
)

W, D = WHOLE, DROPPED


def _angles(rows: list[list[float]]) -> torch.Tensor:
    """``[T, S, 2]`` unit vectors at the given angles (degrees): cos(token a, token b) = cos(angle difference)."""
    theta = torch.tensor(rows, dtype=torch.float64) * math.pi / 180
    return torch.stack([theta.cos(), theta.sin()], dim=-1).float()


# --------------------------------------------------------------------------- #
# stage 1: counts and plan
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("k, expected", [(0.7, 58), (0.5, 98), (0.3, 137), (1.0, 0), (0.0, 196)])
def test_ttm_keep_count(k, expected):
    # int((1 - K) * 196): 58.8 -> 58, 98.0 -> 98, 137.2 -> 137.
    assert ttm_keep_count(k) == expected


def test_ttm_keep_count_rejects_bad_k():
    with pytest.raises(ValueError):
        ttm_keep_count(1.5)


@pytest.mark.parametrize("k, expected", [(0.7, 3099), (0.5, 4019), (0.3, 4916), (1.0, 1765), (0.0, 6273)])
def test_ttm_token_count_32_frames(k, expected):
    # 9 * 196 + 23 * k_keep + 1 (newline).
    assert ttm_token_count(32, ttm_keep_count(k)) == expected
    assert ttm_token_count(32, ttm_keep_count(k), newline=False) == expected - 1


def test_ttm_frame_plan_32_frames():
    plan = ttm_frame_plan(32).tolist()
    for frame in range(32):
        if frame % 2 == 1:
            assert plan[frame] == frame - 1, frame  # first pass: odd frames against their predecessor
        elif frame % 4 == 2 and frame <= 26:
            assert plan[frame] == frame - 2, frame  # second pass: i + 2 against i, i = 0, 4, ..., 24
        else:
            assert plan[frame] == WHOLE, frame  # 0, 4, ..., 28 and 30 (never pruned: reference quirk)
    assert [f for f in range(32) if plan[f] == WHOLE] == [0, 4, 8, 12, 16, 20, 24, 28, 30]


@pytest.mark.parametrize(
    "num_frames, expected, expected_keep",
    [
        (0, [], []),
        (1, [D], [W]),  # the reference crashes; a lone frame is unpaired
        (2, [W, 0], [W, 0]),
        (3, [W, 0, D], [W, 0, W]),  # second pass range(0, -1, 4) is empty (the reference crashes)
        (4, [W, 0, W, 2], [W, 0, W, 2]),  # range(0, 0, 4) empty: frame 2 stays whole
        (5, [W, 0, 0, 2, D], [W, 0, 0, 2, W]),  # range(0, 1, 4) = [0]: frame 2 against frame 0
        (7, [W, 0, 0, 2, W, 4, D], [W, 0, 0, 2, W, 4, W]),
        (8, [W, 0, 0, 2, W, 4, W, 6], [W, 0, 0, 2, W, 4, W, 6]),  # range(0, 4, 4) = [0]: frame 6 whole
        (9, [W, 0, 0, 2, W, 4, 4, 6, D], [W, 0, 0, 2, W, 4, 4, 6, W]),  # range(0, 5, 4) = [0, 4]
    ],
)
def test_ttm_frame_plan_small_and_odd(num_frames, expected, expected_keep):
    assert ttm_frame_plan(num_frames).tolist() == expected
    assert ttm_frame_plan(num_frames, keep_unpaired_last=True).tolist() == expected_keep


def test_ttm_token_count_odd_frames():
    # T = 5, S = 10, k_keep = 3: frames 0 whole, 1 and 2 and 3 pruned, 4 dropped (or whole).
    assert ttm_token_count(5, 3, 10, newline=False) == 10 + 3 * 3
    assert ttm_token_count(5, 3, 10, newline=False, keep_unpaired_last=True) == 10 + 3 * 3 + 10


# --------------------------------------------------------------------------- #
# stage 1: ttm_prune
# --------------------------------------------------------------------------- #


def _six_frames() -> torch.Tensor:
    # T = 6: plan [W, 0, 0, 2, W, 4]. Angles chosen so each pruned frame's similarity order is known.
    return _angles(
        [
            [0, 0, 0, 0],  # frame 0: whole
            [10, 80, 40, 60],  # vs frame 0: angle gaps 10, 80, 40, 60 -> ascending sim: 1, 3, 2, 0
            [50, 5, 70, 20],  # vs frame 0 (second pass): gaps 50, 5, 70, 20 -> ascending sim: 2, 0, 3, 1
            [80, 5, 80, 110],  # vs frame 2: gaps 30, 0, 10, 90 -> ascending sim: 3, 0, 2, 1
            [0, 0, 0, 0],  # frame 4: whole
            [20, 20, 90, 45],  # vs frame 4: gaps 20, 20, 90, 45 -> ascending sim: 2, 3, then tie 0 before 1
        ]
    )


def test_ttm_prune_keeps_lowest_similarity_in_ascending_order():
    features = _six_frames()
    result = ttm_prune(features, k_keep=2)
    expected = [0, 1, 2, 3] + [4 + 1, 4 + 3] + [8 + 2, 8 + 0] + [12 + 3, 12 + 0] + [16, 17, 18, 19] + [20 + 2, 20 + 3]
    assert result.source.tolist() == expected
    assert torch.equal(result.tokens, features.reshape(24, 2)[expected])
    assert result.positions is None
    assert result.count == 2 * 4 + 4 * 2 == ttm_token_count(6, 2, 4, newline=False)


def test_ttm_prune_second_pass_compares_with_frame_i_not_i_plus_1():
    # Against frame 1 instead of frame 0, frame 2's gaps would be 40, 75, 30, 40 -> first kept position 1, not 2.
    result = ttm_prune(_six_frames(), k_keep=1)
    assert result.source.tolist() == [0, 1, 2, 3, 4 + 1, 8 + 2, 12 + 3, 16, 17, 18, 19, 20 + 2]


def test_ttm_prune_ties_go_to_lower_position():
    result = ttm_prune(_six_frames(), k_keep=3)
    assert result.source.tolist()[-3:] == [20 + 2, 20 + 3, 20 + 0]


def test_ttm_prune_k_keep_zero_and_full():
    features = _six_frames()
    assert ttm_prune(features, k_keep=0).source.tolist() == [0, 1, 2, 3, 16, 17, 18, 19]
    # k_keep = S keeps every token, but pruned frames come in ascending similarity order (reference quirk).
    full = ttm_prune(features, k_keep=4).source.tolist()
    assert full[4:8] == [5, 7, 6, 4]
    assert sorted(full) == list(range(24))


def test_ttm_prune_odd_frames_drop_or_keep_last():
    features = _angles([[0, 0], [30, 60], [0, 0]])  # T = 3: plan [W, 0, D]
    assert ttm_prune(features, k_keep=1).source.tolist() == [0, 1, 2 + 1]
    assert ttm_prune(features, k_keep=1, keep_unpaired_last=True).source.tolist() == [0, 1, 2 + 1, 4, 5]
    lone = ttm_prune(_angles([[0, 10]]), k_keep=1)
    assert lone.tokens.shape == (0, 2)
    assert ttm_prune(_angles([[0, 10]]), k_keep=1, keep_unpaired_last=True).source.tolist() == [0, 1]


def test_ttm_prune_32_frames_structure():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(32, 196, 8, generator=g)
    for k in (0.7, 0.5, 0.3):
        k_keep = ttm_keep_count(k)
        result = ttm_prune(features, k_keep)
        assert result.count + 1 == ttm_token_count(32, k_keep)
        frames = (result.source // 196).tolist()
        assert frames == sorted(frames)  # frames in order
        for frame in (0, 4, 8, 12, 16, 20, 24, 28, 30):
            kept = result.source[result.source // 196 == frame] % 196
            assert kept.tolist() == list(range(196))  # whole frames in raster order
        for frame in (1, 2, 3, 5, 6, 31):
            assert int((result.source // 196 == frame).sum()) == k_keep
        assert torch.equal(result.tokens, features.reshape(-1, 8)[result.source])


def test_ttm_prune_keeps_dtype_and_rejects_bad_k_keep():
    features = _six_frames().to(torch.bfloat16)
    assert ttm_prune(features, 2).tokens.dtype == torch.bfloat16
    with pytest.raises(ValueError):
        ttm_prune(features, 5)


# --------------------------------------------------------------------------- #
# stage 1: K for a target retention
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("rho", [0.10, 0.15, 0.20, 0.25])
def test_choose_ttm_k_below_floor_uses_most_aggressive(rho):
    # Floor: K = 1.0 keeps only the 9 whole frames: 9 * 196 + 1 = 1765 tokens = 28.1 % > every target.
    setting = choose_ttm_k(rho)
    assert (setting.k, setting.k_keep, setting.tokens) == (1.0, 0, 1765)
    assert setting.retention == pytest.approx(1765 / 6272)
    assert setting.target == rho


def test_choose_ttm_k_reachable_target():
    # rho = 0.5: target 3136 = 1765 + 23 k -> k = 59.6; k = 60 gives 3145 (off 9), k = 59 gives 3122 (off 14).
    # int((1 - K) * 196) = 60 needs K in (0.6888, 0.6939]: on the 0.01 grid only K = 0.69.
    setting = choose_ttm_k(0.5)
    assert (setting.k, setting.k_keep, setting.tokens) == (0.69, 60, 3145)


# --------------------------------------------------------------------------- #
# stage 2
# --------------------------------------------------------------------------- #


def test_stage2_counts():
    # K = 0.7: 3098 visual tokens before the newline; the span leaves out the last one (reference quirk).
    assert stage2_image_length(3098) == 3097
    assert kv_keep_count(3097, 0.8) == 619  # int(619.4)
    assert kv_keep_count(3097, 0.7) == 929  # int(929.1)
    assert kv_keep_count(10, 1.0) == 0


def test_kv_keep_indices_prefix_topk_tail():
    attention = torch.tensor([0.1, 0.5, 0.2, 0.4, 0.3])  # span [2, 7)
    kept = kv_keep_indices(attention, start=2, seq_len=10, keep=2)
    # top-2: span positions 1 (0.5) and 3 (0.4) -> cache 3 and 5; prefix 0, 1; tail 7, 8, 9.
    assert kept.tolist() == [0, 1, 3, 5, 7, 8, 9]
    assert kv_keep_indices(attention, start=2, seq_len=7, keep=0).tolist() == [0, 1]


def test_kv_keep_indices_ties_and_bad_span():
    attention = torch.tensor([0.3, 0.3, 0.1, 0.3])
    assert kv_keep_indices(attention, start=0, seq_len=5, keep=2).tolist() == [0, 1, 4]
    with pytest.raises(ValueError):
        kv_keep_indices(attention, start=3, seq_len=5, keep=2)


def test_attention_similarity():
    a = torch.tensor([1.0, 0.0, 0.0])
    assert attention_similarity(a, None) == 0.0
    assert attention_similarity(a, torch.tensor([1.0, 1.0])) == 0.0  # another length
    assert attention_similarity(a, torch.tensor([1.0, 1.0, 0.0])) == pytest.approx(1 / math.sqrt(2))


def test_decode_keep_indices_sequence():
    state = DecodePruneState()
    a = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    b = torch.tensor([1.0, 0.4, 0.0, 0.0, 0.0])  # cos(a, b) = 1 / sqrt(1.16) = 0.928
    c = torch.tensor([1.0, 0.8, 0.0, 0.0, 0.0])  # cos(b, c) = 1.32 / sqrt(1.16 * 1.64) = 0.957; cos(a, c) = 0.781
    d = torch.tensor([0.0, 0.1, 0.9, 0.5, 0.0])  # cos(c, d) = 0.08 / (1.28 * 1.03) = 0.06
    # Step 1: no previous row -> prune. n_img = 5, P = 0.6 -> keep int(5 * 0.4) = 2: positions 0, then 1 (tie-free).
    first = decode_keep_indices(b, state, start=1, seq_len=8, prune_ratio=0.6)
    assert first.tolist() == [0, 1, 2, 6, 7]
    # Step 2: c is 0.957 similar to b -> no pruning (reference quirk: not "reuse the previous selection").
    assert decode_keep_indices(c, state, start=1, seq_len=9, prune_ratio=0.6) is None
    # Step 3: d against c (the previous STEP, not the last pruned one) -> prune; top-2 of d: 2 (0.9), 3 (0.5).
    third = decode_keep_indices(d, state, start=1, seq_len=10, prune_ratio=0.6)
    assert third.tolist() == [0, 3, 4, 6, 7, 8, 9]
    assert torch.equal(state.previous, d)
    # a vs b would be 0.928 >= 0.9: no pruning; with threshold 0.95 it prunes.
    state = DecodePruneState(previous=a)
    assert decode_keep_indices(b, state, start=1, seq_len=8, prune_ratio=0.6) is None
    state = DecodePruneState(previous=a)
    assert decode_keep_indices(b, state, start=1, seq_len=8, prune_ratio=0.6, threshold=0.95) is not None


def test_decode_state_carries_across_samples_unless_reset():
    row = torch.tensor([0.2, 0.5, 0.3])
    state = DecodePruneState()
    assert decode_keep_indices(row, state, start=0, seq_len=4) is not None
    # Next sample, same state (the reference's behaviour): the identical row is "similar" -> no pruning.
    assert decode_keep_indices(row, state, start=0, seq_len=4) is None
    # The project resets per generate call: the first step prunes again.
    state.reset()
    assert state.previous is None
    # keep int(3 * 0.2) = 0 image entries with the default P = 0.8: prefix (none) + tail [3, 4).
    assert decode_keep_indices(row, state, start=0, seq_len=4).tolist() == [3]
    # A previous row of another length counts as no previous row.
    assert decode_keep_indices(torch.tensor([0.2, 0.5, 0.3, 0.0]), state, start=0, seq_len=5) is not None


def test_decode_keep_mask_batched_rows_with_their_own_spans():
    # Row 0: span [1, 4), seq_len 6; row 1: span [2, 6), seq_len 7. P = 0.5: keep int(1.5) = 1 and int(2.0) = 2.
    attention = torch.tensor(
        [
            [0.05, 0.2, 0.7, 0.1, 0.9, 0.9, 0.0],
            [0.05, 0.9, 0.1, 0.4, 0.3, 0.2, 0.9],
        ]
    )
    state = BatchedDecodePruneState()
    kwargs = dict(starts=torch.tensor([1, 2]), image_lengths=torch.tensor([3, 4]), seq_lens=torch.tensor([6, 7]))
    keep, pruned = decode_keep_mask(attention, state, prune_ratio=0.5, **kwargs)
    assert pruned.tolist() == [True, True]
    indices, valid = keep_mask_to_indices(keep)
    assert [row[m].tolist() for row, m in zip(indices, valid)] == [[0, 2, 4, 5], [0, 1, 3, 4, 6]]
    # Same as the single-row version.
    for row, (start, n, seq_len) in enumerate([(1, 3, 6), (2, 4, 7)]):
        span = attention[row, start : start + n]
        single = kv_keep_indices(span, start=start, seq_len=seq_len, keep=kv_keep_count(n, 0.5))
        assert keep[row].nonzero().squeeze(1).tolist() == single.tolist()
    # Next step: row 0 unchanged (similarity 1 -> all of [0, 6)), row 1 now prefers span positions 5 and 2.
    attention2 = attention.clone()
    attention2[1, 2:6] = torch.tensor([0.3, 0.0, 0.0, 0.6])
    keep, pruned = decode_keep_mask(attention2, state, prune_ratio=0.5, **kwargs)
    assert pruned.tolist() == [False, True]
    assert keep[0].nonzero().squeeze(1).tolist() == [0, 1, 2, 3, 4, 5]
    assert keep[1].nonzero().squeeze(1).tolist() == [0, 1, 2, 5, 6]
