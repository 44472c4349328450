"""Witnessed checkpoints end to end: an applied change publishes the chain's head in DPOR_AUDIT_CHANNEL and
the log; the operator's `dpor-bot audit` commands (subprocesses) export the checkpoints and prove the
database still extends them, also against someone with the key; the key file and the re-keying at the CLI."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

from bot import audit, checkpoints
from bot.settings import normalise_database_url
from storage.db import Database
from storage.models import AuditCheckpoint, AuditEvent
from tests.bot.tampering import rewrite, unkeyed_chain
from tests.conftest import AUDIT_KEY
from tests.harness import ADMIN, NEW_PARTNER, OWNER, Harness
from tests.processes import cli, free_port

AUDIT_CHANNEL = "C0AUDIT"


@pytest.fixture
def bot_env() -> dict[str, Any]:
    return {"DPOR_AUDIT_CHANNEL": AUDIT_CHANNEL}


async def test_an_applied_change_publishes_the_head_in_the_audit_channel_and_the_log(
    harness_any_db: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness = harness_any_db
    caplog.set_level(logging.INFO, logger="dpor.audit")
    await harness.command(f"set prod {NEW_PARTNER} Contoso runs it", ADMIN)
    await harness.card(1)
    await harness.click("dpor_approve", 1, OWNER)
    await harness.settle()
    assert (await harness.request(1)).status == "applied"

    db = harness.bot.db
    async with db.read() as session:
        head = (await session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1))).one()
        taken = (
            await session.scalars(select(AuditCheckpoint).where(AuditCheckpoint.reason == checkpoints.APPLY))
        ).all()
    assert head.action == "apply.succeeded"
    assert [(c.seq, c.hash) for c in taken] == [(head.seq, head.hash)]
    line = f"seq={head.seq} hash={head.hash} at="
    posted = [m.text for m in harness.slack.messages(AUDIT_CHANNEL)]
    assert any(line in text for text in posted), posted
    assert f"audit checkpoint {line}" in caplog.text

    # What the channel holds is enough to prove the database still extends that head.
    published = checkpoints.read(posted, "the audit channel")
    assert (await audit.verify(db, checkpoints=published)).ok


# The operator's commands, as subprocesses.


def environment(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DPOR_", "DATABASE_URL"))}
    return {**env, "DATABASE_URL": database_url, **extra}


async def dpor_bot(env: dict[str, str], cwd: Path, *args: str) -> str:
    code, out, err = await cli(env, cwd, *args)
    assert code == 0, f"exit {code}\nstdout: {out}\nstderr: {err}"
    return out


async def refused(env: dict[str, str], cwd: Path, *args: str) -> str:
    code, _, err = await cli(env, cwd, *args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, (code, err)
    assert lines[0].startswith("error: ")
    return lines[0]


async def test_checkpoints_exported_prove_the_history_against_a_key_holder(tmp_path: Path) -> None:
    path = tmp_path / "dpor-bot.db"
    env = environment(f"sqlite:///{path}")  # no DPOR_AUDIT_KEY: the key file beside the database
    await dpor_bot(env, tmp_path, "partners", "add", NEW_PARTNER, "--name", "Contoso")
    key_file = tmp_path / "dpor-bot.db.audit-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first = (await dpor_bot(env, tmp_path, "audit", "checkpoint")).strip()
    await dpor_bot(env, tmp_path, "roles", "grant", OWNER, "owner")
    await dpor_bot(env, tmp_path, "roles", "grant", ADMIN, "admin")
    second = (await dpor_bot(env, tmp_path, "audit", "checkpoint")).strip()
    assert first.startswith("audit checkpoint seq=1 hash=") and second.startswith("audit checkpoint seq=3 ")

    exported = await dpor_bot(env, tmp_path, "audit", "checkpoints")
    rows = [json.loads(line) for line in exported.splitlines()]
    assert [(r["seq"], f"audit checkpoint seq={r['seq']} hash={r['hash']} at={r['at']}") for r in rows] == [
        (1, first),
        (3, second),
    ]
    (tmp_path / "checkpoints.jsonl").write_text(exported)
    (tmp_path / "published.log").write_text(
        f"INFO dpor.audit: {first}\nINFO dpor: other\nINFO dpor.audit: {second}\n"
    )
    for file in ("checkpoints.jsonl", "published.log"):
        out = await dpor_bot(env, tmp_path, "audit", "verify", "--checkpoints", file)
        assert out == "audit chain intact: 3 events; it extends all 2 checkpoints given\n"

    # Someone with the database and the key rewrites event 2 and recomputes every hash after it.
    url = normalise_database_url(f"sqlite:///{path}")
    key = key_file.read_text().strip().encode()
    db = Database(url, audit_key=key)
    try:
        await rewrite(db, 2, "U0EVIL", key, audit.key_id(key))
    finally:
        await db.dispose()
    assert await dpor_bot(env, tmp_path, "audit", "verify") == "audit chain intact: 3 events\n"
    line = await refused(env, tmp_path, "audit", "verify", "--checkpoints", "published.log")
    assert line.startswith(
        f"error: the audit log contradicts {second.removeprefix('audit ')}: event 3 now has"
    )
    assert line.endswith("not the published one (history was rewritten)")

    # ... or truncates it: the checkpoint past the new end is named.
    db = Database(url, audit_key=key)
    try:
        async with db.write(serial=False) as session:
            await session.execute(delete(AuditEvent).where(AuditEvent.seq > 1))
    finally:
        await db.dispose()
    line = await refused(env, tmp_path, "audit", "verify", "--checkpoints", "checkpoints.jsonl")
    assert line == (
        f"error: the audit log contradicts {second.removeprefix('audit ')}: the log ends at event 1 "
        "(history was truncated)"
    )
    assert "no checkpoints" in await refused(env, tmp_path, "audit", "verify", "--checkpoints", "/dev/null")


async def test_the_cli_rekeys_an_unkeyed_chain_once_and_verify_needs_the_key(
    database_url: str, tmp_path: Path
) -> None:
    db = Database(database_url)
    try:
        await unkeyed_chain(db, 4)
    finally:
        await db.dispose()
    env = environment(database_url, DPOR_AUDIT_KEY=AUDIT_KEY)
    line = await refused(env, tmp_path, "audit", "verify")
    assert "holds events that are not keyed: run `dpor-bot audit rekey` once" in line
    assert "not keyed" in await refused(env, tmp_path, "partners", "add", NEW_PARTNER, "--name", "Contoso")
    assert (
        await dpor_bot(env, tmp_path, "audit", "rekey") == "audit log re-keyed: 4 events verified and keyed\n"
    )
    assert (
        await dpor_bot(env, tmp_path, "audit", "rekey")
        == "the audit log is keyed already: nothing to re-key\n"
    )
    assert await dpor_bot(env, tmp_path, "audit", "verify") == "audit chain intact: 5 events\n"
    exported = [json.loads(line) for line in (await dpor_bot(env, tmp_path, "audit", "export")).splitlines()]
    assert exported[-1]["action"] == "audit.rekeyed" and exported[-1]["data"]["events"] == 4

    wrong = await refused({**env, "DPOR_AUDIT_KEY": "y" * 40}, tmp_path, "audit", "verify")
    assert wrong.startswith("error: DPOR_AUDIT_KEY is not the audit log's key")
    if database_url.startswith("postgresql"):
        missing = await refused(environment(database_url), tmp_path, "audit", "verify")
        assert missing.startswith("error: DPOR_AUDIT_KEY must be set: on PostgreSQL")
        # History stays readable without the key.
        assert len((await dpor_bot(environment(database_url), tmp_path, "audit", "export")).splitlines()) == 5


async def test_serve_on_postgresql_without_DPOR_AUDIT_KEY_stops_in_one_line(
    database_url: str, tmp_path: Path
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("an embedded database makes its key file instead")
    env = environment(database_url, SLACK_BOT_TOKEN="xoxb-x", SLACK_SIGNING_SECRET="s")
    line = await refused(env, tmp_path, "serve", "--port", str(free_port()))
    assert line == (
        "error: DPOR_AUDIT_KEY must be set: on PostgreSQL the audit log is keyed with it and the bot keeps "
        "no key file (README: Audit log)"
    )
