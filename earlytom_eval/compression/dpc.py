"""DPC-kNN (density peaks clustering with k nearest neighbours), shared by HoliTom, FastVID and EarlyTom.

Pure tensor functions, batched over any leading dimensions (``[..., N, D]``), e.g. one clustering per
frame for FastVID. They follow the reference code:

- cokeshao/HoliTom @ e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0, ``holitom/llava_arch.py``
  (``cluster_dpc_knn``, ``merge_tokens_by_clustering``); EarlyTom's ``earlytom/llava_arch.py``
  (viridisGreen/EarlyTom @ b90932217325d986d11364c5d31466ab1812caa1) holds the same two functions.
- LunarShen/FastVID @ a40a109cb8df20e8c2c17c6850f8269717369990,
  ``fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py`` ("Parallel Density
  Score Computation" in ``Qwen2Model.forward``).

The steps, for N tokens ``x`` of width D:

1. ``dist = cdist(x, x) / sqrt(D)`` in float32 (:func:`pairwise_distance`).
2. ``density = exp(-mean of the squared distances to the k nearest neighbours)``; the token itself is one
   of its k nearest neighbours (distance 0), as in the reference ``topk(dist, k, largest=False)``.
   The references add ``1e-6 * U(0, 1)`` noise from the global CUDA RNG; here the noise is drawn from an
   explicit ``torch.Generator`` and is off when none is given (:func:`dpc_density`).
3. ``delta`` = distance to the nearest strictly denser token; the densest token gets the largest entry of
   the whole distance matrix (:func:`dpc_delta`). Deterministic tie-break (not in the references, where
   the noise makes ties improbable): of two tokens with exactly equal density, the EARLIER one counts as
   denser. So exactly one token (the first of the densest) gets the maximum distance. The tie-break also
   applies with noise on, where it only matters for exact ties after the noise.
4. ``score = delta * density``; the centres are the top-``c`` scores (:func:`dpc_centres`; ties go to the
   earlier token, the references' ``topk`` gives no tie rule), sorted by position unless asked otherwise.
5. Every token goes to its nearest centre (``argmin`` of the distance, the first centre on ties); a centre
   goes to itself (:func:`assign_to_centres`).
6. HoliTom / EarlyTom output per centre: ``beta * centre + (1 - beta) * mean(members)``, where the members
   EXCLUDE the centre, or the centre alone when it has no members (:func:`merge_clusters`; reference quirk,
   ``merge_tokens_by_clustering`` averages only the non-centre tokens). FastVID merges differently (by
   cosine), see :mod:`earlytom_eval.compression.fastvid`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "DEFAULT_NOISE_SCALE",
    "DPCClusters",
    "assign_to_centres",
    "dpc_centres",
    "dpc_delta",
    "dpc_density",
    "dpc_knn",
    "dpc_knn_merge",
    "dpc_score",
    "merge_clusters",
    "pairwise_distance",
    "stable_topk",
]

#: Scale of the uniform noise the references add to the densities.
DEFAULT_NOISE_SCALE = 1e-6


def stable_topk(values: torch.Tensor, k: int, *, largest: bool = True) -> torch.Tensor:
    """Indices of the ``k`` largest (or smallest) entries along the last dim, best first, earlier index on ties.

    ``torch.topk`` has no tie rule; this is a stable sort cut at ``k``, so results do not depend on the
    backend when scores tie. Returns ``[..., k]`` long.
    """
    if not 0 <= k <= values.shape[-1]:
        raise ValueError(f"k must be in [0, {values.shape[-1]}], got {k}")
    return torch.sort(values, dim=-1, descending=largest, stable=True).indices[..., :k]


def pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """``cdist(x, x) / sqrt(D)`` in float32.

    Args:
        x: ``[..., N, D]``.
    Returns:
        ``[..., N, N]`` float32.
    """
    xf = x.float()
    return torch.cdist(xf, xf) / math.sqrt(x.shape[-1])


def dpc_density(
    dist: torch.Tensor,
    k: int,
    *,
    generator: torch.Generator | None = None,
    noise_scale: float = DEFAULT_NOISE_SCALE,
) -> torch.Tensor:
    """Local density ``exp(-mean_k dist^2)`` over the k nearest neighbours, the token itself included.

    Args:
        dist: ``[..., N, N]`` distances (:func:`pairwise_distance`).
        k: neighbourhood size, clipped to ``[1, N]``.
        generator: when given, ``noise_scale * U(0, 1)`` drawn from it (on the generator's device) is added,
            as the references do with the global RNG; None: no noise, deterministic.
    Returns:
        ``[..., N]`` float32.
    """
    num = dist.shape[-1]
    k = max(1, min(int(k), num))
    nearest = dist.topk(k, dim=-1, largest=False).values
    density = torch.exp(-(nearest**2).mean(dim=-1))
    if generator is not None:
        noise = torch.rand(density.shape, generator=generator, device=generator.device, dtype=torch.float32)
        density = density + noise.to(density.device) * noise_scale
    return density


def dpc_delta(dist: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    """Distance to the nearest denser token; the densest token gets ``max(dist)`` over the whole matrix.

    "Denser": strictly higher density, or equal density and an earlier position (deterministic tie-break).

    Args:
        dist: ``[..., N, N]``; density: ``[..., N]``.
    Returns:
        ``[..., N]`` float32.
    """
    num = dist.shape[-1]
    order = torch.arange(num, device=dist.device)
    other, this = density[..., None, :], density[..., :, None]  # [i, j]: j is the candidate parent of i
    denser = (other > this) | ((other == this) & (order[None, :] < order[:, None]))
    dist_max = dist.amax(dim=(-2, -1), keepdim=True).expand_as(dist)
    return torch.where(denser, dist, dist_max).amin(dim=-1)


def dpc_score(
    x: torch.Tensor,
    k: int,
    *,
    generator: torch.Generator | None = None,
    noise_scale: float = DEFAULT_NOISE_SCALE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``delta * density`` of every token, and the distance matrix it came from.

    Args:
        x: ``[..., N, D]``.
    Returns:
        ``(score [..., N], dist [..., N, N])``, both float32.
    """
    dist = pairwise_distance(x)
    density = dpc_density(dist, k, generator=generator, noise_scale=noise_scale)
    return dpc_delta(dist, density) * density, dist


def dpc_centres(score: torch.Tensor, num_centres: int, *, by_position: bool = True) -> torch.Tensor:
    """The ``num_centres`` highest-score tokens (earlier token on ties).

    Args:
        score: ``[..., N]``.
        by_position: True: ascending token index (HoliTom / EarlyTom sort the centres); False: score order,
            best first (FastVID keeps ``topk`` order).
    Returns:
        ``[..., num_centres]`` long.
    """
    top = stable_topk(score, num_centres)
    return top.sort(dim=-1).values if by_position else top


def assign_to_centres(dist: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Cluster id (index into ``centres``) of every token: its nearest centre, the first one on ties.

    A centre is assigned to itself even if another centre is as close (duplicate tokens).

    Args:
        dist: ``[..., N, N]``; centres: ``[..., C]`` long token indices.
    Returns:
        ``[..., N]`` long in ``[0, C)``.
    """
    num, count = dist.shape[-1], centres.shape[-1]
    to_centres = dist.gather(-1, centres[..., None, :].expand(*centres.shape[:-1], num, count))
    assign = to_centres.argmin(dim=-1)
    own = torch.arange(count, device=dist.device).expand_as(centres)
    return assign.scatter(-1, centres, own)


def merge_clusters(
    x: torch.Tensor,
    centres: torch.Tensor,
    assign: torch.Tensor,
    beta: float,
    *,
    include_centre: bool = False,
) -> torch.Tensor:
    """One token per cluster: ``beta * centre + (1 - beta) * mean(members)``, or the centre alone if no members.

    Args:
        x: ``[..., N, D]``; centres: ``[..., C]``; assign: ``[..., N]`` (:func:`assign_to_centres`).
        include_centre: False (reference, HoliTom ``merge_tokens_by_clustering``): the members are the
            non-centre tokens assigned to the cluster. True: the centre counts among its own members.
    Returns:
        ``[..., C, D]`` in ``x``'s dtype; computed in float32.
    """
    count = centres.shape[-1]
    xf = x.float()
    one_hot = torch.nn.functional.one_hot(assign, count).to(torch.float32)  # [..., N, C]
    if not include_centre:
        is_centre = torch.zeros(assign.shape, dtype=torch.bool, device=x.device).scatter(-1, centres, True)
        one_hot = one_hot.masked_fill(is_centre[..., None], 0.0)
    sizes = one_hot.sum(dim=-2)  # [..., C]
    sums = one_hot.transpose(-1, -2) @ xf  # [..., C, D]
    centre_x = xf.gather(-2, centres[..., None].expand(*centres.shape, x.shape[-1]))
    mean = sums / sizes.clamp(min=1.0)[..., None]
    mixed = torch.where(sizes[..., None] > 0, beta * centre_x + (1.0 - beta) * mean, centre_x)
    return mixed.to(x.dtype)


@dataclass(frozen=True)
class DPCClusters:
    """Result of :func:`dpc_knn` on ``[..., N, D]`` tokens.

    Attributes:
        centres: ``[..., C]`` ascending token indices of the cluster centres.
        assign: ``[..., N]`` cluster id (index into ``centres``) of every token.
        score: ``[..., N]`` ``delta * density``.
        dist: ``[..., N, N]`` the scaled distance matrix.
    """

    centres: torch.Tensor
    assign: torch.Tensor
    score: torch.Tensor
    dist: torch.Tensor


def dpc_knn(
    x: torch.Tensor,
    num_clusters: int,
    k: int,
    *,
    generator: torch.Generator | None = None,
    noise_scale: float = DEFAULT_NOISE_SCALE,
) -> DPCClusters:
    """DPC-kNN clustering of ``x`` (``[..., N, D]``) into ``min(num_clusters, N)`` clusters."""
    num_clusters = min(int(num_clusters), x.shape[-2])
    score, dist = dpc_score(x, k, generator=generator, noise_scale=noise_scale)
    centres = dpc_centres(score, num_clusters)
    return DPCClusters(centres=centres, assign=assign_to_centres(dist, centres), score=score, dist=dist)


def dpc_knn_merge(
    x: torch.Tensor,
    num_clusters: int,
    k: int,
    beta: float,
    *,
    generator: torch.Generator | None = None,
    noise_scale: float = DEFAULT_NOISE_SCALE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """HoliTom's ``cluster_dpc_knn`` + ``merge_tokens_by_clustering``: one mixed token per cluster.

    Args:
        x: ``[..., N, D]``.
        num_clusters: C, clipped to N; 0 gives empty outputs.
        k: neighbourhood size (callers pass ``min(K, C)`` as the references do).
    Returns:
        ``(tokens [..., C, D] in x's dtype, ordered by centre position; centres [..., C] long)``.
    """
    num_clusters = min(int(num_clusters), x.shape[-2])
    if num_clusters <= 0:
        empty = torch.empty(*x.shape[:-2], 0, dtype=torch.long, device=x.device)
        return x.new_zeros(*x.shape[:-2], 0, x.shape[-1]), empty
    clusters = dpc_knn(x, num_clusters, k, generator=generator, noise_scale=noise_scale)
    return merge_clusters(x, clusters.centres, clusters.assign, beta), clusters.centres
