"""earlytom-eval: EarlyTom visual-token compression inside LLaVA-OneVision's vision encoder.

    from earlytom_eval import load_model, CompressionConfig
    model = load_model("llava-hf/llava-onevision-qwen2-7b-ov-hf", config=CompressionConfig(retention=0.1))

Layers (each knows only the one below): ``compression`` (pure tensor functions and a config),
``llava_ov`` (transformers' LLaVA-OneVision), and the lmms-eval wrapper. Importing this package does
not import torch, transformers or lmms-eval; they load on first use of the names that need them.
"""

from .compression.config import CompressionConfig, ConfigError, load_config

#: The issue and the paper call it EarlyTom's config; it configures every method by name.
EarlyTomConfig = CompressionConfig

__version__ = "0.1.0"

__all__ = [
    "CompressionConfig",
    "ConfigError",
    "EarlyTomConfig",
    "EarlyTomLlavaOnevision",
    "load_config",
    "load_model",
]


def __getattr__(name: str):
    if name in ("load_model", "EarlyTomLlavaOnevision"):
        from .models import llava_ov

        return getattr(llava_ov, name)
    raise AttributeError(f"module 'earlytom_eval' has no attribute {name!r}")
