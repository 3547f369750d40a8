"""The lmms-eval plugin: entry point, model wrapper, tasks, data checks, efficiency log (CPU, offline)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from earlytom_eval import ConfigError
from earlytom_eval.lmms.datasets import MissingDataError, data_problem, find_video
from earlytom_eval.lmms.efficiency_log import FIELDS, EfficiencyLog, default_log_path, read_log, summarize
from earlytom_eval.lmms.smoke_data import SmokeCheckError, check_run, smoke_documents, write_smoke_data
from earlytom_eval.lmms.task_check import check_tasks

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tasks"
DATA_ENV = (
    "EARLYTOM_VIDEOMME_DIR",
    "EARLYTOM_MLVU_DIR",
    "EARLYTOM_SMOKE_DIR",
    "EARLYTOM_VIDEOMME_ANNOTATIONS",
    "EARLYTOM_MLVU_ANNOTATIONS",
    "EARLYTOM_ALLOW_DOWNLOAD",
)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No data variables set; HF_HOME an empty folder; the smoke data in an empty folder too (its default,
    results/smoke-data, exists after `make smoke`, and tests must not depend on what commands left behind)."""
    for name in DATA_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EARLYTOM_SMOKE_DIR", str(tmp_path / "no-smoke-data"))
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from earlytom_eval.models.presets import write_checkpoint

    return write_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny-ov", seed=0)


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke-data")
    write_smoke_data(out)
    return out


@pytest.fixture(scope="module")
def task_manager():
    from lmms_eval.tasks import TaskManager

    return TaskManager("WARNING", include_path=str(TASKS))


def _load_task_module():
    spec = importlib.util.spec_from_file_location("earlytom_tasks_under_test", TASKS / "earlytom_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------- registration
def test_entry_point_registers_the_model():
    points = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "earlytom_llava_ov"]
    assert points, "run `pip install -e .` so setup.cfg's entry point is installed"
    from lmms_eval.models import get_model

    from earlytom_eval.lmms.model import EarlyTomLlavaOV

    assert get_model("earlytom_llava_ov") is EarlyTomLlavaOV


def test_package_import_does_not_import_lmms_eval():
    code = (
        "import sys, earlytom_eval, earlytom_eval.lmms.manifest, earlytom_eval.lmms.datasets, "
        "earlytom_eval.lmms.efficiency_log, earlytom_eval.lmms.smoke_data; "
        "assert 'lmms_eval' not in sys.modules, 'lmms_eval imported'; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_task_names_resolve(task_manager):
    assert {"earlytom_videomme", "earlytom_mlvu_dev", "earlytom_smoke", "mlvu"} <= set(task_manager.all_tasks)
    assert "mlvu" in task_manager.all_groups
    assert task_manager.match_tasks(["videomme", "mlvu"]) == ["mlvu", "videomme"]


# ---------------------------------------------------------------------------------- model args
_DEFAULTS = dict(pretrained="unused", config=None, max_frames_num=None, device="cpu", dtype="auto",
                 attn_implementation="sdpa", device_map=None, video_backend="auto", batch_size=1, warmup=1)


def _parse(**kwargs):
    from earlytom_eval.lmms.model_args import parse_model_args

    known = {**_DEFAULTS, **{k: v for k, v in kwargs.items() if k in _DEFAULTS}}
    return parse_model_args(**known, overrides={k: v for k, v in kwargs.items() if k not in _DEFAULTS})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"retension": 0.1}, "unknown model_args key(s) 'retension'"),
        ({"dtype": "fp8"}, "invalid dtype 'fp8' (allowed: auto"),
        ({"config": "no_such_config"}, "config file not found: 'no_such_config' (allowed: a YAML path or a name"),
        ({"tau": 2.0}, "invalid config field 'tau': 2.0 (allowed: a number in [0, 1])"),
        ({"max_frames_num": 8, "num_frames": 16}, "max_frames_num=8 and num_frames=16 disagree"),
        ({"batch_size": "0"}, "invalid batch_size '0' (allowed: an integer >= 1)"),
        ({"video_backend": "opencv"}, "invalid video_backend 'opencv' (allowed: auto, decord, pyav, cv2)"),
        ({"attn_implementation": "magic"}, "invalid attn_implementation 'magic'"),
    ],
)
def test_bad_model_args_are_one_line_errors(kwargs, message):
    with pytest.raises((ValueError, ConfigError)) as info:
        _parse(**kwargs)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_the_wrapper_turns_bad_model_args_into_one_line_and_exit_2(capsys):
    from earlytom_eval.lmms.model import EarlyTomLlavaOV

    with pytest.raises(SystemExit) as info:
        EarlyTomLlavaOV(pretrained="unused", dtype="fp8")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: earlytom_llava_ov: invalid dtype 'fp8' (allowed: auto")


def test_config_from_path_name_and_overrides():
    from earlytom_eval.lmms.model_args import build_config as _build_config

    cfg = _build_config("configs/earlytom_r0.10.yaml", {"retention": 0.15, "tau": 0.4, "prune_layers": "8;21;23"}, 16)
    assert (cfg.retention, cfg.tau, cfg.prune_layers, cfg.num_frames) == (0.15, 0.4, (8, 21, 23), 16)
    by_name = _build_config("earlytom_r0.10", {}, None)
    assert by_name.name == "earlytom_r0.10" and by_name.prune_layers == (10, 21, 23)
    # lmms-eval turns `prune_layers=8` into the int 8 and `retention=1` into the int 1
    single = _build_config(None, {"prune_layers": 8, "retention": 1}, None)
    assert single.prune_layers == (8,) and single.retention == 1.0
    assert _build_config("configs/full.yaml", {}, 8).method == "full"


# ---------------------------------------------------------------------------------- generation
@pytest.fixture(scope="module")
def wrapper(checkpoint, tmp_path_factory):
    from earlytom_eval.lmms.model import EarlyTomLlavaOV

    log = tmp_path_factory.mktemp("eff") / "efficiency.jsonl"
    return EarlyTomLlavaOV(
        pretrained=str(checkpoint),
        config="configs/earlytom_r0.10.yaml",
        max_frames_num=4,
        device="cpu",
        efficiency_log=str(log),
        warmup=1,
    )


def _requests(task, docs, gen_kwargs, doc_to_visual):
    from lmms_eval.api.instance import Instance

    return [
        Instance(
            request_type="generate_until",
            arguments=(f"Question {i}? Answer with a letter.", dict(gen_kwargs), doc_to_visual, i, task, "test"),
            idx=0,
            metadata={"task": task, "doc_id": i, "repeats": 1},
        )
        for i in range(len(docs))
    ]


def test_generate_until_answers_and_logs_every_document(wrapper, smoke_dir):
    from lmms_eval.api.instance import GenerationResult
    from lmms_eval.models.model_utils.gen_metrics import get_logged_metrics_history, reset_logged_metrics

    videos = smoke_dir / "data"
    docs = [
        {"video": str(videos / "smoke_cut.mp4")},
        {"video": str(videos / "smoke_missing.mp4")},
        {"video": str(videos / "smoke_corrupt.mp4")},
        {"video": "EXIT"},  # lmms-eval's own videomme calls sys.exit on a missing file
        {"video": str(videos / "smoke_motion.mp4")},
        {"video": None},  # text only
    ]

    def doc_to_visual(doc):
        if doc["video"] == "EXIT":
            sys.exit("video path:/x/gone.mp4 does not exist, please check")
        return [doc["video"]] if doc["video"] else []

    wrapper.task_dict = {"toy": {"test": docs}}
    reset_logged_metrics()
    results = wrapper.generate_until(_requests("toy", docs, {"max_new_tokens": 3, "until": ["\n\n"]}, doc_to_visual))
    assert len(results) == len(docs) and all(isinstance(r, GenerationResult) for r in results)
    for index in (1, 2, 3):
        assert results[index].text == "" and results[index].token_counts is None
    for index in (0, 4, 5):
        counts = results[index].token_counts
        assert counts.input_tokens > 0 and 1 <= counts.output_tokens <= 3

    records = read_log(wrapper.efficiency_log_path())
    assert [r["doc_id"] for r in records] == list(range(len(docs)))
    assert list(records[0])[: len(FIELDS)] == list(FIELDS)
    good, missing, corrupt, exited, _, text_only = records
    assert good["error"] is None and good["frames_in"] == 4 and len(good["frames_per_layer"]) == 26
    assert good["frames_per_layer"][0] == 4 and good["frames_per_layer"][-1] <= 4
    assert good["visual_tokens"] <= 4 * 16 + 1 and good["prompt_tokens"] > good["visual_tokens"]
    assert good["config_hash"] == wrapper.config.fingerprint() and good["method"] == "earlytom"
    for stage in ("vision_encoder_ms", "compression_ms", "llm_prefill_ms", "ttft_ms", "peak_memory_mb"):
        assert good[stage] > 0
    assert "smoke_missing.mp4" in missing["error"] and "file not found" in missing["error"]
    assert "smoke_corrupt.mp4" in corrupt["error"] and "not a decodable video" in corrupt["error"]
    assert "doc_to_visual failed" in exited["error"] and "/x/gone.mp4" in exited["error"]
    assert text_only["error"] is None and text_only["visual_tokens"] == 0
    history = get_logged_metrics_history()
    assert len(history) == 3 and all("ttft" in entry for entry in history)


def test_sampling_and_beams_are_refused_before_any_work(wrapper):
    docs = [{"video": None}]
    wrapper.task_dict = {"toy": {"test": docs}}
    before = wrapper._log.records if wrapper._log else 0
    with pytest.raises(ValueError, match=r"asks for sampling \(temperature=0.7\)"):
        wrapper.generate_until(_requests("toy", docs, {"temperature": 0.7}, lambda doc: []))
    with pytest.raises(ValueError, match=r"num_beams=4"):
        wrapper.generate_until(_requests("toy", docs, {"num_beams": 4}, lambda doc: []))
    assert (wrapper._log.records if wrapper._log else 0) == before
    # temperature with sampling switched off is greedy, as in transformers
    assert wrapper.generate_until(
        _requests("toy", docs, {"temperature": 0.7, "do_sample": False, "max_new_tokens": 2}, lambda d: [])
    )


def test_loglikelihood_and_multi_round_are_not_implemented(wrapper):
    with pytest.raises(NotImplementedError, match="loglikelihood"):
        wrapper.loglikelihood([])
    with pytest.raises(NotImplementedError, match="multi_round"):
        wrapper.generate_until_multi_round([])


def test_efficiency_log_location(wrapper, tmp_path):
    from earlytom_eval.lmms.run_context import RunContext as _RunContext

    saved = (wrapper._run, wrapper._efficiency_arg, wrapper._rank, wrapper._world_size)
    try:
        wrapper._run = _RunContext(
            found=True, output_path=str(tmp_path), datetime_str="20250101_120000", model_args="pretrained=a/b/tiny-ov"
        )
        wrapper._efficiency_arg = None
        assert wrapper.efficiency_log_path() == tmp_path / "b__tiny-ov" / "20250101_120000_efficiency.jsonl"
        wrapper._rank, wrapper._world_size = 3, 8
        assert wrapper.efficiency_log_path().name == "20250101_120000_efficiency_rank3.jsonl"
        wrapper._efficiency_arg = str(tmp_path / "mine.jsonl")
        assert wrapper.efficiency_log_path() == tmp_path / "mine_rank3.jsonl"
        wrapper._efficiency_arg = "off"
        assert wrapper.efficiency_log_path() is None
        wrapper._rank, wrapper._world_size = 0, 1
        wrapper._efficiency_arg = str(tmp_path / "logs")
        assert wrapper.efficiency_log_path() == tmp_path / "logs" / "20250101_120000_efficiency.jsonl"
    finally:
        wrapper._run, wrapper._efficiency_arg, wrapper._rank, wrapper._world_size = saved


# ---------------------------------------------------------------------------------- data checks
def test_missing_data_is_one_message_naming_the_places(clean_env, task_manager, monkeypatch, tmp_path):
    with pytest.raises(MissingDataError) as info:
        check_tasks(["videomme", "mlvu", "earlytom_smoke"], task_manager)
    text = str(info.value)
    assert info.value.code == text and text.startswith("error: data missing")
    expected = f"videomme: VideoMME videos not found: lmms-eval's videomme reads them from {clean_env}/videomme/data"
    assert expected in text
    assert f"earlytom_mlvu_dev: MLVU dev videos not found: {clean_env}/mlvu does not exist" in text
    assert "earlytom_smoke.jsonl does not exist" in text and "EARLYTOM_SMOKE_DIR" in text

    (clean_env / "videomme" / "data").mkdir(parents=True)
    (clean_env / "videomme" / "data" / "abc.mp4").write_bytes(b"x")
    mlvu = tmp_path / "elsewhere" / "mlvu"
    (mlvu / "1_plotQA").mkdir(parents=True)
    (mlvu / "1_plotQA" / "movie.mp4").write_bytes(b"x")
    monkeypatch.setenv("EARLYTOM_MLVU_DIR", str(mlvu))
    smoke = tmp_path / "smoke"
    write_smoke_data(smoke)
    monkeypatch.setenv("EARLYTOM_SMOKE_DIR", str(smoke))
    check_tasks(["videomme", "mlvu", "earlytom_smoke", "earlytom_videomme"], task_manager)


def test_allow_download_skips_the_check(clean_env, task_manager, monkeypatch):
    monkeypatch.setenv("EARLYTOM_ALLOW_DOWNLOAD", "1")
    check_tasks(["videomme", "mlvu"], task_manager)


def test_task_stops_with_the_message_when_its_data_is_missing(clean_env, task_manager, monkeypatch, tmp_path):
    monkeypatch.setenv("EARLYTOM_SMOKE_DIR", str(tmp_path / "nothing"))
    with pytest.raises(MissingDataError, match=r"earlytom_smoke: earlytom_smoke data not found: .*nothing"):
        task_manager.load_task_or_group(["earlytom_smoke"])


def test_smoke_task_loads_the_generated_jsonl(clean_env, task_manager, monkeypatch, smoke_dir):
    monkeypatch.setenv("EARLYTOM_SMOKE_DIR", str(smoke_dir))
    task = task_manager.load_task_or_group(["earlytom_smoke"])["earlytom_smoke"]
    docs = list(task.dataset["test"])
    assert [d["videoID"] for d in docs] == [d["videoID"] for d in smoke_documents()]
    assert task.doc_to_visual(docs[1]) == [str(smoke_dir / "data" / "smoke_cut.mp4")]
    assert "Answer with the option's letter" in task.doc_to_text(docs[1])


def test_doc_to_visual_never_exits(clean_env, monkeypatch, tmp_path):
    module = _load_task_module()
    root = tmp_path / "vmme"
    (root / "data").mkdir(parents=True)
    (root / "data" / "upper.MP4").write_bytes(b"x")
    monkeypatch.setenv("EARLYTOM_VIDEOMME_DIR", str(root))
    assert module.videomme_doc_to_visual({"videoID": "upper"}) == [str(root / "data" / "upper.MP4")]
    assert module.videomme_doc_to_visual({"videoID": "gone"}) == [str(root / "data" / "gone.mp4")]
    assert module.videomme_doc_to_visual({"videoID": "x"})[0].startswith(str(root))
    mlvu = tmp_path / "mlvu"
    (mlvu / "deeper" / "1_plotQA").mkdir(parents=True)
    (mlvu / "deeper" / "1_plotQA" / "m1.mp4").write_bytes(b"x")
    monkeypatch.setenv("EARLYTOM_MLVU_DIR", str(mlvu))
    assert module.mlvu_dev_doc_to_visual({"video_name": "1_plotQA/m1.mp4"}) == [
        str(mlvu / "deeper" / "1_plotQA" / "m1.mp4")
    ]
    assert module.mlvu_dev_doc_to_visual({"video_name": "none.mp4"}) == [str(mlvu / "none.mp4")]


def test_find_video_and_data_problem(clean_env, tmp_path, monkeypatch):
    assert find_video(tmp_path / "absent", "a.mp4") == str(tmp_path / "absent" / "a.mp4")
    monkeypatch.setenv("EARLYTOM_VIDEOMME_DIR", str(tmp_path / "v"))
    (tmp_path / "v" / "data").mkdir(parents=True)
    assert "holds no video files" in data_problem("videomme")
    monkeypatch.setenv("EARLYTOM_VIDEOMME_ANNOTATIONS", str(tmp_path / "ann.parquet"))
    assert "EARLYTOM_VIDEOMME_ANNOTATIONS" in data_problem("videomme")


# ---------------------------------------------------------------------------------- smoke data and scoring
def test_smoke_documents_are_videomme_documents():
    from lmms_eval.tasks.videomme.utils import CATEGORIES, SUB_CATEGORIES, TASK_CATEGORIES, VIDEO_TYPE

    module = _load_task_module()
    docs = smoke_documents()
    assert len(docs) == 6 and len({d["videoID"] for d in docs}) == 6
    for doc in docs:
        assert doc["duration"] in VIDEO_TYPE and doc["domain"] in CATEGORIES
        assert doc["sub_category"] in SUB_CATEGORIES and doc["task_type"] in TASK_CATEGORIES
        assert [o[0] for o in doc["options"]] == ["A", "B", "C", "D"] and doc["answer"] in "ABCD"
    scored = [module.videomme_process_results(d, [d["answer"]])["videomme_perception_score"] for d in docs]
    assert module.videomme_aggregate_results(scored) == 100.0
    wrong = [module.videomme_process_results(d, [""])["videomme_perception_score"] for d in docs]
    assert module.videomme_aggregate_results(wrong) == 0.0


def test_smoke_clips_have_the_stated_structure(smoke_dir):
    from earlytom_eval.video import VideoLoadError, load_video

    lines = [json.loads(line) for line in (smoke_dir / "earlytom_smoke.jsonl").read_text().splitlines()]
    assert [d["videoID"] for d in lines] == [d["videoID"] for d in smoke_documents()]
    cut = load_video(smoke_dir / "data" / "smoke_cut.mp4", 24).frames.astype(int)
    jumps = [abs(cut[t + 1] - cut[t]).mean() for t in range(23)]
    assert max(range(23), key=jumps.__getitem__) == 11 and sorted(jumps)[-2] < 1.0
    with pytest.raises(VideoLoadError, match="smoke_corrupt.mp4"):
        load_video(smoke_dir / "data" / "smoke_corrupt.mp4", 8)
    assert not (smoke_dir / "data" / "smoke_missing.mp4").exists()


def test_check_run_reports_what_is_missing(tmp_path):
    with pytest.raises(SmokeCheckError, match="no \\*_results.json"):
        check_run(tmp_path)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "20250101_000000_results.json").write_text(
        json.dumps({"results": {"earlytom_smoke": {"videomme_perception_score,none": 0.0}}})
    )
    with pytest.raises(SmokeCheckError, match="samples file missing"):
        check_run(tmp_path)
    (folder / "20250101_000000_samples_earlytom_smoke.jsonl").write_text('{"doc_id": 0}\n{"doc_id": 1}\n')
    with pytest.raises(SmokeCheckError, match="efficiency log missing"):
        check_run(tmp_path)
    log = EfficiencyLog(folder / "20250101_000000_efficiency.jsonl")
    log.write({"task": "earlytom_smoke", "doc_id": 0, "config_hash": "h"})
    with pytest.raises(SmokeCheckError, match="disagree"):
        check_run(tmp_path)
    log.write({"task": "earlytom_smoke", "doc_id": 1, "config_hash": "h", "error": "bad"})
    log.close()
    summary = check_run(tmp_path, expected_docs=2)
    assert summary["docs"] == 2 and summary["errors"] == 1 and summary["score"] == 0.0


# ---------------------------------------------------------------------------------- efficiency log
def test_efficiency_log_appends_flushes_and_survives_a_torn_line(tmp_path):
    path = default_log_path(tmp_path / "out", "20250101_000000")
    assert path == tmp_path / "out" / "20250101_000000_efficiency.jsonl"
    assert default_log_path(tmp_path, "d", rank=2, world_size=4).name == "d_efficiency_rank2.jsonl"
    log = EfficiencyLog(path)
    log.write({"task": "t", "doc_id": 0, "ttft_ms": 12.5, "frames_per_layer": (8, 4), "extra": float("nan")})
    assert read_log(path)[0]["frames_per_layer"] == [8, 4]  # flushed before close
    log.write({"task": "t", "doc_id": 1, "error": "cannot read video 'x.mp4': file not found"})
    with open(path, "a") as handle:
        handle.write('{"task": "t", "doc_')  # a crash mid-line
    records = read_log(path)
    assert [r["doc_id"] for r in records] == [0, 1] and records[0]["extra"] is None
    assert records[0]["time"] and list(records[0])[: len(FIELDS)] == list(FIELDS)
    summary = summarize(records)
    assert summary["docs"] == 2 and summary["errors"] == 1 and summary["avg_ttft_ms"] == 12.5
