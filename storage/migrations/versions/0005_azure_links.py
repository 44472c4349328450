"""Azure as the source of truth: Slack users linked to Microsoft Entra object IDs (people), the principals
each partner linked its Partner ID to (partner_principals), and the role assignments dpor-bot created
to credit a partner (managed_assignments)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "people",
        sa.Column("slack_user_id", sa.String(length=32), nullable=False),
        sa.Column("object_id", sa.String(length=36), nullable=False),
        sa.Column("upn", sa.String(length=256), nullable=True),
        sa.Column("linked_by", sa.String(length=64), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("slack_user_id"),
    )
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_people_object_id"), ["object_id"], unique=False)
    op.create_table(
        "partner_principals",
        sa.Column("partner_id", sa.String(length=7), nullable=False),
        sa.Column("object_id", sa.String(length=36), nullable=False),
        sa.Column("added_by", sa.String(length=64), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["partner_id"], ["partners.partner_id"]),
        sa.PrimaryKeyConstraint("partner_id", "object_id"),
    )
    op.create_table(
        "managed_assignments",
        sa.Column("assignment_id", sa.String(length=512), nullable=False),
        sa.Column("subscription_id", sa.String(length=36), nullable=False),
        sa.Column("partner_id", sa.String(length=7), nullable=False),
        sa.Column("principal_id", sa.String(length=36), nullable=False),
        sa.Column("role_definition_id", sa.String(length=512), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("assignment_id"),
    )
    with op.batch_alter_table("managed_assignments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_managed_assignments_subscription_id"), ["subscription_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("managed_assignments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_managed_assignments_subscription_id"))
    op.drop_table("managed_assignments")
    op.drop_table("partner_principals")
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_people_object_id"))
    op.drop_table("people")
