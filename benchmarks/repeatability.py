"""Repeatability: the same study of the pretrained encoder run N times; does each cell's speedup come back?

The study is speedups.py's (the pretrained all-MiniLM-L6-v2, English text, batch 1, seq 128, 2 threads, each
cell in its own child process through `python -m engine bench`) with fewer variants: baseline, int8-dynamic and
int8-static on torch, onnxruntime and openvino. The N runs share one data folder, so variants are built once and
every run measures the same files: what varies is the measurement. For each cell the N speedups over torch eager
fp32 are compared. Target (issue 13), per cell and overall: the largest speedup at most 1.10× the smallest, and
the runs' 95% intervals overlap (from the engine's `speedup_ci95`; an engine that reports none is judged on the
medians alone, and the output says so).

    .venv/bin/python -m benchmarks.repeatability [--runs 3] [--threads 2] [--variants ...] [--out PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PRETRAINED_NAME,
    REFERENCE,
    SEQ_LEN,
    add_study_options,
    check_reference,
    command_line,
    data_folder,
    format_speedup,
    has_intervals,
    int8_isa,
    load_state,
    num,
    pretrained_bench_command,
    pretrained_config,
    pretrained_record,
    pretrained_study_files,
    reference_row,
    run_study,
    shown_command,
    speedup_of,
    table,
    write_json,
)

TARGET_SPREAD = 1.10  # max/min of a cell's speedups over the runs
VARIANTS = ("baseline", "int8-dynamic", "int8-static")
RUNTIMES = ("torch", "onnxruntime", "openvino")
# statuses that say a cell cannot run here (the same in every run), not that it broke
NOT_RUN = ("n/a", "unavailable")


def overlap(intervals: Sequence[Sequence[float] | None]) -> bool | None:
    """Whether all the intervals share a point (in one dimension, the same as every pair overlapping);
    None when any is missing."""
    if not intervals or any(i is None for i in intervals):
        return None
    return max(i[0] for i in intervals if i) <= min(i[1] for i in intervals if i)


def compare_cell(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One cell over the runs (each: status, speedup, ci95, p50_ms): spread, overlap and the verdict."""
    statuses = [r["status"] for r in runs]
    speedups = [r["speedup"] for r in runs]
    p50s = [r["p50_ms"] for r in runs]
    out: dict[str, Any] = {"spread": None, "p50_spread": None, "overlap": None, "passed": None}
    if all(s in NOT_RUN for s in statuses):
        return {**out, "verdict": statuses[0]}
    if any(s is None for s in speedups):
        failed = [i + 1 for i, s in enumerate(speedups) if s is None]
        return {**out, "passed": False, "verdict": "FAIL",
                "why": f"no speedup in run {', '.join(map(str, failed))} ({', '.join(sorted(set(statuses)))})"}
    spread = max(speedups) / min(speedups)
    together = overlap([r["ci95"] for r in runs])
    passed = spread <= TARGET_SPREAD and together is not False
    why = [] if spread <= TARGET_SPREAD else [f"speedups differ by {spread:.3f}× > {TARGET_SPREAD:.2f}×"]
    if together is False:
        why.append("intervals do not overlap")
    return {"spread": spread, "p50_spread": max(p50s) / min(p50s), "overlap": together, "passed": passed,
            "verdict": "PASS" if passed else "FAIL", "why": "; ".join(why) or None}


def summarize(studies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per cell of the first study, in its order: each run's speedup (with interval, method, rounds) and p50,
    and compare_cell's verdict. The reference cell is shown and not judged (its speedup is 1 by definition)."""
    per_run = []
    for results in studies:
        rows = results["results"]
        reference = reference_row(rows)
        per_run.append({(r["variant"], r["runtime"], r["batch_size"]): {
            "status": r["status"], "p50_ms": r["latency_ms"]["p50"] if r["status"] == "ok" else None,
            **speedup_of(r, reference)} for r in rows})
    cells = []
    for key in per_run[0]:
        runs = [run.get(key) or {"status": "missing", "p50_ms": None, "speedup": None, "ci95": None,
                                 "method": None, "rounds": None} for run in per_run]
        is_reference = key[:2] == REFERENCE
        verdict = ({"spread": None, "overlap": None, "passed": None, "verdict": "reference",
                    "p50_spread": _p50_spread(runs)} if is_reference else compare_cell(runs))
        cells.append({"variant": key[0], "runtime": key[1], "batch_size": key[2], "runs": runs, **verdict})
    judged = [c for c in cells if c["passed"] is not None]
    return {
        "cells": cells,
        "all_pass": bool(judged) and all(c["passed"] for c in judged),
        "intervals": all(has_intervals(s["results"]) for s in studies),
    }


def _p50_spread(runs: Sequence[dict[str, Any]]) -> float | None:
    p50s = [r["p50_ms"] for r in runs]
    return max(p50s) / min(p50s) if all(p is not None for p in p50s) else None


def print_summary(summary: dict[str, Any], n: int, threads: int, loads: list[dict[str, str]]) -> None:
    def run_text(run: dict[str, Any]) -> str:
        return format_speedup(run["speedup"], run["ci95"]) if run["speedup"] is not None else run["status"]

    print(table(
        ["variant", "runtime", *[f"run {i + 1}" for i in range(n)], "max/min", "overlap", "p50 max/min", "verdict"],
        [[c["variant"], c["runtime"], *[run_text(r) for r in c["runs"]], num(c["spread"], ".3f"),
          {True: "yes", False: "NO", None: "-"}[c["overlap"]], num(c["p50_spread"], ".3f"),
          c["verdict"] + (f" ({c['why']})" if c.get("why") else "")]
         for c in summary["cells"]],
    ))
    print(f"\n{PRETRAINED_NAME}, batch 1, seq {SEQ_LEN}, {threads} threads; speedups over torch eager fp32 "
          f"(baseline on torch), {n} runs of one study")
    if not summary["intervals"]:
        print("speedup intervals: none (this engine's rows carry no speedup_ci95): the verdicts check "
              f"max/min <= {TARGET_SPREAD:.2f} only, not that intervals overlap")
    for i, load in enumerate(loads):
        print(f"run {i + 1}: {load['before']} before, {load['after']} after")
    judged = sum(1 for c in summary["cells"] if c["passed"] is not None)
    passed = sum(1 for c in summary["cells"] if c["passed"])
    unchecked = "" if summary["intervals"] else " (intervals unchecked)"
    print(f"{'PASS' if summary['all_pass'] else 'FAIL'}: {passed} of {judged} cells repeat within "
          f"{TARGET_SPREAD:.2f}× with overlapping intervals{unchecked}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_options(parser, VARIANTS, RUNTIMES)
    parser.add_argument("--runs", type=int, default=3, help="how many times to run the study (default 3)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/repeatability.json)")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2: repeatability compares runs")
    check_reference(parser, args.variants, args.runtimes)

    config = pretrained_config()
    if config is None:
        return 1
    started = time.monotonic()
    isa = int8_isa()
    studies, loads = [], []
    with data_folder(args.data_dir) as folder, tempfile.TemporaryDirectory(prefix="repeatability-") as scratch:
        model, data = pretrained_study_files(Path(scratch))
        for i in range(args.runs):
            json_out = Path(scratch) / f"study-{i}.json"
            command = pretrained_bench_command(model, data, args, args.variants,
                                              f"benchmarks/repeatability/{i + 1}", json_out)
            print(f"run {i + 1} of {args.runs}", flush=True)
            before = load_state()
            results = run_study(command, folder, json_out)
            if results is None:
                return 1
            studies.append(results)
            loads.append({"before": before, "after": load_state()})

    summary = summarize(studies)
    print()
    print_summary(summary, args.runs, args.threads, loads)
    payload = {
        "benchmark": "repeatability",
        **pretrained_record(config),
        "cpu_int8": isa,
        "target": {"max_over_min": TARGET_SPREAD, "intervals_overlap": True,
                   "reference": f"{REFERENCE[0]} on {REFERENCE[1]} (PyTorch eager fp32)"},
        "settings": {"runs": args.runs, "threads": args.threads, "variants": args.variants,
                     "runtimes": args.runtimes, "iterations": args.iterations, "min_seconds": args.min_seconds,
                     "warmup": args.warmup},
        **summary,
        "machine_load": loads,
        "command": command_line(),
        "bench_command": shown_command(command),
        "wall_s": time.monotonic() - started,
        "studies": [{"study": s["study"], "environment": s["environment"], "results": s["results"]}
                    for s in studies],
    }
    path = write_json(payload, args.out, "repeatability")
    print(f"results JSON written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
