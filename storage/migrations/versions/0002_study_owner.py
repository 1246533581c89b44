"""study owner: a study that one process runs alone (`bench`), so general workers leave its jobs be

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 05:42:17.126008
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite adds the column in place and PostgreSQL runs plain ALTERs; existing studies stay ownerless
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_studies_owner'), ['owner'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studies_owner'))
        batch_op.drop_column('owner')
