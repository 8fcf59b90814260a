"""volume transfers and user messages

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 09:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('transfers',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('volume_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=True),
    sa.Column('salt', sa.String(length=64), nullable=False),
    sa.Column('crypt_hash', sa.String(length=255), nullable=False),
    sa.Column('no_snapshots', sa.Boolean(), nullable=False),
    sa.Column('source_project_id', sa.String(length=255), nullable=False),
    sa.Column('destination_project_id', sa.String(length=255), nullable=True),
    sa.Column('accepted', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_transfers_project_created', 'transfers',
                    ['source_project_id', 'created_at', 'id'], unique=False)
    op.create_index('ix_transfers_volume', 'transfers', ['volume_id'], unique=False)
    op.create_table('messages',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('project_id', sa.String(length=255), nullable=False),
    sa.Column('request_id', sa.String(length=255), nullable=True),
    sa.Column('resource_type', sa.String(length=255), nullable=True),
    sa.Column('resource_uuid', sa.String(length=36), nullable=True),
    sa.Column('event_id', sa.String(length=255), nullable=False),
    sa.Column('action_id', sa.String(length=10), nullable=True),
    sa.Column('detail_id', sa.String(length=10), nullable=True),
    sa.Column('message_level', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_messages_project_created', 'messages',
                    ['project_id', 'created_at', 'id'], unique=False)
    op.create_index('ix_messages_expires', 'messages', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_messages_expires', table_name='messages')
    op.drop_index('ix_messages_project_created', table_name='messages')
    op.drop_table('messages')
    op.drop_index('ix_transfers_volume', table_name='transfers')
    op.drop_index('ix_transfers_project_created', table_name='transfers')
    op.drop_table('transfers')
