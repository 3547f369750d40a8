"""Token-compression functions: pure tensors and a config, no transformers or lmms-eval imports."""

from importlib import import_module

# Lazy (PEP 562): `import earlytom_eval` imports `compression.config`, which runs this file; the tensor
# modules below import torch, and importing the package must not.
_EXPORTS = {
    "CompressionMethod": "methods",
    "EncoderPlan": "methods",
    "EncoderSignals": "methods",
    "LayerOutcome": "methods",
    "METHOD_CLASSES": "registry",
    "build_method": "registry",
    "registered_methods": "registry",
    "TokenSelection": "selection",
    "SpatialSelection": "spatial",
    "select_tokens": "spatial",
    "FrameMergePlan": "temporal",
    "TemporalMergeResult": "temporal",
    "temporal_merge": "temporal",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
