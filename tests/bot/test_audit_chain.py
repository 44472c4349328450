"""The keyed audit chain (issue 15): the attacks that rewrite it, the checkpoints that witness its head, the
key file of an embedded database, and the re-keying of a chain written before keys."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select, update

from bot import audit, audit_keys, checkpoints
from bot.audit import Checkpoint, Entry
from bot.errors import BadInput, Refusal
from bot.logs import JsonFormatter
from bot.settings import ConfigError, Settings, load_settings
from handlers.messages import checkpoint_text
from storage.db import Database
from storage.migrate import upgrade
from storage.models import AuditCheckpoint, AuditEvent, OutboxMessage, utcnow
from tests.bot.tampering import ENTRIES, rewrite, stored, unkeyed_chain
from tests.conftest import AUDIT_KEY

WRONG_KEY = b"not-the-key-of-this-log-0123456789abcdef"
AUDIT_CHANNEL = "C0AUDIT"


async def chain_of_six(db: Database) -> None:
    for start in range(0, len(ENTRIES), 2):
        async with db.write() as session:
            await audit.append_many(session, ENTRIES[start : start + 2])


async def take(db: Database, channel: str | None = None) -> Checkpoint:
    async with db.write() as session:
        point = await checkpoints.take(session, channel, checkpoints.DAILY)
    assert point is not None
    return point


def settings_for(url: str, **env: str) -> Settings:
    return load_settings(DATABASE_URL=url, **env)


# The attack of the issue: an edited event, every later hash recomputed without the key.


@pytest.mark.parametrize("marked", ["key id kept", "marked unkeyed"])
async def test_a_history_recomputed_with_plain_sha256_fails_verify(db: Database, marked: str) -> None:
    await chain_of_six(db)
    kid = (await stored(db))[0].key_id
    assert kid == audit.key_id(AUDIT_KEY.encode())
    await rewrite(db, 4, "U0EVIL", None, kid if marked == "key id kept" else None)
    result = await audit.verify(db)
    assert not result.ok and result.broken_seq == 4
    expected = "was edited" if marked == "key id kept" else "not keyed"
    assert result.problem is not None and expected in result.problem


@pytest.mark.parametrize("marked", ["key id kept", "its own key id"])
async def test_a_history_recomputed_with_hmac_under_a_wrong_key_fails_verify(
    db: Database, marked: str
) -> None:
    await chain_of_six(db)
    kid = (await stored(db))[0].key_id
    await rewrite(db, 4, "U0EVIL", WRONG_KEY, kid if marked == "key id kept" else audit.key_id(WRONG_KEY))
    result = await audit.verify(db)
    assert not result.ok and result.broken_seq == 4
    expected = "was edited" if marked == "key id kept" else f"keyed with key id {audit.key_id(WRONG_KEY)}"
    assert result.problem is not None and expected in result.problem


async def test_verify_with_another_key_names_both_key_ids(db: Database) -> None:
    await chain_of_six(db)
    result = await audit.verify(db, WRONG_KEY)
    assert result.broken_seq == 1
    assert result.problem is not None and audit.key_id(WRONG_KEY) in result.problem


async def test_without_the_key_nothing_is_appended_and_verify_says_so(db: Database) -> None:
    await chain_of_six(db)
    db.audit_key = None
    with pytest.raises(ConfigError, match="DPOR_AUDIT_KEY"):
        async with db.write() as session:
            await audit.append(session, Entry(actor="x", action="partner.added"))
    with pytest.raises(ConfigError, match=r"`audit verify` needs the audit key: set DPOR_AUDIT_KEY"):
        await audit.verify(db)
    assert len(await stored(db)) == 6


# Checkpoints: even a key holder cannot rewrite or truncate history behind a published head.


async def test_an_intact_log_extends_every_checkpoint(db: Database) -> None:
    assert await checkpoints.daily(db, None) is None  # an empty log has no head to publish
    await chain_of_six(db)
    first = await take(db)
    async with db.write() as session:
        await audit.append(session, Entry(actor="U1", action="partner.added", data={"partner_id": "1"}))
    second = await take(db)
    assert (first.seq, second.seq) == (6, 7)
    out = io.StringIO()
    assert await checkpoints.export(db, out) == 2
    exported = checkpoints.read(out.getvalue().splitlines(), "exported")
    assert exported == [first, second]
    assert [set(json.loads(line)) for line in out.getvalue().splitlines()] == [{"seq", "hash", "at"}] * 2
    result = await audit.verify(db, checkpoints=exported)
    assert result.ok and (result.events, result.checkpoints) == (7, 2)


async def test_a_key_holder_rewriting_history_contradicts_a_checkpoint(db: Database) -> None:
    await chain_of_six(db)
    async with db.write() as session:
        await audit.append(session, Entry(actor="U1", action="partner.added"))
    published = [await take(db)]  # seq 7
    await rewrite(db, 3, "U0EVIL", db.audit_key, audit.key_id(AUDIT_KEY.encode()))
    assert (await audit.verify(db)).ok  # the key holder's rewrite verifies on its own...
    result = await audit.verify(db, checkpoints=[Checkpoint(2, (await stored(db))[1].hash, "t"), *published])
    assert not result.ok and result.broken_seq is None  # ...but not against what was published
    assert result.contradicted == published[0]
    assert result.contradiction is not None and "event 7 now has hash" in result.contradiction


async def test_a_truncated_history_contradicts_the_checkpoint_past_its_end(db: Database) -> None:
    await chain_of_six(db)
    middle = await take(db)  # seq 6
    async with db.write() as session:
        await audit.append_many(session, [Entry(actor="U1", action="partner.added")] * 2)
    head = await take(db)  # seq 8
    async with db.write(serial=False) as session:
        await session.execute(delete(AuditEvent).where(AuditEvent.seq > 5))
    assert (await audit.verify(db)).ok  # a shorter chain is still a chain
    result = await audit.verify(db, checkpoints=[head, middle])
    assert result.contradicted == middle  # the first (lowest) checkpoint it contradicts
    assert result.contradiction == "the log ends at event 5 (history was truncated)"


async def test_checkpoints_read_from_the_log_and_the_channel(db: Database) -> None:
    await chain_of_six(db)
    point = await take(db)
    lines = [
        f"2026-12-04 10:00:00,000 INFO dpor.audit: audit checkpoint {point}",
        "2026-12-04 10:00:01,000 INFO dpor: something else",
        f":lock: *Audit checkpoint* `{point}`: dpor-bot's audit log had event 6 ...",
    ]
    assert checkpoints.read(lines, "log") == [point, point]
    with pytest.raises(BadInput, match=r"empty\.txt holds no checkpoints"):
        checkpoints.read(["nothing here"], "empty.txt")
    with pytest.raises(BadInput, match=r"bad.jsonl, line 1: not a checkpoint"):
        checkpoints.read(['{"seq": "x"}'], "bad.jsonl")


async def test_checkpoints_read_from_a_json_log_and_a_slack_export(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """The log with DPOR_LOG_FORMAT=json and the channel's Slack export are JSON, line by line or pretty
    printed: their lines that are no exported checkpoint are read for `seq=N hash=H at=T` like any other."""
    await chain_of_six(db)
    caplog.set_level(logging.INFO, logger="dpor.audit")
    async with db.write() as session:
        point = await checkpoints.take(session, AUDIT_CHANNEL, checkpoints.CLI)
    checkpoints.published(point)  # the log line, as `serve` writes it
    assert point is not None
    as_json = JsonFormatter()
    log_lines = [as_json.format(r) for r in caplog.records if r.name == "dpor.audit"]
    log_lines.insert(0, as_json.format(logging.makeLogRecord({"name": "dpor", "msg": "something else"})))
    assert checkpoints.read(log_lines, "dpor.log") == [point]
    slack_export = json.dumps(
        [{"type": "message", "text": checkpoint_text(point.seq, point.hash, point.at), "ts": "1.2"}], indent=4
    )
    assert checkpoints.read(slack_export.splitlines(), "C0AUDIT/2026-12-04.json") == [point]
    assert (await audit.verify(db, checkpoints=checkpoints.read(log_lines, "dpor.log"))).ok
    # An exported checkpoint's line is still read strictly: a cut one is refused, never skipped.
    with pytest.raises(BadInput, match=r"cut.jsonl, line 1: not a checkpoint"):
        checkpoints.read(['{"seq": 6, "hash": "ab'], "cut.jsonl")
    exported = json.dumps({"seq": point.seq, "hash": point.hash, "at": point.at})
    for cut in ('{"', '{"se', '{"seq'):  # cut before its "seq": the newest checkpoint, gone unsaid
        with pytest.raises(BadInput, match=r"cut.jsonl, line 2: not a checkpoint"):
            checkpoints.read([exported, cut], "cut.jsonl")


async def test_a_daily_checkpoint_once_a_day(db: Database) -> None:
    await chain_of_six(db)
    now = utcnow()
    first = await checkpoints.daily(db, AUDIT_CHANNEL, now=now)
    assert first is not None and first.seq == 6
    assert await checkpoints.daily(db, AUDIT_CHANNEL, now=now + timedelta(hours=23)) is None
    assert await checkpoints.daily(db, AUDIT_CHANNEL, now=now + timedelta(days=1, seconds=1)) is not None
    async with db.read() as session:
        rows = (await session.scalars(select(AuditCheckpoint.reason))).all()
        queued = (
            await session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "checkpoint"))
        ).all()
    assert rows == ["daily", "daily"]
    assert [(m.key, m.payload["seq"], m.payload["hash"]) for m in queued] == [
        (f"channel:{AUDIT_CHANNEL}", 6, first.hash)
    ] * 2


# Migration: a chain written before keys is verified, then re-keyed, and the re-keying is audited.


# audit_events as migration 0002 left it: no key id.
async def test_migrating_an_unkeyed_sqlite_chain_rekeys_it_at_the_start_that_makes_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DPOR_AUDIT_KEY")
    monkeypatch.setattr(Database, "audit_key", None)
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    db = Database(url)
    try:
        await upgrade(db, "0002")  # a database of the version before keys, with its chain
        await unkeyed_chain(db, 3)
        await upgrade(db)
        caplog.set_level(logging.INFO, logger="dpor.audit")
        await audit_keys.prepare(db, settings_for(url))
        key_file = tmp_path / "old.db.audit-key"
        assert db.audit_key == key_file.read_text().strip().encode()
        events = await stored(db)
        assert [e.action for e in events] == ["partner.added"] * 3 + ["audit.rekeyed"]
        assert {e.key_id for e in events} == {audit.key_id(db.audit_key)}
        assert events[3].data["events"] == 3 and events[3].actor == "dpor-bot"
        assert (await audit.verify(db)).ok
        async with db.read() as session:
            (point,) = (await session.scalars(select(AuditCheckpoint))).all()
        assert (point.seq, point.hash, point.reason) == (4, events[3].hash, "rekey")
        assert f"audit checkpoint seq=4 hash={events[3].hash}" in caplog.text
    finally:
        await db.dispose()


async def test_rekey_verifies_first_then_keys_every_event(db: Database) -> None:
    await unkeyed_chain(db)
    before = [e.hash for e in await stored(db)]
    settings = settings_for(db.url)
    problem = await audit_keys.prepare(db, settings, required=False)
    # DPOR_AUDIT_KEY existed before: the chain may have been rewritten without it, so no silent re-keying.
    assert problem is not None and "run `dpor-bot audit rekey`" in problem and db.audit_key is None
    assert await audit_keys.rekey_unkeyed(db, settings) == 5
    events = await stored(db)
    assert [e.hash for e in events[:5]] != before
    assert events[-1].action == "audit.rekeyed"
    assert events[-1].data == {
        "events": 5,
        "key_id": audit.key_id(AUDIT_KEY.encode()),
        "unkeyed_head": before[-1],
    }
    assert (await audit.verify(db)).ok
    assert await audit_keys.rekey_unkeyed(db, settings) == 0  # once


async def test_a_chain_that_does_not_verify_is_not_rekeyed(db: Database) -> None:
    await unkeyed_chain(db)
    async with db.write(serial=False) as session:
        await session.execute(update(AuditEvent).where(AuditEvent.seq == 3).values(actor="U0EVIL"))
    before = [(e.hash, e.key_id) for e in await stored(db)]
    with pytest.raises(Refusal, match=r"does not verify at event 3: .*edited.*not re-keyed"):
        await audit_keys.rekey_unkeyed(db, settings_for(db.url))
    assert [(e.hash, e.key_id) for e in await stored(db)] == before


async def test_a_keyed_log_rewritten_as_an_unkeyed_one_is_not_rekeyed_at_start(db: Database) -> None:
    await chain_of_six(db)
    await rewrite(db, 1, "U0EVIL", None, None)  # the downgrade: a whole history in the old scheme
    with pytest.raises(ConfigError, match=r"not keyed: run `dpor-bot audit rekey` once .* do not re-key"):
        await audit_keys.prepare(db, settings_for(db.url))
    assert db.audit_key is None  # nothing is appended to it
    assert (await audit.verify(db, AUDIT_KEY.encode())).broken_seq == 1


# The key: DPOR_AUDIT_KEY, or the key file beside an embedded database.


async def test_the_key_file_is_made_0600_beside_the_database_and_used_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DPOR_AUDIT_KEY")
    monkeypatch.setattr(Database, "audit_key", None)
    monkeypatch.setattr(os, "umask", os.umask)  # restored whatever happens
    url = f"sqlite+aiosqlite:///{tmp_path / 'dpor-bot.db'}"
    old_umask = os.umask(0o022)
    try:
        first = Database(url)
        await upgrade(first)
        await audit_keys.prepare(first, settings_for(url))
    finally:
        os.umask(old_umask)
    key_file = tmp_path / "dpor-bot.db.audit-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip()) == 64
    await chain_of_six(first)
    await first.dispose()

    again = Database(url)
    try:
        await audit_keys.prepare(again, settings_for(url))
        assert again.audit_key == key_file.read_text().strip().encode()
        assert (await audit.verify(again)).ok
        key_file.rename(tmp_path / "elsewhere")  # lost: the log is keyed, so no new key is made
        with pytest.raises(ConfigError, match=r"its key is missing: DPOR_AUDIT_KEY is not set and .* backup"):
            await audit_keys.prepare(again, settings_for(url))
        assert not key_file.exists()
        with pytest.raises(ConfigError, match="is not the audit log's key"):
            await audit_keys.prepare(again, settings_for(url, DPOR_AUDIT_KEY="x" * 40))
        assert len(await stored(again)) == 6  # history is still readable
    finally:
        await again.dispose()


def test_postgresql_without_DPOR_AUDIT_KEY_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DPOR_AUDIT_KEY")
    url = "postgresql+asyncpg://bot@db.example/dpor"
    problem = audit_keys.resolve(settings_for(url), url, create=True)
    assert problem == (
        "DPOR_AUDIT_KEY must be set: on PostgreSQL the audit log is keyed with it and the bot keeps no key "
        "file (README: Audit log)"
    )


def test_a_short_DPOR_AUDIT_KEY_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(DPOR_AUDIT_KEY="short-secret")
    assert str(caught.value).startswith("DPOR_AUDIT_KEY: expected at least 32 characters")
    assert "short-secret" not in str(caught.value)


@pytest.mark.parametrize("seq", [0, -1])
async def test_an_event_put_below_the_chains_first_position_fails_verify(db: Database, seq: int) -> None:
    """The chain starts at event 1 and `verify` walks it from there; a row written into the table by hand
    at position 0 or below is outside it (and `requests show` would list it as an event): verify fails."""
    await chain_of_six(db)
    first = (await stored(db))[0]
    async with db.write(serial=False) as session:
        await session.execute(
            insert(AuditEvent).values(
                seq=seq,
                at=first.at,
                actor="U0EVIL",
                action="request.approved",
                request_id=1,
                data={},
                prev_hash=audit.GENESIS,
                hash=first.hash,
                key_id=first.key_id,
            )
        )
    result = await audit.verify(db)
    assert not result.ok and result.broken_seq == seq
    assert result.problem is not None and "outside the chain" in result.problem
