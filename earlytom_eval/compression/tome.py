"""ToMe (token merging) inside the vision encoder, as EarlyTom's LLaVA-OneVision port runs it.

Pure tensor functions; nothing here knows transformers. Followed code:

- facebookresearch/ToMe @ af95e4b1befa172dadccd8c81e223b10090f9579, ``tome/merge.py``
  (``bipartite_soft_matching``, ``merge_wavg``, ``merge_source``) and ``tome/utils.py`` (``parse_r``);
  ``tome/patch/timm.py`` for where merging sits in a block (after the attention residual, before the MLP).
- viridisGreen/EarlyTom @ b90932217325d986d11364c5d31466ab1812caa1, ``tome/utils.py`` (its copy of
  ``bipartite_soft_matching`` with ToMe's cap ``r <= (N - protected) // 2`` commented out, ``parse_r`` with
  ``total``, ``check_parse_r``, ``apply_tome``: ``class_token=True``, inflection -0.5, schedule from
  ``MERGE_NUM``), ``tome/llava_arch.py`` (``get_2dPool``) and
  ``LLaVA-NeXT/llava/model/multimodal_encoder/siglip_encoder.py`` (the metric: the layer's keys,
  ``k_proj(layer_norm1(h))`` split into 16 heads of 72, averaged over heads; the merge in every one of the
  26 layers between the attention residual and the MLP).

One encoder layer with ``r > 0`` (:func:`tome_step`): :func:`bipartite_soft_matching` on the metric gives a
:class:`MergePlan`; :func:`merge_wavg` applies it to the hidden states with the tracked sizes;
:func:`compose_assignment` tracks which input patch ends in which output token (the cheap replacement of
ToMe's ``N x N`` ``source`` matrix, which does not change the output).

PROPORTIONAL ATTENTION IS NOT APPLIED: the port sets ``prop_attn=True`` but LLaVA's ``SigLipAttention``
never adds ``log(size)`` to the logits, so the sizes only weight the averages.

After the projector, :func:`tome_pool` is the port's ``get_2dPool``; :func:`choose_merge_num` maps a target
rho to a ``MERGE_NUM`` (the reference's script sets ``merge_num=608`` in lower case, which the code never
reads: REFERENCE QUIRK, the scripted run merges nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .selection import MERGED, TokenSelection

__all__ = [
    "DEFAULT_INFLECT",
    "ENCODER_LAYERS",
    "PATCHES_PER_FRAME",
    "MergePlan",
    "ToMeSetting",
    "ToMeState",
    "bipartite_soft_matching",
    "check_parse_r",
    "choose_merge_num",
    "compose_assignment",
    "feasible_merge_nums",
    "merge_schedule",
    "merge_tokens",
    "merge_wavg",
    "parse_r",
    "pooled_side",
    "single_sources",
    "tome_llm_token_count",
    "tome_pool",
    "tome_step",
]

#: Inflection of the port's schedule (``apply_tome``): the per-layer r decreases with depth.
DEFAULT_INFLECT = -0.5
#: SigLIP layers LLaVA-OneVision runs (the 27th is removed).
ENCODER_LAYERS = 26
#: Patches per frame entering the encoder (27 x 27).
PATCHES_PER_FRAME = 729


# --------------------------------------------------------------------------- #
# Bipartite soft matching
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class MergePlan:
    """How one layer merges ``N`` tokens into ``N - r`` (the same plan for every channel).

    Tokens are split by position into set A (even positions, ``n_a = ceil(N / 2)``) and B (odd, ``n_b``).
    Output order: the unmerged A tokens (in ``unmerged`` order), then all B tokens (in order).

    Attributes:
        unmerged: ``[B, n_a - r]`` A-local indices of the A tokens kept as they are.
        src: ``[B, r]`` A-local indices of the A tokens merged away, best score first.
        dst: ``[B, r]`` B-local index each of them merges into.
        destination: ``[B, N]`` output position of every input token.
    """

    unmerged: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    destination: torch.Tensor

    @property
    def r(self) -> int:
        return int(self.src.shape[1])

    @property
    def num_in(self) -> int:
        return int(self.destination.shape[1])

    @property
    def num_out(self) -> int:
        return self.num_in - self.r


def bipartite_soft_matching(
    metric: torch.Tensor, r: int, *, class_token: bool = True, cap: bool = False
) -> MergePlan | None:
    """ToMe's bipartite soft matching: which ``r`` A tokens merge into which B tokens.

    Args:
        metric: ``[B, N, C]`` (the port: the layer's keys averaged over heads). L2-normalised here.
        r: tokens to remove.
        class_token: protect token 0 (REFERENCE QUIRK in the port: SigLIP has no CLS token, so this protects
            patch 0, the top-left patch, which can never be merged away). With it, the unmerged A tokens come
            out in index order; without it, in descending-score order, as ToMe does.
        cap: apply ToMe's ``r <= (N - protected) // 2`` (ToMe's merge.py). The port comments it out, so the
            default is off; an ``r`` above the A tokens that may merge (``n_a - protected``) is then an error.
    Returns:
        The plan, or None when ``r <= 0`` (nothing merges).

    Steps: ``scores = A @ B^T`` on normalised rows, row 0 at ``-inf`` with ``class_token``; each A token's
    best B match (first on ties, ``max``); A tokens sorted by that best score, descending (stable: the lower A
    index first on ties; the reference's ``argsort`` gives no rule); the first ``r`` merge. Scores are
    computed in float32 (the reference uses the model's dtype).
    """
    if metric.dim() != 3:
        raise ValueError(f"metric must be [B, N, C], got {tuple(metric.shape)}")
    batch, num_tokens, _ = metric.shape
    protected = int(class_token)
    if cap:
        r = min(r, (num_tokens - protected) // 2)
    if r <= 0:
        return None
    num_a, num_b = (num_tokens + 1) // 2, num_tokens // 2
    if r > num_a - protected or num_b == 0:
        raise ValueError(f"cannot merge r={r} of N={num_tokens} tokens ({num_a - protected} A tokens may merge)")
    device = metric.device
    with torch.no_grad():
        unit = metric.float()
        unit = unit / unit.norm(dim=-1, keepdim=True)
        scores = unit[:, ::2] @ unit[:, 1::2].transpose(-1, -2)  # [B, n_a, n_b]
        if class_token:
            scores[:, 0, :] = -math.inf
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.sort(dim=-1, descending=True, stable=True).indices  # [B, n_a]
        unmerged = edge_idx[:, r:]
        src = edge_idx[:, :r]
        dst = node_idx.gather(1, src)
        if class_token:
            unmerged = unmerged.sort(dim=-1).values
        num_unm = num_a - r
        dest_a = torch.empty(batch, num_a, dtype=torch.long, device=device)
        dest_a.scatter_(1, unmerged, torch.arange(num_unm, device=device).expand(batch, num_unm))
        dest_a.scatter_(1, src, dst + num_unm)
        destination = torch.empty(batch, num_tokens, dtype=torch.long, device=device)
        destination[:, ::2] = dest_a
        destination[:, 1::2] = torch.arange(num_b, device=device) + num_unm
    return MergePlan(unmerged=unmerged, src=src, dst=dst, destination=destination)


def merge_tokens(plan: MergePlan | None, x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
    """ToMe's ``merge(x, mode)``: ``[B, N, D]`` -> ``[B, N - r, D]``.

    ``[unmerged A tokens] ++ [B tokens]``, each B token reduced (``scatter_reduce``, ``include_self=True``)
    with the A tokens merged into it: ``mode="sum"`` adds them, ``"amax"`` takes the maximum, ``"mean"``
    averages the B token with them. ``plan=None`` returns ``x``.
    """
    if plan is None:
        return x
    batch, _, dim = x.shape
    a, b = x[:, ::2], x[:, 1::2]
    unm = a.gather(1, plan.unmerged[..., None].expand(batch, -1, dim))
    src = a.gather(1, plan.src[..., None].expand(batch, -1, dim))
    b = b.scatter_reduce(1, plan.dst[..., None].expand(batch, -1, dim), src, reduce=mode)
    return torch.cat([unm, b], dim=1)


def merge_wavg(
    plan: MergePlan | None, x: torch.Tensor, size: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge (ToMe's ``merge_wavg``): ``x' = merge(x * size) / merge(size)``.

    Args:
        x: ``[B, N, D]`` hidden states; size: ``[B, N, 1]`` tokens each one stands for (None: all 1).
    Returns:
        ``x'`` ``[B, N - r, D]`` in ``x``'s dtype and the new sizes ``[B, N - r, 1]`` float32. The arithmetic
        runs in float32 (float64 for float64 input); the reference multiplies and sums in the model's dtype and
        keeps sizes there too, which bfloat16 could not hold exactly above 256.
    """
    compute = torch.promote_types(x.dtype, torch.float32)
    if size is None:
        size = torch.ones(*x.shape[:2], 1, dtype=torch.float32, device=x.device)
    size = size.float()
    if plan is None:
        return x, size
    merged = merge_tokens(plan, x.to(compute) * size, mode="sum")
    size = merge_tokens(plan, size, mode="sum")
    return (merged / size).to(x.dtype), size


def compose_assignment(plan: MergePlan | None, assignment: torch.Tensor | None, num_tokens: int) -> torch.Tensor:
    """Which current token each original patch is in, after this layer's merge.

    Args:
        assignment: ``[B, N0]`` current token of each of the N0 original patches (None: identity over
            ``num_tokens`` = N0 patches, i.e. before the first merge).
    Returns:
        ``[B, N0]`` long, the output position (of ``plan``'s output) of each original patch.
    """
    if assignment is None:
        device = plan.destination.device if plan is not None else None
        batch = plan.destination.shape[0] if plan is not None else 1
        assignment = torch.arange(num_tokens, device=device).expand(batch, num_tokens)
    if plan is None:
        return assignment
    return plan.destination.gather(1, assignment)


def single_sources(assignment: torch.Tensor, num_out: int) -> torch.Tensor:
    """``[B, num_out]``: the original patch of each output token that holds exactly one, else ``MERGED`` (-1)."""
    batch, num_patches = assignment.shape
    ones = torch.ones_like(assignment)
    count = torch.zeros(batch, num_out, dtype=torch.long, device=assignment.device).scatter_add_(1, assignment, ones)
    patch = torch.arange(num_patches, device=assignment.device).expand(batch, num_patches)
    first = torch.full((batch, num_out), num_patches, dtype=torch.long, device=assignment.device)
    first = first.scatter_reduce(1, assignment, patch, reduce="amin")
    return torch.where(count == 1, first, torch.full_like(first, MERGED))


@dataclass(frozen=True)
class ToMeState:
    """What one frame batch carries through the encoder layers.

    Attributes:
        hidden: ``[B, N, D]`` hidden states.
        size: ``[B, N, 1]`` float32 patches per token (None before any merge).
        assignment: ``[B, N0]`` current token of each original patch (None before any merge).
    """

    hidden: torch.Tensor
    size: torch.Tensor | None = None
    assignment: torch.Tensor | None = None


def tome_step(state: ToMeState, metric: torch.Tensor, r: int, *, class_token: bool = True) -> ToMeState:
    """One layer's merge: plan from ``metric`` ``[B, N, C]``, applied to hidden states, sizes and assignment.

    The port calls it after ``h = h + attn(ln1(h))`` and before the MLP. With ``r <= 0`` the state is returned
    unchanged.
    """
    plan = bipartite_soft_matching(metric, r, class_token=class_token)
    if plan is None:
        return state
    hidden, size = merge_wavg(plan, state.hidden, state.size)
    assignment = compose_assignment(plan, state.assignment, state.hidden.shape[1])
    return ToMeState(hidden=hidden, size=size, assignment=assignment)


# --------------------------------------------------------------------------- #
# Schedule
# --------------------------------------------------------------------------- #


def parse_r(num_layers: int, r: int, inflect: float = 0.0, total: int | None = None) -> list[int]:
    """Per-layer merge counts for ``(r, inflect)`` (ToMe's ``parse_r`` with the port's ``total``).

    ``min = int(r * (1 - inflect))``, ``max = 2 r - min``, layer i gets ``int(min + (max - min) / (L - 1) * i)``
    (float arithmetic, truncated, as in the reference). With ``total``, the difference ``total - sum`` is added
    to the FIRST layer when ``inflect < 0``, else to the last.
    """
    min_val = int(r * (1.0 - inflect))
    max_val = 2 * r - min_val
    step = (max_val - min_val) / (num_layers - 1) if num_layers > 1 else 0.0
    schedule = [int(min_val + step * i) for i in range(num_layers)]
    if total is not None:
        remainder = total - sum(schedule)
        if remainder:
            schedule[0 if inflect < 0 else -1] += remainder
    return schedule


def check_parse_r(num_layers: int, merge_num: int, inflect: float = DEFAULT_INFLECT) -> int:
    """The r whose uncorrected schedule sum is closest to ``merge_num`` (the port's ``check_parse_r``).

    It scans r = 0, 1, ..., merge_num - 1, keeps the first r with the smallest ``|sum - merge_num|`` and stops at
    the first r whose gap is larger than the best one (an equal gap continues the scan without replacing it).
    ``merge_num <= 0`` gives 0.
    """
    gap = math.inf
    best = 0
    for r in range(merge_num):
        current = abs(sum(parse_r(num_layers, r, inflect)) - merge_num)
        if current < gap:
            best, gap = r, current
        elif current > gap:
            break
    return best


def merge_schedule(merge_num: int, num_layers: int = ENCODER_LAYERS, inflect: float = DEFAULT_INFLECT) -> list[int]:
    """Tokens merged in each layer for ``MERGE_NUM = merge_num``; it sums to ``merge_num``.

    ``parse_r(L, check_parse_r(L, merge_num), inflect, total=merge_num)``. For 608 over 26 layers:
    r = 24, ``[32, 35, 34, 33, ..., 13, 12, 12]`` (the first layer takes the correction, 36 - 4).
    """
    if merge_num <= 0:
        return [0] * num_layers
    return parse_r(num_layers, check_parse_r(num_layers, merge_num, inflect), inflect, total=merge_num)


def _schedule_is_feasible(schedule: list[int], num_tokens: int, class_token: bool = True) -> bool:
    """Every layer can merge its r: ``0 <= r <= ceil(N / 2) - protected`` for the N entering it."""
    for r in schedule:
        if r < 0 or r > (num_tokens + 1) // 2 - int(class_token):
            return False
        num_tokens -= r
    return True


def feasible_merge_nums(
    patches_per_frame: int = PATCHES_PER_FRAME,
    num_layers: int = ENCODER_LAYERS,
    inflect: float = DEFAULT_INFLECT,
    *,
    class_token: bool = True,
) -> tuple[int, ...]:
    """Every ``MERGE_NUM`` ToMe can run, ascending: it leaves a positive square ``n * n`` of the patches per frame
    (the pooling's raster needs it), its schedule sums to it and every layer can merge its ``r``.

    729 patches over 26 layers: 0, 53, 104, ..., 533, 585, 608, 629, 665, ... (``729 - n * n``).
    """
    allowed = []
    for n in range(math.isqrt(patches_per_frame), 0, -1):
        merge_num = patches_per_frame - n * n
        schedule = merge_schedule(merge_num, num_layers, inflect)
        if sum(schedule) == merge_num and _schedule_is_feasible(schedule, patches_per_frame, class_token):
            allowed.append(merge_num)
    return tuple(allowed)


# --------------------------------------------------------------------------- #
# Pooling after the projector, and the token budget
# --------------------------------------------------------------------------- #


def pooled_side(side: int, stride: int = 2) -> int:
    """Side of the pooled grid: ``ceil(side / stride)``."""
    return math.ceil(side / stride)


def tome_pool(features: torch.Tensor, stride: int = 2) -> TokenSelection:
    """The port's ``get_2dPool`` on the projected tokens of merged frames, as a :class:`TokenSelection`.

    Args:
        features: ``[T, N, D]``; N must be a perfect square ``n * n``.
    Returns:
        ``[T * m * m, D]`` tokens, ``m = ceil(n / stride)``, frame after frame; ``source`` all ``MERGED`` (-1):
        a pooled token mixes several (merged) tokens; ``positions`` None (contiguous).

    The N tokens of a frame are laid out as an ``n x n`` raster IN THEIR MERGED ORDER (REFERENCE QUIRK:
    after merging, neighbours on this grid are not neighbouring patches), then bilinearly resized to
    ``m x m`` (``interpolate(mode="bilinear", align_corners=False)``, in the input dtype). A non-square N
    raises ValueError (the reference's ``view`` crashes there).
    """
    if features.dim() != 3:
        raise ValueError(f"features must be [T, N, D], got {tuple(features.shape)}")
    num_frames, num_tokens, dim = features.shape
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"ToMe pooling needs a square number of tokens per frame, got {num_tokens}")
    out_side = pooled_side(side, stride)
    grid = features.view(num_frames, side, side, dim).permute(0, 3, 1, 2)
    pooled = torch.nn.functional.interpolate(grid, size=(out_side, out_side), mode="bilinear", align_corners=False)
    tokens = pooled.permute(0, 2, 3, 1).reshape(num_frames * out_side * out_side, dim)
    source = torch.full((tokens.shape[0],), MERGED, dtype=torch.long, device=features.device)
    return TokenSelection(tokens=tokens, source=source)


def tome_llm_token_count(
    merge_num: int,
    num_frames: int = 32,
    patches_per_frame: int = PATCHES_PER_FRAME,
    *,
    stride: int = 2,
    newline: bool = True,
) -> int:
    """Visual tokens into the LLM: ``T * ceil(sqrt(N) / stride)^2 (+ 1)``, ``N = patches - merge_num``.

    608 merges: N = 121, 6 x 6 per frame, ``32 * 36 + 1 = 1153``. Raises ValueError for a non-square N.
    """
    remaining = patches_per_frame - merge_num
    side = math.isqrt(max(remaining, 0))
    if remaining < 1 or side * side != remaining:
        raise ValueError(f"{patches_per_frame} - {merge_num} = {remaining} tokens per frame is not a positive square")
    return num_frames * pooled_side(side, stride) ** 2 + int(newline)


@dataclass(frozen=True)
class ToMeSetting:
    """A ``MERGE_NUM`` for a target retention.

    Attributes:
        target: the nominal rho.
        merge_num: total tokens merged per frame over the encoder.
        schedule: per-layer merge counts (:func:`merge_schedule`).
        encoder_tokens: tokens per frame leaving the encoder (a square).
        pooled_tokens: tokens per frame after the pooling.
        tokens: visual tokens into the LLM, newline included.
        retention: ``tokens / (T * 196)``, the retention actually reached.
    """

    target: float
    merge_num: int
    schedule: tuple[int, ...]
    encoder_tokens: int
    pooled_tokens: int
    tokens: int
    retention: float


def choose_merge_num(
    rho: float,
    num_frames: int = 32,
    patches_per_frame: int = PATCHES_PER_FRAME,
    num_layers: int = ENCODER_LAYERS,
    *,
    pooled_per_frame: int = 196,
    inflect: float = DEFAULT_INFLECT,
    stride: int = 2,
) -> ToMeSetting:
    """The ``MERGE_NUM`` whose tokens into the LLM (newline included) come closest to ``rho * T * 196``.

    Candidates leave a perfect square ``n * n`` per frame (``n = 1 ... 27``) whose schedule every layer can
    carry out. Two sides ``n = 2m - 1`` and ``2m`` pool to the same ``m x m``; the tie goes to the FEWER
    merges (``n = 2m``): same LLM tokens, less merging, and the bilinear resize is then an exact 2 x 2 average.
    For T = 32: rho 0.10 -> 665 (8 x 8 -> 4 x 4, 513 tokens), 0.15 -> 629 (10 x 10 -> 5 x 5, 801),
    0.20 -> 585 (12 x 12 -> 6 x 6, 1153), 0.25 -> 533 (14 x 14 -> 7 x 7, 1569).
    """
    target = rho * num_frames * pooled_per_frame
    best: ToMeSetting | None = None
    side = math.isqrt(patches_per_frame)
    for n in range(side, 0, -1):  # fewest merges first: ties keep the larger n
        merge_num = patches_per_frame - n * n
        schedule = merge_schedule(merge_num, num_layers, inflect)
        if sum(schedule) != merge_num or not _schedule_is_feasible(schedule, patches_per_frame):
            continue
        tokens = tome_llm_token_count(merge_num, num_frames, patches_per_frame, stride=stride)
        if best is None or abs(tokens - target) < abs(best.tokens - target):
            best = ToMeSetting(
                target=rho,
                merge_num=merge_num,
                schedule=tuple(schedule),
                encoder_tokens=n * n,
                pooled_tokens=pooled_side(n, stride) ** 2,
                tokens=tokens,
                retention=tokens / (num_frames * pooled_per_frame),
            )
    if best is None:
        raise ValueError(f"no feasible square merge count for {patches_per_frame} patches over {num_layers} layers")
    return best
