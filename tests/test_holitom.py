"""Tests for earlytom_eval.compression.holitom (HoliTom's outer stage).

Frames are hand-built so that which positions are static (cosine > tau to the next frame) is known by
construction; the DP, the adjusted ratio, every token count and the merged static values follow from the
spec by hand (worked out in the comments).
"""

from __future__ import annotations

import math

import pytest
import torch

from earlytom_eval.compression.holitom import (
    adjacent_similarity,
    holitom_outer,
    holitom_retention,
    segment_windows,
    static_gain,
)


def test_adjacent_similarity():
    features = torch.tensor(
        [
            [[1.0, 0.0], [1.0, 1.0]],
            [[2.0, 0.0], [1.0, -1.0]],
            [[0.0, 3.0], [-2.0, 2.0]],
        ]
    )
    assert adjacent_similarity(features).tolist() == [pytest.approx([1.0, 0.0]), pytest.approx([0.0, -1.0])]


def _passes_to_similarity(passes: list[list[int]]) -> torch.Tensor:
    """``[T-1, S]`` similarities: 1.0 where ``passes`` is 1, 0.0 elsewhere."""
    return torch.tensor(passes, dtype=torch.float32)


def test_static_gain_by_hand():
    # T = 4, S = 3. Position 0 static at t = 0, 1, 2; position 1 at t = 0 and 2; position 2 never.
    sim = _passes_to_similarity([[1, 1, 0], [1, 0, 0], [1, 1, 0]])
    gain = static_gain(sim, tau=0.5)
    expected = [
        [0, 2 * 1, 1 * 2, 1 * 3],  # [0,1]: q0, q1; [0,2]: q0; [0,3]: q0
        [0, 0, 1 * 1, 1 * 2],  # [1,2]: q0; [1,3]: q0
        [0, 0, 0, 2 * 1],  # [2,3]: q0, q1
        [0, 0, 0, 0],
    ]
    assert gain.tolist() == expected


def test_static_gain_threshold_is_strict():
    sim = torch.tensor([[0.8, 0.80001]])
    assert static_gain(sim, tau=0.8).tolist() == [[0, 1], [0, 0]]


def test_dp_by_hand():
    # Gains of test_static_gain_by_hand. B(0) = 0; B(1) = max(0, 0 + G[0,1] = 2) = 2 (window [0,1]);
    # B(2): singleton 2, [1,2] -> 0 + 1, [0,2] -> 0 + 2 (tie, singleton kept) -> 2; B(3): singleton 2,
    # [2,3] -> B(1) + 2 = 4, [1,3] -> 0 + 2, [0,3] -> 3 -> 4 with window [2,3]. Windows (0,1), (2,3); R = 4.
    gain = static_gain(_passes_to_similarity([[1, 1, 0], [1, 0, 0], [1, 1, 0]]), tau=0.5)
    assert segment_windows(gain) == ([(0, 1), (2, 3)], 4)


def test_dp_ties_favour_the_shortest_window():
    # i = 2: singleton B(1) = 0; [1,2] -> 0 + 2; [0,2] -> 0 + 2 (not strictly larger) -> window [1,2].
    gain = torch.tensor([[0, 0, 2], [0, 0, 2], [0, 0, 0]])
    assert segment_windows(gain) == ([(0, 0), (1, 2)], 2)


def test_dp_max_window():
    gain = torch.tensor([[0, 0, 5], [0, 0, 0], [0, 0, 0]])
    assert segment_windows(gain) == ([(0, 2)], 5)
    assert segment_windows(gain, max_window=2) == ([(0, 0), (1, 1), (2, 2)], 0)


def test_dp_no_static_gain_gives_singletons():
    assert segment_windows(torch.zeros(4, 4, dtype=torch.long)) == ([(0, 0), (1, 1), (2, 2), (3, 3)], 0)


@pytest.mark.parametrize(
    "rho, reduced, expected",
    [
        (0.10, 0, 0.10),
        (0.10, 1568, 0.10 / 0.75),  # (6272 - 1568) / 6272 = 0.75
        (0.25, 4704, 1.0),  # 0.25 / 0.25 = 1 -> capped
        (0.20, 5100, 1.0),  # 0.2 / (1172 / 6272) > 1
    ],
)
def test_adjusted_retention(rho, reduced, expected):
    assert holitom_retention(rho, 32, 196, reduced) == pytest.approx(expected)


@pytest.mark.parametrize(
    "rho, tau, per_frame",
    [(0.10, 0.65, 20), (0.15, 0.8, 30), (0.20, 0.8, 40), (0.25, 0.8, 49)],  # ceil(196 rho)
)
def test_token_count_without_static_windows(rho, tau, per_frame):
    # Consecutive frames are negatives of each other (cosine -1 everywhere): all windows are singletons,
    # R = 0, r' = rho; 32 * ceil(196 rho) tokens (+ newline: 641 / 961 / 1281 / 1569).
    g = torch.Generator().manual_seed(0)
    base = torch.randn(196, 8, generator=g)
    sign = torch.tensor([(-1.0) ** t for t in range(32)])[:, None, None]
    features = sign * base
    attention = torch.rand(32, 196, generator=g)
    result = holitom_outer(features, attention, retention=rho, tau=tau)
    assert [(w.start, w.end) for w in result.windows] == [(t, t) for t in range(32)]
    assert result.reduced == 0 and result.rho_eff == rho
    assert result.selection.count == 32 * per_frame == 32 * math.ceil(196 * rho)
    assert result.selection.count + 1 == {0.10: 641, 0.15: 961, 0.20: 1281, 0.25: 1569}[rho]
    # Each frame's tokens: its top ceil(196 rho) by attention, in raster order, unmerged.
    source = result.selection.source.view(32, per_frame)
    for t in (0, 17, 31):
        top = sorted(attention[t].argsort(descending=True)[:per_frame].tolist())
        assert (source[t] - 196 * t).tolist() == top
    assert torch.equal(result.selection.tokens, features.reshape(-1, 8)[result.selection.source])


def _hand_video() -> tuple[torch.Tensor, torch.Tensor]:
    """T = 4, S = 6, D = 2.

    Frames 0-2: positions 0-3 hold the same vectors [10, 0], [11, 0], [12, 0], [20, 0] (static, cos 1); positions
    4, 5 flip sign every frame (cos -1, dynamic). Frame 3 = -frame 2 everywhere (nothing static).
    """
    static = torch.tensor([[10.0, 0.0], [11.0, 0.0], [12.0, 0.0], [20.0, 0.0]])
    frames = []
    for t in range(3):
        sign = (-1.0) ** t
        dynamic = torch.tensor([[0.0, sign * (1 + t)], [sign * (1 + t), sign * 2 * (1 + t)]])
        frames.append(torch.cat([static, dynamic]))
    frames.append(-frames[2])
    features = torch.stack(frames)
    attention = torch.zeros(4, 6)
    attention[:3, :4] = 5.0  # static positions: high attention, but never ranked with the dynamic ones
    attention[0, 4], attention[0, 5] = 0.9, 0.1
    attention[1, 4], attention[1, 5] = 0.1, 0.9
    attention[2, 4], attention[2, 5] = 0.9, 0.1
    attention[3] = torch.tensor([0.5, 0.1, 0.9, 0.2, 0.8, 0.3])
    return features, attention


def test_outer_stage_by_hand():
    # Static gain: 4 static positions over [0,1], [1,2] (G = 4) and [0,2] (G = 8); nothing involving frame 3.
    # DP: B(1) = 4 ([0,1]); B(2): singleton B(1) = 4, [1,2] B(0) + 4 = 4, [0,2] 8 -> 8; B(3) = 8 (singleton).
    # Windows (0,2), (3,3); R = 8; r' = 0.3 / ((24 - 8) / 24) = 0.45.
    # Window (0,2): n_s = 4 -> c_s = round(1.8) = 2; n_d = 2 -> ceil(0.9) = 1 token per frame.
    #   DPC on the static means [10, 11, 12, 20] (x / sqrt(2)), k = min(7, 2) = 2: 10, 11, 12 tie as densest
    #   (nearest other 1 away), 10 first -> delta = max distance 10; 11, 12 -> 1; 20 -> 8, but its density is
    #   exp(-16) against exp(-0.25): score ranking 10, 11 -> centres 10 and 11. 12 and 20 join 11 (nearer than
    #   10). Outputs: 10 alone (no members) and 0.6 * 11 + 0.4 * mean(12, 20) = 13.
    #   Dynamic: frame 0 -> position 4, frame 1 -> 5, frame 2 -> 4.
    # Window (3,3): ceil(6 * 0.45) = 3 tokens by attention: positions 2, 4, 0 -> raster 0, 2, 4.
    features, attention = _hand_video()
    result = holitom_outer(features, attention, retention=0.3, tau=0.5)
    assert [(w.start, w.end) for w in result.windows] == [(0, 2), (3, 3)]
    assert result.reduced == 8
    assert result.rho_eff == pytest.approx(0.45)
    first = result.windows[0]
    assert (first.static, first.dynamic, first.static_tokens, first.dynamic_tokens) == (4, 2, 2, 1)
    assert (result.windows[1].static_tokens, result.windows[1].dynamic_tokens) == (0, 3)
    expected = torch.stack(
        [
            torch.tensor([10.0, 0.0]),
            torch.tensor([13.0, 0.0]),
            features[0, 4],
            features[1, 5],
            features[2, 4],
            features[3, 0],
            features[3, 2],
            features[3, 4],
        ]
    )
    assert torch.allclose(result.selection.tokens, expected, atol=1e-5)
    assert result.selection.source.tolist() == [-1, -1, 4, 6 + 5, 12 + 4, 18 + 0, 18 + 2, 18 + 4]
    assert result.selection.positions is None


def test_outer_stage_beta_and_noise():
    features, attention = _hand_video()
    # beta = 1: the centres' static means themselves.
    result = holitom_outer(features, attention, retention=0.3, tau=0.5, beta=1.0)
    assert torch.allclose(result.selection.tokens[:2], torch.tensor([[10.0, 0.0], [11.0, 0.0]]))
    # Seeded noise: reproducible. The densities of 10, 11, 12 tie exactly, so the noise (as in the reference)
    # decides which of them is densest: the static tokens may differ from the noise-free run, nothing else does.
    runs = [
        holitom_outer(features, attention, retention=0.3, tau=0.5, generator=torch.Generator().manual_seed(9))
        for _ in range(2)
    ]
    assert torch.equal(runs[0].selection.tokens, runs[1].selection.tokens)
    plain = holitom_outer(features, attention, retention=0.3, tau=0.5)
    assert torch.equal(runs[0].selection.tokens[2:], plain.selection.tokens[2:])
    assert torch.equal(runs[0].selection.source, plain.selection.source)


def test_outer_stage_all_static_window_caps_ratio():
    # 3 identical frames: every position static, G[0,2] = 2 S; r' = rho / ((3S - 2S) / 3S) = 3 rho -> capped at 1
    # for rho = 0.5: all S static means kept as their own clusters (no members), no dynamic tokens.
    features = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(1)).repeat(3, 1, 1)
    attention = torch.rand(3, 5)
    result = holitom_outer(features, attention, retention=0.5, tau=0.9)
    assert [(w.start, w.end) for w in result.windows] == [(0, 2)]
    assert result.reduced == 10 and result.rho_eff == 1.0
    assert torch.allclose(result.selection.tokens, features[0], atol=1e-6)
    assert result.selection.source.tolist() == [-1] * 5


def test_outer_stage_contextual_dynamic_tokens():
    # D = 0.5 on two singleton windows (frame 1 = -frame 0): ceil(8 * 0.5) = 4 per frame, round(4 * 0.5) = 2 by
    # attention (positions 3, 6) then 2 DPC-kNN contextual tokens of the other 6, k = min(7, 2) = 2.
    # Frame 0 rest values [0, 1, 2, 10, 11, 12] (second coordinate 1): densities tie, delta: 0 -> max, 10 -> 8,
    # others 1 -> centres 0 and 10: 0.6 * 0 + 0.4 * 1.5 = 0.6 and 0.6 * 10 + 0.4 * 11.5 = 10.6. Frame 1 mirrors it.
    rest = [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]
    values = rest[:3] + [100.0] + rest[3:5] + [200.0] + rest[5:]
    frame = torch.tensor([[v, 1.0] for v in values])
    features = torch.stack([frame, -frame])
    attention = torch.zeros(2, 8)
    attention[:, [3, 6]] = 1.0
    result = holitom_outer(features, attention, retention=0.5, tau=0.5, D=0.5)
    expected = torch.tensor([[100.0, 1.0], [200.0, 1.0], [0.6, 1.0], [10.6, 1.0]])
    assert torch.allclose(result.selection.tokens, torch.cat([expected, -expected]), atol=1e-5)
    assert result.selection.source.tolist() == [3, 6, -1, -1, 11, 14, -1, -1]


def test_outer_stage_rejects_bad_input():
    features, attention = _hand_video()
    with pytest.raises(ValueError):
        holitom_outer(features, attention[:, :5], retention=0.3, tau=0.5)
    with pytest.raises(ValueError):
        holitom_outer(features, attention, retention=0.3, tau=0.5, D=1.0)
    with pytest.raises(ValueError):
        holitom_outer(features, attention, retention=0.3, tau=0.5, max_window=0)
