"""Database fixtures: a fresh SQLite file per test, and PostgreSQL when a server is reachable."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from storage import db

PG_URL = os.environ.get("PARETOSCOPE_TEST_POSTGRES_URL")


@pytest.fixture(autouse=True)
def fresh_engines() -> Iterator[None]:
    db.reset()
    yield
    db.reset()


def _postgres_database() -> Iterator[str]:
    if not PG_URL:
        pytest.skip("no PostgreSQL server: set PARETOSCOPE_TEST_POSTGRES_URL (.ci/run starts one)")
    from sqlalchemy import create_engine, text

    try:
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            name = f"paretoscope_test_{uuid.uuid4().hex[:8]}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.skip(f"PostgreSQL at PARETOSCOPE_TEST_POSTGRES_URL is not reachable: {exc}")
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        db.reset()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The queue tests run on SQLite and, where a server is reachable, on PostgreSQL."""
    if request.param == "sqlite":
        monkeypatch.delenv("PARETOSCOPE_DATABASE_URL", raising=False)
        yield db.database_url()
        return
    for url in _postgres_database():
        monkeypatch.setenv("PARETOSCOPE_DATABASE_URL", url)
        yield url
