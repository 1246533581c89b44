"""Per-job overhead of the queue and the worker: claim, spawn, imports, result writes.

Two cases, median of 20 jobs each, in a fresh data folder:
  minimal    claim a job, run a child that only reads a one-sample .npz, record its end (target <= 1.5 s)
  1 ms cell  a real cell (an MLP of ~1 ms on ONNX Runtime) run by the worker; overhead is the job's wall
             time beyond its measuring time (warm-up + timed iterations) (target <= 3 s)
Prints a table and writes JSON (default benchmarks/results/queue_overhead.json).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import table, write_json


def _mlp_onnx(folder: Path) -> Path:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
                                torch.nn.ReLU(), torch.nn.Linear(1024, 10)).eval()
    path = folder / "mlp.onnx"
    torch.onnx.export(model, (torch.randn(2, 512),), str(path), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    return path


def noop_jobs(n: int) -> list[float]:
    import numpy as np

    from engine.executors.local import run_child
    from engine.inspection import check_data_task
    from engine.specs import InputSpec
    from storage.paths import sub_dir
    from storage import queue
    from storage.db import session
    from tests.storage.helpers import make_study

    make_study(n)
    # the cheapest real task: read a one-sample .npz against a one-input spec (no test task in product code)
    spec = InputSpec.parse("x:float32[B,4]")
    data = sub_dir("bench") / "one.npz"
    np.savez(data, x=np.zeros((1, 4), dtype=np.float32))
    walls = []
    for i in range(n):
        start = time.perf_counter()
        with session() as s:
            job = queue.claim_job(s, "bench", lease_s=60)
            assert job is not None
            job_id = job.id
        outcome = run_child(check_data_task, {"path": str(data), "spec": spec.to_json()}, 60,
                            sub_dir("logs") / f"noop-{i}.log")
        with session() as s:
            queue.finish_job(s, job_id, "bench", outcome.status, result={"notes": [], "settings": {}})
        walls.append(time.perf_counter() - start)
    return walls


def cell_jobs(n: int, model: Path, min_seconds: float, iterations: int) -> tuple[list[float], float]:
    from engine.artifacts import intake
    from engine.measure.latency import MeasureSettings
    from engine.optimizations import parse_chain
    from engine.plan import StudySettings
    from engine.study import run_study, submit_study
    from engine.report import source
    from storage import results as stored
    from storage.db import session

    artifact = intake(model)
    settings = StudySettings(measure=MeasureSettings(warmup=10, iterations=iterations, min_seconds=min_seconds),
                             threads=2, timeout_s=120)
    # one batch size per cell, so every cell is a separate job of the same model
    study_id, _ = submit_study(artifact, [parse_chain("baseline")], ["onnxruntime"], list(range(1, n + 1)),
                               settings)
    start = time.perf_counter()
    run_study(study_id)
    total = time.perf_counter() - start
    with session(write=False) as s:
        rows = source.study_results(s, study_id)
        samples = stored.study_samples(s, study_id)
    overheads = []
    for row in rows:
        if not row.ok or row.cell is None or row.latency_ms is None or row.wall_s is None:
            raise SystemExit(f"cell {row.cell} ended {row.status}: {row.error}")
        measured_s = (samples[row.cell].sum() + settings.measure.warmup * (row.latency_ms.p50 or 0.0)) / 1000
        overheads.append(row.wall_s - measured_s)
    return overheads, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--out", help="JSON output (default benchmarks/results/queue_overhead.json)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="paretoscope-bench-") as tmp:
        os.environ["PARETOSCOPE_DATA_DIR"] = str(Path(tmp) / "data")
        model = _mlp_onnx(Path(tmp))
        noop = noop_jobs(args.jobs)
        cells, total = cell_jobs(args.jobs, model, args.min_seconds, 50)
    extra = {"jobs": args.jobs, "cell_study_wall_s": total}
    rows: list[dict[str, Any]] = [
        {"case": "minimal job (1-sample .npz)", "median_s": statistics.median(noop), "max_s": max(noop),
         "target_s": 1.5},
        {"case": "1 ms model cell (beyond measuring)", "median_s": statistics.median(cells), "max_s": max(cells),
         "target_s": 3.0},
    ]
    print(table(["case", "median s", "max s", "target s", "verdict"],
                [[r["case"], f"{r['median_s']:.3f}", f"{r['max_s']:.3f}", f"{r['target_s']:.2f}",
                  "ok" if r["median_s"] <= r["target_s"] else "MISSED"] for r in rows]))
    from engine.measure.environment import collect

    path = write_json({"benchmark": "queue_overhead", "rows": rows, "environment": collect(2), **extra},
                      args.out, "queue_overhead")
    print(f"written {path}")


if __name__ == "__main__":
    main()
