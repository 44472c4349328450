"""outbox waiting index: the waiting rows by key, so a claim finds the first of each key in one pass

A claim may take the first waiting row of each key (and the first waiting card row of a card's key). It
used to test every due row for an earlier waiting row of its key: with a long queue on a few keys (the
DMs to one person, a busy channel) each claim cost a probe per queued row. This index holds the rows
of each status in key and id order, with their kind, so the first waiting row of each key is read from
it in one pass, without a sort.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

def upgrade() -> None:
    op.create_index("ix_outbox_waiting", "outbox", ["status", "key", "id", "kind"])


def downgrade() -> None:
    op.drop_index("ix_outbox_waiting", table_name="outbox")
