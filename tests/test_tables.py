"""The aggregator on hand-made lmms-eval outputs and bench reports: joins, task rules, completeness, conflicts,
ratios, published numbers, Markdown/CSV/LaTeX and plots (fast; no model runs)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from earlytom_eval.cli import main as cli_main
from earlytom_eval.compression.config import CompressionConfig
from earlytom_eval.efficiency.bench_report import RunRecord, build_report
from earlytom_eval.efficiency.flops import ModelShapes
from earlytom_eval.report import published
from earlytom_eval.report.metrics import METRICS, aggregate_scores, sample_outcome
from earlytom_eval.report.names import method_of
from earlytom_eval.report.render import latex_table, markdown_table
from earlytom_eval.report.tables import aggregate

FULL = CompressionConfig(method="full", num_frames=8, name="full")
ET10 = CompressionConfig(retention=0.1, tau=0.3, num_frames=8, inner_layer=18, name="earlytom_r0.10")
ET25 = CompressionConfig(retention=0.25, tau=0.7, num_frames=8, inner_layer=18, name="earlytom_r0.25")
POST10 = ET10.replace(prune_layers=(), name="earlytom_postenc_r0.10")


def write_run(
    folder: Path,
    config: CompressionConfig,
    scores: list[float],
    ttfts: list[float],
    *,
    task: str = "videomme",
    pretrained: str = "/ckpt/tiny-ov",
    date: str = "20260101_000000",
    errors: tuple[int, ...] = (),
    log_docs: list[int] | None = None,
    reported: float | None = None,
    visual_tokens: int | None = None,
) -> Path:
    """An lmms-eval output folder of a VideoMME-style task, as lmms-eval and the plugin write it."""
    out = folder / pretrained.strip("/").replace("/", "__")
    out.mkdir(parents=True, exist_ok=True)
    config_path = folder / f"{config.name}.yaml"
    config_path.write_text(json.dumps(config.to_dict()))  # JSON is YAML
    n = len(scores)
    value = 100.0 * sum(scores) / n if reported is None else reported
    results = {
        "results": {task: {"alias": task, "videomme_perception_score,none": value,
                           "videomme_perception_score_stderr,none": "N/A"}},
        "group_subtasks": {task: []},
        "n-samples": {task: {"original": n, "effective": n}},
        "config": {"model": "earlytom_llava_ov", "limit": None,
                   "model_args": f"pretrained={pretrained},config={config_path},max_frames_num={config.num_frames}"},
    }
    (out / f"{date}_results.json").write_text(json.dumps(results))
    with open(out / f"{date}_samples_{task}.jsonl", "w") as handle:
        for doc_id, score in enumerate(scores):
            answer = "A"
            pred = "A" if score else "B"
            handle.write(json.dumps({"doc_id": doc_id, "target": answer, "videomme_perception_score": {
                "pred_answer": pred, "answer": answer, "score": score, "duration": "short"}}) + "\n")
    tokens = visual_tokens if visual_tokens is not None else (129 if config.method == "full" else 17)
    with open(out / f"{date}_efficiency.jsonl", "w") as handle:
        for doc_id in (range(n) if log_docs is None else log_docs):
            error = "file not found" if doc_id in errors else None
            record = {"task": task, "doc_id": doc_id, "model": pretrained, "method": config.method,
                      "config": config.name, "config_hash": config.fingerprint(), "error": error,
                      "peak_memory_kind": "cpu_max_rss"}
            if not error:
                ttft = ttfts[doc_id]
                record.update(ttft_ms=ttft, vision_encoder_ms=ttft * 0.4, compression_ms=1.0,
                              projector_pooling_ms=0.5, llm_prefill_ms=ttft * 0.5, inner_merge_ms=0.2,
                              first_token_ms=0.1, decode_ms=30.0, generated_tokens=4, visual_tokens=tokens,
                              prompt_tokens=tokens + 50, frames_out=8, peak_memory_mb=1024.0 + doc_id)
            handle.write(json.dumps(record) + "\n")
    return out


def bench_report(medians: dict[str, float], configs=(FULL, ET10), pretrained: str = "/ckpt/tiny-ov") -> dict:
    """A real `build_report` from synthetic run records (3 timed rounds around the given medians)."""
    records = []
    for cfg in configs:
        base = medians[cfg.name]
        visual = 129 if cfg.method == "full" else 17
        for round_, ttft in enumerate((base * 1.1, base, base * 0.95)):
            records.append(RunRecord(
                phase="timed", round=round_, config=cfg.name, kind="both", ttft_ms=ttft,
                stages_ms={"vision_encoder": ttft / 2, "compression": 1.0, "llm_prefill": ttft / 2 - 1.0},
                decode_ms=100.0 if cfg.method == "full" else 80.0, decode_tokens=4, peak_memory_bytes=2**30,
                baseline_memory_bytes=2**29, visual_tokens=visual, prompt_tokens=visual + 50,
                frames_per_layer=(8,) * 26 if cfg.method == "full" else (8,) * 11 + (6,) * 15,
                frames_out=8 if cfg.method == "full" else 6, segments=None, llm_tokens_per_layer=(visual + 50,) * 24))
    meta = {"tool": "earlytom-eval bench", "created_utc": "2026-01-01T00:00:00+00:00",
            "hardware": {"device": "cpu", "device_name": "CPU: test", "dtype": "float32", "torch": "x",
                         "transformers": "y", "attention_kernel": "sdpa"},
            "model": {"source": f"checkpoint {pretrained}"}, "video": {"frames": 8}}
    return build_report(list(configs), records, ModelShapes.from_preset("tiny"), meta=meta)


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "full", FULL, [1, 0, 1, 1], [100.0, 120.0, 80.0, 90.0], errors=(1,))
    write_run(root / "et10", ET10, [1, 0, 0, 1], [50.0, 40.0, 60.0, 70.0])
    write_run(root / "post10", POST10, [0, 0, 0, 1], [70.0, 75.0, 65.0, 72.0])
    (root / "bench.json").write_text(json.dumps(bench_report({"full": 200.0, "earlytom_r0.10": 80.0})))
    return root


def _row(table, **match):
    rows = [r for r in table.data if all(r.get(k) == v for k, v in match.items())]
    assert len(rows) == 1, (match, rows)
    return rows[0]


def test_accuracy_is_the_task_score_and_the_mean_of_the_samples(runs):
    result = aggregate(runs)
    acc = result.get("accuracy")
    full = _row(acc, task="videomme", method="full")
    et = _row(acc, task="videomme", method="earlytom", retention=0.1)
    assert full["status"] == "complete" and full["accuracy"] == pytest.approx(75.0)
    assert full["accuracy_from_samples"] == pytest.approx(75.0)
    assert et["accuracy"] == pytest.approx(50.0) and et["pct_of_full"] == pytest.approx(100 * 50 / 75)
    post = _row(acc, task="videomme", method="earlytom_postenc", retention=0.1)
    assert post["accuracy"] == pytest.approx(25.0) and post["method_label"] == "EarlyTom w/o encoder stage"
    average = _row(acc, task="average", method="earlytom", retention=0.1)
    assert average["accuracy"] == pytest.approx(50.0) and average["pct_of_full"] == pytest.approx(100 * 50 / 75)
    assert full["docs"] == 4 and full["docs_with_error"] == 1


def test_speedup_is_the_ratio_of_the_median_ttfts(runs):
    result = aggregate(runs)
    eff = result.get("efficiency_eval")
    full = _row(eff, method="full")
    et = _row(eff, method="earlytom")
    assert full["ttft_ms"] == statistics.median([100.0, 80.0, 90.0])  # the errored document is excluded
    assert et["ttft_ms"] == statistics.median([50.0, 40.0, 60.0, 70.0])
    assert et["speedup_vs_full"] == pytest.approx(full["ttft_ms"] / et["ttft_ms"])
    assert et["visual_tokens"] == 17 and full["docs_with_error"] == 1
    assert et["decode_tokens_per_s"] == pytest.approx(3 / 0.03)
    assert full["peak_memory_gib"] == pytest.approx((1024.0 + 3) / 1024)
    bench = result.get("bench")
    b_full = _row(bench, method="full")
    b_et = _row(bench, method="earlytom")
    report = json.loads((runs / "bench.json").read_text())
    medians = {e["name"]: e["ttft_ms"]["median"] for e in report["configs"]}
    assert b_et["speedup_vs_full"] == pytest.approx(medians["full"] / medians["earlytom_r0.10"])
    assert b_full["ttft_ms"] == medians["full"] and b_et["retention"] == 0.1
    flops = {e["name"]: e["total_prefill_flops"] for e in report["configs"]}
    assert _row(result.get("flops"), method="earlytom")["flops_pct_of_full"] == pytest.approx(
        100 * flops["earlytom_r0.10"] / flops["full"])
    assert b_et["decode_vs_full"] == pytest.approx(100.0 / 80.0)


def test_a_run_whose_log_misses_documents_is_incomplete_not_averaged(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "full", FULL, [1, 1], [10.0, 10.0])
    write_run(root / "et", ET10, [1, 0, 1], [5.0, 5.0, 5.0], log_docs=[0, 1])  # document 2 never logged
    result = aggregate(root)
    cell = _row(result.get("accuracy"), task="videomme", method="earlytom")
    assert cell["status"] == "incomplete" and cell["accuracy"] is None
    assert "covers 2 of 3 documents" in cell["reason"]
    assert _row(result.get("accuracy"), task="average", method="earlytom")["accuracy"] is None
    line = next(r for r in result.get("accuracy").display if r[1] == "EarlyTom")
    assert line[3] == "incomplete (3/3 docs)" and line[4] == "incomplete"
    assert any("incomplete" in p for p in result.problems)


def test_rank_logs_with_a_clock_a_second_off_belong_to_their_run(tmp_path):
    root = tmp_path / "runs"
    out = write_run(root / "full", FULL, [1, 1, 0, 1], [10.0, 20.0, 30.0, 40.0], date="20260101_000000")
    log = out / "20260101_000000_efficiency.jsonl"
    lines = log.read_text().splitlines()
    (out / "20260101_000000_efficiency_rank0.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (out / "20260101_000001_efficiency_rank1.jsonl").write_text("\n".join(lines[2:]) + "\n")
    log.unlink()
    cell = _row(aggregate(root).get("accuracy"), task="videomme", method="full")
    assert cell["status"] == "complete" and cell["docs"] == 4


def test_a_score_that_disagrees_with_the_samples_is_flagged(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "full", FULL, [1, 0], [10.0, 10.0], reported=100.0)
    cell = _row(aggregate(root).get("accuracy"), task="videomme", method="full")
    assert cell["status"] == "incomplete" and "samples give 50.0000%" in cell["reason"]


def test_runs_of_different_configs_or_sample_counts_in_one_cell_are_refused(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root / "a", ET10, [1, 0], [10.0, 10.0], date="20260101_000000")
    write_run(root / "b", ET10.replace(tau=0.35, name="earlytom_r0.10"), [1, 1], [10.0, 10.0],
              date="20260102_000000")
    write_run(root / "c", FULL, [1, 1], [10.0, 10.0], date="20260101_000000")
    write_run(root / "d", FULL, [1, 1, 0], [10.0, 10.0, 10.0], date="20260102_000000")
    result = aggregate(root)
    for method in ("earlytom", "full"):
        cell = _row(result.get("accuracy"), task="videomme", method=method)
        assert cell["status"] == "conflict" and cell["accuracy"] is None
        assert "runs disagree (not mixed)" in cell["reason"]
    assert cli_main(["tables", "--runs", str(root), "--out", str(tmp_path / "t"), "--no-plots"]) == 1
    assert "disagree" in capsys.readouterr().err


def test_repeated_runs_of_one_config_use_the_latest(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "a", FULL, [0, 0], [10.0, 10.0], date="20260101_000000")
    write_run(root / "b", FULL, [1, 1], [10.0, 10.0], date="20260102_000000")
    cell = _row(aggregate(root).get("accuracy"), task="videomme", method="full")
    assert cell["status"] == "complete" and cell["accuracy"] == 100.0


def test_task_rules_match_lmms_eval_aggregations():
    # MLVU dev: mean over its 7 task types, an absent type counting 0 (lmms-eval's mlvu_aggregate_results_dev)
    rule = METRICS["mlvu_percetion_score"]
    rows = [sample_outcome("mlvu_percetion_score", {"task_type": t, "pred_answer": p, "answer": "A"})
            for t, p in (("count", "A"), ("count", "B"), ("ego", "A"))]
    assert aggregate_scores(rule, rows) == pytest.approx((50.0 + 100.0) / 7)
    # MVBench: unanswered (empty prediction) documents leave the denominator
    rows = [sample_outcome("mvbench_accuracy", {"pred_answer": p, "score": s}) for p, s in (("A", 1), ("", 0),
                                                                                          ("B", 0))]
    assert aggregate_scores(METRICS["mvbench_accuracy"], rows) == pytest.approx(50.0)
    # LongVideoBench reports a fraction
    assert METRICS["lvb_acc"].scale == 100.0
    assert sample_outcome("lvb_acc", {"parsed_pred": "C", "answer": "C"})[0] == 1.0
    # EgoSchema (full) is scored by a server: not recomputable
    assert aggregate_scores(METRICS["submission"], [(None, True, None)]) is None


def test_methods_are_read_from_the_config_or_else_the_logged_name(tmp_path):
    assert method_of(FULL.to_dict()) == ("full", None)
    assert method_of(ET10.to_dict()) == ("earlytom", 0.1)
    assert method_of(POST10.to_dict()) == ("earlytom_postenc", 0.1)
    root = tmp_path / "runs"
    write_run(root / "a", POST10, [1, 0], [10.0, 10.0])
    (root / "a" / f"{POST10.name}.yaml").unlink()  # the config file the run named is gone
    cell = _row(aggregate(root).get("accuracy"), task="videomme")
    assert (cell["method"], cell["retention"], cell["status"]) == ("earlytom_postenc", 0.1, "complete")


def test_mvbench_group_is_the_mean_of_its_subtasks(tmp_path):
    out = tmp_path / "runs" / "x" / "ckpt"
    out.mkdir(parents=True)
    date = "20260101_000000"
    subs = {"mvbench_a": [("A", 1), ("B", 0)], "mvbench_b": [("A", 1), ("A", 1), ("", 0)]}
    results = {"results": {"mvbench": {"alias": "mvbench"}}, "group_subtasks": {"mvbench": list(subs)},
               "n-samples": {}, "config": {"model_args": "pretrained=/ckpt,max_frames_num=8", "limit": None}}
    for name, docs in subs.items():
        answered = [s for p, s in docs if p]
        results["results"][name] = {"mvbench_accuracy,none": 100.0 * sum(answered) / len(answered)}
        results["group_subtasks"][name] = []
        results["n-samples"][name] = {"effective": len(docs)}
        with open(out / f"{date}_samples_{name}.jsonl", "w") as handle:
            for doc_id, (pred, score) in enumerate(docs):
                handle.write(json.dumps({"doc_id": doc_id, "mvbench_accuracy": {"pred_answer": pred,
                                                                                "score": score}}) + "\n")
    (out / f"{date}_results.json").write_text(json.dumps(results))
    with open(out / f"{date}_efficiency.jsonl", "w") as handle:
        for name, docs in subs.items():
            for doc_id in range(len(docs)):
                handle.write(json.dumps({"task": name, "doc_id": doc_id, "config_hash": "h", "ttft_ms": 1.0,
                                         "method": "full", "model": "/ckpt"}) + "\n")
    cell = _row(aggregate(tmp_path / "runs").get("accuracy"), task="mvbench")
    assert cell["status"] == "complete" and cell["accuracy"] == pytest.approx((50.0 + 100.0) / 2)
    assert cell["accuracy_from_samples"] == pytest.approx(cell["accuracy"])


def test_published_numbers_sit_beside_a_comparable_run(tmp_path):
    root = tmp_path / "runs"
    model = published.MODEL
    full32 = FULL.replace(num_frames=32)
    write_run(root / "full", full32, [1, 1, 1, 0] * 5, [10.0] * 20, pretrained=model)
    result = aggregate(root)
    row = next(r for r in result.get("published_full").data if r["task"] == "videomme")
    assert row["ours"] == pytest.approx(75.0) and row["diff_vs_holitom"] == pytest.approx(75.0 - 58.6)
    assert row["llava_ov_paper"] == 58.2
    # the smoke-sized run is not comparable: no difference is made up
    other = aggregate(tmp_path / "none")
    assert all(r["ours"] is None for r in other.get("published_full").data)
    assert "arXiv 2605.30010" in published.SOURCES["earlytom_paper"]
    assert published.matches_model(model, 32) and not published.matches_model(model, 16)


def test_outputs_markdown_csv_latex_and_plots(runs, tmp_path, capsys):
    out = tmp_path / "tables"
    assert cli_main(["tables", "--runs", str(runs), "--out", str(out), "--label", "CPU smoke run (test)"]) == 0
    for name in ("accuracy", "efficiency_eval", "bench", "flops", "published_full", "published_relative",
                 "published_efficiency", "cells"):
        for suffix in (".md", ".csv", ".tex"):
            assert (out / f"{name}{suffix}").is_file(), name + suffix
    for png in ("accuracy_vs_ttft.png", "ttft_breakdown.png", "flops_per_stage.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    text = (out / "tables.md").read_text()
    assert "> **CPU smoke run (test)**" in text and "| Full tokens | 100% | 75.0 |" in text
    tex = (out / "accuracy.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "\\%" in tex
    with open(out / "accuracy.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["method"] for r in rows} == {"full", "earlytom", "earlytom_postenc"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["plots"] == ["accuracy_vs_ttft.png", "ttft_breakdown.png", "flops_per_stage.png"]


def test_markdown_and_latex_escape_cells():
    from earlytom_eval.report.table import Table

    table = Table("t", "A_b & c", [], ["x|y", "50%"], [["a_b", "1 & 2"]], align="lr")
    md = markdown_table(table)
    assert "x\\|y" in md and "|---|---:|" in md
    tex = latex_table(table)
    assert "a\\_b & 1 \\& 2 \\\\" in tex and "A\\_b \\& c" in tex and "{lr}" in tex


# ------------------------------------------------------------------------------------ every method side by side
VZ10 = CompressionConfig.from_mapping({"method": "visionzip", "retention": 0.1, "num_frames": 8,
                                       "name": "visionzip_r0.10"})
FV10 = CompressionConfig.from_mapping({"method": "fastv", "retention": 0.1, "num_frames": 8, "name": "fastv_r0.10"})
#: (visual tokens into the LLM, tokens per LLM layer) per config: FastV keeps all 129, then cuts at layer 2.
TOKENS = {"full": (129, (179,) * 24), "earlytom_r0.10": (17, (67,) * 18 + (59,) * 6),
          "visionzip_r0.10": (17, (67,) * 24), "fastv_r0.10": (129, (179,) * 2 + (63,) * 22)}


def peer_bench_report(medians: dict[str, float], configs=(FULL, ET10, VZ10, FV10)) -> dict:
    records = []
    for cfg in configs:
        visual, per_layer = TOKENS[cfg.name]
        for round_, ttft in enumerate((medians[cfg.name] * 1.1, medians[cfg.name], medians[cfg.name] * 0.9)):
            records.append(RunRecord(
                phase="timed", round=round_, config=cfg.name, kind="both", ttft_ms=ttft,
                stages_ms={"vision_encoder": ttft / 2, "llm_prefill": ttft / 2}, decode_ms=80.0, decode_tokens=4,
                peak_memory_bytes=2**30, baseline_memory_bytes=2**29, visual_tokens=visual,
                prompt_tokens=per_layer[0], frames_per_layer=(8,) * 26, frames_out=8, segments=None,
                llm_tokens_per_layer=per_layer))
    meta = {"tool": "earlytom-eval bench", "created_utc": "2026-01-01T00:00:00+00:00",
            "hardware": {"device": "cpu", "device_name": "CPU: test", "dtype": "float32", "torch": "x",
                         "transformers": "y", "attention_kernel": "sdpa"},
            "model": {"source": "checkpoint /ckpt/tiny-ov"}, "video": {"frames": 8}}
    return build_report(list(configs), records, ModelShapes.from_preset("tiny"), meta=meta)


@pytest.fixture()
def peer_runs(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "full", FULL, [1, 0, 1, 1], [100.0, 120.0, 80.0, 90.0])
    write_run(root / "et10", ET10, [1, 0, 0, 1], [50.0, 40.0, 60.0, 70.0])
    write_run(root / "vz10", VZ10, [1, 1, 0, 1], [60.0, 50.0, 70.0, 80.0])
    write_run(root / "fv10", FV10, [0, 1, 0, 1], [70.0, 60.0, 80.0, 90.0], visual_tokens=129)
    medians = {"full": 200.0, "earlytom_r0.10": 80.0, "visionzip_r0.10": 100.0, "fastv_r0.10": 120.0}
    (root / "bench.json").write_text(json.dumps(peer_bench_report(medians)))
    return root


def test_methods_side_by_side_one_row_per_method_and_ratio(peer_runs):
    expected = [{"model": "tiny-ov", "task": "videomme", "method": m, "retention": r, "method_label": label,
                 "unavailable": why} for m, r, label, why in (
        ("full", None, "Full tokens", ""), ("earlytom", 0.1, "EarlyTom", ""), ("visionzip", 0.1, "VisionZip", ""),
        ("fastv", 0.1, "FastV", ""), ("dycoke", 0.1, "DyCoke", "method 'dycoke' is not registered yet"))]
    result = aggregate(peer_runs, expected=expected)
    methods = result.get("methods")
    assert [(r["method"], r["retention"]) for r in methods.data] == [(e["method"], e["retention"]) for e in expected]
    rows = {r["method"]: r for r in methods.data}
    # accuracy and % of full from the accuracy table's averages
    assert rows["visionzip"]["average_accuracy"] == pytest.approx(75.0)
    assert rows["visionzip"]["pct_of_full"] == pytest.approx(100.0)
    assert rows["earlytom"]["pct_of_full"] == pytest.approx(100.0 * 50.0 / 75.0)
    # nominal vs reached retention: newline excluded, against full tokens in the same bench
    assert rows["visionzip"]["reached_retention"] == pytest.approx(16 / 128)
    assert rows["earlytom"]["reached_retention_last_layer"] == pytest.approx((17 - 8 - 1) / 128)
    assert rows["fastv"]["reached_retention"] == pytest.approx(1.0)  # every token into the LLM ...
    assert rows["fastv"]["reached_retention_last_layer"] == pytest.approx((129 - 116 - 1) / 128)  # ... cut inside it
    # TTFT, speedup, FLOPs and memory from the bench; published figures beside
    assert rows["visionzip"]["speedup_vs_full"] == pytest.approx(2.0)
    assert rows["fastv"]["flops_pct_of_full"] < 100.0 and rows["fastv"]["peak_memory_gib"] == pytest.approx(1.0)
    assert rows["visionzip"]["published_pct_of_full"] == published.PEER_PUBLISHED["visionzip"][0.1]["pct_of_full"]
    assert rows["fastv"]["published_pct_of_full"] is None  # published at 25% only
    # a cell that could not run says why, in one line, everywhere
    assert rows["dycoke"]["ttft_ms"] is None
    line = next(line for line in methods.display if line[1] == "DyCoke")
    assert "not available" in line
    cell = next(c for c in result.cells if c.method == "dycoke")
    assert (cell.status, cell.reason) == ("not available", "method 'dycoke' is not registered yet")
    assert not any("dycoke" in p for p in result.problems)
    eff = {r["method"]: r for r in result.get("efficiency_eval").data}
    assert eff["visionzip"]["reached_retention"] == pytest.approx(16 / 128)
    assert eff["fastv"]["reached_retention"] == pytest.approx(1.0)


def test_published_peer_numbers_carry_their_source(tmp_path):
    root = tmp_path / "runs"
    seven_b = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    write_run(root / "full", FULL.replace(num_frames=32), [1, 1, 1, 0], [1.0] * 4, pretrained=seven_b)
    write_run(root / "vz", VZ10.replace(num_frames=32), [1, 1, 0, 0], [1.0] * 4, pretrained=seven_b)
    table = aggregate(root).get("published_methods")
    assert len(table.data) == sum(len(v) for v in published.PEER_PUBLISHED.values())
    assert {r["method"] for r in table.data} == set(published.PEER_PUBLISHED) and "tome" not in published.PEER_PUBLISHED
    for row in table.data:
        assert row["source"] in published.SOURCES
    vz = next(r for r in table.data if r["method"] == "visionzip" and r["retention"] == 0.1)
    assert vz["videomme_published"] == 53.4 and vz["videomme_ours"] == pytest.approx(50.0)
    assert vz["pct_of_full_ours"] is None  # the four-task average needs all four tasks
    fastvid = next(r for r in table.data if r["method"] == "fastvid" and r["retention"] == 0.25)
    assert fastvid["egoschema_published"] is None and "EgoSchema" in fastvid["note"]
