"""SigLIP's attention-pooling (MAP) head for FastVID: probe attention and frame features of encoder outputs.

LLaVA-OneVision drops SigLIP's ``post_layernorm`` use and its ``head``; FastVID (LunarShen/FastVID @ a40a109,
``fastvid_llavaonevision/LLaVA-NeXT/llava/model/multimodal_encoder/siglip_encoder.py``; EarlyTom's port
viridisGreen/EarlyTom @ b909322 builds the same ``SigLipVisionAbstract``) loads them from
google/siglip-so400m-patch14-384 and applies them to the output of the layers LLaVA-OV runs:
``post_layernorm``, then one learned probe query attends to the patches (``nn.MultiheadAttention``, whose
default ``need_weights`` averages the probabilities over heads: ``[T, 1, S_v]``), then residual +
``MLP(LayerNorm(.))``; token 0 is the frame's global feature. Written here on plain torch ops (one query:
no SDPA needed); the weights keep transformers' ``SiglipMultiheadAttentionPoolingHead`` names.

Where the weights come from (``head_weights``): a local folder or hub id of a SigLIP checkpoint (only the
``vision_model.post_layernorm.*`` and ``vision_model.head.*`` tensors are read, through safetensors'
``safe_open``), ``auto`` (``fastvid_head/`` inside the LLaVA-OV folder, else :data:`DEFAULT_HEAD`), or
``random`` (seeded random weights: presets and tests). Shapes are checked against the LLaVA-OV vision config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..compression.config import ConfigError
from ..dtypes import resolve_dtype

__all__ = [
    "DEFAULT_HEAD",
    "HEAD_FOLDER",
    "AttentionPoolingHead",
    "head_shapes",
    "load_pooling_head",
    "random_head_state",
    "write_random_head",
]

#: The SigLIP checkpoint FastVID takes its head from (the tower LLaVA-OV was built on).
DEFAULT_HEAD = "google/siglip-so400m-patch14-384"
#: Folder inside a LLaVA-OV checkpoint that ``head_weights: auto`` uses when present.
HEAD_FOLDER = "fastvid_head"
#: Prefix of the head's tensors in a SigLIP checkpoint (``SiglipModel`` and ``SiglipVisionModel`` alike).
PREFIX = "vision_model."


def head_shapes(hidden: int, intermediate: int) -> dict[str, tuple[int, ...]]:
    """The tensors the head reads (names without :data:`PREFIX`) and their shapes."""
    return {
        "post_layernorm.weight": (hidden,),
        "post_layernorm.bias": (hidden,),
        "head.probe": (1, 1, hidden),
        "head.attention.in_proj_weight": (3 * hidden, hidden),
        "head.attention.in_proj_bias": (3 * hidden,),
        "head.attention.out_proj.weight": (hidden, hidden),
        "head.attention.out_proj.bias": (hidden,),
        "head.layernorm.weight": (hidden,),
        "head.layernorm.bias": (hidden,),
        "head.mlp.fc1.weight": (intermediate, hidden),
        "head.mlp.fc1.bias": (intermediate,),
        "head.mlp.fc2.weight": (hidden, intermediate),
        "head.mlp.fc2.bias": (hidden,),
    }


class AttentionPoolingHead(nn.Module):
    """``post_layernorm`` + SigLIP's multihead attention-pooling head.

    Args:
        hidden: D_v; intermediate: the MLP width; heads: attention heads; eps: LayerNorm epsilon;
        act: the MLP activation (SigLIP's ``gelu_pytorch_tanh``: tanh-approximated GELU).
    """

    def __init__(self, hidden: int, intermediate: int, heads: int, eps: float = 1e-6, act: str = "gelu_pytorch_tanh"):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.post_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.probe = nn.Parameter(torch.zeros(1, 1, hidden))
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * hidden, hidden))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * hidden))
        self.out_proj = nn.Linear(hidden, hidden)
        self.layernorm = nn.LayerNorm(hidden, eps=eps)
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)
        self.approximate = "tanh" if act in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast") else "none"
        if act not in ("gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
            raise ValueError(f"unsupported SigLIP activation {act!r} (allowed: gelu, gelu_pytorch_tanh)")

    @classmethod
    def from_vision_config(cls, vision_config: Any) -> AttentionPoolingHead:
        return cls(
            vision_config.hidden_size,
            vision_config.intermediate_size,
            vision_config.num_attention_heads,
            getattr(vision_config, "layer_norm_eps", 1e-6),
            getattr(vision_config, "hidden_act", "gelu_pytorch_tanh"),
        )

    def load_siglip_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Copy tensors named as in :func:`head_shapes` (transformers' names) into this module."""
        names = {
            "post_layernorm.weight": "post_layernorm.weight",
            "post_layernorm.bias": "post_layernorm.bias",
            "head.probe": "probe",
            "head.attention.in_proj_weight": "in_proj_weight",
            "head.attention.in_proj_bias": "in_proj_bias",
            "head.attention.out_proj.weight": "out_proj.weight",
            "head.attention.out_proj.bias": "out_proj.bias",
            "head.layernorm.weight": "layernorm.weight",
            "head.layernorm.bias": "layernorm.bias",
            "head.mlp.fc1.weight": "fc1.weight",
            "head.mlp.fc1.bias": "fc1.bias",
            "head.mlp.fc2.weight": "fc2.weight",
            "head.mlp.fc2.bias": "fc2.bias",
        }
        self.load_state_dict({ours: tensors[theirs] for theirs, ours in names.items()})

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: hidden ``[T, S_v, D_v]`` encoder output (before ``post_layernorm``).

        Returns:
            ``(probe attention [T, S_v] float32, head-averaged; frame features [T, D_v])``, in the head's dtype
            for the features (the input is cast to it).
        """
        frames, tokens, width = hidden.shape
        heads = self.heads
        x = self.post_layernorm(hidden.to(self.probe.dtype))
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        query = nn.functional.linear(self.probe[0], w_q, b_q).view(1, heads, 1, -1)  # [1, H, 1, d]
        keys = nn.functional.linear(x, w_k, b_k).view(frames, tokens, heads, -1).transpose(1, 2)  # [T, H, S, d]
        values = nn.functional.linear(x, w_v, b_v).view(frames, tokens, heads, -1).transpose(1, 2)
        scale = 1.0 / math.sqrt(width // heads)
        scores = (query.float() * scale) @ keys.float().transpose(-1, -2)  # [T, H, 1, S]
        probs = torch.softmax(scores, dim=-1)
        attended = (probs.to(values.dtype) @ values).transpose(1, 2).reshape(frames, 1, width)
        pooled = self.out_proj(attended)
        mlp = self.fc2(nn.functional.gelu(self.fc1(self.layernorm(pooled)), approximate=self.approximate))
        features = (pooled + mlp)[:, 0]
        return probs.mean(dim=1)[:, 0], features


def random_head_state(vision_config: Any, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random head tensors (float32, names as in a SigLIP checkpoint, :data:`PREFIX` included).

    Projections are N(0, 1/D) so the probe's attention is far from uniform; LayerNorms are near identity.
    """
    hidden, intermediate = vision_config.hidden_size, vision_config.intermediate_size
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in head_shapes(hidden, intermediate).items():
        if name.endswith("layernorm.weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif name.endswith("bias"):
            value = 0.1 * torch.randn(shape, generator=generator)
        elif name == "head.probe":
            value = torch.randn(shape, generator=generator)
        else:
            value = torch.randn(shape, generator=generator) / math.sqrt(shape[-1])
        out[PREFIX + name] = value
    return out


def write_random_head(
    folder: str | Path, vision_config: Any, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Write a random head as ``folder/model.safetensors`` (SigLIP names): what ``auto`` finds in a preset."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.safetensors"
    tensors = {k: v.to(dtype).contiguous() for k, v in random_head_state(vision_config, seed).items()}
    save_file(tensors, str(path), metadata={"format": "pt", "content": "random SigLIP pooling head (FastVID)"})
    return path


def load_pooling_head(
    head_weights: str, pretrained: str | Path, vision_config: Any, dtype: Any = None, seed: int = 0
) -> AttentionPoolingHead:
    """The head for ``head_weights`` (see the module docstring), checked against ``vision_config``, on CPU.

    ``dtype``: a torch dtype or name; None or ``auto``: the checkpoint's (float32 for ``random``).
    Raises:
        ConfigError: one line naming the folder or id when the head cannot be found or does not fit.
    """
    head = AttentionPoolingHead.from_vision_config(vision_config)
    if head_weights == "random":
        head.load_siglip_state({k.removeprefix(PREFIX): v for k, v in random_head_state(vision_config, seed).items()})
        stored = torch.float32
    else:
        folder, label = _resolve(head_weights, pretrained)
        tensors = _read_tensors(folder, label, vision_config)
        head.load_siglip_state(tensors)
        stored = next(iter(tensors.values())).dtype
    target = stored if dtype is None or dtype == "auto" else resolve_dtype(dtype)
    return head.to(target).eval().requires_grad_(False)


def _resolve(head_weights: str, pretrained: str | Path) -> tuple[Path, str]:
    """(local folder holding the head's safetensors, how to name it in an error)."""
    if head_weights == "auto":
        local = Path(pretrained) / HEAD_FOLDER
        if local.is_dir():
            return local, f"head_weights 'auto' ({local})"
        label = f"head_weights 'auto' (no {HEAD_FOLDER}/ in {pretrained}; hub id {DEFAULT_HEAD})"
        return _from_hub(DEFAULT_HEAD, label)
    path = Path(head_weights).expanduser()
    if path.is_dir():
        return path, f"head_weights folder {path}"
    if path.exists() or head_weights.startswith(("/", ".", "~")) or head_weights.count("/") != 1:
        raise ConfigError(f"invalid fastvid field 'head_weights': folder {head_weights!r} does not exist "
                          f"(allowed: a SigLIP checkpoint folder or hub id, 'auto', 'random')")
    return _from_hub(head_weights, f"head_weights hub id {head_weights}")


def _from_hub(repo_id: str, label: str) -> tuple[Path, str]:
    """The head's safetensors from the hub (or its local cache); only the files holding its tensors."""
    import json

    from huggingface_hub import hf_hub_download  # lazy: only a hub id needs it

    try:
        try:
            index = json.loads(Path(hf_hub_download(repo_id, "model.safetensors.index.json")).read_text())
            files = sorted({f for name, f in index["weight_map"].items() if _wanted(name)})
        except Exception:  # no index: one file
            files = ["model.safetensors"]
        paths = [Path(hf_hub_download(repo_id, name)) for name in files]
    except Exception as err:
        raise ConfigError(
            f"fastvid {label}: the SigLIP pooling head cannot be found ({type(err).__name__}); give a local "
            f"SigLIP folder in head_weights or put one in <checkpoint>/{HEAD_FOLDER}/"
        ) from None
    return paths[0].parent, label


def _wanted(name: str) -> bool:
    return name.startswith((PREFIX + "post_layernorm.", PREFIX + "head."))


def _read_tensors(folder: Path, label: str, vision_config: Any) -> dict[str, torch.Tensor]:
    """The head's tensors (names without :data:`PREFIX`) from the folder's safetensors, shapes checked."""
    from safetensors import safe_open

    expected = head_shapes(vision_config.hidden_size, vision_config.intermediate_size)
    found: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                name = key.removeprefix(PREFIX)
                if name in expected and name not in found:
                    found[name] = handle.get_tensor(key)
    missing = [name for name in expected if name not in found]
    if missing:
        raise ConfigError(
            f"fastvid {label}: no SigLIP pooling head there (its *.safetensors lack {PREFIX}{missing[0]}"
            + (f" and {len(missing) - 1} more)" if len(missing) > 1 else ")")
        )
    for name, shape in expected.items():
        if tuple(found[name].shape) != shape:
            raise ConfigError(
                f"fastvid {label}: {PREFIX}{name} has shape {list(found[name].shape)}, the model's vision tower "
                f"needs {list(shape)} (hidden {vision_config.hidden_size}, intermediate "
                f"{vision_config.intermediate_size})"
            )
    return found
