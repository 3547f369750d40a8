"""`earlytom-eval throughput`: videos/s per config and batch size, from batched generate."""

from __future__ import annotations

import json

from earlytom_eval.cli import main as cli_main


def test_throughput_cli_reports_every_config_and_batch_size(tmp_path, capsys, one_thread):
    out = tmp_path / "throughput.json"
    code = cli_main(
        ["throughput", "--preset", "tiny", "--configs", "configs/full.yaml", "configs/earlytom_r0.10.yaml",
         "--batch-sizes", "1", "2", "--videos", "2", "--frames", "4", "--new-tokens", "2", "--rounds", "1",
         "--json", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    rows = {(r["config"], r["batch_size"]): r for r in report["rows"]}
    assert set(rows) == {(c, b) for c in ("full", "earlytom_r0.10") for b in (1, 2)}
    for (config, _), row in rows.items():
        assert row["videos_per_s"] > 0 and len(row["seconds_per_round"]) == 1
        # Batching changes nothing in what each video gets.
        assert row["visual_tokens_per_video"] == rows[(config, 1)]["visual_tokens_per_video"]
    assert rows[("full", 2)]["visual_tokens_per_video"] == 4 * 16 + 1
    assert report["protocol"]["new_tokens"] == 2 and report["hardware"]["device"] == "cpu"
    assert "| full | 2 |" in capsys.readouterr().out
