"""moderation: keyed hashes on rooms and reports, the moderation log

Revision ID: 0003_moderation
Revises: 0002_room_kind
Create Date: 2026-12-04 15:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003_moderation'
down_revision = '0002_room_kind'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('rooms', schema=None) as batch_op:
        for col in ('user1_browser', 'user1_addr', 'user2_browser', 'user2_addr'):
            batch_op.add_column(sa.Column(col, sa.String(length=32), nullable=True))
    with op.batch_alter_table('reports', schema=None) as batch_op:
        for col in ('reported_browser', 'reported_addr'):
            batch_op.add_column(sa.Column(col, sa.String(length=32), nullable=True))
    op.create_table('moderation_log',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('admin', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('browser', sa.String(length=32), nullable=True),
    sa.Column('addr', sa.String(length=32), nullable=True),
    sa.Column('until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('report_id', BigId, nullable=True),
    sa.Column('room_id', sa.String(length=32), nullable=True),
    sa.Column('user', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('moderation_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_moderation_log_at'), ['at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('moderation_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_moderation_log_at'))
    op.drop_table('moderation_log')
    with op.batch_alter_table('reports', schema=None) as batch_op:
        for col in ('reported_addr', 'reported_browser'):
            batch_op.drop_column(col)
    with op.batch_alter_table('rooms', schema=None) as batch_op:
        for col in ('user2_addr', 'user2_browser', 'user1_addr', 'user1_browser'):
            batch_op.drop_column(col)
