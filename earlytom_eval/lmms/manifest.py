"""The ``lmms_eval.models`` entry point: tells lmms-eval that ``--model earlytom_llava_ov`` is this package's model.

lmms-eval imports this module at start-up (``setup.cfg``), so it stays light: no torch, transformers or
lmms-eval at import time.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MODEL_CLASS_PATH", "MODEL_ID", "manifests"]

#: The name lmms-eval knows the model by (``--model earlytom_llava_ov``).
MODEL_ID = "earlytom_llava_ov"
MODEL_CLASS_PATH = "earlytom_eval.lmms.model.EarlyTomLlavaOV"


def manifests() -> list[Any]:
    """The entry point: registers :data:`MODEL_ID` with lmms-eval."""
    # Lazy: this module is the entry point and must import without lmms-eval.
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=MODEL_CLASS_PATH)]
