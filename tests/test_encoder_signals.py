"""The received attention (EarlyTom's attention signal inside the encoder) against a naive softmax."""

from __future__ import annotations

import pytest
import torch
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

from earlytom_eval.models import encoder
from earlytom_eval.models.encoder import (
    attention_received,
    capture_projections,
    projections_to_heads,
    received_attention,
)


def _naive(queries: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """Materialised ``[T, H, S, S]`` probabilities in float64, averaged over heads and queries."""
    probs = torch.softmax(queries.double() @ keys.double().transpose(-1, -2) * scale, dim=-1)
    return probs.mean(dim=(1, 2)).float()


def _qk(frames=3, heads=4, tokens=10, dim=8, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(frames, heads, tokens, dim, generator=g) * spread
    k = torch.randn(frames, heads, tokens, dim, generator=g) * spread
    return q, k


def test_float32_matches_the_naive_softmax():
    q, k = _qk()
    out = attention_received(q, k, 8**-0.5)
    assert out.shape == (3, 10) and out.dtype == torch.float32
    assert torch.allclose(out, _naive(q, k, 8**-0.5), rtol=1e-5, atol=1e-7)
    assert torch.allclose(out.sum(dim=-1), torch.ones(3), atol=1e-5)  # each probability row sums to 1


def test_large_logits_stay_finite_and_exact():
    q, k = _qk(spread=12.0, seed=1)
    out = attention_received(q, k, 8**-0.5)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, _naive(q, k, 8**-0.5), rtol=1e-4, atol=1e-7)


def test_groups_of_heads_give_the_same_result(monkeypatch):
    q, k = _qk(heads=5, seed=2)
    whole = attention_received(q, k, 0.3)
    monkeypatch.setattr(encoder, "_SCRATCH_BYTES", 4 * 10 * 10 * 2)  # two heads per step, then one
    assert torch.allclose(attention_received(q, k, 0.3), whole, rtol=1e-6, atol=1e-8)


def test_bfloat16_scores_are_the_model_dtype_softmax_in_float32():
    q, k = _qk(seed=3)
    qb, kb = q.bfloat16(), k.bfloat16()
    out = attention_received(qb, kb, 8**-0.5)
    assert out.dtype == torch.float32
    scores = (qb * 8**-0.5) @ kb.transpose(-1, -2)  # bf16, as eager attention in a bf16 model
    expected = torch.softmax(scores, dim=-1, dtype=torch.float32).mean(dim=(1, 2))
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-7)
    assert torch.allclose(out, _naive(q, k, 8**-0.5), rtol=3e-2)


def test_strided_projection_views():
    g = torch.Generator().manual_seed(4)
    projected = torch.randn(2, 10, 4 * 8, generator=g)
    view = projections_to_heads(projected, 4)
    assert view.shape == (2, 4, 10, 8) and not view.is_contiguous()
    dense = view.contiguous()
    assert torch.equal(attention_received(view, view, 0.2), attention_received(dense, dense, 0.2))


@pytest.fixture
def layer():
    config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return SiglipEncoderLayer(config).eval()


@torch.inference_mode()
def test_captured_projections_are_the_layers_own_and_give_the_recomputed_signal(layer):
    hidden = torch.randn(3, 9, 32)
    with capture_projections(layer.self_attn) as captured:
        out = layer(hidden, None)
    out = out[0] if isinstance(out, tuple) else out
    assert not layer.self_attn.q_proj._forward_hooks and not layer.self_attn.k_proj._forward_hooks
    x = layer.layer_norm1(hidden)
    assert torch.equal(captured["q"], layer.self_attn.q_proj(x))
    assert torch.equal(captured["k"], layer.self_attn.k_proj(x))
    heads = layer.self_attn.num_heads
    from_capture = attention_received(
        projections_to_heads(captured["q"], heads), projections_to_heads(captured["k"], heads), layer.self_attn.scale
    )
    recomputed = received_attention(layer, hidden)
    assert torch.equal(from_capture, recomputed)
    naive = _naive(projections_to_heads(captured["q"], heads), projections_to_heads(captured["k"], heads),
                   layer.self_attn.scale)
    assert torch.allclose(recomputed, naive, rtol=1e-5, atol=1e-7)
    # The layer's output is untouched by the hooks.
    plain = layer(hidden, None)
    assert torch.equal(out, plain[0] if isinstance(plain, tuple) else plain)
