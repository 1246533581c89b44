"""Serving: what the FastAPI bundle adds to the demo CNN's latency, and what dynamic batching buys under load.

The demo digits CNN (`bench demo`: baseline on onnxruntime, batch 1, 1 intra-op thread) measured in-process by the
engine's harness, then its bundle started and driven by `serve-bench` twice (closed loops, 1 and 16 in flight):
without batching and with `--max-batch 16 --max-delay-ms 2`. Targets (issue 16):
  overhead    served p50 at concurrency 1 minus the in-process p50 <= 1.5 ms
  batching    throughput at concurrency 16 with batching >= 2x without, p99 beside it
Prints a table and writes JSON (default benchmarks/results/serving.json).

    .venv/bin/python -m benchmarks.serving [--duration 10] [--max-batch 16] [--max-delay-ms 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import io
import os
from typing import Any

from benchmarks.common import command_line, data_folder, load_state, num, table, write_json

TARGET_OVERHEAD_MS = 1.5
TARGET_BATCHING_GAIN = 2.0


def demo_study(threads: int) -> tuple[int, dict[str, Any]]:
    """The demo's baseline cell on onnxruntime, batch 1, measured in-process; its study id and result row."""
    from engine.__main__ import main
    from engine.report.source import load_report

    out = io.StringIO()
    code = main(["bench", "demo", "--variants", "baseline", "--runtimes", "onnxruntime", "--batch-sizes", "1",
                 "--threads", str(threads), "--rounds", "0", "--iterations", "2000", "--min-seconds", "3"], out=out)
    if code != 0:
        raise SystemExit(f"bench demo failed:\n{out.getvalue()}")
    study = int(out.getvalue().split("study ")[-1].split(":")[0])
    row = next(r for r in load_report(study)["results"] if r["runtime"] == "onnxruntime")
    if row["status"] != "ok":
        raise SystemExit(f"the demo's onnxruntime cell ended {row['status']}: {row['error']}")
    return study, row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load level (default 10)")
    parser.add_argument("--concurrency", default="1,16", help="closed-loop levels (default 1,16)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="the runtime's intra-op threads (default 1)")
    parser.add_argument("--data-dir", help="keep the data folder here (default: a scratch folder, removed)")
    parser.add_argument("--out", help="JSON output (default benchmarks/results/serving.json)")
    args = parser.parse_args()
    from engine.deploy.serve_bench import ServeBenchConfig, serve_bench

    levels = tuple(int(c) for c in args.concurrency.split(","))
    load_before = load_state()
    with data_folder(args.data_dir):
        study, cell = demo_study(args.threads)
        runs = {}
        for name, max_batch, delay in (("unbatched", None, None), ("batched", args.max_batch, args.max_delay_ms)):
            config = ServeBenchConfig(study, cell=cell["cell"], concurrency=levels, duration_s=args.duration,
                                      max_batch=max_batch, max_delay_ms=delay)
            runs[name] = serve_bench(config)
    load_after = load_state()

    def level(run: str, concurrency: int) -> dict[str, Any]:
        return next(lv for lv in runs[run]["levels"] if lv["concurrency"] == concurrency)

    in_process_p50 = cell["latency_ms"]["p50"]
    served_p50 = level("unbatched", 1)["latency_ms"]["p50"]
    overhead = served_p50 - in_process_p50 if served_p50 is not None else None
    top = max(levels)
    plain, batched = level("unbatched", top), level("batched", top)
    gain = batched["throughput_rps"] / plain["throughput_rps"] if plain["throughput_rps"] else None
    verdicts = [
        {"check": "overhead: served p50 - in-process p50 at c=1", "value": overhead, "unit": "ms",
         "target": f"<= {TARGET_OVERHEAD_MS}", "ok": overhead is not None and overhead <= TARGET_OVERHEAD_MS},
        {"check": f"batching: throughput at c={top}, batched / unbatched", "value": gain, "unit": "x",
         "target": f">= {TARGET_BATCHING_GAIN}", "ok": gain is not None and gain >= TARGET_BATCHING_GAIN},
    ]
    rows = []
    for run in ("unbatched", "batched"):
        for lv in runs[run]["levels"]:
            lat = lv["latency_ms"]
            rows.append([run, f"c={lv['concurrency']}", lv["requests"], lv["errors"], num(lv["throughput_rps"], ".1f"),
                         num(lat["p50"], ".3f"), num(lat["p99"], ".3f"), num(lv["mean_batch"], ".2f"),
                         num(lv.get("client_cpu_ms"), ".3f"), "yes" if lv["stable"] else "no"])
    print(f"demo CNN, baseline on onnxruntime, batch 1, {args.threads} thread(s): in-process p50 "
          f"{in_process_p50:.3f} ms (the engine's harness)")
    print(table(["server", "level", "requests", "errors", "req/s", "p50 ms", "p99 ms", "mean batch",
                 "client cpu ms/req", "stable"], rows))
    print()
    print(table(["check", "value", "target", "verdict"],
                [[v["check"], num(v["value"], ".3f", " " + v["unit"]), v["target"], "ok" if v["ok"] else "MISSED"]
                 for v in verdicts]))
    print(f"before: {load_before}; after: {load_after}")
    from engine.measure.environment import collect

    path = write_json({"benchmark": "serving", "command": command_line(), "in_process_p50_ms": in_process_p50,
                       "cell": {k: cell[k] for k in ("cell", "variant", "runtime", "batch_size", "latency_ms")},
                       "runs": runs, "verdicts": verdicts,
                       "settings": {"duration_s": args.duration, "concurrency": list(levels),
                                    "max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms,
                                    "threads": args.threads},
                       "machine_load": {"before": load_before, "after": load_after, "cores": os.cpu_count()},
                       "environment": collect(args.threads)}, args.out, "serving")
    print(f"written {path}")


if __name__ == "__main__":
    main()
