"""What an attacker with the database does to the audit log, and the log's sample events: shared by the
audit tests of tests/bot and tests/e2e."""

from __future__ import annotations

from sqlalchemy import JSON, column, insert, select, table, update

from bot import audit
from bot.audit import Entry
from storage.db import Database
from storage.models import AuditEvent, UTCDateTime, utcnow

SUB = "11111111-2222-3333-4444-555555555555"

ENTRIES = [
    Entry(actor="operator", action="subscription.added", subscription_id=SUB, data={"name": "Prod"}),
    Entry(actor="operator", action="role.granted", data={"user_id": "U1", "role": "owner", "scope": "*"}),
    Entry(
        actor="U2",
        action="request.created",
        request_id=1,
        subscription_id=SUB,
        data={"partner_id": "4977985", "reason": "naïve café <!channel> & more"},
    ),
    Entry(actor="U1", action="request.approved", request_id=1, subscription_id=SUB, data={"final": True}),
    Entry(actor="dpor-bot", action="apply.started", request_id=1, subscription_id=SUB),
    Entry(actor="dpor-bot", action="apply.succeeded", request_id=1, subscription_id=SUB, data={"n": 1.5}),
]


async def stored(db: Database) -> list[AuditEvent]:
    async with db.read() as session:
        return list((await session.scalars(select(AuditEvent).order_by(AuditEvent.seq))).all())


async def rewrite(db: Database, seq: int, actor: str, key: bytes | None, key_id: str | None) -> None:
    """What an attacker with the database does: edit event `seq`, then recompute every hash from it on
    (`key`: HMAC under that key; None: the plain SHA-256), each event marked with `key_id`."""
    events = await stored(db)
    prev = events[seq - 2].hash if seq > 1 else audit.GENESIS
    async with db.write(serial=False) as session:
        for event in events[seq - 1 :]:
            if event.seq == seq:
                event.actor = actor
            body = audit.canonical(
                event.seq,
                event.at,
                event.actor,
                event.action,
                event.request_id,
                event.subscription_id,
                event.data,
            )
            digest = audit.chain_hash(prev, body, key)
            await session.execute(
                update(AuditEvent)
                .where(AuditEvent.seq == event.seq)
                .values(actor=event.actor, prev_hash=prev, hash=digest, key_id=key_id)
            )
            prev = digest


OLD_EVENTS = table(
    "audit_events",
    *(
        column(name)
        for name in ("seq", "actor", "action", "request_id", "subscription_id", "prev_hash", "hash")
    ),
    column("at", UTCDateTime()),
    column("data", JSON()),
)


async def unkeyed_chain(db: Database, count: int = 5) -> None:
    """Events as the bot wrote them before migration 0003: plain SHA-256 (no key id)."""
    prev, at = audit.GENESIS, utcnow()
    rows = []
    for seq in range(1, count + 1):
        data = {"n": seq, "reason": "naïve"}
        digest = audit.chain_hash(
            prev, audit.canonical(seq, at, "cli:ops", "partner.added", None, None, data)
        )
        rows.append({"seq": seq, "at": at, "actor": "cli:ops", "action": "partner.added", "data": data})
        rows[-1].update(request_id=None, subscription_id=None, prev_hash=prev, hash=digest)
        prev = digest
    async with db.write(serial=False) as session:
        await session.execute(insert(OLD_EVENTS), rows)
