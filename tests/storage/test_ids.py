"""Ids are never reused, and the migration that makes SQLite's tables AUTOINCREMENT keeps every row."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, func, insert, select, text

from storage import db
from storage import queue
from storage import tables
from storage.db import session
from storage.tables import Base, Job, Study
from tests.storage.helpers import ARTIFACT, make_study

TABLES = ("models", "datasets", "variants", "environments", "studies", "jobs", "results", "samples", "workers")
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _populate_at_0002(conn: Connection) -> None:
    """Rows in every table, written with the schema of revision 0002 (no column of a later revision)."""
    t = Base.metadata.tables

    def add(table: str, **values: Any) -> Any:
        if "created_at" in t[table].c:
            values["created_at"] = NOW
        return conn.execute(insert(t[table]).values(**values).returning(*t[table].primary_key)).scalar()

    model = add("models", sha256="ab" * 32, name="m.onnx", format="onnx", size_bytes=10, artifact=ARTIFACT)
    dataset = add("datasets", sha256="cd" * 32, name="d.npz", size_bytes=5)
    variant = add("variants", model_id=model, chain="baseline", target="onnx", path=None, size_bytes=10)
    env = add("environments", fingerprint="ef" * 32, data={})
    for n in range(3):
        study = add("studies", name=f"s{n}", model_id=model, dataset_id=dataset, variants=["baseline"],
                    runtimes=["onnxruntime"], batch_sizes=[1], settings={}, cancelled=False)
        for cell in (0, 1):
            job = add("jobs", study_id=study, cell=cell, variant="baseline", chain=[], runtime="onnxruntime",
                      batch_size=1, status="ok", attempts=1)
            result = add("results", job_id=job, study_id=study, environment_id=env, variant_id=variant, p50_ms=1.0,
                         settings={}, notes=[], extra={})
            add("samples", result_id=result, count=1, data=b"\0\0\x80?")
    add("workers", id="w", hostname="h", pid=1, status="stopped", current_job_id=job, started_at=NOW,
        heartbeat_at=NOW)


def _counts() -> dict[str, Any]:
    with session(write=False) as s:
        return {table: s.scalar(text(f"SELECT count(*) FROM {table}")) for table in TABLES}


def test_upgrading_a_populated_database_keeps_every_row(database: str) -> None:
    engine = db._engine_for(database)  # the application's engine (SQLite: foreign keys on), not yet upgraded
    db.upgrade(engine, "0002")
    with engine.begin() as conn:
        _populate_at_0002(conn)
        before = {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() for table in TABLES}
    assert before == {"models": 1, "datasets": 1, "variants": 1, "environments": 1, "studies": 3, "jobs": 6,
                      "results": 6, "samples": 6, "workers": 1}
    db.reset()
    assert _counts() == before  # get_engine() upgraded it to head
    with session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.pgid.is_(None))) == 6
        last_job = s.scalar(select(func.max(Job.id)))
        assert s.get(tables.Worker, "w").current_job_id == last_job
        if s.get_bind().dialect.name == "sqlite":
            assert s.execute(text("PRAGMA foreign_key_check")).fetchall() == []
            assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1  # back on for the pooled connection
        newest = s.scalar(select(func.max(Study.id)))
    with session() as s:
        queue.delete_study(s, newest)
    assert make_study(1) > newest


def test_a_deleted_rows_id_is_never_given_again(database: str) -> None:
    first, newest = make_study(2), make_study(2)
    with session(write=False) as s:
        newest_job = s.scalar(select(func.max(Job.id)))
    with session() as s:
        queue.delete_study(s, newest)
    again = make_study(2)
    assert again > newest > first
    with session(write=False) as s:
        assert s.get(Study, newest) is None
        assert min(s.scalars(select(Job.id).where(Job.study_id == again))) > newest_job


def test_every_sqlite_table_with_a_counter_keeps_autoincrement_at_head(monkeypatch: pytest.MonkeyPatch) -> None:
    """A later migration that rebuilds one of these tables in batch mode must pass
    table_kwargs={"sqlite_autoincrement": True}: reflection does not carry it over, and `alembic check` does not
    compare it."""
    monkeypatch.delenv("PARETOSCOPE_DATABASE_URL", raising=False)
    with session(write=False) as s:
        for table in ("models", "datasets", "variants", "studies", "jobs", "results", "serving_runs"):
            sql = s.scalar(text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :n"), {"n": table})
            assert "AUTOINCREMENT" in sql, table
            assert Base.metadata.tables[table].dialect_options["sqlite"]["autoincrement"], table
