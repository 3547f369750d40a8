"""`make reproduce-tables`: the grid files, the missing-pieces check, resuming, and the smoke grid end to end.

The resume logic runs against a stand-in for lmms-eval and the bench (seconds); the smoke grid then runs
for real, as a new user runs it (`make reproduce-tables GRID=configs/grids/smoke.yaml`, CPU): every
registered method through the real lmms-eval CLI on the tiny checkpoint (one cell each, mostly lmms-eval's
start-up: 2-3 minutes on 2 idle cores, several on a loaded machine), and its tables are checked against the
runs' raw files. Counts come from the grid files, so a method that lands is covered without a change here.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from earlytom_eval.compression.config import METHODS, load_config
from earlytom_eval.compression.registry import registered_methods
from earlytom_eval.reproduce import grid as grid_module
from earlytom_eval.reproduce import runner as reproduce
from earlytom_eval.reproduce.grid import GridError, load_grid
from earlytom_eval.reproduce.runner import run_grid

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "grids" / "paper.yaml"
SMOKE = REPO / "configs" / "grids" / "smoke.yaml"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EARLYTOM_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


# ------------------------------------------------------------------------------------ grid files
def _configs_per_task(grid) -> int:
    return sum(len(m.ratios) if m.base != "full" else 1 for m in grid.methods)


def _available(grid) -> list:
    return [c for c in grid.eval_cells() if not c.unavailable]


def test_paper_grid_carries_the_per_task_settings(tmp_path):
    grid = load_grid(PAPER, runs=tmp_path / "runs", gpus="4")
    cells = {c.id: c for c in grid.eval_cells()}
    assert len(cells) == len(grid.tasks) * _configs_per_task(grid) and grid.frames == 32
    assert {c.task.key for c in cells.values()} == {"mvbench", "egoschema", "longvideobench_val_v", "videomme",
                                                     "mlvu"}

    def cfg(task, name):
        return cells[f"llava-ov-7b/{task}/{name}"].config

    assert (cfg("mvbench", "earlytom_r0.10").tau, cfg("mvbench", "earlytom_r0.10").prune_layers) == (0.65, (8, 14, 20))
    assert (cfg("mvbench", "earlytom_r0.15").tau, cfg("mvbench", "earlytom_r0.15").prune_layers) == (0.8, (6, 14, 20))
    assert cfg("longvideobench_val_v", "earlytom_r0.25").prune_layers == (4, 14, 24)
    assert cfg("longvideobench_val_v", "earlytom_r0.20").tau == 0.6
    assert cfg("egoschema", "earlytom_r0.25").tau == 0.7
    # VideoMME (and MLVU, which has no reference setting) match the shipped configs exactly
    for ratio in ("0.10", "0.15", "0.20", "0.25"):
        shipped = load_config(REPO / "configs" / f"earlytom_r{ratio}.yaml")
        assert cfg("videomme", f"earlytom_r{ratio}").fingerprint() == shipped.fingerprint()
        assert cfg("mlvu", f"earlytom_r{ratio}").fingerprint() == shipped.fingerprint()
        post = cfg("videomme", f"earlytom_postenc_r{ratio}")
        assert post.prune_layers == () and post.replace(prune_layers=shipped.prune_layers).fingerprint() == \
            shipped.fingerprint()
    assert cfg("videomme", "full").fingerprint() == load_config(REPO / "configs" / "full.yaml").fingerprint()
    command = reproduce.eval_command(cells["llava-ov-7b/mlvu/earlytom_r0.10"])
    assert command[1:3] == ["launch", "--num_processes=4"] or command[3:5] == ["launch", "--num_processes=4"]
    assert command[command.index("-m") + 1] == "lmms_eval" and command[command.index("--tasks") + 1] == "mlvu"
    model_args = command[command.index("--model_args") + 1]
    assert "pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf" in model_args and "max_frames_num=32" in model_args
    assert "dtype=bfloat16" in model_args and "attn_implementation=sdpa" in model_args
    assert "--log_samples" in command
    benches = {c.settings: c for c in grid.bench_cells()}
    assert set(benches) == {"videomme", "mvbench", "longvideobench_val_v", "egoschema"}
    earlytom_configs = sum(len(m.ratios) if not m.peer else 0 for m in grid.methods if m.base != "full") + 1
    peers_available = sum(1 for c in _available(grid) if c.method.peer and c.task.key == "videomme")
    assert benches["videomme"].tasks == ["videomme", "mlvu"]
    assert len(benches["videomme"].configs) == earlytom_configs + peers_available  # the peers: in one row only
    assert len(benches["mvbench"].configs) == earlytom_configs
    # every method of the comparison at every ratio; each peer cell is its shipped config (32 frames), the same
    # for every task, or is unavailable with one line saying why
    ratios = (0.25, 0.20, 0.15, 0.10)
    assert {m.base for m in grid.methods} == set(METHODS)
    assert all(m.ratios == ratios for m in grid.methods if m.base != "full")
    for cell in cells.values():
        if not cell.method.peer:
            continue
        name = f"{cell.method.base}_r{cell.retention:.2f}"
        if cell.unavailable:
            assert cell.method.base not in registered_methods() or not (REPO / "configs" / f"{name}.yaml").exists()
            assert "\n" not in cell.unavailable and cell.config is None
            continue
        shipped = load_config(REPO / "configs" / f"{name}.yaml", num_frames=32)
        assert cell.config.fingerprint() == shipped.fingerprint() and cell.config.name == name
    bench = reproduce.bench_command(benches["mvbench"])
    assert bench[bench.index("--warmup") + 1] == "2" and bench[bench.index("--repeats") + 1] == "5"
    assert bench[bench.index("--frames") + 1] == "32" and bench[bench.index("--device") + 1] == "cuda"


def test_smoke_grid_runs_every_method_in_plain_lmms_eval_on_cpu(tmp_path):
    grid = load_grid(SMOKE, runs=tmp_path / "runs")
    cells = grid.eval_cells()
    assert [c.name for c in cells] == ["full", *[f"{m.key}_r{r:.2f}" for m in grid.methods[1:] for r in m.ratios]]
    assert {m.base for m in grid.methods} == set(METHODS) and {c.retention for c in cells} == {None, 0.10}
    for cell in cells:  # every registered method with a shipped config runs; the others are one line each
        shipped = (REPO / "configs" / f"{cell.method.base}_r0.10.yaml").exists() or not cell.method.peer
        assert bool(cell.unavailable) == (cell.method.base not in registered_methods() or not shipped)
    by_name = {c.name: c for c in cells}
    assert by_name["visionzip_r0.10"].config.params.spatial_tokens is None  # round(16 * 0.10) on tiny
    command = reproduce.eval_command(cells[0])
    assert command[:3] == [sys.executable, "-m", "lmms_eval"]
    model_args = command[command.index("--model_args") + 1]
    assert f"pretrained={tmp_path / 'runs' / 'tiny-ov'}" in model_args and "device=cpu" in model_args
    assert grid.env["EARLYTOM_SMOKE_DIR"] == str(tmp_path / "runs" / "smoke-data")
    assert len(grid.bench_cells()) == 1 and len(grid.bench_cells()[0].configs) == len(_available(grid))


def test_grid_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text() + "\nnonsense: 1\n")
    with pytest.raises(GridError, match="unknown key.*nonsense"):
        load_grid(bad)
    bad.write_text(SMOKE.read_text().replace("  - key: earlytom\n    ratios: [0.10]",
                                             "  - key: earlytom\n    ratios: [0.10, 0.15]"))
    with pytest.raises(GridError, match="no entry for ratio 0.15"):
        load_grid(bad)
    bad.write_text(SMOKE.read_text().replace("  - key: fastv\n", "  - key: fastv\n    base: fastvit\n"))
    with pytest.raises(GridError, match="base must be one of"):
        load_grid(bad)
    bad.write_text(SMOKE.read_text().replace("tau: 0.3,", "tau: 3.0,"))
    with pytest.raises(GridError, match="tau"):
        load_grid(bad)


def test_without_weights_data_or_gpus_everything_missing_is_listed_and_nothing_runs(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "earlytom-eval"), "reproduce", "--grid", str(PAPER), "--runs", str(runs),
         "--out", str(tmp_path / "tables")],
        cwd=REPO, env=_env(HF_HOME=str(tmp_path / "empty_hf"), CUDA_VISIBLE_DEVICES=""),
        capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "nothing was run" in out and "Traceback" not in out
    assert "weights of llava-hf/llava-onevision-qwen2-7b-ov-hf are not in the Hugging Face cache" in out
    assert "huggingface-cli download llava-hf/llava-onevision-qwen2-7b-ov-hf" in out
    for task in ("mvbench (", "egoschema:", "longvideobench_val_v:", "videomme:", "mlvu:"):
        assert f"    - {task}" in out, task
    assert f"{tmp_path}/empty_hf/videomme/data" in out and f"{tmp_path}/empty_hf/mlvu" in out
    assert "bench video dataset:videomme" in out and "no CUDA GPU is visible" in out
    assert not any(runs.rglob("cell.json")) and not (tmp_path / "tables").exists()


# ------------------------------------------------------------------------------------ resuming
FAKE = r'''
"""Stand-in for lmms-eval and the bench: writes what they write for the cell in argv[1] (from its cell.json)."""
import json, os, sys
from pathlib import Path

folder = Path(sys.argv[1])
cell = json.loads((folder / "cell.json").read_text())
spec = cell["spec"]
with open(os.environ["FAKE_CALLS"], "a") as handle:
    handle.write(folder.name + "\n")
if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in str(folder):
    print("Traceback: a failure lmms-eval prints before exiting 0")
    sys.exit(0)
if spec["kind"] == "eval":
    task, date = spec["task"], "20260101_000000"
    out = folder / "lmms" / "ckpt"
    out.mkdir(parents=True)
    scores = [1, 0, 1] if spec["method"] == "full" else [1, 0, 0]
    (out / f"{date}_results.json").write_text(json.dumps({
        "results": {task: {"videomme_perception_score,none": 100.0 * sum(scores) / 3}},
        "group_subtasks": {task: []}, "n-samples": {task: {"effective": 3}},
        "config": {"model_args": "pretrained=" + spec["model"]["pretrained"], "limit": None}}))
    with open(out / f"{date}_samples_{task}.jsonl", "w") as handle:
        for i, s in enumerate(scores):
            handle.write(json.dumps({"doc_id": i, "videomme_perception_score": {"score": s}}) + "\n")
    with open(out / f"{date}_efficiency.jsonl", "w") as handle:
        for i in range(3):
            handle.write(json.dumps({"task": task, "doc_id": i, "config_hash": spec["config_hash"],
                                     "model": spec["model"]["pretrained"], "ttft_ms": 10.0 + i,
                                     "peak_memory_kind": "cpu_max_rss"}) + "\n")
else:
    from earlytom_eval.efficiency.bench_report import RunRecord, build_report
    from earlytom_eval.compression.config import CompressionConfig
    from earlytom_eval.efficiency.flops import ModelShapes

    configs = [CompressionConfig.from_mapping(c["config"]) for c in spec["configs"]]
    shapes = ModelShapes.from_preset("tiny")
    records = [RunRecord(phase="timed", round=0, config=c.name, kind="both", ttft_ms=20.0 if c.method == "full"
                         else 10.0, stages_ms={"vision_encoder": 5.0}, visual_tokens=17, prompt_tokens=60,
                         frames_per_layer=(8,) * 26, frames_out=8, llm_tokens_per_layer=(60,) * shapes.layers)
               for c in configs]
    meta = {"hardware": {"device": "cpu", "device_name": "CPU", "dtype": "float32", "torch": "t",
                         "transformers": "t", "attention_kernel": "sdpa"}, "created_utc": "2026"}
    report = build_report(configs, records, shapes, meta=meta)
    (folder / "bench.json").write_text(json.dumps(report))
if os.environ.get("FAKE_LINGER") and os.environ["FAKE_LINGER"] in str(folder):
    import time
    (folder / "finished").write_text("")  # every output is written; the tool has not exited yet
    time.sleep(120)
'''


@pytest.fixture()
def fake_grid(tmp_path, monkeypatch):
    """A smoke-like grid whose cells run the stand-in; returns (grid file, runs, calls file)."""
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    calls = tmp_path / "calls.txt"
    calls.touch()
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    monkeypatch.delenv("FAKE_LINGER", raising=False)
    for name in list(os.environ):
        if name.startswith("EARLYTOM_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(reproduce, "eval_command", lambda cell: [sys.executable, str(fake), str(cell.folder)])
    monkeypatch.setattr(reproduce, "bench_command", lambda cell: [sys.executable, str(fake), str(cell.folder)])
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"")
    text = SMOKE.read_text().replace("pretrained: ${RUNS}/tiny-ov", f"pretrained: {ckpt}")
    text = text.replace("  checkpoint: {preset: tiny", "  # checkpoint: {preset: tiny")
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(text)
    return grid_file, tmp_path / "runs", calls


def _run(grid_file: Path, runs: Path, **kwargs) -> tuple[int, str, list[str]]:
    calls = Path(os.environ["FAKE_CALLS"])
    before = calls.read_text().splitlines()
    out = io.StringIO()
    status = run_grid(load_grid(grid_file, runs=runs, tables=runs.parent / "tables"), out=out, **kwargs)
    return status, out.getvalue(), calls.read_text().splitlines()[len(before):]


def _runnable(grid_file: Path, runs: Path) -> list[str]:
    """The folders of the cells that run: every available eval cell and every bench row."""
    grid = load_grid(grid_file, runs=runs)
    return [c.folder.name for c in _available(grid)] + [c.folder.name for c in grid.bench_cells()]


def test_finished_cells_are_kept_and_a_deleted_cell_runs_again(fake_grid, monkeypatch):
    grid_file, runs, _ = fake_grid
    expected = _runnable(grid_file, runs)
    n = len(expected)
    status, out, ran = _run(grid_file, runs)
    assert status == 0, out
    assert sorted(ran) == sorted(expected)
    assert f"0 complete, {n} to run" in out and f"[{n}/{n}]" in out and "ETA" in out
    assert (runs.parent / "tables" / "tables.md").is_file()
    status, out, ran = _run(grid_file, runs)
    assert (status, ran) == (0, []) and f"{n} complete, 0 to run" in out
    shutil.rmtree(runs / "tiny-ov" / "earlytom_smoke" / "visionzip_r0.10")
    status, out, ran = _run(grid_file, runs)
    assert (status, ran) == (0, ["visionzip_r0.10"]) and f"{n - 1} complete, 1 to run" in out
    status, out, ran = _run(grid_file, runs, force=True)
    assert status == 0 and len(ran) == n
    status, out, ran = _run(grid_file, runs, force=True, only=["*/earlytom_r0.10"])
    assert ran == ["earlytom_r0.10"]


def test_a_method_not_registered_or_without_its_config_is_one_line_not_a_crash(fake_grid, monkeypatch):
    grid_file, runs, _ = fake_grid
    grid_file.write_text(grid_file.read_text().replace(
        "  - key: holitom\n    ratios: [0.10]\n",
        "  - key: holitom\n    ratios: [0.10]\n    config: holitom_nowhere_r{ratio:.2f}\n"))
    monkeypatch.setattr(grid_module, "registered_methods",
                        lambda: tuple(m for m in registered_methods() if m != "fastv"))
    expected = _runnable(grid_file, runs)
    assert "fastv_r0.10" not in expected and "holitom_r0.10" not in expected
    status, out, ran = _run(grid_file, runs)
    assert status == 0 and sorted(ran) == sorted(expected) and "Traceback" not in out
    assert "[skip] tiny-ov | earlytom_smoke | FastV at 10%: unavailable (method 'fastv' is not registered yet" in out
    assert "HoliTom at 10%: unavailable (config holitom_nowhere_r0.10 not found" in out
    with open(runs.parent / "tables" / "cells.csv") as handle:
        rows = {(r["method"], r["retention"]): r for r in csv.DictReader(handle)}
    assert rows[("fastv", "0.1")]["status"] == "not available"
    assert "not registered" in rows[("fastv", "0.1")]["reason"]
    with open(runs.parent / "tables" / "methods.csv") as handle:
        methods = [(r["method"], r["retention"]) for r in csv.DictReader(handle)]
    grid = load_grid(grid_file, runs=runs)
    assert methods == [(c.method.key, "" if c.retention is None else str(c.retention)) for c in grid.eval_cells()]


def test_a_cell_whose_definition_changed_runs_again(fake_grid):
    grid_file, runs, _ = fake_grid
    assert _run(grid_file, runs)[0] == 0
    grid_file.write_text(grid_file.read_text().replace("0.10: {tau: 0.3,", "0.10: {tau: 0.35,"))
    status, out, ran = _run(grid_file, runs)
    assert status == 0 and sorted(ran) == ["earlytom_postenc_r0.10", "earlytom_r0.10", "videomme"]
    assert "grid changed: config, config_hash" in out


def test_a_failed_cell_is_reported_marked_and_retried(fake_grid, monkeypatch):
    grid_file, runs, _ = fake_grid
    monkeypatch.setenv("FAKE_FAIL", "visionzip_r0.10")
    status, out, ran = _run(grid_file, runs)
    assert status == 1 and len(ran) == len(_runnable(grid_file, runs))
    assert "VisionZip at 10%: FAILED" in out and "Traceback: a failure lmms-eval prints" in out
    record = json.loads((runs / "tiny-ov" / "earlytom_smoke" / "visionzip_r0.10" / "cell.json").read_text())
    assert record["state"] == "failed" and record["returncode"] == 0
    with open(runs.parent / "tables" / "accuracy.csv") as handle:
        rows = {(r["method"], r["retention"], r["task"]): r for r in csv.DictReader(handle)}
    assert rows[("visionzip", "0.1", "earlytom_smoke")]["status"] == "incomplete"
    assert rows[("earlytom", "0.1", "earlytom_smoke")]["status"] == "complete"
    monkeypatch.delenv("FAKE_FAIL")
    status, out, ran = _run(grid_file, runs)
    assert (status, ran) == (0, ["visionzip_r0.10"])


def test_two_runners_never_share_a_runs_folder(fake_grid):
    grid_file, runs, _ = fake_grid
    runs.mkdir(parents=True)
    (runs / reproduce.LOCK_FILE).write_text(f"{os.getppid()} now\n")  # a live process holds it
    status, out, ran = _run(grid_file, runs)
    assert (status, ran) == (2, []) and "another `earlytom-eval reproduce` is running" in out
    (runs / reproduce.LOCK_FILE).write_text("999999999 long ago\n")  # stale: taken over
    status, out, ran = _run(grid_file, runs)
    assert status == 0 and len(ran) == len(_runnable(grid_file, runs)) and not (runs / reproduce.LOCK_FILE).exists()


def test_dry_run_plans_without_running(fake_grid):
    grid_file, runs, _ = fake_grid
    status, out, ran = _run(grid_file, runs, dry_run=True)
    assert (status, ran) == (0, []) and out.count("would run") == len(_runnable(grid_file, runs))
    assert not any(runs.rglob("cell.json"))


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap it is not)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


RUNNER = r'''
import sys
from pathlib import Path
from earlytom_eval.reproduce import runner
from earlytom_eval.reproduce.grid import load_grid

fake, grid_file, runs = sys.argv[1:4]
runner.eval_command = runner.bench_command = lambda cell: [sys.executable, fake, str(cell.folder)]
sys.exit(runner.run_grid(load_grid(grid_file, runs=Path(runs), tables=Path(runs).parent / "tables")))
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl PR_SET_PDEATHSIG is Linux's")
def test_a_runner_killed_with_sigkill_takes_its_tool_with_it(fake_grid, tmp_path):
    grid_file, runs, _ = fake_grid
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = {**os.environ, "FAKE_LINGER": "/"}
    runner = subprocess.Popen([sys.executable, str(script), str(tmp_path / "fake.py"), str(grid_file), str(runs)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: any(runs.rglob("finished")), 120), "the first cell never started"
        (pid_file,) = list(runs.rglob(reproduce.PID_FILE))
        pid = int(pid_file.read_text())
        assert _alive(pid)
        runner.kill()
        runner.wait()
        assert _wait_for(lambda: not _alive(pid), 10), f"tool {pid} outlived its runner"
    finally:
        runner.kill()


def test_the_next_run_stops_an_orphaned_tool_before_running_its_cell_and_nothing_else(fake_grid):
    grid_file, runs, _ = fake_grid
    folder = runs / "tiny-ov" / "earlytom_smoke" / "full"
    other = runs / "tiny-ov" / "earlytom_smoke" / "earlytom_r0.10"
    folder.mkdir(parents=True)
    other.mkdir(parents=True)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(folder)],
                              start_new_session=True)  # as a tool whose runner died without taking it along
    try:
        (folder / reproduce.PID_FILE).write_text(f"{orphan.pid}\n")
        (other / reproduce.PID_FILE).write_text(f"{os.getpid()}\n")  # this test process: not that cell's tool
        status, out, ran = _run(grid_file, runs)
        assert status == 0 and len(ran) == len(_runnable(grid_file, runs)), out
        assert f"stopping {orphan.pid}, still running in {folder} from a runner that was killed" in out
        assert out.count("stopping") == 1
        assert orphan.wait(timeout=10) is not None
        assert not any(runs.rglob(reproduce.PID_FILE))
    finally:
        orphan.kill()
        orphan.wait()


def test_a_cell_finished_before_an_interrupt_is_kept_and_says_complete(fake_grid, monkeypatch):
    grid_file, runs, _ = fake_grid
    monkeypatch.setenv("FAKE_LINGER", "earlytom_r0.10")
    cell = runs / "tiny-ov" / "earlytom_smoke" / "earlytom_r0.10"

    def interrupt_when_finished() -> None:
        if _wait_for(lambda: (cell / "finished").exists(), 120):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the tool lingers after writing everything

    watcher = threading.Thread(target=interrupt_when_finished, daemon=True)
    watcher.start()
    status, out, ran = _run(grid_file, runs)
    watcher.join()
    assert status == 130 and "interrupted: finished cells are kept" in out
    record = json.loads((cell / "cell.json").read_text())
    assert record["state"] == "complete" and record["problems"] == []
    # A complete cell whose record says otherwise (as an older runner left them) is settled by the next run.
    earlier = [p for p in runs.rglob("cell.json") if p.parent != cell]
    assert earlier, "a cell ran before the interrupted one"
    first = earlier[0]
    path = first.parent / "cell.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "state": "interrupted", "problems": ["interrupted"]}))
    monkeypatch.delenv("FAKE_LINGER")
    status, out, ran = _run(grid_file, runs)
    assert status == 0 and ran and "earlytom_r0.10" not in ran, out  # kept; the cells after it run
    assert first.parent.name not in ran
    settled = json.loads(path.read_text())
    assert settled["state"] == "complete" and settled["problems"] == [] and settled["settled_from"] == "interrupted"


# ------------------------------------------------------------------------------------ the real smoke grid
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`make reproduce-tables GRID=configs/grids/smoke.yaml` into a temporary folder, as a new user runs it."""
    root = tmp_path_factory.mktemp("reproduce")
    runs, tables = root / "runs", root / "tables"
    make = shutil.which("make")
    assert make, "`make` is needed for this test"
    command = [make, "reproduce-tables", f"GRID={SMOKE.relative_to(REPO)}", f"RUNS={runs}", f"TABLES={tables}"]
    proc = subprocess.run(command, cwd=REPO, env=_env(HF_HOME=str(root / "hf_home")), capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    return runs, tables, command, root, proc.stdout


def _efficiency(cell: Path) -> list[dict]:
    return [json.loads(line) for path in cell.rglob("*_efficiency*.jsonl") for line in path.read_text().splitlines()]


def _smoke_grid(runs: Path):
    return load_grid(SMOKE, runs=runs)


def _key(cell) -> tuple[str, str]:
    """A cell's (method, retention) as the CSV tables write them."""
    return cell.method.key, "" if cell.retention is None else str(cell.retention)


def test_smoke_grid_produces_every_table_and_plot(smoke):
    runs, tables, _, _, stdout = smoke
    grid = _smoke_grid(runs)
    n = len(_available(grid)) + len(grid.bench_cells())
    assert f"0 complete, {n} to run" in stdout and f"[{n}/{n}]" in stdout
    for cell in grid.unavailable():
        assert f"[skip] {reproduce.describe(cell)}: unavailable ({cell.unavailable})" in stdout
    for name in ("methods", "accuracy", "efficiency_eval", "bench", "flops", "published_full", "published_methods",
                 "cells"):
        for suffix in (".md", ".csv", ".tex"):
            assert (tables / f"{name}{suffix}").stat().st_size > 0
    for png in ("accuracy_vs_ttft.png", "ttft_breakdown.png", "flops_per_stage.png"):
        assert (tables / png).read_bytes()[:4] == b"\x89PNG"
    text = (tables / "tables.md").read_text()
    total = len(grid.eval_cells())
    complete = len(_available(grid))
    assert "CPU smoke run" in text and f"{complete} of {total} cells complete, 1 benchmark report(s)" in text
    # one row per method and ratio of the grid, in the grid's order, side by side
    with open(tables / "methods.csv") as handle:
        methods = list(csv.DictReader(handle))
    assert [(r["method"], r["retention"]) for r in methods] == [_key(c) for c in grid.eval_cells()]
    for row, cell in zip(methods, grid.eval_cells()):
        assert bool(row["ttft_ms"]) == (not cell.unavailable), row  # measured by the bench when it ran
        assert bool(row["average_accuracy"]) == (not cell.unavailable), row


def test_smoke_tables_agree_with_the_raw_files(smoke):
    runs, tables, _, _, _ = smoke
    grid = _smoke_grid(runs)
    with open(tables / "accuracy.csv") as handle:
        accuracy = {(r["method"], r["retention"]): r for r in csv.DictReader(handle) if r["task"] != "average"}
    with open(tables / "efficiency_eval.csv") as handle:
        efficiency = {(r["method"], r["retention"]): r for r in csv.DictReader(handle)}
    medians, tokens = {}, {}
    for grid_cell in _available(grid):
        key, cell = _key(grid_cell), grid_cell.folder
        samples = [json.loads(line) for p in cell.rglob("*_samples_earlytom_smoke.jsonl")
                   for line in p.read_text().splitlines()]
        results = json.loads(next(cell.rglob("*_results.json")).read_text())
        scores = [s["videomme_perception_score"]["score"] for s in samples]
        assert len(scores) == 6
        row = accuracy[key]
        assert row["status"] == "complete"
        assert float(row["accuracy"]) == pytest.approx(100.0 * sum(scores) / len(scores))
        assert float(row["accuracy"]) == pytest.approx(
            results["results"]["earlytom_smoke"]["videomme_perception_score,none"])
        records = _efficiency(cell)
        good = [r for r in records if not r["error"]]
        assert len(records) == 6 and len(good) == 4  # the corrupt and the missing clip
        medians[key] = statistics.median(r["ttft_ms"] for r in good)
        eff = efficiency[key]
        assert float(eff["ttft_ms"]) == pytest.approx(medians[key])
        assert float(eff["visual_tokens"]) == pytest.approx(statistics.mean(r["visual_tokens"] for r in good))
        tokens[key] = statistics.mean(r["visual_tokens"] for r in good)
        assert float(eff["reached_retention"]) == pytest.approx((tokens[key] - 1) / (tokens[("full", "")] - 1))
    for key in medians:
        assert float(efficiency[key]["speedup_vs_full"]) == pytest.approx(medians[("full", "")] / medians[key])
    report = json.loads((runs / "tiny-ov" / "bench" / "videomme" / "bench.json").read_text())
    bench_medians = {e["name"]: e["ttft_ms"]["median"] for e in report["configs"]}
    flops = {e["name"]: e["total_prefill_flops"] for e in report["configs"]}
    with open(tables / "bench.csv") as handle:
        bench = {r["config"]: r for r in csv.DictReader(handle)}
    with open(tables / "flops.csv") as handle:
        flop_rows = {r["config"]: r for r in csv.DictReader(handle)}
    assert sorted(bench) == sorted(c.name for c in _available(grid))
    full_tokens = next(e["visual_tokens"] for e in report["configs"] if e["name"] == "full")
    for entry in report["configs"]:
        name = entry["name"]
        assert float(bench[name]["speedup_vs_full"]) == pytest.approx(bench_medians["full"] / bench_medians[name])
        assert float(flop_rows[name]["flops_pct_of_full"]) == pytest.approx(100.0 * flops[name] / flops["full"])
        reached = (entry["visual_tokens"] - 1) / (full_tokens - 1)
        assert float(bench[name]["reached_retention"]) == pytest.approx(reached)
        if name != "full" and entry["config"]["method"] != "fastv":  # FastV cuts inside the LLM only
            assert entry["visual_tokens"] < full_tokens, name
    # FastV: every token into the LLM, about the nominal share left after its cut
    fastv = [c.name for c in _available(grid) if c.method.base == "fastv"]
    for name in fastv:
        assert float(bench[name]["reached_retention"]) == pytest.approx(1.0)
        assert float(bench[name]["reached_retention_last_layer"]) < 0.2


def test_a_second_invocation_runs_nothing_and_a_deleted_cell_runs_alone(smoke):
    runs, tables, command, root, _ = smoke
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("cell.json")}
    proc = subprocess.run(command, cwd=REPO, env=_env(HF_HOME=str(root / "hf_home")), capture_output=True,
                          text=True, timeout=600)
    n = len(_available(_smoke_grid(runs))) + 1
    assert proc.returncode == 0 and f"{n} complete, 0 to run" in proc.stdout, proc.stdout[-3000:]
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("cell.json")} == stamps
    bench = runs / "tiny-ov" / "bench" / "videomme"
    shutil.rmtree(bench)
    proc = subprocess.run(command, cwd=REPO, env=_env(HF_HOME=str(root / "hf_home")), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and f"{n - 1} complete, 1 to run" in proc.stdout, proc.stdout[-3000:]
    assert "[1/1] tiny-ov | TTFT bench" in proc.stdout
    after = {p: p.stat().st_mtime_ns for p in runs.rglob("cell.json")}
    assert [p for p in after if after[p] != stamps.get(p)] == [bench / "cell.json"]
    assert (bench / "bench.json").is_file()


def test_the_readme_tables_example_reads_the_folder_the_smoke_grid_writes(smoke):
    runs, _, _, root, _ = smoke
    lines = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("earlytom-eval tables")]
    assert lines, "the README shows `earlytom-eval tables`"
    for line in lines:
        args = shlex.split(line.split("#")[0])
        assert args[args.index("--runs") + 1] == yaml.safe_load(SMOKE.read_text())["runs"]  # made by the line above
    out = root / "readme-tables"
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "earlytom-eval"), "tables", "--runs", str(runs), "--out",
                           str(out), "--no-plots"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    grid = _smoke_grid(runs)
    complete, total = len(_available(grid)), len(grid.eval_cells())
    assert f"{complete} of {total} cells complete" in (out / "tables.md").read_text()
