"""created_by: the signed-in person who uploaded a model or data file or submitted a study (shared mode)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 08:05:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ('models', 'datasets', 'studies')


def upgrade() -> None:
    # rows from before keep no creator: on a shared server only an admin deletes them
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('created_by', sa.String(length=255), nullable=True))
            batch_op.create_index(batch_op.f(f'ix_{table}_created_by'), ['created_by'], unique=False)


def downgrade() -> None:
    # dropping a column rebuilds a SQLite table: it must keep AUTOINCREMENT (ids never reused, 0003)
    for table in TABLES:
        with op.batch_alter_table(table, schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
            batch_op.drop_index(batch_op.f(f'ix_{table}_created_by'))
            batch_op.drop_column('created_by')
