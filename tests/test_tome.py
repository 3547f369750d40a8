"""Tests for earlytom_eval.compression.tome (ToMe as in EarlyTom's LLaVA-OneVision port).

Every expected index, value and count is derived by hand from the method's definition (spec section 7,
facebookresearch/ToMe @ af95e4b1befa172dadccd8c81e223b10090f9579 and viridisGreen/EarlyTom @
b90932217325d986d11364c5d31466ab1812caa1).
"""

from __future__ import annotations

import math

import pytest
import torch

from earlytom_eval.compression.tome import (
    ToMeState,
    bipartite_soft_matching,
    check_parse_r,
    choose_merge_num,
    compose_assignment,
    merge_schedule,
    merge_tokens,
    merge_wavg,
    parse_r,
    single_sources,
    tome_llm_token_count,
    tome_pool,
    tome_step,
)


def _angles(degrees: list[float], scale: list[float] | None = None) -> torch.Tensor:
    """``[1, N, 2]`` vectors at the given angles: normalised scores are cos(angle difference)."""
    theta = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    vectors = torch.stack([theta.cos(), theta.sin()], dim=-1)
    if scale is not None:
        vectors = vectors * torch.tensor(scale, dtype=torch.float64)[:, None]
    return vectors[None].float()


# Six tokens: A = positions 0, 2, 4 (A0, A1, A2), B = positions 1, 3, 5 (B0, B1, B2).
# B0 = 0 deg, B1 = 90 deg, B2 = 180 deg. A0 = 90 deg (score 1.0 with B1), A1 = 160 deg (best B2, cos 20 = 0.940),
# A2 = 8 deg (best B0, cos 8 = 0.990). A1 is scaled by 5: the metric is normalised first.
METRIC = _angles([90, 0, 160, 90, 8, 180], scale=[1, 1, 5, 1, 1, 1])
VALUES = torch.tensor([[[10.0], [20.0], [30.0], [40.0], [50.0], [60.0]]])
SIZES = torch.tensor([[[1.0], [2.0], [1.0], [1.0], [3.0], [1.0]]])


# --------------------------------------------------------------------------- #
# bipartite soft matching
# --------------------------------------------------------------------------- #


def test_matching_protects_token_0_and_merges_best_first():
    # Scores by A token: A0 -inf (protected), A2 0.990, A1 0.940 -> r = 1 merges A2 (position 4) into B0 (1).
    plan = bipartite_soft_matching(METRIC, 1)
    assert plan.src.tolist() == [[2]] and plan.dst.tolist() == [[0]]
    assert plan.unmerged.tolist() == [[0, 1]]  # index-sorted with class_token
    # Output: [A0, A1] ++ [B0 + A2, B1, B2] -> positions 0 -> 0, 2 -> 1, 1 and 4 -> 2, 3 -> 3, 5 -> 4.
    assert plan.destination.tolist() == [[0, 2, 1, 3, 2, 4]]
    assert (plan.r, plan.num_in, plan.num_out) == (1, 6, 5)
    assert merge_tokens(plan, VALUES).squeeze(-1).tolist() == [[10, 30, 20 + 50, 40, 60]]


def test_matching_size_weighted_average_r2():
    # r = 2: A2 -> B0 and A1 -> B2. Weighted: (20 * 2 + 50 * 3) / 5 = 38, (60 * 1 + 30 * 1) / 2 = 45.
    plan = bipartite_soft_matching(METRIC, 2)
    assert plan.src.tolist() == [[2, 1]] and plan.dst.tolist() == [[0, 2]]
    merged, size = merge_wavg(plan, VALUES, SIZES)
    assert merged.squeeze(-1).tolist() == [[10, 38, 40, 45]]
    assert size.squeeze(-1).tolist() == [[1, 5, 1, 2]]
    # Without sizes every token counts 1: plain means (20 + 50) / 2 and (60 + 30) / 2.
    merged, size = merge_wavg(plan, VALUES)
    assert merged.squeeze(-1).tolist() == [[10, 35, 40, 45]]
    assert size.squeeze(-1).tolist() == [[1, 2, 1, 2]]


def test_matching_reduce_modes():
    plan = bipartite_soft_matching(METRIC, 2)
    assert merge_tokens(plan, VALUES, mode="amax").squeeze(-1).tolist() == [[10, 50, 40, 60]]
    assert merge_tokens(plan, VALUES, mode="mean").squeeze(-1).tolist() == [[10, 35, 40, 45]]


def test_matching_without_class_token():
    # A0 is free now and scores highest (1.0): r = 1 merges it into B1; the unmerged A tokens keep the
    # descending-score order A2 (0.990), A1 (0.940), i.e. positions 4, 2 (ToMe does not sort them).
    plan = bipartite_soft_matching(METRIC, 1, class_token=False)
    assert plan.src.tolist() == [[0]] and plan.dst.tolist() == [[1]]
    assert plan.unmerged.tolist() == [[2, 1]]
    assert merge_tokens(plan, VALUES).squeeze(-1).tolist() == [[50, 30, 20, 40 + 10, 60]]


def test_matching_odd_token_count_and_batch():
    # N = 7: A = positions 0, 2, 4, 6 (A0..A3), B = positions 1, 3, 5 (B0..B2); two frames in one batch.
    # Row 0: B = 0, 45, 95 deg; A1 = 101 (B2, gap 6), A2 = 50 (B1, gap 5), A3 = 44 (B1, gap 1).
    # Row 1: B = 50, 120, 170 deg; A1 = 30 (B0, gap 20), A2 = 119 (B1, gap 1), A3 = 175 (B2, gap 5).
    first = _angles([0, 0, 101, 45, 50, 95, 44])
    second = _angles([0, 50, 30, 120, 119, 170, 175])
    plan = bipartite_soft_matching(torch.cat([first, second]), 2)
    assert plan.src.tolist() == [[3, 2], [2, 3]]  # smallest gaps first
    assert plan.dst.tolist() == [[1, 1], [1, 2]]
    assert plan.unmerged.tolist() == [[0, 1], [0, 1]]
    # Output [A0, A1, B0, B1, B2]; merged A tokens land on their B token.
    assert plan.destination.tolist() == [[0, 2, 1, 3, 3, 4, 3], [0, 2, 1, 3, 3, 4, 4]]
    assert plan.num_out == 5
    values = torch.arange(7, dtype=torch.float32).view(1, 7, 1).repeat(2, 1, 1)
    merged = merge_tokens(plan, values).squeeze(-1).tolist()
    assert merged == [[0, 2, 1, 3 + 4 + 6, 5], [0, 2, 1, 3 + 4, 5 + 6]]


def test_matching_ties_lower_a_index_first():
    # A1 and A2 are identical (same best score into B1): r = 1 merges A1 (position 2), the lower index.
    metric = _angles([0, 200, 45, 40, 45, 300])
    plan = bipartite_soft_matching(metric, 1)
    assert plan.src.tolist() == [[1]] and plan.dst.tolist() == [[1]]


def test_matching_r_limits():
    assert bipartite_soft_matching(METRIC, 0) is None
    merged, size = merge_wavg(None, VALUES)
    assert torch.equal(merged, VALUES) and size.squeeze(-1).tolist() == [[1.0] * 6]
    # The port has no cap: r = 2 of 3 A tokens is the most with the protected token; r = 3 is an error.
    with pytest.raises(ValueError):
        bipartite_soft_matching(METRIC, 3)
    # ToMe's own cap r <= (N - 1) // 2 = 2.
    assert bipartite_soft_matching(METRIC, 3, cap=True).r == 2


def test_merge_keeps_dtype():
    plan = bipartite_soft_matching(METRIC, 2)
    merged, size = merge_wavg(plan, VALUES.to(torch.bfloat16), SIZES)
    assert merged.dtype == torch.bfloat16 and size.dtype == torch.float32
    assert merged.float().squeeze(-1).tolist() == [[10, 38, 40, 45]]


# --------------------------------------------------------------------------- #
# source tracking over layers
# --------------------------------------------------------------------------- #


def test_assignment_and_sources_over_two_layers():
    state = tome_step(ToMeState(VALUES), METRIC, 2)
    # Layer 1 outputs [p0, p1 + p4, p3, p2 + p5].
    assert state.assignment.tolist() == [[0, 1, 3, 2, 1, 3]]
    assert single_sources(state.assignment, 4).tolist() == [[0, -1, 3, -1]]
    assert state.hidden.squeeze(-1).tolist() == [[10, 35, 40, 45]]
    # Layer 2 on 4 tokens: A = out0, out2; B = out1, out3. out2 (40 deg) is nearest out1 (50 deg) -> merges there.
    state = tome_step(state, _angles([0, 50, 40, 170]), 1)
    assert state.assignment.tolist() == [[0, 1, 2, 1, 1, 2]]  # p2 -> old out3 -> 2, p3 -> old out2 -> 1
    assert single_sources(state.assignment, 3).tolist() == [[0, -1, -1]]
    # Sizes 1, 3, 2: out1 = (35 * 2 + 40 * 1) / 3 = 110 / 3.
    assert state.size.squeeze(-1).tolist() == [[1, 3, 2]]
    assert state.hidden[0, :, 0].tolist() == pytest.approx([10, 110 / 3, 45])
    # r = 0 leaves the state as it is.
    assert tome_step(state, _angles([0, 50, 40]), 0) is state


def test_compose_assignment_identity_start():
    plan = bipartite_soft_matching(METRIC, 1)
    assert compose_assignment(plan, None, 6).tolist() == plan.destination.tolist()
    assert compose_assignment(None, None, 3).tolist() == [[0, 1, 2]]


# --------------------------------------------------------------------------- #
# schedule
# --------------------------------------------------------------------------- #


def test_parse_r_shapes_and_remainder():
    # r = 4, L = 5, inflect -0.5: min = int(6.0) = 6, max = 2, step -1 -> [6, 5, 4, 3, 2] (sum 20).
    assert parse_r(5, 4, -0.5) == [6, 5, 4, 3, 2]
    assert parse_r(5, 4, -0.5, total=18) == [4, 5, 4, 3, 2]  # remainder -2 on the FIRST layer (inflect < 0)
    assert parse_r(5, 4, 0.5, total=22) == [2, 3, 4, 5, 8]  # inflect > 0: on the last layer
    assert parse_r(5, 4) == [4] * 5


def test_check_parse_r_scan():
    # L = 5, inflect -0.5: r = 1 -> [1] * 5 (5); r = 2 -> [3, 2, 2, 1, 1] (9); r = 3 -> [4, 3, 3, 2, 2] (14).
    # merge_num = 10: gaps 10, 5, 1, 4 -> r = 2, schedule [3 + 1, 2, 2, 1, 1].
    assert check_parse_r(5, 10) == 2
    assert merge_schedule(10, num_layers=5) == [4, 2, 2, 1, 1]
    assert check_parse_r(5, 0) == 0
    assert merge_schedule(0, num_layers=5) == [0] * 5


def test_merge_schedule_608():
    # r = 24: min = 36, max = 12, step -0.96 -> int(36 - 0.96 i) = 36 - i for i < 25, then 12 (sum 612);
    # the first layer takes the remainder 608 - 612 = -4.
    assert check_parse_r(26, 608) == 24
    expected = [32] + list(range(35, 11, -1)) + [12]
    assert expected[:4] == [32, 35, 34, 33] and expected[-3:] == [13, 12, 12]
    assert merge_schedule(608) == expected
    assert sum(expected) == 608 and len(expected) == 26


# --------------------------------------------------------------------------- #
# pooling and token budget
# --------------------------------------------------------------------------- #


def test_tome_pool_even_side_is_block_average():
    # 4 x 4 -> 2 x 2 with align_corners=False at scale 2: each output averages a 2 x 2 block.
    features = torch.arange(16, dtype=torch.float32).view(1, 16, 1)
    result = tome_pool(features)
    assert result.tokens.squeeze(-1).tolist() == [2.5, 4.5, 10.5, 12.5]
    assert result.source.tolist() == [-1] * 4
    assert result.positions is None


def test_tome_pool_odd_side_bilinear():
    # 3 x 3 -> 2 x 2: sample points (i + 0.5) * 1.5 - 0.5 = 0.25, 1.75 on each axis; v = 3 row + col is
    # linear, so the output is v at those points: 1.0, 2.5, 5.5, 7.0.
    features = torch.arange(9, dtype=torch.float32).view(1, 9, 1).repeat(2, 1, 1)
    features[1] += 100
    result = tome_pool(features)
    assert result.tokens.squeeze(-1).tolist() == pytest.approx([1.0, 2.5, 5.5, 7.0, 101.0, 102.5, 105.5, 107.0])


def test_tome_pool_shapes_and_non_square():
    result = tome_pool(torch.zeros(3, 121, 5))  # 11 x 11 -> 6 x 6
    assert result.tokens.shape == (3 * 36, 5) and result.count == 108
    with pytest.raises(ValueError, match="square"):
        tome_pool(torch.zeros(2, 120, 5))


def test_tome_llm_token_count():
    assert tome_llm_token_count(608) == 32 * 36 + 1 == 1153  # 121 = 11 x 11 -> 6 x 6
    assert tome_llm_token_count(0) == 32 * 196 + 1  # 27 x 27 -> 14 x 14
    assert tome_llm_token_count(585, newline=False) == 32 * 36  # 144 = 12 x 12 -> 6 x 6
    with pytest.raises(ValueError):
        tome_llm_token_count(700)  # 29 tokens


@pytest.mark.parametrize(
    "rho, merge_num, side, tokens",
    [
        # target rho * 6272; options 32 m^2 + 1: m = 4 -> 513, 5 -> 801, 6 -> 1153, 7 -> 1569.
        (0.10, 729 - 64, 8, 513),  # 627.2: 513 (off 114.2) beats 801 (off 173.8)
        (0.15, 729 - 100, 10, 801),  # 940.8: 801 (off 139.8) beats 1153 (off 212.2)
        (0.20, 729 - 144, 12, 1153),  # 1254.4: 1153 (off 101.4) beats 1569 (off 314.6)
        (0.25, 729 - 196, 14, 1569),  # 1568: 1569 (off 1)
    ],
)
def test_choose_merge_num(rho, merge_num, side, tokens):
    # n = 2m - 1 and 2m pool to the same m x m; the tie goes to the fewer merges (n = 2m).
    setting = choose_merge_num(rho)
    assert setting.merge_num == merge_num
    assert setting.encoder_tokens == side * side
    assert setting.pooled_tokens == (side // 2) ** 2
    assert setting.tokens == tokens
    assert setting.retention == pytest.approx(tokens / 6272)
    assert sum(setting.schedule) == merge_num and len(setting.schedule) == 26
