"""Tests for earlytom_eval.compression.visionzip (HoliTom's LLaVA-OV port of VisionZip).

Hand-built frames: features ``[q + 100 t, 1]`` so every kept or merged value can be checked against the
spec's rules (dominant in raster order, positional targets, argmax-cosine assignment, target + mean).
"""

from __future__ import annotations

import pytest
import torch

from earlytom_eval.compression.visionzip import (
    SPATIAL_TOKENS,
    pool_grid,
    visionzip_counts,
    visionzip_select,
    visionzip_targets,
)


@pytest.mark.parametrize("spatial, expected", [(20, (16, 4)), (30, (25, 5)), (40, (33, 7)), (50, (42, 8))])
def test_counts(spatial, expected):
    assert visionzip_counts(spatial) == expected


@pytest.mark.parametrize(
    "spatial, targets",
    [
        (20, [0, 45, 90, 135]),  # n_r = 180, step 45
        (30, [0, 34, 68, 102, 136]),  # n_r = 171, step 34
        (40, [0, 23, 46, 69, 92, 115, 138]),  # n_r = 163, step 23
        (50, [0, 19, 38, 57, 76, 95, 114, 133]),  # n_r = 154, step 19
    ],
)
def test_targets_at_each_ratio(spatial, targets):
    dominant, contextual = visionzip_counts(spatial)
    assert visionzip_targets(196 - dominant, contextual).tolist() == targets


def test_targets_edge_cases():
    assert visionzip_targets(3, 3).tolist() == [0, 1, 2]  # step max(1, 1)
    assert visionzip_targets(10, 0).tolist() == []
    with pytest.raises(ValueError):
        visionzip_targets(3, 5)


@pytest.mark.parametrize("rho, per_frame", [(0.10, 20), (0.15, 30), (0.20, 40), (0.25, 50)])
def test_token_count_32_frames(rho, per_frame):
    # 32 * S_k tokens, + 1 newline appended later: 641 / 961 / 1281 / 1601.
    assert SPATIAL_TOKENS[rho] == per_frame
    g = torch.Generator().manual_seed(0)
    features = torch.randn(32, 196, 8, generator=g)
    attention = torch.rand(32, 196, generator=g)
    metric = torch.randn(32, 196, 4, generator=g)
    dominant, contextual = visionzip_counts(per_frame)
    selection = visionzip_select(features, attention, metric, dominant, contextual)
    assert selection.count == 32 * per_frame
    assert selection.count + 1 == {0.10: 641, 0.15: 961, 0.20: 1281, 0.25: 1601}[rho]
    source = selection.source.view(32, per_frame)
    assert bool((source[:, dominant:] == -1).all())
    assert bool((source[:, :dominant] >= 0).all())
    assert selection.positions is None


def _features(frames: int, tokens: int) -> torch.Tensor:
    t = torch.arange(frames, dtype=torch.float32)[:, None]
    q = torch.arange(tokens, dtype=torch.float32)[None, :]
    return torch.stack([q + 100 * t, torch.ones(frames, tokens)], dim=-1)


def _hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """T = 2, S = 9, d = 4, c = 2: n_r = 5, step = 2, targets = remaining-local 0 and 2."""
    features = _features(2, 9)
    attention = torch.zeros(2, 9)
    metric = torch.zeros(2, 9, 2)
    # Frame 0: dominant {7, 1, 4, 2} (scores in scrambled order) -> raster [1, 2, 4, 7].
    attention[0, [7, 1, 4, 2]] = torch.tensor([0.9, 0.8, 0.7, 0.6])
    # Remaining [0, 3, 5, 6, 8]: targets 0 and 5; 3 -> 5, 6 -> 0, 8 -> 5 by key cosine.
    metric[0, 0] = torch.tensor([1.0, 0.0])
    metric[0, 5] = torch.tensor([0.0, 1.0])
    metric[0, 3] = torch.tensor([0.1, 1.0])
    metric[0, 6] = torch.tensor([1.0, 0.2])
    metric[0, 8] = torch.tensor([0.0, 3.0])
    # Frame 1: dominant {0, 1, 2, 3}; remaining [4, 5, 6, 7, 8]: targets 4 and 6.
    attention[1, :4] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    metric[1, 4] = torch.tensor([1.0, 0.0])
    metric[1, 6] = torch.tensor([0.0, 1.0])
    metric[1, 5] = torch.tensor([1.0, 1.0])  # equally close to both targets -> the first (4)
    metric[1, 7] = torch.tensor([2.0, 0.5])  # -> 4
    metric[1, 8] = torch.tensor([1.0, -1.0])  # -> 4; target 6 gets no member
    return features, attention, metric


def test_hand_built_two_frames():
    features, attention, metric = _hand_case()
    selection = visionzip_select(features, attention, metric, 4, 2)
    expected = torch.tensor(
        [
            # frame 0: dominant 1, 2, 4, 7; contextual: F0 + mean(F6) and F5 + mean(F3, F8) (added, not averaged)
            [1.0, 1.0], [2.0, 1.0], [4.0, 1.0], [7.0, 1.0],
            [0.0 + 6.0, 2.0], [5.0 + (3.0 + 8.0) / 2, 2.0],
            # frame 1: dominant 0..3; target 4 + mean(F5, F7, F8); target 6 alone (no member) stays F6
            [100.0, 1.0], [101.0, 1.0], [102.0, 1.0], [103.0, 1.0],
            [104.0 + (105.0 + 107.0 + 108.0) / 3, 2.0], [106.0, 1.0],
        ]
    )  # fmt: skip
    assert torch.allclose(selection.tokens, expected, atol=1e-4)
    assert selection.source.tolist() == [1, 2, 4, 7, -1, -1, 9, 10, 11, 12, -1, -1]


def test_batched_equals_per_frame():
    g = torch.Generator().manual_seed(3)
    features = torch.randn(5, 16, 6, generator=g)
    attention = torch.rand(5, 16, generator=g)
    metric = torch.randn(5, 16, 3, generator=g)
    batched = visionzip_select(features, attention, metric, 6, 3)
    for t in range(5):
        one = visionzip_select(features[t : t + 1], attention[t : t + 1], metric[t : t + 1], 6, 3)
        assert torch.allclose(batched.tokens[9 * t : 9 * (t + 1)], one.tokens, atol=1e-6)
        source = one.source.clone()
        source[source >= 0] += 16 * t
        assert torch.equal(batched.source[9 * t : 9 * (t + 1)], source)


def test_attention_ties_go_to_earlier_token_and_dtype_kept():
    features = _features(1, 9).to(torch.float16)
    attention = torch.full((1, 9), 0.5)
    metric = torch.randn(1, 9, 2, generator=torch.Generator().manual_seed(0))
    selection = visionzip_select(features, attention, metric, 3, 0)
    assert selection.source.tolist() == [0, 1, 2]
    assert selection.tokens.dtype == torch.float16


def test_rejects_bad_shapes():
    features, attention, metric = _hand_case()
    with pytest.raises(ValueError):
        visionzip_select(features, attention[:, :8], metric, 4, 2)
    with pytest.raises(ValueError):
        visionzip_select(features, attention, metric[:1], 4, 2)
    with pytest.raises(ValueError):
        visionzip_select(features, attention, metric, 10, 0)


def test_pool_grid_even_grid_is_block_mean():
    # 4x4 -> 2x2; align_corners=False at scale 2 samples the centre of each 2x2 block.
    x = torch.arange(16, dtype=torch.float32).view(1, 16, 1)
    pooled = pool_grid(x)
    assert pooled.shape == (1, 4, 1)
    assert pooled[0, :, 0].tolist() == pytest.approx([2.5, 4.5, 10.5, 12.5])
    # 2x2 -> 1x1: the mean.
    assert pool_grid(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))[0].tolist() == pytest.approx([2.5])


def test_pool_grid_odd_grid_weights():
    # 3x3 -> 2x2, scale 1.5: source coordinates (i + 0.5) * 1.5 - 0.5 = 0.25 and 1.75 -> weights (0.75, 0.25)
    # on rows/cols (0, 1) and (0.25, 0.75) on (1, 2).
    x = torch.arange(9, dtype=torch.float32).view(1, 9)  # value = 3 r + c
    pooled = pool_grid(x)
    row = [0.25, 1.75]
    expected = [3 * r + c for r in row for c in row]
    assert pooled[0].tolist() == pytest.approx(expected)


def test_pool_grid_llava_shape_and_channels():
    x = torch.randn(2, 729, 3)
    pooled = pool_grid(x)
    assert pooled.shape == (2, 196, 3)
    assert torch.allclose(pooled[..., 1], pool_grid(x[..., 1]))
    with pytest.raises(ValueError):
        pool_grid(torch.randn(1, 10, 2))
