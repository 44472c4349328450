"""The audit log: a hash chain that verify() checks event by event, and its export."""

from __future__ import annotations

import csv
import io
import itertools
import json
from datetime import datetime

import pytest
from sqlalchemy import select, text

from bot import audit
from bot.audit import EXPORT_FIELDS, GENESIS, Entry
from storage.db import Database
from storage.models import AuditEvent
from tests.bot.tampering import ENTRIES

SUB = "11111111-2222-3333-4444-555555555555"
# The audit actions DESIGN.md lists.
DESIGN_ACTIONS = {
    "subscription.added",
    "partner.added",
    "subscription.removed",
    "partner.removed",
    "role.granted",
    "role.revoked",
    "request.created",
    "request.approved",
    "request.rejected",
    "request.cancelled",
    "request.expired",
    "approval.denied",
    "apply.started",
    "apply.succeeded",
    "apply.failed",
}


async def chain(db: Database) -> None:
    """Six events in three transactions, as the services append them."""
    for start in range(0, len(ENTRIES), 2):
        async with db.write() as session:
            await audit.append_many(session, ENTRIES[start : start + 2])


async def tamper(db: Database, *statements: str) -> None:
    async with db.write(serial=False) as session:
        for statement in statements:
            await session.execute(text(statement))


async def events(db: Database) -> list[AuditEvent]:
    async with db.read() as session:
        return list((await session.scalars(select(AuditEvent).order_by(AuditEvent.seq))).all())


def test_the_actions_are_those_of_the_design() -> None:
    # partner.drift (reconcile found a target that disagrees with the record), the channel watches
    # (subscribe, unsubscribe) and the re-keying of a chain written before keys (audit.rekeyed) extend
    # the design's list, as do the people links of the Azure role source (person.linked, person.unlinked)
    # and a partner's PAL principals (partner.principal_added), and the waiting events an operator
    # vouched for (audit.accepted), and the dead outbox rows an operator set aside (outbox.discarded); the
    # README lists them.
    added = {"partner.drift", "channel.subscribed", "channel.unsubscribed", "audit.rekeyed", "audit.accepted"}
    added |= {"person.linked", "person.unlinked", "partner.principal_added", "outbox.discarded"}
    assert audit.ACTIONS - added == DESIGN_ACTIONS and added <= audit.ACTIONS


async def test_an_empty_log_verifies(db: Database) -> None:
    result = await audit.verify(db)
    assert (result.ok, result.events) == (True, 0)


async def test_an_intact_chain_verifies(db: Database) -> None:
    await chain(db)
    stored = await events(db)
    assert [e.seq for e in stored] == [1, 2, 3, 4, 5, 6]
    assert [e.action for e in stored] == [entry.action for entry in ENTRIES]
    assert stored[0].prev_hash == GENESIS
    for before, after in itertools.pairwise(stored):
        assert after.prev_hash == before.hash
    assert stored[4].data == {}
    result = await audit.verify(db)
    assert (result.ok, result.events, result.broken_seq) == (True, 6, None)


async def test_an_unknown_action_is_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="unknown audit action"):
        async with db.write() as session:
            await audit.append(session, Entry(actor="x", action="request.deleted"))
    assert await events(db) == []


@pytest.mark.parametrize(
    "statement",
    [
        """UPDATE audit_events SET data = '{"partner_id": "1234566"}' WHERE seq = 3""",
        "UPDATE audit_events SET actor = 'U9' WHERE seq = 3",
        "UPDATE audit_events SET action = 'request.rejected' WHERE seq = 3",
        "UPDATE audit_events SET request_id = 2 WHERE seq = 3",
    ],
    ids=["data", "actor", "action", "request_id"],
)
async def test_an_edited_event_is_named(db: Database, statement: str) -> None:
    await chain(db)
    await tamper(db, statement)
    result = await audit.verify(db)
    assert not result.ok
    assert result.broken_seq == 3
    assert result.problem is not None and "edited" in result.problem


async def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(db: Database) -> None:
    # Even with the key, an edited event's new hash breaks the link its successor holds.
    await chain(db)
    third = (await events(db))[2]
    forged = {**third.data, "partner_id": "1234566"}
    body = audit.canonical(
        third.seq, third.at, third.actor, third.action, third.request_id, third.subscription_id, forged
    )
    async with db.write(serial=False) as session:
        await session.execute(
            text("UPDATE audit_events SET data = :data, hash = :hash WHERE seq = 3"),
            {"data": json.dumps(forged), "hash": audit.chain_hash(third.prev_hash, body, db.audit_key)},
        )
    result = await audit.verify(db)
    assert result.broken_seq == 4
    assert result.problem is not None and "prev_hash" in result.problem


async def test_a_deleted_event_is_named(db: Database) -> None:
    await chain(db)
    await tamper(db, "DELETE FROM audit_events WHERE seq = 3")
    result = await audit.verify(db)
    assert not result.ok
    assert result.broken_seq == 4
    assert result.problem is not None and "missing" in result.problem


async def test_a_reordered_event_is_named(db: Database) -> None:
    await chain(db)
    await tamper(
        db,
        "UPDATE audit_events SET seq = -1 WHERE seq = 2",
        "UPDATE audit_events SET seq = 2 WHERE seq = 4",
        "UPDATE audit_events SET seq = 4 WHERE seq = -1",
    )
    assert [e.action for e in await events(db)][1:4] == [
        "request.approved",
        "request.created",
        "role.granted",
    ]
    result = await audit.verify(db)
    assert not result.ok
    assert result.broken_seq == 2
    assert result.problem is not None and "removed or reordered" in result.problem


async def test_export_jsonl_has_every_event_and_field(db: Database) -> None:
    await chain(db)
    out = io.StringIO()
    assert await audit.export(db, out, "jsonl") == len(ENTRIES)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(rows) == len(ENTRIES)
    stored = await events(db)
    for row, event in zip(rows, stored, strict=True):
        assert set(row) == set(EXPORT_FIELDS)
        assert (row["seq"], row["actor"], row["action"]) == (event.seq, event.actor, event.action)
        assert (row["request_id"], row["subscription_id"]) == (event.request_id, event.subscription_id)
        assert (row["data"], row["prev_hash"], row["hash"]) == (event.data, event.prev_hash, event.hash)
        assert datetime.fromisoformat(row["at"]) == event.at
    assert rows[2]["data"]["reason"] == "naïve café <!channel> & more"


async def test_an_export_verifies_without_the_database(db: Database) -> None:
    # With the key: HMAC-SHA256 over the previous hash and the canonical form.
    await chain(db)
    out = io.StringIO()
    await audit.export(db, out, "jsonl")
    prev = GENESIS
    for line in out.getvalue().splitlines():
        row = json.loads(line)
        body = audit.canonical(
            row["seq"],
            datetime.fromisoformat(row["at"]),
            row["actor"],
            row["action"],
            row["request_id"],
            row["subscription_id"],
            row["data"],
        )
        assert row["prev_hash"] == prev
        assert audit.chain_hash(prev, body, db.audit_key) == row["hash"]
        prev = row["hash"]


async def test_export_csv_has_every_event_and_field(db: Database) -> None:
    await chain(db)
    out = io.StringIO()
    assert await audit.export(db, out, "csv") == len(ENTRIES)
    reader = csv.DictReader(io.StringIO(out.getvalue()))
    assert tuple(reader.fieldnames or ()) == EXPORT_FIELDS
    rows = list(reader)
    stored = await events(db)
    assert [int(r["seq"]) for r in rows] == [e.seq for e in stored]
    assert [r["hash"] for r in rows] == [e.hash for e in stored]
    assert [json.loads(r["data"]) for r in rows] == [e.data for e in stored]
    assert rows[1]["request_id"] == "" and rows[2]["request_id"] == "1"
    assert rows[2]["data"] == json.dumps(ENTRIES[2].data, sort_keys=True, separators=(",", ":"))
