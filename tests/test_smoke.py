"""`make smoke` end to end: the real lmms-eval CLI, as a new user runs it (CPU, offline, about a minute).

lmms-eval exits 0 even when a run fails, so the files are checked, not only the exit code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from earlytom_eval.lmms.efficiency_log import read_log
from earlytom_eval.lmms.smoke_data import check_run

REPO = Path(__file__).resolve().parents[1]
LMMS_EVAL = REPO / ".venv" / "bin" / "lmms-eval"
CONFIGS = ("full", "earlytom_r0.10")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EARLYTOM_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Run `make smoke` into a temporary folder; return (output folder, data folder, make's output)."""
    root = tmp_path_factory.mktemp("smoke")
    out, data = root / "out", root / "data"
    make = shutil.which("make")
    assert make, "`make` is needed for this test"
    proc = subprocess.run(
        [make, "smoke", f"SMOKE_OUT={out}", f"SMOKE_DATA={data}"],
        cwd=REPO,
        env=_env(HF_HOME=str(root / "hf_home")),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, data, proc.stdout


def test_make_smoke_produces_results_for_both_configs(smoke):
    out, _, stdout = smoke
    summaries = {}
    for config in CONFIGS:
        summary = check_run(out / "runs" / config, expected_docs=6)
        assert f"ok   {out}/runs/{config}: score" in stdout
        summaries[config] = summary
        results = json.loads(Path(summary["results"]).read_text())
        assert f"config=configs/{config}.yaml" in results["config"]["model_args"]
        assert results["throughput"]["avg_ttft"] > 0
        assert summary["errors"] == 2
    assert summaries["full"]["config_hash"] != summaries["earlytom_r0.10"]["config_hash"]


def test_corrupt_and_missing_clips_are_scored_wrong_and_logged(smoke):
    out, _, _ = smoke
    tokens = {}
    for config in CONFIGS:
        summary = check_run(out / "runs" / config)
        records = {r["doc_id"]: r for path in summary["efficiency"] for r in read_log(path)}
        samples = {s["doc_id"]: s for s in map(json.loads, Path(summary["samples"]).read_text().splitlines())}
        by_video = {s["videomme_perception_score"]["videoID"]: s["doc_id"] for s in samples.values()}
        corrupt, missing = records[by_video["smoke_corrupt"]], records[by_video["smoke_missing"]]
        assert "smoke_corrupt.mp4" in corrupt["error"] and "not a decodable video" in corrupt["error"]
        assert "smoke_missing.mp4" in missing["error"] and "file not found" in missing["error"]
        for doc_id in (by_video["smoke_corrupt"], by_video["smoke_missing"]):
            assert samples[doc_id]["filtered_resps"] in ("", [""])
            assert samples[doc_id]["videomme_perception_score"]["score"] == 0.0
        good = [r for r in records.values() if not r["error"]]
        assert len(good) == 4 and all(r["frames_in"] == 8 and len(r["frames_per_layer"]) == 26 for r in good)
        tokens[config] = sum(r["visual_tokens"] for r in good)
    assert tokens["earlytom_r0.10"] < tokens["full"] == 4 * (8 * 16 + 1)


def test_without_data_the_run_stops_with_one_message(tmp_path):
    """The README's real-benchmark command, on a machine without VideoMME / MLVU."""
    proc = subprocess.run(
        [str(LMMS_EVAL), "--model", "earlytom_llava_ov", "--tasks", "videomme,mlvu", "--include_path", "tasks"],
        cwd=REPO,
        env=_env(HF_HOME=str(tmp_path / "empty_hf_home")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Selected Tasks: ['mlvu', 'videomme']" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()
    assert message[-3] == "error: data missing for this run:"
    assert message[-2].startswith(f"  - earlytom_mlvu_dev: MLVU dev videos not found: {tmp_path}/empty_hf_home/mlvu")
    expected = f"  - videomme: VideoMME videos not found: lmms-eval's videomme reads them from {tmp_path}/"
    assert message[-1].startswith(expected)
