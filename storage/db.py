"""Database engine and sessions: SQLite (WAL) under the data folder, or any URL from PARETOSCOPE_DATABASE_URL."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session

from storage.paths import data_dir

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Seconds a SQLite writer waits for the lock before "database is locked".
BUSY_TIMEOUT_MS = 30_000


def database_url() -> str:
    url = os.environ.get("PARETOSCOPE_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{data_dir() / 'paretoscope.db'}"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


_ENGINES: dict[str, Engine] = {}
_UPGRADED: set[str] = set()


def _engine_for(url: str) -> Engine:
    engine = _ENGINES.get(url)
    if engine is None:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
            _configure_sqlite(engine)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        _ENGINES[url] = engine
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # let SQLAlchemy's begin event issue BEGIN itself (pysqlite's implicit BEGIN is DEFERRED)
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front: a DEFERRED read-then-write transaction can fail with
        # "database is locked" when it upgrades, whatever the busy timeout.
        mode = "IMMEDIATE" if conn.get_execution_options().get("write", True) else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def get_engine() -> Engine:
    """The engine for the current URL, its schema upgraded to the newest migration once per process."""
    url = database_url()
    engine = _engine_for(url)
    if url not in _UPGRADED:
        upgrade(engine)
        _UPGRADED.add(url)
    return engine


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic migrations up to `revision`; processes starting together take turns (file lock)."""
    from alembic import command

    lock_path = data_dir() / ".migrate.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with engine.connect() as conn, _foreign_keys_off(conn), conn.begin():
                if not is_sqlite(engine):
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(72011)")  # across machines
                config = alembic_config(engine)
                config.attributes["connection"] = conn
                command.upgrade(config, revision)
                _check_foreign_keys(conn)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def _foreign_keys_off(conn: Connection) -> Iterator[None]:
    """SQLite's foreign keys off while migrations rebuild tables: dropping a parent table in a batch rebuild
    would otherwise delete its child rows (ON DELETE CASCADE). The pragma is a no-op inside a transaction, so
    it goes to the driver's connection before SQLAlchemy's BEGIN, and back on before the pool takes it back."""
    if not is_sqlite(conn.engine):
        yield
        return
    raw = conn.connection.dbapi_connection
    assert raw is not None  # a checked-out connection
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys=ON")


def _check_foreign_keys(conn: Connection) -> None:
    """Fail the migration (and roll it back) if a rebuilt table left a row pointing nowhere."""
    if not is_sqlite(conn.engine):
        return
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"the migration left {len(broken)} row(s) with a broken foreign key "
                           f"(first: {tuple(broken[0])}); restore the database from a backup and report this")


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


@contextmanager
def session(write: bool = True) -> Iterator[Session]:
    """A session in one transaction, committed on success; `write=False` reads without the write lock."""
    with Session(bind=get_engine(), expire_on_commit=False) as s:
        s.connection(execution_options={"write": write})  # begins the transaction in the right mode
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise


def reset() -> None:
    """Dispose every engine (tests switch data folders and URLs; forked processes must not share pools)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
    _UPGRADED.clear()
