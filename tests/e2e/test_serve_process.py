"""The operator's path from the README: the CLI seeds data, `dpor-bot serve` runs, Slack talks to it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from sandbox.standin import SlackStandin
from tests.harness import ADMIN, APPROVALS, NEW_PARTNER, NOTIFY, OWNER, PROD, SECRET, TEAM, TOKEN
from tests.processes import DPOR_BOT, cli, free_port, wait_healthy
from tests.slack import SignedSlackClient


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DPOR_", "DATABASE_URL"))}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'dpor.db'}"
    return env


async def test_serve_needs_slack_credentials(base_env: dict[str, str], tmp_path: Path) -> None:
    code, _, err = await cli(base_env, tmp_path, "serve", "--port", str(free_port()))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "SLACK_BOT_TOKEN" in lines[0] and "SLACK_SIGNING_SECRET" in lines[0]
    assert "Traceback" not in err


async def test_operator_flow_against_serve(base_env: dict[str, str], tmp_path: Path) -> None:
    async with SlackStandin(bot_token=TOKEN) as slack, SignedSlackClient(SECRET) as signed:
        env = {
            **base_env,
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack.base_url,
            "DPOR_APPROVAL_CHANNEL": APPROVALS,
            "DPOR_NOTIFY_CHANNELS": NOTIFY,
        }
        for args in (
            ("subscriptions", "add", PROD, "--name", "Production EU", "--alias", "prod"),
            ("partners", "add", NEW_PARTNER, "--name", "Contoso MSP"),
            ("roles", "grant", ADMIN, "admin", "--subscription", "prod"),
            ("roles", "grant", OWNER, "owner", "--subscription", "prod"),
        ):
            code, _, err = await cli(env, tmp_path, *args)
            assert code == 0, err

        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            DPOR_BOT,
            "serve",
            "--port",
            str(port),
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
            events = f"http://127.0.0.1:{port}/slack/events"
            status, body = await signed.command(
                events, f"set prod {NEW_PARTNER} new MSP", ADMIN, team_id=TEAM
            )
            assert status == 200 and "Request #1" in body["text"], body
            # Other posts come too (role grants announced, the owner's DM): the card is the one in APPROVALS.
            for _ in range(100):
                if slack.messages(APPROVALS):
                    break
                await asyncio.sleep(0.1)
            (card,) = slack.messages(APPROVALS)
            ts = card.ts

            status, _ = await signed.click(
                events,
                "dpor_approve",
                "1",
                OWNER,
                team_id=TEAM,
                channel_id=APPROVALS,
                message_ts=ts,
                response_url=slack.response_url("serve-click", channel=APPROVALS, user=OWNER),
            )
            assert status == 200
            for _ in range(100):
                announced = [m.text for m in slack.messages(NOTIFY) if "was applied" in m.text]
                if "Applied" in json.dumps(slack.message(APPROVALS, ts).blocks) and announced:
                    break
                await asyncio.sleep(0.1)
            assert "Applied" in json.dumps(slack.message(APPROVALS, ts).blocks)
            assert any("applied" in m.text for m in slack.messages(slack.dm_channel(ADMIN)))
            (applied,) = [m.text for m in slack.messages(NOTIFY) if "was applied" in m.text]
            assert "Contoso MSP" in applied  # after the role grants the operator's CLI announced

            status, body = await signed.command(events, "show prod", ADMIN, team_id=TEAM)
            assert NEW_PARTNER in json.dumps(body) and "Contoso MSP" in json.dumps(body)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 15)
        stderr = (await proc.stderr.read()).decode()
        assert code == 0, stderr
        assert TOKEN not in stderr and SECRET not in stderr
        code, out, _ = await cli(env, tmp_path, "audit", "verify")
        assert code == 0 and "intact" in out
