"""The LLaVA-OneVision integration on the tiny random-initialised preset (CPU, offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from earlytom_eval import CompressionConfig, ConfigError, load_model
from earlytom_eval.cli import main as cli_main
from earlytom_eval.models import llm
from earlytom_eval.models.presets import write_checkpoint
from earlytom_eval.video import load_video, synthetic_frames, write_video

FULL = CompressionConfig(method="full")
POOLED = 16  # tiny preset: 7x7 encoder tokens pooled to 4x4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny-ov", seed=0)


@pytest.fixture(scope="module")
def full_model(checkpoint):
    return load_model(checkpoint, FULL)


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory):
    """A real .mp4: a 12-frame static shot, a hard cut, another 12-frame static shot."""
    frames = synthetic_frames([("static", 12), ("static", 12)], size=(96, 128), seed=3)
    return write_video(tmp_path_factory.mktemp("clips") / "cut.mp4", frames)


def _video(num_frames=8, seed=0):
    return synthetic_frames([("static", num_frames // 2), ("motion", num_frames - num_frames // 2)], seed=seed)


def _hf_inputs(model, prompt, frames):
    inputs = model.processor(text=[prompt], videos=[frames], return_tensors="pt")
    return {k: v for k, v in inputs.items()}


def test_full_reproduces_transformers_logits_and_greedy_tokens(full_model):
    model = full_model
    frames = _video(8)
    prompt = model.build_prompt("What happens in the video?")
    hf_inputs = _hf_inputs(model, prompt, frames)
    with torch.inference_mode():
        hf_logits = model.model(**hf_inputs).logits
        ours, encodings, lengths = model.prepare_inputs([prompt], [[hf_inputs["pixel_values_videos"][0]]])
        our_logits = model.model(**ours).logits
    assert encodings[0][0].visual_tokens == 8 * POOLED + 1
    assert lengths[0] == hf_inputs["input_ids"].shape[1]
    assert torch.equal(our_logits, hf_logits)
    # The layer-by-layer LLM runner used for generation gives the same logits as transformers' forward.
    with torch.inference_mode():
        state = llm.prefill(model.model, ours["inputs_embeds"], ours["attention_mask"], all_logits=True)
    assert torch.equal(state.logits, hf_logits)

    with torch.inference_mode():
        hf_out = model.model.generate(**hf_inputs, max_new_tokens=12, do_sample=False)
    hf_new = hf_out[0, hf_inputs["input_ids"].shape[1] :].tolist()
    result = model.generate([prompt], [[frames]], max_new_tokens=12)[0]
    assert result.token_ids == hf_new
    assert result.text == model.tokenizer.decode(hf_new, skip_special_tokens=True)


def test_generation_ends_at_eos_and_at_stop_strings(full_model):
    model = full_model
    prompt = model.build_prompt("Describe it.")
    video = [[_video(4)]]
    free = model.generate([prompt], video, max_new_tokens=12)[0]
    assert len(free.token_ids) == 12
    # Stop string: generation ends with the first token whose text contains it; the text is cut before it.
    # (Random weights also emit ids past the tokenizer's vocabulary, which decode to ''.)
    decode = model.tokenizer.decode
    first = next(n for n in range(1, 12) if decode(free.token_ids[:n]))
    stop = decode(free.token_ids[:first])[-1]
    stopped = model.generate([prompt], video, max_new_tokens=12, stop=[stop])[0]
    assert stopped.token_ids == free.token_ids[:first]
    text = decode(free.token_ids[:first])
    assert stopped.text == text[: text.find(stop)]
    # EOS: make the third generated token an end-of-sequence token; generation ends there, EOS kept.
    config = model.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = [free.token_ids[2]]
    try:
        ended = model.generate([prompt], video, max_new_tokens=12)[0]
    finally:
        config.eos_token_id = saved
    first_eos = free.token_ids.index(free.token_ids[2])
    assert ended.token_ids == free.token_ids[: first_eos + 1]


def test_full_keeps_every_frame_in_every_layer(full_model):
    encoding = full_model.encode_video(full_model.preprocess_video(_video(6)))
    assert encoding.frames_per_layer == (6,) * 26
    assert encoding.segments is None
    assert encoding.visual_tokens == 6 * POOLED + 1


def test_text_only_prompt_matches_transformers(full_model):
    model = full_model
    prompt = model.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}], add_generation_prompt=True
    )
    ids = model.tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        hf = model.model.generate(**ids, max_new_tokens=6, do_sample=False)[0, ids["input_ids"].shape[1] :].tolist()
    ours = model.generate([prompt], max_new_tokens=6)[0]
    assert ours.visual_tokens == 0
    assert ours.token_ids == [t for t in hf if t != model.tokenizer.pad_token_id][: len(ours.token_ids)]
    assert len(ours.token_ids) >= 1


def test_image_prompt_goes_through_transformers_image_path(full_model):
    model = full_model
    image = synthetic_frames([("static", 1)], size=(150, 200), seed=5)[0]
    prompt = model.build_prompt("Describe the image.", num_videos=0, num_images=1)
    hf_inputs = model.processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.inference_mode():
        hf_logits = model.model(**hf_inputs).logits
        ours, _, _ = model.prepare_inputs([prompt], images=[[image]])
        our_logits = model.model(**ours).logits
    assert torch.equal(our_logits, hf_logits)
    assert model.generate([prompt], images=[[image]], max_new_tokens=3)[0].visual_tokens == 0


def test_earlytom_removes_frames_inside_the_encoder_and_never_merges_across_a_cut(checkpoint, cut_clip):
    config = CompressionConfig.from_yaml("configs/earlytom_r0.10.yaml", num_frames=24)
    model = load_model(checkpoint, config)
    video = load_video(cut_clip, config.num_frames)
    seen: list[int] = []
    layers = model.model.model.vision_tower.encoder.layers
    handles = [layer.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0])) for layer in layers]
    try:
        encoding = model.encode_video(model.preprocess_video(video.frames))
    finally:
        for handle in handles:
            handle.remove()
    first = config.prune_layers[0]
    assert seen == list(encoding.frames_per_layer)
    assert seen[: first + 1] == [24] * (first + 1)
    assert all(n < 24 for n in seen[first + 1 :])
    assert seen == sorted(seen, reverse=True)
    # Every frame that leaves the encoder is made of frames of one shot only.
    for sources in encoding.frame_sources:
        assert all(s < 12 for s in sources) or all(s >= 12 for s in sources), encoding.frame_sources
    # The final segments never span the cut either.
    shot_of = [0 if all(s < 12 for s in src) else 1 for src in encoding.frame_sources]
    for start, end in encoding.segments:
        assert len(set(shot_of[start : end + 1])) == 1


def test_earlytom_token_budget_follows_the_spec(checkpoint):
    config = CompressionConfig(retention=0.25, tau=0.5, prune_layers=(8, 21, 23))
    model = load_model(checkpoint, config)
    encoding = model.encode_video(model.preprocess_video(_video(16, seed=1)))
    frames_out = encoding.frames_out
    assert encoding.frames_per_layer[-1] == frames_out
    rho_eff = min(0.25 * 16 / frames_out, 1.0)
    assert encoding.rho_eff == pytest.approx(rho_eff)
    is_static = encoding.selection.is_static
    expected = 0
    for frame in range(frames_out):
        expected += max(1, round(POOLED * rho_eff)) if is_static[frame] else int(np.ceil(POOLED * rho_eff))
    assert encoding.visual_tokens == expected + 1
    assert abs((encoding.visual_tokens - 1) - 0.25 * 16 * POOLED) <= frames_out
    # The newline token is the last one, once.
    newline = model.model.model.image_newline
    matches = (encoding.tokens == newline).all(dim=-1)
    assert matches.tolist() == [False] * (encoding.visual_tokens - 1) + [True]


def test_post_encoder_ablation_keeps_all_frames_in_the_encoder(checkpoint):
    model = load_model(checkpoint, CompressionConfig(retention=0.25, prune_layers=()))
    encoding = model.encode_video(model.preprocess_video(_video(8)))
    assert encoding.frames_per_layer == (8,) * 26
    assert encoding.segments is not None and encoding.segments[-1][1] == 7
    assert encoding.visual_tokens < 8 * POOLED + 1


def test_batch_of_videos_each_with_its_own_budget(checkpoint):
    config = CompressionConfig(retention=0.25, tau=0.5)
    model = load_model(checkpoint, config)
    prompts = [model.build_prompt("First?"), model.build_prompt("A longer second question here?")]
    videos = [[_video(8, seed=1)], [_video(12, seed=2)]]
    batched = model.generate(prompts, videos, max_new_tokens=4)
    single = [model.generate([p], [v], max_new_tokens=4)[0] for p, v in zip(prompts, videos)]
    for b, s in zip(batched, single):
        assert b.visual_tokens == s.visual_tokens
        assert b.prompt_tokens == s.prompt_tokens
    assert batched[0].visual_tokens != batched[1].visual_tokens
    # Left padding does not change what each prompt sees: last-position logits agree.
    with torch.inference_mode():
        inputs, _, lengths = model.prepare_inputs(prompts, videos)
        logits = model.model(**inputs).logits[:, -1]
        for row, (p, v) in enumerate(zip(prompts, videos)):
            alone, _, _ = model.prepare_inputs([p], [v])
            torch.testing.assert_close(logits[row], model.model(**alone).logits[0, -1], rtol=1e-4, atol=1e-4)


def test_prompt_and_video_count_mismatch_is_a_clear_error(full_model):
    prompt = full_model.build_prompt("Q?", num_videos=1)
    with pytest.raises(ValueError, match="1 video placeholder.*0 video"):
        full_model.prepare_inputs([prompt], [[]])


def test_invalid_config_fails_before_weights_load(checkpoint, tmp_path):
    only_config = tmp_path / "config-only"
    only_config.mkdir()
    (only_config / "config.json").write_text((checkpoint / "config.json").read_text())
    with pytest.raises(ConfigError, match="prune_layers.*26"):
        load_model(only_config, CompressionConfig(prune_layers=(8, 21, 26)))


def test_cli_generate_json_reports_the_budget(checkpoint, cut_clip, capsys):
    code = cli_main(
        [
            "generate",
            "--pretrained",
            str(checkpoint),
            "--config",
            "configs/earlytom_r0.10.yaml",
            "--frames",
            "16",
            "--video",
            str(cut_clip),
            "--question",
            "What happens?",
            "--max-new-tokens",
            "3",
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("answer", "frames_in", "frames_per_layer", "segments", "rho_eff", "visual_tokens", "prompt_tokens"):
        assert key in report
    assert report["frames_in"] == 16
    assert len(report["frames_per_layer"]) == 26
    assert report["segments"][-1][1] == report["frames_per_layer"][-1] - 1
    assert abs(report["visual_tokens"] - (0.10 * 16 * POOLED + 1)) <= report["frames_per_layer"][-1]


def test_cli_generate_full_prints_frames_times_pooled_plus_one(checkpoint, cut_clip, capsys):
    code = cli_main(
        [
            "generate",
            "--pretrained",
            str(checkpoint),
            "--config",
            "configs/full.yaml",
            "--frames",
            "8",
            "--video",
            str(cut_clip),
            "--question",
            "What happens?",
            "--max-new-tokens",
            "2",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert f"visual tokens: {8 * POOLED + 1} of {8 * POOLED + 1}" in out


@pytest.mark.parametrize(
    "content, reason",
    [(None, "file not found"), (b"", "empty"), (b"\x00garbage" * 100, "not a decodable video")],
)
def test_cli_generate_bad_video_is_one_clear_line(checkpoint, tmp_path, capsys, content, reason):
    path = tmp_path / "clip.mp4"
    if content is not None:
        path.write_bytes(content)
    code = cli_main(["generate", "--pretrained", str(checkpoint), "--video", str(path), "--question", "Q?"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert str(path) in err and reason in err


def test_cli_generate_bad_config_value_is_one_clear_line(checkpoint, cut_clip, capsys):
    code = cli_main(
        [
            "generate",
            "--pretrained",
            str(checkpoint),
            "--set",
            "retention=1.5",
            "--video",
            str(cut_clip),
            "--question",
            "Q?",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.splitlines() == [err] and "retention" in err and "1.5" in err
