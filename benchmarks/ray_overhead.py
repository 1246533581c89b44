"""Per-cell dispatch overhead through Ray against the local queue, on this machine.

The same study (an MLP of ~1 ms on ONNX Runtime, one cell per batch size) runs twice in fresh data folders: by the
local worker (claim, child, record) and by the Ray dispatcher on a local Ray instance (`worker --ray local`: claim,
object store, a Ray task on the one node, its child, record). A cell's overhead is the study's wall time beyond the
time its cells spent in their children, per cell; the reference outputs (computed by both before the first cell)
count in both. Ray's own start is reported apart. Target: at most 1 s more per cell through Ray.
Prints a table and writes JSON (default benchmarks/results/ray_overhead.json).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import command_line, data_folder, load_state, table, write_json
from benchmarks.queue_overhead import _mlp_onnx

TARGET_EXTRA_S = 1.0


def _study(model: Path, cells: int, min_seconds: float) -> int:
    from engine.artifacts import intake
    from engine.measure.latency import MeasureSettings
    from engine.optimizations import parse_chain
    from engine.plan import StudySettings
    from engine.study import submit_study

    settings = StudySettings(measure=MeasureSettings(warmup=10, iterations=50, min_seconds=min_seconds, rounds=0),
                             threads=2, timeout_s=300)
    study_id, _ = submit_study(intake(model), [parse_chain("baseline")], ["onnxruntime"], list(range(1, cells + 1)),
                               settings)
    return study_id


def _overhead(study_id: int, wall_s: float) -> dict[str, Any]:
    from engine.report import source
    from storage.db import session

    with session(write=False) as s:
        rows = source.study_results(s, study_id)
    bad = [f"cell {r.cell}: {r.status} {r.error}" for r in rows if not r.ok or r.wall_s is None]
    if bad:
        raise SystemExit("; ".join(bad))
    in_children = sum(r.wall_s or 0.0 for r in rows)
    return {"cells": len(rows), "study_wall_s": wall_s, "in_children_s": in_children,
            "per_cell_s": (wall_s - in_children) / len(rows)}


def run_local(model: Path, cells: int, min_seconds: float) -> dict[str, Any]:
    from engine.study import run_study

    study_id = _study(model, cells, min_seconds)
    start = time.perf_counter()
    run_study(study_id)
    return _overhead(study_id, time.perf_counter() - start)


def run_ray(model: Path, cells: int, min_seconds: float) -> dict[str, Any]:
    import logging

    import ray

    from engine.executors.ray_node import node_resources
    from engine.ray_dispatch import RayDispatcher

    study_id = _study(model, cells, min_seconds)
    start = time.perf_counter()
    ray.init(resources=node_resources(), include_dashboard=False, logging_level=logging.WARNING)
    started_s = time.perf_counter() - start
    try:
        start = time.perf_counter()
        RayDispatcher("local", study_id=study_id).run(until_idle=True)
        wall_s = time.perf_counter() - start
    finally:
        ray.shutdown()
    return {**_overhead(study_id, wall_s), "ray_start_s": started_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--min-seconds", type=float, default=0.5)
    parser.add_argument("--out", help="JSON output (default benchmarks/results/ray_overhead.json)")
    args = parser.parse_args()
    load_before = load_state()
    with tempfile.TemporaryDirectory(prefix="paretoscope-bench-") as tmp:
        model = _mlp_onnx(Path(tmp))
        with data_folder(None):
            local = run_local(model, args.cells, args.min_seconds)
        # Ray's files under the scratch folder, not /tmp/ray (its sockets need a short path: tmp is short)
        os.environ.setdefault("RAY_TMPDIR", tmp)
        Path(os.environ["RAY_TMPDIR"], "ray").mkdir(exist_ok=True)
        with data_folder(None):
            through_ray = run_ray(model, args.cells, args.min_seconds)
    extra = through_ray["per_cell_s"] - local["per_cell_s"]
    print(table(["path", "cells", "study wall s", "in children s", "overhead s/cell"],
                [[name, r["cells"], f"{r['study_wall_s']:.2f}", f"{r['in_children_s']:.2f}", f"{r['per_cell_s']:.3f}"]
                 for name, r in (("local queue", local), ("Ray (local instance)", through_ray))]))
    print(f"Ray's extra per cell: {extra:.3f} s (target <= {TARGET_EXTRA_S:g} s: "
          f"{'ok' if extra <= TARGET_EXTRA_S else 'MISSED'}); Ray's start {through_ray['ray_start_s']:.1f} s "
          f"(once per dispatcher); {load_before} before, {load_state()} after")
    from engine.measure.environment import collect

    path = write_json({"benchmark": "ray_overhead", "command": command_line(), "local": local, "ray": through_ray,
                       "extra_per_cell_s": extra, "target_s": TARGET_EXTRA_S, "load_before": load_before,
                       "load_after": load_state(), "environment": collect(2)}, args.out, "ray_overhead")
    print(f"written {path}")


if __name__ == "__main__":
    main()
