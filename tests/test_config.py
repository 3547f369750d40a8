"""Tests for earlytom_eval.compression.config: defaults, YAML loading, validation, string overrides, fingerprint."""

from __future__ import annotations

import dataclasses

import pytest

from earlytom_eval.compression.config import METHODS, CompressionConfig, ConfigError, load_config

# --------------------------------------------------------------------------- #
# defaults
# --------------------------------------------------------------------------- #


def test_defaults_are_reference_videomme_setting():
    cfg = CompressionConfig()
    assert cfg.method == "earlytom"
    assert cfg.retention == 0.10
    assert cfg.tau == 0.3
    assert cfg.max_window == 6
    assert cfg.ema == 0.9
    assert cfg.prune_layers == (10, 21, 23)
    assert cfg.D == 0.0
    assert cfg.K == 7
    assert cfg.beta == 0.6
    assert cfg.num_frames == 32
    assert cfg.description == ""
    assert cfg.name == "earlytom_r0.1"
    assert cfg.compresses


def test_full_method():
    cfg = CompressionConfig(method="full")
    assert cfg.name == "full"
    assert not cfg.compresses
    assert "full" in METHODS and "earlytom" in METHODS


def test_config_is_frozen():
    cfg = CompressionConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.retention = 0.2  # type: ignore[misc]


def test_prune_layers_list_becomes_tuple():
    assert CompressionConfig(prune_layers=[8, 21, 23]).prune_layers == (8, 21, 23)
    assert CompressionConfig(prune_layers="8;21;23").prune_layers == (8, 21, 23)
    assert CompressionConfig(prune_layers=()).prune_layers == ()


# --------------------------------------------------------------------------- #
# YAML
# --------------------------------------------------------------------------- #


def _write(tmp_path, text: str, name: str = "my_setting.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_from_yaml_flat_mapping(tmp_path):
    path = _write(
        tmp_path,
        "# a comment\n"
        "method: earlytom\n"
        "retention: 0.15\n"
        "tau: 0.4\n"
        "prune_layers: [8, 21, 23]\n"
        "max_window: 5\n"
        "ema: 0.8\n"
        "D: 0.25\n"
        "K: 5\n"
        "beta: 0.5\n"
        "num_frames: 16\n"
        "description: hand-made\n",
    )
    cfg = CompressionConfig.from_yaml(path)
    assert cfg.retention == 0.15
    assert cfg.tau == 0.4
    assert cfg.prune_layers == (8, 21, 23)
    assert cfg.max_window == 5
    assert cfg.ema == 0.8
    assert cfg.D == 0.25
    assert cfg.K == 5
    assert cfg.beta == 0.5
    assert cfg.num_frames == 16
    assert cfg.description == "hand-made"
    assert cfg.name == "my_setting"  # no name in the file: the file's stem


def test_from_yaml_name_in_file_and_overrides_win(tmp_path):
    path = _write(tmp_path, "name: custom\nretention: 0.15\ntau: 0.4\nprune_layers: [8, 21, 23]\n")
    cfg = CompressionConfig.from_yaml(path, retention=0.25, tau=0.7)
    assert cfg.name == "custom"
    assert cfg.retention == 0.25
    assert cfg.tau == 0.7
    assert cfg.prune_layers == (8, 21, 23)


def test_from_yaml_empty_file_is_an_error(tmp_path):
    for text in ("", "\n\n", "# only a comment\n"):
        with pytest.raises(ConfigError) as info:
            CompressionConfig.from_yaml(_write(tmp_path, text))
        assert "is empty" in str(info.value) and "\n" not in str(info.value)


def test_from_yaml_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        CompressionConfig.from_yaml(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_from_yaml_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError):
        CompressionConfig.from_yaml(_write(tmp_path, "- 1\n- 2\n"))


def test_from_yaml_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError) as info:
        CompressionConfig.from_yaml(_write(tmp_path, "retention: [0.1\n"))
    assert "\n" not in str(info.value)


def test_from_yaml_unknown_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        CompressionConfig.from_yaml(_write(tmp_path, "retention: 0.1\nretension: 0.2\n"))
    assert "retension" in str(info.value)
    assert "\n" not in str(info.value)


def test_from_yaml_bad_value(tmp_path):
    with pytest.raises(ConfigError) as info:
        CompressionConfig.from_yaml(_write(tmp_path, "tau: 1.5\n"))
    assert "tau" in str(info.value) and "1.5" in str(info.value)


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #


def _before_allowed(message: str) -> str:
    return message.split("(allowed")[0]


@pytest.mark.parametrize(
    "field, value, shown",
    [
        ("retention", 0, "0"),
        ("retention", 0.0, "0.0"),
        ("retention", 1.5, "1.5"),
        ("retention", -0.1, "-0.1"),
        ("retention", "abc", "abc"),
        ("retention", float("nan"), "nan"),
        ("retention", True, "True"),
        ("tau", -0.1, "-0.1"),
        ("tau", 1.1, "1.1"),
        ("max_window", 1, "1"),
        ("max_window", 6.0, "6.0"),
        ("ema", 2, "2"),
        ("ema", -0.5, "-0.5"),
        ("prune_layers", [21, 8], "[21, 8]"),
        ("prune_layers", [8, 8, 21], "[8, 8, 21]"),
        ("prune_layers", [-1, 8], "-1"),
        ("prune_layers", [8.0, 21], "8.0"),
        ("method", "fastvidd", "fastvidd"),
        ("D", 1, "1"),
        ("D", 1.0, "1.0"),
        ("D", -0.1, "-0.1"),
        ("K", 0, "0"),
        ("K", 2.5, "2.5"),
        ("beta", 1.5, "1.5"),
        ("num_frames", 0, "0"),
        ("num_frames", -3, "-3"),
    ],
)
def test_validation_errors_name_field_and_value(field, value, shown):
    with pytest.raises(ConfigError) as info:
        CompressionConfig(**{field: value})
    message = str(info.value)
    assert "\n" not in message
    head = _before_allowed(message)  # the value must be named, not just appear in the allowed range
    assert field in head
    assert shown in head


@pytest.mark.parametrize(
    "field, value",
    [
        ("retention", 1.0),
        ("retention", 1),
        ("tau", 0.0),
        ("tau", 1.0),
        ("max_window", 2),
        ("ema", 0.0),
        ("ema", 1.0),
        ("D", 0.99),
        ("K", 1),
        ("beta", 0.0),
        ("num_frames", 1),
        ("prune_layers", [0]),
    ],
)
def test_boundary_values_accepted(field, value):
    cfg = CompressionConfig(**{field: value})
    assert getattr(cfg, field) == (tuple(value) if isinstance(value, list) else value)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_check_encoder_depth():
    CompressionConfig(prune_layers=(8, 21, 25)).check_encoder_depth(26)  # 25 is the last layer: fine
    with pytest.raises(ConfigError) as info:
        CompressionConfig(prune_layers=(8, 21, 26)).check_encoder_depth(26)
    message = str(info.value)
    assert "\n" not in message
    assert "prune_layers" in _before_allowed(message)
    assert "26" in _before_allowed(message)
    # The full method ignores prune layers.
    CompressionConfig(method="full", prune_layers=(8, 21, 40)).check_encoder_depth(26)


@pytest.mark.parametrize(
    "build",
    [
        lambda: CompressionConfig.from_mapping({"bogus": 1}),
        lambda: CompressionConfig.from_mapping({}, bogus=1),
        lambda: load_config({"bogus": 1}),
        lambda: load_config(None, bogus=1),
        lambda: CompressionConfig().replace(bogus=1),
        lambda: CompressionConfig().with_overrides({"bogus": "1"}),
    ],
)
def test_unknown_key(build):
    with pytest.raises(ConfigError) as info:
        build()
    message = str(info.value)
    assert "\n" not in message
    assert "bogus" in _before_allowed(message)


# --------------------------------------------------------------------------- #
# string overrides
# --------------------------------------------------------------------------- #


def test_with_overrides_parses_strings():
    cfg = CompressionConfig().with_overrides(
        {
            "prune_layers": "8;21;23",
            "retention": "0.15",
            "tau": "0.4",
            "max_window": "5",
            "ema": " 0.8 ",
            "K": "9",
            "D": "0.25",
            "beta": "0.5",
            "num_frames": "16",
            "method": "earlytom",
            "description": "cli",
        }
    )
    assert cfg.prune_layers == (8, 21, 23)
    assert cfg.retention == 0.15
    assert cfg.tau == 0.4
    assert cfg.max_window == 5
    assert cfg.ema == 0.8
    assert cfg.K == 9
    assert cfg.D == 0.25
    assert cfg.beta == 0.5
    assert cfg.num_frames == 16
    assert cfg.description == "cli"
    assert cfg.name == "earlytom_r0.15"  # the default name follows the new retention


@pytest.mark.parametrize("text", ["8;21;23", "8,21,23", "[8, 21, 23]", " 8 ; 21 ; 23 "])
def test_with_overrides_prune_layer_syntaxes(text):
    assert CompressionConfig().with_overrides({"prune_layers": text}).prune_layers == (8, 21, 23)


def test_with_overrides_empty_prune_layers():
    assert CompressionConfig().with_overrides({"prune_layers": ""}).prune_layers == ()


def test_with_overrides_keeps_explicit_name():
    cfg = CompressionConfig(name="mine").with_overrides({"retention": "0.2"})
    assert cfg.name == "mine"


@pytest.mark.parametrize(
    "field, text",
    [
        ("retention", "abc"),
        ("retention", "0"),
        ("max_window", "six"),
        ("max_window", "1"),
        ("prune_layers", "8;x;23"),
        ("prune_layers", "21;8"),
        ("K", "1.5"),
        ("method", "nope"),
    ],
)
def test_with_overrides_bad_strings(field, text):
    with pytest.raises(ConfigError) as info:
        CompressionConfig().with_overrides({field: text})
    message = str(info.value)
    assert "\n" not in message
    assert field in message


# --------------------------------------------------------------------------- #
# fingerprint
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "change",
    [
        {"retention": 0.15},
        {"tau": 0.4},
        {"max_window": 5},
        {"ema": 0.8},
        {"prune_layers": (8, 21, 23)},
        {"D": 0.2},
        {"K": 5},
        {"beta": 0.5},
        {"num_frames": 16},
        {"method": "full"},
    ],
)
def test_fingerprint_changes_with_computational_fields(change):
    base = CompressionConfig()
    assert base.replace(**change).fingerprint() != base.fingerprint()


def test_fingerprint_ignores_name_and_description():
    base = CompressionConfig()
    assert base.replace(name="other").fingerprint() == base.fingerprint()
    assert base.replace(description="something else").fingerprint() == base.fingerprint()
    assert base.replace(name="x", description="y").fingerprint() == base.fingerprint()


def test_fingerprint_is_stable_and_short():
    a = CompressionConfig(retention=0.2, prune_layers=[8, 21, 23])
    b = CompressionConfig(retention=0.2, prune_layers=(8, 21, 23))
    assert a.fingerprint() == b.fingerprint()
    assert isinstance(a.fingerprint(), str) and len(a.fingerprint()) == 12


def test_fingerprint_full_depends_on_num_frames_only():
    full = CompressionConfig(method="full")
    assert full.replace(retention=0.5).fingerprint() == full.fingerprint()
    assert full.replace(num_frames=16).fingerprint() != full.fingerprint()


# --------------------------------------------------------------------------- #
# load_config
# --------------------------------------------------------------------------- #


def test_load_config_none():
    assert load_config() == CompressionConfig()
    assert load_config(None, retention=0.2).retention == 0.2


def test_load_config_object():
    cfg = CompressionConfig(retention=0.2)
    assert load_config(cfg) is cfg
    changed = load_config(cfg, tau=0.5)
    assert changed.tau == 0.5 and changed.retention == 0.2


def test_load_config_mapping():
    cfg = load_config({"retention": 0.25, "prune_layers": [4, 14, 24]}, tau=0.8)
    assert (cfg.retention, cfg.tau, cfg.prune_layers) == (0.25, 0.8, (4, 14, 24))


def test_load_config_path(tmp_path):
    path = _write(tmp_path, "retention: 0.2\ntau: 0.5\n", name="r20.yaml")
    for source in (path, str(path)):
        cfg = load_config(source, tau=0.6)
        assert (cfg.retention, cfg.tau, cfg.name) == (0.2, 0.6, "r20")


def test_to_dict_round_trip():
    cfg = CompressionConfig(retention=0.2, prune_layers=(8, 21, 23), description="d")
    values = cfg.to_dict()
    assert values["prune_layers"] == [8, 21, 23]
    assert CompressionConfig.from_mapping(values) == cfg
