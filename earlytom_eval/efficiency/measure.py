"""Measuring on the real pipeline: FLOPs per stage with torch's ``FlopCounterMode`` (what the formulas are checked
against), and EarlyTom's frame schedules by running the vision encoder on a clip."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlavaOnevisionForConditionalGeneration

from ..compression.config import CompressionConfig, ModelFacts
from ..compression.registry import build_method
from ..dtypes import resolve_dtype
from ..models.llava_ov import EarlyTomLlavaOnevision, load_model
from ..models.presets import build_pooling_head, build_processor, preset_config
from .clip import ClipSpec, load_clip
from .flops import ModelShapes
from .schedules import FrameSchedule, schedule_from_encoding

__all__ = ["StageFlopCounter", "attention_flop_counter", "measure_schedules", "schedule_model"]


#: SDPA kernels whose FLOPs a torch version may not count (torch 2.14.1 counts 0 for the CPU kernel).
_SDPA_KERNELS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
)


def _sdpa_flops(query_shape, key_shape, value_shape, *args: Any, **kwargs: Any) -> int:
    """FLOPs of one fused attention call: ``Q K^T`` and ``P V`` as two batched matmuls (2 per multiply-add).

    Shapes ``[B, H, Sq, D]``, ``[B, H_kv, Sk, D]``, ``[B, H_kv, Sk, Dv]``; grouped KV heads are counted per
    query head, as the matmuls of the unfused computation would be.
    """
    *batch, queries, dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    rows = math.prod(batch) * queries
    return 2 * rows * keys * dim + 2 * rows * keys * value_dim


def attention_flop_counter():
    """A ``FlopCounterMode`` that counts every fused SDPA kernel as its two matmuls.

    torch's own registrations cover the fused kernels only in some versions and on some devices; with
    these, the count does not depend on which kernel SDPA dispatched to.
    """
    mapping = {getattr(torch.ops.aten, name): _sdpa_flops for name in _SDPA_KERNELS if hasattr(torch.ops.aten, name)}
    return FlopCounterMode(display=False, custom_mapping=mapping)


class StageFlopCounter:
    """A stand-in for :class:`~earlytom_eval.timing.StageTimer` that counts FLOPs per stage instead.

    Pass it as ``timer=`` to ``encode_video`` / ``prepare_inputs`` / ``prefill``: each stage runs under its
    own :func:`attention_flop_counter`, so the counts are the profiler's, per stage, on the real pipeline.
    ``flops`` maps stage -> FLOPs.
    """

    def __init__(self) -> None:
        self.flops: dict[str, int] = {}
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        counter = attention_flop_counter()
        with counter:
            yield
        self.flops[name] = self.flops.get(name, 0) + int(counter.get_total_flops())


def measure_schedules(
    configs: Sequence[CompressionConfig],
    clip: ClipSpec,
    *,
    preset: str | None = None,
    pretrained: str | None = None,
    device: str = "cpu",
    dtype: str = "bfloat16",
    seed: int = 0,
    log: TextIO = sys.stderr,
) -> dict[str, tuple[FrameSchedule, int]]:
    """Run the encoder of each config whose counts depend on the clip (EarlyTom's frame merging, a method whose
    planned counts are a bound) on the clip; return ``name -> (schedule, visual tokens)``.

    The encoder is the checkpoint's (``pretrained``) or the ``preset``'s random-initialised one (seed ``seed``).
    """
    facts = preset_facts(preset, pretrained)
    data_dependent = [c for c in configs if c.compresses and _depends_on_clip(c, facts)]
    if not data_dependent:
        return {}
    frames = {c.num_frames for c in data_dependent}
    # LLM cuts act inside the LLM only; the schedule model may have a 1-layer LLM, so they are off here.
    encoder_only = [_without_llm_cuts(c) for c in data_dependent]
    model = schedule_model(preset, pretrained, encoder_only[0], device=device, dtype=dtype, seed=seed)
    weights = (f"the checkpoint's weights ({pretrained})" if pretrained
               else f"the '{preset}' preset's random-initialised SigLIP (seed {seed}; random weights "
               "do not merge frames as trained ones would)")
    out = {}
    videos = {n: load_clip(clip, n)[0] for n in frames}
    for cfg in encoder_only:
        start = time.perf_counter()
        wrapped = model.with_config(cfg)
        pixels = wrapped.preprocess_video(videos[cfg.num_frames].frames)
        with torch.inference_mode():
            encoding = wrapped.encode_video(pixels)
        source = f"measured: {clip.name}, {cfg.num_frames} frames, {weights}, {dtype} on {device}"
        schedule = schedule_from_encoding(encoding, source, facts.patch_grid**2)
        out[cfg.name] = (schedule, encoding.visual_tokens)
        print(f"  schedule of {cfg.name}: {out[cfg.name][0].compact()} ({time.perf_counter() - start:.0f} s)",
              file=log)
    return out


def _depends_on_clip(config: CompressionConfig, facts: ModelFacts) -> bool:
    planned = build_method(config).planned_counts(facts, config.num_frames)
    return planned is None or not planned.exact


def _without_llm_cuts(config: CompressionConfig) -> CompressionConfig:
    """The config with its LLM cuts off (EarlyTom's stage 3, HoliTom's inner stage), name kept."""
    if config.llm_cuts() and "inner_layer" in CompressionConfig.fields_for(config.method):
        return config.replace(inner_layer=None, name=config.name)
    return config


def preset_facts(preset: str | None, pretrained: str | None) -> ModelFacts:
    """The model facts of a preset or a checkpoint's ``config.json``."""
    shapes = ModelShapes.from_preset(preset) if preset else ModelShapes.from_pretrained(pretrained)
    return shapes.facts()


def schedule_model(
    preset: str | None, pretrained: str | None, config: CompressionConfig, *, device: str = "cpu",
    dtype: str = "bfloat16", seed: int = 0,
) -> EarlyTomLlavaOnevision:
    """A model whose vision encoder decides the frame schedule.

    For a preset, only the vision tower matters: the real SigLIP shapes with a 1-layer, 64-wide LLM
    (seeded random initialisation), so no multi-GB language model is built. For a checkpoint, the
    whole model is loaded.
    """
    if pretrained:
        return load_model(pretrained, config, device=device, dtype=dtype)
    hf_config = preset_config(preset)
    text = hf_config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 64, 128, 1
    text.num_attention_heads, text.num_key_value_heads = 4, 2
    text.head_dim = 16
    text.layer_types = text.layer_types[:1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = LlavaOnevisionForConditionalGeneration._from_config(
                hf_config, dtype=resolve_dtype(dtype), attn_implementation="sdpa"
            )
    head = build_pooling_head(preset, seed=seed, dtype=dtype, device=device)  # FastVID's (random, like the weights)
    return EarlyTomLlavaOnevision(model.eval(), build_processor(preset), config, pooling_head=head)
