"""Published numbers that ``earlytom-eval tables`` prints beside ours, with their sources.

Every number here is for **LLaVA-OneVision-7B (llava-hf/llava-onevision-qwen2-7b-ov-hf), 32 frames**; the
tables compare them only with our runs of that model at 32 frames. They were transcribed from the
project's reference facts (``spec/reference-facts.md`` and ``spec/earlytom-algorithm.md`` in the
project's shared specification), which collect them from the papers named in :data:`SOURCES`. Accuracy is
in percent; "% of full" is a method's accuracy divided by the full-token accuracy of the same model.

Nothing here is measured by this project. To add a number, add it with a key of :data:`SOURCES`.
"""

from __future__ import annotations

__all__ = [
    "AVERAGE_TASKS",
    "EARLYTOM_CLAIMS",
    "FRAMES",
    "FULL_ACCURACY",
    "MODEL",
    "RELATIVE_ACCURACY",
    "SOURCES",
    "TTFT_CONTEXT",
    "matches_model",
]

#: The model every published number below refers to.
MODEL = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
FRAMES = 32

SOURCES = {
    "earlytom_paper": (
        "EarlyTom paper: 'Early Token Compression Completes Fast Video Understanding', arXiv 2605.30010 "
        "(CVPR 2026); LLaVA-OV-7B, 32 frames, one A100"
    ),
    "earlytom_paper_comparison": (
        "EarlyTom paper (arXiv 2605.30010), comparison with earlier methods on LLaVA-OV-7B, 32 frames: "
        "average accuracy over MVBench, EgoSchema, LongVideoBench and VideoMME as % of full tokens"
    ),
    "holitom_repro": (
        "HoliTom reproduction: full-token LLaVA-OV-7B re-evaluated with lmms-eval, 32 frames "
        "(HoliTom paper; the baseline of the comparison table)"
    ),
    "holitom_ttft": "HoliTom paper: TTFT breakdown of LLaVA-OV-7B (full tokens vs HoliTom)",
    "llava_ov_paper": "LLaVA-OneVision paper (Li et al., 2024), LLaVA-OV-7B results",
}

#: Full-token accuracy (%) per task and source. LongVideoBench's LLaVA-OV figure is the one the
#: reference facts list beside the paper's numbers.
FULL_ACCURACY: dict[str, dict[str, float]] = {
    "mvbench": {"holitom_repro": 58.3, "llava_ov_paper": 56.7},
    "egoschema": {"holitom_repro": 60.4, "llava_ov_paper": 60.1},
    "longvideobench_val_v": {"holitom_repro": 56.4, "llava_ov_paper": 56.3},
    "videomme": {"holitom_repro": 58.6, "llava_ov_paper": 58.2},
    "mlvu": {"llava_ov_paper": 64.7},
}

#: The tasks the published averages run over (HoliTom's full-token average 58.4 = mean of these four).
AVERAGE_TASKS = ("mvbench", "egoschema", "longvideobench_val_v", "videomme")

#: Average accuracy over :data:`AVERAGE_TASKS` as % of full tokens, per method and retention ratio
#: (source ``earlytom_paper_comparison``). FastV, PDrop and DyCoke are given at 25% only.
RELATIVE_ACCURACY: dict[str, dict[float, float]] = {
    "VisionZip": {0.25: 99.7, 0.20: 98.8, 0.15: 97.1, 0.10: 91.6},
    "PruneVid": {0.25: 98.6, 0.20: 97.8, 0.15: 97.8, 0.10: 96.9},
    "HoliTom": {0.25: 100.7, 0.20: 100.7, 0.15: 99.7, 0.10: 99.1},
    "FastV": {0.25: 96.7},
    "PDrop": {0.25: 96.2},
    "DyCoke": {0.25: 92.6},
}
#: Where each method compresses (for the table's notes).
WHERE = {
    "VisionZip": "after the encoder",
    "PruneVid": "before + inside the LLM",
    "HoliTom": "after the encoder + inside the LLM",
    "FastV": "inside the LLM",
    "PDrop": "inside the LLM",
    "DyCoke": "prefill",
    "EarlyTom": "inside the encoder + after + inside the LLM",
}

#: EarlyTom's own headline claims (source ``earlytom_paper``). Bounds, not per-cell numbers.
EARLYTOM_CLAIMS = {
    "relative_accuracy_min": 96.0,  # "> 96% of full" on average at every ratio
    "ttft_speedup_max": 2.65,  # "TTFT down by up to 2.65x", at 10% retention, A100
    "ttft_speedup_retention": 0.10,
    "flops_reduction_max": 0.61,  # "FLOPs down by up to 61%" (basis not stated)
    "decode_throughput_ratio": 1.3,  # "decoding throughput ~1.3x"
}

#: TTFT context (ms): HoliTom's breakdown at full tokens and with HoliTom (source ``holitom_ttft``);
#: EarlyTom's baseline vision encoding 323 ms = 36.3% of TTFT (source ``earlytom_paper``).
TTFT_CONTEXT = {
    "holitom_full_ttft_ms": 1687.0,
    "holitom_full_vision_ms": 500.0,
    "holitom_full_llm_ms": 1142.0,
    "holitom_ttft_ms": 741.0,
    "earlytom_baseline_vision_ms": 323.0,
    "earlytom_baseline_vision_share": 0.363,
}


def matches_model(pretrained: str | None, frames: int | None) -> bool:
    """Whether our run is comparable with the published numbers (LLaVA-OV-7B at 32 frames)."""
    if not pretrained or frames != FRAMES:
        return False
    name = str(pretrained).rstrip("/").lower()
    return name.endswith("llava-onevision-qwen2-7b-ov-hf") or name.endswith("llava-onevision-qwen2-7b-ov")
