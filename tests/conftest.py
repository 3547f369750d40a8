"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch

from earlytom_eval import CompressionConfig
from earlytom_eval.models.llava_ov import EarlyTomLlavaOnevision
from earlytom_eval.models.presets import build_model, build_processor


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two OpenMP threads stall whenever another process
    holds a core (the tests using it assert no timing; this only keeps them fast)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset in memory (seed 0) with compression off."""
    return EarlyTomLlavaOnevision(
        build_model("tiny", seed=0), build_processor("tiny"), CompressionConfig(method="full")
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random-initialised checkpoint on disk (`earlytom-eval checkpoint --preset tiny`), one per session."""
    from earlytom_eval.models.presets import write_checkpoint

    return write_checkpoint("tiny", tmp_path_factory.mktemp("tiny-ckpt") / "tiny-ov", seed=0)
