"""CSV and JSON reports: one row per cell, every measured field, the same values in both."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from engine.__main__ import main
from engine.report import tables
from storage import results as stored
from storage.db import session
from tests.report.conftest import Seeded

# CSV column -> where the value sits in a result of the results JSON
PATHS = {
    "cell": ("cell",), "variant": ("variant",), "runtime": ("runtime",), "batch_size": ("batch_size",),
    "status": ("status",), "error": ("error",), "p50_ms": ("latency_ms", "p50"), "p90_ms": ("latency_ms", "p90"),
    "p95_ms": ("latency_ms", "p95"), "p99_ms": ("latency_ms", "p99"), "mean_ms": ("latency_ms", "mean"),
    "std_ms": ("latency_ms", "std"), "min_ms": ("latency_ms", "min"), "max_ms": ("latency_ms", "max"),
    "iterations": ("latency_ms", "iterations"), "p50_ci95_low": ("latency_ms", "p50_ci95", 0),
    "p50_ci95_high": ("latency_ms", "p50_ci95", 1), "throughput_per_s": ("throughput_per_s",),
    "speedup": ("speedup_vs_baseline",), "load_s": ("load_s",), "first_run_ms": ("first_run_ms",),
    "peak_host_mb": ("peak_host_mb",), "peak_device_mb": ("peak_device_mb",), "model_size_mb": ("model_size_mb",),
    "cosine": ("accuracy", "fidelity", "cosine"), "max_abs": ("accuracy", "fidelity", "max_abs"),
    "mean_abs": ("accuracy", "fidelity", "mean_abs"), "top1_agreement": ("accuracy", "fidelity", "top1_agreement"),
    "task_metric": ("accuracy", "task", "value"), "task_name": ("accuracy", "task", "name"),
}


def at(row: dict[str, Any], path: tuple[Any, ...]) -> Any:
    value: Any = row
    for key in path:
        if value is None:
            return None
        value = value[key]
    return value


def same(csv_value: Any, json_value: Any) -> bool:
    if json_value is None:
        return csv_value is None or (isinstance(csv_value, float) and math.isnan(csv_value))
    return bool(csv_value == json_value)


def write(tmp_path: Path, study_id: int, fmt: str) -> Path:
    out = tmp_path / f"report.{fmt}"
    assert main(["report", str(study_id), "--format", fmt, "--out", str(out)], out=io.StringIO()) == 0
    return out


def test_csv_round_trips_through_pandas_with_the_json_values(seeded: Seeded, data_dir: Path, tmp_path: Path) -> None:
    report = json.loads(write(tmp_path, seeded.study_a, "json").read_text())
    csv = pd.read_csv(write(tmp_path, seeded.study_a, "csv"))
    assert len(csv) == len(report["results"]) == 4
    assert csv["cell"].is_unique
    measured = {"latency_ms", "throughput_per_s", "load_s", "first_run_ms", "peak_host_mb", "peak_device_mb",
                "model_size_mb", "accuracy"}
    for r in report["results"]:
        assert measured <= set(r) and r["samples_ms"], "the JSON is the results JSON plus raw samples"
        row = csv[csv["cell"] == r["cell"]].iloc[0].to_dict()
        for column, path in PATHS.items():
            assert same(row[column], at(r, path)), (column, row[column], at(r, path))
        assert row["notes"] == "; ".join(r["notes"]) or (not r["notes"] and math.isnan(row["notes"]))
        assert json.loads(row["settings"]) == r["settings"]
        assert row["samples"] == len(r["samples_ms"])
        for key in ("job_id", "attempts", "wall_s", "build_s", "target"):
            assert same(row[key], r[key]), key


def test_table_columns_are_the_results_pages(seeded: Seeded, data_dir: Path, report_a: dict) -> None:
    """The charts read these columns: from a report file they hold what the Results page reads from the database."""
    from pages import common
    from storage.db import database_url

    frame, _ = common.results(database_url(), seeded.study_a)
    assert list(frame.columns) == tables.FRAME_COLUMNS
    table = tables.results_table(report_a, without=tables.shared_notes(report_a))  # the page shows those once
    pd.testing.assert_frame_equal(table[tables.FRAME_COLUMNS], frame[tables.FRAME_COLUMNS], check_dtype=False)
    samples = tables.samples_by_cell(report_a)
    with session(write=False) as s:
        kept = stored.study_samples(s, seeded.study_a)
    assert samples.keys() == kept.keys()
    assert all((samples[c] == kept[c]).all() for c in kept)


def test_shareable_leaves_out_local_paths(report_a: dict) -> None:
    assert any("variant_path" in r for r in report_a["results"])
    shared = tables.shareable(report_a, samples=False)
    assert not any("variant_path" in r or "samples_ms" in r for r in shared["results"])
    assert all("samples_ms" in r for r in tables.shareable(report_a)["results"])


def test_empty_study_still_has_the_columns() -> None:
    frame = tables.results_table({"results": []})
    assert list(frame.columns) == tables.FRAME_COLUMNS and frame.empty


def test_report_modules_import_no_heavy_library() -> None:
    import subprocess
    import sys

    modules = ("engine.report.html", "engine.report.space", "engine.report.tables", "engine.report.source",
               "engine.report.charts", "engine.report.pareto")
    heavy = ("torch", "onnxruntime", "openvino", "onnx", "transformers")
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == ""
