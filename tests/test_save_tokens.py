"""`earlytom-eval generate --save-tokens`: the video's visual tokens as spliced into the LLM, and where each came
from, for any method (tiny preset, CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from earlytom_eval import CompressionConfig, load_model
from earlytom_eval.cli import main as cli_main
from earlytom_eval.models.presets import write_checkpoint
from earlytom_eval.video import load_video, synthetic_frames, write_video

FRAMES = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny-ov", seed=1)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames = synthetic_frames([("static", 6), ("motion", 6)], size=(96, 128), seed=5)
    return write_video(tmp_path_factory.mktemp("clips") / "clip.mp4", frames)


@pytest.fixture(scope="module")
def hf_features(checkpoint, clip, one_thread):
    """transformers' own video features of the clip (pooled tokens, then the newline): ``[T * S + 1, D]``."""
    model = load_model(checkpoint, CompressionConfig(method="full", num_frames=FRAMES))
    pixels = model.preprocess_video(load_video(clip, FRAMES).frames)
    config = model.model.config
    with torch.inference_mode():
        out = model.model.model.get_video_features(
            pixel_values_videos=pixels[None], vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy)
    return out.pooler_output[0].float()


def _generate(checkpoint, clip, path, capsys, *options):
    code = cli_main(["generate", "--pretrained", str(checkpoint), *options, "--frames", str(FRAMES), "--video",
                     str(clip), "--question", "What happens?", "--max-new-tokens", "2", "--json",
                     "--save-tokens", str(path)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["saved_tokens"] == str(path)
    tensors = load_file(str(path))
    assert set(tensors) == {"visual_tokens", "kept"}
    tokens, kept = tensors["visual_tokens"], tensors["kept"]
    assert tokens.dtype == torch.float32 and kept.dtype == torch.long
    assert tokens.shape[0] == kept.shape[0] == report["visual_tokens"]
    assert int(kept[-1]) == -1  # the newline
    return report, tokens, kept


def test_full_saves_transformers_own_video_features_and_every_index(checkpoint, clip, hf_features, tmp_path,
                                                                     capsys):
    report, tokens, kept = _generate(checkpoint, clip, tmp_path / "full.safetensors", capsys, "--config",
                                     "configs/full.yaml")
    assert tokens.shape == hf_features.shape
    assert torch.equal(tokens, hf_features)
    assert torch.equal(kept[:-1], torch.arange(tokens.shape[0] - 1))
    with safe_open(str(tmp_path / "full.safetensors"), "pt") as handle:
        meta = handle.metadata()
    pooled = int(meta["pooled_per_frame"])
    assert int(meta["frames_in"]) == FRAMES and tokens.shape[0] == FRAMES * pooled + 1


def test_visionzip_dominant_tokens_are_the_pooled_features_at_their_kept_indices(checkpoint, clip, hf_features,
                                                                                  tmp_path, capsys):
    report, tokens, kept = _generate(checkpoint, clip, tmp_path / "vz.safetensors", capsys, "--config",
                                     "configs/visionzip_r0.10.yaml", "--set", "spatial_tokens=none",
                                     "--set", "dominant_ratio=0.5")
    pooled = (hf_features.shape[0] - 1) // FRAMES
    per_frame = max(1, round(pooled * 0.10))
    dominant = int(per_frame * 0.5)
    assert tokens.shape[0] == FRAMES * per_frame + 1
    frames = kept[:-1].view(FRAMES, per_frame)
    assert bool((frames[:, :dominant] >= 0).all()) and bool((frames[:, dominant:] == -1).all())
    # each frame's dominant tokens come from that frame, in raster order
    starts = torch.arange(FRAMES)[:, None] * pooled
    assert bool(((frames[:, :dominant] >= starts) & (frames[:, :dominant] < starts + pooled)).all())
    assert bool((frames[:, :dominant].diff(dim=1) > 0).all()) if dominant > 1 else True
    rows = kept >= 0
    assert torch.equal(tokens[rows], hf_features[kept[rows]])
    assert torch.equal(tokens[-1], hf_features[-1])  # the newline, untouched


@pytest.mark.parametrize("config", ["configs/holitom_r0.10.yaml", "configs/fastv_r0.10.yaml",
                                    "configs/earlytom_r0.10.yaml"])
def test_any_method_saves_tokens_whose_kept_rows_are_pooled_features(checkpoint, clip, hf_features, tmp_path,
                                                                      capsys, config):
    report, tokens, kept = _generate(checkpoint, clip, tmp_path / "m.safetensors", capsys, "--config", config)
    assert bool((kept >= -1).all()) and bool((kept < hf_features.shape[0] - 1).all())
    rows = kept >= 0  # HoliTom may merge every token of a random model's clip (all -1): then only the newline
    # EarlyTom's encoder runs fewer frames after a merge: same values, possibly not the same float rounding
    torch.testing.assert_close(tokens[rows], hf_features[kept[rows]], rtol=1e-5, atol=1e-5)
    assert torch.equal(tokens[-1], hf_features[-1])
