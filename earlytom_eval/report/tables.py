"""The tables: accuracy, per-document efficiency, the bench's TTFT and FLOPs, the published numbers beside ours,
and every cell's status; :func:`aggregate` builds them all from a runs folder (nothing is written)."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..stages import FLOP_STAGES, OTHER, PREFILL_FLOP_STAGES, STAGES
from .cells import Cell, document_efficiency, reached_retention, resolve_cells, visual_tokens_after_cuts
from .compare import methods_table
from .metrics import is_number
from .names import METHOD_ORDER, TASK_ORDER, method_label, method_of, task_label
from .published import AVERAGE_TASKS, published_tables
from .runs import BenchRun, discover_bench_runs, discover_eval_runs, fingerprint
from .table import Table, display_path, fmt, ratio_label, status_mark

__all__ = ["Tables", "accuracy_table", "aggregate", "flop_unit"]

#: The bench table's stage columns.
BENCH_STAGES = (*STAGES, OTHER)


@dataclass
class Tables:
    """What :func:`aggregate` built: the tables, the cells and bench runs they came from, the problems found,
    the header lines above every table, and (once written) the plots."""

    tables: list[Table]
    cells: list[Cell]
    bench_runs: list[BenchRun]
    problems: list[str]
    header: list[str]
    plots: list[Path] = field(default_factory=list)

    def get(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)


def _pct(value: Any) -> str:
    """A share as a percentage, e.g. ``10.2%``."""
    return fmt(100.0 * value, 1, "%") if is_number(value) else "—"


def _average_tasks(tasks: Sequence[str], average: Sequence[str] | None) -> list[str]:
    if average:
        return [t for t in average if t in tasks] or list(tasks)
    paper = [t for t in AVERAGE_TASKS if t in tasks]
    return paper if len(paper) == len(AVERAGE_TASKS) else list(tasks)


def accuracy_table(cells: Sequence[Cell], average: Sequence[str] | None = None) -> Table:
    """Accuracy per task and average, absolute and % of full tokens, per model, method and ratio."""
    by_key = {c.key: c for c in cells}
    models = list(dict.fromkeys(c.model for c in cells))
    data, display = [], []
    columns = ["Model", "Method", "Retention"]
    tasks_all = sorted({c.task for c in cells}, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else 99, t))
    avg_tasks = _average_tasks(tasks_all, average)
    avg_label = "Avg" if len(avg_tasks) == len(tasks_all) else f"Avg ({len(avg_tasks)} tasks)"
    columns += [task_label(t) for t in tasks_all] + [avg_label, "% of full"]
    notes = [
        "Accuracy in %, lmms-eval's own aggregation of each task (results.json); in brackets: % of the same "
        "model's full-token accuracy on that task.",
        f"{avg_label}: mean over {', '.join(task_label(t) for t in avg_tasks)}; % of full = {avg_label} / "
        f"{avg_label} of full tokens.",
        "A cell is shown only when complete (results, samples and efficiency log agree); otherwise its status.",
    ]
    for model in models:
        rows = sorted({(c.method, c.retention) for c in cells if c.model == model},
                      key=lambda mr: (METHOD_ORDER.index(mr[0]) if mr[0] in METHOD_ORDER else 9, mr[0],
                                      -(mr[1] or 1.0)))
        full = {t: by_key.get((model, t, "full", None)) for t in tasks_all}
        full_acc = {t: c.outcome.accuracy for t, c in full.items() if c and c.status == "complete" and c.outcome}
        full_avg = (sum(full_acc[t] for t in avg_tasks) / len(avg_tasks)
                    if all(t in full_acc for t in avg_tasks) else None)
        for method, retention in rows:
            label = next((c.method_label for c in cells if c.model == model and c.method == method), method)
            line = [model, label, ratio_label(method, retention)]
            values = {}
            for task in tasks_all:
                cell = by_key.get((model, task, method, retention))
                record = {
                    "model": model, "task": task, "method": method, "method_label": label,
                    "retention": retention, "status": cell.status if cell else "not run",
                    "reason": cell.reason if cell else "", "accuracy": None, "accuracy_from_samples": None,
                    "pct_of_full": None, "docs": None, "docs_expected": None, "docs_with_error": None,
                    "config_hash": None, "run": None,
                }
                if cell is not None and cell.outcome is not None:
                    outcome = cell.outcome
                    record.update(
                        docs=len(outcome.rows), docs_expected=outcome.docs_expected,
                        docs_with_error=sum(1 for r in outcome.rows if r.get("error")),
                        config_hash=cell.run.config_hash if cell.run else None,
                        run=display_path(cell.run.results_path) if cell.run and cell.run.results_path else None,
                    )
                if cell is not None and cell.status == "complete" and cell.outcome is not None:
                    acc = cell.outcome.accuracy
                    record["accuracy"] = acc
                    record["accuracy_from_samples"] = cell.outcome.accuracy_from_samples
                    if task in full_acc and full_acc[task] and acc is not None:
                        record["pct_of_full"] = 100.0 * acc / full_acc[task]
                    values[task] = acc
                    pct = record["pct_of_full"]
                    line.append(fmt(acc) + (f" ({pct:.1f}%)" if pct is not None and method != "full" else ""))
                else:
                    line.append(status_mark(cell))
                data.append(record)
            if all(t in values and values[t] is not None for t in avg_tasks):
                avg = sum(values[t] for t in avg_tasks) / len(avg_tasks)
                pct = 100.0 * avg / full_avg if full_avg else None
                line += [fmt(avg), fmt(pct)]
            else:
                avg = pct = None
                line += ["incomplete", "—"]
            data.append({"model": model, "task": "average", "method": method, "method_label": label,
                         "retention": retention, "status": "complete" if avg is not None else "incomplete",
                         "reason": "" if avg is not None else "a task of the average is not complete",
                         "accuracy": avg, "pct_of_full": pct, "average_over": ";".join(avg_tasks)})
            display.append(line)
    return Table("accuracy", "Accuracy (%) per task, and as % of full tokens", data, columns, display, notes,
                 align="lll" + "r" * (len(columns) - 3))


def efficiency_eval_table(cells: Sequence[Cell]) -> Table:
    """Per-document efficiency of the evaluated runs (the plugin's log), with speedup vs full."""
    columns = ["Model", "Task", "Method", "Retention", "Docs", "Visual tokens", "Reached", "After LLM cuts",
               "TTFT ms", "Speedup", "Encoder ms", "Compression ms", "Proj+pool ms", "LLM prefill ms",
               "In-LLM cut ms", "Other ms", "Peak mem GiB", "Decode tok/s"]
    data, display = [], []
    full_ttft = {}
    full_tokens = {}
    stats = {}
    for cell in cells:
        if cell.status == "complete" and cell.outcome is not None:
            stats[cell.key] = document_efficiency(cell.outcome.rows)
            if cell.method == "full":
                full_ttft[(cell.model, cell.task)] = stats[cell.key]["ttft_ms"]
                full_tokens[(cell.model, cell.task)] = stats[cell.key]["visual_tokens"]
    kinds = set()
    for cell in cells:
        label = ratio_label(cell.method, cell.retention)
        s = stats.get(cell.key)
        record = {"model": cell.model, "task": cell.task, "method": cell.method, "method_label": cell.method_label,
                  "retention": cell.retention, "status": cell.status}
        if s is None:
            data.append(record)
            display.append([cell.model, task_label(cell.task), cell.method_label, label, status_mark(cell)]
                           + [""] * (len(columns) - 5))
            continue
        base = full_ttft.get((cell.model, cell.task))
        speedup = base / s["ttft_ms"] if base and s["ttft_ms"] else None
        record.update(s)
        record["speedup_vs_full"] = speedup
        record["full_ttft_ms"] = base
        full_n = full_tokens.get((cell.model, cell.task))
        record["reached_retention"] = reached_retention(s["visual_tokens"], full_n)
        record["reached_retention_last_layer"] = reached_retention(s["visual_tokens_last_layer"], full_n)
        kinds.add(s["peak_memory_kind"])
        data.append(record)
        display.append([
            cell.model, task_label(cell.task), cell.method_label, label,
            f"{s['docs_timed']}" + (f" (+{s['docs_with_error']} err)" if s["docs_with_error"] else ""),
            fmt(s["visual_tokens"], 0), _pct(record["reached_retention"]),
            _pct(record["reached_retention_last_layer"]), fmt(s["ttft_ms"]), fmt(speedup, 2, "x"),
            fmt(s["vision_encoder_ms"]), fmt(s["compression_ms"]), fmt(s["projector_pooling_ms"]),
            fmt(s["llm_prefill_ms"]), fmt(s["inner_merge_ms"]), fmt(s["other_ms"]),
            fmt(s["peak_memory_gib"], 2), fmt(s["decode_tokens_per_s"]),
        ])
    notes = [
        "From the per-document efficiency log of each run (documents with a data error excluded): medians "
        "over documents of TTFT (preprocessed frames to first token) and of each stage; speedup = median TTFT "
        "of full tokens / median TTFT of the method, same task; visual tokens into the LLM (mean, newline "
        "included); reached = the share of the full-token video kept into the LLM, after LLM cuts = left in the "
        "LLM's last layer (FastV, HoliTom's inner stage, EarlyTom's stage 3; both newline excluded, against full "
        "tokens on the same task; the nominal ratio is the Retention column); peak memory = the highest document's "
        + (", ".join(sorted(k for k in kinds if k)) or "peak") + " (includes the weights; cpu_max_rss is the "
        "process high-water mark); decode tok/s = median over documents of (generated tokens - 1) / decode time.",
    ]
    return Table("efficiency_eval", "Efficiency on the evaluated documents (per-document log)", data, columns,
                 display, notes, align="llll" + "r" * (len(columns) - 4))


def _bench_rows(bench_runs: Sequence[BenchRun]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per (bench report, config) with our own ratios against the report's full-token config."""
    chosen: dict[tuple[str, str], BenchRun] = {}
    problems = []
    conflicts = set()
    for run in bench_runs:
        key = (run.model_name, run.settings)
        other = chosen.get(key)
        if other is None:
            chosen[key] = run
            continue
        mine = sorted(fingerprint(e.get("config")) or "" for e in run.report.get("configs", []))
        theirs = sorted(fingerprint(e.get("config")) or "" for e in other.report.get("configs", []))
        if mine != theirs:
            conflicts.add(key)
            problems.append(f"bench {run.model_name} / {run.settings}: reports {other.path} and {run.path} "
                            "measure different configs; not mixed, neither used")
        elif run.created > other.created:
            chosen[key] = run
    rows = []
    for key, run in chosen.items():
        if key in conflicts:
            continue
        if run.problems:
            problems.append(f"bench {run.path}: " + "; ".join(run.problems))
            continue
        spec = (run.cell or {}).get("spec") or {}
        names = {c.get("name"): c for c in spec.get("configs", [])}
        entries = run.report.get("configs", [])
        full = next((e for e in entries if (e.get("method") or (e.get("config") or {}).get("method")) == "full"),
                    None)
        hardware = run.report.get("hardware") or {}
        for entry in entries:
            meta = names.get(entry.get("name")) or {}
            method, retention = (meta.get("method"), meta.get("retention")) if meta else method_of(entry.get("config"))
            ttft = entry.get("ttft_ms") or {}
            stages = entry.get("stages_ms") or {}
            flops = entry.get("flops") or {}
            decode = (entry.get("decode") or {}).get("tokens_per_s") or {}
            row = {
                "model": run.model_name, "pretrained": run.pretrained, "settings": run.settings,
                "tasks": ";".join(spec.get("tasks", [])), "config": entry.get("name"), "method": method,
                "method_label": meta.get("method_label") or method_label(method), "retention": retention,
                "frames": run.frames, "visual_tokens": entry.get("visual_tokens"),
                "visual_tokens_last_layer": visual_tokens_after_cuts(entry.get("visual_tokens"),
                                                                     entry.get("llm_tokens_per_layer")),
                "frames_out": entry.get("frames_out"), "schedule": entry.get("schedule_compact"),
                "ttft_ms": ttft.get("median"), "ttft_min_ms": ttft.get("min"), "ttft_max_ms": ttft.get("max"),
                "timed_runs": entry.get("timed_runs"),
                "peak_memory_gib": entry["peak_memory_bytes"] / 2**30 if is_number(entry.get("peak_memory_bytes"))
                else None,
                "decode_tokens_per_s": decode.get("median"),
                "total_prefill_flops": entry.get("total_prefill_flops"),
                "device": hardware.get("device_name") or hardware.get("device"), "dtype": hardware.get("dtype"),
                "torch_threads": hardware.get("torch_threads"),
                "report": display_path(run.path), "created": run.created,
            }
            for stage in BENCH_STAGES:
                row[f"{stage}_ms"] = (stages.get(stage) or {}).get("median")
            for stage in FLOP_STAGES:
                row[f"flops_{stage}"] = flops.get(stage)
            if full is not None:
                row["reached_retention"] = reached_retention(row["visual_tokens"], full.get("visual_tokens"))
                row["reached_retention_last_layer"] = reached_retention(row["visual_tokens_last_layer"],
                                                                        full.get("visual_tokens"))
                base = (full.get("ttft_ms") or {}).get("median")
                row["speedup_vs_full"] = base / row["ttft_ms"] if is_number(base) and row["ttft_ms"] else None
                fdec = ((full.get("decode") or {}).get("tokens_per_s") or {}).get("median")
                row["decode_vs_full"] = (row["decode_tokens_per_s"] / fdec
                                         if is_number(fdec) and fdec and is_number(row["decode_tokens_per_s"])
                                         else None)
                ftot = full.get("total_prefill_flops")
                row["flops_pct_of_full"] = (100.0 * row["total_prefill_flops"] / ftot
                                            if is_number(ftot) and ftot and is_number(row["total_prefill_flops"])
                                            else None)
                for stage in PREFILL_FLOP_STAGES:
                    fval = (full.get("flops") or {}).get(stage)
                    val = row[f"flops_{stage}"]
                    row[f"flops_{stage}_pct_of_full"] = (100.0 * val / fval if is_number(fval) and fval
                                                         and is_number(val) else None)
            rows.append(row)
    rows.sort(key=lambda r: (r["model"], r["settings"],
                             METHOD_ORDER.index(r["method"]) if r["method"] in METHOD_ORDER else 9,
                             -(r["retention"] or 1.0)))
    return rows, problems


def bench_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    columns = ["Model", "Settings", "Method", "Retention", "Visual tokens", "Reached", "After LLM cuts",
               "Frames/layer", "TTFT ms [min-max]", "Speedup", "Encoder", "Compression", "Proj+pool", "LLM prefill",
               "In-LLM cut", "1st token", "Other", "Peak mem GiB", "Decode tok/s", "Decode vs full"]
    display = []
    for r in rows:
        display.append([
            r["model"], r["settings"], r["method_label"], ratio_label(r["method"], r["retention"]),
            fmt(r["visual_tokens"], 0), _pct(r.get("reached_retention")),
            _pct(r.get("reached_retention_last_layer")), str(r.get("schedule") or ""),
            f"{fmt(r['ttft_ms'])} [{fmt(r['ttft_min_ms'])}-{fmt(r['ttft_max_ms'])}]",
            fmt(r.get("speedup_vs_full"), 2, "x"),
            *[fmt(r.get(f"{s}_ms")) for s in BENCH_STAGES],
            fmt(r["peak_memory_gib"], 2), fmt(r["decode_tokens_per_s"]), fmt(r.get("decode_vs_full"), 2, "x"),
        ])
    devices = sorted({f"{r['device']} ({r['dtype']}" + (f", {r['torch_threads']} torch thread(s)"
                                                         if r.get("torch_threads") and "CPU" in str(r["device"])
                                                         else "") + ")" for r in rows if r.get("device")})
    notes = [
        "`earlytom-eval bench`: one clip, batch 1, all configs of a settings row in one run, interleaved; TTFT = "
        "preprocessed frames on the device to the first token; median [min-max] over the timed rounds, stage "
        "columns in ms (medians of the stage-timed runs); speedup = full tokens' median TTFT / the method's; "
        "peak memory includes the weights; decode tok/s = greedy tokens after the first, per second; reached / "
        "after LLM cuts = share of the full-token video into the LLM / left in its last layer (newline excluded).",
    ]
    if devices:
        notes.append("Measured on: " + "; ".join(devices) + ".")
    return Table("bench", "TTFT benchmark: stage breakdown, speedup, memory, decoding", list(rows), columns, display,
                 notes, align="llll" + "r" * (len(columns) - 4))


def flop_unit(rows: Sequence[Mapping[str, Any]]) -> tuple[float, str]:
    totals = [r["total_prefill_flops"] for r in rows if is_number(r.get("total_prefill_flops"))]
    return (1e12, "TFLOPs") if totals and max(totals) >= 1e12 else (1e9, "GFLOPs")


def flops_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    scale, unit = flop_unit(rows)
    columns = ["Model", "Settings", "Method", "Retention", f"Encoder {unit}", f"Compression {unit}",
               f"Proj+pool {unit}", f"LLM prefill {unit}", f"Prefill total {unit}", "% of full",
               "Encoder % of full", "LLM % of full"]
    display = []
    for r in rows:
        display.append([
            r["model"], r["settings"], r["method_label"], ratio_label(r["method"], r["retention"]),
            *[fmt(r.get(f"flops_{s}") / scale if is_number(r.get(f"flops_{s}")) else None, 3)
              for s in PREFILL_FLOP_STAGES],
            fmt(r["total_prefill_flops"] / scale if is_number(r.get("total_prefill_flops")) else None, 3),
            fmt(r.get("flops_pct_of_full"), 1, "%"), fmt(r.get("flops_vision_encoder_pct_of_full"), 1, "%"),
            fmt(r.get("flops_llm_prefill_pct_of_full"), 1, "%"),
        ])
    data = [{k: v for k, v in r.items() if k.startswith("flops") or k in
             ("model", "settings", "config", "method", "method_label", "retention", "total_prefill_flops",
              "visual_tokens", "schedule", "report")} for r in rows]
    notes = [
        "Real FLOPs (2 per multiply-add) of the matrix products that ran, per stage, from the token and frame "
        "counts of the benchmark run (`earlytom-eval flops` basis; LLM attention counted as a full square); "
        "% of full = the method's / full tokens' prefill FLOPs.",
    ]
    return Table("flops", "FLOPs per stage", data, columns, display, notes, align="llll" + "r" * (len(columns) - 4))


def cells_table(cells: Sequence[Cell], runs_dir: Path | None) -> Table:
    columns = ["Model", "Task", "Method", "Retention", "Status", "Docs", "Config", "Run", "Why"]
    data, display = [], []
    for cell in cells:
        outcome, run = cell.outcome, cell.run
        where = ""
        if run is not None:
            path = run.results_path or run.folder
            try:
                where = str(Path(path).resolve().relative_to(Path(runs_dir).resolve())) if runs_dir else str(path)
            except ValueError:
                where = str(path)
        docs = f"{len(outcome.rows)}/{outcome.docs_expected}" if outcome and outcome.docs_expected else ""
        data.append({"model": cell.model, "task": cell.task, "method": cell.method, "retention": cell.retention,
                     "status": cell.status, "docs": len(outcome.rows) if outcome else None,
                     "docs_expected": outcome.docs_expected if outcome else None,
                     "config_hash": run.config_hash if run else None, "run": where, "reason": cell.reason,
                     "notes": "; ".join(outcome.notes) if outcome else ""})
        display.append([cell.model, task_label(cell.task), cell.method_label,
                        ratio_label(cell.method, cell.retention), cell.status, docs,
                        (run.config_hash or "") if run else "", where, cell.reason])
    return Table("cells", "Cells", data, columns, display,
                 ["complete = results.json has the score, the samples cover lmms-eval's document count and the "
                  "efficiency log covers the same documents with one config."], align="lllllrlll")


def aggregate(
    runs_dir: str | Path,
    expected: Sequence[Mapping[str, Any]] = (),
    average: Sequence[str] | None = None,
    label: str | None = None,
) -> Tables:
    """Read every run and benchmark under ``runs_dir`` and build all tables (nothing written)."""
    runs_dir = Path(runs_dir)
    eval_runs = discover_eval_runs(runs_dir) if runs_dir.is_dir() else []
    bench_runs = discover_bench_runs(runs_dir) if runs_dir.is_dir() else []
    cells = resolve_cells(eval_runs, expected)
    problems = [f"{c.model} / {task_label(c.task)} / {c.method_label} {ratio_label(c.method, c.retention)}: "
                f"{c.status}: {c.reason}" for c in cells if c.status in ("conflict", "incomplete")]
    accuracy = accuracy_table(cells, average)
    bench_rows, bench_problems = _bench_rows(bench_runs)
    problems += bench_problems
    tables = [methods_table(accuracy, bench_rows), accuracy, efficiency_eval_table(cells)]
    if bench_rows:
        tables += [bench_table(bench_rows), flops_table(bench_rows)]
    tables += published_tables(cells, bench_rows, accuracy)
    tables.append(cells_table(cells, runs_dir))
    labels = [label] if label else list(dict.fromkeys(
        x for x in [r.label for r in eval_runs] + [b.label for b in bench_runs] if x))
    cpu = any(str(r.get("peak_memory_kind", "")).startswith("cpu") for c in cells if c.outcome for r in c.outcome.rows)
    cpu = cpu or any(str((b.report.get("hardware") or {}).get("device", "")).startswith("cpu") for b in bench_runs)
    header = [f"> **{text}**" for text in labels]
    if cpu:
        header.append("> Measured on CPU: timings show the pipeline's structure, not GPU latency.")
    header.append(f"Generated by `earlytom-eval tables` from `{display_path(runs_dir)}` on "
                  f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}: "
                  f"{sum(c.status == 'complete' for c in cells)} of {len(cells)} cells complete, "
                  f"{len(bench_runs)} benchmark report(s).")
    return Tables(tables=tables, cells=cells, bench_runs=bench_runs, problems=problems, header=header)
