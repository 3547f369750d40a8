"""FastVID through the model: SigLIP's attention-pooling head, its loading, and the tiny preset end to end.

The head is checked against ``nn.MultiheadAttention`` and transformers' own ``SiglipMultiheadAttentionPoolingHead``
with the same weights; the pipeline against ``fastvid_select`` run by hand on the encoder's output, the token
count of the spec's budgets, the prefill's position ids (gaps kept) and ``full``'s logits. The tiny model uses
seed 1 (seed 0 answers the same token whatever it is shown).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from earlytom_eval import CompressionConfig, ConfigError, load_model
from earlytom_eval.cli import main as cli_main
from earlytom_eval.compression.config import ModelFacts, load_config
from earlytom_eval.compression.fastvid import anchor_budget, dyseg, fastvid_budgets, fastvid_select
from earlytom_eval.compression.peers import FastVIDMethod, seeded_generator
from earlytom_eval.compression.visionzip import pool_grid
from earlytom_eval.models.pooling_head import (
    DEFAULT_HEAD,
    HEAD_FOLDER,
    AttentionPoolingHead,
    load_pooling_head,
    random_head_state,
    write_random_head,
)
from earlytom_eval.models.presets import preset_config, write_checkpoint
from earlytom_eval.video import synthetic_frames, write_video

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FULL = CompressionConfig(method="full")
POOLED = 16  # tiny preset: 7x7 encoder tokens pooled to 4x4
FRAMES = 16


def _vision(hidden=32, intermediate=48, heads=4):
    return SimpleNamespace(
        hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=heads, layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
    )


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------------------------ the head
def test_head_matches_multihead_attention_and_transformers(one_thread):
    from transformers import SiglipVisionConfig
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    vision = _vision()
    state = random_head_state(vision, seed=3)
    head = load_pooling_head("random", "unused", vision, seed=3)
    hidden = torch.randn(5, 9, 32, generator=torch.Generator().manual_seed(0))
    probe, features = head(hidden)
    assert probe.shape == (5, 9) and probe.dtype == torch.float32 and features.shape == (5, 32)
    assert torch.allclose(probe.sum(-1), torch.ones(5))

    # Naive reference: post_layernorm, then torch's MultiheadAttention (weights averaged over heads).
    get = {k.removeprefix("vision_model."): v for k, v in state.items()}
    ln_weight, ln_bias = get["post_layernorm.weight"], get["post_layernorm.bias"]
    normed = torch.nn.functional.layer_norm(hidden, (32,), ln_weight, ln_bias, 1e-6)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    mha.load_state_dict(
        {
            "in_proj_weight": get["head.attention.in_proj_weight"],
            "in_proj_bias": get["head.attention.in_proj_bias"],
            "out_proj.weight": get["head.attention.out_proj.weight"],
            "out_proj.bias": get["head.attention.out_proj.bias"],
        }
    )
    with torch.no_grad():
        attended, weights = mha(get["head.probe"].expand(5, 1, 32), normed, normed)
    assert weights.shape == (5, 1, 9)
    torch.testing.assert_close(probe, weights[:, 0], rtol=1e-5, atol=1e-6)

    # transformers' head with the same weights gives the same frame features.
    config = SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, layer_norm_eps=1e-6)
    theirs = SiglipMultiheadAttentionPoolingHead(config).eval()
    theirs.load_state_dict({k.removeprefix("head."): v for k, v in get.items() if k.startswith("head.")})
    with torch.no_grad():
        expected = theirs(normed)
        residual = attended + theirs.mlp(theirs.layernorm(attended))
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features, residual[:, 0], rtol=1e-5, atol=1e-5)


def test_head_casts_its_input_and_random_weights_follow_the_seed():
    vision = _vision()
    head = load_pooling_head("random", "unused", vision, dtype="bfloat16")
    probe, features = head(torch.randn(2, 4, 32))
    assert probe.dtype == torch.float32 and features.dtype == torch.bfloat16
    same = random_head_state(vision, seed=5)
    assert all(torch.equal(v, random_head_state(vision, seed=5)[k]) for k, v in same.items())
    other = random_head_state(vision, seed=6)
    assert not torch.equal(same["vision_model.head.probe"], other["vision_model.head.probe"])


# ------------------------------------------------------------------------------------------ loading
def test_head_loads_from_a_siglip_folder_among_other_tensors(tmp_path):
    from safetensors.torch import save_file

    vision = _vision()
    folder = tmp_path / "siglip"
    write_random_head(folder, vision, seed=2)
    # A second shard with tensors the head does not read (a full SigLIP checkpoint has the towers too).
    unrelated = {"text_model.x": torch.zeros(3), "vision_model.encoder.y": torch.ones(2)}
    save_file(unrelated, str(folder / "other.safetensors"))
    head = load_pooling_head(str(folder), "unused", vision)
    reference = AttentionPoolingHead.from_vision_config(vision)
    reference.load_siglip_state({k.removeprefix("vision_model."): v for k, v in random_head_state(vision, 2).items()})
    for name, value in reference.state_dict().items():
        assert torch.equal(head.state_dict()[name], value), name


def test_auto_prefers_the_checkpoints_head_folder(tmp_path, monkeypatch):
    vision = _vision()
    write_random_head(tmp_path / "llava" / HEAD_FOLDER, vision, seed=4)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _no_hub)
    head = load_pooling_head("auto", str(tmp_path / "llava"), vision)
    assert torch.equal(head.probe, random_head_state(vision, 4)["vision_model.head.probe"])


def _no_hub(repo_id, filename, **kwargs):
    raise OSError(f"offline: {repo_id}/{filename}")


def test_auto_without_a_head_folder_names_the_hub_id(tmp_path, monkeypatch):
    asked = []

    def offline(repo_id, filename, **kwargs):
        asked.append(repo_id)
        raise OSError("offline")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    with pytest.raises(ConfigError) as err:
        load_pooling_head("auto", str(tmp_path), _vision())
    assert DEFAULT_HEAD in _one_line(err) and "cannot be found" in str(err.value)
    assert set(asked) == {DEFAULT_HEAD}


def test_hub_id_reads_only_the_downloaded_files(tmp_path, monkeypatch):
    vision = _vision()
    write_random_head(tmp_path / "snapshot", vision, seed=8)

    def cached(repo_id, filename, **kwargs):
        assert repo_id == "someone/siglip"
        if filename.endswith(".json"):
            raise FileNotFoundError(filename)
        return str(tmp_path / "snapshot" / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", cached)
    head = load_pooling_head("someone/siglip", "unused", vision)
    assert torch.equal(head.probe, random_head_state(vision, 8)["vision_model.head.probe"])


def test_loading_errors_are_one_line_naming_the_place(tmp_path):
    vision = _vision()
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as err:
        load_pooling_head(str(missing), "unused", vision)
    assert str(missing) in _one_line(err) and "does not exist" in str(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as err:
        load_pooling_head(str(empty), "unused", vision)
    assert str(empty) in _one_line(err) and "vision_model.post_layernorm.weight" in str(err.value)

    wrong = tmp_path / "wide"
    write_random_head(wrong, _vision(hidden=64, intermediate=48))
    with pytest.raises(ConfigError) as err:
        load_pooling_head(str(wrong), "unused", vision)
    assert str(wrong) in _one_line(err) and "[64]" in str(err.value) and "[32]" in str(err.value)


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("rho, keep", [(0.10, 19), (0.15, 29), (0.20, 39), (0.25, 49)])
def test_configs_carry_the_reference_setting(rho, keep):
    cfg = load_config(CONFIGS / f"fastvid_r{rho:.2f}.yaml")
    params = cfg.params
    assert (cfg.method, cfg.retention, cfg.num_frames) == ("fastvid", rho, 32)
    assert (params.c, params.tau, params.p, params.beta, params.d, params.k) == (8, 0.9, 4, 0.6, 0.4, 4)
    assert params.head_weights == "auto"
    method = FastVIDMethod(cfg)
    assert method.encoder_plan(26).pooling_head
    counts = method.planned_counts(ModelFacts(encoder_layers=26, llm_layers=28), 32)
    assert (counts.visual_tokens, counts.exact) == (32 * keep + 1, False)


def test_a_ratio_keeping_nothing_is_refused():
    with pytest.raises(ConfigError) as err:
        FastVIDMethod(CompressionConfig(method="fastvid", retention=0.05)).check_model(
            ModelFacts(encoder_layers=26, llm_layers=28, patch_grid=7, pooled_grid=4)
        )
    assert "retention" in _one_line(err)


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny-ov", seed=1)


@pytest.fixture(scope="module")
def fastvid_model(checkpoint, one_thread):
    return load_model(checkpoint, load_config(CONFIGS / "fastvid_r0.25.yaml"))


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames([("static", 6), ("motion", 5), ("static", 5)], seed=2)


def _prefill(model, frames):
    prompt = model.build_prompt("What happens in the video?")
    inputs, encodings, lengths = model.prepare_inputs([prompt], [[frames]])
    state = model.prefill(inputs, encodings=encodings)
    return inputs, encodings[0][0], lengths[0], state


def _expected_count(segments, rho):
    _, n_sal, n_ctx = fastvid_budgets(POOLED, rho)
    count = FRAMES * n_sal + 1
    for start, end in segments:
        anchors, budget = anchor_budget(end - start + 1, n_ctx)
        count += len(anchors) * min(budget, POOLED - n_sal)
    return count


def test_checkpoint_has_a_random_head(checkpoint, fastvid_model):
    assert (checkpoint / HEAD_FOLDER / "model.safetensors").is_file()
    vision = preset_config("tiny").vision_config
    assert torch.equal(fastvid_model.pooling_head.probe, random_head_state(vision, seed=1)["vision_model.head.probe"])


@pytest.mark.parametrize("rho", [0.10, 0.25])
def test_pipeline_matches_fastvid_select_on_the_encoder_output(fastvid_model, frames, rho):
    model = fastvid_model.with_config(load_config(CONFIGS / f"fastvid_r{rho:.2f}.yaml"))
    _, encoding, _, _ = _prefill(model, frames)
    hf = model.model.model
    pixels = model.preprocess_video(frames)
    with torch.inference_mode():
        hidden = hf.vision_tower(pixels, output_hidden_states=True).hidden_states[-1]
        probe, global_features = model.pooling_head(hidden)
        features = hf.apply_pooling(hf.multi_modal_projector(hidden))
        params = model.config.params
        expected = fastvid_select(
            features, pool_grid(probe), global_features, retention=rho,
            generator=seeded_generator(True, params.seed, features.device),
        )
    assert encoding.segments == expected.segments == tuple(dyseg(global_features, 8, 0.9))
    assert len(encoding.segments) >= 8
    torch.testing.assert_close(encoding.tokens[:-1], expected.selection.tokens)
    assert torch.equal(encoding.positions[:-1], expected.selection.positions)
    assert int(encoding.positions[-1]) == FRAMES * POOLED  # the newline
    assert torch.equal(encoding.source, expected.selection.source)
    # The count follows from the budgets and DySeg's segments, within the planned bound.
    assert encoding.visual_tokens == _expected_count(encoding.segments, rho)
    bound = model.method.planned_counts(ModelFacts(26, 24, 7, 4), FRAMES).visual_tokens
    assert encoding.visual_tokens <= bound == FRAMES * int(POOLED * rho) + 1
    assert torch.all(encoding.positions[1:] > encoding.positions[:-1])


def test_prefill_keeps_the_gaps_and_changes_the_logits(fastvid_model, frames):
    inputs, encoding, length, state = _prefill(fastvid_model, frames)
    full_inputs, _, full_length, full_state = _prefill(fastvid_model.with_config(FULL), frames)
    assert encoding.visual_tokens < FRAMES * POOLED + 1
    assert length == full_length - (FRAMES * POOLED + 1 - encoding.visual_tokens)
    positions = inputs["position_ids"][0]
    assert int(positions[-1]) == full_length - 1  # the last prompt token where it sits uncompressed
    start = encoding.offset
    assert torch.equal(positions[:start], torch.arange(start))
    assert torch.equal(positions[start : start + encoding.visual_tokens], encoding.positions + start)
    assert torch.equal(state.llm.groups[0].positions[0], positions)
    assert int(state.llm.next_positions[0]) == full_length  # decoding continues after the full length
    assert not torch.allclose(state.llm.logits, full_state.llm.logits, atol=1e-3)


def test_every_token_kept_is_full(fastvid_model, frames):
    full_inputs, _, full_length, full_state = _prefill(fastvid_model.with_config(FULL), frames)
    # d = 0: every token is salient, unchanged, at its own position: full's logits exactly.
    salient = fastvid_model.with_config(CompressionConfig(method="fastvid", retention=1.0, params={"d": 0.0}))
    inputs, encoding, length, state = _prefill(salient, frames)
    assert encoding.visual_tokens == FRAMES * POOLED + 1 and length == full_length
    assert torch.equal(encoding.positions, torch.arange(FRAMES * POOLED + 1))
    assert torch.equal(inputs["inputs_embeds"], full_inputs["inputs_embeds"])
    assert torch.equal(state.llm.logits, full_state.llm.logits)
    # Contexts too, every frame its own segment: each context merges only with itself (up to rounding).
    single = CompressionConfig(method="fastvid", retention=1.0, params={"c": FRAMES, "tau": 1.0})
    _, encoding, length, state = _prefill(fastvid_model.with_config(single), frames)
    assert encoding.visual_tokens == FRAMES * POOLED + 1 and len(encoding.segments) == FRAMES
    torch.testing.assert_close(state.llm.logits, full_state.llm.logits, rtol=1e-4, atol=1e-4)
    # The reference's segments: a multi-frame segment keeps its anchors' contexts only (fewer tokens).
    _, encoding, _, _ = _prefill(fastvid_model.with_config(CompressionConfig(method="fastvid", retention=1.0)), frames)
    assert encoding.visual_tokens == _expected_count(encoding.segments, 1.0) < FRAMES * POOLED + 1


def test_generate_is_deterministic_and_answers_differ_from_full(fastvid_model, frames):
    prompt = fastvid_model.build_prompt("Describe the video.")
    first = fastvid_model.generate([prompt], [[frames]], max_new_tokens=6)[0]
    again = fastvid_model.generate([prompt], [[frames]], max_new_tokens=6)[0]
    assert first.token_ids == again.token_ids and first.visual_tokens == again.visual_tokens
    assert first.visual_tokens == _expected_count(first.videos[0].segments, 0.25)
    full = fastvid_model.with_config(FULL).generate([prompt], [[frames]], max_new_tokens=6)[0]
    assert full.visual_tokens == FRAMES * POOLED + 1 and full.token_ids != first.token_ids  # seed 1 listens


def test_cli_generate_prints_the_visual_token_count(checkpoint, tmp_path, capsys, one_thread):
    clip = write_video(tmp_path / "clip.mp4", synthetic_frames([("static", 8), ("motion", 8)], seed=5))
    code = cli_main(
        [
            "generate", "--pretrained", str(checkpoint), "--config", str(CONFIGS / "fastvid_r0.10.yaml"),
            "--frames", str(FRAMES), "--video", str(clip), "--question", "What happens?", "--max-new-tokens", "3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    # rho 0.10 of 16 tokens per frame: int(1.6) = 1 salient token per frame, no contexts.
    assert f"visual tokens: {FRAMES + 1} of {FRAMES * POOLED + 1}" in out
    assert "final segments:" in out


def test_missing_head_fails_before_the_llava_weights_load(checkpoint, tmp_path, monkeypatch):
    from transformers import LlavaOnevisionForConditionalGeneration

    def refuse(*args, **kwargs):
        raise AssertionError("the LLaVA weights loaded before the head was checked")

    monkeypatch.setattr(LlavaOnevisionForConditionalGeneration, "from_pretrained", refuse)
    with pytest.raises(ConfigError) as err:
        load_model(checkpoint, CompressionConfig(method="fastvid", params={"head_weights": str(tmp_path / "no-head")}))
    assert "no-head" in _one_line(err)
