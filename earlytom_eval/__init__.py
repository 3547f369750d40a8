"""earlytom-eval: EarlyTom visual-token compression inside LLaVA-OneVision's vision encoder.

The package is laid out by layer (``CONTRIBUTING.md``): ``compression`` (pure tensor functions and their
config), ``models`` (transformers' LLaVA-OneVision), ``efficiency``, ``lmms`` (the lmms-eval glue), ``report``,
``reproduce`` and the command line. Importing it imports neither torch, transformers, lmms-eval nor matplotlib;
:func:`load_model` and :class:`EarlyTomLlavaOnevision` load them on first use.
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
        from .models import llava_ov  # lazy: it imports torch, and importing the package must not

        return getattr(llava_ov, name)
    raise AttributeError(f"module 'earlytom_eval' has no attribute {name!r}")
