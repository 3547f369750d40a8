"""The hyperparameters of the peer methods, one typed, validated dataclass per method.

A config file stays flat (``method: holitom``, ``tau: 0.65``, ...): :class:`~.config.CompressionConfig`
routes every key that belongs to the method's parameter class here, so ``cfg.params.tau`` is HoliTom's tau
and ``cfg.tau`` stays EarlyTom's. A bad value raises one :class:`ConfigError` line naming the field, the
value and what is allowed. Defaults are each reference's LLaVA-OV-7B setting (``../shared/spec`` terms:
``peer-methods.md``); values that the reference derives from the retention ratio are None here and
resolved by the method from ``retention`` (documented per field).

Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

__all__ = [
    "DyCokeParams",
    "FastVIDParams",
    "FastVParams",
    "HoliTomParams",
    "MethodParams",
    "PARAMS_BY_METHOD",
    "ConfigError",
    "ToMeParams",
    "VisionZipParams",
    "parse_param",
]


class ConfigError(ValueError):
    """A configuration value is invalid. The message is one line: field, value, what is allowed."""


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# A rule: (kind used to parse command-line text, check, allowed text for the error).
_RULES: dict[str, tuple[str, Any, str]] = {
    "unit": ("float", lambda v: _number(v) and 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "unit_open": ("float", lambda v: _number(v) and 0.0 <= v < 1.0, "a number in [0, 1)"),
    "unit_pos": ("float", lambda v: _number(v) and 0.0 < v <= 1.0, "a number in (0, 1]"),
    "pos_int": ("int", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "min2_int": ("int", lambda v: _integer(v) and v >= 2, "an integer >= 2"),
    "nonneg_int": ("int", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "opt_pos_int": ("opt_int", lambda v: v is None or (_integer(v) and v >= 1), "null or an integer >= 1"),
    "opt_nonneg_int": ("opt_int", lambda v: v is None or (_integer(v) and v >= 0), "null or an integer >= 0"),
    "opt_unit": ("opt_float", lambda v: v is None or (_number(v) and 0.0 <= v <= 1.0), "null or a number in [0, 1]"),
    "bool": ("bool", lambda v: isinstance(v, bool), "true or false"),
    "number": ("float", _number, "a finite number"),
    "text": ("str", lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
}


@dataclasses.dataclass(frozen=True)
class MethodParams:
    """Base: validation by the per-field rules in ``RULES`` (field -> rule name of ``_RULES``)."""

    RULES: ClassVar[dict[str, str]] = {}
    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, rule in self.RULES.items():
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and _RULES[rule][0] in ("float", "opt_float"):
                object.__setattr__(self, name, float(value))
                value = float(value)
            if not _RULES[rule][1](value):
                raise ConfigError(
                    f"invalid {self.method} field '{name}': {value!r} (allowed: {_RULES[rule][2]})"
                )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class VisionZipParams(MethodParams):
    """VisionZip (HoliTom's LLaVA-OV port): per frame ``d`` dominant + ``c`` contextual tokens of the 196."""

    method: ClassVar[str] = "visionzip"
    RULES: ClassVar[dict[str, str]] = {"spatial_tokens": "opt_pos_int", "dominant_ratio": "unit"}
    #: ``SPATIAL_TOKENS`` S_k, tokens kept per frame (20/30/40/50 at rho 0.10/0.15/0.20/0.25 in the
    #: reference scripts); null: ``max(1, round(S * retention))``.
    spatial_tokens: int | None = None
    #: ``DOMINANT_RATIO``: ``d = int(S_k * ratio)`` dominant tokens, the rest contextual.
    dominant_ratio: float = 54 / 64


@dataclasses.dataclass(frozen=True)
class HoliTomParams(MethodParams):
    """HoliTom: outer stage (DP windows, static clustering, dynamic top-k) + inner merge inside the LLM."""

    method: ClassVar[str] = "holitom"
    RULES: ClassVar[dict[str, str]] = {
        "tau": "unit", "beta": "unit", "K": "pos_int", "D": "unit_open", "max_window": "min2_int",
        "inner_layer": "opt_pos_int", "inner_ratio": "unit_open", "density_noise": "bool", "seed": "nonneg_int",
    }
    #: ``T``: similarity threshold of a static position (0.65 at rho 0.10, 0.80 above).
    tau: float = 0.8
    #: ``BETA``: weight of a cluster centre against its members' mean.
    beta: float = 0.6
    #: ``K``: neighbours of the DPC-kNN density (``min(K, clusters)``).
    K: int = 7
    #: ``D``: share of dynamic tokens given to contextual tokens (0 in every reference run; only 0 is run).
    D: float = 0.0
    #: ``MAX_WINDOW_SIZE``: the longest temporal window.
    max_window: int = 1024
    #: ``HOLITOM_k``: LLM layer whose input is merged (attention read at layer k - 1); null: "w/o M".
    inner_layer: int | None = 18
    #: ``HOLITOM_r``: share of the visual tokens merged away at the inner layer.
    inner_ratio: float = 0.5
    #: Add the reference's ``1e-6 * U(0, 1)`` density noise (seeded by ``seed``); false: none.
    density_noise: bool = True
    seed: int = 1234


@dataclasses.dataclass(frozen=True)
class FastVIDParams(MethodParams):
    """FastVID: DySeg on frame global features, salient tokens by probe attention, density contexts."""

    method: ClassVar[str] = "fastvid"
    RULES: ClassVar[dict[str, str]] = {
        "c": "pos_int", "tau": "unit", "p": "pos_int", "beta": "unit", "d": "unit_open", "k": "pos_int",
        "density_noise": "bool", "seed": "nonneg_int", "head_weights": "text",
    }
    #: ``DYSET_C``: at least c segments.
    c: int = 8
    #: ``tau``: a frame pair below this global-feature similarity is cut.
    tau: float = 0.9
    #: ``DTM_P``: anchor stride inside a segment.
    p: int = 4
    #: ``DTM_B``: weight floor of a context token against its members' mean.
    beta: float = 0.6
    #: ``D``: share of a frame's budget given to density contexts.
    d: float = 0.4
    #: Neighbours of the DPC density (self included).
    k: int = 4
    density_noise: bool = True
    seed: int = 1234
    #: Where SigLIP's attention-pooling head comes from (LLaVA-OV drops it): a hub id or local folder of
    #: a SigLIP checkpoint, ``auto`` (``fastvid_head/`` inside the LLaVA-OV folder, else the hub id), or
    #: ``random`` (random weights: presets and tests only).
    head_weights: str = "auto"


@dataclasses.dataclass(frozen=True)
class FastVParams(MethodParams):
    """FastV: drop visual tokens at LLM layer K by the last prompt token's attention at layer K - 1."""

    method: ClassVar[str] = "fastv"
    RULES: ClassVar[dict[str, str]] = {"layer": "pos_int"}
    #: ``fastv_k`` K (the paper's 2); layers >= K see ``round(N * retention)`` visual tokens (R = 1 - rho).
    layer: int = 2


@dataclasses.dataclass(frozen=True)
class DyCokeParams(MethodParams):
    """DyCoke: stage 1 prunes paired frames before the LLM; stage 2 prunes the KV cache while decoding."""

    method: ClassVar[str] = "dycoke"
    RULES: ClassVar[dict[str, str]] = {
        "ttm_k": "opt_unit", "decode_layer": "pos_int", "decode_prune": "unit_open",
        "decode_threshold": "number", "decode_pruning": "bool",
    }
    #: ``dycoke_k`` K of stage 1; null: the K whose token count comes closest to ``retention`` (1.0 when
    #: the ratio is below DyCoke's floor of about 28 %: tables show the retention reached).
    ttm_k: float | None = None
    #: ``dycoke_l`` L: layers >= L attend to the pruned cache while decoding.
    decode_layer: int = 3
    #: ``dycoke_p`` P: share of the image cache pruned at a decode step (lmms-eval default 0.8).
    decode_prune: float = 0.8
    #: Attention-row similarity at or above which a step prunes nothing (reference quirk).
    decode_threshold: float = 0.9
    #: Stage 2 on (true) or off.
    decode_pruning: bool = True


@dataclasses.dataclass(frozen=True)
class ToMeParams(MethodParams):
    """ToMe inside every SigLIP layer (EarlyTom's port): bipartite soft matching on the keys."""

    method: ClassVar[str] = "tome"
    RULES: ClassVar[dict[str, str]] = {"merge_num": "opt_nonneg_int", "inflect": "number", "class_token": "bool"}
    #: ``MERGE_NUM``: tokens merged away per frame over all layers; null: the value whose token count into
    #: the LLM comes closest to ``retention``.
    merge_num: int | None = None
    #: Inflection of the per-layer schedule (the port's -0.5).
    inflect: float = -0.5
    #: Protect patch 0 as if it were a CLS token (the port's ``class_token=True``, reference quirk).
    class_token: bool = True


PARAMS_BY_METHOD: dict[str, type[MethodParams]] = {
    cls.method: cls
    for cls in (VisionZipParams, HoliTomParams, FastVIDParams, FastVParams, DyCokeParams, ToMeParams)
}


def parse_param(cls: type[MethodParams], name: str, text: str) -> Any:
    """Parse command-line text for field ``name`` of ``cls`` by its rule's kind."""
    kind, _, allowed = _RULES[cls.RULES[name]]
    text = str(text).strip()
    if kind.startswith("opt_"):
        if text.lower() in ("", "none", "null", "off"):
            return None
        kind = kind[4:]
    if kind == "str":
        return text
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    else:
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            pass
    raise ConfigError(f"invalid {cls.method} field '{name}': {text!r} (allowed: {allowed})")
