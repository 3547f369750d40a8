"""Stage 3 (optional): merging visual tokens inside the LLM during prefill.

Pure tensor functions. After decoder layer ``k - 1``, the attention the LAST prompt token pays to the
visual span (mean over heads) ranks the visual tokens; the top ``round(Nv * (1 - r))`` are kept, every
other visual token is assigned to the kept token whose hidden state is most cosine-similar, and merged
into it. Nothing here loops over tokens in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import MERGE_MODES

__all__ = [
    "InnerMergeDecision",
    "inner_keep_count",
    "last_query_attention",
    "merge_into_kept",
    "plan_inner_drop",
    "plan_inner_merge",
]


def inner_keep_count(num_visual: int, ratio: float) -> int:
    """Visual tokens kept at layer k: ``round(Nv * (1 - r))`` (Python rounding, half to even), at least 1."""
    return max(1, round(num_visual * (1.0 - ratio)))


def last_query_attention(
    query: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Attention probabilities of one query row per sequence, averaged over heads.

    Args:
        query: ``[B, H, D]`` the last prompt token's query (RoPE applied).
        keys: ``[B, H_kv, L, D]`` the layer's keys (RoPE applied); ``H`` must be a multiple of ``H_kv`` (GQA).
        key_mask: ``[B, L]`` bool, False for padding.
        scaling: the layer's softmax scale (``head_dim ** -0.5``).
    Returns:
        ``[B, L]`` float32.
    """
    batch, heads, dim = query.shape
    kv_heads = keys.shape[1]
    q = query.float().view(batch, kv_heads, heads // kv_heads, dim)
    logits = torch.einsum("bkgd,bkld->bkgl", q, keys.float()) * scaling
    logits = logits.masked_fill(~key_mask.bool()[:, None, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=(1, 2))


@dataclass(frozen=True)
class InnerMergeDecision:
    """Which visual tokens of one sequence survive layer k and where the others go.

    Attributes:
        kept: ``[n_keep]`` ascending indices into the visual span of the tokens kept.
        assign: ``[Nv]`` for every visual token, the index into ``kept`` of the token it ends in
            (a kept token maps to itself).
    """

    kept: torch.Tensor
    assign: torch.Tensor

    @property
    def num_visual(self) -> int:
        return int(self.assign.numel())


def plan_inner_merge(scores: torch.Tensor, hidden: torch.Tensor, keep: int) -> InnerMergeDecision:
    """Keep the ``keep`` highest-scoring visual tokens; assign every other one to its most similar kept token.

    Only the tokens that merge are scored, against the kept ones: one ``[Nv - keep, keep]`` matmul of the
    others' hidden states with the kept ones scaled to unit norm, then an argmax (the others' own norms do
    not change which kept token is closest). The matmul runs in the hidden states' dtype, as the
    reference's ``bmm`` does.

    Args:
        scores: ``[Nv]`` attention of the last prompt token to each visual token.
        hidden: ``[Nv, D]`` the visual tokens' hidden states entering layer k (before any merging).
    """
    num_visual = scores.shape[0]
    if not 1 <= keep <= num_visual:
        raise ValueError(f"tokens to keep must be in [1, {num_visual}], got {keep}")
    kept = scores.topk(keep).indices.sort().values
    assign = torch.empty(num_visual, dtype=torch.long, device=hidden.device)
    assign[kept] = torch.arange(keep, device=hidden.device)
    if keep < num_visual:
        is_kept = torch.zeros(num_visual, dtype=torch.bool, device=hidden.device)
        is_kept[kept] = True
        others = (~is_kept).nonzero().squeeze(1)
        targets = hidden[kept].to(torch.float32, copy=True)
        norms = torch.linalg.vector_norm(targets, dim=-1, keepdim=True).clamp_min_(1e-12)
        unit = targets.div_(norms).to(hidden.dtype)
        # ties: the first (lowest-position) kept token
        assign[others] = (hidden[others] @ unit.T).argmax(dim=-1)
    return InnerMergeDecision(kept, assign)


def merge_into_kept(hidden: torch.Tensor, decision: InnerMergeDecision, mode: str = "fold") -> torch.Tensor:
    """Merged hidden states of the kept tokens, ``[n_keep, D]``, in the kept tokens' order.

    ``mode="fold"`` (default, REFERENCE QUIRK): the reference folds the assigned tokens in one at a time, in
    ascending position order, ``h_j <- (h_j + h_a) / 2``. For a kept token with assigned tokens
    ``a_1 < ... < a_m`` that is ``2^-m h_j + sum_i 2^-(m-i+1) h_{a_i}``, computed here in closed form.
    ``mode="mean"``: the plain mean of the group (kept token and its assigned tokens).
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"unknown merge mode {mode!r} (allowed: {', '.join(MERGE_MODES)})")
    kept, assign = decision.kept, decision.assign
    num_kept = kept.numel()
    is_kept = torch.zeros(assign.numel(), dtype=torch.bool, device=assign.device)
    is_kept[kept] = True
    others = (~is_kept).nonzero().squeeze(1)  # ascending positions
    group = assign[others]
    size = torch.bincount(group, minlength=num_kept)  # m per kept token
    # Rank of each assigned token inside its group, in ascending position order (0-based).
    order = torch.sort(group, stable=True).indices
    starts = torch.cumsum(size, 0) - size
    rank = torch.empty_like(group)
    rank[order] = torch.arange(group.numel(), device=group.device) - starts[group[order]]
    x = hidden.float()
    if mode == "fold":
        kept_coef = torch.pow(2.0, -size.float())
        other_coef = torch.pow(2.0, -(size[group] - rank).float())
    else:
        kept_coef = 1.0 / (size.float() + 1.0)
        other_coef = 1.0 / (size[group].float() + 1.0)
    merged = kept_coef[:, None] * x[kept]
    terms = other_coef[:, None] * x[others]
    # Round r adds every group's r-th token (ascending position): the targets of one round are distinct, so
    # each kept token sums its terms in position order, bitwise as the reference's sequential fold, and
    # deterministically (index_add goes through a far slower scatter_add on CPU; an accumulating index_put
    # may sum a row's terms in another order).
    for r in range(int(size.max()) if group.numel() else 0):
        step = (rank == r).nonzero().squeeze(1)
        targets = group[step]
        merged[targets] = merged[targets] + terms[step]
    return merged.to(hidden.dtype)


def plan_inner_drop(scores: torch.Tensor, keep: int) -> InnerMergeDecision:
    """Keep the ``keep`` highest-scoring visual tokens and drop the others (FastV): nothing is merged.

    The decision's ``assign`` maps each kept token to itself and every dropped one to -1.
    """
    num_visual = scores.shape[0]
    if not 1 <= keep <= num_visual:
        raise ValueError(f"tokens to keep must be in [1, {num_visual}], got {keep}")
    kept = scores.topk(keep).indices.sort().values
    assign = torch.full((num_visual,), -1, dtype=torch.long, device=scores.device)
    assign[kept] = torch.arange(keep, device=scores.device)
    return InnerMergeDecision(kept, assign)
