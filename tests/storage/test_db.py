"""Schema, migrations, SQLite settings, blobs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text

from storage import blobs
from sqlalchemy import select
from storage import catalogue
from storage import queue
from storage import tables
from storage.db import alembic_config, get_engine, session
from storage.tables import Base, Job
from tests.storage.helpers import make_study


def test_migrations_build_the_schema_from_an_empty_database(data_dir: Path) -> None:
    engine = get_engine()
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_alembic_check_finds_no_pending_model_changes() -> None:
    engine = get_engine()
    config = alembic_config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.check(config)  # raises when the ORM and the migrations disagree


def test_sqlite_pragmas(data_dir: Path) -> None:
    engine = get_engine()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    assert (data_dir / "paretoscope.db").is_file()


def test_foreign_keys_are_enforced() -> None:
    with pytest.raises(Exception, match="FOREIGN KEY"), session() as s:
        s.add(Job(study_id=999, cell=0, variant="baseline", chain=[], runtime="torch", batch_size=1))
        s.flush()


def test_timestamps_are_utc_aware() -> None:
    study_id = make_study(1)
    with session(write=False) as s:
        job = s.scalars(select(Job).where(Job.study_id == study_id)).one()
        assert job.created_at.tzinfo is not None
        assert abs((datetime.now(UTC) - job.created_at).total_seconds()) < 60


def test_write_sessions_begin_immediate(data_dir: Path) -> None:
    """A writer holds the write lock from BEGIN: a second writer cannot slip in between read and write."""
    import sqlite3

    get_engine()
    with session():
        other = sqlite3.connect(data_dir / "paretoscope.db", timeout=0.1, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()
    with session(write=False):
        other = sqlite3.connect(data_dir / "paretoscope.db", timeout=0.1, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # a reader leaves the write lock free
        other.execute("ROLLBACK")
        other.close()


def test_blobs_are_content_addressed_and_atomic(tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(b"hello" * 1000)
    sha = blobs.put_file(src)
    assert blobs.path_of(sha).read_bytes() == src.read_bytes()
    assert blobs.put_bytes(src.read_bytes()) == sha
    assert not list(blobs.root().glob(".incoming-*"))
    other = blobs.put_bytes(b"other")
    freed = blobs.collect_garbage({sha})
    assert freed == 5 and blobs.exists(sha) and not blobs.exists(other)
    report = blobs.size_report()
    assert report.blobs_bytes == 5000 and report.blob_count == 1


def test_deleting_a_study_keeps_blobs_other_rows_use(tmp_path: Path) -> None:
    data = tmp_path / "d.npz"
    data.write_bytes(b"npz-bytes")
    sha = blobs.put_file(data)
    first, second = make_study(1, name="one"), make_study(1, name="two")
    with session() as s:
        dataset = catalogue.get_or_create_dataset(s, sha, "d.npz", 9)
        for sid in (first, second):
            s.get(tables.Study, sid).dataset_id = dataset.id
    with session() as s:
        queue.delete_study(s, first)
    with session(write=False) as s:
        blobs.collect_garbage(catalogue.referenced_blobs(s))
        assert s.get(tables.Study, first) is None
        assert s.scalar(text("SELECT count(*) FROM jobs WHERE study_id = :i").bindparams(i=first)) == 0
    assert blobs.exists(sha)


def test_delete_study_removes_rows_folder_and_unused_blobs(tmp_path: Path) -> None:
    from engine.study import delete_study, study_dir

    study_id = make_study(2)
    (study_dir(study_id) / "logs").mkdir(parents=True)
    (study_dir(study_id) / "logs" / "cell-0000.log").write_text("log")
    orphan = blobs.put_bytes(b"left behind by a crashed upload")
    delete_study(study_id)
    assert not study_dir(study_id).joinpath("logs").exists()
    assert not blobs.exists(orphan)
    with session(write=False) as s:
        assert s.get(tables.Study, study_id) is None
        assert s.scalar(text("SELECT count(*) FROM jobs")) == 0


def test_a_running_study_is_cancelled_not_deleted_under_its_worker() -> None:
    import pytest

    from engine.errors import UserError
    from engine.study import delete_study

    study_id = make_study(2)
    with session() as s:
        job = queue.claim_job(s, "w", lease_s=60, study_id=study_id)
        assert job is not None
        job_id = job.id
    with pytest.raises(UserError, match="cancelled now; delete it once its running cell has stopped"):
        delete_study(study_id)
    with session(write=False) as s:
        assert s.get(tables.Study, study_id).cancelled
    with session() as s:  # the worker notices at its next heartbeat and records the end
        queue.finish_job(s, job_id, "w", "cancelled", error="the study was cancelled while this cell ran")
    delete_study(study_id)
    with session(write=False) as s:
        assert s.get(tables.Study, study_id) is None
