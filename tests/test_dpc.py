"""Tests for earlytom_eval.compression.dpc (DPC-kNN shared by HoliTom, FastVID and EarlyTom).

Points lie on a line, embedded as ``[v, 0, 0, 0]`` (D = 4, so ``cdist / sqrt(D)`` halves distances) or ``[v]``
(D = 1); every expected density, delta, centre and merged value is worked out by hand in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch

from earlytom_eval.compression.dpc import (
    assign_to_centres,
    dpc_centres,
    dpc_delta,
    dpc_density,
    dpc_knn,
    dpc_knn_merge,
    dpc_score,
    merge_clusters,
    pairwise_distance,
    stable_topk,
)


def _line(values: list[float]) -> torch.Tensor:
    """``[N, 1]`` points (D = 1: distances are plain differences)."""
    return torch.tensor(values)[:, None]


def test_stable_topk_ties_go_to_earlier():
    assert stable_topk(torch.tensor([2.0, 2.0, 2.0]), 2).tolist() == [0, 1]
    assert stable_topk(torch.tensor([1.0, 5.0, 3.0, 5.0]), 3).tolist() == [1, 3, 2]
    assert stable_topk(torch.tensor([1.0, 0.0, 0.0, 2.0]), 2, largest=False).tolist() == [1, 2]
    assert stable_topk(torch.tensor([[3.0, 1.0], [1.0, 3.0]]), 1).tolist() == [[0], [1]]
    with pytest.raises(ValueError):
        stable_topk(torch.tensor([1.0]), 2)


def test_pairwise_distance_scaled_by_sqrt_width():
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float16)
    dist = pairwise_distance(x)
    assert dist.dtype == torch.float32
    assert torch.allclose(dist, torch.tensor([[0.0, 2.5], [2.5, 0.0]]))  # 5 / sqrt(4)


@pytest.mark.parametrize(
    "k, expected",
    [
        # values 0, 1, 3; the token itself is one of its k nearest neighbours (distance 0)
        (1, [0.0, 0.0, 0.0]),
        (2, [(0 + 1) / 2, (0 + 1) / 2, (0 + 4) / 2]),
        (3, [(0 + 1 + 9) / 3, (0 + 1 + 4) / 3, (0 + 4 + 9) / 3]),
        (10, [(0 + 1 + 9) / 3, (0 + 1 + 4) / 3, (0 + 4 + 9) / 3]),  # k clipped to N
    ],
)
def test_density_includes_the_token_itself(k, expected):
    density = dpc_density(pairwise_distance(_line([0.0, 1.0, 3.0])), k)
    assert density.tolist() == pytest.approx([math.exp(-m) for m in expected], rel=1e-6)


def test_density_noise_from_generator():
    dist = pairwise_distance(_line([0.0, 1.0, 3.0, 7.0]))
    plain = dpc_density(dist, 2)
    assert torch.equal(plain, dpc_density(dist, 2))  # no generator: deterministic
    noisy = dpc_density(dist, 2, generator=torch.Generator().manual_seed(7))
    expected_noise = torch.rand(4, generator=torch.Generator().manual_seed(7)) * 1e-6
    assert torch.allclose(noisy - plain, expected_noise, atol=1.5e-7)  # float32 rounding near 0.6
    assert torch.equal(noisy, dpc_density(dist, 2, generator=torch.Generator().manual_seed(7)))
    assert float((noisy - plain).min()) >= 0.0 and float((noisy - plain).max()) < 1e-6 + 1.5e-7


def test_delta_strict_density():
    # values 0, 1, 3, k = 3: mean squared 2-NN distances 10/3, 5/3, 13/3 -> value 1 densest (delta = max = 3);
    # value 0: nearest denser is 1 -> 1; value 3: denser are 0 and 1 -> 2.
    dist = pairwise_distance(_line([0.0, 1.0, 3.0]))
    delta = dpc_delta(dist, dpc_density(dist, 3))
    assert delta.tolist() == pytest.approx([1.0, 3.0, 2.0])


def test_delta_tie_break_earlier_counts_as_denser():
    # values 0, 1, 2, 10, 11 with k = 2: every nearest other token is 1 away -> all densities equal.
    # Earlier = denser: token 0 is the densest (delta = max distance 11); token 3 (value 10): nearest earlier
    # is value 2 -> 8; the others have an earlier neighbour 1 away.
    dist = pairwise_distance(_line([0.0, 1.0, 2.0, 10.0, 11.0]))
    density = dpc_density(dist, 2)
    assert len(set(density.tolist())) == 1
    assert dpc_delta(dist, density).tolist() == pytest.approx([11.0, 1.0, 1.0, 8.0, 1.0])


def test_centres_by_score_sorted_by_position():
    score = torch.tensor([0.1, 5.0, 0.3, 9.0, 0.3])
    assert dpc_centres(score, 2).tolist() == [1, 3]
    assert dpc_centres(score, 2, by_position=False).tolist() == [3, 1]
    assert dpc_centres(score, 3).tolist() == [1, 2, 3]  # 0.3 tie: the earlier token (2)


def test_assign_to_nearest_centre_first_on_ties_centres_to_themselves():
    dist = pairwise_distance(_line([0.0, 1.0, 2.0, 10.0, 11.0]))
    assert assign_to_centres(dist, torch.tensor([0, 3])).tolist() == [0, 0, 0, 1, 1]
    # value 5 is as far from 0 as from 10: first centre.
    dist = pairwise_distance(_line([0.0, 5.0, 10.0]))
    assert assign_to_centres(dist, torch.tensor([0, 2])).tolist() == [0, 0, 1]
    # duplicate tokens 0 and 1 both centres: each maps to itself.
    dist = pairwise_distance(_line([1.0, 1.0, 5.0]))
    assert assign_to_centres(dist, torch.tensor([0, 1])).tolist() == [0, 1, 0]


def test_merge_members_exclude_the_centre():
    x = _line([0.0, 1.0, 2.0, 10.0, 11.0])
    centres, assign = torch.tensor([0, 3]), torch.tensor([0, 0, 0, 1, 1])
    # 0.6 * 0 + 0.4 * mean(1, 2) = 0.6; 0.6 * 10 + 0.4 * 11 = 10.4
    assert merge_clusters(x, centres, assign, 0.6)[:, 0].tolist() == pytest.approx([0.6, 10.4])
    # include_centre: 0.4 * mean(0, 1, 2) = 0.4; 6 + 0.4 * 10.5 = 10.2
    merged = merge_clusters(x, centres, assign, 0.6, include_centre=True)
    assert merged[:, 0].tolist() == pytest.approx([0.4, 10.2])


def test_merge_centre_without_members_is_unchanged():
    x = _line([0.0, 10.0, 11.0])
    merged = merge_clusters(x, torch.tensor([0, 1]), torch.tensor([0, 1, 1]), 0.6)
    assert merged[:, 0].tolist() == pytest.approx([0.0, 0.6 * 10 + 0.4 * 11])


def test_dpc_knn_end_to_end_by_hand():
    # [v, 0, 0, 0]: distances are |dv| / 2, which scales delta but not the ranking. Values 0, 1, 2, 10, 11, k = 2:
    # densities tie; delta (x2) = 11, 1, 1, 8, 1 -> centres 0 and 10 -> [0.6, 10.4] (members without centre).
    x = torch.zeros(5, 4)
    x[:, 0] = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0])
    clusters = dpc_knn(x, 2, 2)
    assert clusters.centres.tolist() == [0, 3]
    assert clusters.assign.tolist() == [0, 0, 0, 1, 1]
    density = math.exp(-(0.0 + 0.5**2) / 2)
    assert clusters.score.tolist() == pytest.approx([d / 2 * density for d in (11, 1, 1, 8, 1)], rel=1e-6)
    merged, centres = dpc_knn_merge(x, 2, 2, 0.6)
    assert centres.tolist() == [0, 3]
    assert merged[:, 0].tolist() == pytest.approx([0.6, 10.4])
    assert torch.equal(merged[:, 1:], torch.zeros(2, 3))


def test_dpc_knn_merge_zero_and_too_many_clusters():
    x = _line([0.0, 3.0])
    merged, centres = dpc_knn_merge(x, 0, 2, 0.6)
    assert merged.shape == (0, 1) and centres.shape == (0,)
    merged, centres = dpc_knn_merge(x, 5, 2, 0.6)  # clipped to N: every token its own centre
    assert centres.tolist() == [0, 1]
    assert torch.equal(merged, x)


def test_dpc_batched_equals_per_row():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 17, 8, generator=g)
    score, dist = dpc_score(x, 4)
    merged, centres = dpc_knn_merge(x, 5, 4, 0.6)
    for row in range(4):
        row_score, row_dist = dpc_score(x[row], 4)
        assert torch.allclose(score[row], row_score, atol=1e-6)
        assert torch.allclose(dist[row], row_dist, atol=1e-6)
        row_merged, row_centres = dpc_knn_merge(x[row], 5, 4, 0.6)
        assert torch.equal(centres[row], row_centres)
        assert torch.allclose(merged[row], row_merged, atol=1e-6)


def test_dpc_keeps_dtype():
    x = torch.zeros(5, 4, dtype=torch.bfloat16)
    x[:, 0] = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0])
    merged, _ = dpc_knn_merge(x, 2, 2, 0.6)
    assert merged.dtype == torch.bfloat16
    assert merged[:, 0].float().tolist() == pytest.approx([0.6, 10.4], rel=1e-2)
