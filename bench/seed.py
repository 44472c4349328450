"""Benchmark data: a small database through the bot's own services, a large one through bulk inserts."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import insert, select

from bot import audit, directory
from handlers import replies
from sandbox.signing import block_actions_body, slash_command_body
from storage import directory as store
from storage import queries
from storage.db import Database
from storage.migrate import upgrade
from storage.models import AuditEvent, ChangeRequest, Subscription, utcnow

TEAM = "T0DPOR"  # the Slack stand-in's workspace
ADMIN, OWNER, BYSTANDER = "U0BENCHADM", "U0BENCHOWN", "U0BENCHBY"
NEW_PARTNER, OLD_PARTNER = "4977985", "1234566"
PROD_ALIAS = "bench-0"
# The benchmark's audit key (its data is made up): run.py hands it to `dpor-bot serve` as DPOR_AUDIT_KEY.
AUDIT_KEY = "dpor-bot bench: made-up data, a key that is no secret"


def sub_id(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-{n:012x}"


async def small(url: str, *, subscriptions: int) -> None:
    db = Database(url, audit_key=AUDIT_KEY.encode())
    await upgrade(db)
    rows = [
        directory.SubscriptionRow(sub_id(i), f"Bench subscription {i}", f"bench-{i}")
        for i in range(subscriptions)
    ]
    await directory.upsert_subscriptions(db, rows, actor="bench")
    await directory.add_partner(db, NEW_PARTNER, "Contoso MSP", actor="bench")
    await directory.add_partner(db, OLD_PARTNER, "Fabrikam Consulting", actor="bench")
    await directory.grant_role(db, ADMIN, "admin", None, actor="bench")
    await directory.grant_role(db, OWNER, "owner", None, actor="bench")
    await db.dispose()


async def open_subscriptions(url: str, *, limit: int) -> list[str]:
    """Subscriptions with no open request (so `set` on each one opens a request)."""
    db = Database(url, audit_key=AUDIT_KEY.encode())
    async with db.read() as session:
        busy = select(ChangeRequest.subscription_id).where(ChangeRequest.status.in_(queries.OPEN_STATUSES))
        ids = (
            await session.scalars(
                select(Subscription.id)
                .where(Subscription.id.not_in(busy))
                .order_by(Subscription.id)
                .limit(limit)
            )
        ).all()
    await db.dispose()
    return list(ids)


async def pending_request_ids(url: str) -> list[int]:
    db = Database(url, audit_key=AUDIT_KEY.encode())
    async with db.read() as session:
        ids = (
            await session.scalars(
                select(ChangeRequest.id).where(ChangeRequest.status == "pending").order_by(ChangeRequest.id)
            )
        ).all()
    await db.dispose()
    return list(ids)


async def _bulk(db: Database, model: type, rows: list[dict], chunk: int = 5000) -> None:
    for start in range(0, len(rows), chunk):
        async with db.write(serial=False) as session:
            await session.execute(insert(model), rows[start : start + chunk])


async def large(
    url: str, *, subscriptions: int = 100_000, requests: int = 100_000, events: int = 1_000_000
) -> None:
    """100,000 subscriptions, 100,000 decided requests and a valid chain of 1,000,000 audit events."""
    await small(url, subscriptions=subscriptions)
    db = Database(url, audit_key=AUDIT_KEY.encode())
    now = utcnow()
    statuses = ("applied", "rejected", "cancelled", "expired")
    await _bulk(
        db,
        ChangeRequest,
        [
            {
                "team_id": TEAM,
                "subscription_id": sub_id(i % subscriptions),
                "partner_id": OLD_PARTNER,
                "previous_partner_id": None,
                "requester_id": ADMIN,
                "reason": "history",
                "status": statuses[i % 4],
                "created_at": now - timedelta(days=365) + timedelta(seconds=i),
                "updated_at": now,
                "expires_at": now - timedelta(days=300),
                "apply_attempts": 0,
            }
            for i in range(requests)
        ],
    )
    async with db.read() as session:
        tip = (
            await session.execute(
                select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
            )
        ).one()
    seq, prev = tip.seq, tip.hash
    key = AUDIT_KEY.encode()
    kid = audit.key_id(key)
    batch: list[dict] = []
    for i in range(events - seq):
        seq += 1
        data = {"partner_id": OLD_PARTNER, "n": i}
        body = audit.canonical(
            seq, now, ADMIN, "request.created", i % requests + 1, sub_id(i % subscriptions), data
        )
        digest = audit.chain_hash(prev, body, key)
        batch.append(
            {
                "seq": seq,
                "at": now,
                "actor": ADMIN,
                "action": "request.created",
                "request_id": i % requests + 1,
                "subscription_id": sub_id(i % subscriptions),
                "data": data,
                "prev_hash": prev,
                "hash": digest,
                "key_id": kid,
            }
        )
        prev = digest
        if len(batch) == 20_000:
            await _bulk(db, AuditEvent, batch, chunk=20_000)
            batch = []
    if batch:
        await _bulk(db, AuditEvent, batch, chunk=20_000)
    if not db.is_sqlite:
        # A database this size has long been vacuumed and analysed; do it now, rather than measure beside
        # autovacuum catching up on a million new rows (it shares the machine's two cores).
        async with db.engine.connect() as conn:
            await (await conn.execution_options(isolation_level="AUTOCOMMIT")).exec_driver_sql(
                "VACUUM ANALYZE"
            )
    await db.dispose()


async def list_sizes(url: str) -> dict[str, dict]:
    """Time and size of the list answers on the large database: they must stay within Slack's limits."""
    db = Database(url, audit_key=AUDIT_KEY.encode())
    out: dict[str, dict] = {}
    async with db.read() as session:
        started = time.perf_counter()
        page = await queries.subscriptions_page(session, limit=replies.PAGE_SIZE, offset=0)
        names = await store.partner_names(session, [s.partner_id for s in page.items])
        out["list"] = _measure(replies.subscriptions(page, names), started)

        started = time.perf_counter()
        page = await queries.requests_page(session, statuses=queries.OPEN_STATUSES, limit=replies.PAGE_SIZE)
        subs = await queries.subscriptions_by_id(session, {r.subscription_id for r in page.items})
        out["pending"] = _measure(replies.pending(page, subs), started)

        started = time.perf_counter()
        sub = await session.get(Subscription, sub_id(1))
        assert sub is not None
        page = await queries.requests_page(session, subscription_id=sub.id, limit=replies.PAGE_SIZE)
        out["history"] = _measure(replies.history(sub, page, "/dpor history"), started)
    await db.dispose()
    return out


def _measure(reply: replies.Reply, started: float) -> dict:
    ack = reply.to_ack()
    blocks = ack.get("blocks", [])
    # Slack's limit counts the section's characters, not their JSON encoding (`→` is one, not six).
    longest = max((len(b.get("text", {}).get("text", "")) for b in blocks), default=0)
    return {
        "ms": round((time.perf_counter() - started) * 1000, 1),
        "blocks": len(blocks),
        "longest_section": longest,
    }


def set_bodies(subscriptions: Iterable[str]) -> Iterable[str]:
    """`/dpor set` to NEW_PARTNER on each subscription, by the admin."""
    for sub in subscriptions:
        yield slash_command_body(f"set {sub} {NEW_PARTNER} bench", user_id=ADMIN, team_id=TEAM)


def approve_bodies(request_ids: Iterable[int], channel: str) -> Iterable[str]:
    """An owner's Approve click on the card of each request (posted in `channel`)."""
    for rid in request_ids:
        yield block_actions_body(
            "dpor_approve", str(rid), user_id=OWNER, team_id=TEAM, channel_id=channel, message_ts="1.000001"
        )
