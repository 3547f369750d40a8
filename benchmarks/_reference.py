"""Loading the EarlyTom reference code's stage functions from a checkout that stays outside this repository.

Used by ``benchmarks/vs_reference.py`` only. The reference (viridisGreen/EarlyTom) patches LLaVA-NeXT, so its
stage code sits inside classes that import LLaVA-NeXT, ipdb, triton and ToMe. Nothing of that is needed for
the stage functions themselves, so:

- stage 1: the methods ``compression``, ``coarse_segment`` and ``fine_segment`` of ``SigLipEncoder`` in
  ``LLaVA-NeXT/llava/model/multimodal_encoder/siglip_encoder.py`` are taken verbatim from the file's syntax
  tree into a small class holding the attributes they read (``ema``, ``mode``, ``max_window``);
- stage 2: ``earlytom/llava_arch.py`` is imported as a module with stub modules for ``llava.*`` and ``ipdb``
  (its module-level imports; the stage-2 methods use none of them);
- stage 3: the merge is inline in ``Qwen2Model_earlytom.forward`` (``earlytom/modeling_qwen2.py``); the
  statements of the ``layer_idx == INNER_k`` branch from the top-k through the final gather are taken
  verbatim from the syntax tree and wrapped into a function of the variables they read.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import subprocess
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

SIGLIP = "LLaVA-NeXT/llava/model/multimodal_encoder/siglip_encoder.py"
ARCH = "earlytom/llava_arch.py"
QWEN2 = "earlytom/modeling_qwen2.py"
STAGE1_METHODS = ("compression", "coarse_segment", "fine_segment")


def reference_commit(root: Path) -> str | None:
    """The checkout's commit, when it is a git work tree."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


class ReferenceStage1:
    """Holds the reference encoder's stage-1 methods; attributes as its ``__init__`` sets them."""

    def __init__(self, ema: float, max_window: int, mode: str = "mixing"):
        self.ema = ema
        self.max_window = max_window
        self.mode = mode


def load_stage1(root: Path) -> type:
    """A subclass of :class:`ReferenceStage1` carrying the reference's own stage-1 methods."""
    path = root / SIGLIP
    tree = ast.parse(path.read_text(), filename=str(path))
    encoder = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SigLipEncoder")
    methods = [n for n in encoder.body if isinstance(n, ast.FunctionDef) and n.name in STAGE1_METHODS]
    if {m.name for m in methods} != set(STAGE1_METHODS):
        raise RuntimeError(f"{path}: SigLipEncoder lacks one of {STAGE1_METHODS}")
    cls = ast.ClassDef(name="RefStage1", bases=[ast.Name("ReferenceStage1", ast.Load())], keywords=[],
                       body=methods, decorator_list=[], type_params=[])
    module = ast.fix_missing_locations(ast.Module(body=[cls], type_ignores=[]))
    namespace = {"torch": torch, "F": F, "ReferenceStage1": ReferenceStage1}
    exec(compile(module, str(path), "exec"), namespace)
    return namespace["RefStage1"]


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def load_arch(root: Path) -> type:
    """``LlavaMetaForCausalLM_earlytom`` from ``earlytom/llava_arch.py``, imported with stubbed LLaVA-NeXT/ipdb."""
    stubs = {
        "llava": _stub("llava"),
        "llava.constants": _stub("llava.constants", IGNORE_INDEX=-100, IMAGE_TOKEN_INDEX=-200,
                                 DEFAULT_IMAGE_PATCH_TOKEN="<im_patch>", DEFAULT_IM_START_TOKEN="<im_start>",
                                 DEFAULT_IM_END_TOKEN="<im_end>"),
        "llava.mm_utils": _stub("llava.mm_utils", get_anyres_image_grid_shape=None),
        "llava.utils": _stub("llava.utils", rank0_print=lambda *a, **k: None, rank_print=lambda *a, **k: None),
        "ipdb": _stub("ipdb", set_trace=lambda *a, **k: None),
    }
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location("earlytom_reference_llava_arch", root / ARCH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module.LlavaMetaForCausalLM_earlytom


class ReferenceStage2:
    """The reference's stage 2 for one video, as ``prepare_inputs_labels_for_multimodal`` drives it."""

    def __init__(self, arch_cls: type):
        self.arch = arch_cls.__new__(arch_cls)  # the methods used read no instance state

    def __call__(self, pooled, attn, selected_frames, init_frames, retain_ratio, D=0.0, Beta=0.6, K=7):
        # The glue below is the reference's loop (earlytom/llava_arch.py, prepare_inputs_labels_for_multimodal).
        reduced_frames, seq_len, _ = pooled.shape
        total_tokens = init_frames * seq_len
        reduced_tokens = (init_frames - reduced_frames) * seq_len
        retain_ratio = min(retain_ratio / ((total_tokens - reduced_tokens) / total_tokens), 1)
        static_feat, static_attn, static_pos, dynamic_feat, dynamic_attn, dynamic_pos = (
            self.arch.divided_static_dynamic(pooled, attn, selected_frames)
        )
        segment_features = []
        for idx, (start, end) in enumerate(selected_frames):
            window_size = end - start + 1
            segment_features.append(
                self.arch.spatial_compression(
                    static_feat[idx], static_attn[idx], dynamic_feat[idx], dynamic_attn[idx],
                    static_pos[idx], dynamic_pos[idx],
                    window_size, retain_ratio, D, Beta, K, pooled.dtype, "one_token",
                )
            )
        return torch.cat(segment_features, dim=0)


def load_stage3(root: Path):
    """The reference's stage-3 merge statements as ``f(hidden_states, scores, start, length, ratio, seq_len)``.

    ``hidden_states`` ``[1, L, D]`` is modified in place (as in the reference); returns the reduced
    ``hidden_states[:, keep_indexs, :]``.
    """
    path = root / QWEN2
    tree = ast.parse(path.read_text(), filename=str(path))
    branch = None
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).startswith("layer_idx == INNER_k and"):
            branch = node
            break
    if branch is None:
        raise RuntimeError(f"{path}: no `layer_idx == INNER_k` branch")
    body = branch.body
    first = next(i for i, s in enumerate(body) if "top_attention_rank_index" in ast.unparse(s))
    gather = "hidden_states = hidden_states[:, keep_indexs"
    last = next(i for i, s in enumerate(body) if ast.unparse(s).startswith(gather))
    statements = body[first : last + 1]
    source = "\n".join(ast.unparse(s) for s in statements)
    func = (
        "def reference_stage3(hidden_states, last_layer_attention_avg_last_tok_image, INNER_image_token_start_index,"
        " INNER_image_token_length, INNER_r, seq_length_with_past):\n"
        + "\n".join("    " + line for line in source.splitlines())
        + "\n    return hidden_states\n"
    )
    namespace = {"torch": torch, "math": math}
    exec(compile(func, str(path), "exec"), namespace)
    return namespace["reference_stage3"], source
