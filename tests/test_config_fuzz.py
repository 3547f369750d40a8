"""Fuzzing the config layer: random YAML documents, `--set` overrides and lmms-eval `--model_args` strings give a
valid config or one `ConfigError` (or, for model_args, another one-line bad-input error), never a traceback."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from earlytom_eval.compression.config import CompressionConfig, ConfigError
from earlytom_eval.lmms.model_args import BAD_INPUT, ModelArgs, parse_model_args

FIELDS = CompressionConfig.field_names()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["full", "earlytom", "fold", "mean", "8;21;23", "none", "0.1", "1e400"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                             max_size=3), max_leaves=8)
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=12), st.integers(), st.booleans(), st.none())
#: Mappings of (mostly) field names to anything, dumped as YAML.
documents = st.one_of(
    st.dictionaries(keys, values, max_size=6).map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    values.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
)
yaml_chars = string.ascii_letters + string.digits + " \t\n:-[]{},#&*!|>'\"%@`?.;=_~"
#: Raw text: YAML syntax errors, tags, anchors, tabs, odd scalars.
raw_yaml = st.one_of(
    st.text(alphabet=yaml_chars, max_size=80),
    st.text(max_size=40),
    st.lists(st.tuples(st.sampled_from(FIELDS), st.text(alphabet=yaml_chars, max_size=12)), max_size=5).map(
        lambda items: "".join(f"{k}: {v}\n" for k, v in items)),
)


def _is_one_line(err: BaseException) -> bool:
    text = str(err)
    return bool(text) and "\n" not in text and "\r" not in text


def _assert_config_or_error(build) -> None:
    try:
        cfg = build()
    except ConfigError as err:
        assert _is_one_line(err), repr(str(err))
        return
    assert isinstance(cfg, CompressionConfig)
    assert CompressionConfig.from_mapping({k: v for k, v in cfg.to_dict().items()}) == cfg  # valid, round-trips


@FUZZ
@given(text=st.one_of(documents, raw_yaml))
def test_random_yaml_documents_give_a_config_or_one_config_error(tmp_path_factory, text):
    path: Path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(text, encoding="utf-8")
    _assert_config_or_error(lambda: CompressionConfig.from_yaml(path))


@FUZZ
@given(assignments=st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)),
                                   st.one_of(st.text(max_size=20), st.sampled_from(["8;21;23", "[1,2]", "none", "1e5",
                                                                                     "nan", "-1", "0", "1", "2.5"])),
                                   max_size=5))
def test_random_set_overrides_give_a_config_or_one_config_error(assignments):
    _assert_config_or_error(lambda: CompressionConfig().with_overrides(assignments))


NAMED = ("pretrained", "config", "max_frames_num", "device", "dtype", "attn_implementation", "device_map",
         "video_backend", "batch_size", "warmup")
arg_keys = st.one_of(st.sampled_from([*NAMED, *FIELDS]), st.text(alphabet=string.ascii_letters + "_", min_size=1,
                                                                   max_size=10))
arg_values = st.one_of(
    st.text(alphabet=string.printable.replace(",", "").replace("=", ""), max_size=15),
    st.sampled_from(["cpu", "cuda", "float32", "fp8", "auto", "sdpa", "full", "earlytom_r0.10", "0", "0.5", "30",
                     "8;21;23", "True", "None", "/no/such/ckpt", "org/name", "opencv", "decord", "-3", "1e400"]),
)
model_args = st.lists(st.tuples(arg_keys, arg_values), max_size=6).map(
    lambda items: ",".join(f"{k}={v}" for k, v in items))


@FUZZ
@given(text=model_args)
def test_random_model_args_give_checked_args_or_one_line(text):
    from lmms_eval.utils import simple_parse_args_string

    try:
        parsed = simple_parse_args_string(text)  # lmms-eval's own parsing, before our code sees anything
    except Exception:
        assume(False)
    named = {"pretrained": "org/name", "config": None, "max_frames_num": None, "device": "cpu", "dtype": "auto",
             "attn_implementation": "sdpa", "device_map": None, "video_backend": "auto", "batch_size": 1,
             "warmup": 1}
    named.update({k: v for k, v in parsed.items() if k in named})
    overrides = {k: v for k, v in parsed.items() if k not in named}
    try:
        args = parse_model_args(**named, overrides=overrides, cuda_available=lambda: False)
    except BAD_INPUT as err:
        assert _is_one_line(err), repr(str(err))
        return
    assert isinstance(args, ModelArgs) and isinstance(args.config, CompressionConfig)


@pytest.mark.parametrize("text", ["retention: [", "a: b: c", "- 1\n- 2", "!!python/object:os.system x",
                                  "retention: 1e400", "? [1, 2]\n: 3", "1: 2", "prune_layers: {a: 1}",
                                  "\t", "name: 5", "retention: .nan", "*anchor", "%YAML 9.9\n---\n"])
def test_known_hard_documents(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    _assert_config_or_error(lambda: CompressionConfig.from_yaml(path))
