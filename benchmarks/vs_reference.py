"""Our EarlyTom stages against the reference code's, on identical inputs, interleaved in one process.

    PYTHONPATH=. .venv/bin/python benchmarks/vs_reference.py --reference /tmp/earlytom-ref

``--reference`` is a checkout of viridisGreen/EarlyTom (b90932217325d986d11364c5d31466ab1812caa1 for the
committed figures); it stays outside this repository, and ``benchmarks/_reference.py`` says how its stage
functions are loaded. Inputs have LLaVA-OneVision-7B shapes: 32 frames of 729 tokens of width 1152 and 16
heads in the encoder (prune layers 10, 21, 23, tau 0.3, M 6, EMA 0.9: the videomme rho = 0.10 row), pooled
features of width 3584 for stage 2 (rho = 0.10, D = 0), and for stage 3 a 650-token visual span of width
3584 of which 325 are kept. The hidden states have scenes (frames of one scene share a base pattern, each
with its own noise level), so frames merge as on real video.

Rows (ratio = reference median / ours median, target 3x per stage, 20x for the whole compression):

- ``stage1_with_maps``: at each prune layer the reference's ``compression`` with the layer's
  ``[T, 16, 729, 729]`` attention probabilities (what its encoder hands it), then ``mean(dim=(1, 2))``;
  ours: ``temporal_merge`` at each prune layer and, at the last, the received attention from that layer's
  queries and keys (what our encoder captures). Neither side is timed for producing its inputs.
- ``stage1_logic``: both given the same ``[T, 729]`` attention at every prune layer.
- ``stage2``: the reference's ``divided_static_dynamic`` + ``spatial_compression`` loop vs ``select_tokens``.
- ``stage3``: the reference's inline merge (top-k, similarity, the sequential fold, gather) vs
  ``plan_inner_merge`` + ``merge_into_kept`` + the gather.
- ``whole``: the sum of the medians of stage1_with_maps, stage2 and stage3.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _reference  # noqa: E402  (benchmarks/ is not a package)

from earlytom_eval.compression.inner import inner_keep_count, merge_into_kept, plan_inner_merge  # noqa: E402
from earlytom_eval.compression.spatial import select_tokens  # noqa: E402
from earlytom_eval.compression.temporal import temporal_merge  # noqa: E402
from earlytom_eval.models.encoder import attention_received  # noqa: E402

REFERENCE_COMMIT = "b90932217325d986d11364c5d31466ab1812caa1"
PRUNE_LAYERS = (10, 21, 23)
TAU, MAX_WINDOW, EMA, RHO = 0.3, 6, 0.9, 0.10
TOKENS, WIDTH, HEADS, GRID = 729, 1152, 16, 27
POOLED, LLM_WIDTH = 196, 3584
VISUAL, PREFIX, SUFFIX, INNER_RATIO = 650, 14, 24, 0.5
TARGETS = {"stage1_with_maps": 3.0, "stage1_logic": 3.0, "stage2": 3.0, "stage3": 3.0, "whole": 20.0}
LABELS = {
    "stage1_with_maps": "stage 1 incl. the attention maps the reference needs",
    "stage1_logic": "stage 1 logic alone (same [T, 729] attention)",
    "stage2": "stage 2 (D = 0)",
    "stage3": "stage 3 merge, keep 325 of 650",
    "whole": "whole compression incl. maps (1 + 2 + 3)",
}


# ------------------------------------------------------------------------------------------------ inputs
def scene_frames(frames: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """``[frames, 729, 1152]``: scenes of 6-12 frames; frame = (scene base + noise * sigma_f) * token scale.

    With tau 0.3 and M 6 the frames per prune layer come out as 32, 23, 19, leaving 15 (``jobs.mp4``, the
    paper's clip, gave 32, 23, 17, leaving 12 through the 7B preset's random-weight SigLIP).
    """
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(frames, TOKENS, WIDTH, dtype=dtype)
    frame = 0
    while frame < frames:
        length = min(frames - frame, rng.choice([6, 8, 10, 12]))
        base = torch.randn(TOKENS, WIDTH, generator=gen)
        for f in range(frame, frame + length):
            sigma = rng.uniform(0.2, 1.2)
            scale = torch.rand(TOKENS, 1, generator=gen) * 1.5 + 0.5
            out[f] = ((base + sigma * torch.randn(TOKENS, WIDTH, generator=gen)) * scale).to(dtype)
        frame += length
    return out


def queries_keys(frames: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``[T, 16, 729, 72]`` queries and keys with some structure (a few keys attract attention)."""
    gen = torch.Generator().manual_seed(seed)
    head_dim = WIDTH // HEADS
    q = torch.randn(frames, HEADS, TOKENS, head_dim, generator=gen)
    k = torch.randn(frames, HEADS, TOKENS, head_dim, generator=gen)
    k[:, :, ::37] *= 3.0
    return q.to(dtype), k.to(dtype)


def attention_maps(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The reference's eager-attention probabilities: matmul in the dtype, softmax in float32, cast back."""
    scale = (WIDTH // HEADS) ** -0.5
    maps = torch.empty(q.shape[0], HEADS, TOKENS, TOKENS, dtype=q.dtype)
    for t in range(q.shape[0]):
        weights = torch.matmul(q[t], k[t].transpose(-1, -2)) * scale
        maps[t] = torch.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
    return maps


# ------------------------------------------------------------------------------------------------ runners
def ours_stage1(layers, attention_last=None, qk=None):
    """Our stage 1 over the prune layers: ``layers`` is ``[(hidden, attention_or_None), ...]``."""
    attention = None
    out = None
    for index, (hidden, given) in enumerate(layers):
        final = index == len(layers) - 1
        if final and qk is not None:
            attention = attention_received(qk[0], qk[1], (WIDTH // HEADS) ** -0.5)
        elif given is not None:
            attention = given
        out = temporal_merge(hidden, tau=TAU, max_window=MAX_WINDOW, ema=EMA, attention=attention, final=final)
    return out.hidden, out.attention, list(out.final_segments)


def ref_stage1(ref, layers, with_maps: bool):
    hidden = attn = frames = None
    for index, (h, a) in enumerate(layers):
        hidden, attn, frames = ref.compression(h, a, TAU, last_layer=index == len(layers) - 1)
    if with_maps:
        attn = attn.mean(dim=(1, 2))
    return hidden, attn, [tuple(f) for f in frames]


def ours_stage2(features, attention, segments):
    return select_tokens(features, attention, segments, retention=RHO, frames_in=32).tokens


def ours_stage3(hidden, scores):
    span = hidden[0, PREFIX : PREFIX + VISUAL]
    decision = plan_inner_merge(scores, span, inner_keep_count(VISUAL, INNER_RATIO))
    merged = merge_into_kept(span, decision)
    length = hidden.shape[1]
    keep = torch.cat([torch.arange(PREFIX), decision.kept + PREFIX, torch.arange(PREFIX + VISUAL, length)])
    out = hidden[:, keep]  # one gather, as the reference's
    out[0, PREFIX : PREFIX + merged.shape[0]] = merged
    return out


def timed(fn):
    """``(wall ms, process CPU ms, result)``."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return (time.perf_counter() - start) * 1000.0, (time.process_time() - cpu) * 1000.0, result


def interleave(ref_fn, ours_fn, repeats: int, prepare=None):
    """Medians (ms) of ``repeats`` rounds, reference and ours alternating which goes first."""
    ref_ms, ours_ms, ref_out, ours_out = [], [], None, None
    cpu = {"ref": [], "ours": []}
    for round_ in range(repeats):
        order = [("ref", ref_fn), ("ours", ours_fn)]
        if round_ % 2:
            order.reverse()
        for name, fn in order:
            args = prepare() if prepare is not None else ()
            ms, cpu_ms, out = timed(lambda fn=fn, args=args: fn(*args))
            (ref_ms if name == "ref" else ours_ms).append(ms)
            cpu[name].append(cpu_ms)
            if name == "ref":
                ref_out = out
            else:
                ours_out = out
    return (ref_ms, cpu["ref"]), (ours_ms, cpu["ours"]), ref_out, ours_out


def summary(ref, ours, target):
    """Wall-clock medians decide; process CPU time (both threads) is recorded beside them, as a check on
    a shared machine."""
    (ref_ms, ref_cpu), (ours_ms, ours_cpu) = ref, ours
    ref_med, ours_med = statistics.median(ref_ms), statistics.median(ours_ms)
    ratio = ref_med / ours_med
    return {
        "cpu_ratio": round(statistics.median(ref_cpu) / statistics.median(ours_cpu), 2),
        "reference_ms": round(ref_med, 2),
        "ours_ms": round(ours_med, 2),
        "ratio": round(ratio, 2),
        "target": target,
        "met": ratio >= target,
        "reference_runs_ms": [round(x, 2) for x in ref_ms],
        "ours_runs_ms": [round(x, 2) for x in ours_ms],
    }


# ------------------------------------------------------------------------------------------------ one dtype
def run_dtype(root: Path, dtype: torch.dtype, repeats: int, heavy_repeats: int, seed: int) -> dict:
    ref1 = _reference.load_stage1(root)(ema=EMA, max_window=MAX_WINDOW)
    ref2 = _reference.ReferenceStage2(_reference.load_arch(root))
    ref3, _ = _reference.load_stage3(root)
    rows: dict[str, dict] = {}
    checks: dict[str, object] = {}

    # Stage 1 inputs: hidden states per prune layer, the frame count following our (= the reference's) merges.
    frames = [32]
    hiddens = []
    for index in range(len(PRUNE_LAYERS)):
        hiddens.append(scene_frames(frames[-1], seed + index, dtype))
        if index + 1 < len(PRUNE_LAYERS):
            out = temporal_merge(hiddens[-1], tau=TAU, max_window=MAX_WINDOW, ema=EMA)
            frames.append(out.hidden.shape[0])
    checks["frames_per_prune_layer"] = frames
    gen = torch.Generator().manual_seed(seed + 99)
    attn_rows = [torch.rand(t, TOKENS, generator=gen).softmax(-1).to(dtype) for t in frames]

    # stage 1 logic alone
    layers = list(zip(hiddens, attn_rows))
    ref_ms, ours_ms, ref_out, ours_out = interleave(
        lambda: ref_stage1(ref1, layers, False), lambda: ours_stage1(layers), repeats
    )
    rows["stage1_logic"] = summary(ref_ms, ours_ms, TARGETS["stage1_logic"])
    checks["stage1_segments_equal"] = ref_out[2] == ours_out[2]
    checks["stage1_final_segments"] = ours_out[2]
    checks["stage1_frames_out"] = int(ours_out[0].shape[0])
    checks["stage1_hidden_max_abs_diff"] = float((ref_out[0].float() - ours_out[0].float()).abs().max())

    # stage 1 with the attention maps (reference) / the queries and keys (ours)
    q, k = queries_keys(frames[0], seed + 7, dtype)
    maps = attention_maps(q, k)
    ref_layers = [(h, maps[: h.shape[0]]) for h in hiddens]
    ours_layers = [(h, None) for h in hiddens]
    last = hiddens[-1].shape[0]
    qk = (q[:last], k[:last])
    ref_ms, ours_ms, ref_out, ours_out = interleave(
        lambda: ref_stage1(ref1, ref_layers, True),  # noqa: F821 (deleted after this call)
        lambda: ours_stage1(ours_layers, qk=qk),
        heavy_repeats,
    )
    rows["stage1_with_maps"] = summary(ref_ms, ours_ms, TARGETS["stage1_with_maps"])
    checks["stage1_maps_segments_equal"] = ref_out[2] == ours_out[2]
    ref_att, ours_att = ref_out[1].float(), ours_out[1]
    checks["received_attention_max_rel_diff"] = float(((ref_att - ours_att).abs() / ref_att.abs()).max())
    del maps, ref_layers, ref_out
    final_segments = ours_out[2]
    frames_out = int(ours_out[0].shape[0])

    # our received attention alone, 32 frames (information: the cost of the signal)
    scale = (WIDTH // HEADS) ** -0.5
    ms = [timed(lambda: attention_received(q, k, scale))[0] for _ in range(max(1, heavy_repeats))]  # noqa: F821
    rows_info = {"received_attention_32_frames_ms": round(statistics.median(ms), 2)}
    del q, k

    # stage 2
    features = torch.randn(frames_out, POOLED, LLM_WIDTH, generator=gen).to(dtype)
    pooled_attention = torch.rand(frames_out, POOLED, generator=gen)
    ref_ms, ours_ms, ref_out, ours_out = interleave(
        lambda: ref2(features, pooled_attention, [tuple(s) for s in final_segments], 32, RHO),
        lambda: ours_stage2(features, pooled_attention, final_segments),
        repeats,
    )
    rows["stage2"] = summary(ref_ms, ours_ms, TARGETS["stage2"])
    checks["stage2_tokens"] = int(ours_out.shape[0])
    checks["stage2_equal"] = ref_out.shape == ours_out.shape and bool(torch.equal(ref_out, ours_out))

    # stage 3
    length = PREFIX + VISUAL + SUFFIX
    hidden = torch.randn(1, length, LLM_WIDTH, generator=gen).to(dtype)
    scores = torch.rand(VISUAL, generator=gen)
    ref_ms, ours_ms, ref_out, ours_out = interleave(
        lambda h: ref3(h, scores, PREFIX, VISUAL, INNER_RATIO, length),
        lambda h: ours_stage3(h, scores),
        repeats,
        prepare=lambda: (hidden.clone(),),
    )
    rows["stage3"] = summary(ref_ms, ours_ms, TARGETS["stage3"])
    checks["stage3_tokens_out"] = int(ours_out.shape[1])
    checks["stage3_equal"] = ref_out.shape == ours_out.shape and bool(torch.equal(ref_out, ours_out))
    checks["stage3_max_abs_diff"] = float((ref_out.float() - ours_out.float()).abs().max())

    whole_ref = sum(rows[r]["reference_ms"] for r in ("stage1_with_maps", "stage2", "stage3"))
    whole_ours = sum(rows[r]["ours_ms"] for r in ("stage1_with_maps", "stage2", "stage3"))
    rows["whole"] = {
        "reference_ms": round(whole_ref, 2),
        "ours_ms": round(whole_ours, 2),
        "ratio": round(whole_ref / whole_ours, 2),
        "target": TARGETS["whole"],
        "met": whole_ref / whole_ours >= TARGETS["whole"],
    }
    return {"rows": rows, "info": rows_info, "checks": checks}


def render(result: dict) -> str:
    dtypes = list(result["dtypes"])
    head = ["stage"] + [f"{d} ratio" for d in dtypes] + ["target", "status"]
    lines = [
        f"reference: viridisGreen/EarlyTom @ {result['reference_commit']} | torch {result['torch']} | "
        f"{result['threads']} threads | {result['machine']}",
        f"medians of {result['repeats']} interleaved rounds ({result['heavy_repeats']} for stage 1 with maps); "
        "ratio = reference ms / ours ms",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in TARGETS:
        cells = [LABELS[row]]
        met = True
        for d in dtypes:
            r = result["dtypes"][d]["rows"][row]
            cells.append(f"{r['ratio']:.2f}x ({r['reference_ms']:.1f} / {r['ours_ms']:.1f} ms)")
            met = met and r["met"]
        cells += [f"{TARGETS[row]:g}x", "met" if met else "missed"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for d in dtypes:
        lines.append(f"{d}: our received attention alone, 32 frames: "
                     f"{result['dtypes'][d]['info']['received_attention_32_frames_ms']:.1f} ms")
        lines.append(f"{d}: checks: {json.dumps(result['dtypes'][d]['checks'])}")
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of viridisGreen/EarlyTom")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--heavy-repeats", type=int, default=3, help="rounds of stage 1 with the attention maps")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("results/bench/vs_reference_cpu.json"))
    parser.add_argument("--txt", type=Path, default=Path("results/bench/vs_reference_cpu.txt"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    result = {
        "command": "benchmarks/vs_reference.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "reference_commit": _reference.reference_commit(args.reference) or REFERENCE_COMMIT,
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()} {_cpu_name()}",
        "repeats": args.repeats,
        "heavy_repeats": args.heavy_repeats,
        "shapes": {
            "frames": 32, "tokens": TOKENS, "width": WIDTH, "heads": HEADS, "prune_layers": PRUNE_LAYERS,
            "tau": TAU, "max_window": MAX_WINDOW, "ema": EMA, "rho": RHO, "pooled": POOLED, "llm_width": LLM_WIDTH,
            "stage3_visual": VISUAL, "stage3_keep": inner_keep_count(VISUAL, INNER_RATIO),
        },
        "dtypes": {},
    }
    with torch.inference_mode():
        for name in args.dtypes:
            result["dtypes"][name] = run_dtype(args.reference, getattr(torch, name), args.repeats,
                                               args.heavy_repeats, args.seed)
            print(f"{name}: " + ", ".join(f"{k} {v['ratio']}x" for k, v in result["dtypes"][name]["rows"].items()),
                  flush=True)
    text = render(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    args.txt.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
