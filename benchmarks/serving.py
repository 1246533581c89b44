"""Serving: what the FastAPI bundle adds to the demo CNN's latency, and what dynamic batching buys under load.

The demo digits CNN (`bench demo`: baseline on onnxruntime, batch 1, 1 intra-op thread) measured in-process by the
engine's harness, then its bundle started and driven by `serve-bench` twice (closed loops, 1 and 16 in flight):
without batching and with `--max-batch 16 --max-delay-ms 2`. Targets (issue 16):
  overhead    served p50 at concurrency 1 minus the in-process p50 <= 1.5 ms
  batching    throughput at concurrency 16 with batching >= 2x without, p99 beside it
The same two runs on `mlp` (64-2048-2048-10 in ONNX, ~16 MB of weights, 1 thread: the runtime call dominates a
request) show what batching buys when the model, not HTTP, is the cost; it is not held to the targets.
Prints a table and writes JSON (default benchmarks/results/serving.json).

    .venv/bin/python -m benchmarks.serving [--models demo,mlp] [--duration 10] [--max-batch 16] [--max-delay-ms 2]
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path
from typing import Any

from benchmarks.common import command_line, data_folder, load_state, num, table, write_json

TARGET_OVERHEAD_MS = 1.5
TARGET_BATCHING_GAIN = 2.0


def _bench(model: str, threads: int) -> tuple[int, dict[str, Any]]:
    """`python -m engine bench MODEL`: baseline on onnxruntime, batch 1, measured in-process; study id and row."""
    from engine.__main__ import main
    from engine.report.source import load_report

    out = io.StringIO()
    code = main(["bench", model, "--variants", "baseline", "--runtimes", "onnxruntime", "--batch-sizes", "1",
                 "--threads", str(threads), "--rounds", "0", "--iterations", "500", "--min-seconds", "3"], out=out)
    if code != 0:
        raise SystemExit(f"bench {model} failed:\n{out.getvalue()}")
    study = int(out.getvalue().split("study ")[-1].split(":")[0])
    row = next(r for r in load_report(study)["results"] if r["runtime"] == "onnxruntime")
    if row["status"] != "ok":
        raise SystemExit(f"the onnxruntime cell of {model} ended {row['status']}: {row['error']}")
    return study, row


def mlp_onnx(folder: Path) -> Path:
    """A 64-2048-2048-10 MLP (seeded) in ONNX with a dynamic batch: memory-bound at batch 1 on one thread."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048),
                                torch.nn.ReLU(), torch.nn.Linear(2048, 10)).eval()
    path = folder / "mlp2048.onnx"
    torch.onnx.export(model, (torch.randn(2, 64),), str(path), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,mlp", help="demo (held to the targets) and mlp (default both)")
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
    models = args.models.split(",")
    if not set(models) <= {"demo", "mlp"} or "demo" not in models:
        parser.error("--models takes demo, or demo,mlp")
    load_before = load_state()
    results: dict[str, Any] = {}
    with data_folder(args.data_dir) as folder:
        for model in models:
            study, cell = _bench("demo" if model == "demo" else str(mlp_onnx(folder)), args.threads)
            runs = {}
            for name, max_batch, delay in (("unbatched", None, None), ("batched", args.max_batch, args.max_delay_ms)):
                config = ServeBenchConfig(study, cell=cell["cell"], concurrency=levels, duration_s=args.duration,
                                          max_batch=max_batch, max_delay_ms=delay)
                runs[name] = serve_bench(config)
            results[model] = {"cell": {k: cell[k] for k in ("cell", "variant", "runtime", "batch_size", "latency_ms")},
                              "in_process_p50_ms": cell["latency_ms"]["p50"], "runs": runs}
    load_after = load_state()

    def level(model: str, run: str, concurrency: int) -> dict[str, Any]:
        return next(lv for lv in results[model]["runs"][run]["levels"] if lv["concurrency"] == concurrency)

    top = max(levels)
    for model, got in results.items():
        served_p50 = level(model, "unbatched", min(levels))["latency_ms"]["p50"]
        plain, batched = level(model, "unbatched", top), level(model, "batched", top)
        got["overhead_ms"] = served_p50 - got["in_process_p50_ms"] if served_p50 is not None else None
        got["batching_gain"] = (batched["throughput_rps"] / plain["throughput_rps"] if plain["throughput_rps"]
                                else None)
    demo = results["demo"]
    verdicts = [
        {"check": f"demo overhead: served p50 - in-process p50 at c={min(levels)}", "value": demo["overhead_ms"],
         "unit": "ms", "target": f"<= {TARGET_OVERHEAD_MS}",
         "ok": demo["overhead_ms"] is not None and demo["overhead_ms"] <= TARGET_OVERHEAD_MS},
        {"check": f"demo batching: throughput at c={top}, batched / unbatched", "value": demo["batching_gain"],
         "unit": "x", "target": f">= {TARGET_BATCHING_GAIN}",
         "ok": demo["batching_gain"] is not None and demo["batching_gain"] >= TARGET_BATCHING_GAIN},
    ]
    rows = []
    for model, got in results.items():
        for run in ("unbatched", "batched"):
            for lv in got["runs"][run]["levels"]:
                lat = lv["latency_ms"]
                rows.append([model, run, f"c={lv['concurrency']}", lv["requests"], lv["errors"],
                             num(lv["throughput_rps"], ".1f"), num(lat["p50"], ".3f"), num(lat["p99"], ".3f"),
                             num(lv["mean_batch"], ".2f"), num(lv.get("client_cpu_ms"), ".3f"),
                             "yes" if lv["stable"] else "no"])
    for model, got in results.items():
        print(f"{model}: baseline on onnxruntime, batch 1, {args.threads} thread(s): in-process p50 "
              f"{got['in_process_p50_ms']:.3f} ms (the engine's harness); served - in-process at c={min(levels)}: "
              f"{num(got['overhead_ms'], '.3f')} ms; batched / unbatched throughput at c={top}: "
              f"{num(got['batching_gain'], '.2f')}x")
    print(table(["model", "server", "level", "requests", "errors", "req/s", "p50 ms", "p99 ms", "mean batch",
                 "client cpu ms/req", "stable"], rows))
    print()
    print(table(["check", "value", "target", "verdict"],
                [[v["check"], num(v["value"], ".3f", " " + v["unit"]), v["target"], "ok" if v["ok"] else "MISSED"]
                 for v in verdicts]))
    print(f"before: {load_before}; after: {load_after}")
    from engine.measure.environment import collect

    path = write_json({"benchmark": "serving", "command": command_line(), "models": results, "verdicts": verdicts,
                       "settings": {"duration_s": args.duration, "concurrency": list(levels),
                                    "max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms,
                                    "threads": args.threads},
                       "machine_load": {"before": load_before, "after": load_after, "cores": os.cpu_count()},
                       "environment": collect(args.threads)}, args.out, "serving")
    print(f"written {path}")


if __name__ == "__main__":
    main()
