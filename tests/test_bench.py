"""The benchmark harness's logic on the tiny preset: ordering, warm-up exclusion, JSON schema (no timing asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from earlytom_eval.cli import main as cli_main
from earlytom_eval.compression.config import CompressionConfig
from earlytom_eval.efficiency.bench import BenchRunner, _eos_ignored, run_order
from earlytom_eval.efficiency.bench_report import RunRecord, build_report
from earlytom_eval.efficiency.clip import parse_shots
from earlytom_eval.efficiency.flops import ModelShapes
from earlytom_eval.efficiency.host import hardware_info
from earlytom_eval.efficiency.schema import validate_report
from earlytom_eval.video import synthetic_frames

FULL = CompressionConfig(method="full", num_frames=8, name="full")
EARLYTOM = CompressionConfig(retention=0.25, tau=0.5, prune_layers=(4, 20), inner_layer=12, num_frames=8, name="et")


pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def pixels(tiny):
    frames = synthetic_frames([("static", 4), ("motion", 4)], size=(96, 128), seed=2)
    return tiny.preprocess_video(frames).to(tiny.device, tiny.dtype)


def test_run_order_interleaves_rotates_and_warms_up_first():
    order = run_order(3, warmup=2, repeats=3)
    assert len(order) == 3 * (2 + 3)
    assert [p for p, _, _ in order[:6]] == ["warmup"] * 6 and {p for p, _, _ in order[6:]} == {"timed"}
    rounds = [order[i : i + 3] for i in range(0, len(order), 3)]
    for chunk in rounds:  # every round runs every config exactly once
        assert sorted(i for _, _, i in chunk) == [0, 1, 2]
        assert len({(p, r) for p, r, _ in chunk}) == 1
    timed_starts = [chunk[0][2] for chunk in rounds[2:]]
    assert timed_starts == [0, 1, 2]  # no config always runs first
    with pytest.raises(ValueError):
        run_order(2, warmup=0, repeats=0)


def test_runner_follows_the_order_and_reports_only_timed_runs(tiny, pixels):
    configs = [FULL, EARLYTOM]
    runner = BenchRunner(tiny, configs, pixels, tiny.build_prompt("What?"), decode_tokens=3, profile="inline")
    seen = []
    records = runner.run(warmup=1, repeats=2, on_record=seen.append)
    assert records == seen
    expected = [(p, r, configs[i].name) for p, r, i in run_order(2, 1, 2)]
    assert [(r.phase, r.round, r.config) for r in records] == expected
    assert all(r.kind == "both" and r.decode_tokens == 3 and r.stages_ms for r in records)

    shapes = ModelShapes.from_hf_config(tiny.model.config)
    meta = {"hardware": hardware_info(tiny.device, tiny.dtype, tiny)}
    report = build_report(configs, records, shapes, meta=meta)
    validate_report(report)
    for entry in report["configs"]:
        timed = [r for r in records if r.config == entry["name"] and r.phase == "timed"]
        assert entry["timed_runs"] == 2
        assert entry["ttft_ms"]["runs"] == [round(r.ttft_ms, 3) for r in timed]
        assert entry["ttft_ms"]["min"] <= entry["ttft_ms"]["median"] <= entry["ttft_ms"]["max"]
        assert entry["token_counts_identical_across_runs"]
        assert entry["decode"]["tokens"] == 3
        assert set(entry["stages_ms"]) >= {"vision_encoder", "compression", "projector_pooling", "llm_prefill",
                                            "first_token", "other"}
    et = report["configs"][1]
    assert "inner_merge" in et["stages_ms"]  # stage 3 is timed as its own stage
    assert et["visual_tokens"] < report["configs"][0]["visual_tokens"]
    assert et["llm_tokens_per_layer"][12] < et["llm_tokens_per_layer"][0]
    assert set(report["ratios"]) == {"full", "et"} and report["ratios"]["full"]["ttft_speedup"] == 1.0
    assert [r["phase"] for r in report["runs"]].count("warmup") == 2
    json.dumps(report)  # serialisable


def _record(config: str, phase: str, round_: int, ttft: float) -> RunRecord:
    return RunRecord(
        phase=phase, round=round_, config=config, kind="both", ttft_ms=ttft,
        stages_ms={"vision_encoder": ttft / 2, "compression": 1.0, "llm_prefill": ttft / 2 - 1.0},
        decode_ms=100.0, decode_tokens=4, peak_memory_bytes=10, baseline_memory_bytes=5, visual_tokens=9,
        prompt_tokens=20, frames_per_layer=(8,) * 26, frames_out=8, segments=None,
        llm_tokens_per_layer=(20,) * 24,
    )


def test_warmup_runs_never_enter_the_statistics():
    records = [_record("full", "warmup", 0, 1e9), _record("full", "timed", 0, 30.0),
               _record("full", "timed", 1, 10.0), _record("full", "timed", 2, 20.0)]
    report = build_report([FULL], records, ModelShapes.from_preset("tiny"))
    entry = report["configs"][0]
    assert entry["ttft_ms"]["median"] == 20.0 and entry["ttft_ms"]["max"] == 30.0 and entry["ttft_ms"]["min"] == 10.0
    assert entry["timed_runs"] == 3
    assert entry["decode"]["tokens_per_s"]["median"] == pytest.approx(40.0)
    assert entry["compression_share_of_ttft"] == pytest.approx(1.0 / 20.0)


def test_separate_profiling_keeps_stage_timers_out_of_the_ttft_runs(tiny, pixels):
    runner = BenchRunner(tiny, [FULL, EARLYTOM], pixels, tiny.build_prompt("What?"), decode_tokens=2,
                         profile="separate")
    records = runner.run(warmup=0, repeats=1)
    assert [(r.config, r.kind) for r in records] == [("full", "ttft"), ("full", "stages"), ("et", "ttft"),
                                                      ("et", "stages")]
    for r in records:
        if r.kind == "ttft":
            assert r.stages_ms == {} and r.decode_tokens == 2
        else:
            assert r.stages_ms and r.decode_ms is None
    report = build_report([FULL, EARLYTOM], records, ModelShapes.from_hf_config(tiny.model.config))
    assert report["configs"][1]["ttft_ms"]["runs"] == [round(records[2].ttft_ms, 3)]
    assert report["configs"][1]["ttft_profiled_ms"]["runs"] == [round(records[3].ttft_ms, 3)]


def test_noise_guard_discards_disturbed_runs_and_measures_again(tiny, pixels, monkeypatch):
    import earlytom_eval.efficiency.bench as bench

    runner = BenchRunner(tiny, [FULL, EARLYTOM], pixels, tiny.build_prompt("What?"), decode_tokens=0,
                         max_other_cpu=0.1, max_retries=2)
    shares = iter([0.9, 0.0, 0.5, 0.6, 0.7])  # full: noisy then clean; et: noisy until retries run out
    real_measure = runner.measure

    def measure(index, phase="timed", round_=0):
        batch = real_measure(index, phase, round_)
        for record in batch:
            record.other_cpu_share = next(shares)
        return batch

    monkeypatch.setattr(runner, "measure", measure)
    monkeypatch.setattr(bench, "wait_until_idle", lambda *args, **kwargs: 0.0)
    records = runner.run(warmup=0, repeats=1)
    assert [(r.config, r.discarded) for r in records] == [
        ("full", True), ("full", False), ("et", True), ("et", True), ("et", False)
    ]
    report = build_report([FULL, EARLYTOM], records, ModelShapes.from_hf_config(tiny.model.config))
    full, et = report["configs"]
    assert full["timed_runs"] == 1 and full["discarded_runs"] == 1 and full["other_cpu_share_max"] == 0.0
    assert et["timed_runs"] == 1 and et["discarded_runs"] == 2 and et["other_cpu_share_max"] == 0.7
    assert full["ttft_ms"]["runs"] == [round(records[1].ttft_ms, 3)]


def test_decoding_ignores_eos_then_restores_it(tiny):
    eos = tiny.model.generation_config.eos_token_id
    with _eos_ignored(tiny):
        assert tiny.model.generation_config.eos_token_id is None
    assert tiny.model.generation_config.eos_token_id == eos


def test_validate_report_names_missing_fields():
    with pytest.raises(ValueError, match="hardware.device_name"):
        validate_report({"configs": [], "ratios": {}, "hardware": {"device": "cpu"}})
    bad = {"configs": [{"name": "x", "flops": {}}], "ratios": {}}
    with pytest.raises(ValueError, match="flops.vision_encoder"):
        validate_report(bad, bench=False)


def test_parse_shots():
    assert parse_shots("static:3, motion:2") == [("static", 3), ("motion", 2)]
    with pytest.raises(ValueError):
        parse_shots("static")


def test_bench_cli_writes_the_json_schema(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = cli_main(
        ["bench", "--preset", "tiny", "--synthetic", "static:6,motion:6", "--synthetic-size", "96x128",
         "--frames", "6", "--configs", "configs/full.yaml", "configs/earlytom_r0.10.yaml", "--dtype", "float32",
         "--warmup", "1", "--repeats", "1", "--decode-tokens", "2", "--json", str(out)]
    )
    assert code == 0
    assert "random-initialised" in capsys.readouterr().out
    report = json.loads(out.read_text())
    validate_report(report)
    hardware = report["hardware"]
    assert hardware["device"] == "cpu" and hardware["dtype"] == "float32" and hardware["torch"] == torch.__version__
    assert report["protocol"]["warmup"] == 1 and report["protocol"]["repeats"] == 1
    assert report["video"]["frames"] == 6 and report["video"]["synthetic"] == "static:6,motion:6"
    names = [e["name"] for e in report["configs"]]
    assert names == ["full", "earlytom_r0.10"]
    for entry in report["configs"]:
        assert entry["config"]["num_frames"] == 6
        assert set(entry["flops"]) == {"vision_encoder", "projector_pooling", "compression", "llm_prefill",
                                       "decode_step"}
        assert len(entry["frames_per_layer"]) == 26
        assert entry["vs_full"]["total_prefill_flops"] > 0
    assert len(report["runs"]) == 4


def test_bench_cli_runs_peer_methods(tmp_path, capsys):
    """Any method's config runs through the same harness: visual tokens, LLM tokens per layer, the LLM cuts'
    time under ``inner_merge``, peak memory, and FLOPs counted from the method."""
    out = tmp_path / "bench.json"
    code = cli_main(
        ["bench", "--preset", "tiny", "--synthetic", "static:6,motion:6", "--synthetic-size", "96x128",
         "--frames", "6", "--configs", "configs/full.yaml", "configs/holitom_r0.10.yaml", "configs/fastv_r0.25.yaml",
         "--dtype", "float32", "--warmup", "0", "--repeats", "1", "--decode-tokens", "1", "--json", str(out)]
    )
    assert code == 0
    assert "holitom_r0.10" in capsys.readouterr().out
    report = json.loads(out.read_text())
    validate_report(report)
    full, holitom, fastv = report["configs"]
    assert [e["method"] for e in report["configs"]] == ["full", "holitom", "fastv"]
    assert holitom["visual_tokens"] < full["visual_tokens"] == fastv["visual_tokens"] == 6 * 16 + 1
    for entry in (holitom, fastv):
        assert "inner_merge" in entry["stages_ms"] and entry["peak_memory_bytes"] > 0
        assert entry["flops"]["compression"] > 0
    assert holitom["llm_tokens_per_layer"][18] < holitom["llm_tokens_per_layer"][17]
    assert fastv["llm_tokens_per_layer"][2] < fastv["llm_tokens_per_layer"][1] == fastv["prompt_tokens"]
    assert fastv["flops_detail"]["llm_tokens_per_layer"] == fastv["llm_tokens_per_layer"]
    assert set(fastv["flops_detail"]["compression_parts"]) == {"inner_scores"}
    assert {"received_attention", "adjacent_similarity", "dpc_knn", "inner_scores", "inner_assign"} == set(
        holitom["flops_detail"]["compression_parts"])
    assert full["flops"]["compression"] == 0
