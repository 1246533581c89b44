"""The results JSON as tables: one row per cell for CSV and charts, and the comparison of two studies.

Pure pandas and the standard library: the Space bundle copies this module, so it imports nothing else
from Paretoscope.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

# The columns of the pages' results frame, in its order: the charts read these names.
FRAME_COLUMNS = ["cell", "variant", "runtime", "batch_size", "status", "error", "p50_ms", "p90_ms", "p99_ms",
                 "mean_ms", "throughput_per_s", "speedup", "load_s", "first_run_ms", "peak_host_mb",
                 "peak_device_mb", "model_size_mb", "cosine", "max_abs", "top1_agreement", "task_metric", "notes"]

# What the results table shows, as the Results page does: column, heading, printf format (None: text).
SHOWN = [
    ("variant", "variant", None), ("runtime", "runtime", None), ("batch_size", "batch", "%d"),
    ("status", "status", None), ("p50_ms", "p50 ms", "%.3f"), ("p99_ms", "p99 ms", "%.3f"),
    ("throughput_per_s", "items/s", "%.1f"), ("speedup", "speedup vs baseline", "%.2fx"),
    ("peak_host_mb", "peak host MB", "%.0f"), ("model_size_mb", "size MB", "%.2f"),
    ("cosine", "fidelity (cosine)", "%.5f"), ("top1_agreement", "top-1 agreement", "%.3f"),
    ("task_metric", "task top-1", "%.4f"), ("error", "error", None), ("notes", "notes", None),
]

# Row keys placed by name above, or not a per-cell field of their own.
_PLACED = {"cell", "variant", "runtime", "batch_size", "status", "error", "latency_ms", "throughput_per_s",
           "speedup_vs_baseline", "load_s", "first_run_ms", "peak_host_mb", "peak_device_mb", "model_size_mb",
           "accuracy", "notes", "settings", "samples_ms"}


def _cell(value: Any) -> Any:
    """A JSON value as one CSV field: scalars as they are, lists and objects as compact JSON."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def flat_row(r: dict[str, Any]) -> dict[str, Any]:
    """One result of the results JSON as a flat row: the FRAME_COLUMNS, then every other field."""
    lat = r.get("latency_ms") or {}
    acc = r.get("accuracy") or {}
    fid = acc.get("fidelity") or {}
    task = acc.get("task") or {}
    ci = lat.get("p50_ci95") or [None, None]
    row = {
        "cell": r["cell"], "variant": r["variant"], "runtime": r["runtime"], "batch_size": r["batch_size"],
        "status": r["status"], "error": r.get("error"), "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"),
        "p99_ms": lat.get("p99"), "mean_ms": lat.get("mean"), "throughput_per_s": r.get("throughput_per_s"),
        "speedup": r.get("speedup_vs_baseline"), "load_s": r.get("load_s"), "first_run_ms": r.get("first_run_ms"),
        "peak_host_mb": r.get("peak_host_mb"), "peak_device_mb": r.get("peak_device_mb"),
        "model_size_mb": r.get("model_size_mb"), "cosine": fid.get("cosine"), "max_abs": fid.get("max_abs"),
        "top1_agreement": fid.get("top1_agreement"), "task_metric": task.get("value"),
        "notes": "; ".join(r.get("notes") or []),
        "p95_ms": lat.get("p95"), "std_ms": lat.get("std"), "min_ms": lat.get("min"), "max_ms": lat.get("max"),
        "p50_ci95_low": ci[0], "p50_ci95_high": ci[1], "iterations": lat.get("iterations"),
        "mean_abs": fid.get("mean_abs"), "task_name": task.get("name"),
        "samples": len(r["samples_ms"]) if r.get("samples_ms") is not None else None,
        "settings": _cell(r.get("settings")),
    }
    for key, value in r.items():
        if key not in _PLACED and key not in row:
            row[key] = _cell(value)
    return row


def results_table(report: dict[str, Any]) -> pd.DataFrame:
    """Every cell of a results JSON, one row each, with every measured field (the CSV report)."""
    rows = [flat_row(r) for r in report["results"]]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=FRAME_COLUMNS)
    return frame


def samples_by_cell(report: dict[str, Any]) -> dict[int, np.ndarray]:
    """Raw latency samples (ms) per cell index, from a results JSON written with samples."""
    return {int(r["cell"]): np.asarray(r["samples_ms"], dtype=np.float64)
            for r in report["results"] if r.get("samples_ms")}


def csv_text(report: dict[str, Any]) -> str:
    return results_table(report).to_csv(index=False)


# --- comparing two studies ----------------------------------------------------------------------------

COMPARE_KEYS = ["variant", "runtime", "batch_size"]
_COMPARED = ["p50_ms", "p99_ms", "throughput_per_s", "peak_host_mb", "cosine", "status"]
COMPARE_SHOWN = [*COMPARE_KEYS, "status_a", "status_b", "p50_ms_a", "p50_ms_b", "p50_ratio", "p99_ratio",
                 "throughput_ratio", "cosine_a", "cosine_b"]


def compare_frames(frame_a: pd.DataFrame, frame_b: pd.DataFrame) -> pd.DataFrame:
    """Cells of two studies side by side (outer join on variant, runtime, batch) with B/A ratios."""
    cols = COMPARE_KEYS + _COMPARED
    joined = frame_a[cols].merge(frame_b[cols], on=COMPARE_KEYS, suffixes=("_a", "_b"), how="outer")
    joined["p50_ratio"] = joined["p50_ms_b"] / joined["p50_ms_a"]
    joined["p99_ratio"] = joined["p99_ms_b"] / joined["p99_ms_a"]
    joined["throughput_ratio"] = joined["throughput_per_s_b"] / joined["throughput_per_s_a"]
    return joined


def flat_dict(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested objects as dotted keys (`libraries.torch`); lists stay whole."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flat_dict(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def environment_diff(env_a: Any, env_b: Any) -> list[dict[str, str]]:
    """Fields whose values differ between two environments, as rows of field, A, B."""
    a, b = flat_dict(env_a or {}), flat_dict(env_b or {})
    return [{"field": k, "A": str(a.get(k)), "B": str(b.get(k))}
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# Fields that only mean something on the machine that ran the study (a local file path).
LOCAL_FIELDS = ("variant_path",)


def shareable(report: dict[str, Any], samples: bool = True) -> dict[str, Any]:
    """A results JSON for other people: local file paths left out, raw samples kept or dropped."""
    drop = set(LOCAL_FIELDS) | (set() if samples else {"samples_ms"})
    return {**report, "results": [{k: v for k, v in r.items() if k not in drop} for r in report["results"]]}
