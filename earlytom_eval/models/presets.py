"""Offline, randomly initialised LLaVA-OneVision presets: the real models' shapes, no weights or hub files.

``tiny`` is a 32-wide SigLIP and 64-wide, 24-layer Qwen2 for tests; ``0.5b``, ``7b`` and ``72b`` mirror the
llava-hf ``llava-onevision-qwen2-{0.5b,7b,72b}-ov-hf`` checkpoints (:data:`HUB_IDS`): same config fields, token
ids, processor settings and chat template; only the weights (random) and the tokenizer
(:mod:`earlytom_eval.models.tokenizer`) differ. The shapes are in :data:`_PRESETS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch

from ..dtypes import resolve_dtype
from . import compat
from .llava_ov import EarlyTomLlavaOnevision
from .pooling_head import HEAD_FOLDER, AttentionPoolingHead, load_pooling_head, write_random_head
from .tokenizer import (
    CHAT_TEMPLATE,
    EOS_TOKEN,
    IMAGE_TOKEN,
    PAD_TOKEN,
    QWEN2_NUM_REGULAR_TOKENS,
    VIDEO_TOKEN,
    build_tokenizer,
    special_token_ids,
)

# transformers is imported inside the builders below (lazy): its LLaVA-OneVision classes take seconds to import,
# and the command line reads PRESET_NAMES from this module on every command.
if TYPE_CHECKING:  # pragma: no cover - typing only
    import os

    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
    )

__all__ = [
    "HUB_IDS",
    "PRESET_MANIFEST",
    "PRESET_NAMES",
    "build_model",
    "build_pipeline",
    "build_pooling_head",
    "build_processor",
    "default_dtype",
    "preset_config",
    "tokenizer_num_regular_tokens",
    "write_checkpoint",
]

PRESET_NAMES = ("tiny", "0.5b", "7b", "72b")

HUB_IDS = {
    "0.5b": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
    "7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "72b": "llava-hf/llava-onevision-qwen2-72b-ov-hf",
}
"""The llava-hf checkpoint each real preset mirrors (shapes only; nothing is downloaded)."""

PRESET_MANIFEST = "earlytom_preset.json"
"""File name of the small manifest that :func:`write_checkpoint` adds to a checkpoint directory."""

_TINY_VOCAB_SIZE = 320  # >= len(build_tokenizer()) == 261
_IMAGE_MEAN_STD = (0.5, 0.5, 0.5)  # SigLIP normalisation used by the llava-hf checkpoints
_VISION_ASPECT_RATIO = "anyres_max_9"


@dataclass(frozen=True)
class _VisionShape:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    image_size: int
    patch_size: int


@dataclass(frozen=True)
class _TextShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    max_window_layers: int
    sliding_window: int
    tie_word_embeddings: bool
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    # transformers' default 0.02 for the real shapes. The tiny preset uses a wider init: with 0.02 and
    # 24 random layers its greedy output collapses to one token whatever the input, which would make
    # output-comparison tests unable to fail.
    initializer_range: float = 0.02


@dataclass(frozen=True)
class _Preset:
    vision: _VisionShape
    text: _TextShape
    num_regular_tokens: int | None  # tokenizer layout (None -> tiny byte-only layout)
    default_dtype: torch.dtype
    anyres_grid: int  # image_grid_pinpoints = multiples 1..anyres_grid of image_size in each direction


# google/siglip-so400m-patch14-384 with the last layer dropped (26 of 27 layers), no pooling head.
_SIGLIP_SO400M = _VisionShape(
    hidden_size=1152,
    intermediate_size=4304,
    num_attention_heads=16,
    num_hidden_layers=26,
    image_size=384,
    patch_size=14,
)

_PRESETS: Mapping[str, _Preset] = MappingProxyType(
    {
        "tiny": _Preset(
            vision=_VisionShape(
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=2,
                num_hidden_layers=26,
                image_size=98,
                patch_size=14,
            ),
            text=_TextShape(
                vocab_size=_TINY_VOCAB_SIZE,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=24,  # as deep as Qwen2-0.5B, so the paper's stage-3 layer k = 18 exists
                initializer_range=0.1,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=32768,
                max_window_layers=2,
                sliding_window=32768,
                tie_word_embeddings=False,
            ),
            num_regular_tokens=None,
            default_dtype=torch.float32,
            anyres_grid=2,
        ),
        # Qwen/Qwen2-0.5B-Instruct
        "0.5b": _Preset(
            vision=_SIGLIP_SO400M,
            text=_TextShape(
                vocab_size=151936,
                hidden_size=896,
                intermediate_size=4864,
                num_hidden_layers=24,
                num_attention_heads=14,
                num_key_value_heads=2,
                max_position_embeddings=32768,
                max_window_layers=24,
                sliding_window=32768,
                tie_word_embeddings=True,
            ),
            num_regular_tokens=QWEN2_NUM_REGULAR_TOKENS,
            default_dtype=torch.bfloat16,
            anyres_grid=6,
        ),
        # Qwen/Qwen2-7B-Instruct
        "7b": _Preset(
            vision=_SIGLIP_SO400M,
            text=_TextShape(
                vocab_size=152064,
                hidden_size=3584,
                intermediate_size=18944,
                num_hidden_layers=28,
                num_attention_heads=28,
                num_key_value_heads=4,
                max_position_embeddings=32768,
                max_window_layers=28,
                sliding_window=131072,
                tie_word_embeddings=False,
            ),
            num_regular_tokens=QWEN2_NUM_REGULAR_TOKENS,
            default_dtype=torch.bfloat16,
            anyres_grid=6,
        ),
        # Qwen/Qwen2-72B-Instruct
        "72b": _Preset(
            vision=_SIGLIP_SO400M,
            text=_TextShape(
                vocab_size=152064,
                hidden_size=8192,
                intermediate_size=29568,
                num_hidden_layers=80,
                num_attention_heads=64,
                num_key_value_heads=8,
                max_position_embeddings=32768,
                max_window_layers=80,
                sliding_window=131072,
                tie_word_embeddings=False,
            ),
            num_regular_tokens=QWEN2_NUM_REGULAR_TOKENS,
            default_dtype=torch.bfloat16,
            anyres_grid=6,
        ),
    }
)


def _preset(name: str) -> _Preset:
    if not isinstance(name, str) or name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed presets: {', '.join(PRESET_NAMES)}")
    return _PRESETS[name]


def _image_grid_pinpoints(preset: _Preset) -> list[list[int]]:
    """anyres (height, width) pinpoints, height-major: the llava-hf 6x6 grid [[384, 384], [384, 768], ...,
    [2304, 2304]] for the real presets, [[98, 98], [98, 196], [196, 98], [196, 196]] for tiny."""
    size = preset.vision.image_size
    multiples = range(1, preset.anyres_grid + 1)
    return [[size * h, size * w] for h in multiples for w in multiples]


def default_dtype(name: str) -> torch.dtype:
    """Checkpoint dtype of a preset: float32 for ``"tiny"``, bfloat16 for the real presets."""
    return _preset(name).default_dtype


def tokenizer_num_regular_tokens(name: str) -> int | None:
    """``num_regular_tokens`` passed to :func:`~earlytom_eval.models.tokenizer.build_tokenizer` for a preset."""
    return _preset(name).num_regular_tokens


def preset_config(name: str) -> LlavaOnevisionConfig:
    """A fresh ``LlavaOnevisionConfig`` for preset ``name`` (see the module docstring for shapes).

    Common fields (as in the llava-hf checkpoints): ``vision_feature_layer=-1``,
    ``vision_feature_select_strategy="full"``, ``projector_hidden_act="gelu"``,
    ``multimodal_projector_bias=True``, ``vision_aspect_ratio="anyres_max_9"``, SigLIP without head,
    Qwen2 with ``rope_theta=1e6``, ``rms_norm_eps=1e-6``, ``initializer_range=0.02``, bos ``<|endoftext|>``,
    eos ``<|im_end|>``. Token ids come from the preset's tokenizer layout: 151646 / 151647 for
    ``<image>`` / ``<video>`` (real), 259 / 260 (tiny).

    Raises:
        ValueError: unknown preset name (the message lists the allowed names).
    """
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig  # lazy: see the note above

    preset = _preset(name)
    ids = special_token_ids(preset.num_regular_tokens)
    vision, text = preset.vision, preset.text

    vision_config = SiglipVisionConfig(
        hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size,
        num_attention_heads=vision.num_attention_heads,
        num_hidden_layers=vision.num_hidden_layers,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        num_channels=3,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        attention_dropout=0.0,
        vision_use_head=False,
    )
    text_config = Qwen2Config(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        hidden_act="silu",
        max_position_embeddings=text.max_position_embeddings,
        initializer_range=text.initializer_range,
        rms_norm_eps=text.rms_norm_eps,
        use_cache=True,
        tie_word_embeddings=text.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": text.rope_theta},
        use_sliding_window=False,
        sliding_window=text.sliding_window,
        max_window_layers=text.max_window_layers,
        attention_dropout=0.0,
        bos_token_id=ids[PAD_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
    )
    return LlavaOnevisionConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=ids[IMAGE_TOKEN],
        video_token_index=ids[VIDEO_TOKEN],
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        multimodal_projector_bias=True,
        tie_word_embeddings=text.tie_word_embeddings,
        image_grid_pinpoints=_image_grid_pinpoints(preset),
        vision_aspect_ratio=_VISION_ASPECT_RATIO,
        architectures=["LlavaOnevisionForConditionalGeneration"],
    )


def build_processor(name: str) -> LlavaOnevisionProcessor:
    """``LlavaOnevisionProcessor`` for preset ``name``: tokenizer + image processor + video processor + chat template.

    * tokenizer: :func:`~earlytom_eval.models.tokenizer.build_tokenizer` with the preset's id layout;
    * image processor: ``size={"height": S, "width": S}`` (S = 384 real, 98 tiny), anyres grid pinpoints
      (multiples of S), mean = std = 0.5, bicubic, rescale 1/255 -> ``pixel_values`` ``(B, patches, 3, S, S)``;
    * video processor: same size / normalisation -> ``pixel_values_videos`` ``(B, frames, 3, S, S)``;
    * ``num_image_tokens`` = (S / 14)^2 (729 real, 49 tiny), ``vision_feature_select_strategy="full"``,
      ``vision_aspect_ratio="anyres_max_9"``.

    Raises:
        ValueError: unknown preset name.
    """
    from transformers import (  # lazy: see the note above
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )
    from transformers.image_utils import PILImageResampling  # lazy: see the note above

    preset = _preset(name)
    size = preset.vision.image_size
    common = {
        "size": {"height": size, "width": size},
        "image_mean": list(_IMAGE_MEAN_STD),
        "image_std": list(_IMAGE_MEAN_STD),
        "resample": PILImageResampling.BICUBIC,
        "rescale_factor": 1 / 255,
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
    }
    image_processor = LlavaOnevisionImageProcessor(
        **common, do_pad=True, image_grid_pinpoints=_image_grid_pinpoints(preset)
    )
    video_processor = LlavaOnevisionVideoProcessor(**common)
    patches_per_side = size // preset.vision.patch_size
    return LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(preset.num_regular_tokens),
        video_processor=video_processor,
        num_image_tokens=patches_per_side * patches_per_side,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        video_token=VIDEO_TOKEN,
        vision_aspect_ratio=_VISION_ASPECT_RATIO,
    )


def _generation_config(name: str):
    from transformers import GenerationConfig  # lazy: see the note above

    ids = special_token_ids(_preset(name).num_regular_tokens)
    return GenerationConfig(bos_token_id=ids[PAD_TOKEN], eos_token_id=ids[EOS_TOKEN], pad_token_id=ids[PAD_TOKEN])


def build_model(
    name: str,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    attn_implementation: str = "sdpa",
) -> LlavaOnevisionForConditionalGeneration:
    """Randomly initialised ``LlavaOnevisionForConditionalGeneration`` for preset ``name``, in ``eval()`` mode.

    Weights follow transformers' own initialisation (``initializer_range=0.02`` for the projector and
    Qwen2, SigLIP's scheme for the vision tower, N(0, 1/hidden) for ``image_newline``), drawn from a
    private RNG stream seeded with ``seed``: the caller's global RNG state is left untouched, and the
    same ``(seed, dtype, device type)`` gives bit-identical weights. Weights are created directly on
    ``device`` (CPU and CUDA draw different random streams). ``device="meta"`` allocates nothing
    (shapes only, e.g. for FLOP / parameter counting). Attention: ``attn_implementation`` (default ``"sdpa"``).

    Raises:
        ValueError: unknown preset name or dtype.
    """
    from transformers import LlavaOnevisionForConditionalGeneration  # lazy: see the note above

    config = preset_config(name)
    torch_dtype = resolve_dtype(dtype)
    target = torch.device(device)

    def construct() -> LlavaOnevisionForConditionalGeneration:
        with target:
            return LlavaOnevisionForConditionalGeneration._from_config(
                config, attn_implementation=attn_implementation, **compat.dtype_kwargs(torch_dtype)
            )

    if target.type == "meta":
        model = construct()
    elif target.type in ("cpu", "cuda"):
        fork_devices = []
        if target.type == "cuda":
            fork_devices = [target.index if target.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=fork_devices):
            torch.random.default_generator.manual_seed(seed)
            if target.type == "cuda":
                with torch.cuda.device(fork_devices[0]):
                    torch.cuda.manual_seed(seed)
            model = construct()
    else:  # other accelerators: initialise on CPU (deterministic), then move
        model = build_model(name, seed=seed, dtype=torch_dtype, device="cpu", attn_implementation=attn_implementation)
        model = model.to(target)

    model.generation_config = _generation_config(name)
    return model.eval()


def build_pipeline(
    name: str,
    config: Any,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
) -> EarlyTomLlavaOnevision:
    """Preset ``name``'s random model, processor and FastVID pooling head, with compression ``config``: the
    in-memory twin of ``load_model`` on a checkpoint written by :func:`write_checkpoint`."""
    model = build_model(name, seed=seed, dtype=dtype, device=device)
    head = build_pooling_head(name, seed=seed, dtype=dtype, device=device)
    return EarlyTomLlavaOnevision(model, build_processor(name), config, pooling_head=head)


def build_pooling_head(
    name: str, seed: int = 0, dtype: torch.dtype | str = torch.float32, device: torch.device | str = "cpu"
) -> AttentionPoolingHead:
    """The random SigLIP attention-pooling head of preset ``name`` (what FastVID reads; the same weights as the
    ``fastvid_head/`` folder :func:`write_checkpoint` writes with this seed)."""
    head = load_pooling_head("random", "", preset_config(name).vision_config, dtype, seed=seed)
    return head.to(device)


def write_checkpoint(
    name: str,
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
) -> Path:
    """Write a complete, offline-loadable checkpoint of preset ``name`` into ``out_dir`` and return its path.

    Files: ``config.json``, ``model*.safetensors`` (+ index when sharded), ``generation_config.json``,
    ``tokenizer.json`` + ``tokenizer_config.json``, ``processor_config.json`` (with the nested image and
    video processor configs), ``preprocessor_config.json``, ``video_preprocessor_config.json``,
    ``chat_template.jinja``, ``fastvid_head/model.safetensors`` (a random SigLIP pooling head, so FastVID's
    ``head_weights: auto`` runs offline) and :data:`PRESET_MANIFEST` (``{"preset", "seed", "dtype", ...}``). With
    ``HF_HUB_OFFLINE=1``, ``LlavaOnevisionForConditionalGeneration.from_pretrained(out_dir)`` and
    ``AutoProcessor.from_pretrained(out_dir)`` both work.

    The model is built on CPU (a real preset needs its full size in host memory: ~1.8 GB for "0.5b",
    ~16 GB for "7b" in bfloat16). ``dtype`` defaults to :func:`default_dtype` (float32 tiny, bfloat16 real).

    Raises:
        ValueError: unknown preset name or dtype.
    """
    torch_dtype = default_dtype(name) if dtype is None else resolve_dtype(dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    processor = build_processor(name)
    processor.save_pretrained(out)
    # Stand-alone sub-processor configs, for loaders that read them directly (AutoImageProcessor, older tools).
    processor.image_processor.save_pretrained(out)
    processor.video_processor.save_pretrained(out)

    model = build_model(name, seed=seed, dtype=torch_dtype, device="cpu")
    model.save_pretrained(out)
    del model
    write_random_head(out / HEAD_FOLDER, preset_config(name).vision_config, seed=seed, dtype=torch_dtype)

    manifest = {
        "preset": name,
        "seed": seed,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "mirrors": HUB_IDS.get(name),
        "random_init": True,
        "tokens_per_frame": _tokens_per_frame(name),
        "fastvid_head": f"{HEAD_FOLDER}/model.safetensors (random)",
    }
    (out / PRESET_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _tokens_per_frame(name: str) -> dict[str, int]:
    """Vision-tower tokens per frame and pooled LLM tokens per video frame for a preset."""
    vision = _preset(name).vision
    side = vision.image_size // vision.patch_size
    pooled = math.ceil(side / 2)
    return {"vision": side * side, "video_llm": pooled * pooled}
