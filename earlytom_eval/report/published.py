"""The reference's published numbers (LLaVA-OneVision-7B, 32 frames), with their sources, and the tables that
set ours beside them.

Transcribed from the project's reference facts, which collect them from the papers in :data:`SOURCES`; nothing
here is measured by this project. A new number goes in with a key of :data:`SOURCES`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .cells import Cell
from .metrics import is_number
from .names import method_label, task_label
from .table import Table, fmt

__all__ = [
    "AVERAGE_TASKS",
    "EARLYTOM_CLAIMS",
    "FRAMES",
    "FULL_ACCURACY",
    "MODEL",
    "PEER_PUBLISHED",
    "RELATIVE_ACCURACY",
    "SOURCES",
    "TTFT_CONTEXT",
    "matches_model",
    "published_tables",
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
    "holitom_readme": (
        "HoliTom README results table (cokeshao/HoliTom @ e9b2972, imgs/benchmark.jpeg): LLaVA-OV-7B, 32 frames, "
        "MVBench / EgoSchema / LongVideoBench / VideoMME, prefill FLOPs against 40.8 T for full tokens"
    ),
    "fastvid_log": "FastVID repository log (LunarShen/FastVID @ a40a109, scripts/llava_onevision.log): rho 0.10, "
                   "flash-attention-2",
    "dycoke_table": "DyCoke README / paper table (KD-TAO/DyCoke @ dd74634, figures/table.png): K 0.7, L 3, P 0.7, "
                    "14.25% of the tokens finally retained, 43% FLOPs; VideoMME 58.3 vs 58.5 full",
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

#: The peers' published per-task accuracy (%) on LLaVA-OV-7B at 32 frames: method key -> ratio -> entry with
#: the tasks it reports, ``average`` and ``pct_of_full`` where the source gives them, ``prefill_tflops`` (the
#: source's basis), ``source`` (a key of :data:`SOURCES`) and a ``note``. Transcribed from
#: ``../shared/spec/peer-methods.md``. HoliTom's README table gives FastV and DyCoke one row each, which the
#: EarlyTom paper's comparison places at 25%; FastVID has no EgoSchema figure; ToMe has none at all.
PEER_PUBLISHED: dict[str, dict[float, dict[str, Any]]] = {
    "visionzip": {
        0.25: {"mvbench": 57.9, "egoschema": 60.3, "longvideobench_val_v": 56.5, "videomme": 58.2,
               "average": 58.2, "pct_of_full": 99.7, "prefill_tflops": 8.7, "source": "holitom_readme"},
        0.20: {"mvbench": 57.7, "egoschema": 59.8, "longvideobench_val_v": 55.2, "videomme": 57.9,
               "average": 57.7, "pct_of_full": 98.8, "prefill_tflops": 7.0, "source": "holitom_readme"},
        0.15: {"mvbench": 56.5, "egoschema": 59.8, "longvideobench_val_v": 54.4, "videomme": 56.1,
               "average": 56.7, "pct_of_full": 97.1, "prefill_tflops": 5.2, "source": "holitom_readme"},
        0.10: {"mvbench": 53.5, "egoschema": 58.0, "longvideobench_val_v": 49.3, "videomme": 53.4,
               "average": 53.5, "pct_of_full": 91.6, "prefill_tflops": 3.4, "source": "holitom_readme"},
    },
    "holitom": {
        0.25: {"mvbench": 58.4, "egoschema": 61.2, "longvideobench_val_v": 56.7, "videomme": 58.9,
               "average": 58.8, "pct_of_full": 100.7, "prefill_tflops": 7.1, "source": "holitom_readme"},
        0.20: {"mvbench": 58.7, "egoschema": 61.0, "longvideobench_val_v": 57.1, "videomme": 58.6,
               "average": 58.8, "pct_of_full": 100.7, "prefill_tflops": 5.8, "source": "holitom_readme"},
        0.15: {"mvbench": 58.1, "egoschema": 61.2, "longvideobench_val_v": 56.4, "videomme": 57.3,
               "average": 58.2, "pct_of_full": 99.7, "prefill_tflops": 4.3, "source": "holitom_readme"},
        0.10: {"mvbench": 57.3, "egoschema": 61.2, "longvideobench_val_v": 56.3, "videomme": 56.8,
               "average": 57.9, "pct_of_full": 99.1, "prefill_tflops": 2.8, "source": "holitom_readme"},
    },
    "fastvid": {
        0.25: {"mvbench": 56.5, "longvideobench_val_v": 56.3, "videomme": 58.0, "source": "holitom_readme",
               "note": "no EgoSchema figure"},
        0.20: {"mvbench": 56.3, "longvideobench_val_v": 57.1, "videomme": 57.9, "source": "holitom_readme",
               "note": "no EgoSchema figure"},
        0.15: {"mvbench": 56.0, "longvideobench_val_v": 56.2, "videomme": 57.7, "source": "holitom_readme",
               "note": "no EgoSchema figure"},
        0.10: {"mvbench": 55.9, "longvideobench_val_v": 56.3, "videomme": 57.3, "source": "holitom_readme",
               "note": "no EgoSchema figure; FastVID's own log: VideoMME 57.33 (fastvid_log)"},
    },
    "fastv": {
        0.25: {"mvbench": 55.9, "egoschema": 57.5, "longvideobench_val_v": 56.7, "videomme": 56.1,
               "average": 56.5, "pct_of_full": 96.7, "prefill_tflops": 9.3, "source": "holitom_readme",
               "note": "settings not stated; every token enters the LLM"},
    },
    "dycoke": {
        0.25: {"mvbench": 53.1, "egoschema": 59.5, "longvideobench_val_v": 49.5, "videomme": 54.3,
               "average": 54.1, "pct_of_full": 92.6, "source": "holitom_readme",
               "note": "how '25%' was reached is not stated (stage 1 cannot go below ~28%); DyCoke's own table: "
                       "VideoMME 58.3 (dycoke_table)"},
    },
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


def published_tables(cells: Sequence[Cell], bench_rows: Sequence[Mapping[str, Any]],
                     accuracy: Table) -> list[Table]:
    """The reference's published numbers beside ours (LLaVA-OV-7B, 32 frames only), with the difference."""
    comparable = {c.model for c in cells if c.run and matches_model(c.run.pretrained, c.run.frames)}
    acc = {(r["model"], r["task"], r["method"], r["retention"]): r for r in accuracy.data}
    model = sorted(comparable)[0] if comparable else None
    note_model = (f"Ours: {model}." if model else
                  "Ours: — no run of LLaVA-OV-7B at 32 frames here (the published numbers are for that model), so "
                  "no difference is computed.")
    # 1. full-token accuracy per task
    rows, display = [], []
    for task, values in FULL_ACCURACY.items():
        ours = (acc.get((model, task, "full", None)) or {}).get("accuracy") if model else None
        holi, llava = values.get("holitom_repro"), values.get("llava_ov_paper")
        rows.append({"task": task, "ours": ours, "holitom_repro": holi, "diff_vs_holitom": _diff(ours, holi),
                     "llava_ov_paper": llava, "diff_vs_llava_ov": _diff(ours, llava)})
        display.append([task_label(task), fmt(ours), fmt(holi), fmt(_diff(ours, holi), 1),
                        fmt(llava), fmt(_diff(ours, llava), 1)])
    full = Table("published_full", "Full-token accuracy: ours vs published (LLaVA-OV-7B, 32 frames)", rows,
                 ["Task", "Ours", "HoliTom repro.", "Ours − HoliTom", "LLaVA-OV paper", "Ours − LLaVA-OV"],
                 display, [note_model, "Sources: HoliTom repro. = " + SOURCES["holitom_repro"]
                           + "; LLaVA-OV paper = " + SOURCES["llava_ov_paper"] + "."], align="lrrrrr")
    # 2. average accuracy as % of full, per ratio
    methods = list(RELATIVE_ACCURACY)
    rows, display = [], []
    avg_label = " / ".join(task_label(t) for t in AVERAGE_TASKS)
    for retention in (0.25, 0.20, 0.15, 0.10):
        ours = ours_post = None
        if model:
            ours = (acc.get((model, "average", "earlytom", retention)) or {}).get("pct_of_full")
            ours_post = (acc.get((model, "average", "earlytom_postenc", retention)) or {}).get("pct_of_full")
            avg_over = (acc.get((model, "average", "earlytom", retention)) or {}).get("average_over", "")
            if avg_over and avg_over.split(";") != list(AVERAGE_TASKS):
                ours = ours_post = None  # not the same average
        holi = RELATIVE_ACCURACY["HoliTom"].get(retention)
        claim = EARLYTOM_CLAIMS["relative_accuracy_min"]
        record = {"retention": retention, "ours_earlytom": ours, "ours_postenc": ours_post,
                  "earlytom_paper_min": claim, "diff_vs_claim": _diff(ours, claim),
                  "diff_vs_holitom": _diff(ours, holi)}
        record.update({m: RELATIVE_ACCURACY[m].get(retention) for m in methods})
        rows.append(record)
        display.append([f"{retention * 100:g}%", fmt(ours), fmt(ours_post), f"> {claim:g}",
                        fmt(_diff(ours, claim), 1)] + [fmt(RELATIVE_ACCURACY[m].get(retention)) for m in methods]
                       + [fmt(_diff(ours, holi), 1)])
    relative = Table(
        "published_relative", "Average accuracy as % of full tokens: ours vs published", rows,
        ["Retention", "Ours EarlyTom", "Ours w/o enc. stage", "EarlyTom paper", "Ours − 96"] + methods
        + ["Ours − HoliTom"], display,
        [note_model, f"Average over {avg_label}, as % of the full-token average. Published: "
         + SOURCES["earlytom_paper_comparison"] + "; EarlyTom's own figure is its claim of > 96% at every "
         "ratio (" + SOURCES["earlytom_paper"] + "). Where each method compresses: "
         + "; ".join(f"{m}: {w}" for m, w in WHERE.items()) + "."],
        align="l" + "r" * (len(methods) + 5))
    # 3. efficiency claims
    bench = [r for r in bench_rows if matches_model(r.get("pretrained"), r.get("frames"))]
    settings = "videomme" if any(r["settings"] == "videomme" for r in bench) else (bench[0]["settings"] if bench
                                                                                    else None)
    pick = {(r["method"], r["retention"]): r for r in bench if r["settings"] == settings}
    ten = pick.get(("earlytom", EARLYTOM_CLAIMS["ttft_speedup_retention"])) or {}
    full_b = pick.get(("full", None)) or {}
    speedup = ten.get("speedup_vs_full")
    flops_cut = 100.0 - ten["flops_pct_of_full"] if is_number(ten.get("flops_pct_of_full")) else None
    share = (100.0 * full_b["vision_encoder_ms"] / full_b["ttft_ms"]
             if is_number(full_b.get("vision_encoder_ms")) and full_b.get("ttft_ms") else None)
    claims = [
        ("TTFT speedup at 10% retention", speedup, EARLYTOM_CLAIMS["ttft_speedup_max"], "x (up to; A100)"),
        ("Prefill FLOPs reduction at 10% (%)", flops_cut, 100 * EARLYTOM_CLAIMS["flops_reduction_max"],
         "% (up to; basis not stated)"),
        ("Decode throughput vs full at 10%", ten.get("decode_vs_full"),
         EARLYTOM_CLAIMS["decode_throughput_ratio"], "x (about)"),
        ("Vision encoder share of full-token TTFT (%)", share,
         100 * TTFT_CONTEXT["earlytom_baseline_vision_share"], "% (A100)"),
        ("Full-token TTFT (ms)", full_b.get("ttft_ms"), TTFT_CONTEXT["holitom_full_ttft_ms"],
         "ms (HoliTom's breakdown, its GPU)"),
    ]
    rows, display = [], []
    for name, ours, theirs, unit in claims:
        rows.append({"metric": name, "ours": ours, "published": theirs, "unit": unit, "diff": _diff(ours, theirs)})
        display.append([name, fmt(ours, 2), f"{theirs:g} {unit}", fmt(_diff(ours, theirs), 2)])
    eff = Table(
        "published_efficiency", "Efficiency: ours vs the EarlyTom paper's claims", rows,
        ["Metric", "Ours", "Published", "Ours − published"], display,
        [("Ours: bench of " + f"{bench[0]['model']}, {settings} settings, {bench[0].get('device')}." if bench else
          "Ours: — no benchmark of LLaVA-OV-7B at 32 frames here, so no difference is computed."),
         "Published: " + SOURCES["earlytom_paper"] + "; full-token TTFT: " + SOURCES["holitom_ttft"]
         + ". Timings depend on the GPU: compare like with like."],
        align="lrrr")
    return [full, relative, methods_published_table(acc, model, note_model), eff]


def methods_published_table(acc: Mapping[tuple, Mapping[str, Any]], model: str | None, note_model: str) -> Table:
    """Every peer's published per-task accuracy per ratio, ours beside (LLaVA-OV-7B at 32 frames only)."""
    tasks = list(AVERAGE_TASKS)
    rows, display = [], []
    for method, by_ratio in PEER_PUBLISHED.items():
        for retention, entry in by_ratio.items():
            record: dict[str, Any] = {"method": method, "retention": retention, "source": entry["source"],
                                      "note": entry.get("note", "")}
            line = [method_label(method), f"{retention * 100:g}%"]
            for task in tasks:
                ours = (acc.get((model, task, method, retention)) or {}).get("accuracy") if model else None
                record[f"{task}_published"], record[f"{task}_ours"] = entry.get(task), ours
                line.append(fmt(entry.get(task)) + (f" ({fmt(ours)})" if is_number(ours) else ""))
            average = (acc.get((model, "average", method, retention)) or {}) if model else {}
            same_tasks = str(average.get("average_over") or "").split(";") == tasks
            ours_pct = average.get("pct_of_full") if same_tasks else None  # only the same four-task average
            record.update(pct_of_full_published=entry.get("pct_of_full"), pct_of_full_ours=ours_pct,
                          diff_pct_of_full=_diff(ours_pct, entry.get("pct_of_full")),
                          prefill_tflops_published=entry.get("prefill_tflops"))
            line += [fmt(entry.get("pct_of_full")), fmt(ours_pct), fmt(_diff(ours_pct, entry.get("pct_of_full")), 1),
                     fmt(entry.get("prefill_tflops")), entry["source"] + (f"; {entry['note']}" if entry.get("note")
                                                                          else "")]
            rows.append(record)
            display.append(line)
    columns = (["Method", "Retention"] + [f"{task_label(t)} pub. (ours)" for t in tasks]
               + ["% of full pub.", "% of full ours", "Ours − pub.", "Prefill TFLOPs pub.", "Source"])
    notes = [note_model, "Published accuracy (%) per task, ours in brackets where a run of LLaVA-OV-7B at 32 frames "
             "exists; % of full = the average over the four tasks as % of the full-token average. Prefill TFLOPs: "
             "the source's own count (full tokens 40.8 T there). Sources: " + "; ".join(
                 f"{k} = {SOURCES[k]}" for k in ("holitom_readme", "fastvid_log", "dycoke_table")) + ". ToMe: "
             "no published numbers in the reference repositories."]
    return Table("published_methods", "Peer methods: published accuracy per task, ours beside", rows, columns,
                 display, notes, align="ll" + "r" * (len(tasks) + 4) + "l")


def _diff(ours: Any, theirs: Any) -> float | None:
    return float(ours) - float(theirs) if is_number(ours) and is_number(theirs) else None
