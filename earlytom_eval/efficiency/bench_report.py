"""The bench's results: per config the median TTFT with its stages, FLOPs, memory and decoding, ratios against
full tokens, the JSON report and its terminal table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..compression.config import CompressionConfig
from ..stages import OTHER, STAGES
from .flops import ModelShapes, reference_llm_macs
from .flops_report import add_ratios, text_table
from .method_flops import count_stage_flops
from .schedules import schedule_from_encoding
from .schema import BASIS

__all__ = ["RunRecord", "build_report", "format_bench_table", "summarize_config"]


@dataclass
class RunRecord:
    """One measured run of one config."""

    phase: str  # "warmup" | "timed"
    round: int
    config: str
    kind: str  # "ttft" (headline, decode) | "stages" (profiled) | "both" (inline)
    ttft_ms: float
    stages_ms: dict[str, float] = field(default_factory=dict)
    decode_ms: float | None = None
    decode_tokens: int = 0
    peak_memory_bytes: int | None = None
    baseline_memory_bytes: int | None = None
    visual_tokens: int = 0
    prompt_tokens: int = 0
    frames_per_layer: tuple[int, ...] = ()
    frames_out: int = 0
    segments: tuple[tuple[int, int], ...] | None = None
    llm_tokens_per_layer: tuple[int, ...] = ()
    #: Tokens per frame each encoder layer processed (fewer with ToMe; empty if not recorded).
    encoder_tokens_per_layer: tuple[int, ...] = ()
    first_token: int = -1
    #: Share of the machine's CPU used by other processes during the run (None if unknown).
    other_cpu_share: float | None = None
    #: Disturbed by other processes (``other_cpu_share`` above the runner's limit) and measured again.
    discarded: bool = False


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "runs": [round(float(v), 3) for v in values],
    }


def summarize_config(
    config: CompressionConfig, records: Sequence[RunRecord], shapes: ModelShapes, attention: str = "square"
) -> dict[str, Any]:
    """One ``configs`` entry from a config's timed records (warm-ups must already be excluded)."""
    timed = [r for r in records if r.config == config.name and r.phase == "timed" and not r.discarded]
    if not timed:
        raise ValueError(f"no timed runs for config {config.name!r}")
    ttft_runs = [r for r in timed if r.kind in ("ttft", "both")]
    stage_runs = [r for r in timed if r.kind in ("stages", "both")]
    decode_runs = [r for r in timed if r.decode_ms is not None]
    first = timed[0]
    counts = {(r.visual_tokens, r.prompt_tokens, r.frames_per_layer, r.llm_tokens_per_layer) for r in timed}
    schedule = schedule_from_encoding(_EncodingView(first), "measured in this run", shapes.encoder_tokens)
    counted = count_stage_flops(
        shapes,
        config,
        schedule,
        first.prompt_tokens,
        first.visual_tokens,
        llm_tokens_per_layer=first.llm_tokens_per_layer or None,
        attention=attention,
    )
    stage_names = [s for s in (*STAGES, OTHER) if any(s in r.stages_ms for r in stage_runs)]
    stages_ms = {s: _stats([r.stages_ms.get(s, 0.0) for r in stage_runs]) for s in stage_names}
    ttft = _stats([r.ttft_ms for r in ttft_runs])
    profiled_ttft = _stats([r.ttft_ms for r in stage_runs])
    ours = [r.stages_ms.get("compression", 0.0) + r.stages_ms.get("inner_merge", 0.0) for r in stage_runs]
    entry: dict[str, Any] = {
        "name": config.name,
        "method": config.method,
        "config": config.to_dict(),
        "ttft_ms": ttft,
        "stages_ms": stages_ms,
        "ttft_profiled_ms": profiled_ttft,
        "compression_ms": _stats(ours),
        "compression_share_of_ttft": statistics.median(ours) / profiled_ttft["median"],
        "flops": dict(counted.stages),
        "total_prefill_flops": counted.total_prefill,
        "flops_detail": counted.detail,
        "reference_llm_macs": reference_llm_macs(shapes, first.visual_tokens - 1),
        "frames_per_layer": list(first.frames_per_layer),
        "frames_out": first.frames_out,
        "segments": [list(s) for s in first.segments] if first.segments is not None else None,
        "schedule_compact": schedule.compact(),
        "encoder_tokens_compact": schedule.tokens_compact(),
        "visual_tokens": first.visual_tokens,
        "prompt_tokens": first.prompt_tokens,
        "llm_tokens_per_layer": list(first.llm_tokens_per_layer),
        "token_counts_identical_across_runs": len(counts) == 1,
        "peak_memory_bytes": max(r.peak_memory_bytes for r in timed if r.peak_memory_bytes is not None)
        if any(r.peak_memory_bytes is not None for r in timed)
        else None,
        "timed_runs": len(ttft_runs),
        "discarded_runs": sum(1 for r in records if r.config == config.name and r.discarded),
        "other_cpu_share_max": max((r.other_cpu_share for r in timed if r.other_cpu_share is not None), default=None),
    }
    baselines = [r.baseline_memory_bytes for r in timed if r.baseline_memory_bytes is not None]
    if baselines and entry["peak_memory_bytes"] is not None:
        entry["peak_memory_above_baseline_bytes"] = entry["peak_memory_bytes"] - min(baselines)
    if decode_runs:
        rates = [r.decode_tokens / (r.decode_ms / 1000.0) for r in decode_runs]
        entry["decode"] = {
            "tokens": decode_runs[0].decode_tokens,
            "tokens_per_s": _stats(rates),
            "ms": _stats([r.decode_ms for r in decode_runs]),
        }
    return entry


@dataclass
class _EncodingView:
    """Adapts a RunRecord to what :func:`schedule_from_encoding` reads."""

    record: RunRecord

    @property
    def frames_per_layer(self) -> tuple[int, ...]:
        return self.record.frames_per_layer

    @property
    def frames_out(self) -> int:
        return self.record.frames_out

    @property
    def segments(self):
        return self.record.segments

    @property
    def tokens_per_layer(self) -> tuple[int, ...]:
        return self.record.encoder_tokens_per_layer


def build_report(
    configs: Sequence[CompressionConfig],
    records: Sequence[RunRecord],
    shapes: ModelShapes,
    *,
    meta: dict[str, Any] | None = None,
    attention: str = "square",
) -> dict[str, Any]:
    """The JSON report: metadata, one entry per config (timed runs only), ratios against ``full``, raw runs."""
    entries = [summarize_config(c, records, shapes, attention) for c in configs]
    ratios = add_ratios(entries)
    for entry in entries:
        full = next((e for e in entries if e["method"] == "full"), None)
        if full is not None and "decode" in entry and "decode" in full:
            ratio = entry["decode"]["tokens_per_s"]["median"] / full["decode"]["tokens_per_s"]["median"]
            entry["vs_full"]["decode_throughput"] = ratio
            ratios[entry["name"]]["decode_throughput"] = ratio
        if full is not None and entry.get("peak_memory_bytes") and full.get("peak_memory_bytes"):
            ratio = entry["peak_memory_bytes"] / full["peak_memory_bytes"]
            entry["vs_full"]["peak_memory"] = ratio
            ratios[entry["name"]]["peak_memory"] = ratio
    report = dict(meta or {})
    report["flops_basis"] = BASIS
    report["configs"] = entries
    report["ratios"] = ratios
    report["runs"] = [_record_json(r) for r in records]
    return report


def _record_json(record: RunRecord) -> dict[str, Any]:
    out = asdict(record)
    out["ttft_ms"] = round(out["ttft_ms"], 3)
    out["stages_ms"] = {k: round(v, 3) for k, v in out["stages_ms"].items()}
    out.pop("segments")
    out.pop("llm_tokens_per_layer")
    out.pop("encoder_tokens_per_layer")
    out["frames_per_layer"] = list(out["frames_per_layer"])
    return out


def _fmt_ms(stats: dict[str, float]) -> str:
    return f"{stats['median']:.1f} [{stats['min']:.1f}-{stats['max']:.1f}]"


def format_bench_table(report: dict[str, Any]) -> str:
    lines = []
    hw = report.get("hardware", {})
    lines.append(f"device: {hw.get('device_name')} | {hw.get('dtype')} | torch {hw.get('torch')} | "
                 f"transformers {hw.get('transformers')} | attention {hw.get('attention_kernel')}")
    model = report.get("model", {})
    lines.append(f"model: {model.get('source')}")
    if model.get("note") and model["note"] not in str(model.get("source")):
        lines.append(f"note: {model['note']}")
    proto = report.get("protocol", {})
    lines.append(
        f"protocol: {proto.get('warmup')} warm-up + {proto.get('repeats')} timed rounds, configs interleaved "
        f"(order rotated per round), stages {proto.get('profile')}; TTFT = preprocessed frames on device -> first "
        "token; median [min-max] ms"
    )
    cols = ["config", "vis.tok", "frames/layer", "TTFT ms", "speedup", "encoder", "compress", "proj+pool",
            "LLM prefill", "inner merge", "1st tok", "other", "ours/TTFT", "peak mem", "decode tok/s",
            "prefill TFLOPs", "FLOPs vs full"]
    rows = []
    for e in report["configs"]:
        st = e["stages_ms"]
        vs = e.get("vs_full", {})

        def med(key: str, st: dict = st) -> str:
            return f"{st[key]['median']:.1f}" if key in st else "-"

        rows.append([
            e["name"], str(e["visual_tokens"]), e.get("schedule_compact", ""), _fmt_ms(e["ttft_ms"]),
            f"{vs['ttft_speedup']:.2f}x" if "ttft_speedup" in vs else "-",
            med("vision_encoder"), med("compression"), med("projector_pooling"), med("llm_prefill"),
            med("inner_merge"), med("first_token"), med(OTHER), f"{e['compression_share_of_ttft']:.2%}",
            f"{e['peak_memory_bytes'] / 2**30:.2f} GiB" if e.get("peak_memory_bytes") else "-",
            f"{e['decode']['tokens_per_s']['median']:.2f}" if "decode" in e else "-",
            f"{e['total_prefill_flops'] / 1e12:.3f}",
            f"{vs['total_prefill_flops']:.1%}" if "total_prefill_flops" in vs else "-",
        ])
    lines.extend(text_table(cols, rows, left=(0, 2)))
    lines.append("stage columns: median ms of the stage-timed runs; 'ours/TTFT' = (compression + inner merge) / TTFT; "
                 "peak mem includes the weights")
    shares = [e["other_cpu_share_max"] for e in report["configs"] if e.get("other_cpu_share_max") is not None]
    discarded = sum(e.get("discarded_runs", 0) for e in report["configs"])
    if shares:
        lines.append(f"other processes' CPU share during the kept runs: at most {max(shares):.1%}; "
                     f"runs discarded as noisy and measured again: {discarded}")
    return "\n".join(lines)
