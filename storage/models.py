"""The database schema: SQLAlchemy 2 typed models shared by the bot, the CLI and the migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class RequestStatus(StrEnum):
    """A change request's state (DESIGN.md: the change request). Stored as its string value."""

    PENDING = "pending"
    APPROVED = "approved"
    APPLYING = "applying"
    APPLIED = "applied"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


# At most one request per subscription is open (a partial unique index enforces it).
OPEN_STATUSES: tuple[str, ...] = (RequestStatus.PENDING, RequestStatus.APPROVED, RequestStatus.APPLYING)
ALL_SUBSCRIPTIONS = "*"


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are stored and returned as aware UTC datetimes on every engine."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def is_postgresql(session: AsyncSession) -> bool:
    """Whether this session talks to PostgreSQL (else SQLite)."""
    return session.get_bind().dialect.name == "postgresql"


class Base(DeclarativeBase):
    pass


class Subscription(Base):
    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    alias: Mapped[str | None] = mapped_column(String(64), unique=True)
    # The partner of record as this bot last applied or observed it (the ledger).
    partner_id: Mapped[str | None] = mapped_column(String(7))
    partner_set_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The partner provider for this subscription; None means DPOR_PROVIDER.
    provider: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Partner(Base):
    __tablename__ = "partners"

    partner_id: Mapped[str] = mapped_column(String(7), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RoleAssignment(Base):
    __tablename__ = "role_assignments"
    __table_args__ = (UniqueConstraint("user_id", "role", "scope", name="uq_role_assignment"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(32), index=True)
    role: Mapped[str] = mapped_column(String(16))
    # A subscription id, or "*" for every subscription (a sentinel rather than NULL so the
    # unique constraint holds on every engine).
    scope: Mapped[str] = mapped_column(String(36))
    granted_by: Mapped[str] = mapped_column(String(64))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Person(Base):
    """A Slack user linked by an operator to a Microsoft Entra object ID (never inferred from an email)."""

    __tablename__ = "people"

    slack_user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    object_id: Mapped[str] = mapped_column(String(36), index=True)
    upn: Mapped[str | None] = mapped_column(String(256))
    linked_by: Mapped[str] = mapped_column(String(64))
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PartnerPrincipal(Base):
    """A principal (user or service principal) a partner linked its Partner ID to with PAL."""

    __tablename__ = "partner_principals"

    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.partner_id"), primary_key=True)
    object_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    added_by: Mapped[str] = mapped_column(String(64))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ManagedAssignment(Base):
    """A role assignment dpor-bot created to credit a partner (the azure-rbac provider); removed_at once
    dpor-bot removed it for the next partner."""

    __tablename__ = "managed_assignments"

    assignment_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(36), index=True)
    partner_id: Mapped[str] = mapped_column(String(7))
    principal_id: Mapped[str] = mapped_column(String(36))
    role_definition_id: Mapped[str] = mapped_column(String(512))
    request_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ChangeRequest(Base):
    __tablename__ = "change_requests"
    __table_args__ = (
        Index(
            "uq_open_request_per_subscription",
            "subscription_id",
            unique=True,
            sqlite_where=text("status IN ('pending', 'approved', 'applying')"),
            postgresql_where=text("status IN ('pending', 'approved', 'applying')"),
        ),
        Index("ix_change_requests_status_expires", "status", "expires_at"),
        Index("ix_change_requests_subscription_created", "subscription_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    team_id: Mapped[str] = mapped_column(String(32))
    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id"))
    partner_id: Mapped[str] = mapped_column(String(7))
    previous_partner_id: Mapped[str | None] = mapped_column(String(7))
    requester_id: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(String(32))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    apply_attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # Why the decider decided so, in their words: a rejection's reason (shown on the card and in DMs).
    decision_note: Mapped[str | None] = mapped_column(Text)
    # What the provider says after applying (identity carrying the link, partner name, ...).
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    card_channel: Mapped[str | None] = mapped_column(String(32))
    card_ts: Mapped[str | None] = mapped_column(String(32))
    reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Approval(Base):
    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("request_id", "approver_id", name="uq_one_decision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("change_requests.id"), index=True)
    approver_id: Mapped[str] = mapped_column(String(32))
    decision: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    # Assigned by the audit module as tip + 1 under the chain lock, so the chain has no gaps.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32), index=True)
    request_id: Mapped[int | None] = mapped_column(Integer, index=True)
    subscription_id: Mapped[str | None] = mapped_column(String(36), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # The hash scheme: the id of the HMAC-SHA256 key (storage.audit.key_id), or None for the plain
    # SHA-256 of events written before the chain was keyed (migration 0003; re-keyed at start).
    key_id: Mapped[str | None] = mapped_column(String(16))


class AuditPending(Base):
    """On PostgreSQL, an audit event committed but not chained yet: write transactions insert here, in
    parallel, and the sealer (storage.audit.seal) chains these in order into audit_events, under the chain
    lock, moments later. SQLite chains in the write transaction itself (it has one writer at a time)."""

    __tablename__ = "audit_pending"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[int | None] = mapped_column(Integer)
    subscription_id: Mapped[str | None] = mapped_column(String(36))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The writer's proof that the row is the bot's, as written (storage.audit.pending_mac): the sealer
    # chains no row without it, so a row inserted or edited in the database is never chained.
    mac: Mapped[str | None] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A head of the audit chain (position and hash) as it was published outside the database."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # What took it: an applied change, the daily sweep, or the re-keying of the chain.
    reason: Mapped[str] = mapped_column(String(16))


class OutboxMessage(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "status", "available_at"),
        Index("ix_outbox_key", "key", "id"),
        # The rows of a status by key, in order: a claim reads the first waiting row of each key here,
        # without a sort (storage/outbox.py).
        Index("ix_outbox_waiting", "status", "key", "id", "kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    # Rows sharing a key are delivered one at a time, in id order (a card's post before its update), except
    # that a card's update waits only for the card's earlier rows, not its thread's steps (storage/outbox.py).
    key: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ChannelWatch(Base):
    """A channel that ran `/dpor subscribe`: it gets change notifications for a subscription or all."""

    __tablename__ = "channel_watches"
    __table_args__ = (UniqueConstraint("channel_id", "scope", name="uq_channel_watch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32), index=True)
    scope: Mapped[str] = mapped_column(String(36))
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReadModelVersion(Base):
    """One row: a counter that triggers bump on every change to what processes keep in memory
    (subscriptions' identity, partners, roles, watches; migration 0006, bot.readmodel)."""

    __tablename__ = "read_model_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class SeenRequest(Base):
    """A signed request the HTTP edge has let through, kept while Slack's window would accept it again.

    `digest` is the SHA-256 of its `X-Slack-Signature`; `signed_at` its signed timestamp.
    """

    __tablename__ = "seen_requests"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
