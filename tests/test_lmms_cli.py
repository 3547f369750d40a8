"""The real `lmms-eval` CLI on the tiny checkpoint (CPU, offline): bad `--model_args` and broken checkpoints
give their one line alone on stderr and exit status 2 before any weights load; lmms-eval's own `llava_hf`
runs our tasks (chat requests for the chat model, simple ones with `--force_simple`) and `full` answers as
it does; frames repeated for a short clip give one warning per run.

Every lmms-eval start costs 10-20 s, so all runs of the module start in one fixture, two at a time (the
other kinds of broken checkpoint, an empty folder and a missing weights file among them, are in
tests/test_errors.py).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from earlytom_eval.lmms.manifest import MODEL_ID
from earlytom_eval.lmms.smoke_data import write_smoke_data
from earlytom_eval.video import VideoLoadError, load_video, synthetic_frames, write_video

REPO = Path(__file__).resolve().parents[1]
LMMS_EVAL = REPO / ".venv" / "bin" / "lmms-eval"
TASKS = REPO / "tasks"
FRAMES = 8

#: model_args over the good base -> the start of the one line on stderr.
BAD_MODEL_ARGS = {
    "unknown_key": ({"retension": "0.1"}, f"error: {MODEL_ID}: unknown model_args key(s) 'retension' (allowed: "),
    "bad_dtype": ({"dtype": "fp8"}, f"error: {MODEL_ID}: invalid dtype 'fp8' (allowed: auto, "),
    "cuda_without_gpu": ({"device": "cuda"},
                         f"error: {MODEL_ID}: device 'cuda' requested but CUDA is not available (allowed here: cpu)"),
    "retention_0": ({"retention": "0"}, "error: invalid config field 'retention': 0.0 (allowed: a number in (0, 1])"),
    "prune_layer_30": ({"config": "earlytom_r0.10", "prune_layers": "30"},
                       "error: invalid config field 'prune_layers': [30] (allowed: 0-based layer indices below the "
                       "encoder's depth 26, i.e. 0..25)"),
    "missing_config": ({"config": "no_such_config.yaml"},
                       "error: config file not found: 'no_such_config.yaml' (allowed: a YAML path or a name"),
    "bad_video_backend": ({"video_backend": "opencv"},
                          f"error: {MODEL_ID}: invalid video_backend 'opencv' (allowed: auto, decord, pyav, cv2)"),
    "empty_config": ({"config": "{root}/empty.yaml"}, "error: config file '{root}/empty.yaml' is empty (allowed: "),
}
#: pretrained folder (made in the fixture) -> the start of the one line.
BAD_CHECKPOINTS = {
    "not_found": "error: checkpoint '{path}': not found (no such folder",
    "corrupt_config": "error: checkpoint '{path}': unreadable config.json (",
    "truncated_weights": "error: checkpoint '{path}': weights truncated or corrupt: model.safetensors has ",
}


def _env(data: Path, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EARLYTOM_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_HOME=str(root / "hf_home"), EARLYTOM_SMOKE_DIR=str(data), OMP_NUM_THREADS="1")
    return env


def _model_args(values: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items())


def _readable_data(root: Path) -> Path:
    """The smoke documents whose clips decode, plus two documents on one 5-frame clip (fewer than FRAMES)."""
    full = root / "smoke-data"
    write_smoke_data(full)
    out = root / "readable"
    shutil.copytree(full / "data", out / "data")
    docs = []
    for line in (full / "earlytom_smoke.jsonl").read_text().splitlines():
        doc = json.loads(line)
        try:
            load_video(out / "data" / f"{doc['videoID']}.mp4", FRAMES)
        except VideoLoadError:
            continue
        docs.append(doc)
    assert len(docs) == 4
    write_video(out / "data" / "smoke_short.mp4", synthetic_frames([("motion", 5)], size=(96, 128), seed=7))
    for number in (1, 2):
        docs.append({**docs[0], "videoID": "smoke_short", "video_id": f"10{number}", "question_id": f"10{number}-1"})
    (out / "earlytom_smoke.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return out


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, tmp_path_factory):
    """Every lmms-eval run of this module, two at a time: name -> (CompletedProcess, output folder, values)."""
    root = tmp_path_factory.mktemp("lmms_cli")
    data = _readable_data(root)
    (root / "empty.yaml").write_text("")
    checkpoints = {name: root / "ckpt" / name for name in BAD_CHECKPOINTS}
    for name in ("corrupt_config", "truncated_weights"):
        shutil.copytree(tiny_checkpoint, checkpoints[name])
    (checkpoints["corrupt_config"] / "config.json").write_text('{"model_type": "llava_onevision",')
    weights = checkpoints["truncated_weights"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    base = {"pretrained": str(tiny_checkpoint), "config": str(REPO / "configs" / "full.yaml"),
            "max_frames_num": str(FRAMES), "device": "cpu", "dtype": "float32", "warmup": "0"}
    hf = {"pretrained": str(tiny_checkpoint), "max_frames_num": str(FRAMES), "device": "cpu", "device_map": "cpu",
          "dtype": "float32"}
    commands: dict[str, list[str]] = {}
    for name, (change, _) in BAD_MODEL_ARGS.items():
        values = {**base, **{k: v.format(root=root) for k, v in change.items()}}
        commands[name] = ["--model", MODEL_ID, "--model_args", _model_args(values)]
    for name, path in checkpoints.items():
        commands[name] = ["--model", MODEL_ID, "--model_args", _model_args({**base, "pretrained": str(path)})]
    for name, head in (("full", ["--model", MODEL_ID, "--model_args", _model_args(base)]),
                       ("llava_hf_simple", ["--model", "llava_hf", "--force_simple", "--model_args", _model_args(hf)]),
                       ("llava_hf_chat", ["--model", "llava_hf", "--model_args", _model_args(hf)])):
        commands[name] = [*head, "--output_path", str(root / "out" / name), "--log_samples"]

    def run(name: str) -> tuple[str, subprocess.CompletedProcess]:
        command = [str(LMMS_EVAL), *commands[name], "--tasks", "earlytom_smoke", "--include_path", str(TASKS),
                   "--batch_size", "1"]
        return name, subprocess.run(command, cwd=root, env=_env(data, root), capture_output=True, text=True,
                                    timeout=600)

    order = ["full", "llava_hf_simple", "llava_hf_chat", *BAD_MODEL_ARGS, *BAD_CHECKPOINTS]  # longest first
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(pool.map(run, order))
    return {"root": root, "checkpoints": checkpoints, "procs": done}


# ------------------------------------------------------------------------------------ bad input
def _assert_one_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr[-3000:]
    assert "Traceback" not in output
    assert f"{MODEL_ID}: " not in proc.stdout  # the model's "loaded ... on cpu" line: no weights were loaded


@pytest.mark.parametrize("case", sorted(BAD_MODEL_ARGS))
def test_bad_model_args_are_one_line_alone_and_exit_2_before_weights_load(runs, case):
    if case == "cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    _assert_one_line(runs["procs"][case], BAD_MODEL_ARGS[case][1].format(root=runs["root"]))


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_broken_checkpoints_are_one_line_naming_path_and_problem_and_exit_2(runs, case):
    proc = runs["procs"][case]
    _assert_one_line(proc, BAD_CHECKPOINTS[case].format(path=runs["checkpoints"][case]))
    assert "Repo id must be in the form" not in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------ lmms-eval's own models
def _answers(folder: Path) -> dict[int, tuple[str, str]]:
    """doc_id -> (parsed answer, raw response) from a run's samples file."""
    (path,) = glob.glob(str(folder / "*" / "*_samples_earlytom_smoke.jsonl"))
    out = {}
    for line in Path(path).read_text().splitlines():
        sample = json.loads(line)
        out[sample["doc_id"]] = (sample["videomme_perception_score"]["pred_answer"], sample["filtered_resps"])
    return out


def test_full_gives_llava_hf_simple_answers_on_the_readable_clips(runs):
    for name in ("full", "llava_hf_simple"):
        proc = runs["procs"][name]
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Traceback" not in output, output[-3000:]
    ours = _answers(runs["root"] / "out" / "full")
    theirs = _answers(runs["root"] / "out" / "llava_hf_simple")
    assert sorted(ours) == list(range(6))
    assert {doc: parsed for doc, (parsed, _) in ours.items()} == {doc: parsed for doc, (parsed, _) in theirs.items()}
    assert ours == theirs  # the raw responses too: the same frames, prompt and greedy tokens


def test_frames_repeated_for_a_short_clip_warn_once_per_run(runs):
    proc = runs["procs"]["full"]
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "frames are repeated" in line]
    assert len(warnings) == 1, warnings  # two documents on the 5-frame clip, one warning
    assert f"smoke_short.mp4' has 5 frames but {FRAMES} are sampled: frames are repeated" in warnings[0]


def test_chat_llava_hf_gets_chat_requests_from_our_task(runs):
    """lmms-eval's default llava_hf is a chat model: our task must hand it doc_to_messages requests.

    lmms-eval 0.7.3's chat llava_hf then fails inside its own code on any video (it passes images=[] to the
    processor: IndexError); the README says so. If a later lmms-eval fixes that, its answers must be ours.
    """
    proc = runs["procs"]["llava_hf_chat"]
    output = proc.stdout + proc.stderr
    assert "'function' object has no attribute 'items'" not in output
    assert "Running generate_until requests" in output  # our task built its requests
    if proc.returncode == 0 and "Traceback" not in output:
        chat = _answers(runs["root"] / "out" / "llava_hf_chat")
        ours = _answers(runs["root"] / "out" / "full")
        assert {d: p for d, (p, _) in chat.items()} == {d: p for d, (p, _) in ours.items()}
        return
    frames = re.findall(r'File "([^"]+)", line \d+, in (\w+)', output)
    assert frames, output[-3000:]
    ours = [f for f in frames if "earlytom_tasks" in f[0] or "/earlytom_eval/" in f[0]]
    assert not ours, ours
    lmms_frames = [f for f in frames if "/lmms_eval/" in f[0]]
    assert lmms_frames[-1] == (lmms_frames[-1][0], "generate_until")
    assert lmms_frames[-1][0].endswith("lmms_eval/models/chat/llava_hf.py"), lmms_frames[-1]
    assert "IndexError: list index out of range" in output
