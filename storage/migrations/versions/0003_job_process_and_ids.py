"""job process group, and ids never reused: jobs.pgid; SQLite tables rebuilt with AUTOINCREMENT

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09 10:12:40.204118

storage.db runs this with SQLite's foreign keys off (a batch rebuild drops the old table, which with
foreign keys on would delete every child row through ON DELETE CASCADE) and checks them afterwards.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Parents first; PostgreSQL sequences never reuse ids, so only SQLite's tables are rebuilt.
NEVER_REUSE_IDS = ('models', 'datasets', 'variants', 'studies', 'jobs', 'results')


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pgid', sa.Integer(), nullable=True))
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('pgid')


def _rebuild(autoincrement: bool) -> None:
    """SQLite sets AUTOINCREMENT only in CREATE TABLE: copy each table into a new one (rows and ids kept)."""
    if op.get_bind().dialect.name != 'sqlite':
        return
    if op.get_bind().exec_driver_sql('PRAGMA foreign_keys').scalar():
        raise RuntimeError("run this migration with SQLite's foreign keys off (storage.db.upgrade does): "
                           "rebuilding a table would delete its child rows")
    for table in NEVER_REUSE_IDS:
        with op.batch_alter_table(table, recreate='always', table_kwargs={'sqlite_autoincrement': autoincrement}):
            pass
