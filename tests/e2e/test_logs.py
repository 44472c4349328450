"""`dpor-bot serve` with DPOR_LOG_FORMAT=json: a full run, errors included, is one JSON object a line, with
the fields where they are known, and no secret anywhere (DEBUG, so the libraries' own lines too)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp

from bot.settings import normalise_database_url
from sandbox.standin import SlackStandin
from storage.db import Database
from storage.migrate import upgrade
from tests.bot.providers.receiver import SECRET as WEBHOOK_SECRET
from tests.bot.providers.receiver import Receiver, Reply
from tests.harness import (
    ADMIN,
    APPROVALS,
    BYSTANDER,
    NEW_PARTNER,
    NOTIFY,
    OWNER,
    PROD,
    SECRET,
    TEAM,
    TOKEN,
    seed,
)
from tests.processes import DPOR_BOT, free_port, wait_healthy
from tests.slack import LEGACY_TOKEN, SignedSlackClient

FAULTS = str(Path(__file__).with_name("faults"))  # its sitecustomize fails `/dpor show explode`
HOOK_PASSWORD, HOOK_QUERY = "hook-basic-password", "hook-query-credential"
DB_PASSWORD = "database-password-in-a-url"
# What the injected internal error says: everything a careless exception could carry.
FAULT = (
    f"cannot reach postgresql://dpor:{DB_PASSWORD}@db.internal:5432/dpor with token {TOKEN}, "
    f"signing secret {SECRET} and webhook secret {WEBHOOK_SECRET}"
)
SECRETS = (SECRET, TOKEN, WEBHOOK_SECRET, HOOK_PASSWORD, HOOK_QUERY, DB_PASSWORD, LEGACY_TOKEN)


def lines_of(log: Path) -> list[dict[str, Any]]:
    """Every line of the log as JSON: one that is not fails the test."""
    parsed = []
    for number, line in enumerate(log.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= set(entry), line
        parsed.append(entry)
    return parsed


async def until(predicate, log: Path, within: float = 30.0) -> None:
    for _ in range(int(within / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened; the log ends:\n{tail(log)}")


def tail(log: Path) -> str:
    return "\n".join(log.read_text().splitlines()[-30:])


async def test_a_full_run_logs_json_lines_with_fields_and_no_secret(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'dpor.db'}"
    db = Database(normalise_database_url(database_url))
    await upgrade(db)
    await seed(db)
    await db.dispose()
    refusal = Reply(422, {"message": "no contract with partner 4977985 yet"})
    async with (
        SlackStandin(bot_token=TOKEN) as slack,
        SignedSlackClient(SECRET) as signed,
        Receiver(refusal) as receiver,
    ):
        hook = receiver.url.replace("http://", f"http://dpor:{HOOK_PASSWORD}@") + f"?key={HOOK_QUERY}"
        port = free_port()
        # The tests' own audit key (when they set one: the seed above was written with it) is kept.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DPOR_", "DATABASE_URL"))}
        env |= {k: v for k, v in os.environ.items() if k == "DPOR_AUDIT_KEY"}
        env |= {
            "DATABASE_URL": database_url,
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack.base_url,
            "DPOR_APPROVAL_CHANNEL": APPROVALS,
            "DPOR_NOTIFY_CHANNELS": NOTIFY,
            "DPOR_PROVIDER": "webhook",
            "DPOR_WEBHOOK_URL": hook,
            "DPOR_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "DPOR_LOG_FORMAT": "json",
            "DPOR_LOG_LEVEL": "debug",
            "DPOR_TEST_FAULT": FAULT,
            "PYTHONPATH": os.pathsep.join(filter(None, [FAULTS, os.environ.get("PYTHONPATH")])),
        }
        log = tmp_path / "serve.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                DPOR_BOT, "serve", "--port", str(port), env=env, cwd=tmp_path, stdout=out, stderr=out
            )
        events = f"http://127.0.0.1:{port}/slack/events"
        try:
            await wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)

            async def command(text: str, user: str) -> dict[str, Any]:
                status, body = await signed.command(events, text, user, team_id=TEAM, channel_id=APPROVALS)
                assert status == 200, body
                return body

            body = await command(f"set prod {NEW_PARTNER} Contoso runs our support now", ADMIN)
            rid = int(body["text"].split("Request #")[1].split()[0])
            await until(lambda: bool(slack.messages(APPROVALS)), log)
            ts = slack.messages(APPROVALS)[0].ts
            for user in (BYSTANDER, OWNER):  # a refused click, then the approval whose apply fails
                status, _ = await signed.click(
                    events, "dpor_approve", str(rid), user, team_id=TEAM, channel_id=APPROVALS, message_ts=ts
                )
                assert status == 200
            await until(lambda: "failed to apply" in log.read_text(), log)
            failed = await command("show explode", ADMIN)
            ref = failed["text"].split("(ref ")[1].split(")")[0]
            unsigned = b"command=%2Fdpor&text=help"  # refused at the edge
            async with aiohttp.ClientSession() as session, session.post(events, data=unsigned) as response:
                assert response.status == 401
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 20)

    text = log.read_text()
    for secret in (*SECRETS, *filter(None, [os.environ.get("DPOR_AUDIT_KEY")])):
        assert secret not in text, f"{secret!r} is in the log"
    entries = lines_of(log)
    assert all(e["time"].endswith("Z") for e in entries)
    assert {"DEBUG", "INFO", "WARNING", "ERROR"} <= {e["level"] for e in entries}

    (error,) = [e for e in entries if e.get("error_ref") == ref]
    assert error["level"] == "ERROR" and error["logger"] == "dpor.commands"
    assert f"ref {ref}" in error["message"]
    assert error["slack_user"] == ADMIN and error["subscription"] == "explode"
    assert (
        error["exc_info"].startswith("Traceback")
        and "RuntimeError: cannot reach postgresql://" in error["exc_info"]
    )
    assert "db.internal:5432" in error["exc_info"]  # where it failed is kept, the password is not

    (refused,) = [e for e in entries if "click refused" in e["message"]]
    assert refused["slack_user"] == BYSTANDER and refused["request_id"] == str(rid)
    assert refused["level"] == "INFO" and "error_ref" not in refused

    (apply_failed,) = [e for e in entries if "failed to apply" in e["message"]]
    assert apply_failed["level"] == "WARNING" and "no contract with partner" in apply_failed["message"]
    assert apply_failed["request_id"] == str(rid) and apply_failed["subscription"] == PROD

    assert any(e["message"].startswith("refused a request without a valid Slack signature") for e in entries)
    assert any("dpor-bot listening on" in e["message"] for e in entries)
