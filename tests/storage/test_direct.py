"""Direct reads (storage/direct.py): on SQLite a read session's hot reads go straight to a driver connection
of the Database's own, and give exactly what the same reads through SQLAlchemy give (types, JSON, aware
times, the entities' state); they take no connection from the pool, see every commit at once, and stop at
`dispose`. A write session and PostgreSQL read through SQLAlchemy, as before."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, inspect, literal, select, union_all, update
from sqlalchemy.exc import DBAPIError, OperationalError

from bot.directory import SubscriptionRow, add_partner, grant_role, upsert_subscriptions
from storage import direct, outbox, queries, readmodel, requests
from storage.db import Database
from storage.models import ChangeRequest, Subscription, utcnow
from tests.storage.test_requests import SUB, new_request

OTHER = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


async def a_decided_request(db: Database) -> int:
    """A request with every kind of column filled: JSON, times, approvals, a waiting card row."""
    rid = await new_request(db, reason="Renewal — ünïcode")
    await upsert_subscriptions(db, [SubscriptionRow(OTHER, "Staging", None)], actor="t")
    await add_partner(db, "1234567", "Contoso <Ltd> & Sons", actor="t")
    await grant_role(db, "UOWNER", "owner", "prod", actor="t")
    async with db.write() as session:
        await requests.add_decision(session, rid, "UOWNER", "approve")
        await requests.add_decision(session, rid, "UOTHER", "reject")
        values = {"result": {"partner_id": "1234567", "nested": [1, None]}, "decided_by": "UOWNER"}
        await session.execute(update(ChangeRequest).where(ChangeRequest.id == rid).values(**values))
        partner = {"partner_id": "1234567", "partner_set_at": utcnow()}
        await session.execute(update(Subscription).where(Subscription.id == SUB).values(**partner))
        rows = [{"kind": "card", "key": f"request:{rid}", "payload": {"request_id": rid}}] * 2
        await outbox.insert_rows(session, rows)
    return rid


def columns(instance: Any) -> dict[str, Any]:
    return {prop.key: getattr(instance, prop.key) for prop in inspect(type(instance)).column_attrs}


async def the_reads(session: Any, rid: int) -> dict[str, Any]:
    found = await requests.with_subscription(session, rid)
    assert found is not None and found[1] is not None
    overview = await queries.subscription_overview(session, "prod")
    assert overview is not None and overview[2] is not None
    none = await queries.subscription_overview(session, OTHER)
    assert none is not None and none[2] is None
    snap = await readmodel.of(session)
    return {
        "request": columns(found[0]),
        "subscription": columns(found[1]),
        "overview": (columns(overview[0]), overview[1], columns(overview[2])),
        "without": (columns(none[0]), none[1]),
        "missing": await requests.with_subscription(session, rid + 1000),
        "nobody": await queries.subscription_overview(session, "nope"),
        "approvals": await requests.approvals(session, rid),
        "newest": await outbox.newest_waiting(session, f"request:{rid}", "card"),
        "no_row": await outbox.newest_waiting(session, "request:0", "card"),
        "version": snap.version if snap is not None else None,
    }


async def test_a_direct_read_gives_what_a_read_through_sqlalchemy_gives(db: Database) -> None:
    rid = await a_decided_request(db)
    async with db.read() as session:
        assert (direct.reader(session) is not None) == db.is_sqlite
        fast = await the_reads(session, rid)
    async with db.write() as session:
        assert direct.reader(session) is None  # a write sees its own changes: through its transaction
        slow = await the_reads(session, rid)
    assert fast == slow
    req = fast["request"]
    assert req["result"] == {"partner_id": "1234567", "nested": [1, None]}  # JSON, not its text
    assert req["reason"] == "Renewal — ünïcode"
    assert req["created_at"].utcoffset() == timedelta(0)  # aware UTC, as UTCDateTime gives it
    assert fast["overview"][1] == "Contoso <Ltd> & Sons"
    assert [who for who, _ in fast["approvals"]] == ["UOWNER"]
    assert fast["approvals"][0][1].utcoffset() == timedelta(0)
    assert fast["newest"] is not None and fast["no_row"] is None


async def test_an_entity_read_directly_is_detached_with_its_identity(db: Database) -> None:
    """As every instance a read loaded is once its session closed: added to a write session, it is the
    row it was read from (an UPDATE), never a new one."""
    rid = await a_decided_request(db)
    async with db.read() as session:
        found = await requests.with_subscription(session, rid)
    assert found is not None and found[1] is not None
    req, sub = found
    for instance, cls in ((req, ChangeRequest), (sub, Subscription)):
        state = inspect(instance)
        assert state.detached and not state.modified
        assert state.key == inspect(cls).identity_key_from_instance(instance)
    async with db.write() as session:
        merged = await session.merge(req)
        merged.reason = "merged back"
    async with db.read() as session:
        again = await requests.with_subscription(session, rid)
    assert again is not None and again[0].reason == "merged back"


async def test_a_direct_read_takes_nothing_from_the_pool_and_sees_every_commit_at_once(
    db: Database, database_url: str
) -> None:
    if not db.is_sqlite:
        pytest.skip("SQLite only: PostgreSQL reads through the pool")
    rid = await a_decided_request(db)
    checkouts: list[object] = []
    listener = lambda *args: checkouts.append(args)  # noqa: E731
    event.listen(db.engine.sync_engine.pool, "checkout", listener)
    other = Database(database_url)  # another process, say the CLI
    try:
        for status in ("approved", "applying", "applied"):
            async with other.write() as session:
                await session.execute(
                    update(ChangeRequest).where(ChangeRequest.id == rid).values(status=status)
                )
            async with db.read() as session:
                found = await requests.with_subscription(session, rid)
                overview = await queries.subscription_overview(session, "prod")
            assert found is not None and found[0].status == status
            assert overview is not None and (overview[2] is None) == (status == "applied")
        assert checkouts == []
    finally:
        event.remove(db.engine.sync_engine.pool, "checkout", listener)
        await other.dispose()


async def test_dispose_closes_the_direct_connection_and_a_later_read_opens_another(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("SQLite only")
    rid = await a_decided_request(db)
    async with db.read() as session:
        reader = direct.reader(session)
    assert reader is not None
    await db.dispose()
    with pytest.raises(DBAPIError):
        direct.rows(reader, direct.query(requests._APPROVED_BY), {"request_id": rid})
    async with db.read() as session:
        assert direct.reader(session) not in (None, reader)
        assert [who for who, _ in await requests.approvals(session, rid)] == ["UOWNER"]


async def test_a_direct_read_fails_as_sqlalchemys_error_whichever_row_fails(db: Database) -> None:
    """SQLite reads a SELECT's first row at execute and the others as they are fetched: an error on a later
    row (here abs() overflowing on the second) comes out as SQLAlchemy's, as it does through the session."""
    if not db.is_sqlite:
        pytest.skip("SQLite only")
    numbers = union_all(select(literal(1).label("n")), select(literal(-(2**63)).label("n"))).subquery()
    statement = select(func.abs(numbers.c.n))
    async with db.read() as session:
        reader = direct.reader(session)
        assert reader is not None
        with pytest.raises(OperationalError, match="integer overflow"):
            await session.execute(statement)
        with pytest.raises(OperationalError, match="integer overflow"):
            direct.rows(reader, direct.Query(statement), {})
