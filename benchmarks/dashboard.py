"""Dashboard speed on a large database: the Results page of a 500-cell study under AppTest, and the study list.

Seeds a fresh data folder with 20 studies of 500 cells each (10,000 results with raw samples; the values are
synthetic, the rows and code paths are the real ones), then measures
  results page   AppTest render of the Results page for one 500-result study, median of 5 (target <= 2 s)
  study list     storage.views.list_studies over the 10,000 results, median of 20 (target <= 200 ms)
Prints a table and writes JSON (default benchmarks/results/dashboard.json).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ROOT, table, write_json

VARIANTS = ["baseline", "int8-dynamic", "int8-static", "fp16", "int8-static:method=entropy"]
RUNTIMES = ["torch", "torch-compile", "torchscript", "onnxruntime", "openvino"]


def seed(studies: int, cells: int) -> int:
    """Create `studies` studies of `cells` finished cells each; return the last study's id."""
    from storage import catalogue
    from storage import queue
    from storage.db import session
    from tests.storage.helpers import ARTIFACT

    rng = np.random.default_rng(0)
    batches = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144,
               524288]
    last = 0
    for n in range(studies):
        grid = [(v, r, b) for b in batches for v in VARIANTS for r in RUNTIMES][:cells]
        spec = [{"index": i, "variant": v, "chain": [], "runtime": r, "batch_size": b, "status": "pending",
                 "reason": None} for i, (v, r, b) in enumerate(grid)]
        with session() as s:
            model = catalogue.get_or_create_model(s, ARTIFACT, "bench-model.onnx")
            study = queue.create_study(s, name=f"seeded study {n}", model=model, dataset=None, variants=VARIANTS,
                                   runtimes=RUNTIMES, batch_sizes=batches, settings={
                                       "threads": 2, "timeout_s": 600,
                                       "measure": {"warmup": 10, "iterations": 50, "min_seconds": 2.0}},
                                   cells=spec)
            last = study.id
        with session() as s:
            while (job := queue.claim_job(s, "seed", 60, last)) is not None:
                p50 = float(rng.uniform(0.1, 20))
                samples = rng.gamma(20, p50 / 20, size=200).astype(np.float32)
                result = {
                    "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p95": p50 * 1.15, "p99": p50 * 1.3,
                                   "mean": p50 * 1.02, "std": p50 * 0.05, "min": p50 * 0.9, "max": p50 * 1.6},
                    "throughput_per_s": job.batch_size * 1000 / p50, "load_s": 0.1, "first_run_ms": p50 * 3,
                    "peak_host_mb": float(rng.uniform(100, 900)), "peak_device_mb": None,
                    "model_size_mb": float(rng.uniform(1, 90)),
                    "accuracy": {"fidelity": {"max_abs": 0.01, "mean_abs": 0.001,
                                              "cosine": float(1 - rng.uniform(0, 0.02)), "top1_agreement": 0.99},
                                 "task": {"name": "top1", "value": float(rng.uniform(0.9, 0.99))}},
                    "settings": {"threads": 2}, "notes": [],
                }
                queue.finish_job(s, job.id, "seed", "ok", result=result, samples=samples)
    return last


def render_results_page(study_id: int) -> float:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()  # every render reads the database, as a fresh visit does
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["results_study"] = study_id
    at.run()
    start = time.perf_counter()
    at.switch_page("pages/results.py")
    at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise SystemExit(f"the Results page failed: {at.exception}")
    if len(at.dataframe[0].value) != 500:
        raise SystemExit("the Results page did not show the 500 results")
    return elapsed


def study_list() -> float:
    from storage import views
    from storage.db import session

    start = time.perf_counter()
    with session(write=False) as s:
        frame = views.list_studies(s)
    elapsed = time.perf_counter() - start
    if int(frame["cells"].sum()) < 10_000:
        raise SystemExit("the study list does not cover the seeded results")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON output (default benchmarks/results/dashboard.json)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="paretoscope-dash-") as tmp:
        os.environ["PARETOSCOPE_DATA_DIR"] = str(Path(tmp) / "data")
        os.environ["PARETOSCOPE_NO_AUTO_WORKER"] = "1"
        t0 = time.perf_counter()
        study_id = seed(20, 500)
        seed_s = time.perf_counter() - t0
        render_results_page(study_id)  # first render imports plotly, pandas styling: not counted
        pages = [render_results_page(study_id) for _ in range(5)]
        lists = [study_list() for _ in range(20)]
    extra = {"seed_s": seed_s}
    rows: list[dict[str, Any]] = [
        {"case": "Results page, 500 results (AppTest)", "median_s": statistics.median(pages), "max_s": max(pages),
         "target_s": 2.0},
        {"case": "study list over 10,000 results", "median_s": statistics.median(lists), "max_s": max(lists),
         "target_s": 0.2},
    ]
    print(table(["case", "median s", "max s", "target s", "verdict"],
                [[r["case"], f"{r['median_s']:.3f}", f"{r['max_s']:.3f}", f"{r['target_s']:.2f}",
                  "ok" if r["median_s"] <= r["target_s"] else "MISSED"] for r in rows]))
    from engine.measure.environment import collect

    path = write_json({"benchmark": "dashboard", "rows": rows, "environment": collect(None), **extra},
                      args.out, "dashboard")
    print(f"written {path}")


if __name__ == "__main__":
    main()
