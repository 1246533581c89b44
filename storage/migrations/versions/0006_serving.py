"""serving results: serving_runs (one serve-bench of a study's cell) and serving_levels (one load level each)

Revision ID: 0006
Revises: 0005_ray
Create Date: 2026-12-16 09:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005_ray'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'serving_runs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_id', sa.Integer(), nullable=False),
        sa.Column('cell', sa.Integer(), nullable=False),
        sa.Column('target', sa.String(length=16), nullable=False),
        sa.Column('url', sa.String(length=1000), nullable=True),
        sa.Column('max_batch', sa.Integer(), nullable=True),
        sa.Column('max_delay_ms', sa.Float(), nullable=True),
        sa.Column('settings', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_serving_runs_study_id_studies'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_serving_runs')),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table('serving_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_serving_runs_study_id'), ['study_id'], unique=False)
    op.create_table(
        'serving_levels',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('mode', sa.String(length=16), nullable=False),
        sa.Column('concurrency', sa.Integer(), nullable=True),
        sa.Column('rate_rps', sa.Float(), nullable=True),
        sa.Column('requests', sa.Integer(), nullable=False),
        sa.Column('errors', sa.Integer(), nullable=False),
        sa.Column('throughput_rps', sa.Float(), nullable=True),
        sa.Column('items_per_s', sa.Float(), nullable=True),
        sa.Column('p50_ms', sa.Float(), nullable=True),
        sa.Column('p90_ms', sa.Float(), nullable=True),
        sa.Column('p99_ms', sa.Float(), nullable=True),
        sa.Column('stable', sa.Boolean(), nullable=False),
        sa.Column('extra', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['serving_runs.id'], name=op.f('fk_serving_levels_run_id_serving_runs'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_serving_levels')),
    )
    with op.batch_alter_table('serving_levels', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_serving_levels_run_id'), ['run_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('serving_levels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_serving_levels_run_id'))
    op.drop_table('serving_levels')
    with op.batch_alter_table('serving_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_serving_runs_study_id'))
    op.drop_table('serving_runs')
