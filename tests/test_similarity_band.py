"""Stage 1's frame similarities computed only for the pairs the segmentation reads (the band), in float32 blocks.

The decisions made from the band must be those made from every pair; the values inside the band those of the
whole matrix.
"""

from __future__ import annotations

import math

import pytest
import torch

from earlytom_eval.compression.temporal import (
    FrameMergePlan,
    coarse_segments,
    frame_similarity,
    plan_temporal_merge,
    similarity_blocks,
    similarity_offset,
)


def _as_plan_list(plan: FrameMergePlan) -> list[tuple[int, int, float]]:
    rows = zip(plan.src_a.tolist(), plan.src_b.tolist(), plan.weight.tolist())
    return [(int(a), int(b), float(w)) for a, b, w in rows]


def _scene_frames(seed: int, frames: int = 14, tokens: int = 6, dim: int = 8) -> torch.Tensor:
    """Frames in scenes of 1-5 frames; within a scene, a shared pattern plus a per-frame amount of noise."""
    g = torch.Generator().manual_seed(seed)
    out, scene = [], None
    for _ in range(frames):
        if scene is None or torch.rand(1, generator=g).item() < 0.3:
            scene = torch.randn(tokens, dim, generator=g)
        noise = 0.2 + torch.rand(1, generator=g).item()
        out.append(scene + noise * torch.randn(tokens, dim, generator=g))
    return torch.stack(out)


@pytest.mark.parametrize("max_offset", [0, 1, 2, 3, 5, 9, 13, 40])
def test_frame_similarity_band_equals_full_matrix_inside(max_offset):
    hidden = _scene_frames(0)
    full = frame_similarity(hidden)
    band = frame_similarity(hidden, max_offset)
    for x in range(14):
        for y in range(14):
            value = band[x, y].item()
            if abs(x - y) <= max_offset:
                assert value == pytest.approx(full[x, y].item(), abs=1e-6)
            else:  # a pair beyond the band is either not computed (NaN) or right
                assert math.isnan(value) or value == pytest.approx(full[x, y].item(), abs=1e-6)
    assert bool(band.isnan().any()) == (max_offset < 13 // 2)


@pytest.mark.parametrize("num_frames", range(1, 13))
@pytest.mark.parametrize("max_offset", range(0, 13))
def test_similarity_blocks_cover_every_pair_of_the_band(num_frames, max_offset):
    covered = set()
    for start, stop, before in similarity_blocks(num_frames, max_offset):
        rows = range(start, stop)
        covered |= {(x, y) for x in rows for y in range(start - before, stop)}
    wanted = {(x, y) for x in range(num_frames) for y in range(x + 1) if x - y <= max_offset}
    assert wanted <= covered
    assert all(0 <= y <= x or y < num_frames for x, y in covered)


def test_similarity_offset_is_what_the_segmentation_reads():
    assert similarity_offset(6) == 5
    assert similarity_offset(2) == 1
    assert similarity_offset(1) == 1


def test_frame_similarity_bfloat16_and_strided_inputs_are_computed_in_float32():
    hidden = _scene_frames(1, tokens=9, dim=16)
    as_bf16 = hidden.bfloat16()
    expected = frame_similarity(as_bf16.float(), 3)
    assert torch.allclose(frame_similarity(as_bf16, 3), expected, atol=1e-6, equal_nan=True)
    wide = torch.stack([hidden, -hidden], dim=-1)[..., 0]  # strided view of the same values
    assert not wide.is_contiguous()
    assert torch.allclose(frame_similarity(wide, 4), frame_similarity(hidden, 4), atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("tau, max_window", [(0.3, 6), (0.6, 4), (0.8, 3), (0.1, 9)])
def test_plan_from_the_band_equals_plan_from_every_pair(seed, tau, max_window):
    hidden = _scene_frames(seed)
    full = plan_temporal_merge(frame_similarity(hidden), tau, max_window, 0.9)
    band = plan_temporal_merge(frame_similarity(hidden, similarity_offset(max_window)), tau, max_window, 0.9)
    assert [(a, b) for a, b, _ in _as_plan_list(band)] == [(a, b) for a, b, _ in _as_plan_list(full)]
    assert band.weight.tolist() == pytest.approx(full.weight.tolist(), abs=1e-6)
    assert band.segments == full.segments


def test_reading_a_pair_outside_the_band_raises():
    sim = frame_similarity(_scene_frames(2), max_offset=1)
    with pytest.raises(ValueError, match="not computed"):
        coarse_segments(sim, tau=-2.0, max_window=4, ema=0.9)  # compares frames 0 and 2
