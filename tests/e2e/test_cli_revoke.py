"""Roles changed from the CLI while `dpor-bot serve` runs take effect at the next click: an owner revoked
by `dpor-bot roles revoke` is refused (privately, and `approval.denied` is audited), and an owner granted
by `dpor-bot roles grant` is obeyed. Both engines. Today every click reads the roles from the database;
this guards any in-memory read model of them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from sandbox.standin import SlackStandin
from storage.db import Database
from storage.models import AuditEvent, ChangeRequest
from tests.conftest import AUDIT_KEY
from tests.harness import ADMIN, APPROVALS, NEW_PARTNER, NOTIFY, OWNER, SECRET, TEAM, TOKEN, seed
from tests.processes import DPOR_BOT, cli, free_port, wait_healthy
from tests.slack import SignedSlackClient

NEWCOMER = "U0NEWOWNER"


async def audit_actions(db: Database) -> list[str]:
    async with db.read() as session:
        return list((await session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq))).all())


async def request_of(db: Database, rid: int) -> ChangeRequest:
    async with db.read() as session:
        req = await session.get(ChangeRequest, rid)
    assert req is not None
    return req


async def until(what: str, check, within: float = 10.0) -> None:
    for _ in range(int(within / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {what} after {within}s")


@pytest.fixture
async def served(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[SlackStandin, SignedSlackClient, dict, str]]:
    """`dpor-bot serve` on a seeded database: the stand-in, a signed client, the env and the events URL."""
    db = Database(database_url)
    await seed(db)
    await db.dispose()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DPOR_", "DATABASE_URL"))}
    async with SlackStandin(bot_token=TOKEN) as slack, SignedSlackClient(SECRET) as signed:
        env = {
            **base,
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack.base_url,
            "DATABASE_URL": database_url,
            "DPOR_AUDIT_KEY": AUDIT_KEY,
            "DPOR_APPROVAL_CHANNEL": APPROVALS,
            "DPOR_NOTIFY_CHANNELS": NOTIFY,
            "DPOR_OUTBOX_POLL_INTERVAL": "0.05",
        }
        port = free_port()
        log = (tmp_path / "serve.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            DPOR_BOT, "serve", "--port", str(port), env=env, cwd=tmp_path, stdout=log, stderr=log
        )
        try:
            await wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
            yield slack, signed, env, f"http://127.0.0.1:{port}/slack/events"
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 15)
            log.close()
        assert "Traceback" not in (tmp_path / "serve.log").read_text(errors="replace")


async def test_roles_changed_from_the_cli_hold_at_the_next_click(
    served: tuple[SlackStandin, SignedSlackClient, dict, str], database_url: str, tmp_path: Path
) -> None:
    slack, signed, env, events = served
    db = Database(database_url)
    try:
        status, body = await signed.command(events, f"set prod {NEW_PARTNER} new MSP", ADMIN, team_id=TEAM)
        assert status == 200 and "Request #1" in body["text"], body

        async def card_posted() -> bool:
            return (await request_of(db, 1)).card_ts is not None

        await until("the card posted", card_posted)
        card_ts = (await request_of(db, 1)).card_ts

        async def click(user: str) -> None:
            status, _ = await signed.click(
                events,
                "dpor_approve",
                "1",
                user,
                team_id=TEAM,
                channel_id=APPROVALS,
                message_ts=card_ts,
                response_url=slack.response_url(f"click-{user}", channel=APPROVALS, user=user),
            )
            assert status == 200

        # Another owner first (revoking the last owner of prod is refused without --force), then the revoke.
        for args in (("grant", NEWCOMER), ("revoke", OWNER)):
            code, _, err = await cli(env, tmp_path, "roles", *args, "owner", "--subscription", "prod")
            assert code == 0, err

        await click(OWNER)  # the next click, with serve running all along

        async def answered() -> bool:
            return bool(slack.ephemerals(OWNER))

        await until("the revoked owner answered", answered)
        assert "Only an owner" in slack.ephemerals(OWNER)[-1].text, slack.ephemerals(OWNER)[-1].text
        req = await request_of(db, 1)
        assert (req.status, req.decided_by) == ("pending", None)
        actions = await audit_actions(db)
        assert actions.count("approval.denied") == 1 and "request.approved" not in actions, actions

        await click(NEWCOMER)  # granted from the CLI a moment ago: obeyed

        async def applied() -> bool:
            req = await request_of(db, 1)
            return req.status == "applied" and "Applied" in json.dumps(
                slack.message(APPROVALS, card_ts).blocks
            )

        await until("applied", applied)
        assert (await request_of(db, 1)).decided_by == NEWCOMER
        code, out, err = await cli(env, tmp_path, "audit", "verify")
        assert code == 0 and "intact" in out, out + err
    finally:
        await db.dispose()
