"""The method interface: configs of every method, and VisionZip, HoliTom and FastV end to end on the tiny preset."""

from __future__ import annotations

import glob
import math
from pathlib import Path

import pytest
import torch

from earlytom_eval.compression.config import METHODS, CompressionConfig, ConfigError, LlmCut, ModelFacts, load_config
from earlytom_eval.compression.params import PARAMS_BY_METHOD
from earlytom_eval.compression.registry import build_method, registered_methods
from earlytom_eval.compression.visionzip import visionzip_counts
from earlytom_eval.models import llm
from earlytom_eval.models.llava_ov import EarlyTomLlavaOnevision
from earlytom_eval.models.presets import build_model, build_processor
from earlytom_eval.video import synthetic_frames

REPO = Path(__file__).resolve().parents[1]
FRAMES = 8
POOLED = 16  # tiny preset: 7x7 patches pooled to 4x4
FACTS_7B = ModelFacts(encoder_layers=26, llm_layers=28)


@pytest.fixture(scope="module")
def tiny1(one_thread):
    """The tiny preset of seed 1 (seed 0 answers the same token whatever it is shown)."""
    full = CompressionConfig(method="full")
    return EarlyTomLlavaOnevision(build_model("tiny", seed=1), build_processor("tiny"), full)


@pytest.fixture(scope="module")
def clip():
    return synthetic_frames([("static", FRAMES // 2), ("motion", FRAMES - FRAMES // 2)], seed=4)


def _run(model, cfg, clip, question="What happens?"):
    method_model = model.with_config(load_config(cfg, num_frames=FRAMES))
    prompt = method_model.build_prompt(question)
    with torch.inference_mode():
        inputs, encodings, lengths = method_model.prepare_inputs([prompt], [[clip]])
        state = method_model.prefill(inputs, encodings=encodings)
    return method_model, inputs, encodings[0][0], lengths[0], state


# ------------------------------------------------------------------------------------------- configs
SHIPPED = sorted(glob.glob(str(REPO / "configs" / "*_r0.*.yaml")))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: Path(p).stem)
def test_every_shipped_config_validates_and_names_its_method_and_ratio(path):
    cfg = load_config(path)
    method, _, ratio = Path(path).stem.rpartition("_r")
    assert cfg.method == method and cfg.retention == pytest.approx(float(ratio))
    assert cfg.name == Path(path).stem
    if method in registered_methods():
        build_method(cfg).check_model(FACTS_7B)


def test_every_method_is_named_in_the_config_and_has_its_parameters_or_none():
    assert set(PARAMS_BY_METHOD) == set(METHODS) - {"full", "earlytom"}
    for method in METHODS:
        cfg = CompressionConfig.from_mapping({"method": method})
        assert (cfg.params is None) == (method in ("full", "earlytom"))
        assert set(cfg.to_dict()) == set(CompressionConfig.fields_for(method))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"method": "visionzip", "prune_layers": [3]}, "field(s) 'prune_layers' do not apply to method 'visionzip'"),
        ({"method": "visionzip", "dominant_ratio": 1.5}, "field 'dominant_ratio': 1.5 (allowed: a number in [0, 1])"),
        ({"method": "holitom", "K": 0}, "invalid holitom field 'K': 0 (allowed: an integer >= 1)"),
        ({"method": "holitom", "inner_ratio": 1.0}, "holitom field 'inner_ratio': 1.0 (allowed: a number in [0, 1))"),
        ({"method": "fastv", "layer": 0}, "invalid fastv field 'layer': 0 (allowed: an integer >= 1)"),
        ({"method": "fastv", "spatial_tokens": 3}, "field(s) 'spatial_tokens' do not apply to method 'fastv'"),
        ({"method": "tome", "merge_num": -1}, "invalid tome field 'merge_num': -1"),
        ({"method": "dycoke", "decode_pruning": "yes"}, "field 'decode_pruning': 'yes' (allowed: true or false)"),
        ({"method": "earlytom", "spatial_tokens": 3}, "field(s) 'spatial_tokens' do not apply to method 'earlytom'"),
        ({"method": "holitom", "bogus": 1}, "unknown config field(s) 'bogus'"),
    ],
)
def test_bad_method_fields_are_one_line_naming_field_value_and_allowed(values, message):
    with pytest.raises(ConfigError) as err:
        load_config(values)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_command_line_overrides_parse_each_method_field_by_its_type():
    cfg = load_config(REPO / "configs" / "holitom_r0.10.yaml")
    changed = cfg.with_overrides({"tau": "0.5", "inner_layer": "none", "density_noise": "false", "K": "3"})
    assert (changed.params.tau, changed.params.inner_layer, changed.params.density_noise, changed.params.K) == (
        0.5, None, False, 3,
    )
    assert changed.llm_cuts() == () and cfg.llm_cuts() == (LlmCut(18, 0.5, "fold"),)
    assert changed.name == cfg.name  # a file's name stays
    with pytest.raises(ConfigError, match="invalid holitom field 'K': 'x'"):
        cfg.with_overrides({"K": "x"})
    switched = cfg.replace(method="fastv")
    assert switched.method == "fastv" and switched.retention == cfg.retention and switched.params.layer == 2


def test_llm_depth_is_checked_for_every_cut():
    with pytest.raises(ConfigError, match="invalid fastv field 'layer': 40"):
        build_method(load_config({"method": "fastv", "layer": 40})).check_model(FACTS_7B)
    with pytest.raises(ConfigError, match="invalid holitom field 'inner_layer': 28"):
        build_method(load_config({"method": "holitom", "inner_layer": 28})).check_model(FACTS_7B)


def test_visionzip_counts_of_the_reference_scripts_at_7b_shapes():
    for ratio, total in {0.10: 641, 0.15: 961, 0.20: 1281, 0.25: 1601}.items():
        cfg = load_config(REPO / "configs" / f"visionzip_r{ratio:.2f}.yaml")
        assert build_method(cfg).planned_counts(FACTS_7B, 32).visual_tokens == total


# ------------------------------------------------------------------------------------ end to end
def test_visionzip_end_to_end_keeps_dominant_tokens_unchanged_and_counts_per_spec(tiny1, clip):
    _, _, full_encoding, _, full_state = _run(tiny1, {"method": "full"}, clip)
    model, _, encoding, length, state = _run(tiny1, {"method": "visionzip", "retention": 0.25}, clip)
    dominant, contextual = visionzip_counts(round(POOLED * 0.25))
    assert encoding.visual_tokens == FRAMES * (dominant + contextual) + 1
    assert encoding.visual_tokens == model.method.planned_counts(ModelFacts(2, 24, 7, 4), FRAMES).visual_tokens
    kept = encoding.source >= 0
    assert int(kept.sum()) == FRAMES * dominant
    # A dominant token is the pooled token it came from (full's tokens are every pooled token, frame-major).
    assert torch.equal(encoding.tokens[:-1][kept], full_encoding.tokens[:-1][encoding.source[kept]])
    assert torch.equal(encoding.tokens[-1], full_encoding.tokens[-1])  # the newline
    assert set(state.llm.tokens_per_layer[0]) == {length}
    assert not torch.allclose(state.llm.logits, full_state.llm.logits)


def test_holitom_outer_count_is_within_its_bound_and_inner_cut_halves_the_visual_tokens(tiny1, clip):
    cfg = {"method": "holitom", "retention": 0.25, "tau": 0.65}
    model, _, encoding, length, state = _run(tiny1, cfg, clip)
    bound = model.method.planned_counts(ModelFacts(2, 24, 7, 4), FRAMES)
    assert not bound.exact and encoding.visual_tokens <= bound.visual_tokens
    per_layer = state.llm.tokens_per_layer[0]
    keep = max(1, round(encoding.visual_tokens * 0.5))
    assert per_layer[:18] == (length,) * 18
    assert per_layer[18:] == (length - encoding.visual_tokens + keep,) * (len(per_layer) - 18)
    # Without the inner stage ("w/o M") every layer sees the whole prompt.
    _, _, _, length_wo, state_wo = _run(tiny1, {**cfg, "inner_layer": None}, clip)
    assert set(state_wo.llm.tokens_per_layer[0]) == {length_wo}


def test_fastv_keeps_every_token_before_layer_k_and_round_rho_n_after_at_their_original_positions(tiny1, clip):
    model, _, encoding, length, state = _run(tiny1, {"method": "fastv", "retention": 0.25, "layer": 2}, clip)
    assert encoding.visual_tokens == FRAMES * POOLED + 1
    keep = round(encoding.visual_tokens * 0.25)
    per_layer = state.llm.tokens_per_layer[0]
    assert per_layer[:2] == (length,) * 2
    assert set(per_layer[2:]) == {length - encoding.visual_tokens + keep}
    later = state.llm.groups[1]
    assert later.start == 2 and int(later.mask.sum()) == length - encoding.visual_tokens + keep
    # Survivors keep their original RoPE positions: the last prompt token is still at length - 1.
    assert int(later.positions[0, -1]) == length - 1
    assert int(state.llm.next_positions[0]) == length
    decision = state.llm.decisions[0]
    assert decision.kept.numel() == keep and int((decision.assign >= 0).sum()) == keep  # dropped, not merged


def test_several_cuts_with_nothing_cut_equal_no_cut_and_each_cut_starts_a_layer_group(tiny1, clip):
    model, inputs, encoding, length, _ = _run(tiny1, {"method": "full"}, clip)
    from earlytom_eval.models.llava_ov import visual_token_mask

    mask = inputs["attention_mask"]
    visual = visual_token_mask(mask, [[encoding]])
    with torch.inference_mode():
        plain = llm.prefill(model.model, inputs["inputs_embeds"], mask)
        noop = llm.prefill(
            model.model, inputs["inputs_embeds"], mask, visual_mask=visual,
            cuts=[LlmCut(3, 0.0, "drop"), LlmCut(9, 0.0, "fold")],
        )
        two = llm.prefill(
            model.model, inputs["inputs_embeds"], mask, visual_mask=visual,
            cuts=[LlmCut(9, 0.5, "fold"), LlmCut(3, 0.5, "drop")],
        )
        logits = [llm.decode_step(model.model, two, plain.logits.argmax(-1)) for _ in range(2)]
    assert torch.allclose(noop.logits, plain.logits, atol=1e-5)
    n = encoding.visual_tokens
    after3 = round(n * 0.5)
    after9 = round(after3 * 0.5)
    text = length - n
    assert two.tokens_per_layer[0] == (length,) * 3 + (text + after3,) * 6 + (text + after9,) * (24 - 9)
    assert [(g.start, g.stop) for g in two.groups] == [(0, 3), (3, 9), (9, 24)]
    assert all(torch.isfinite(step).all() for step in logits)
    assert two.cache.layers[0].keys.shape[2] == length + 2
    assert two.cache.layers[20].keys.shape[2] == text + after9 + 2


def test_peer_methods_in_a_batch_of_videos_with_different_lengths(tiny1):
    short = synthetic_frames([("motion", 4)], seed=5)
    long = synthetic_frames([("static", 4), ("motion", 4)], seed=6)
    for cfg in ({"method": "visionzip", "retention": 0.25}, {"method": "holitom", "retention": 0.25},
                {"method": "fastv", "retention": 0.25}):
        model = tiny1.with_config(load_config(cfg, num_frames=8))
        prompts = [model.build_prompt("Q?"), model.build_prompt("A longer question about the clip?")]
        batch = model.generate(prompts, [[short], [long]], max_new_tokens=3)
        alone = [model.generate([p], [[v]], max_new_tokens=3)[0] for p, v in zip(prompts, [short, long])]
        assert [b.visual_tokens for b in batch] == [a.visual_tokens for a in alone]
        assert [b.token_ids for b in batch] == [a.token_ids for a in alone], cfg


def test_unimplemented_or_misfitting_method_is_one_line_before_anything_runs(tiny1):
    with pytest.raises(ConfigError, match=r"invalid visionzip field 'spatial_tokens': 20 \(allowed: 1\.\.16"):
        tiny1.with_config(load_config(REPO / "configs" / "visionzip_r0.10.yaml"))
    assert math.isfinite(load_config({"method": "visionzip"}).retention)


@pytest.mark.parametrize(
    "cfg",
    [{"method": "full"}, {"method": "earlytom", "retention": 0.25, "prune_layers": [0]},
     {"method": "visionzip", "retention": 0.25}, {"method": "holitom", "retention": 0.25}],
    ids=lambda c: c["method"],
)
def test_batched_encoding_gives_each_video_what_it_gets_alone(tiny1, cfg):
    model = tiny1.with_config(load_config(cfg, num_frames=8))
    videos = [
        model.preprocess_video(synthetic_frames([("static", 6), ("motion", 2)], seed=7)),
        model.preprocess_video(synthetic_frames([("motion", 4)], seed=8)),
        model.preprocess_video(synthetic_frames([("static", 8)], seed=9)),
    ]
    together = model.encode_videos(videos)
    for video, batched in zip(videos, together):
        alone = model.encode_video(video)
        assert batched.frames_per_layer == alone.frames_per_layer
        assert batched.frame_sources == alone.frame_sources
        assert torch.equal(batched.source, alone.source)
        assert torch.allclose(batched.tokens, alone.tokens, atol=1e-5, rtol=1e-4)


def test_a_model_loaded_for_one_config_finds_fastvids_head_in_its_checkpoint_when_switched(tmp_path, one_thread):
    from earlytom_eval import load_model
    from earlytom_eval.models.presets import write_checkpoint

    folder = write_checkpoint("tiny", tmp_path / "tiny-ov", seed=1)
    full = load_model(folder, {"method": "full"})
    assert full.pooling_head is None
    fastvid = full.with_config(load_config(REPO / "configs" / "fastvid_r0.10.yaml", num_frames=4))
    assert fastvid.pooling_head is not None
    clip = synthetic_frames([("motion", 4)], seed=3)
    out = fastvid.generate([fastvid.build_prompt("Q?")], [[clip]], max_new_tokens=2)[0]
    assert out.visual_tokens < 4 * POOLED + 1
