"""The analytic FLOP accounting against a measured count (tiny preset, a mid-size model, meta 7B).

The measured count is torch's ``FlopCounterMode`` with every fused SDPA kernel registered as its two
matmuls (``attention_flop_counter``): torch versions differ in which fused kernels their counter sees
(2.14.1 counts 0 for the CPU kernel), and the registration itself is checked against attention written
out as plain matmuls, which every version counts.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from earlytom_eval.cli import main as cli_main
from earlytom_eval.compression.config import CompressionConfig, LlmCut, load_config
from earlytom_eval.compression.methods import CompressionMethod, EncoderPlan, PlannedCounts
from earlytom_eval.compression.temporal import frame_similarity, plan_temporal_merge, similarity_offset
from earlytom_eval.compression.tome import ToMeState, tome_step
from earlytom_eval.compression.visionzip import pool_grid
from earlytom_eval.efficiency.flops import (
    STAGES,
    ModelShapes,
    compression_flops,
    decode_step_flops,
    encoder_layer_flops,
    llm_layer_flops,
    llm_prefill_flops,
    projector_pooling_flops,
    reference_llm_macs,
    stage3_tokens_per_layer,
    vision_encoder_flops,
    visual_token_count,
)
from earlytom_eval.efficiency.measure import StageFlopCounter, attention_flop_counter
from earlytom_eval.efficiency.method_flops import count_stage_flops, pooling_head_flops, tome_matching_flops
from earlytom_eval.efficiency.schedules import (
    FrameSchedule,
    max_merge_schedule,
    no_merge_schedule,
    parse_frames_per_layer,
    planned_schedule,
    schedule_from_encoding,
)
from earlytom_eval.models.encoder import attention_received
from earlytom_eval.models.llava_ov import EarlyTomLlavaOnevision
from earlytom_eval.models.presets import build_model, build_processor, preset_config
from earlytom_eval.video import synthetic_frames

TOLERANCE = 0.01  # the bar; the counts are in fact exact


def _close(ours: int, measured: int) -> bool:
    if measured == 0:
        return ours == 0
    return abs(ours - measured) / measured < TOLERANCE


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "q_shape, kv_shape, kwargs",
    [
        ((16, 2, 49, 16), (16, 2, 49, 16), {}),  # the tiny encoder's attention
        ((2, 6, 7, 16), (2, 6, 11, 16), {"attn_mask": torch.ones(7, 11, dtype=torch.bool)}),  # masked, Sq != Sk
        ((1, 6, 5, 16), (1, 2, 5, 16), {"is_causal": True, "enable_gqa": True}),  # grouped KV heads
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_counter_counts_sdpa_as_its_matmuls(q_shape, kv_shape, kwargs, dtype):
    """Whatever kernel SDPA picks, the count equals that of softmax(QK^T)V written as matmuls."""
    q, k, v = torch.randn(q_shape, dtype=dtype), torch.randn(kv_shape, dtype=dtype), torch.randn(kv_shape, dtype=dtype)
    with attention_flop_counter() as fused:
        torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)
    groups = q_shape[1] // kv_shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    with FlopCounterMode(display=False) as explicit:
        torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    assert explicit.get_total_flops() > 0
    assert fused.get_total_flops() == explicit.get_total_flops()



def _clip(num_frames: int = 16):
    third = num_frames // 3
    return synthetic_frames(
        [("static", third), ("motion", third), ("static", num_frames - 2 * third)], size=(96, 128), seed=1
    )


def _measure(model: EarlyTomLlavaOnevision, pixel_values: torch.Tensor):
    """Per-stage FlopCounterMode counts of one real prefill plus one decode step."""
    counter = StageFlopCounter()
    inputs, encodings, lengths = model.prepare_inputs([model.build_prompt("What?")], [[pixel_values]], timer=counter)
    state = model.prefill(inputs, timer=counter, encodings=encodings)
    with attention_flop_counter() as decode_counter:
        model.decode(state, 2)  # exactly one decode step (the first token comes from the prefill)
    measured = dict(counter.flops)
    measured["compression"] = measured.get("compression", 0) + measured.pop("inner_merge", 0)
    measured["decode_step"] = decode_counter.get_total_flops()
    return measured, encodings[0][0], lengths[0], state


CONFIGS = {
    "full": dict(method="full"),
    "earlytom_stage3": dict(retention=0.10, tau=0.3, prune_layers=(10, 21, 23), inner_layer=18, inner_ratio=0.5),
    "post_encoder_no_stage3": dict(retention=0.10, tau=0.3, prune_layers=()),
    "prune_last_layer": dict(retention=0.2, tau=0.5, prune_layers=(3, 25), inner_layer=5, inner_merge="mean"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_stage_flops_match_flop_counter_on_tiny(tiny, name):
    cfg = CompressionConfig(num_frames=16, name=name, **CONFIGS[name])
    model = tiny.with_config(cfg)
    pixel_values = model.preprocess_video(_clip(16))
    measured, encoding, prompt_tokens, state = _measure(model, pixel_values)
    shapes = ModelShapes.from_hf_config(model.model.config)
    schedule = schedule_from_encoding(encoding)
    ours = count_stage_flops(shapes, cfg, schedule, prompt_tokens, encoding.visual_tokens)
    assert ours.detail["llm_tokens_per_layer"] == list(state.llm.tokens_per_layer[0])
    for stage in STAGES:
        assert _close(ours.stages[stage], measured.get(stage, 0)), (stage, ours.stages[stage], measured.get(stage))
    # The visual token count predicted from the schedule and segments is the one that occurred.
    assert visual_token_count(shapes, cfg, schedule) == encoding.visual_tokens
    if cfg.compresses:
        assert measured["compression"] > 0


def test_mid_size_model_with_gqa_and_stage3():
    """A model unlike the presets: 3 query heads per KV head, head dim 16, 8x8 patches, 6 LLM layers."""
    from transformers import LlavaOnevisionForConditionalGeneration

    config = preset_config("tiny")
    vision = config.vision_config
    vision.hidden_size, vision.intermediate_size, vision.num_attention_heads = 48, 80, 3
    vision.num_hidden_layers, vision.image_size = 6, 112
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 96, 160, 6
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 6, 2, 16
    text.layer_types = ["full_attention"] * 6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf_model = LlavaOnevisionForConditionalGeneration._from_config(config, attn_implementation="sdpa").eval()
    cfg = CompressionConfig(retention=0.2, tau=0.3, prune_layers=(1, 3), inner_layer=3, num_frames=10, name="mid")
    model = EarlyTomLlavaOnevision(hf_model, build_processor("tiny"), cfg)
    frames = torch.randn(10, 3, 112, 112)
    frames[1:4] = frames[0]  # a static run, so frames merge
    measured, encoding, prompt_tokens, _ = _measure(model, frames)
    shapes = ModelShapes.from_hf_config(hf_model.config)
    assert (shapes.encoder_tokens, shapes.pooled_tokens, shapes.kv_heads, shapes.head_dim) == (64, 16, 2, 16)
    ours = count_stage_flops(shapes, cfg, schedule_from_encoding(encoding), prompt_tokens, encoding.visual_tokens)
    assert encoding.frames_out < 10
    for stage in STAGES:
        assert _close(ours.stages[stage], measured[stage]), (stage, ours.stages[stage], measured[stage])


@pytest.fixture(scope="module")
def meta_7b():
    with torch.device("meta"):
        model = build_model("7b", dtype=torch.bfloat16, device="meta")
    return model


def test_meta_7b_encoder_projector_and_compression(meta_7b):
    """The real SigLIP-so400m / 7B projector shapes on the meta device, with a merging frame schedule."""
    shapes = ModelShapes.from_preset("7b")
    cfg = load_config(CompressionConfig(), num_frames=32)
    schedule = max_merge_schedule(cfg, 32, shapes.vision_layers)
    vision = meta_7b.model.vision_tower
    vision = getattr(vision, "vision_model", vision)
    pixels = torch.empty(32, 3, 384, 384, device="meta", dtype=torch.bfloat16)
    with attention_flop_counter() as counter:
        hidden = vision.embeddings(pixels)
        for index, layer in enumerate(vision.encoder.layers):
            hidden = hidden[: schedule.frames_per_layer[index]]
            out = layer(hidden, None)
            hidden = out[0] if isinstance(out, tuple) else out
    encoder, _ = vision_encoder_flops(shapes, schedule.frames_per_layer, cfg.prune_layers)
    assert _close(encoder, counter.get_total_flops())

    full, _ = vision_encoder_flops(shapes, [32] * 26)
    assert round(full / 1e12, 2) == 20.54  # FlopCounterMode on the meta 7B encoder, 32 frames

    features = torch.empty(schedule.frames_out, 729, 1152, device="meta", dtype=torch.bfloat16)
    with attention_flop_counter() as counter:
        meta_7b.model.apply_pooling(meta_7b.model.multi_modal_projector(features))
    assert _close(projector_pooling_flops(shapes, schedule.frames_out), counter.get_total_flops())
    assert round(projector_pooling_flops(shapes, 32) / 1e12, 2) == 0.79

    # Compression: the band of similarities at each prune layer, the received attention at the last from
    # that layer's own (captured) queries and keys, the re-segmentation.
    offset = similarity_offset(cfg.max_window)
    last = cfg.prune_layers[-1]
    qk = torch.empty(schedule.frames_per_layer[last], 16, 729, 72, device="meta", dtype=torch.bfloat16)
    with attention_flop_counter() as counter:
        for layer in cfg.prune_layers:
            frame_similarity(torch.empty(schedule.frames_per_layer[layer], 729, 1152, device="meta"), offset)
        attention_received(qk, qk, 72**-0.5)
        frame_similarity(torch.empty(schedule.frames_per_layer[last + 1], 729, 1152, device="meta"), offset)
    encoder_side = cfg.replace(inner_layer=None)
    ours, parts = compression_flops(shapes, encoder_side, schedule)
    assert set(parts) == {"frame_similarity", "received_attention"}
    assert _close(ours, counter.get_total_flops())


def test_meta_7b_decoder_layer_gqa(meta_7b):
    """One Qwen2-7B decoder layer (28 query heads, 4 KV heads, 3-matrix MLP) on the meta device."""
    shapes = ModelShapes.from_preset("7b")
    lm = meta_7b.model.language_model
    tokens = 700
    hidden = torch.empty(1, tokens, shapes.hidden, device="meta", dtype=torch.bfloat16)
    positions = torch.arange(tokens, device="meta")[None]
    with attention_flop_counter() as counter:
        embeddings = lm.rotary_emb(hidden, positions)
        lm.layers[0](hidden, attention_mask=None, position_ids=positions, position_embeddings=embeddings)
    assert _close(llm_layer_flops(shapes, tokens), counter.get_total_flops())
    # The spec's number: one layer over 6313 tokens is 3.51 TFLOPs with attention as a full square.
    assert round(llm_layer_flops(shapes, 6313) / 1e12, 2) == 3.51


def test_reference_hand_formula_and_causal_option():
    shapes = ModelShapes.from_preset("7b")
    assert round(reference_llm_macs(shapes, 32 * 196) / 1e12, 1) == 40.8
    square, _ = llm_prefill_flops(shapes, 100, "square")
    causal, _ = llm_prefill_flops(shapes, 100, "causal")
    attention_square = 4 * 100 * 100 * shapes.heads * shapes.head_dim * shapes.layers
    assert square - causal == attention_square - attention_square * 101 // 200


def test_stage3_tokens_per_layer():
    shapes = ModelShapes.from_preset("7b")
    cfg = CompressionConfig(inner_layer=18, inner_ratio=0.5)
    tokens = stage3_tokens_per_layer(shapes, cfg, prompt_tokens=700, visual_tokens=629)
    assert tokens[:18] == [700] * 18
    assert tokens[18:] == [700 - 629 + round(629 * 0.5)] * 10
    assert stage3_tokens_per_layer(shapes, cfg.replace(inner_layer=None), 700, 629) == [700] * 28


def test_max_merge_bound_is_reached_by_the_planner():
    """The analytic lower bound equals what the real merge planner does on maximally mergeable frames."""
    cfg = CompressionConfig(prune_layers=(10, 21, 23), max_window=6, tau=0.3)
    bound = max_merge_schedule(cfg, 32, 26)
    assert bound.compact() == "32x11 20x11 12x2 8x2"
    frames = 32
    for _ in cfg.prune_layers:
        plan = plan_temporal_merge(_mergeable_similarity(frames, cfg.max_window - 1), cfg.tau, cfg.max_window, cfg.ema)
        frames = plan.num_output_frames
    assert frames == bound.frames_out == 8
    # No clip can merge less than nothing: the other bound.
    assert no_merge_schedule(cfg, 32, 26).frames_per_layer == (32,) * 26


def _mergeable_similarity(frames: int, window: int) -> list[list[float]]:
    """High similarities everywhere (cuts only at the window); inside each window's middle frames, pairs
    alternate strong/weak so every pair merges."""
    sim = [[1.0 if i == j else 0.95 for j in range(frames)] for i in range(frames)]
    for start in range(0, frames, window):
        middle = list(range(start + 1, min(start + window, frames) - 1))
        for j, (a, b) in enumerate(zip(middle, middle[1:])):
            sim[a][b] = sim[b][a] = 0.99 if j % 2 == 0 else 0.96
    return sim


def test_parse_frames_per_layer_forms():
    cfg = CompressionConfig(prune_layers=(10, 21, 23))
    per_layer = parse_frames_per_layer("32x11,20x11,12x2,8x2", cfg, 32, 26)
    after_prune = parse_frames_per_layer("20,12,8", cfg, 32, 26)
    assert per_layer.frames_per_layer == after_prune.frames_per_layer
    assert after_prune.frames_out == 8
    with pytest.raises(ValueError):
        parse_frames_per_layer("20,24,8", cfg, 32, 26)  # frames never increase
    with pytest.raises(ValueError):
        parse_frames_per_layer("20,12", cfg, 32, 26)


def test_encoder_flops_follow_the_schedule():
    shapes = ModelShapes.from_preset("0.5b")
    schedule = FrameSchedule((8,) * 4 + (5,) * 22, 5)
    total, blocks = vision_encoder_flops(shapes, schedule.frames_per_layer, (3,))
    assert [b["layers"] for b in blocks] == ["patch embedding", "0-3", "4-25"]
    assert blocks[2]["flops"] == 22 * encoder_layer_flops(shapes, 5)
    assert total == sum(b["flops"] for b in blocks)


def test_flops_cli_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "flops.json"
    code = cli_main(
        ["flops", "--preset", "7b", "--frames", "32", "--configs", "configs/full.yaml", "configs/earlytom_r0.10.yaml",
         "configs/earlytom_r0.25.yaml", "--json", str(out)]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "earlytom_r0.10@max-merge" in text and "ref. formula" in text
    report = json.loads(out.read_text())
    names = [e["name"] for e in report["configs"]]
    assert names[0] == "full" and "earlytom_r0.25@no-merge" in names
    for entry in report["configs"]:
        assert set(entry["flops"]) == set(STAGES)
        assert entry["total_prefill_flops"] == sum(v for k, v in entry["flops"].items() if k != "decode_step")
        assert len(entry["frames_per_layer"]) == 26
    full = report["configs"][0]
    assert full["visual_tokens"] == 32 * 196 + 1
    assert report["ratios"]["full"]["total_prefill_flops"] == 1.0


def test_flops_cli_explicit_schedule(tmp_path, capsys):
    out = tmp_path / "flops.json"
    code = cli_main(
        ["flops", "--preset", "0.5b", "--frames", "16", "--configs", "configs/earlytom_r0.10.yaml",
         "--frames-per-layer", "12,8,6", "--text-tokens", "40", "--json", str(out)]
    )
    assert code == 0
    entry = json.loads(out.read_text())["configs"][0]
    assert entry["frames_per_layer"] == [16] * 11 + [12] * 11 + [8] * 2 + [6] * 2
    assert entry["prompt_tokens"] == 40 + entry["visual_tokens"]
    assert entry["schedule"]["source"].startswith("given")


# ------------------------------------------------------------------------------------------------ every method
PEERS = {
    "visionzip": dict(method="visionzip", retention=0.25),  # 4 of the tiny model's 16 pooled tokens: d 3, c 1
    "fastv": dict(method="fastv", retention=0.25),
    "holitom": dict(method="holitom", retention=0.25),
}


def _peer_config(name: str) -> CompressionConfig:
    return CompressionConfig.from_mapping({**PEERS[name], "num_frames": 16, "name": name})


@pytest.mark.parametrize("name", ["visionzip", "fastv"])
def test_peer_stage_flops_match_flop_counter_on_tiny(tiny, name):
    """Exact methods: every stage as FlopCounterMode sees it on the real pipeline."""
    cfg = _peer_config(name)
    model = tiny.with_config(cfg)
    measured, encoding, prompt_tokens, state = _measure(model, model.preprocess_video(_clip(16)))
    shapes = ModelShapes.from_hf_config(model.model.config)
    ours = count_stage_flops(shapes, model.method, schedule_from_encoding(encoding), prompt_tokens,
                             encoding.visual_tokens)
    assert ours.detail["llm_tokens_per_layer"] == list(state.llm.tokens_per_layer[0])
    for stage in STAGES:
        assert _close(ours.stages[stage], measured.get(stage, 0)), (stage, ours.stages[stage], measured.get(stage))
    planned = model.method.planned_counts(shapes.facts(), 16)
    assert planned.exact and planned.visual_tokens == encoding.visual_tokens
    parts = ours.detail["compression_parts"]
    if name == "visionzip":
        assert set(parts) == {"received_attention", "key_assignment", "contextual_merge"}  # keys: captured
        assert encoding.visual_tokens == 16 * 4 + 1
    else:  # FastV: every token enters the LLM; a drop cut at layer 2 scores, nothing is assigned
        assert set(parts) == {"inner_scores"}
        assert ours.detail["llm_tokens_per_layer"][2] < ours.detail["llm_tokens_per_layer"][1]


def test_holitom_flops_exact_where_known_bounded_where_data_dependent(tiny):
    """HoliTom's DPC-kNN depends on the static windows: the counted compression is an upper bound of the
    measured one and above its exact parts; every other stage is exact."""
    cfg = _peer_config("holitom")
    model = tiny.with_config(cfg)
    measured, encoding, prompt_tokens, state = _measure(model, model.preprocess_video(_clip(16)))
    shapes = ModelShapes.from_hf_config(model.model.config)
    ours = count_stage_flops(shapes, cfg, schedule_from_encoding(encoding), prompt_tokens, encoding.visual_tokens)
    assert ours.detail["llm_tokens_per_layer"] == list(state.llm.tokens_per_layer[0])
    for stage in ("vision_encoder", "projector_pooling", "llm_prefill", "decode_step"):
        assert _close(ours.stages[stage], measured[stage]), stage
    parts = ours.detail["compression_parts"]
    assert ours.detail["bounds"] == ["dpc_knn"]
    exact = parts["received_attention"] + parts["inner_scores"] + parts["inner_assign"]
    assert exact <= measured["compression"] <= ours.stages["compression"]
    assert model.method.planned_counts(shapes.facts(), 16).visual_tokens >= encoding.visual_tokens


class _TwoCuts(CompressionMethod):
    """Full tokens with two LLM cuts: a fold merge before layer 3, a drop before layer 6."""

    name = "two_cuts"

    def llm_cuts(self):
        return (LlmCut(6, 0.5, "drop"), LlmCut(3, 0.25, "fold"))


def test_several_llm_cuts_match_flop_counter(tiny):
    cfg = CompressionConfig(method="full", num_frames=16, name="two_cuts")
    model = tiny.with_config(cfg)
    model.method = _TwoCuts(cfg)
    measured, encoding, prompt_tokens, state = _measure(model, model.preprocess_video(_clip(16)))
    shapes = ModelShapes.from_hf_config(model.model.config)
    ours = count_stage_flops(shapes, model.method, schedule_from_encoding(encoding), prompt_tokens,
                             encoding.visual_tokens)
    per_layer = list(state.llm.tokens_per_layer[0])
    assert ours.detail["llm_tokens_per_layer"] == per_layer
    assert per_layer[0] > per_layer[3] > per_layer[6]  # layers before each cut keep the longer sequence
    first, second = ours.detail["llm_cuts"]
    assert (first["layer"], second["layer"]) == (3, 6)
    assert first["tokens_before"] == prompt_tokens and second["tokens_before"] == per_layer[3]
    assert second["visual_in"] == first["visual_out"]
    for stage in STAGES:
        assert _close(ours.stages[stage], measured.get(stage, 0)), (stage, ours.stages[stage], measured.get(stage))


class _FakeToMe(CompressionMethod):
    """ToMe-like: one token per frame merged (bipartite matching on the keys) in each of the first 13 encoder
    layers, 49 -> 36 patches (6 x 6, pooled to 3 x 3); counts planned with ``tokens_per_layer``."""

    name = "fake_tome"
    MERGING = 13

    def encoder_plan(self, num_layers):
        return EncoderPlan(merge_layers=tuple(range(num_layers)))

    def merge_in_layer(self, layer, hidden, keys, state):
        return tome_step(ToMeState(hidden), keys, 1 if layer < self.MERGING else 0).hidden

    def pool(self, projected, pool_fn, state):
        return pool_grid(projected)  # the 6 x 6 grid left, pooled as the model pools its 7 x 7 one

    def planned_counts(self, facts, frames):
        tokens = tuple(max(49 - i, 36) for i in range(facts.encoder_layers)) + (36,)
        return PlannedCounts(frames * 9 + 1, True, tokens_per_layer=tokens)


def test_token_merging_encoder_counts_tokens_per_layer(tiny):
    """A method that shrinks tokens inside every encoder layer: its planned tokens per layer, the keys it
    reads and its matching are counted; the encoder and compression together match the counter."""
    cfg = CompressionConfig(method="full", num_frames=6, name="fake_tome")
    model = tiny.with_config(cfg)
    model.method = _FakeToMe(cfg)
    pixel_values = model.preprocess_video(_clip(6))
    measured, encoding, prompt_tokens, _ = _measure(model, pixel_values)
    shapes = ModelShapes.from_hf_config(model.model.config)
    planned = model.method.planned_counts(shapes.facts(), 6)
    assert planned.visual_tokens == encoding.visual_tokens
    assert tuple(encoding.tokens_per_layer) == planned.tokens_per_layer[:-1]
    for schedule in (planned_schedule(planned, 6, shapes.vision_layers),
                     schedule_from_encoding(encoding, "measured", shapes.encoder_tokens)):
        ours = count_stage_flops(shapes, model.method, schedule, prompt_tokens, encoding.visual_tokens)
        parts = ours.detail["compression_parts"]
        assert parts["bipartite_matching"] == sum(tome_matching_flops(6, 49 - i, 16) for i in range(13))
        # ToMe's keys and matching run inside the encoder layers (timed there): compare the sum.
        ours_pre = ours.stages["vision_encoder"] + ours.stages["compression"]
        assert _close(ours_pre, measured["vision_encoder"] + measured["compression"])
        for stage in ("projector_pooling", "llm_prefill", "decode_step"):
            assert _close(ours.stages[stage], measured[stage]), stage
    # Independent: layer i runs attention on its input tokens and its MLP on what the merge left.
    by_hand = sum(encoder_layer_flops(shapes, 6, 49 - min(i, 13), 49 - min(i + 1, 13)) for i in range(26))
    encoder, _ = vision_encoder_flops(shapes, [6] * 26, (), list(planned.tokens_per_layer[:-1]), 36)
    assert encoder - by_hand == 2 * 6 * 49 * 3 * 14 * 14 * 32  # the patch embedding


class _FakeDyCoke(CompressionMethod):
    name = "dycoke"


def test_dycoke_pair_similarity_and_pruned_decode_cache():
    shapes = ModelShapes.from_preset("7b")
    cfg = CompressionConfig.from_mapping({"method": "dycoke", "retention": 0.25, "num_frames": 32})
    method = _FakeDyCoke(cfg)
    schedule = FrameSchedule((32,) * 26, 32)
    visual, prompt = 3099, 3099 + 55
    ours = count_stage_flops(shapes, method, schedule, prompt, visual)
    # Per-pair cosine as a batched product [pairs, S, 1, D] @ [pairs, S, D, 1] on the meta device.
    pairs = 23  # 32 frames: 16 odd frames against their predecessor, 7 against frame i - 2
    with FlopCounterMode(display=False) as counter:
        a = torch.empty(pairs, 196, 1, shapes.hidden, device="meta")
        b = torch.empty(pairs, 196, shapes.hidden, 1, device="meta")
        a @ b
    assert ours.detail["compression_parts"] == {"pair_similarity": counter.get_total_flops()}
    note = ours.detail["decode_pruning"]
    image = visual - 2
    assert note["image_span"] == image and note["pruned_entries"] == image - int(image * (1 - 0.8))
    contexts = [prompt + 1] * 3 + [prompt + 1 - note["pruned_entries"]] * 25
    assert ours.stages["decode_step"] == decode_step_flops(shapes, contexts) + note["scores_flops"]
    assert ours.stages["llm_prefill"] == llm_prefill_flops(shapes, prompt)[0]


def test_flops_cli_every_method(tmp_path, capsys):
    out = tmp_path / "flops.json"
    configs = ["configs/full.yaml", "configs/earlytom_r0.10.yaml", "configs/visionzip_r0.10.yaml",
               "configs/holitom_r0.10.yaml", "configs/fastv_r0.10.yaml"]
    assert cli_main(["flops", "--preset", "7b", "--frames", "32", "--configs", *configs, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("visionzip_r0.10", "holitom_r0.10@upper-bound", "fastv_r0.10", "earlytom_r0.10@max-merge"):
        assert name in text
    entries = {e["name"]: e for e in json.loads(out.read_text())["configs"]}
    visionzip = entries["visionzip_r0.10"]
    assert visionzip["visual_tokens"] == 32 * 20 + 1 and visionzip["counts"] == "exact"
    assert entries["holitom_r0.10@upper-bound"]["counts"] == "bound"
    fastv = entries["fastv_r0.10"]
    assert fastv["visual_tokens"] == 32 * 196 + 1
    assert fastv["flops_detail"]["llm_tokens_per_layer"][:2] == [fastv["prompt_tokens"]] * 2
    assert fastv["flops_detail"]["llm_tokens_per_layer"][2] == fastv["prompt_tokens"] - 6273 + round(6273 * 0.1)
    for entry in entries.values():
        assert entry["total_prefill_flops"] < entries["full"]["total_prefill_flops"] or entry["method"] == "full"


def test_pooling_head_flops_match_siglip_head_on_meta_7b():
    """FastVID's signal: SigLIP's attention-pooling head (transformers' own module) on 32 frames of 729 tokens."""
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    vision = preset_config("7b").vision_config
    with torch.device("meta"):
        head = SiglipMultiheadAttentionPoolingHead(vision)
    with attention_flop_counter() as counter:
        head(torch.empty(32, 729, vision.hidden_size, device="meta"))
    assert pooling_head_flops(ModelShapes.from_preset("7b"), 32) == counter.get_total_flops()
