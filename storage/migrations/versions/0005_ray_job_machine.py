"""jobs.machine: the machine kind a cell targets on a Ray cluster (cpu-avx512, gpu-h100), or none

Revision ID: 0005_ray
Revises: 0004
Create Date: 2026-12-02 17:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005_ray'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # jobs from before target no machine kind: any node with their runtime takes them
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('machine', sa.String(length=64), nullable=True))


def downgrade() -> None:
    # dropping a column rebuilds a SQLite table: it must keep AUTOINCREMENT (ids never reused, 0003)
    with op.batch_alter_table('jobs', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_column('machine')
