"""Stage 1 of EarlyTom: temporal merging of frames inside the vision encoder.

Pure tensor functions: they know hidden states ``[T, S_v, D_v]`` (frames are the batch dimension of
the encoder) and hyperparameters, nothing about transformers. The sequential decisions (segment cuts,
which middle frames merge) run in Python over at most T frames, reading a ``[T, T]`` similarity matrix
moved to the host once; only the pairs less than ``max_window`` frames apart (the only ones the decisions
read) are computed, a few frames at a time in float32. Applying the decisions to the hidden states is
one gather and one weighted sum for all frames.

Reference quirks are reproduced on purpose (so results compare with the paper) and marked
``REFERENCE QUIRK``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "FrameMergePlan",
    "TemporalMergeResult",
    "apply_frame_merge",
    "coarse_segments",
    "compose_sources",
    "fine_merge_plan",
    "frame_similarity",
    "plan_temporal_merge",
    "similarity_blocks",
    "similarity_offset",
    "temporal_merge",
]

Segment = tuple[int, int]


def frame_similarity(hidden: torch.Tensor, max_offset: int | None = None) -> torch.Tensor:
    """Frame similarity: mean over token positions of the cosine similarity of token i with token i.

    Computed in float32 a few frames at a time (each block converted, normalised per token in place and
    multiplied with itself and the block before), so no float32 copy of the whole ``[T, S, D]`` exists.

    Args:
        hidden: ``[T, S, D]`` tokens of T frames (any float dtype).
        max_offset: only pairs of frames at most this far apart are sure to be computed (farther pairs may be
            NaN); None: every pair. The segmentation reads only pairs less than ``max_window`` apart (see
            :func:`similarity_offset`).
    Returns:
        ``[T, T]`` float32 matrix, ``sim[x, y] = mean_i cos(hidden[x, i], hidden[y, i])``.
    """
    if hidden.dim() != 3:
        raise ValueError(f"frame_similarity expects [T, S, D] hidden states, got shape {tuple(hidden.shape)}")
    num_frames, num_tokens, _ = hidden.shape
    offset = num_frames - 1 if max_offset is None else max(0, min(max_offset, num_frames - 1))
    sim = torch.full((num_frames, num_frames), float("nan"), dtype=torch.float32, device=hidden.device)
    chunks = _dot_chunks(num_tokens)
    previous = None
    for start, stop, before in similarity_blocks(num_frames, offset):
        block = _unit_tokens(hidden[start:stop], chunks)  # [chunks, t, S * D / chunks]
        sim[start:stop, start:stop] = _chunked_gram(block, block)
        if before and previous is not None:
            cross = _chunked_gram(block, previous[:, -before:])
            sim[start:stop, start - before : start] = cross
            sim[start - before : start, start:stop] = cross.T
        previous = block
    return sim.div_(num_tokens)


def similarity_offset(max_window: int) -> int:
    """The farthest apart two frames whose similarity the segmentation reads: ``max_window - 1``.

    A segment starts at its reference frame and is cut once it would reach ``max_window`` frames, so the
    coarse loop compares frames at most ``max_window - 1`` apart; the fine merge reads neighbours and
    ``sim(start, end)`` of one segment (at most ``max_window - 2`` apart).
    """
    return max(1, max_window - 1)


def similarity_blocks(num_frames: int, max_offset: int) -> list[tuple[int, int, int]]:
    """The blocks :func:`frame_similarity` computes: ``(start, stop, before)`` per block of frames.

    Block ``[start, stop)`` is multiplied with itself and with the ``before`` frames preceding it; blocks
    are ``max(max_offset, 1)`` frames (all T frames when every pair is wanted), so every pair at most
    ``max_offset`` apart is covered. Shared with the FLOP count (:mod:`earlytom_eval.efficiency.flops`).
    """
    if num_frames < 1:
        return []
    size = num_frames if max_offset >= num_frames - 1 else max(1, max_offset)
    blocks = []
    for start in range(0, num_frames, size):
        stop = min(num_frames, start + size)
        blocks.append((start, stop, min(start, max_offset)))
    return blocks


def _unit_tokens(frames: torch.Tensor, chunks: int) -> torch.Tensor:
    """``[t, S, D]`` -> ``[chunks, t, S * D / chunks]`` float32 (a view), every token scaled to unit norm.

    ``eps = 1e-8`` as ``F.normalize``. Splitting the flattened frames into ``chunks`` pieces turns one very
    long dot product per pair into a batched matmul, which runs several times faster on CPU than one matmul
    with an inner dimension of ``S * D``.
    """
    unit = frames.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    norms = torch.linalg.vector_norm(unit, dim=-1, keepdim=True).clamp_min_(1e-8)
    return unit.div_(norms).view(frames.shape[0], chunks, -1).transpose(0, 1)


def _chunked_gram(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``[c, m, k]``, ``[c, n, k]`` -> ``[m, n]``: the dot products of the concatenated chunks."""
    return torch.bmm(rows, cols.transpose(1, 2)).sum(dim=0)


def _dot_chunks(num_tokens: int) -> int:
    """Pieces the flattened frame is cut into for the dot products: the largest divisor of S up to 32."""
    return next(c for c in range(min(num_tokens, 32), 0, -1) if num_tokens % c == 0)


def coarse_segments(sim: list[list[float]] | torch.Tensor, tau: float, max_window: int, ema: float) -> list[Segment]:
    """Coarse segmentation of frames 0..T-1 into contiguous ``(start, end)`` segments (inclusive).

    The running similarity to the segment's first frame is smoothed by an EMA; a segment is cut when it
    drops below ``tau`` or when the segment would reach ``max_window`` frames, so a segment holds at most
    ``max_window - 1`` frames.

    Args:
        sim: ``[T, T]`` frame similarities (see :func:`frame_similarity`).
    """
    sim = _as_rows(sim)
    num_frames = len(sim)
    if num_frames == 0:
        return []
    start = ref = 0
    running = 1.0
    segments: list[Segment] = []
    for i in range(1, num_frames):
        running = ema * _read(sim, ref, i) + (1.0 - ema) * running
        if running < tau or (i - start + 1) >= max_window:
            segments.append((start, i - 1))
            start = ref = i
            running = 1.0
    segments.append((start, num_frames - 1))
    return segments


def fine_merge_plan(adjacent: list[float], tau_seg: float) -> list[tuple[int, int, float]]:
    """Which of a segment's L middle frames merge, as ``(i, j, w)`` outputs meaning ``w * mid_i + (1 - w) * mid_j``.

    Args:
        adjacent: ``L - 1`` similarities ``a_j = sim(mid_j, mid_{j+1})``.
        tau_seg: the segment threshold ``sim(first frame, last frame)``.
    Returns:
        One entry per output frame, in order. An unchanged frame is ``(i, i, 1.0)``.

    A pair merges when its similarity beats ``tau_seg`` and the next pair's similarity, with weight
    ``a_i / (a_i + a_{i+1})``.

    REFERENCE QUIRK: the loop runs while ``i < L - 1``, so the last middle frame is never emitted on its
    own: if no merge consumes it, it is dropped. For the last pair the "next similarity" is 0 and the
    weight is then 1.0, so that "merge" keeps ``mid_i`` alone and drops ``mid_{i+1}``. With L = 2 the
    output is therefore always ``[mid_0]``. A single middle frame (L < 2) is kept unchanged.
    """
    num_mid = len(adjacent) + 1
    if num_mid < 2:
        return [(0, 0, 1.0)]
    out: list[tuple[int, int, float]] = []
    i = 0
    while i < num_mid - 1:
        if i + 1 < num_mid - 1:
            nxt = adjacent[i + 1]
            merge = adjacent[i] > tau_seg and adjacent[i] > nxt
        else:
            nxt = 0.0
            merge = adjacent[i] > tau_seg
        if merge:
            total = adjacent[i] + nxt
            # The reference divides unguarded; a zero sum (only possible with negative similarities)
            # would give inf/nan there. We keep mid_i alone in that case.
            weight = adjacent[i] / total if nxt != 0 and total != 0 else 1.0
            out.append((i, i + 1, float(weight)))
            i += 2
        else:
            out.append((i, i, 1.0))
            i += 1
    return out


@dataclass(frozen=True)
class FrameMergePlan:
    """How T input frames become T' output frames.

    ``out[k] = weight[k] * in[src_a[k]] + (1 - weight[k]) * in[src_b[k]]``.

    Attributes:
        src_a, src_b: ``[T']`` long tensors of input frame indices (equal for an unchanged frame).
        weight: ``[T']`` float64 tensor (1.0 for an unchanged frame).
        segments: the coarse segments of the INPUT frames this plan was made from.
        num_input_frames: T.
    """

    src_a: torch.Tensor
    src_b: torch.Tensor
    weight: torch.Tensor
    segments: tuple[Segment, ...]
    num_input_frames: int

    @property
    def num_output_frames(self) -> int:
        return int(self.src_a.numel())

    def is_identity(self) -> bool:
        return self.num_output_frames == self.num_input_frames and bool(
            torch.equal(self.src_a, torch.arange(self.num_input_frames)) and torch.equal(self.src_a, self.src_b)
        )


def plan_temporal_merge(
    sim: list[list[float]] | torch.Tensor, tau: float, max_window: int, ema: float
) -> FrameMergePlan:
    """Decide the merge of one prune layer from the ``[T, T]`` frame similarities.

    Per coarse segment ``(s, e)``: 1 or 2 frames are kept; with 3 or more, frames s and e are kept and
    the middle frames go through :func:`fine_merge_plan` with ``tau_seg = sim(s, e)``; output order is
    s, merged middle, e. Segments are concatenated in order.
    """
    sim = _as_rows(sim)
    segments = coarse_segments(sim, tau, max_window, ema)
    src_a: list[int] = []
    src_b: list[int] = []
    weight: list[float] = []

    def keep(frame: int) -> None:
        src_a.append(frame)
        src_b.append(frame)
        weight.append(1.0)

    for start, end in segments:
        if end - start + 1 <= 2:
            for frame in range(start, end + 1):
                keep(frame)
            continue
        keep(start)
        middle = list(range(start + 1, end))
        adjacent = [_read(sim, a, b) for a, b in zip(middle, middle[1:])]
        for i, j, w in fine_merge_plan(adjacent, _read(sim, start, end)):
            src_a.append(middle[i])
            src_b.append(middle[j])
            weight.append(w)
        keep(end)
    return FrameMergePlan(
        src_a=torch.tensor(src_a, dtype=torch.long),
        src_b=torch.tensor(src_b, dtype=torch.long),
        weight=torch.tensor(weight, dtype=torch.float64),
        segments=tuple(segments),
        num_input_frames=len(sim),
    )


def apply_frame_merge(values: torch.Tensor, plan: FrameMergePlan) -> torch.Tensor:
    """Apply a plan to any per-frame tensor ``[T, ...]`` (hidden states, attention signal) -> ``[T', ...]``.

    The weighted sum is computed in float32 and cast back, so an unchanged frame is copied exactly.
    """
    if values.shape[0] != plan.num_input_frames:
        raise ValueError(
            f"merge plan is for {plan.num_input_frames} frames, got a tensor with {values.shape[0]} frames"
        )
    device = values.device
    src_a = plan.src_a.to(device)
    if plan.is_identity():
        return values
    src_b = plan.src_b.to(device)
    merged = src_a != src_b
    out = values.index_select(0, src_a)
    if bool(merged.any()):
        rows = merged.nonzero().squeeze(1)
        shape = (-1,) + (1,) * (values.dim() - 1)
        w = plan.weight.to(device=device, dtype=torch.float32)[rows].view(shape)
        first = values.index_select(0, src_a[rows]).float()
        second = values.index_select(0, src_b[rows]).float()
        out[rows] = (w * first + (1.0 - w) * second).to(values.dtype)
    return out


def compose_sources(sources: tuple[tuple[int, ...], ...], plan: FrameMergePlan) -> tuple[tuple[int, ...], ...]:
    """Track which original frames each output frame is made of, through one more merge plan.

    Args:
        sources: for each of the plan's input frames, the original frame indices it contains.
    Returns:
        For each output frame, the sorted original frame indices it contains (a frame taken with weight 0,
        like the one the reference's last-pair quirk drops, contributes nothing).
    """
    out = []
    for a, b, w in zip(plan.src_a.tolist(), plan.src_b.tolist(), plan.weight.tolist()):
        parts = set(sources[a]) | (set(sources[b]) if w < 1.0 else set())
        out.append(tuple(sorted(parts)))
    return tuple(out)


@dataclass(frozen=True)
class TemporalMergeResult:
    """Output of one prune layer's :func:`temporal_merge`.

    Attributes:
        hidden: ``[T', S, D]`` merged hidden states.
        attention: ``[T', S]`` received attention merged with the same weights, or None.
        plan: the merge decisions.
        final_segments: at the last prune layer, the coarse segments of the MERGED frames (they drive
            stage 2); None at earlier layers.
    """

    hidden: torch.Tensor
    attention: torch.Tensor | None
    plan: FrameMergePlan
    final_segments: tuple[Segment, ...] | None


def temporal_merge(
    hidden: torch.Tensor,
    *,
    tau: float,
    max_window: int,
    ema: float,
    attention: torch.Tensor | None = None,
    final: bool = False,
) -> TemporalMergeResult:
    """Merge temporally redundant frames of one encoder layer's output.

    Args:
        hidden: ``[T, S, D]`` hidden states after the prune layer.
        attention: ``[T, S]`` received attention of that layer (last prune layer only), merged alongside.
        final: True at the last prune layer: re-segment the merged frames for stage 2.
    """
    offset = similarity_offset(max_window)
    plan = plan_temporal_merge(frame_similarity(hidden, offset).cpu(), tau, max_window, ema)
    merged = apply_frame_merge(hidden, plan)
    merged_attention = apply_frame_merge(attention, plan) if attention is not None else None
    final_segments = None
    if final:
        final_segments = tuple(coarse_segments(frame_similarity(merged, offset).cpu(), tau, max_window, ema))
    return TemporalMergeResult(merged, merged_attention, plan, final_segments)


def _read(sim: list[list[float]], x: int, y: int) -> float:
    value = sim[x][y]
    if value != value:  # NaN: a pair outside the band frame_similarity computed
        raise ValueError(f"the similarity of frames {x} and {y} was not computed (frame_similarity's max_offset)")
    return value


def _as_rows(sim: list[list[float]] | torch.Tensor) -> list[list[float]]:
    if isinstance(sim, torch.Tensor):
        if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
            raise ValueError(f"expected a square [T, T] similarity matrix, got shape {tuple(sim.shape)}")
        return sim.detach().to("cpu", torch.float64).tolist()
    return sim
