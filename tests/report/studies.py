"""Small results JSONs built by hand (no benchmark run): the shapes the charts and tables must handle."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from engine.report.speedups import add_speedups
from engine.results import CellResult

EXPORTER_NOTE = ("exported to ONNX with the legacy exporter (opset 18): dynamo failed (GuardOnDataDependentSymNode: "
                 "Could not guard on data-dependent expression Eq(u0, 1))")


# The speedup fields added with speedup intervals (issue 13); a row without them is one of an older study.
INTERVAL_KEYS = ("speedup_ci95", "speedup_method", "speedup_rounds")


def result(cell: int, variant: str, runtime: str, batch: int, p50: float, *, cosine: float | None = 0.9999,
           task: float | None = None, status: str = "ok", notes: tuple[str, ...] = (),
           noise: dict[str, Any] | None = None, settings: dict[str, Any] | None = None, size_mb: float = 2.5,
           host_mb: float = 450.0, error: str | None = None, speedup: float | None = None,
           interval: tuple[float, float] | None = None, method: str | None = None,
           rounds: int | None = None) -> dict[str, Any]:
    """One row of the results JSON as storage writes it (speedups added by `study`).

    `interval` (with `method`, default "interleaved", and `rounds`) gives the row the speedup fields of a study
    measured in rounds; `speedup` then stands for their median of ratios, else storage's ratio of p50s is kept.
    """
    ok = status == "ok"
    row: dict[str, Any] = {
        "cell": cell, "job_id": cell + 1, "variant": variant, "runtime": runtime, "batch_size": batch,
        "status": status, "error": error if not ok else None,
        "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p95": p50 * 1.15, "p99": p50 * 1.2, "mean": p50,
                       "std": p50 * 0.05, "min": p50 * 0.9, "max": p50 * 1.3, "p50_ci95": [p50 * 0.99, p50 * 1.01],
                       "iterations": 50} if ok else None,
        "throughput_per_s": batch * 1000.0 / p50 if ok else None, "load_s": 0.1 if ok else None,
        "first_run_ms": p50 * 3 if ok else None, "peak_host_mb": host_mb if ok else None, "peak_device_mb": None,
        "model_size_mb": size_mb if ok else None,
        "accuracy": {"fidelity": {"cosine": cosine, "max_abs": 1e-3, "mean_abs": 1e-4, "top1_agreement": 1.0}
                     if ok and cosine is not None else None,
                     "task": {"name": "top1", "value": task} if ok and task is not None else None},
        "settings": settings if ok else None, "notes": list(notes), "attempts": 1,
    }
    if speedup is not None:
        row["speedup_vs_baseline"] = speedup
    if interval is not None or method is not None:
        row.update(speedup_ci95=None if interval is None else list(interval),
                   speedup_method=method or "interleaved", speedup_rounds=rounds)
    if noise is not None:
        row["noise"] = noise
        row["machine_load"] = {"other_busy_cores": noise.get("other_busy_cores"), "cpu_count": 2}
    return row


def noisy(spread_pct: float) -> dict[str, Any]:
    """The noise verdict of engine/measure/noise.py for a cell whose median is ±spread_pct."""
    return {"noisy": True, "spread_pct": spread_pct, "cv": 0.2, "other_busy_cores": 1.2,
            "reasons": [f"the median's 95% interval is ±{spread_pct:.0f}%"],
            "message": f"noisy: ±{spread_pct:.0f}% — rerun on an idle machine"}


STEADY = {"noisy": False, "spread_pct": 0.8, "cv": 0.05, "other_busy_cores": 0.1, "reasons": [], "message": None}


def study(rows: list[dict[str, Any]], name: str = "hand-made") -> dict[str, Any]:
    """A results JSON around the rows, speedups computed by the engine as for a stored study.

    The speedup fields a row was built with are kept; any others the engine adds are dropped, so a row built without
    an interval stays one of an older study whatever the engine learns to compute.
    """
    given = [{k: r[k] for k in ("speedup_vs_baseline", *INTERVAL_KEYS) if k in r} for r in rows]
    typed = [CellResult.from_json(r) for r in rows]
    add_speedups(typed)
    for row, result in zip(rows, typed, strict=True):
        computed = result.to_json()
        row.update({k: computed[k] for k in ("speedup_vs_baseline", "baseline_cell", *INTERVAL_KEYS)})
    for row, kept in zip(rows, given, strict=True):
        for key in INTERVAL_KEYS:
            row.pop(key, None)
        row.update(kept)
    return {
        "study": {"id": 7, "name": name, "created_at": "2025-01-01T00:00:00", "finished_at": None,
                  "cancelled": False, "model": {"name": "model.onnx", "format": "onnx", "sha256": "0" * 64,
                                                "size_bytes": 1000, "spec": None, "info": None},
                  "variants": sorted({r["variant"] for r in rows}), "runtimes": sorted({r["runtime"] for r in rows}),
                  "batch_sizes": sorted({r["batch_size"] for r in rows}), "settings": {}, "reference": None,
                  "progress": {"ok": sum(r["status"] == "ok" for r in rows)}},
        "environment": None,
        "results": rows,
    }


def measured(fp16_interval: tuple[float, float] = (1.6, 2.0)) -> dict[str, Any]:
    """Batch 1: the baseline on torch and three variants on onnxruntime timed in rounds against it (int8-dynamic the
    fastest, fp16 tied with it on speed and more accurate, int8-static surely slower than both), a cell with a point
    speedup only (measured before intervals) and a failed cell; batch 8: an fp16 cell whose interval overlaps
    int8-dynamic's at batch 1."""
    return study([
        result(0, "baseline", "torch", 1, 10.0, cosine=1.0, speedup=1.0, interval=(1.0, 1.0), method="baseline",
               rounds=12),
        result(1, "int8-dynamic", "onnxruntime", 1, 5.0, cosine=0.992, speedup=2.0, interval=(1.8, 2.2), rounds=12),
        result(2, "fp16", "onnxruntime", 1, 5.5, cosine=0.9995, speedup=1.8, interval=fp16_interval, rounds=12),
        result(3, "int8-static", "onnxruntime", 1, 7.0, cosine=0.9999, speedup=1.4, interval=(1.3, 1.5), rounds=12),
        result(4, "prune-structured:0.5", "onnxruntime", 1, 8.0, cosine=0.9999),
        result(5, "int8-static", "openvino", 1, 0.0, status="failed", error="RuntimeError: no kernel"),
        result(6, "baseline", "torch", 8, 60.0, cosine=1.0, speedup=1.0, interval=(1.0, 1.0), method="baseline",
               rounds=12),
        result(7, "fp16", "onnxruntime", 8, 31.0, cosine=0.99999, speedup=1.95, interval=(1.7, 2.1),
               method="separate"),
    ])


def older(report: dict[str, Any]) -> dict[str, Any]:
    """The same study as stored before speedup intervals: none of the new keys."""
    old = copy.deepcopy(report)
    for r in old["results"]:
        for key in INTERVAL_KEYS:
            r.pop(key, None)
    return old


_NEW_PLOT = re.compile(r'Plotly\.newPlot\(\s*"([^"]+)",\s*')


def figures(html: str) -> dict[str, dict[str, Any]]:
    """Every chart of an HTML report as Plotly JSON ({"data", "layout"}), by its div id."""
    decoder = json.JSONDecoder()
    out = {}
    for match in _NEW_PLOT.finditer(html):
        data, end = decoder.raw_decode(html, match.end())
        rest = html[end:].lstrip()
        assert rest.startswith(",")
        start = end + (len(html[end:]) - len(rest)) + 1
        layout, _ = decoder.raw_decode(html[start:].lstrip())
        out[match.group(1)] = {"data": data, "layout": layout}
    return out
