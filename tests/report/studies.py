"""Small results JSONs built by hand (no benchmark run): the shapes the charts and tables must handle."""

from __future__ import annotations

import json
import re
from typing import Any

from storage.queries import add_speedups

EXPORTER_NOTE = ("exported to ONNX with the legacy exporter (opset 18): dynamo failed (GuardOnDataDependentSymNode: "
                 "Could not guard on data-dependent expression Eq(u0, 1))")


def result(cell: int, variant: str, runtime: str, batch: int, p50: float, *, cosine: float | None = 0.9999,
           task: float | None = None, status: str = "ok", notes: tuple[str, ...] = (),
           noise: dict[str, Any] | None = None, settings: dict[str, Any] | None = None, size_mb: float = 2.5,
           host_mb: float = 450.0, error: str | None = None) -> dict[str, Any]:
    """One row of the results JSON as storage writes it (speedups added by `study`)."""
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
    """A results JSON around the rows, speedups computed by storage as for a stored study."""
    add_speedups(rows)
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
