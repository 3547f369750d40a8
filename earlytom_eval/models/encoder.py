"""EarlyTom's attention signal inside the SigLIP encoder: the attention each token receives at one layer.

The reference materialises ``[T, H, S, S]`` attention probabilities at every layer and averages them. Here
the layer runs with its usual (fast) attention; its own query and key projections are captured while it
runs (:func:`capture_projections`, forward hooks, nothing recomputed), and the received attention is
reduced from them a group of heads of one frame at a time (:func:`attention_received`): no
``[T, H, S, S]`` tensor exists at once; the float32 scratch stays under 24 MiB (17 MiB for SigLIP-so400m).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["attention_received", "capture_projections", "projections_to_heads", "received_attention"]

#: Float32 scratch per step of :func:`attention_received`. Below glibc's largest mmap threshold (32 MiB), so
#: the buffer is recycled from the heap instead of being faulted in afresh at every step.
_SCRATCH_BYTES = 24 * 2**20


def attention_received(queries: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(scale * Q K^T)`` averaged over heads and query positions, per frame, without materialising it.

    Per frame and group of heads: the scores in the inputs' dtype (bf16 scores in a bf16 model, as the
    reference's eager attention computes them), the softmax in float32 (one fused pass per row), the sum
    over heads and queries. The float32 scratch is one group's ``[h, S, S]`` probabilities.

    Args:
        queries, keys: ``[T, H, S, d]`` (any strides with a contiguous last dim).
        scale: the softmax scale (``d ** -0.5``).
    Returns:
        ``[T, S]`` float32.
    """
    frames, heads, tokens, _ = queries.shape
    per_step = max(1, min(heads, _SCRATCH_BYTES // (4 * tokens * tokens)))
    out = torch.zeros(frames, tokens, dtype=torch.float32, device=queries.device)
    for frame in range(frames):
        for head in range(0, heads, per_step):
            q = queries[frame, head : head + per_step] * scale  # contiguous copy
            k = keys[frame, head : head + per_step].contiguous()
            scores = torch.matmul(q, k.transpose(-1, -2))  # [h, S, S] in the inputs' dtype
            # One fused pass per row (max, exp, sum, divide) in float32, then the column sums.
            out[frame] += torch.softmax(scores, dim=-1, dtype=torch.float32).sum(dim=(0, 1))
    return out.div_(heads * tokens)


def projections_to_heads(projected: torch.Tensor, heads: int) -> torch.Tensor:
    """``[T, S, H * d]`` (a ``q_proj`` / ``k_proj`` output) -> ``[T, H, S, d]`` (a view)."""
    frames, tokens, _ = projected.shape
    return projected.view(frames, tokens, heads, -1).transpose(1, 2)


@contextmanager
def capture_projections(attention: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """While active, the outputs of ``attention.q_proj`` and ``attention.k_proj`` land in the yielded dict.

    ``{"q": [T, S, D], "k": [T, S, D]}`` after the layer ran: exactly the projections its attention used.
    """
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured[name] = output

        return hook

    handles = [
        attention.q_proj.register_forward_hook(keep("q")),
        attention.k_proj.register_forward_hook(keep("k")),
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def received_attention(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Attention each token receives in a SigLIP encoder layer, recomputing its queries and keys.

    The pipeline captures the projections instead (:func:`capture_projections`); this form is for callers
    that hold only the layer and its input.

    Args:
        layer: a ``SiglipEncoderLayer``.
        hidden: ``[T, S, D]`` the layer's input.
    Returns:
        ``[T, S]`` float32.
    """
    attn = layer.self_attn
    x = layer.layer_norm1(hidden)
    queries = projections_to_heads(attn.q_proj(x), attn.num_heads)
    keys = projections_to_heads(attn.k_proj(x), attn.num_heads)
    return attention_received(queries, keys, attn.scale)
