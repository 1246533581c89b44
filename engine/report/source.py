"""A stored study as the report's input: the results JSON (docs/architecture.md) with the raw latency samples."""

from __future__ import annotations

from typing import Any

from engine.errors import UserError


def load_report(study_id: int) -> dict[str, Any]:
    """The study's results JSON with `samples_ms` per cell; UserError when no study has this id."""
    from storage import queries as q
    from storage.db import session

    with session(write=False) as s:
        try:
            return q.results_json(s, study_id, with_samples=True)
        except KeyError:
            raise UserError(f"no study with id {study_id}; list them in the dashboard") from None
