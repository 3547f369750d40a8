"""Tests for the offline random-init LLaVA-OneVision presets and the byte-level tokenizer (CPU, fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionImageProcessor

from earlytom_eval.models.presets import (
    HUB_IDS,
    PRESET_MANIFEST,
    PRESET_NAMES,
    build_model,
    build_processor,
    default_dtype,
    preset_config,
    write_checkpoint,
)
from earlytom_eval.models.tokenizer import SPECIAL_TOKENS, build_tokenizer, special_token_ids

QWEN2_SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<image>": 151646,
    "<video>": 151647,
}
TINY_SPECIAL_IDS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258, "<image>": 259, "<video>": 260}

# (projector/LLM hidden, LLM MLP, LLM layers, heads, KV heads, vocab, tied embeddings)
REAL_TEXT_SHAPES = {
    "0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "7b": (3584, 18944, 28, 28, 4, 152064, False),
    "72b": (8192, 29568, 80, 64, 8, 152064, False),
}
VIDEO_TEXT_CONVERSATION = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
VIDEO_TEXT_PROMPT = "<|im_start|>user\n<video>\nWhat happens?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def qwen2_tokenizer():
    return build_tokenizer(151643)


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return build_tokenizer()


# ----------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", sorted(REAL_TEXT_SHAPES))
def test_real_preset_config_shapes(name):
    config = preset_config(name)
    vision, text = config.vision_config, config.text_config
    hidden, mlp, layers, heads, kv_heads, vocab, tied = REAL_TEXT_SHAPES[name]

    assert config.model_type == "llava_onevision"
    assert vision.model_type == "siglip_vision_model"
    assert (vision.hidden_size, vision.intermediate_size, vision.num_attention_heads) == (1152, 4304, 16)
    assert (vision.num_hidden_layers, vision.image_size, vision.patch_size) == (26, 384, 14)
    assert (vision.image_size // vision.patch_size) ** 2 == 729
    assert vision.vision_use_head is False

    assert text.model_type == "qwen2"
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (hidden, mlp, layers)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (heads, kv_heads, vocab)
    assert text.tie_word_embeddings is tied and config.tie_word_embeddings is tied
    assert text.rope_parameters["rope_theta"] == 1_000_000.0
    assert text.rms_norm_eps == 1e-6
    assert text.max_position_embeddings == 32768
    assert text.hidden_act == "silu"
    assert (text.bos_token_id, text.eos_token_id) == (151643, 151645)

    assert (config.image_token_id, config.video_token_id) == (151646, 151647)
    assert config.vision_feature_layer == -1
    assert config.vision_feature_select_strategy == "full"
    assert config.projector_hidden_act == "gelu"
    assert config.multimodal_projector_bias is True
    assert config.vision_aspect_ratio == "anyres_max_9"
    pinpoints = config.image_grid_pinpoints
    assert len(pinpoints) == 36 and pinpoints[:2] == [[384, 384], [384, 768]] and pinpoints[-1] == [2304, 2304]
    # transformers' defaults are the llava-hf checkpoints' 36 pinpoints, in the same order
    assert pinpoints == LlavaOnevisionConfig().image_grid_pinpoints
    assert pinpoints == [list(p) for p in LlavaOnevisionImageProcessor.image_grid_pinpoints]
    assert name in HUB_IDS and HUB_IDS[name].startswith("llava-hf/llava-onevision-qwen2-")
    assert default_dtype(name) is torch.bfloat16


def test_tiny_config(tiny_tokenizer):
    config = preset_config("tiny")
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.intermediate_size, vision.num_attention_heads) == (32, 64, 2)
    assert (vision.num_hidden_layers, vision.image_size, vision.patch_size) == (26, 98, 14)
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (64, 128, 24)
    assert (text.num_attention_heads, text.num_key_value_heads) == (4, 2)
    assert text.vocab_size >= len(tiny_tokenizer)
    assert config.image_token_id == tiny_tokenizer.image_token_id == 259
    assert config.video_token_id == tiny_tokenizer.video_token_id == 260
    assert config.vision_feature_select_strategy == "full"
    assert config.image_grid_pinpoints == [[98, 98], [98, 196], [196, 98], [196, 196]]
    assert default_dtype("tiny") is torch.float32


def test_preset_config_returns_fresh_objects():
    first = preset_config("tiny")
    first.text_config.hidden_size = 1
    assert preset_config("tiny").text_config.hidden_size == 64


@pytest.mark.parametrize("factory", [preset_config, build_processor, build_model, default_dtype, write_checkpoint])
def test_unknown_preset_name_lists_allowed_names(factory, tmp_path):
    args = (tmp_path / "never-created",) if factory is write_checkpoint else ()
    with pytest.raises(ValueError) as excinfo:
        factory("13b", *args)
    message = str(excinfo.value)
    assert "13b" in message
    for name in PRESET_NAMES:
        assert name in message
    assert not (tmp_path / "never-created").exists()


# --------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_special_ids_real(qwen2_tokenizer):
    tok = qwen2_tokenizer
    assert len(tok) == 151648
    assert {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS} == QWEN2_SPECIAL_IDS
    assert special_token_ids(151643) == QWEN2_SPECIAL_IDS
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 151645)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 151643)
    assert tok.bos_token is None
    assert tok.padding_side == "left"
    assert (tok.image_token, tok.image_token_id) == ("<image>", 151646)
    assert (tok.video_token, tok.video_token_id) == ("<video>", 151647)
    assert tok.convert_ids_to_tokens(1000) == "<|reserved_1000|>"


def test_tokenizer_special_ids_tiny(tiny_tokenizer):
    tok = tiny_tokenizer
    assert len(tok) == 261
    assert {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS} == TINY_SPECIAL_IDS
    assert special_token_ids() == TINY_SPECIAL_IDS
    assert (tok.eos_token_id, tok.pad_token_id, tok.padding_side) == (258, 256, "left")
    assert (tok.image_token_id, tok.video_token_id) == (259, 260)


@pytest.mark.parametrize("fixture_name", ["tiny_tokenizer", "qwen2_tokenizer"])
def test_tokenizer_unicode_round_trip(fixture_name, request):
    tok = request.getfixturevalue(fixture_name)
    text = "Héllo\twörld!  Ünïcödé → 你好，世界 🤖🎬 مرحبا\n\x00\x7f end "
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte, no special tokens added
    assert ids[:5] == list(b"H\xc3\xa9ll")
    assert tok.decode(ids) == text


def test_tokenizer_special_tokens_are_atomic(tiny_tokenizer):
    ids = tiny_tokenizer("a<video>b<image><|im_end|>")["input_ids"]
    assert ids == [ord("a"), 260, ord("b"), 259, 258]
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == "ab"


def test_tokenizer_rejects_too_few_regular_tokens():
    with pytest.raises(ValueError, match="256"):
        build_tokenizer(100)
    with pytest.raises(ValueError, match="256"):
        special_token_ids(255)


def test_chat_template_matches_llava_hf(tiny_tokenizer):
    render = tiny_tokenizer.apply_chat_template
    assert render(VIDEO_TEXT_CONVERSATION, tokenize=False, add_generation_prompt=True) == VIDEO_TEXT_PROMPT

    image_conv = [{"role": "user", "content": [{"type": "text", "text": "Describe."}, {"type": "image"}]}]
    assert (
        render(image_conv, tokenize=False, add_generation_prompt=True)
        == "<|im_start|>user\n<image>\nDescribe.<|im_end|>\n<|im_start|>assistant\n"
    )
    multi_turn = [
        {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Q1"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
        {"role": "user", "content": [{"type": "text", "text": "Q2"}]},
    ]
    assert render(multi_turn, tokenize=False, add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\n<video>\nQ1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n"
    )
    plain = [{"role": "user", "content": "Just text."}]
    assert render(plain, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nJust text.<|im_end|>\n<|im_start|>assistant\n"
    )


# --------------------------------------------------------------------------------------------- processor


def test_real_processor_settings_and_video_tokens():
    processor = build_processor("0.5b")
    assert processor.num_image_tokens == 729
    assert processor.vision_feature_select_strategy == "full"
    assert (processor.image_token_id, processor.video_token_id) == (151646, 151647)
    assert processor.image_processor.size.height == processor.image_processor.size.width == 384
    assert processor.video_processor.size.height == processor.video_processor.size.width == 384
    assert list(processor.image_processor.image_mean) == [0.5, 0.5, 0.5]
    assert list(processor.video_processor.image_std) == [0.5, 0.5, 0.5]
    assert len(processor.image_processor.image_grid_pinpoints) == 36
    assert processor.apply_chat_template(VIDEO_TEXT_CONVERSATION, add_generation_prompt=True) == VIDEO_TEXT_PROMPT

    video = np.zeros((2, 32, 48, 3), dtype=np.uint8)
    inputs = processor(text=VIDEO_TEXT_PROMPT, videos=video, return_tensors="pt")
    assert tuple(inputs["pixel_values_videos"].shape) == (1, 2, 3, 384, 384)
    assert int((inputs["input_ids"] == 151647).sum()) == 2 * 14 * 14 + 1


def test_tiny_processor_settings():
    processor = build_processor("tiny")
    assert processor.num_image_tokens == 49
    assert processor.vision_feature_select_strategy == "full"
    assert processor.video_processor.size.height == processor.video_processor.size.width == 98
    assert processor.image_processor.image_grid_pinpoints == [[98, 98], [98, 196], [196, 98], [196, 196]]
    assert processor.chat_template == processor.tokenizer.chat_template


# ------------------------------------------------------------------------------------------------ models


def test_same_seed_identical_weights_different_seed_differs():
    rng_before = torch.random.get_rng_state()
    state_a = build_model("tiny", seed=0).state_dict()
    state_b = build_model("tiny", seed=0).state_dict()
    state_c = build_model("tiny", seed=1).state_dict()
    assert torch.equal(torch.random.get_rng_state(), rng_before), "build_model must not touch the global RNG"

    assert state_a.keys() == state_b.keys() == state_c.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    differing = [k for k in state_a if not torch.equal(state_a[k], state_c[k])]
    assert "model.language_model.embed_tokens.weight" in differing
    assert "model.vision_tower.embeddings.patch_embedding.weight" in differing
    assert "model.image_newline" in differing


def test_tiny_model_is_eval_sdpa_and_finite():
    model = build_model("tiny", seed=3)
    assert not model.training
    assert model.config._attn_implementation == "sdpa"
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert model.generation_config.eos_token_id == 258
    bf16 = build_model("tiny", dtype="bfloat16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(("name", "expected_params"), [("0.5b", 0.894e9), ("7b", 8.03e9), ("72b", 73.2e9)])
def test_meta_model_parameter_counts(name, expected_params):
    model = build_model(name, device="meta", dtype=torch.bfloat16)
    params = list(model.parameters())
    assert all(p.device.type == "meta" for p in params)
    assert all(b.device.type == "meta" for b in model.buffers() if b.numel())
    count = sum(p.numel() for p in params)
    assert count == pytest.approx(expected_params, rel=0.01)
    assert model.model.multi_modal_projector.linear_1.in_features == 1152
    assert model.lm_head.out_features == preset_config(name).text_config.vocab_size


def test_tiny_checkpoint_round_trip_offline(tmp_path, monkeypatch):
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    out = write_checkpoint("tiny", tmp_path / "tiny-ov", seed=7)
    assert out == tmp_path / "tiny-ov"
    files = {p.name for p in out.iterdir()}
    for required in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
        "chat_template.jinja",
        PRESET_MANIFEST,
    ):
        assert required in files
    manifest = json.loads((out / PRESET_MANIFEST).read_text())
    assert (manifest["preset"], manifest["seed"], manifest["dtype"]) == ("tiny", 7, "float32")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)

    reference = build_model("tiny", seed=7).state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)

    assert processor.num_image_tokens == 49
    assert processor.vision_feature_select_strategy == "full"
    assert processor.tokenizer.padding_side == "left"
    prompt = processor.apply_chat_template(VIDEO_TEXT_CONVERSATION, add_generation_prompt=True)
    assert prompt == VIDEO_TEXT_PROMPT

    video = np.random.default_rng(0).integers(0, 256, size=(4, 60, 80, 3), dtype=np.uint8)
    inputs = processor(text=prompt, videos=video, return_tensors="pt")
    assert tuple(inputs["pixel_values_videos"].shape) == (1, 4, 3, 98, 98)
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 4 * 16 + 1

    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
