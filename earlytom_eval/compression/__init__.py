"""Token-compression functions: pure tensors and a config, no transformers or lmms-eval imports."""

from .methods import EncoderPlan, LayerOutcome, VideoCompressor, build_compressor, register, registered_methods
from .spatial import SpatialSelection, select_tokens
from .temporal import FrameMergePlan, TemporalMergeResult, temporal_merge

__all__ = [
    "EncoderPlan",
    "FrameMergePlan",
    "LayerOutcome",
    "SpatialSelection",
    "TemporalMergeResult",
    "VideoCompressor",
    "build_compressor",
    "register",
    "registered_methods",
    "select_tokens",
    "temporal_merge",
]
