"""ToMe and DyCoke end to end on the tiny preset (7 x 7 patches, 4 x 4 pooled tokens per frame, 26 SigLIP
layers, 24 LLM layers): token counts against the tensor functions and planned counts, ToMe's schedule and its
merge_num = 0 identity, DyCoke's decode-time cache pruning (decode logits change, the prefill never does;
batches of prompts of different lengths), and ``earlytom-eval generate`` with each method's config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from earlytom_eval import CompressionConfig, ConfigError, load_config
from earlytom_eval.cli import main as cli_main
from earlytom_eval.compression.config import ModelFacts
from earlytom_eval.compression.dycoke import choose_ttm_k, ttm_keep_count, ttm_token_count
from earlytom_eval.compression.registry import build_method
from earlytom_eval.compression.tome import merge_schedule, tome_llm_token_count
from earlytom_eval.models.llava_ov import EarlyTomLlavaOnevision, model_facts, visual_token_mask
from earlytom_eval.models.presets import build_model, build_processor, write_checkpoint
from earlytom_eval.video import synthetic_frames, write_video

FRAMES = 8
PATCHES = 49  # tiny: 98 px / 14 px = 7 x 7
POOLED = 16  # tiny: 7 x 7 pooled to 4 x 4
FACTS_7B = ModelFacts(encoder_layers=26, llm_layers=28)
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def hf_model():
    """The tiny preset with seed 1 (its answers depend on the input, unlike seed 0's)."""
    return build_model("tiny", seed=1)


@pytest.fixture(scope="module")
def processor():
    return build_processor("tiny")


def _model(hf_model, processor, **fields) -> EarlyTomLlavaOnevision:
    return EarlyTomLlavaOnevision(hf_model, processor, CompressionConfig.from_mapping({"num_frames": FRAMES, **fields}))


def _video(num_frames=FRAMES, seed=0):
    return synthetic_frames([("static", num_frames // 2), ("motion", num_frames - num_frames // 2)], seed=seed)


def _run(model, questions, videos, max_new_tokens=4):
    """(encodings, prefill first-token logits, every step's logits) of a batch, greedily decoded."""
    prompts = [model.build_prompt(q) for q in questions]
    inputs, encodings, _ = model.prepare_inputs(prompts, [[v] for v in videos])
    state = model.prefill(inputs, encodings=encodings)
    _, logits = model.decode(state, max_new_tokens, output_logits=True)
    return encodings, logits


# ------------------------------------------------------------------------------------------------ ToMe
@pytest.mark.parametrize("retention", [0.10, 0.25])
def test_tome_token_count_and_schedule_follow_the_plan(hf_model, processor, one_thread, retention):
    model = _model(hf_model, processor, method="tome", retention=retention)
    facts = model_facts(hf_model.config)
    assert (facts.patch_grid, facts.pooled_per_frame) == (7, POOLED)
    method = model.method
    merge_num = method.merge_num()
    schedule = merge_schedule(merge_num, 26, -0.5)
    planned = method.planned_counts(facts, FRAMES)

    out = model.generate([model.build_prompt("What happens?")], [[_video()]], max_new_tokens=2)[0]
    encoding = out.videos[0]
    assert merge_num > 0
    assert out.visual_tokens == tome_llm_token_count(merge_num, FRAMES, PATCHES) == planned.visual_tokens
    assert planned.exact
    expected_per_layer = tuple(PATCHES - sum(schedule[:i]) for i in range(26))
    assert encoding.tokens_per_layer == expected_per_layer == planned.tokens_per_layer
    assert all(a >= b for a, b in zip(expected_per_layer, expected_per_layer[1:]))
    assert expected_per_layer[-1] - schedule[-1] == round((PATCHES - merge_num) ** 0.5) ** 2
    assert bool((encoding.source == -1).all())  # ToMe's pooling mixes merged tokens: no single source
    assert encoding.rho_eff == pytest.approx((out.visual_tokens - 1) / (FRAMES * POOLED))


def test_tome_with_merge_num_zero_is_exactly_full(hf_model, processor, one_thread):
    tome = _model(hf_model, processor, method="tome", merge_num=0)
    full = _model(hf_model, processor, method="full")
    video = _video()
    assert tome.method.encoder_plan(26).merge_layers == ()
    tome_enc, tome_logits = _run(tome, ["What happens?"], [video], max_new_tokens=2)
    full_enc, full_logits = _run(full, ["What happens?"], [video], max_new_tokens=2)
    assert torch.equal(tome_enc[0][0].tokens, full_enc[0][0].tokens)
    assert tome_enc[0][0].tokens_per_layer == (PATCHES,) * 26
    for a, b in zip(tome_logits, full_logits):
        assert torch.equal(a, b)


def test_tome_infeasible_merge_num_is_one_config_error_naming_the_nearest(hf_model, processor):
    with pytest.raises(ConfigError) as err:  # tiny: 49 - n*n feasible for 0, 13, 33, 40, 45
        _model(hf_model, processor, method="tome", merge_num=10)
    message = str(err.value)
    assert "\n" not in message and "merge_num" in message and "nearest: 0, 13" in message
    method = build_method(CompressionConfig(method="tome", params={"merge_num": 600}))
    with pytest.raises(ConfigError, match=r"'merge_num': 600 .*nearest: 585, 608"):
        method.check_model(FACTS_7B)
    build_method(CompressionConfig(method="tome", params={"merge_num": 608})).check_model(FACTS_7B)


@pytest.mark.parametrize(
    "rho, merge_num, tokens", [("0.10", 665, 513), ("0.15", 629, 801), ("0.20", 585, 1153), ("0.25", 533, 1569)]
)
def test_tome_configs_resolve_on_7b_to_the_numbers_in_their_comments(rho, merge_num, tokens):
    path = CONFIGS / f"tome_r{rho}.yaml"
    method = build_method(load_config(path))
    method.check_model(FACTS_7B)
    assert method.merge_num() == merge_num
    assert method.planned_counts(FACTS_7B, 32).visual_tokens == tokens
    text = path.read_text()
    assert f"is {merge_num}:" in text and f"{tokens} tokens" in text


# ---------------------------------------------------------------------------------------------- DyCoke
@pytest.mark.parametrize("fields", [{"retention": 0.10}, {"ttm_k": 0.5}])
def test_dycoke_token_count_is_ttm_token_count(hf_model, processor, one_thread, fields):
    model = _model(hf_model, processor, method="dycoke", decode_pruning=False, **fields)
    k = fields.get("ttm_k", choose_ttm_k(0.10, FRAMES, POOLED).k)
    expected = ttm_token_count(FRAMES, ttm_keep_count(k, POOLED), POOLED)
    planned = model.method.planned_counts(model_facts(hf_model.config), FRAMES)
    out = model.generate([model.build_prompt("What happens?")], [[_video()]], max_new_tokens=1)[0]
    assert out.visual_tokens == expected == planned.visual_tokens and planned.exact
    assert out.visual_tokens < FRAMES * POOLED + 1


@pytest.mark.parametrize("rho", ["0.10", "0.15", "0.20", "0.25"])
def test_dycoke_configs_use_the_most_aggressive_k_below_the_floor(rho):
    cfg = load_config(CONFIGS / f"dycoke_r{rho}.yaml")
    setting = choose_ttm_k(float(rho))
    assert cfg.params.ttm_k == setting.k == 1.0
    assert setting.tokens == 1765 and round(setting.retention, 3) == 0.281
    assert (cfg.params.decode_layer, cfg.params.decode_prune, cfg.params.decode_threshold) == (3, 0.8, 0.9)
    assert build_method(cfg).planned_counts(FACTS_7B, 32).visual_tokens == 1765


def test_dycoke_decode_pruning_changes_decode_logits_never_the_prefill(hf_model, processor, one_thread):
    video = _video()
    on = _model(hf_model, processor, method="dycoke", ttm_k=0.5)
    off = _model(hf_model, processor, method="dycoke", ttm_k=0.5, decode_pruning=False)
    none = _model(hf_model, processor, method="dycoke", ttm_k=0.5, decode_prune=0.0)
    assert on.method.decode_pruning() is not None and off.method.decode_pruning() is None
    _, on_logits = _run(on, ["What happens?"], [video])
    _, off_logits = _run(off, ["What happens?"], [video])
    _, none_logits = _run(none, ["What happens?"], [video])
    assert len(on_logits) >= 2 and len(off_logits) >= 2
    assert torch.equal(on_logits[0], off_logits[0])  # the prefill is untouched
    assert not torch.allclose(on_logits[1], off_logits[1], atol=1e-4)  # the first decode step always prunes
    for a, b in zip(none_logits, off_logits):  # P = 0 keeps every entry: the masking itself changes nothing
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dycoke_decode_pruning_batch_of_prompts_of_different_lengths(hf_model, processor, one_thread):
    model = _model(hf_model, processor, method="dycoke", ttm_k=0.5)
    questions = ["What happens?", "Describe what is happening in this video, in detail please."]
    videos = [_video(8, seed=0), _video(6, seed=1)]
    encodings, batch_logits = _run(model, questions, videos)
    assert encodings[0][0].visual_tokens != encodings[1][0].visual_tokens
    inputs, encodings, _ = model.prepare_inputs([model.build_prompt(q) for q in questions], [[v] for v in videos])
    pruner = model.prefill(inputs, encodings=encodings).pruner
    visual = visual_token_mask(inputs["attention_mask"], encodings)
    for row in range(2):  # the image span: the video's tokens without the newline and the last one (quirk)
        assert int(pruner.starts[row]) == int(visual[row].nonzero()[0])
        assert int(pruner.image_lengths[row]) == int(visual[row].sum()) - 2
    for row, (question, video) in enumerate(zip(questions, videos)):
        _, alone = _run(model, [question], [video])
        steps = min(len(alone), len(batch_logits))
        assert steps >= 2
        for step in range(steps):
            torch.testing.assert_close(batch_logits[step][row], alone[step][0], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny-ov", seed=1)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clips") / "clip.mp4", _video(12))


@pytest.mark.parametrize("config", ["tome_r0.10.yaml", "dycoke_r0.10.yaml"])
def test_cli_generate_runs_each_config_on_a_tiny_checkpoint(checkpoint, clip, capsys, config, one_thread):
    args = ["generate", "--pretrained", str(checkpoint), "--config", f"configs/{config}", "--frames", str(FRAMES)]
    args += ["--video", str(clip), "--question", "What happens?", "--max-new-tokens", "3", "--json"]
    assert cli_main(args) == 0
    report = json.loads(capsys.readouterr().out)
    method = build_method(load_config(CONFIGS / config, num_frames=FRAMES))
    facts = ModelFacts(encoder_layers=26, llm_layers=24, patch_grid=7, pooled_grid=4)
    method.check_model(facts)
    assert report["method"] == re.sub(r"_r.*", "", config)
    assert report["visual_tokens"] == method.planned_counts(facts, FRAMES).visual_tokens
    assert report["generated_tokens"] >= 1
