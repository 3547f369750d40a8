"""The typed configuration of a compression method.

One frozen dataclass, :class:`CompressionConfig`, carries every hyperparameter of a method. It is built
from keywords, from a flat YAML mapping (``configs/*.yaml``) or from ``key=value`` strings (command
lines, lmms-eval ``--model_args``), and it is validated when built: a bad value raises one
:class:`ConfigError` naming the field, the value and what is allowed. The one check that needs the
model (prune layers within the encoder's depth) is :meth:`CompressionConfig.check_encoder_depth`,
which the model loader calls after reading the checkpoint's ``config.json`` and before any weights load.

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .params import PARAMS_BY_METHOD, ConfigError, MethodParams, parse_param

__all__ = [
    "CompressionConfig",
    "ConfigError",
    "EARLYTOM_FIELDS",
    "LlmCut",
    "ModelFacts",
    "MERGE_MODES",
    "METHODS",
    "load_config",
]

#: Methods that can be named in ``method``; each has a class in :mod:`earlytom_eval.compression.registry`.
#: The peers' own hyperparameters are :mod:`.params` classes (``PARAMS_BY_METHOD``).
METHODS = ("full", "earlytom", "visionzip", "holitom", "fastvid", "fastv", "dycoke", "tome")
#: Stage 3 merge rules (``inner_merge``), implemented by :func:`earlytom_eval.compression.inner.merge_into_kept`.
MERGE_MODES = ("fold", "mean")
#: What an LLM cut does with the visual tokens it does not keep: merge them (``MERGE_MODES``) or drop them.
CUT_MODES = MERGE_MODES + ("drop",)
#: Fields that only EarlyTom (and ``full``'s stage-3 ablation) reads; a peer method's config may not set them.
EARLYTOM_FIELDS = (
    "tau", "max_window", "ema", "prune_layers", "D", "K", "beta", "inner_layer", "inner_ratio", "inner_merge"
)
#: Fields every method has.
COMMON_FIELDS = ("method", "retention", "num_frames", "name", "description")


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What a method's checks need to know of the model, read from its ``config.json`` before weights load.

    Attributes:
        encoder_layers: vision-encoder layers that run (up to the feature layer).
        llm_layers: decoder layers of the LLM.
        patch_grid: patches per side of a frame (27 for SigLIP at 384 px).
        pooled_grid: tokens per side after the 2x2 pooling (14).
    """

    encoder_layers: int
    llm_layers: int
    patch_grid: int = 27
    pooled_grid: int = 14

    @property
    def pooled_per_frame(self) -> int:
        return self.pooled_grid * self.pooled_grid


@dataclasses.dataclass(frozen=True)
class LlmCut:
    """Visual tokens cut inside the LLM: before layer ``layer`` (attention read at ``layer - 1``), a share
    ``ratio`` of them goes, merged into the kept ones (``fold``/``mean``) or dropped (``drop``)."""

    layer: int
    ratio: float
    mode: str = "fold"


def _field_error(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"invalid config field '{name}': {value!r} (allowed: {allowed})")


@dataclasses.dataclass(frozen=True)
class CompressionConfig:
    """Hyperparameters of one compression method (see ``README.md`` for each field's meaning).

    The defaults are the reference's VideoMME setting at 10% retention for LLaVA-OV-7B with 32 frames.
    ``method="full"`` keeps every token and ignores the other compression fields.
    """

    method: str = "earlytom"
    #: rho, the target fraction of visual tokens sent to the LLM, in (0, 1].
    retention: float = 0.10
    #: Similarity threshold of the coarse temporal segmentation, in [0, 1].
    tau: float = 0.3
    #: M, maximum window of a coarse segment (a segment holds at most M - 1 frames), >= 2.
    max_window: int = 6
    #: EMA factor of the running similarity in the coarse segmentation, in [0, 1].
    ema: float = 0.9
    #: 0-based encoder layers after which frames are merged (strictly increasing). Empty: no merging
    #: inside the encoder (the post-encoder ablation; segments and attention come from the last layer).
    prune_layers: tuple[int, ...] = (10, 21, 23)
    #: Fraction of a dynamic frame's budget given to DPC-KNN contextual tokens, in [0, 1); 0 = off.
    D: float = 0.0
    #: Neighbourhood size of the DPC-KNN density, >= 1.
    K: int = 7
    #: Weight of a cluster centre against its members' mean in a contextual token, in [0, 1].
    beta: float = 0.6
    #: Frames sampled uniformly from a video (T0), >= 1.
    num_frames: int = 32
    #: Stage 3, k: LLM layer before which visual tokens merge (attention read at layer k - 1); None = off.
    inner_layer: int | None = None
    #: Stage 3, r: fraction of the visual tokens merged away at layer k, in [0, 1).
    inner_ratio: float = 0.5
    #: Stage 3 merge rule: "fold" (the reference's sequential halving) or "mean" (plain group mean).
    inner_merge: str = "fold"
    name: str = ""
    description: str = ""
    #: A peer method's own hyperparameters (:mod:`.params`); None for ``full`` and ``earlytom``.
    params: MethodParams | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prune_layers", _as_layers(self.prune_layers))
        _validate(self)
        params_class = PARAMS_BY_METHOD.get(self.method)
        if params_class is None:
            if self.params is not None:
                raise ConfigError(f"method '{self.method}' takes no peer parameters, got {type(self.params).__name__}")
        else:
            params = self.params
            if params is None or isinstance(params, Mapping):
                params = _build_params(params_class, dict(params or {}))
            elif not isinstance(params, params_class):
                raise ConfigError(f"method '{self.method}' needs {params_class.__name__}, got {type(params).__name__}")
            object.__setattr__(self, "params", params)
            # EarlyTom's encoder and LLM stages are off for a peer method (its own stages come from params).
            object.__setattr__(self, "prune_layers", ())
            object.__setattr__(self, "inner_layer", None)
        if not self.name:
            object.__setattr__(self, "name", self.default_name())

    # ----------------------------------------------------------------------------------------- build
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The dataclass's own fields (``params`` excluded): EarlyTom's and the common ones."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "params")

    @classmethod
    def fields_for(cls, method: str) -> tuple[str, ...]:
        """The flat keys a config of ``method`` may set."""
        params_class = PARAMS_BY_METHOD.get(method)
        if params_class is None:
            return cls.field_names()
        return COMMON_FIELDS + params_class.field_names()

    @classmethod
    def all_field_names(cls) -> tuple[str, ...]:
        """Every flat key of any method."""
        names = list(cls.field_names())
        for params_class in PARAMS_BY_METHOD.values():
            names += [n for n in params_class.field_names() if n not in names]
        return tuple(names)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **overrides: Any) -> CompressionConfig:
        """Build from a flat mapping plus keyword overrides; unknown keys are an error.

        For a peer method, the keys of its parameter class (:mod:`.params`) go to ``params``.
        """
        bad_keys = [key for key in values if not isinstance(key, str)]
        if bad_keys:
            raise ConfigError(
                f"config field names must be strings, got {bad_keys[0]!r} (allowed: {', '.join(cls.field_names())})"
            )
        merged = {**dict(values), **overrides}
        method = merged.get("method", "earlytom")
        if not isinstance(method, str) or method not in METHODS:
            raise _field_error("method", method, " | ".join(METHODS))
        base, params = _split_fields(method, merged)
        return cls(**base, params=params if method in PARAMS_BY_METHOD else None)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> CompressionConfig:
        """Read a flat YAML mapping of config fields; keyword overrides win over the file."""
        import yaml

        path = Path(path)
        try:
            found = path.is_file()
        except OSError as err:  # e.g. a name too long for the file system
            raise ConfigError(f"config file '{path}' cannot be read: {_one_line(err.strerror or err)}") from None
        if not found:
            raise ConfigError(f"config file not found: '{path}'")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file '{path}' cannot be read: {_one_line(err)}") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(_yaml_error(path, err)) from None
        except (ValueError, RecursionError) as err:  # yaml's constructors raise these on some odd scalars
            raise ConfigError(f"config file '{path}' is not valid YAML: {_one_line(err)}") from None
        if values is None:
            raise ConfigError(
                f"config file '{path}' is empty (allowed: a flat mapping of config fields, e.g. 'retention: 0.1')"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"config file '{path}' must hold a flat mapping of fields, got {type(values).__name__}")
        if not values.get("name"):
            values["name"] = path.stem
        return cls.from_mapping(values, **overrides)

    def replace(self, **changes: Any) -> CompressionConfig:
        """A copy with some flat fields changed (validated); the name is re-derived unless given.

        Changing ``method`` starts from that method's defaults for everything not given.
        """
        if "name" not in changes and self.name == self.default_name():
            changes["name"] = ""
        if "method" in changes and changes["method"] != self.method:
            keep = {k: v for k, v in self.to_dict().items() if k in ("retention", "num_frames", "description")}
            return CompressionConfig.from_mapping({**keep, "name": self.name, **changes})
        return CompressionConfig.from_mapping({**self.to_dict(), **changes})

    def with_overrides(self, assignments: Mapping[str, str]) -> CompressionConfig:
        """Apply ``field -> string`` overrides as they come from a command line (``prune_layers=8;21;23``)."""
        method = assignments.get("method", self.method)
        return self.replace(**{key: parse_field_value(key, text, method) for key, text in assignments.items()})

    # ------------------------------------------------------------------------------------- queries
    @property
    def compresses(self) -> bool:
        return self.method != "full"

    def default_name(self) -> str:
        return "full" if self.method == "full" else f"{self.method}_r{self.retention:g}"

    def llm_cuts(self) -> tuple[LlmCut, ...]:
        """Where visual tokens are cut inside the LLM during the prefill (in layer order)."""
        params = self.params
        if self.method == "holitom" and params.inner_layer is not None:
            return (LlmCut(params.inner_layer, params.inner_ratio, "fold"),)
        if self.method == "fastv":
            return (LlmCut(params.layer, 1.0 - self.retention, "drop"),)
        if self.inner_layer is not None:
            return (LlmCut(self.inner_layer, self.inner_ratio, self.inner_merge),)
        return ()

    def check_encoder_depth(self, num_layers: int) -> None:
        """Raise ConfigError if a prune layer does not exist in an encoder of ``num_layers`` layers."""
        if not self.compresses:
            return
        bad = [layer for layer in self.prune_layers if layer >= num_layers]
        if bad:
            raise _field_error(
                "prune_layers",
                list(self.prune_layers),
                f"0-based layer indices below the encoder's depth {num_layers}, i.e. 0..{num_layers - 1}",
            )

    @property
    def merges_in_llm(self) -> bool:
        """Whether visual tokens are cut inside the LLM (EarlyTom's stage 3, HoliTom's inner stage, FastV)."""
        return bool(self.llm_cuts())

    def check_llm_depth(self, num_layers: int) -> None:
        """Raise ConfigError if an LLM cut (or DyCoke's decode layer) is not inside an LLM of ``num_layers``."""
        field = {"holitom": "inner_layer", "fastv": "layer"}.get(self.method, "inner_layer")
        allowed = f"an LLM layer index in 1..{num_layers - 1} (the LLM has {num_layers})"
        owner = self.method if self.params is not None else "config"
        for cut in self.llm_cuts():
            if cut.layer > num_layers - 1:
                raise ConfigError(f"invalid {owner} field '{field}': {cut.layer!r} (allowed: {allowed})")
        if self.method == "dycoke" and self.params.decode_layer > num_layers - 1:
            raise ConfigError(f"invalid dycoke field 'decode_layer': {self.params.decode_layer!r} (allowed: {allowed})")

    def to_dict(self) -> dict[str, Any]:
        """The flat fields of this method (what a YAML file of it holds)."""
        if self.params is not None:
            values = {name: getattr(self, name) for name in COMMON_FIELDS}
            values.update(self.params.to_dict())
            return values
        values = {name: getattr(self, name) for name in self.field_names()}
        values["prune_layers"] = list(self.prune_layers)
        return values

    def fingerprint(self) -> str:
        """A short hash of the fields that change the computation (not name/description)."""
        values = self.to_dict()
        values.pop("name")
        values.pop("description")
        if not self.compresses:
            values = {"method": self.method, "num_frames": self.num_frames}
            if self.merges_in_llm:
                values.update(inner_layer=self.inner_layer, inner_ratio=self.inner_ratio, inner_merge=self.inner_merge)
        blob = json.dumps(values, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def load_config(
    source: str | Path | CompressionConfig | Mapping[str, Any] | None = None, **overrides: Any
) -> CompressionConfig:
    """One entry point: a config object, a YAML path, a mapping, or None (defaults), plus keyword overrides."""
    if source is None:
        return CompressionConfig.from_mapping({}, **overrides)
    if isinstance(source, CompressionConfig):
        return source.replace(**overrides) if overrides else source
    if isinstance(source, Mapping):
        return CompressionConfig.from_mapping(source, **overrides)
    return CompressionConfig.from_yaml(source, **overrides)


# ------------------------------------------------------------------------------------ parsing
def _one_line(err: BaseException | str) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _yaml_error(path: Path, err: Exception) -> str:
    """One line naming the file, the line and column (1-based, from yaml's ``problem_mark``) and the problem."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"'{path}'" if mark is None else f"'{path}', line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or str(err).splitlines()[0]
    return f"config file {where} is not valid YAML: {_one_line(problem)}"


_INT_FIELDS = {"max_window", "K", "num_frames"}
_FLOAT_FIELDS = {"retention", "tau", "ema", "D", "beta", "inner_ratio"}


def parse_field_value(name: str, text: str, method: str | None = None) -> Any:
    """Parse a command-line string for field ``name`` of ``method`` (lists use ';' or ',' between items).

    Without ``method``, any method's field is accepted (the first method that has it decides its type).
    """
    params_class = PARAMS_BY_METHOD.get(method) if method else None
    if params_class is not None and name in params_class.field_names():
        return parse_param(params_class, name, text)
    allowed = CompressionConfig.fields_for(method) if method in METHODS else CompressionConfig.all_field_names()
    if name not in allowed:
        raise ConfigError(f"unknown config field {name!r} (allowed: {', '.join(allowed)})")
    if name not in CompressionConfig.field_names():
        owner = next(cls for cls in PARAMS_BY_METHOD.values() if name in cls.field_names())
        return parse_param(owner, name, text)
    text = str(text).strip()
    if name == "prune_layers":
        items = [item for item in text.replace(",", ";").strip("[]").split(";") if item.strip()]
        try:
            return tuple(int(item) for item in items)
        except ValueError:
            raise _field_error(name, text, "integers separated by ';', e.g. 8;21;23") from None
    if name == "inner_layer":
        if text.lower() in ("", "none", "null", "off"):
            return None
        try:
            return int(text)
        except ValueError:
            raise _field_error(name, text, "an LLM layer index, or none") from None
    if name in _INT_FIELDS:
        try:
            return int(text)
        except ValueError:
            raise _field_error(name, text, "an integer") from None
    if name in _FLOAT_FIELDS:
        try:
            return float(text)
        except ValueError:
            raise _field_error(name, text, "a number") from None
    return text


def _split_fields(method: str, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat keys -> (dataclass fields, peer parameters); a key the method does not have is an error."""
    allowed = CompressionConfig.fields_for(method)
    unknown = [key for key in values if key not in allowed]
    if unknown:
        others = [key for key in unknown if key in CompressionConfig.all_field_names()]
        if others:
            raise ConfigError(
                f"config field(s) {', '.join(map(repr, others))} do not apply to method '{method}' "
                f"(its fields: {', '.join(allowed)})"
            )
        raise ConfigError(f"unknown config field(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(allowed)})")
    params_class = PARAMS_BY_METHOD.get(method)
    if params_class is None:
        return values, {}
    base = {key: value for key, value in values.items() if key in COMMON_FIELDS}
    params = {key: value for key, value in values.items() if key not in COMMON_FIELDS}
    return base, params


def _build_params(params_class: type[MethodParams], values: dict[str, Any]) -> MethodParams:
    unknown = sorted(set(values) - set(params_class.field_names()))
    if unknown:
        raise ConfigError(
            f"unknown {params_class.method} field(s) {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(params_class.field_names())})"
        )
    try:
        return params_class(**values)
    except TypeError as err:  # pragma: no cover - dataclass signature errors are caught above
        raise ConfigError(f"invalid {params_class.method} fields: {err}") from None


def _as_layers(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        return parse_field_value("prune_layers", value)
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise _field_error("prune_layers", value, "a list of 0-based encoder layer indices") from None
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        raise _field_error("prune_layers", list(items), "a list of integers")
    return items


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(cfg: CompressionConfig) -> None:
    if cfg.method not in METHODS:
        raise _field_error("method", cfg.method, " | ".join(METHODS))
    if not _is_number(cfg.retention) or not 0.0 < cfg.retention <= 1.0:
        raise _field_error("retention", cfg.retention, "a number in (0, 1]")
    if not _is_number(cfg.tau) or not 0.0 <= cfg.tau <= 1.0:
        raise _field_error("tau", cfg.tau, "a number in [0, 1]")
    if not _is_int(cfg.max_window) or cfg.max_window < 2:
        raise _field_error("max_window", cfg.max_window, "an integer >= 2")
    if not _is_number(cfg.ema) or not 0.0 <= cfg.ema <= 1.0:
        raise _field_error("ema", cfg.ema, "a number in [0, 1]")
    layers = cfg.prune_layers
    if any(layer < 0 for layer in layers):
        raise _field_error("prune_layers", list(layers), "0-based layer indices >= 0")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise _field_error("prune_layers", list(layers), "strictly increasing layer indices, e.g. [8, 21, 23]")
    if not _is_number(cfg.D) or not 0.0 <= cfg.D < 1.0:
        raise _field_error("D", cfg.D, "a number in [0, 1)")
    if not _is_int(cfg.K) or cfg.K < 1:
        raise _field_error("K", cfg.K, "an integer >= 1")
    if not _is_number(cfg.beta) or not 0.0 <= cfg.beta <= 1.0:
        raise _field_error("beta", cfg.beta, "a number in [0, 1]")
    if not _is_int(cfg.num_frames) or cfg.num_frames < 1:
        raise _field_error("num_frames", cfg.num_frames, "an integer >= 1")
    if cfg.inner_layer is not None and (not _is_int(cfg.inner_layer) or cfg.inner_layer < 1):
        raise _field_error("inner_layer", cfg.inner_layer, "null (stage 3 off) or an LLM layer index >= 1")
    if not _is_number(cfg.inner_ratio) or not 0.0 <= cfg.inner_ratio < 1.0:
        raise _field_error("inner_ratio", cfg.inner_ratio, "a number in [0, 1)")
    if cfg.inner_merge not in MERGE_MODES:
        raise _field_error("inner_merge", cfg.inner_merge, " | ".join(MERGE_MODES))
    for text_field in ("name", "description"):
        if not isinstance(getattr(cfg, text_field), str):
            raise _field_error(text_field, getattr(cfg, text_field), "a string")
