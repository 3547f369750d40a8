"""Tests for earlytom_eval.compression.temporal (stage 1: temporal merging inside the vision encoder).

Every expected value is worked out by hand from the method's definition (coarse segmentation with an EMA
of the similarity to the segment's first frame, fine merging of the middle frames, reference quirks
included); inputs are built so that the similarities are known in closed form.
"""

from __future__ import annotations

import math

import pytest
import torch

from earlytom_eval.compression.temporal import (
    FrameMergePlan,
    apply_frame_merge,
    coarse_segments,
    fine_merge_plan,
    frame_similarity,
    plan_temporal_merge,
    temporal_merge,
)

# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def _angle_frames(degrees: list[float], num_tokens: int = 3, dim: int = 4, dtype=torch.float32) -> torch.Tensor:
    """Frames whose token p is ``r_p * (cos(theta_f + phi_p), sin(theta_f + phi_p), 0, ...)``.

    Every position is rotated by its own phase and scaled by its own norm, so the per-position cosine
    between frames x and y is ``cos(theta_x - theta_y)`` at every position, hence so is their similarity.
    """
    out = torch.zeros(len(degrees), num_tokens, dim, dtype=torch.float64)
    for f, deg in enumerate(degrees):
        for p in range(num_tokens):
            angle = math.radians(deg + 17.0 * p)
            radius = 1.0 + 0.5 * p
            out[f, p, 0] = radius * math.cos(angle)
            out[f, p, 1] = radius * math.sin(angle)
    return out.to(dtype)


def _cosd(deg: float) -> float:
    return math.cos(math.radians(deg))


def _sim_matrix(n: int, default: float, entries: dict[tuple[int, int], float]) -> list[list[float]]:
    """Symmetric [n, n] similarity matrix: 1 on the diagonal, ``default`` elsewhere, ``entries`` overriding."""
    sim = [[1.0 if i == j else default for j in range(n)] for i in range(n)]
    for (i, j), value in entries.items():
        sim[i][j] = value
        sim[j][i] = value
    return sim


def _as_plan_list(plan: FrameMergePlan) -> list[tuple[int, int, float]]:
    return [
        (int(a), int(b), float(w))
        for a, b, w in zip(plan.src_a.tolist(), plan.src_b.tolist(), plan.weight.tolist(), strict=True)
    ]


# --------------------------------------------------------------------------- #
# frame_similarity
# --------------------------------------------------------------------------- #


def test_frame_similarity_identical_frames_is_one():
    torch.manual_seed(0)
    frame = torch.randn(5, 8)
    hidden = torch.stack([frame, frame, 2.5 * frame])  # a positive rescale is the same direction
    sim = frame_similarity(hidden)
    assert sim.shape == (3, 3)
    assert sim.dtype == torch.float32
    assert torch.allclose(sim, torch.ones(3, 3), atol=1e-6)


def test_frame_similarity_orthogonal_tokens_is_zero():
    # Frame 0 lives in dims 0..1, frame 1 in dims 2..3: every token pair is orthogonal.
    hidden = torch.zeros(2, 4, 4)
    hidden[0, :, 0] = torch.tensor([1.0, 2.0, -3.0, 0.5])
    hidden[0, :, 1] = torch.tensor([0.3, -1.0, 1.0, 2.0])
    hidden[1, :, 2] = torch.tensor([4.0, -1.0, 2.0, 1.0])
    hidden[1, :, 3] = torch.tensor([1.0, 1.0, 1.0, -2.0])
    sim = frame_similarity(hidden)
    assert sim[0, 1].item() == pytest.approx(0.0, abs=1e-7)
    assert sim[1, 0].item() == pytest.approx(0.0, abs=1e-7)
    assert sim[0, 0].item() == pytest.approx(1.0, abs=1e-6)


def test_frame_similarity_is_mean_over_positions_of_per_position_cosine():
    # Three positions with per-position cosines 1, 0, 1/sqrt(2) (and a negative one in frame 2).
    hidden = torch.tensor(
        [
            [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]],
            [[3.0, 0.0], [0.0, 20.0], [1.0, 1.0]],
            [[-1.0, 0.0], [1.0, 0.0], [0.0, 5.0]],
        ]
    )
    sim = frame_similarity(hidden)
    r = 1.0 / math.sqrt(2.0)
    expected_01 = (1.0 + 0.0 + r) / 3.0
    expected_02 = (-1.0 + 1.0 + 0.0) / 3.0
    expected_12 = (-1.0 + 0.0 + r) / 3.0
    assert sim[0, 1].item() == pytest.approx(expected_01, abs=1e-6)
    assert sim[0, 2].item() == pytest.approx(expected_02, abs=1e-6)
    assert sim[1, 2].item() == pytest.approx(expected_12, abs=1e-6)
    assert torch.allclose(sim, sim.T, atol=1e-7)
    # Not the cosine of the flattened frames (which weights positions by their norms).
    flat = torch.nn.functional.cosine_similarity(hidden[0].flatten(), hidden[1].flatten(), dim=0).item()
    assert abs(flat - expected_01) > 0.05


def test_frame_similarity_of_angle_frames():
    degrees = [0.0, 10.0, 12.0, 40.0, 45.0]
    sim = frame_similarity(_angle_frames(degrees))
    for x, dx in enumerate(degrees):
        for y, dy in enumerate(degrees):
            assert sim[x, y].item() == pytest.approx(_cosd(dx - dy), abs=1e-6)


# --------------------------------------------------------------------------- #
# coarse_segments
# --------------------------------------------------------------------------- #


def test_coarse_segments_cuts_at_planted_scene_change():
    torch.manual_seed(0)
    scene_a = torch.zeros(6, 8)
    scene_a[:, :4] = torch.randn(6, 4)
    scene_b = torch.zeros(6, 8)
    scene_b[:, 4:] = torch.randn(6, 4)  # orthogonal to scene A at every position
    hidden = torch.stack([scene_a] * 4 + [scene_b] * 4)
    sim = frame_similarity(hidden)
    # i=4: s = 0.9 * 0 + 0.1 * 1 = 0.1 < 0.5 -> cut; both segments hold 4 <= M - 1 = 5 frames.
    assert coarse_segments(sim, tau=0.5, max_window=6, ema=0.9) == [(0, 3), (4, 7)]


def test_coarse_segments_cuts_at_max_window():
    sim = torch.ones(12, 12)
    assert coarse_segments(sim, tau=0.5, max_window=6, ema=0.9) == [(0, 4), (5, 9), (10, 11)]
    # A segment holds at most M - 1 frames.
    assert coarse_segments(sim, tau=0.5, max_window=3, ema=0.9) == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)]
    assert coarse_segments(sim, tau=0.5, max_window=2, ema=0.9) == [(i, i) for i in range(12)]


def test_coarse_segments_single_and_empty():
    assert coarse_segments([[1.0]], tau=0.5, max_window=6, ema=0.9) == [(0, 0)]
    assert coarse_segments([], tau=0.5, max_window=6, ema=0.9) == []


def test_coarse_segments_ema_smooths_over_one_dissimilar_frame():
    # s1 = 0.9 * 1.0 + 0.1 * 1.0 = 1.0; s2 = 0.9 * 0.45 + 0.1 * 1.0 = 0.505 >= 0.5 (raw 0.45 < tau);
    # s3 = 0.9 * 1.0 + 0.1 * 0.505 = 0.9505.
    sim = _sim_matrix(4, 1.0, {(0, 2): 0.45})
    assert coarse_segments(sim, tau=0.5, max_window=10, ema=0.9) == [(0, 3)]


def test_coarse_segments_ema_drops_below_tau():
    # s2 = 0.9 * 0.40 + 0.1 * 1.0 = 0.46 < 0.5 -> cut before frame 2; frame 2 becomes the reference.
    sim = _sim_matrix(4, 1.0, {(0, 2): 0.40, (0, 3): 0.0})
    # Frame 3 compares with the NEW reference frame 2 (sim 1.0), not with frame 0 (sim 0.0).
    assert coarse_segments(sim, tau=0.5, max_window=10, ema=0.9) == [(0, 1), (2, 3)]


def test_coarse_segments_ema_accumulates_running_value():
    # ema = 0.5: s1 = 0.5 * 0.3 + 0.5 * 1.0 = 0.65 (no cut); s2 = 0.5 * 0.3 + 0.5 * 0.65 = 0.475 < 0.5 -> cut.
    # After the cut s resets to 1.0 with reference frame 2: s3 = 0.5 * 0.3 + 0.5 * 1.0 = 0.65 (no cut).
    sim = _sim_matrix(4, 1.0, {(0, 1): 0.3, (0, 2): 0.3, (2, 3): 0.3, (0, 3): 0.0, (1, 3): 0.0})
    assert coarse_segments(sim, tau=0.5, max_window=10, ema=0.5) == [(0, 1), (2, 3)]
    # With ema = 1 (no smoothing) the raw value decides: sim(0, 1) = 0.3 cuts; from reference frame 1,
    # sim(1, 2) = 1.0 keeps frame 2 and sim(1, 3) = 0.0 cuts.
    assert coarse_segments(sim, tau=0.5, max_window=10, ema=1.0) == [(0, 0), (1, 2), (3, 3)]


def test_coarse_segments_compares_with_segment_start_not_previous_frame():
    # Neighbours are all similar (1.0) but frame 3 is far from frame 0: the running value follows sim(0, i).
    sim = _sim_matrix(4, 1.0, {(0, 3): 0.0})
    # s3 = 0.9 * 0.0 + 0.1 * 1.0 = 0.1 < 0.5 -> cut.
    assert coarse_segments(sim, tau=0.5, max_window=10, ema=0.9) == [(0, 2), (3, 3)]


def test_coarse_segments_accepts_tensor_and_list():
    sim = _sim_matrix(5, 1.0, {(0, 3): 0.1, (0, 4): 0.1})
    expected = [(0, 2), (3, 4)]
    assert coarse_segments(sim, tau=0.5, max_window=10, ema=0.9) == expected
    assert coarse_segments(torch.tensor(sim), tau=0.5, max_window=10, ema=0.9) == expected


# --------------------------------------------------------------------------- #
# fine_merge_plan
# --------------------------------------------------------------------------- #


def _plan_close(actual, expected):
    assert len(actual) == len(expected), (actual, expected)
    for (ai, aj, aw), (ei, ej, ew) in zip(actual, expected, strict=True):
        assert (ai, aj) == (ei, ej), (actual, expected)
        assert aw == pytest.approx(ew, abs=1e-12), (actual, expected)


def test_fine_merge_plan_merges_with_weight_ratio():
    # L = 5, a = [0.9, 0.5, 0.3, 0.8], tau_seg = 0.4.
    # i=0: 0.9 > 0.4 and 0.9 > 0.5 -> merge (0, 1), w = 0.9 / 1.4; i=2.
    # i=2: 0.3 > 0.4 fails -> keep mid_2; i=3.
    # i=3: last pair, nxt = 0, 0.8 > 0.4 -> "merge" with w = 1 (mid_3 alone); i=5.
    plan = fine_merge_plan([0.9, 0.5, 0.3, 0.8], 0.4)
    _plan_close(plan, [(0, 1, 0.9 / 1.4), (2, 2, 1.0), (3, 4, 1.0)])


def test_fine_merge_plan_needs_strictly_larger_than_next():
    # a0 == a1: no merge at i=0 (strict); i=1: 0.7 > 0.6 and 0.7 > 0.2 -> merge, w = 0.7 / 0.9; tail dropped.
    plan = fine_merge_plan([0.7, 0.7, 0.2], 0.6)
    _plan_close(plan, [(0, 0, 1.0), (1, 2, 0.7 / 0.9)])
    # a0 == tau_seg: no merge (strict); nothing else merges either and mid_3 is dropped (quirk).
    plan = fine_merge_plan([0.5, 0.1, 0.1], 0.5)
    _plan_close(plan, [(0, 0, 1.0), (1, 1, 1.0), (2, 2, 1.0)])


def test_fine_merge_plan_drops_unconsumed_last_middle_frame():
    # REFERENCE QUIRK: nothing merges; the loop stops at i = L - 1, so mid_2 is never emitted.
    plan = fine_merge_plan([0.1, 0.1], 0.5)
    _plan_close(plan, [(0, 0, 1.0), (1, 1, 1.0)])
    # mid_1 and mid_2 merge (w = 0.9 / 1.0) and mid_3 is dropped.
    plan = fine_merge_plan([0.2, 0.9, 0.1], 0.5)
    _plan_close(plan, [(0, 0, 1.0), (1, 2, 0.9)])
    used = {i for i, j, _ in plan} | {j for i, j, _ in plan}
    assert 3 not in used


@pytest.mark.parametrize("a0, tau_seg", [(0.9, 0.1), (0.05, 0.5), (0.5, 0.5), (-0.3, 0.0)])
def test_fine_merge_plan_two_middle_frames_give_mid0(a0, tau_seg):
    plan = fine_merge_plan([a0], tau_seg)
    assert len(plan) == 1
    i, _, w = plan[0]
    assert i == 0 and w == 1.0  # output is exactly mid_0


def test_fine_merge_plan_fewer_than_two_middle_frames_unchanged():
    assert fine_merge_plan([], 0.5) == [(0, 0, 1.0)]


def test_fine_merge_plan_next_zero_keeps_mid_i_alone():
    # i=0: nxt = a1 = 0.0 exactly, 0.9 > 0.3 and 0.9 > 0 -> merge with w = 1.0 (mid_0 alone, mid_1 consumed).
    # i=2: last pair: 0.5 > 0.3 -> "merge" with w = 1.0 (mid_2 alone, mid_3 consumed).
    plan = fine_merge_plan([0.9, 0.0, 0.5], 0.3)
    _plan_close(plan, [(0, 1, 1.0), (2, 3, 1.0)])


def test_fine_merge_plan_consecutive_merges():
    # L = 6, a = [0.9, 0.2, 0.8, 0.6, 0.95], tau_seg = 0.5.
    # i=0: merge (0, 1), w = 0.9 / 1.1; i=2: 0.8 > 0.6 -> merge (2, 3), w = 0.8 / 1.4;
    # i=4: last pair, 0.95 > 0.5 -> (4, 5) with w = 1.
    plan = fine_merge_plan([0.9, 0.2, 0.8, 0.6, 0.95], 0.5)
    _plan_close(plan, [(0, 1, 0.9 / 1.1), (2, 3, 0.8 / 1.4), (4, 5, 1.0)])


# --------------------------------------------------------------------------- #
# plan_temporal_merge
# --------------------------------------------------------------------------- #


def test_plan_short_segments_unchanged():
    # Segments (0,0), (1,2), (3,4): lengths 1 and 2 are kept as they are.
    sim = _sim_matrix(5, 0.0, {(1, 2): 1.0, (3, 4): 1.0})
    plan = plan_temporal_merge(sim, tau=0.5, max_window=10, ema=0.9)
    assert plan.segments == ((0, 0), (1, 2), (3, 4))
    assert _as_plan_list(plan) == [(f, f, 1.0) for f in range(5)]
    assert plan.num_input_frames == 5
    assert plan.num_output_frames == 5
    assert plan.is_identity()


def test_plan_long_segment_keeps_ends_and_merges_middle():
    # One coarse segment (0, 4) (every sim to frame 0 is 0.95). Middle frames 1, 2, 3:
    # a = [sim(1,2), sim(2,3)] = [0.9, 0.6], tau_seg = sim(0, 4) = 0.5.
    # i=0: 0.9 > 0.5 and 0.9 > 0.6 -> merge frames 1 and 2 with w = 0.9 / 1.5 = 0.6; frame 3 dropped (quirk).
    sim = _sim_matrix(5, 0.95, {(1, 2): 0.9, (2, 3): 0.6, (0, 4): 0.5})
    plan = plan_temporal_merge(sim, tau=0.3, max_window=10, ema=0.9)
    assert plan.segments == ((0, 4),)
    actual = _as_plan_list(plan)
    assert [(a, b) for a, b, _ in actual] == [(0, 0), (1, 2), (4, 4)]
    assert [w for _, _, w in actual] == pytest.approx([1.0, 0.6, 1.0], abs=1e-12)
    assert plan.num_output_frames == 3
    assert not plan.is_identity()


def test_plan_three_frame_segment_keeps_all_three():
    # Length 3: frames s and e kept, the single middle frame (L = 1 < 2) kept unchanged.
    sim = _sim_matrix(3, 0.95, {})
    plan = plan_temporal_merge(torch.tensor(sim), tau=0.3, max_window=10, ema=0.9)
    assert plan.segments == ((0, 2),)
    assert _as_plan_list(plan) == [(0, 0, 1.0), (1, 1, 1.0), (2, 2, 1.0)]


def test_plan_four_frame_segment_keeps_only_first_middle():
    # Length 4: L = 2 middle frames -> always [mid_0] (quirk), so frame 2 disappears.
    sim = _sim_matrix(4, 0.95, {})
    plan = plan_temporal_merge(sim, tau=0.3, max_window=10, ema=0.9)
    rows = _as_plan_list(plan)
    assert [r[0] for r in rows] == [0, 1, 3]
    assert all(w == 1.0 for _, _, w in rows)


def test_plan_concatenates_segments_in_order():
    # Segments (0,4) and (5,6): first merges like test_plan_long_segment_keeps_ends_and_merges_middle,
    # second (length 2) is kept.
    entries = {(1, 2): 0.9, (2, 3): 0.6, (0, 4): 0.5, (5, 6): 1.0}
    for f in range(5):
        for g in (5, 6):
            entries[(f, g)] = 0.0
    sim = _sim_matrix(7, 0.95, entries)
    plan = plan_temporal_merge(sim, tau=0.3, max_window=10, ema=0.9)
    assert plan.segments == ((0, 4), (5, 6))
    assert [(a, b) for a, b, _ in _as_plan_list(plan)] == [(0, 0), (1, 2), (4, 4), (5, 5), (6, 6)]


# --------------------------------------------------------------------------- #
# apply_frame_merge
# --------------------------------------------------------------------------- #


def _handmade_plan() -> FrameMergePlan:
    # out = [in0, 0.6 * in1 + 0.4 * in2, in4] from 5 input frames.
    return FrameMergePlan(
        src_a=torch.tensor([0, 1, 4]),
        src_b=torch.tensor([0, 2, 4]),
        weight=torch.tensor([1.0, 0.6, 1.0], dtype=torch.float64),
        segments=((0, 4),),
        num_input_frames=5,
    )


def test_apply_frame_merge_weighted_sum_float32():
    torch.manual_seed(0)
    hidden = torch.randn(5, 6, 8)
    out = apply_frame_merge(hidden, _handmade_plan())
    assert out.shape == (3, 6, 8)
    assert out.dtype == torch.float32
    assert torch.equal(out[0], hidden[0])
    assert torch.equal(out[2], hidden[4])
    assert torch.allclose(out[1], 0.6 * hidden[1] + 0.4 * hidden[2], atol=1e-6)


def test_apply_frame_merge_bfloat16_unchanged_frames_exact():
    torch.manual_seed(1)
    hidden = torch.randn(5, 6, 8).to(torch.bfloat16)
    out = apply_frame_merge(hidden, _handmade_plan())
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[0], hidden[0])
    assert torch.equal(out[2], hidden[4])
    expected = (0.6 * hidden[1].double() + 0.4 * hidden[2].double()).to(torch.bfloat16)
    assert torch.allclose(out[1].double(), expected.double(), atol=0.02, rtol=0.01)


def test_apply_frame_merge_weight_one_merge_is_exact_copy():
    # A "merge" with w = 1 (the nxt == 0 quirk) must give mid_i exactly, also in bfloat16.
    plan = FrameMergePlan(
        src_a=torch.tensor([0, 1, 3]),
        src_b=torch.tensor([0, 2, 3]),
        weight=torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64),
        segments=((0, 3),),
        num_input_frames=4,
    )
    torch.manual_seed(2)
    for dtype in (torch.float32, torch.bfloat16):
        hidden = torch.randn(4, 5, 3).to(dtype)
        out = apply_frame_merge(hidden, plan)
        assert torch.equal(out, hidden[[0, 1, 3]])


def test_apply_frame_merge_attention_rows():
    attention = torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8], [0.9, 1.0]])
    out = apply_frame_merge(attention, _handmade_plan())
    expected = torch.tensor([[0.1, 0.2], [0.6 * 0.3 + 0.4 * 0.5, 0.6 * 0.4 + 0.4 * 0.6], [0.9, 1.0]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_apply_frame_merge_identity_plan_keeps_values():
    plan = FrameMergePlan(
        src_a=torch.arange(3),
        src_b=torch.arange(3),
        weight=torch.ones(3, dtype=torch.float64),
        segments=((0, 0), (1, 2)),
        num_input_frames=3,
    )
    hidden = torch.randn(3, 2, 2).to(torch.bfloat16)
    assert torch.equal(apply_frame_merge(hidden, plan), hidden)


def test_apply_frame_merge_rejects_wrong_frame_count():
    with pytest.raises(ValueError):
        apply_frame_merge(torch.zeros(4, 2, 2), _handmade_plan())


# --------------------------------------------------------------------------- #
# temporal_merge (end to end on hidden states with known similarities)
# --------------------------------------------------------------------------- #

# Scene A: angles 0, 10, 12, 40, 45 -> one coarse segment (0, 4) at tau = 0.3 (s stays >= 0.73).
# Middle frames 1, 2, 3: a = [cos 2deg, cos 28deg] = [0.99939, 0.88295]; tau_seg = cos 45deg = 0.70711.
# i=0: a0 > tau_seg and a0 > a1 -> merge frames 1, 2 with w = a0 / (a0 + a1); frame 3 is dropped (quirk).
SCENE_A = [0.0, 10.0, 12.0, 40.0, 45.0]
SCENE_B = [90.0, 100.0, 102.0, 130.0, 135.0]  # same shape, rotated by 90 deg: sim(0, 5) = 0 -> cut.
W_SCENE = _cosd(2.0) / (_cosd(2.0) + _cosd(28.0))


def test_temporal_merge_single_scene_values_and_attention():
    hidden = _angle_frames(SCENE_A)
    attention = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 3) / 10.0
    result = temporal_merge(hidden, tau=0.3, max_window=6, ema=0.9, attention=attention, final=False)
    assert result.plan.segments == ((0, 4),)
    assert result.hidden.shape == (3, 3, 4)
    assert torch.equal(result.hidden[0], hidden[0])
    assert torch.equal(result.hidden[2], hidden[4])
    expected_mid = W_SCENE * hidden[1] + (1.0 - W_SCENE) * hidden[2]
    assert torch.allclose(result.hidden[1], expected_mid, atol=1e-5)
    assert result.attention is not None
    assert torch.equal(result.attention[0], attention[0])
    assert torch.equal(result.attention[2], attention[4])
    assert torch.allclose(result.attention[1], W_SCENE * attention[1] + (1.0 - W_SCENE) * attention[2], atol=1e-5)
    assert result.final_segments is None


def test_temporal_merge_without_attention():
    result = temporal_merge(_angle_frames(SCENE_A), tau=0.3, max_window=6, ema=0.9)
    assert result.attention is None
    assert result.final_segments is None


def test_temporal_merge_final_segments_recomputed_on_merged_frames():
    hidden = _angle_frames(SCENE_A + SCENE_B)
    result = temporal_merge(hidden, tau=0.3, max_window=6, ema=0.9, final=True)
    # Input segmentation: i=5: s = 0.9 * cos 90deg + 0.1 * s4 < 0.3 -> cut.
    assert result.plan.segments == ((0, 4), (5, 9))
    # Each 5-frame scene becomes first, merged(1,2), last: 6 frames.
    pairs = [(int(a), int(b)) for a, b in zip(result.plan.src_a, result.plan.src_b, strict=True)]
    assert pairs == [(0, 0), (1, 2), (4, 4), (5, 5), (6, 7), (9, 9)]
    assert result.hidden.shape[0] == 6
    for out_index, src in ((0, 0), (2, 4), (3, 5), (5, 9)):
        assert torch.equal(result.hidden[out_index], hidden[src])
    assert torch.allclose(result.hidden[4], W_SCENE * hidden[6] + (1.0 - W_SCENE) * hidden[7], atol=1e-5)
    # Merged frames have angles ~0, ~11, 45, 90, ~101, 135: at merged frame 3 s = 0.9 * cos 90 + 0.1 * s2 < 0.3.
    # The final segments index the MERGED frames.
    assert result.final_segments == ((0, 2), (3, 5))


def test_temporal_merge_final_segments_differ_from_input_segments():
    # A single 5-frame scene: the plan's segments are over 5 input frames, the final ones over 3 merged frames.
    result = temporal_merge(_angle_frames(SCENE_A), tau=0.3, max_window=6, ema=0.9, final=True)
    assert result.plan.segments == ((0, 4),)
    assert result.final_segments == ((0, 2),)


def test_temporal_merge_short_segments_unchanged():
    # 0, 90, 180 deg: every frame its own segment; 2-frame segments too (0, 5 | 90, 95).
    hidden = _angle_frames([0.0, 90.0, 180.0])
    result = temporal_merge(hidden, tau=0.5, max_window=6, ema=0.9, final=True)
    assert result.plan.segments == ((0, 0), (1, 1), (2, 2))
    assert torch.equal(result.hidden, hidden)
    hidden = _angle_frames([0.0, 5.0, 90.0, 95.0])
    result = temporal_merge(hidden, tau=0.5, max_window=6, ema=0.9, final=True)
    assert result.plan.segments == ((0, 1), (2, 3))
    assert torch.equal(result.hidden, hidden)
    assert result.final_segments == ((0, 1), (2, 3))


def test_temporal_merge_bfloat16_copies_unchanged_frames_exactly():
    hidden = _angle_frames(SCENE_A + SCENE_B, dtype=torch.bfloat16)
    attention = torch.rand(10, 3).to(torch.bfloat16)
    result = temporal_merge(hidden, tau=0.3, max_window=6, ema=0.9, attention=attention, final=True)
    assert result.hidden.dtype == torch.bfloat16
    assert result.hidden.shape[0] == 6
    for out_index, src in ((0, 0), (2, 4), (3, 5), (5, 9)):
        assert torch.equal(result.hidden[out_index], hidden[src])
        assert torch.equal(result.attention[out_index], attention[src])
    expected = W_SCENE * hidden[1].double() + (1.0 - W_SCENE) * hidden[2].double()
    assert torch.allclose(result.hidden[1].double(), expected, atol=0.02, rtol=0.01)


# --------------------------------------------------------------------------- #
# literal transcription of the method's pseudocode, as an oracle on random inputs
# --------------------------------------------------------------------------- #


def _spec_sim(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1).mean())


def _spec_coarse(frames: list[torch.Tensor], tau: float, max_window: int, ema: float) -> list[tuple[int, int]]:
    start, ref, s, segments = 0, 0, 1.0, []
    for i in range(1, len(frames)):
        s = ema * _spec_sim(frames[ref], frames[i]) + (1 - ema) * s
        if s < tau or (i - start + 1) >= max_window:
            segments.append((start, i - 1))
            start, ref, s = i, i, 1.0
    segments.append((start, len(frames) - 1))
    return segments


def _spec_fine(mid: list[torch.Tensor], tau_seg: float) -> list[torch.Tensor]:
    if len(mid) < 2:
        return list(mid)
    a = [_spec_sim(mid[j], mid[j + 1]) for j in range(len(mid) - 1)]
    out, i = [], 0
    while i < len(mid) - 1:
        if i + 1 < len(mid) - 1:
            nxt = a[i + 1]
            merge = a[i] > tau_seg and a[i] > nxt
        else:
            nxt = 0
            merge = a[i] > tau_seg
        if merge:
            w = a[i] / (a[i] + nxt) if nxt != 0 else 1.0
            out.append(w * mid[i] + (1 - w) * mid[i + 1])
            i += 2
        else:
            out.append(mid[i])
            i += 1
    return out


def _spec_temporal_merge(hidden: torch.Tensor, tau: float, max_window: int, ema: float):
    frames = list(hidden.double())
    out = []
    for s, e in _spec_coarse(frames, tau, max_window, ema):
        if e - s + 1 <= 2:
            out.extend(frames[s : e + 1])
        else:
            out.append(frames[s])
            out.extend(_spec_fine(frames[s + 1 : e], _spec_sim(frames[s], frames[e])))
            out.append(frames[e])
    merged = torch.stack(out)
    return merged, _spec_coarse(list(merged), tau, max_window, ema)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tau, max_window", [(0.3, 6), (0.6, 6), (0.8, 4)])
def test_temporal_merge_matches_pseudocode(seed, tau, max_window):
    g = torch.Generator().manual_seed(seed)
    # 16 frames in 3 scenes; within a scene each frame drifts from the previous one by a random amount.
    base = [torch.randn(6, 8, generator=g) for _ in range(3)]
    frames = []
    for f in range(16):
        scene = base[min(f // 6, 2)]
        drift = torch.rand(1, generator=g).item()
        frames.append(scene + drift * torch.randn(6, 8, generator=g))
    hidden = torch.stack(frames)
    expected, expected_segments = _spec_temporal_merge(hidden, tau, max_window, 0.9)
    result = temporal_merge(hidden, tau=tau, max_window=max_window, ema=0.9, final=True)
    assert result.hidden.shape == expected.shape
    assert torch.allclose(result.hidden.double(), expected, atol=1e-5)
    assert list(result.final_segments) == expected_segments
