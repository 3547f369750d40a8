"""Stage 3: token merging inside the LLM (pure functions and the tiny preset)."""

from __future__ import annotations

import pytest
import torch

from earlytom_eval import CompressionConfig, ConfigError, load_model
from earlytom_eval.compression.inner import (
    InnerMergeDecision,
    inner_keep_count,
    last_query_attention,
    merge_into_kept,
    plan_inner_merge,
)
from earlytom_eval.models import llm
from earlytom_eval.models.llava_ov import visual_token_mask
from earlytom_eval.models.presets import write_checkpoint
from earlytom_eval.video import synthetic_frames

K = 18


# ----------------------------------------------------------------------------------- pure functions
def test_keep_count_rounds_half_to_even_and_keeps_at_least_one():
    assert inner_keep_count(6273, 0.5) == 3136  # 3136.5 -> 3136
    assert inner_keep_count(629, 0.5) == 314  # 314.5 -> 314
    assert inner_keep_count(10, 0.0) == 10
    assert inner_keep_count(1, 0.9) == 1


def test_merge_fold_equals_the_sequential_halving_in_ascending_position_order():
    hidden = torch.randn(7, 5, dtype=torch.float64)
    # kept tokens 1 and 4; token 1 gets 0, 3, 6 (in that order), token 4 gets 2 and 5.
    decision = InnerMergeDecision(kept=torch.tensor([1, 4]), assign=torch.tensor([0, 0, 1, 0, 1, 1, 0]))
    expected = {1: hidden[1].clone(), 4: hidden[4].clone()}
    for token in range(7):  # the reference's loop, one assigned token at a time
        owner = [1, 4][int(decision.assign[token])]
        if token != owner:
            expected[owner] = (expected[owner] + hidden[token]) / 2
    merged = merge_into_kept(hidden, decision, "fold")
    torch.testing.assert_close(merged[0], expected[1])
    torch.testing.assert_close(merged[1], expected[4])
    # closed form for token 1: 2^-3 h1 + 2^-3 h0 + 2^-2 h3 + 2^-1 h6
    torch.testing.assert_close(merged[0], hidden[1] / 8 + hidden[0] / 8 + hidden[3] / 4 + hidden[6] / 2)


def test_merge_mean_is_the_plain_group_mean():
    hidden = torch.randn(7, 5, dtype=torch.float64)
    decision = InnerMergeDecision(kept=torch.tensor([1, 4]), assign=torch.tensor([0, 0, 1, 0, 1, 1, 0]))
    merged = merge_into_kept(hidden, decision, "mean")
    torch.testing.assert_close(merged[0], hidden[[0, 1, 3, 6]].mean(0))
    torch.testing.assert_close(merged[1], hidden[[2, 4, 5]].mean(0))
    with pytest.raises(ValueError, match="merge mode 'max'.*fold, mean"):
        merge_into_kept(hidden, decision, "max")


def test_plan_keeps_top_scores_and_assigns_to_the_most_similar_kept_token():
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9], [1.0, 0.05]])
    scores = torch.tensor([0.5, 0.4, 0.05, 0.03, 0.02])
    decision = plan_inner_merge(scores, hidden, keep=2)
    assert decision.kept.tolist() == [0, 1]
    assert decision.assign.tolist() == [0, 1, 0, 1, 0]


def _reference_assignment(scores: torch.Tensor, hidden: torch.Tensor, keep: int) -> dict[int, int]:
    """The reference's rule, transcribed: every non-top-k token -> the top-k token of highest cosine."""
    top = scores.topk(keep).indices
    others = torch.tensor([i for i in range(len(scores)) if i not in set(top.tolist())], dtype=torch.long)
    dot = hidden[others] @ hidden[top].T
    sim = dot / (hidden[others].norm(dim=-1, keepdim=True) * hidden[top].norm(dim=-1, keepdim=True).T)
    return dict(zip(others.tolist(), top[sim.max(dim=-1).indices].tolist()))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("num_visual, keep", [(40, 20), (41, 7), (30, 29), (12, 1)])
def test_plan_scores_only_the_merged_tokens_and_follows_the_reference_rule(seed, num_visual, keep):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_visual, 24, generator=g) * (torch.rand(num_visual, 1, generator=g) * 3 + 0.1)
    scores = torch.rand(num_visual, generator=g)
    decision = plan_inner_merge(scores, hidden, keep)
    kept = decision.kept.tolist()
    assert kept == sorted(scores.topk(keep).indices.tolist())
    assert [decision.assign[k].item() for k in kept] == list(range(keep))
    expected = _reference_assignment(scores, hidden, keep)
    assert {o: kept[decision.assign[o].item()] for o in expected} == expected


def test_plan_keeping_every_token_assigns_each_to_itself():
    hidden = torch.randn(9, 4)
    decision = plan_inner_merge(torch.rand(9), hidden, 9)
    assert decision.kept.tolist() == list(range(9))
    assert decision.assign.tolist() == list(range(9))


def test_plan_bfloat16_scores_in_the_model_dtype_agree_on_separated_tokens():
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(6, 32, generator=g) * 4
    hidden = torch.cat([centres, centres.repeat(3, 1) + 0.3 * torch.randn(18, 32, generator=g)])
    scores = torch.cat([torch.ones(6), torch.zeros(18)]) + 0.01 * torch.rand(24, generator=g)
    as_fp32 = plan_inner_merge(scores, hidden, 6)
    as_bf16 = plan_inner_merge(scores, hidden.bfloat16(), 6)
    assert torch.equal(as_bf16.kept, as_fp32.kept)
    assert torch.equal(as_bf16.assign, as_fp32.assign)
    assert as_fp32.assign[6:].tolist() == list(range(6)) * 3


def test_last_query_attention_is_one_softmax_row_averaged_over_heads_with_gqa():
    torch.manual_seed(0)
    query = torch.randn(1, 4, 8)
    keys = torch.randn(1, 2, 6, 8)
    mask = torch.tensor([[False, True, True, True, True, True]])
    got = last_query_attention(query, keys, mask, 8**-0.5)
    rows = []
    for head in range(4):
        logits = keys[0, head // 2, 1:] @ query[0, head] * 8**-0.5
        rows.append(torch.cat([torch.zeros(1), logits.softmax(-1)]))
    torch.testing.assert_close(got[0], torch.stack(rows).mean(0))
    assert got[0, 0] == 0


# ----------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("inner_layer", 0, "null"),
        ("inner_ratio", 1.0, r"\[0, 1\)"),
        ("inner_ratio", -0.1, r"\[0, 1\)"),
        ("inner_merge", "max", "fold | mean"),
    ],
)
def test_stage3_config_errors_name_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ConfigError, match=rf"'{field}'.*{value!r}.*{allowed}"):
        CompressionConfig(**{field: value})


def test_stage3_layer_beyond_llm_depth_fails_before_weights_load(checkpoint, tmp_path):
    only_config = tmp_path / "config-only"
    only_config.mkdir()
    (only_config / "config.json").write_text((checkpoint / "config.json").read_text())
    with pytest.raises(ConfigError, match="inner_layer.*24.*1..23"):
        load_model(only_config, CompressionConfig(inner_layer=24))


def test_paper_configs_switch_stage3_on_and_full_keeps_it_off():
    for ratio in ("0.10", "0.15", "0.20", "0.25"):
        cfg = CompressionConfig.from_yaml(f"configs/earlytom_r{ratio}.yaml")
        assert (cfg.inner_layer, cfg.inner_ratio, cfg.inner_merge) == (18, 0.5, "fold")
    assert CompressionConfig.from_yaml("configs/full.yaml").inner_layer is None


# ----------------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny-ov", seed=0)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint, CompressionConfig(retention=0.5, tau=0.5, inner_layer=K, inner_ratio=0.5))


def _clip(frames=8, seed=0):
    return synthetic_frames([("static", frames // 2), ("motion", frames - frames // 2)], seed=seed)


def _batch(model, questions=("What happens?",), frames=(8,)):
    prompts = [model.build_prompt(q) for q in questions]
    videos = [[model.preprocess_video(_clip(n, seed=i))] for i, n in enumerate(frames)]
    return model.prepare_inputs(prompts, videos)


def test_ratio_zero_equals_stage3_off_exactly(model):
    prompt = model.build_prompt("What happens?")
    video = [[_clip(8)]]
    off = model.with_config(model.config.replace(inner_layer=None))
    zero = model.with_config(model.config.replace(inner_ratio=0.0))
    a = off.generate([prompt], video, max_new_tokens=6)[0]
    b = zero.generate([prompt], video, max_new_tokens=6)[0]
    assert a.token_ids == b.token_ids
    inputs, encodings, _ = off.prepare_inputs([prompt], [[off.preprocess_video(_clip(8))]])
    logits_off = off.prefill(inputs, encodings=encodings).llm.logits
    logits_zero = zero.prefill(inputs, encodings=encodings).llm.logits
    assert torch.equal(logits_off, logits_zero)


def test_merge_shrinks_layers_from_k_keeps_original_positions_and_cache_lengths(model):
    inputs, encodings, lengths = _batch(model)
    state = model.prefill(inputs, encodings=encodings)
    visual = encodings[0][0].visual_tokens
    kept = inner_keep_count(visual, 0.5)
    full_len, reduced_len = lengths[0], lengths[0] - (visual - kept)
    assert state.llm.tokens_per_layer[0] == (full_len,) * K + (reduced_len,) * (24 - K)
    cache = state.llm.cache
    assert [cache.layers[i].keys.shape[-2] for i in range(24)] == [full_len] * K + [reduced_len] * (24 - K)
    low, high = state.llm.groups
    # Text after the video keeps its positions; the kept visual tokens keep theirs, in order.
    after_video = full_len - (encodings[0][0].offset + visual)
    assert torch.equal(high.positions[0, -after_video:], low.positions[0, -after_video:])
    start = encodings[0][0].offset
    kept_positions = low.positions[0, start : start + visual][state.llm.decisions[0].kept]
    assert torch.equal(high.positions[0, start : start + kept], kept_positions)
    assert int(state.llm.next_positions[0]) == full_len
    # Decoding appends one token to every layer's cache; positions continue from the full length.
    model.decode(state, max_new_tokens=3)
    assert [cache.layers[i].keys.shape[-2] for i in range(24)] == [full_len + 2] * K + [reduced_len + 2] * (24 - K)
    assert int(state.llm.next_positions[0]) == full_len + 2


def test_decode_logits_equal_a_cache_free_forward_with_the_same_merge_decisions(model):
    inputs, encodings, lengths = _batch(model)
    state = model.prefill(inputs, encodings=encodings)
    tokens, step_logits = model.decode(state, max_new_tokens=5, output_logits=True)
    generated = tokens[0]
    # One forward over prompt + generated tokens (but the last), no incremental cache, same decisions.
    embed = model.model.get_input_embeddings()
    extra = embed(torch.tensor([generated[:-1]]))
    embeds = torch.cat([inputs["inputs_embeds"], extra], dim=1)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    visual = visual_token_mask(mask, encodings)
    cfg = model.config
    with torch.inference_mode():
        full = llm.prefill(
            model.model,
            embeds,
            mask,
            visual_mask=visual,
            all_logits=True,
            inner=llm.InnerMerge(cfg.inner_layer, cfg.inner_ratio, cfg.inner_merge),
            forced=state.llm.decisions,
        )
    n = len(generated)
    for step in range(n):
        torch.testing.assert_close(step_logits[step][0], full.logits[0, -n + step], rtol=1e-4, atol=1e-4)


def test_batch_of_videos_with_different_token_counts_merges_each_row_like_alone(model):
    questions = ("First?", "A longer second question here?")
    inputs, encodings, lengths = _batch(model, questions, frames=(8, 12))
    batched = model.prefill(inputs, encodings=encodings)
    assert encodings[0][0].visual_tokens != encodings[1][0].visual_tokens
    for row in range(2):
        alone_inputs, alone_enc, _ = model.prepare_inputs(
            [model.build_prompt(questions[row])], [[model.preprocess_video(_clip((8, 12)[row], seed=row))]]
        )
        alone = model.prefill(alone_inputs, encodings=alone_enc)
        assert batched.llm.tokens_per_layer[row] == alone.llm.tokens_per_layer[0]
        assert torch.equal(batched.llm.decisions[row].kept, alone.llm.decisions[0].kept)
        torch.testing.assert_close(batched.llm.logits[row], alone.llm.logits[0], rtol=1e-4, atol=1e-4)
    out = model.generate([model.build_prompt(q) for q in questions], [[_clip(8, 0)], [_clip(12, 1)]], max_new_tokens=3)
    assert [len(o.llm_tokens_per_layer) for o in out] == [24, 24]
