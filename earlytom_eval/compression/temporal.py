"""Stage 1 of EarlyTom: temporal merging of frames inside the vision encoder.

Pure tensor functions: they know hidden states ``[T, S_v, D_v]`` (frames are the batch dimension of
the encoder) and hyperparameters, nothing about transformers. The sequential decisions (segment cuts,
which middle frames merge) run in Python over at most T frames, reading one ``[T, T]`` similarity
matrix that is computed in a single matmul and moved to the host once; applying the decisions to the
hidden states is one gather and one weighted sum for all frames.

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
    "temporal_merge",
]

Segment = tuple[int, int]


def frame_similarity(hidden: torch.Tensor) -> torch.Tensor:
    """Pairwise frame similarity: mean over token positions of the cosine similarity of token i with token i.

    Args:
        hidden: ``[T, S, D]`` tokens of T frames.
    Returns:
        ``[T, T]`` float32 matrix, ``sim[x, y] = mean_i cos(hidden[x, i], hidden[y, i])``.
    """
    if hidden.dim() != 3:
        raise ValueError(f"frame_similarity expects [T, S, D] hidden states, got shape {tuple(hidden.shape)}")
    num_frames, num_tokens, _ = hidden.shape
    unit = torch.nn.functional.normalize(hidden.float(), dim=-1, eps=1e-8).reshape(num_frames, -1)
    return (unit @ unit.T) / num_tokens


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
        running = ema * sim[ref][i] + (1.0 - ema) * running
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
        adjacent = [sim[a][b] for a, b in zip(middle, middle[1:])]
        for i, j, w in fine_merge_plan(adjacent, sim[start][end]):
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
    plan = plan_temporal_merge(frame_similarity(hidden).cpu(), tau, max_window, ema)
    merged = apply_frame_merge(hidden, plan)
    merged_attention = apply_frame_merge(attention, plan) if attention is not None else None
    final_segments = None
    if final:
        final_segments = tuple(coarse_segments(frame_similarity(merged).cpu(), tau, max_window, ema))
    return TemporalMergeResult(merged, merged_attention, plan, final_segments)


def _as_rows(sim: list[list[float]] | torch.Tensor) -> list[list[float]]:
    if isinstance(sim, torch.Tensor):
        if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
            raise ValueError(f"expected a square [T, T] similarity matrix, got shape {tuple(sim.shape)}")
        return sim.detach().to("cpu", torch.float64).tolist()
    return sim
