"""Stored studies as the engine reads them: typed rows with their speedups, and the results JSON of
docs/architecture.md (with the raw latency samples for reports)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from engine.errors import UserError
from engine.report.speedups import add_speedups
from engine.results import CellResult
from storage import results as stored
from storage import serving


def with_speedups(rows: list[dict[str, Any]]) -> list[CellResult]:
    """Results JSON rows as typed results, each with its speedup over its batch size's baseline."""
    typed = [CellResult.from_json(row) for row in rows]
    add_speedups(typed)
    return typed


def study_results(s: Session, study_id: int) -> list[CellResult]:
    """The study's cells in order, as typed results with their speedups."""
    return with_speedups(stored.study_rows(s, study_id))


def results_json(s: Session, study_id: int, with_samples: bool = False) -> dict[str, Any]:
    """The study's results JSON, with its serving runs under `serving`; KeyError when no study has this id."""
    data = stored.study_json(s, study_id, with_samples=with_samples)
    data["results"] = [row.to_json() for row in with_speedups(data["results"])]
    data["serving"] = serving.study_serving(s, study_id)  # `serve-bench` runs of its cells, oldest first
    if with_samples:  # asked for: null where a cell has none, never a missing key
        for row_json in data["results"]:
            row_json.setdefault("samples_ms", None)
    return data


def load_report(study_id: int) -> dict[str, Any]:
    """The study's results JSON with `samples_ms` per cell; UserError when no study has this id."""
    from storage.db import session

    with session(write=False) as s:
        try:
            return results_json(s, study_id, with_samples=True)
        except KeyError:
            raise UserError(f"no study with id {study_id}; list them in the dashboard") from None
