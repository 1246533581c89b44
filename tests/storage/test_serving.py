"""Serving runs: stored and read back as the report's `serving` JSON, deleted with their study, and their migration
up and down on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import inspect, text

from storage import db, queue, serving
from storage.db import session
from tests.storage.helpers import make_study


def _run(study: int, max_batch: int | None) -> dict[str, Any]:
    level = {"mode": "closed", "concurrency": 4, "rate_rps": None, "duration_s": 1.0, "batch_size": 1,
             "requests": 40, "errors": 1, "throughput_rps": 39.0, "items_per_s": 39.0,
             "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "mean": 1.2, "max": 4.0}, "stable": True,
             "windows": [{"throughput_rps": 40.0, "p99_ms": 3.0}] * 3, "batch_sizes": {"1": 10, "3-4": 5},
             "mean_batch": 2.0, "error_examples": ["HTTP 500: boom"]}
    failed = {**level, "concurrency": 16, "requests": 7, "errors": 7, "throughput_rps": 0.0, "items_per_s": 0.0,
              "latency_ms": {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}, "stable": False,
              "batch_sizes": None, "mean_batch": None}
    return {"study": study, "cell": 0, "target": "local", "url": None, "max_batch": max_batch,
            "max_delay_ms": 5.0 if max_batch else None, "settings": {"duration_s": 1.0}, "levels": [level, failed]}


def test_serving_runs_round_trip_and_go_with_their_study(database: str) -> None:
    study = make_study(1)
    with session() as s:
        first = serving.add_serving_run(s, _run(study, None))
        second = serving.add_serving_run(s, _run(study, 8))
    with session(write=False) as s:
        runs = serving.study_serving(s, study)
    assert [r["id"] for r in runs] == [first, second] and second > first
    sent = _run(study, 8)
    got = runs[1]
    assert (got["max_batch"], got["max_delay_ms"], got["target"], got["cell"]) == (8, 5.0, "local", 0)
    for back, level in zip(got["levels"], sent["levels"], strict=True):
        assert back == level  # every field as it went in, the failed level's nulls too
    with pytest.raises(KeyError), session() as s:
        serving.add_serving_run(s, _run(study + 1000, None))
    with session() as s:
        queue.delete_study(s, study)
    with session(write=False) as s:
        assert serving.study_serving(s, study) == []
        assert s.scalar(text("SELECT count(*) FROM serving_levels")) == 0


def test_the_serving_migration_goes_down_and_up(database: str) -> None:
    from alembic import command

    engine = db.get_engine()
    study = make_study(1)
    with session() as s:
        serving.add_serving_run(s, _run(study, 4))
    with engine.connect() as conn, conn.begin():
        config = db.alembic_config(engine)
        config.attributes["connection"] = conn
        command.downgrade(config, "0005_ray")
    assert not {"serving_runs", "serving_levels"} & set(inspect(engine).get_table_names())
    db.upgrade(engine)
    assert {"serving_runs", "serving_levels"} <= set(inspect(engine).get_table_names())
    with session() as s:
        assert serving.add_serving_run(s, _run(study, 4)) >= 1
