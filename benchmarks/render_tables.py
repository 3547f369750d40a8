"""Markdown tables of the committed efficiency JSON (the README's tables are these, pasted).

    PYTHONPATH=. .venv/bin/python benchmarks/render_tables.py results/bench/flops_7b_32f_methods.json
    PYTHONPATH=. .venv/bin/python benchmarks/render_tables.py results/bench/cpu_methods_0.5b_8f.json --out X.md

The kind of report is read from its ``tool`` field: ``earlytom-eval flops``, ``earlytom-eval bench``,
``earlytom-eval throughput``. Nothing is measured here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from earlytom_eval.efficiency.schedules import run_length
from earlytom_eval.efficiency.throughput import format_throughput_table


def _tf(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e12:.3f}"


def flops_table(report: dict[str, Any]) -> str:
    head = ("| config | method | counts | frames/layer | visual tokens | LLM tokens/layer | encoder | compression "
            "| proj+pool | LLM prefill | prefill total | % of full | decode step (GFLOPs) |")
    lines = [head, "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for entry in report["configs"]:
        flops = entry["flops"]
        per_layer = entry["flops_detail"].get("llm_tokens_per_layer", [])
        share = entry.get("vs_full", {}).get("total_prefill_flops")
        lines.append(
            f"| {entry['name']} | {entry['method']} | {entry['counts']} | {entry['schedule_compact']} | "
            f"{entry['visual_tokens']} | {run_length(per_layer)} | {_tf(flops['vision_encoder'])} | "
            f"{_tf(flops['compression'])} | {_tf(flops['projector_pooling'])} | {_tf(flops['llm_prefill'])} | "
            f"{_tf(entry['total_prefill_flops'])} | {'-' if share is None else f'{share:.1%}'} | "
            f"{flops['decode_step'] / 1e9:.2f} |"
        )
    return "\n".join(lines)


def bench_table(report: dict[str, Any]) -> str:
    head = ("| config | visual tokens | frames/layer | LLM tokens/layer | TTFT ms median [min-max] | speedup | "
            "encoder ms | compression ms | LLM prefill ms | LLM cuts ms | ours / TTFT | peak memory GiB | "
            "prefill TFLOPs | FLOPs % of full |")
    lines = [head, "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    full = next((e for e in report["configs"] if e["method"] == "full"), None)
    for entry in report["configs"]:
        ttft = entry["ttft_ms"]
        stages = entry["stages_ms"]

        def stage(name: str, stages: dict[str, Any] = stages) -> str:
            return f"{stages[name]['median']:.0f}" if name in stages else "-"

        speedup = full["ttft_ms"]["median"] / ttft["median"] if full else None
        share = entry.get("vs_full", {}).get("total_prefill_flops")
        lines.append(
            f"| {entry['name']} | {entry['visual_tokens']} | {entry['schedule_compact']} | "
            f"{run_length(entry['llm_tokens_per_layer'])} | {ttft['median']:.0f} "
            f"[{ttft['min']:.0f}-{ttft['max']:.0f}] | {'-' if speedup is None else f'{speedup:.2f}x'} | "
            f"{stage('vision_encoder')} | {stage('compression')} | {stage('llm_prefill')} | {stage('inner_merge')} | "
            f"{entry['compression_share_of_ttft']:.2%} | {entry['peak_memory_bytes'] / 2**30:.2f} | "
            f"{_tf(entry['total_prefill_flops'])} | {'-' if share is None else f'{share:.1%}'} |"
        )
    return "\n".join(lines)


RENDERERS = {
    "earlytom-eval flops": flops_table,
    "earlytom-eval bench": bench_table,
    "earlytom-eval throughput": format_throughput_table,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a committed JSON report")
    parser.add_argument("--out", type=Path, default=None, help="write the table here (default: print it)")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    renderer = RENDERERS.get(report.get("tool", ""))
    if renderer is None:
        print(f"error: {args.report} is not a report of {', '.join(RENDERERS)}", file=sys.stderr)
        return 2
    table = renderer(report) + "\n"
    if args.out:
        args.out.write_text(table)
    else:
        print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
