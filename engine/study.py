"""Run a whole study: plan the cells, compute the reference once, run each cell in its own child, keep every number."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.artifacts import Artifact
from engine.executors.local import Outcome, run_child
from engine.measure.environment import collect
from engine.optimizations.base import Chain
from engine.paths import sub_dir
from engine.plan import Cell, StudySettings, expand

RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.npz"
# Result fields of the results JSON contract (ARCHITECTURE.md); absent values are null.
RESULT_FIELDS = ("latency_ms", "throughput_per_s", "load_s", "first_run_ms", "peak_host_mb", "peak_device_mb",
                 "model_size_mb", "accuracy", "settings", "notes")


@dataclass
class StudyEvents:
    """Callbacks for a live view: a cell starts, reports progress, finishes."""

    started: Callable[[Cell, int, int], None] = lambda cell, i, n: None
    progress: Callable[[Cell, str, float], None] = lambda cell, phase, fraction: None
    finished: Callable[[Cell, dict[str, Any], int, int], None] = lambda cell, row, i, n: None


def new_study_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def empty_row(cell: Cell, status: str, error: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"cell": cell.index, "variant": cell.variant, "runtime": cell.runtime,
                           "batch_size": cell.batch_size, "status": status, "error": error}
    for name in RESULT_FIELDS:
        row[name] = None
    row["accuracy"] = {"fidelity": None, "task": None}
    row["notes"] = [error] if error and status in ("n/a", "unavailable") else []
    return row


def row_from_outcome(cell: Cell, outcome: Outcome) -> tuple[dict[str, Any], np.ndarray | None]:
    if outcome.status != "ok" or outcome.result is None:
        message = outcome.error
        if outcome.error_type and outcome.status == "failed":
            message = f"{outcome.error_type}: {outcome.error}"
        row = empty_row(cell, outcome.status, message)
        row["error_type"] = outcome.error_type
        row["traceback"] = outcome.traceback
        return row, None
    result = dict(outcome.result)
    samples = np.asarray(result.pop("samples_ms"), dtype=np.float32)
    row = empty_row(cell, "ok")
    row.update(result)
    row["wall_s"] = outcome.elapsed_s
    return row, samples


def run_study(model: Artifact, variants: list[Chain], runtimes: list[str], batch_sizes: list[int],
              settings: StudySettings, *, name: str | None = None, data_path: str | None = None,
              events: StudyEvents | None = None) -> dict[str, Any]:
    """Run every cell and return the results JSON; it is also written to the study's folder."""
    events = events or StudyEvents()
    study_id = new_study_id()
    study_dir = sub_dir("studies", study_id)
    cells = expand(model.format, model.spec, variants, runtimes, batch_sizes)
    study: dict[str, Any] = {
        "id": study_id,
        "name": name or f"{model.info.get('label', model.format)} {study_id}",
        "created_at": datetime.now(UTC).isoformat(),
        "model": {"sha256": model.sha256, "format": model.format, "size_bytes": model.size_bytes,
                  "spec": model.spec.to_json(), "info": model.info, "label": model.info.get("label")},
        "data": Path(data_path).name if data_path else None,
        "variants": [c.name for c in variants],
        "runtimes": runtimes,
        "batch_sizes": batch_sizes,
        "settings": settings.to_json(),
        "cells": len(cells),
        "folder": str(study_dir),
    }
    (study_dir / "study.json").write_text(json.dumps(study, indent=1))
    environment = collect(settings.threads)
    payload = {"model": model.to_json(), "settings": settings.to_json(), "study_dir": str(study_dir),
               "data": str(Path(data_path).resolve()) if data_path else None}
    runnable = [c for c in cells if c.runnable]
    reference_error = None
    if runnable:
        outcome = run_child("reference", payload, settings.timeout_s, study_dir / "logs" / "reference.log")
        if outcome.status != "ok":
            reference_error = f"reference outputs could not be computed ({outcome.status}: {outcome.error})"
        else:
            study["reference"] = outcome.result
    rows: list[dict[str, Any]] = []
    samples: dict[str, np.ndarray] = {}
    started = time.monotonic()
    for i, cell in enumerate(cells):
        events.started(cell, i, len(cells))
        if not cell.runnable:
            row = empty_row(cell, cell.status, cell.reason)
        elif reference_error:
            row = empty_row(cell, "failed", reference_error)
        else:
            outcome = run_child(
                "cell", {**payload, "cell": cell.to_json()}, settings.timeout_s,
                study_dir / "logs" / f"cell-{cell.index:04d}.log", _cell_progress(events, cell),
            )
            row, cell_samples = row_from_outcome(cell, outcome)
            if cell_samples is not None:
                samples[f"cell-{cell.index}"] = cell_samples
        rows.append(row)
        events.finished(cell, row, i, len(cells))
    study["finished_at"] = datetime.now(UTC).isoformat()
    study["wall_s"] = time.monotonic() - started
    _add_speedups(rows)
    results = {"study": study, "environment": environment, "results": rows}
    (study_dir / "study.json").write_text(json.dumps(study, indent=1))
    (study_dir / RESULTS_FILE).write_text(json.dumps(results, indent=1))
    if samples:
        np.savez_compressed(study_dir / SAMPLES_FILE, **samples)  # type: ignore[arg-type]
    return results


def _cell_progress(events: StudyEvents, cell: Cell) -> Callable[[str, float], None]:
    return lambda phase, fraction: events.progress(cell, phase, fraction)


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """Speedup of each cell's p50 over the baseline on the first runtime that ran it, same batch size."""
    baselines: dict[int, float] = {}
    for row in rows:
        if row["variant"] == "baseline" and row["status"] == "ok" and row["batch_size"] not in baselines:
            baselines[row["batch_size"]] = row["latency_ms"]["p50"]
    for row in rows:
        base = baselines.get(row["batch_size"])
        ok = row["status"] == "ok" and base is not None
        row["speedup_vs_baseline"] = base / row["latency_ms"]["p50"] if ok else None


def list_studies() -> list[dict[str, Any]]:
    """Finished studies in the data folder, newest first."""
    out = []
    for path in sorted(sub_dir("studies").glob(f"*/{RESULTS_FILE}"), reverse=True):
        out.append(json.loads(path.read_text()))
    return out
