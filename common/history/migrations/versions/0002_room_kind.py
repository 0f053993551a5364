"""rooms.kind: random or private

Revision ID: 0002_room_kind
Revises: 0001
Create Date: 2026-12-04 15:00:00

Rooms archived before private rooms existed were all random ones: the column's server default
fills them in. Indexed for the admin's kind filter.
"""
import sqlalchemy as sa
from alembic import op

revision = '0002_room_kind'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('rooms', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=8), nullable=False,
                                      server_default='random'))
        batch_op.create_index(batch_op.f('ix_rooms_kind'), ['kind'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('rooms', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rooms_kind'))
        batch_op.drop_column('kind')
