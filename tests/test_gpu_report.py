"""``earlytom-eval gpu-report``: its CPU dry mode end to end (without lmms-eval), and which configs it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from earlytom_eval.efficiency.gpu_report import ABLATION_NAME, device_slug, report_configs
from earlytom_eval.paths import CONFIGS, REPO

EXPECTED = ["full", "earlytom_r0.25", "earlytom_r0.20", "earlytom_r0.15", "earlytom_r0.10", ABLATION_NAME]

# The GPU machines have no lmms-eval: the command runs here with its import blocked (None in sys.modules makes
# `import lmms_eval` raise ImportError).
_BLOCKED_RUN = """
import sys
sys.modules["lmms_eval"] = None
from earlytom_eval.cli import main
code = main(sys.argv[1:])
assert not any(name == "lmms_eval" or name.startswith("lmms_eval.") for name in sys.modules if sys.modules[name])
sys.exit(code)
"""


def test_gpu_report_dry_run_writes_every_config_without_lmms_eval(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _BLOCKED_RUN, "gpu-report", "--dry-run", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    json_path, md_path = tmp_path / "gpu-dry-run-cpu.json", tmp_path / "gpu-dry-run-cpu.md"
    assert json_path.is_file() and md_path.is_file()
    report = json.loads(json_path.read_text())
    assert report["dry_run"] is True and report["preset"] == "tiny" and report["frames"] == 4
    assert report["transformers"] and report["device_name"] == "cpu"
    peers = sorted(p.stem for p in CONFIGS.glob("*_r0.10.yaml") if not p.name.startswith("earlytom_"))
    assert report["configs"][: len(EXPECTED)] == EXPECTED
    for stem in peers:  # every peer config at 0.10 is measured, or a note says why not
        assert stem in report["configs"] or any(f"skipped {stem}" in note for note in report["notes"]), stem
    assert report["attention_kernels"] == ["sdpa"]
    rows = report["summary"]["sdpa"]
    assert [r["config"] for r in rows] == report["configs"]
    for row in rows:
        assert set(row["ttft_ms"]) == {"median", "min", "max"}
        assert {"vision_encoder", "llm_prefill", "other"} <= set(row["stages_ms"])
        assert row["peak_memory_gib"] > 0 and row["decode_tokens_per_s"] > 0
    bench = report["reports"]["sdpa"]
    assert [e["name"] for e in bench["configs"]] == report["configs"]
    assert bench["hardware"]["attention_kernel"].startswith("sdpa")
    ablation = next(e for e in bench["configs"] if e["name"] == ABLATION_NAME)
    assert ablation["config"]["prune_layers"] == []
    md = md_path.read_text()
    assert "DRY RUN" in md and "## attention: sdpa" in md
    for name in report["configs"]:
        assert f"| {name} |" in md
    assert not (Path(REPO) / "results" / "bench" / "gpu-dry-run-cpu.json").exists()


def test_report_configs_picks_up_peer_configs_and_skips_with_a_note(tmp_path):
    for name in ("full", "earlytom_r0.25", "earlytom_r0.20", "earlytom_r0.15", "earlytom_r0.10"):
        (tmp_path / f"{name}.yaml").write_text((CONFIGS / f"{name}.yaml").read_text())
    (tmp_path / "newpeer_r0.10.yaml").write_text("method: newpeer\nretention: 0.1\n")
    (tmp_path / "broken_r0.10.yaml").write_text("method: full\nretention: 7\n")
    (tmp_path / "aaa_full_r0.10.yaml").write_text("name: aaa_full_r0.10\nmethod: full\n")
    (tmp_path / "other_r0.25.yaml").write_text("method: full\n")  # not at 0.10: not in the report
    configs, notes = report_configs(tmp_path, frames=8)
    assert [c.name for c in configs] == [*EXPECTED, "aaa_full_r0.10"]
    assert all(c.num_frames == 8 for c in configs)
    assert len(notes) == 2
    assert any(n.startswith("skipped newpeer_r0.10.yaml") and "newpeer" in n for n in notes)
    assert any(n.startswith("skipped broken_r0.10.yaml") for n in notes)


@pytest.mark.parametrize(
    "name, slug", [("NVIDIA H200", "nvidia-h200"), ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3")]
)
def test_device_slug(name, slug):
    assert device_slug(name) == slug
