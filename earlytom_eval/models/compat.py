"""The few transformers APIs that changed between 4.5x and 5.x, behind one call each.

The pipeline is developed on transformers 5 (the lock); lent GPU machines may carry an older 4.5x. Each helper
picks the call the installed version understands, from the function's own signature (looked up once), so 5.x
takes exactly the call it took before these helpers existed:

- ``from_pretrained`` / ``_from_config``: ``dtype=`` (>= 4.56) or ``torch_dtype=``;
- ``create_causal_mask``: 5.x takes ``layer_idx`` (the cache layer whose length counts: stage 3's groups hold
  different lengths); 4.5x takes ``input_embeds`` and ``cache_position`` and reads layer 0, so it is given a
  view of the cache that answers for the group's first layer;
- decoder layers: ``cache=`` (5.x; ``past_key_values=`` deprecated) or ``past_key_value=`` (4.5x); every version
  swallows unknown keywords, so a wrong name would silently leave the cache empty; a tensor or a tuple returned;
- ``DynamicCache(config=...)`` and a layer's cached keys (``cache.layers[i].keys`` or ``cache.key_cache[i]``).

transformers is imported inside the functions (lazy: see ``presets.py``'s note; these run per model call, and
the import is cached by Python).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

__all__ = [
    "causal_mask",
    "dtype_kwargs",
    "layer_keys",
    "new_cache",
    "run_decoder_layer",
    "set_attention",
    "transformers_version",
]


def transformers_version() -> str:
    import transformers  # lazy: see the module docstring

    return str(transformers.__version__)


@functools.cache
def _parameters(function: Any) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters)


@functools.cache
def _dtype_keyword() -> str:
    from packaging.version import Version

    return "dtype" if Version(transformers_version()).release >= (4, 56) else "torch_dtype"


def dtype_kwargs(dtype: torch.dtype | None) -> dict[str, Any]:
    """``{"dtype": dtype}`` for transformers >= 4.56, ``{"torch_dtype": dtype}`` before (empty for None)."""
    return {} if dtype is None else {_dtype_keyword(): dtype}


def set_attention(model: Any, implementation: str) -> None:
    """Switch a loaded model (and its sub-models) to another attention kernel (``sdpa``,
    ``flash_attention_2``, ``eager``); the kernels read the config at every forward."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
        return
    configs = [model.config, *(getattr(model.config, name, None) for name in ("text_config", "vision_config"))]
    for config in configs:
        if config is not None:
            config._attn_implementation = implementation


def new_cache(config: Any) -> Any:
    """An empty ``DynamicCache`` (given the text config where the version takes one)."""
    from transformers import DynamicCache  # lazy: see the module docstring

    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers < 4.54: no config argument
        return DynamicCache()


def layer_keys(cache: Any, layer: int) -> torch.Tensor:
    """``[B, H_kv, L, d]`` the keys cached for one layer (RoPE applied)."""
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys
    return cache.key_cache[layer]


class _LayerView:
    """A cache seen from one layer: what transformers 4.5x's mask builder reads (it asks layer 0 for the
    cached length; stage 3's later group holds fewer tokens than layer 0)."""

    def __init__(self, cache: Any, layer: int):
        self._cache = cache
        self._layer = layer

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._cache.get_seq_length(self._layer)

    def get_mask_sizes(self, cache_position: torch.Tensor, layer_idx: int = 0) -> tuple[int, int]:
        # A dynamic (full-attention) layer: the cached tokens plus the new ones, from position 0. Not asked of
        # the cache itself: 4.5x's cache has no entry yet for a layer that has not run.
        return self.get_seq_length() + int(cache_position.shape[0]), 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)


#: The cache's keyword, newest name first: ``cache`` (5.x, ``past_key_values`` deprecated), ``past_key_values``
#: (earlier 5.x; 4.5x's mask builder); 4.5x's decoder layers take ``past_key_value``.
_CACHE_KEYWORDS = ("cache", "past_key_values")


def causal_mask(
    config: Any, hidden: torch.Tensor, mask2d: torch.Tensor, cache: Any, positions: torch.Tensor, layer: int
) -> Any:
    """transformers' causal mask for layers from ``layer`` on, whose cache holds ``mask2d``'s tokens minus the
    ``hidden.shape[1]`` new ones."""
    from transformers.masking_utils import create_causal_mask  # lazy: see the module docstring

    params = _parameters(create_causal_mask)
    if "layer_idx" in params:  # transformers 5
        cache_key = next(key for key in _CACHE_KEYWORDS if key in params)
        return create_causal_mask(
            config=config, inputs_embeds=hidden, attention_mask=mask2d, position_ids=positions, layer_idx=layer,
            **{cache_key: cache},
        )
    past = cache.get_seq_length(layer)
    cache_position = torch.arange(past, past + hidden.shape[1], device=hidden.device)
    return create_causal_mask(
        config=config, input_embeds=hidden, attention_mask=mask2d, cache_position=cache_position,
        past_key_values=_LayerView(cache, layer), position_ids=positions,
    )


def run_decoder_layer(
    layer: Any, hidden: torch.Tensor, mask: Any, positions: torch.Tensor, cache: Any, position_embeddings: Any
) -> torch.Tensor:
    """One decoder layer as its model's forward calls it (cache updated); returns ``[B, L, D]``."""
    params = _parameters(type(layer).forward)
    cache_key = next(key for key in (*_CACHE_KEYWORDS, "past_key_value") if key in params or key == "past_key_value")
    extra = {}
    if cache_key == "past_key_value" and "cache_position" in params:  # 4.5x: the cache update reads it
        past = cache.get_seq_length(layer.self_attn.layer_idx)
        extra["cache_position"] = torch.arange(past, past + hidden.shape[1], device=hidden.device)
    output = layer(
        hidden, attention_mask=mask, position_ids=positions, use_cache=True, position_embeddings=position_embeddings,
        **{cache_key: cache}, **extra,
    )
    return output[0] if isinstance(output, tuple) else output
