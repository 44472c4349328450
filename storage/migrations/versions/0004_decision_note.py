"""decision note: why a request was rejected (or, later, how a portal change was attested), in people's words

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("change_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("decision_note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("change_requests", schema=None) as batch_op:
        batch_op.drop_column("decision_note")
