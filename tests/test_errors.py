"""Bad input gets one line naming what is wrong (and what is allowed) and a non-zero exit status; the two
harmless surprises (frames repeated, decord falling back on PyAV) get one warning each.

`earlytom-eval` here, in-process (`cli.main`, what the console script exits with) or as a real process;
the same inputs under the real lmms-eval CLI are in tests/test_lmms_cli.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from earlytom_eval import video
from earlytom_eval.cli import main
from earlytom_eval.compression.config import CompressionConfig, ConfigError
from earlytom_eval.models.checkpoint import CheckpointError, check_checkpoint
from earlytom_eval.video import load_video, synthetic_frames, write_video

REPO = Path(__file__).resolve().parents[1]
EARLYTOM_EVAL = REPO / ".venv" / "bin" / "earlytom-eval"


def _cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Run `earlytom-eval argv` in-process: (exit status, stderr lines)."""
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err.strip().splitlines()


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EARLYTOM_")}
    return subprocess.run([str(EARLYTOM_EVAL), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A readable 8-frame clip."""
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", synthetic_frames([("static", 8)], size=(32, 32)))


def _generate(config: Path, clip: Path, *extra: str) -> list[str]:
    return ["generate", "--pretrained", "/no/such/checkpoint", "--config", str(config), "--video", str(clip),
            "--question", "What happens?", *extra]


# ------------------------------------------------------------------------------------ config files
@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n"])
def test_an_empty_config_file_is_one_line_and_exit_2(tmp_path, clip, capsys, text):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    status, err = _cli(_generate(path, clip), capsys)
    assert status == 2
    assert err == [f"error: config file '{path}' is empty (allowed: a flat mapping of config fields, "
                   "e.g. 'retention: 0.1')"]


def test_an_empty_config_file_stops_the_real_command(tmp_path, clip):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    proc = _run(*_generate(path, clip))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: config file '{path}' is empty (allowed: a flat mapping "
                                                "of config fields, e.g. 'retention: 0.1')"]


@pytest.mark.parametrize(
    "text, line, column",
    [("retention: 0.1\ntau: [0.3\n", 3, 1), ("retention: 0.1\n  tau: 0.3\n", 2, 6), ("method: 'full\n", 2, 1),
     ("retention: 0.1\n\tK: 3\n", 2, 1)],
)
def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path, clip, capsys, text, line, column):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    status, err = _cli(_generate(path, clip), capsys)
    assert status == 2 and len(err) == 1
    assert re.fullmatch(rf"error: config file '{re.escape(str(path))}', line {line}, column {column} is not valid "
                        r"YAML: \S.*", err[0]), err[0]
    with pytest.raises(ConfigError) as info:
        CompressionConfig.from_yaml(path)
    assert f"line {line}, column {column}" in str(info.value)


# ------------------------------------------------------------------------------------ usage
@pytest.mark.parametrize("item", ["retention", "=0.2"])
def test_set_without_a_field_and_value_is_a_usage_error_exit_2(tmp_path, clip, capsys, item):
    config = REPO / "configs" / "full.yaml"
    status, err = _cli(_generate(config, clip, "--set", item), capsys)
    assert status == 2
    assert err == [f"error: --set expects FIELD=VALUE (e.g. --set retention=0.25), got {item!r}"]


def test_set_without_equals_exits_2_from_the_real_command(clip):
    proc = _run(*_generate(REPO / "configs" / "full.yaml", clip, "--set", "retention"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --set expects FIELD=VALUE (e.g. --set retention=0.25), "
                                                "got 'retention'"]


# ------------------------------------------------------------------------------------ checkpoints
def _broken_checkpoints(source: Path, root: Path) -> dict[str, Path]:
    """Every kind of broken local checkpoint, made from a good one."""
    out = {"missing": root / "no" / "such" / "ckpt", "empty": root / "empty", "file": root / "file.bin"}
    out["empty"].mkdir()
    out["file"].write_bytes(b"x")
    for name in ("corrupt_config", "not_json_object", "no_weights", "truncated", "short_header", "missing_shard"):
        out[name] = root / name
        shutil.copytree(source, out[name])
    (out["corrupt_config"] / "config.json").write_text('{"model_type": "llava_onevision",')
    (out["not_json_object"] / "config.json").write_text("[1, 2]")
    (out["no_weights"] / "model.safetensors").unlink()
    weights = out["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (out["short_header"] / "model.safetensors").write_bytes(b"\x00\x01")
    (out["missing_shard"] / "model.safetensors").rename(out["missing_shard"] / "model-00001-of-00002.safetensors")
    (out["missing_shard"] / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    return out


EXPECTED = {
    "missing": "not found (no such folder",
    "empty": "not a checkpoint (no config.json in the folder)",
    "file": "not a checkpoint (a file, not a folder",
    "corrupt_config": "unreadable config.json (",
    "not_json_object": "unreadable config.json (a JSON list, not an object)",
    "no_weights": "weights missing (no *.safetensors or pytorch_model.bin in the folder)",
    "truncated": "weights truncated or corrupt: model.safetensors has ",
    "short_header": "weights truncated or corrupt: model.safetensors has 2 bytes",
    "missing_shard": "weights missing: model-00002-of-00002.safetensors (named in model.safetensors.index.json)",
}


@pytest.fixture(scope="module")
def broken(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    return _broken_checkpoints(tiny_checkpoint, tmp_path_factory.mktemp("broken"))


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_a_broken_checkpoint_is_one_line_naming_the_path_and_the_problem(broken, kind):
    with pytest.raises(CheckpointError) as info:
        check_checkpoint(broken[kind])
    text = str(info.value)
    assert text.startswith(f"checkpoint '{broken[kind]}': {EXPECTED[kind]}"), text
    assert "\n" not in text and "Repo id" not in text


def test_good_checkpoints_and_hub_ids_pass(tiny_checkpoint, broken):
    check_checkpoint(tiny_checkpoint)
    check_checkpoint(str(tiny_checkpoint) + "/")
    check_checkpoint(broken["no_weights"], weights=False)  # shapes only (earlytom-eval flops)
    check_checkpoint("llava-hf/llava-onevision-qwen2-7b-ov-hf")  # a hub id: transformers' business, no network here


def test_a_relative_path_that_does_not_exist_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in ("results/smoke/tiny-ov", "./tiny-ov", "~/no-such-earlytom-checkpoint"):
        with pytest.raises(CheckpointError, match=r"not found \(no such folder"):
            check_checkpoint(path)


@pytest.mark.parametrize("kind", ["missing", "truncated"])
def test_generate_with_a_broken_checkpoint_is_one_line_and_exit_2(broken, clip, capsys, kind):
    argv = _generate(REPO / "configs" / "full.yaml", clip)
    argv[argv.index("--pretrained") + 1] = str(broken[kind])
    status, err = _cli(argv, capsys)
    assert status == 2
    assert len(err) == 1 and err[0].startswith(f"error: checkpoint '{broken[kind]}': {EXPECTED[kind]}")


# ------------------------------------------------------------------------------------ tables
def test_tables_on_an_empty_a_missing_or_a_wrong_folder_is_one_line_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    wrong = tmp_path / "wrong"
    (wrong / "sub").mkdir(parents=True)
    (wrong / "sub" / "notes.json").write_text("{}")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = {
        empty: "holds no lmms-eval run (*_results.json) and no bench report (bench.json); nothing to aggregate",
        wrong: "holds no lmms-eval run (*_results.json) and no bench report (bench.json); nothing to aggregate",
        tmp_path / "absent": "does not exist (allowed: a folder holding lmms-eval runs or bench reports",
        a_file: "is not a folder (allowed: a folder holding lmms-eval runs or bench reports",
    }
    for runs, message in cases.items():
        out = tmp_path / "tables"
        status, err = _cli(["tables", "--runs", str(runs), "--out", str(out), "--no-plots"], capsys)
        assert status == 2, runs
        assert len(err) == 1 and err[0].startswith(f"error: runs folder {runs} {message}"), err
        assert not out.exists()


# ------------------------------------------------------------------------------------ video warnings
@pytest.fixture
def fresh_warnings(monkeypatch, caplog):
    """Warnings are once per process; each test starts with none given."""
    monkeypatch.setattr(video, "_WARNED", set())
    caplog.set_level(logging.WARNING, logger="earlytom_eval.video")
    return caplog


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "earlytom_eval.video"]


def test_more_frames_than_a_clip_has_repeats_frames_with_one_warning_per_run(tmp_path, fresh_warnings):
    short = write_video(tmp_path / "short.mp4", synthetic_frames([("motion", 10)], size=(32, 32)))
    shorter = write_video(tmp_path / "shorter.mp4", synthetic_frames([("motion", 4)], size=(32, 32)))
    result = load_video(short, 512)
    assert len(result) == 512 and result.total_frames == 10
    assert result.indices == [int(i) for i in __import__("numpy").linspace(0, 9, 512, dtype=int)]  # lmms-eval's
    for path in (short, shorter, short):
        for backend in ("auto", "pyav"):
            load_video(path, 64, backend=backend)
    load_video(short, 8)  # fewer frames than the clip: nothing to say
    messages = _warnings(fresh_warnings)
    assert len(messages) == 1
    assert messages[0].startswith(f"video '{short}' has 10 frames but 512 are sampled: frames are repeated")
    assert "Shown once per run" in messages[0]


def test_decord_failing_where_pyav_reads_gives_one_warning_per_file(tmp_path, fresh_warnings, monkeypatch):
    decord = pytest.importorskip("decord")
    first = write_video(tmp_path / "first.mp4", synthetic_frames([("motion", 12)], size=(32, 32)))
    second = write_video(tmp_path / "second.mp4", synthetic_frames([("motion", 12)], size=(32, 32), seed=1))
    expected = load_video(first, 6, backend="pyav").frames

    def unreadable(*args, **kwargs):
        raise RuntimeError("[12:00:00] /src/video_reader.cc:151: cannot find video stream")

    monkeypatch.setattr(decord, "VideoReader", unreadable)
    for path in (first, first, second, first):
        result = load_video(path, 6)
        assert result.backend == "pyav"
    assert (load_video(first, 6).frames == expected).all()
    messages = _warnings(fresh_warnings)
    assert messages == [
        f"decord cannot read video '{first}' (not a decodable video (cannot find video stream)); "
        "read it with PyAV instead (backend auto)",
        f"decord cannot read video '{second}' (not a decodable video (cannot find video stream)); "
        "read it with PyAV instead (backend auto)",
    ]
