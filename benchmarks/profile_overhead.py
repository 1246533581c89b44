"""What the per-op profile adds to a cell's wall time: the profiled run after the timing (a second session for
ONNX Runtime and OpenVINO, torch.profiler on the loaded module), against the cell's whole run without it; and,
beside it, what the per-layer errors against fp32 add (the reference built or read from the cache, both models run
on 8 samples with their layers' outputs compared a slice at a time).

The bundled demo CNN (baseline, int8-static, fp16 on torch, ONNX Runtime and OpenVINO, batch 1 and 32) with the
dashboard's default measuring settings (min 50 iterations, 2 s) and rounds off, so the profile is compared with
the least the cell does. Target: at most 20% per cell. Prints a table and writes JSON
(default benchmarks/results/profile_overhead.json). Run on an idle machine: `python -m benchmarks.profile_overhead`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from benchmarks.common import command_line, data_folder, run_study, table, write_json

TARGET_PCT = 20.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--keep", help="a data folder to reuse (built variants are cached there)")
    parser.add_argument("--out", help="where to write the JSON")
    args = parser.parse_args()
    with data_folder(args.keep) as folder:
        out = folder / "profile-overhead.json"
        command = [sys.executable, "-m", "engine", "bench", "demo", "--variants", "baseline,int8-static,fp16",
                   "--runtimes", "torch,onnxruntime,openvino", "--batch-sizes", "1,32", "--rounds", "0",
                   "--min-seconds", str(args.min_seconds), "--json", str(out)]
        report = run_study(command, folder, out)
    if report is None:
        return 1
    rows: list[dict[str, Any]] = []
    for r in report["results"]:
        diagnostics = r.get("diagnostics") or {}
        if r["status"] != "ok" or not r.get("wall_s"):
            continue
        profile_ms = float(diagnostics.get("profile_overhead_ms") or 0.0)
        layers_ms = float((diagnostics.get("layer_compare") or {}).get("ms") or 0.0)
        without_ms = r["wall_s"] * 1e3 - profile_ms - layers_ms
        rows.append({"variant": r["variant"], "runtime": r["runtime"], "batch_size": r["batch_size"],
                     "wall_ms_without_diagnostics": without_ms, "profile_ms": profile_ms,
                     "overhead_pct": 100.0 * profile_ms / without_ms, "profile_runs": diagnostics.get("profile_runs"),
                     "profiled": bool(diagnostics.get("top_ops")), "profile_error": diagnostics.get("profile_error"),
                     "layer_errors_ms": layers_ms, "layer_errors_pct": 100.0 * layers_ms / without_ms,
                     "layers_compared": (diagnostics.get("layer_compare") or {}).get("compared"),
                     "layer_errors_error": diagnostics.get("layer_errors_error")})
    print(table(["variant", "runtime", "batch", "cell ms", "profile ms", "overhead", "runs", "verdict", "layers ms",
                 "layers"],
                [[r["variant"], r["runtime"], r["batch_size"], f"{r['wall_ms_without_diagnostics']:.0f}",
                  f"{r['profile_ms']:.0f}", f"{r['overhead_pct']:.1f}%", r["profile_runs"],
                  "ok" if r["overhead_pct"] <= TARGET_PCT and r["profiled"] else "MISSED",
                  f"{r['layer_errors_ms']:.0f}", f"{r['layer_errors_pct']:.1f}%"] for r in rows]))
    worst = max((r["overhead_pct"] for r in rows), default=0.0)
    print(f"worst overhead {worst:.1f}% (target <= {TARGET_PCT:.0f}%); {sum(r['profiled'] for r in rows)} of "
          f"{len(rows)} cells profiled")
    path = write_json({"command": command_line(), "target_pct": TARGET_PCT, "worst_pct": worst, "cells": rows,
                       "environment": report.get("environment")}, args.out, "profile_overhead")
    print(f"written {path}")
    return 0 if worst <= TARGET_PCT else 1


if __name__ == "__main__":
    sys.exit(main())
