"""DyCoke: temporal token pruning before the LLM (stage 1, "TTM") and KV-cache pruning while decoding (stage 2).

Pure tensor functions; nothing here knows transformers. Followed code: KD-TAO/DyCoke @
dd7463498203479d0ff6f2d29c4e72928c0af244:

- stage 1: ``llava/model/llava_arch.py`` (``dycole_ttm``, called in ``prepare_inputs_labels_for_multimodal``
  on the flattened, pooled video before the ``image_newline`` is appended);
- stage 2: ``llava/model/language_model/modeling_qwen2.py`` (``PrunableDynamicCache.dycoke_pruning`` /
  ``update_cache`` and the decoder loop of ``Qwen2Model.forward``), ``llava/model/language_model/llava_qwen.py``
  (``DycokeConfigs``, ``init_dycoke``).

Defaults of the reference run (lmms-eval ``llava_onevision`` with ``dycoke=True``, as in ``eval.sh``):
K = 0.7, L = 3, P = 0.8, image start s0 = 14. The README / paper table use P = 0.7.

Stage 1 PRUNES (nothing is merged): see :func:`ttm_prune`. It cannot go below the frames it never prunes
(9 of 32 whole, about 28 % of the tokens), so for the project's ratios :func:`choose_ttm_k` falls back to the
most aggressive setting K = 1.0 and reports the retention actually reached.

Stage 2 runs at decode steps only (query length 1): the head-averaged attention row of the current token at
layer L - 1 over the image span picks which cache entries layers >= L attend to. Only the pure parts live here
(:func:`kv_keep_indices`, :func:`decode_keep_indices` and the batched :func:`decode_keep_mask`); the caller
applies the indices to the cache. The reference keeps the previous step's attention row in a config object
that survives across decode steps AND across samples; here it is an explicit :class:`DecodePruneState` that
the caller holds (see there for the reset policy).

Reference quirks kept on purpose are marked ``REFERENCE QUIRK``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .selection import TokenSelection, frame_major_index

__all__ = [
    "DEFAULT_K",
    "DEFAULT_L",
    "DEFAULT_P",
    "DEFAULT_SIMILARITY_THRESHOLD",
    "DEFAULT_IMAGE_START",
    "DROPPED",
    "WHOLE",
    "BatchedDecodePruneState",
    "DecodePruning",
    "DecodePruneState",
    "TTMSetting",
    "attention_similarity",
    "choose_ttm_k",
    "decode_keep_indices",
    "decode_keep_mask",
    "keep_mask_to_indices",
    "kv_keep_count",
    "kv_keep_indices",
    "stage2_image_length",
    "ttm_frame_plan",
    "ttm_keep_count",
    "ttm_prune",
    "ttm_token_count",
]

#: Stage-1 pruning ratio ``dycoke_k`` (lmms-eval default, used by ``eval.sh``).
DEFAULT_K = 0.7
#: Stage-2 layer ``dycoke_l``: the cache of layers >= L is pruned using layer L - 1's attention.
DEFAULT_L = 3
#: Stage-2 pruning ratio ``dycoke_p`` (lmms-eval default 0.8; the README and paper table use 0.7).
DEFAULT_P = 0.8
#: Stage-2 threshold: no pruning at a step whose attention row is this similar to the previous one.
DEFAULT_SIMILARITY_THRESHOLD = 0.9
#: Stage-2 image start ``image_token_start_index``, hard-coded by the reference (qwen_1_5 template).
DEFAULT_IMAGE_START = 14

#: :func:`ttm_frame_plan` entry of a frame kept whole.
WHOLE = -1
#: :func:`ttm_frame_plan` entry of a frame removed entirely (the unpaired last frame of an odd T).
DROPPED = -2


# --------------------------------------------------------------------------- #
# Stage 1: TTM
# --------------------------------------------------------------------------- #


def ttm_keep_count(k: float, tokens_per_frame: int = 196) -> int:
    """Tokens a pruned frame keeps: ``int((1 - K) * S)``, computed as the reference does (float, truncated).

    K = 0.7, 0.5, 0.3 give 58, 98, 137 of 196 (``(1 - 0.7) * 196 = 58.8``); K = 1.0 gives 0.
    """
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"DyCoke K must be in [0, 1], got {k}")
    return int((1 - k) * tokens_per_frame)


def ttm_frame_plan(num_frames: int, *, keep_unpaired_last: bool = False) -> torch.Tensor:
    """What stage 1 does to each frame: ``[T]`` long.

    Entry ``r >= 0``: the frame is pruned by its per-position cosine similarity to ORIGINAL frame ``r``;
    :data:`WHOLE` (-1): kept whole; :data:`DROPPED` (-2): removed.

    Reference loops: for ``i in range(0, T - 1, 2)`` frame ``i + 1`` is pruned against frame ``i``; then for
    ``i in range(0, T - 4, 4)`` frame ``i + 2`` (kept whole by the first loop) is pruned against frame ``i``.
    For T = 32: frames 0, 4, ..., 28 and 30 whole (REFERENCE QUIRK: 30 is never pruned, the second loop
    stops at i = 24), the 16 odd frames against their predecessor, frames 2, 6, ..., 26 against frame i - 2.

    Any T works:
    - odd T: the first loop never reaches the last frame and the reference's output list simply has no
      entry for it, so it is DROPPED (REFERENCE QUIRK, e.g. T = 5 or 31); ``keep_unpaired_last=True`` keeps
      it whole instead. With T = 1 and the default, no token is left.
    - T <= 4: the reference crashes (``torch.stack`` of an empty list of similarities); here the second loop
      is simply empty, so only the pairs are pruned.
    """
    if num_frames < 0:
        raise ValueError(f"number of frames must be >= 0, got {num_frames}")
    plan = torch.full((num_frames,), WHOLE, dtype=torch.long)
    paired = 2 * (num_frames // 2)  # frames covered by the pairs (i, i + 1), i = 0, 2, ..., paired - 2
    odd = torch.arange(1, max(paired, 1), 2)
    plan[odd] = odd - 1
    second = torch.arange(0, max(num_frames - 4, 0), 4) + 2  # frames i + 2 for i in range(0, T - 4, 4)
    plan[second] = second - 2
    if paired < num_frames and not keep_unpaired_last:
        plan[num_frames - 1] = DROPPED
    return plan


def ttm_token_count(
    num_frames: int,
    k_keep: int,
    tokens_per_frame: int = 196,
    *,
    newline: bool = True,
    keep_unpaired_last: bool = False,
) -> int:
    """Visual tokens stage 1 hands to the LLM (``+ 1`` for the newline when ``newline``).

    T = 32: ``9 * S + 23 * k_keep (+ 1)``; K = 0.7 / 0.5 / 0.3 -> 3099 / 4019 / 4916 with the newline.
    """
    plan = ttm_frame_plan(num_frames, keep_unpaired_last=keep_unpaired_last)
    whole = int((plan == WHOLE).sum())
    pruned = int((plan >= 0).sum())
    return whole * tokens_per_frame + pruned * min(k_keep, tokens_per_frame) + int(newline)


def ttm_prune(features: torch.Tensor, k_keep: int, *, keep_unpaired_last: bool = False) -> TokenSelection:
    """DyCoke stage 1 on one video's pooled features.

    Args:
        features: ``[T, S, D]`` projected, pooled tokens (raster order inside each frame).
        k_keep: tokens a pruned frame keeps (:func:`ttm_keep_count`, ``int((1 - K) * S)``).
        keep_unpaired_last: keep the last frame of an odd T whole instead of dropping it (see
            :func:`ttm_frame_plan`).
    Returns:
        The kept tokens, frames in order (no newline). A frame kept whole comes in raster order; a pruned
        frame keeps the ``k_keep`` positions with the LOWEST cosine similarity to its reference frame, in
        ascending order of similarity, not raster order (REFERENCE QUIRK: ``topk(largest=False)`` indices are
        used as they come). ``source`` is ``t * S + q`` for every token (nothing is merged); positions are
        contiguous (``positions=None``).

    The similarity is per position, ``cos(x[ref, q], x[t, q])``, between ORIGINAL frames (the second pass
    compares frame i with frame i + 2 as they entered, not as pruned). It is computed in float32 (the reference
    uses the model's fp16); ties go to the lower position (stable sort; the reference's ``topk`` has no rule).
    """
    if features.dim() != 3:
        raise ValueError(f"features must be [T, S, D], got {tuple(features.shape)}")
    num_frames, num_tokens, dim = features.shape
    if not 0 <= k_keep <= num_tokens:
        raise ValueError(f"k_keep must be in [0, {num_tokens}], got {k_keep}")
    device = features.device
    plan = ttm_frame_plan(num_frames, keep_unpaired_last=keep_unpaired_last).to(device)
    pruned = (plan >= 0).nonzero().squeeze(1)

    # rank[t, q]: place of token q inside frame t's output; a token is kept when rank < its frame's budget.
    positions = torch.arange(num_tokens, device=device)
    rank = positions.expand(num_frames, num_tokens).clone()
    budget = torch.full((num_frames,), num_tokens, dtype=torch.long, device=device)
    budget[plan == DROPPED] = 0
    if pruned.numel():
        unit = torch.nn.functional.normalize(features.float(), dim=-1)
        sim = (unit[pruned] * unit[plan[pruned]]).sum(dim=-1)  # [n_pruned, S]
        order = sim.sort(dim=-1, stable=True).indices  # ascending similarity, lower position first on ties
        rank[pruned] = torch.empty_like(order).scatter_(1, order, positions.expand_as(order))
        budget[pruned] = k_keep
    keep = rank < budget[:, None]
    frames, tokens = keep.nonzero(as_tuple=True)  # frame-major, raster order
    key = frames * num_tokens + rank[frames, tokens]
    order = key.argsort()  # frame order, then output order inside each frame
    frames, tokens = frames[order], tokens[order]
    source = frame_major_index(frames, tokens, num_tokens)
    return TokenSelection(tokens=features.reshape(num_frames * num_tokens, dim)[source], source=source)


@dataclass(frozen=True)
class TTMSetting:
    """A stage-1 setting for a target retention.

    Attributes:
        target: the nominal rho.
        k: the DyCoke K to configure.
        k_keep: tokens kept per pruned frame, ``int((1 - K) * S)``.
        tokens: visual tokens into the LLM, newline included.
        retention: ``tokens / (T * S)``, the retention actually reached (the spec counts the newline, as in
            "3099 (49.4 %)").
    """

    target: float
    k: float
    k_keep: int
    tokens: int
    retention: float


def choose_ttm_k(
    rho: float,
    num_frames: int = 32,
    tokens_per_frame: int = 196,
    *,
    step: float = 0.01,
    keep_unpaired_last: bool = False,
) -> TTMSetting:
    """The K (on a grid of ``step``, 0 to 1) whose token count, newline included, comes closest to ``rho * T * S``.

    Ties go to the larger K. The count is monotone in K, so a rho below the floor (all odd frames gone,
    T = 32: ``9 * 196 + 1 = 1765`` tokens, 28.1 %) gets the most aggressive setting K = 1.0 (``k_keep = 0``).
    All of 0.10 / 0.15 / 0.20 / 0.25 land there for T = 32.
    """
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    steps = round(1.0 / step)
    target = rho * num_frames * tokens_per_frame
    best: TTMSetting | None = None
    for i in range(steps, -1, -1):  # K = 1.0 first: ties keep the larger K
        k = round(i * step, 10)
        k_keep = ttm_keep_count(k, tokens_per_frame)
        tokens = ttm_token_count(num_frames, k_keep, tokens_per_frame, keep_unpaired_last=keep_unpaired_last)
        if best is None or abs(tokens - target) < abs(best.tokens - target):
            best = TTMSetting(rho, k, k_keep, tokens, tokens / (num_frames * tokens_per_frame))
    assert best is not None
    return best


# --------------------------------------------------------------------------- #
# Stage 2: decode-time KV-cache pruning
# --------------------------------------------------------------------------- #


def stage2_image_length(num_visual_tokens: int) -> int:
    """Length of the image span stage 2 scores: ``visual tokens - 1``.

    REFERENCE QUIRK: the reference sets ``image_token_length = len(ttm output) - 1`` before the newline is
    appended, so the span ``[s0, s0 + n_img)`` leaves out the LAST VISUAL token (not the newline); that token
    and the newline then fall in the always-kept tail. ``num_visual_tokens`` counts stage 1's output without
    the newline.
    """
    return max(num_visual_tokens - 1, 0)


def kv_keep_count(num_image: int, prune_ratio: float) -> int:
    """Image-span cache entries kept: ``int(n_img * (1 - P))``."""
    if not 0.0 <= prune_ratio <= 1.0:
        raise ValueError(f"DyCoke P must be in [0, 1], got {prune_ratio}")
    return int(num_image * (1 - prune_ratio))


def attention_similarity(current: torch.Tensor, previous: torch.Tensor | None) -> float:
    """``cos(current, previous)`` of two image-span attention rows, in float32; 0.0 without a previous row.

    A previous row of another length (another video, another stage-1 count) also gives 0.0, i.e. "prune":
    the reference would fail there (``cosine_similarity`` of mismatched sizes).
    """
    if previous is None or previous.shape != current.shape:
        return 0.0
    return float(torch.nn.functional.cosine_similarity(current.float(), previous.float().to(current.device), dim=0))


def kv_keep_indices(image_attention: torch.Tensor, *, start: int, seq_len: int, keep: int) -> torch.Tensor:
    """Cache indices layers >= L attend to: ``[0, s0) ∪ top-keep of the image span ∪ [s0 + n_img, seq_len)``.

    Args:
        image_attention: ``[n_img]`` the current token's layer L - 1 attention (mean over heads) over the span.
        start: s0, the first image position in the cache.
        seq_len: cache length INCLUDING the current token (the reference's ``seq_length + past_length``).
        keep: :func:`kv_keep_count`.
    Returns:
        ``[s0 + keep + (seq_len - s0 - n_img)]`` long, ascending. The reference concatenates the top-k
        unsorted (``topk(sorted=False)``); the order of cache entries does not change attention (keys carry
        their RoPE already), so they are sorted here for determinism. Ties go to the lower position.
    """
    num_image = image_attention.shape[0]
    if not 0 <= keep <= num_image:
        raise ValueError(f"keep must be in [0, {num_image}], got {keep}")
    if start < 0 or start + num_image > seq_len:
        raise ValueError(f"image span [{start}, {start + num_image}) must lie inside [0, {seq_len})")
    device = image_attention.device
    order = image_attention.float().sort(descending=True, stable=True).indices[:keep]
    return torch.cat(
        [
            torch.arange(start, device=device),
            order.sort().values + start,
            torch.arange(start + num_image, seq_len, device=device),
        ]
    )


@dataclass(frozen=True)
class DecodePruning:
    """Stage-2 settings a method hands to the model integration (``CompressionMethod.decode_pruning``).

    Attributes:
        layer: L; at each decode step, layer L - 1's attention row of the current token picks the image-span
            cache entries that layers >= L attend to.
        prune_ratio: P, share of the image span pruned at a step that prunes (``int(n_img * (1 - P))`` kept).
        threshold: a step whose image-span row is at least this cosine-similar to the previous one prunes
            nothing (reference quirk).
    """

    layer: int = DEFAULT_L
    prune_ratio: float = DEFAULT_P
    threshold: float = DEFAULT_SIMILARITY_THRESHOLD


@dataclass
class DecodePruneState:
    """The previous decode step's image-span attention row, held by the caller (no module globals).

    REFERENCE QUIRK: the reference keeps this row on a config object that lives as long as the model, so it
    carries over across decode steps AND across samples (the first step of a sample is compared with the last
    step of the previous one). PROJECT CHOICE: the integration creates a fresh state (or calls :meth:`reset`)
    per ``generate`` call, so a sample's result does not depend on which sample ran before it (evaluation
    order, sharding). The first decode step then always prunes (similarity 0), which is also what the
    reference does whenever the carried-over row is not >= 0.9 similar. Keeping one state for a whole run
    reproduces the reference exactly.
    """

    previous: torch.Tensor | None = None

    def reset(self) -> None:
        self.previous = None


def decode_keep_indices(
    image_attention: torch.Tensor,
    state: DecodePruneState,
    *,
    start: int,
    seq_len: int,
    prune_ratio: float = DEFAULT_P,
    threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
) -> torch.Tensor | None:
    """One decode step of stage 2: the kept cache indices, or None when this step does not prune.

    ``sim = cos(row, previous row)`` (0 without a previous row); if ``sim < threshold`` the cache is pruned to
    :func:`kv_keep_indices` with ``keep = int(n_img * (1 - P))``. If ``sim >= threshold`` NOTHING is pruned at
    this step (REFERENCE QUIRK; the paper reuses the previous selection instead). Either way the current row
    becomes ``state.previous``.

    Args:
        image_attention: ``[n_img]`` layer L - 1 attention of the current token (mean over heads) over
            ``[s0, s0 + n_img)``, ``n_img`` from :func:`stage2_image_length`.
        state: updated in place.
        start, seq_len: see :func:`kv_keep_indices`.
    """
    similarity = attention_similarity(image_attention, state.previous)
    state.previous = image_attention.detach()
    if similarity >= threshold:
        return None
    keep = kv_keep_count(image_attention.shape[0], prune_ratio)
    return kv_keep_indices(image_attention, start=start, seq_len=seq_len, keep=keep)


@dataclass
class BatchedDecodePruneState:
    """:class:`DecodePruneState` for B rows: ``previous`` ``[B, M]`` zero-padded rows, ``lengths`` ``[B]``."""

    previous: torch.Tensor | None = None
    lengths: torch.Tensor | None = None

    def reset(self) -> None:
        self.previous = None
        self.lengths = None


def decode_keep_mask(
    attention: torch.Tensor,
    state: BatchedDecodePruneState,
    *,
    starts: torch.Tensor,
    image_lengths: torch.Tensor,
    seq_lens: torch.Tensor,
    prune_ratio: float = DEFAULT_P,
    threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched :func:`decode_keep_indices` over B rows with their own image spans, as a keep mask.

    Args:
        attention: ``[B, L]`` each row's current-token layer L - 1 attention (mean over heads) over the whole
            cache (positions past a row's ``seq_len`` are ignored).
        state: updated in place (the image-span rows of this step).
        starts, image_lengths, seq_lens: ``[B]`` long, each row's s0, n_img and cache length (current token
            included).
    Returns:
        ``keep`` ``[B, L]`` bool, the cache entries layers >= L attend to (all of ``[0, seq_len)`` for a row that
        does not prune at this step), and ``pruned`` ``[B]`` bool. Same selection, ties and similarity rule as
        the single-row version; a row whose previous span had another length gets similarity 0.
    """
    batch, length = attention.shape
    device = attention.device
    starts, image_lengths, seq_lens = (v.to(device=device, dtype=torch.long) for v in (starts, image_lengths, seq_lens))
    if bool(((starts < 0) | (starts + image_lengths > seq_lens) | (seq_lens > length)).any()):
        raise ValueError("every image span must lie inside [0, seq_len) and seq_len <= L")
    width = int(image_lengths.max()) if batch else 0
    offsets = torch.arange(width, device=device)
    in_row = offsets[None, :] < image_lengths[:, None]  # [B, M]
    index = (starts[:, None] + offsets[None, :]).clamp(max=length - 1)
    rows = torch.where(in_row, attention.float().gather(1, index), torch.zeros((), device=device))

    similarity = torch.zeros(batch, device=device)
    prev, prev_len = state.previous, state.lengths
    if prev is not None and prev_len is not None and prev.shape[0] == batch:
        prev = prev.to(device)
        common = min(prev.shape[1], width)
        dot = (rows[:, :common] * prev[:, :common]).sum(dim=-1)
        norms = rows.norm(dim=-1).clamp(min=1e-8) * prev.norm(dim=-1).clamp(min=1e-8)
        same = prev_len.to(device) == image_lengths
        similarity = torch.where(same, dot / norms, similarity)
    state.previous, state.lengths = rows, image_lengths.clone()
    pruned = similarity < threshold

    positions = torch.arange(length, device=device)
    in_cache = positions[None, :] < seq_lens[:, None]
    in_span = (positions[None, :] >= starts[:, None]) & (positions[None, :] < (starts + image_lengths)[:, None])
    keep_counts = (image_lengths.double() * (1 - prune_ratio)).floor().long()  # int(n_img * (1 - P)), n_img >= 0
    scores = attention.float().masked_fill(~in_span, float("-inf"))
    order = scores.sort(dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, positions.expand(batch, length))
    kept_image = in_span & (rank < keep_counts[:, None])
    keep = in_cache & (~in_span | kept_image | ~pruned[:, None])
    return keep, pruned


def keep_mask_to_indices(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, L]`` keep mask -> ``[B, K]`` ascending indices padded with 0 and their ``[B, K]`` validity mask."""
    counts = keep.sum(dim=-1)
    width = int(counts.max()) if keep.shape[0] else 0
    positions = torch.arange(keep.shape[1], device=keep.device)
    # Kept positions first (ascending), the others after: sort by (not kept, position).
    key = (~keep).long() * keep.shape[1] + positions[None, :]
    indices = key.sort(dim=-1).values[:, :width] % max(keep.shape[1], 1)
    valid = torch.arange(width, device=keep.device)[None, :] < counts[:, None]
    return torch.where(valid, indices, torch.zeros_like(indices)), valid
