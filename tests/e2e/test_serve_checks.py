"""`dpor-bot serve` refuses to start on settings it could only fail with later (issue 13): a channel name
where a channel ID belongs, and a token Slack refuses at `auth.test`. One line, a non-zero exit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.standin import SlackStandin
from tests.conftest import AUDIT_KEY
from tests.harness import APPROVALS, NOTIFY, SECRET, TOKEN
from tests.processes import cli, free_port


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DPOR_", "DATABASE_URL"))}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'dpor.db'}"
    env["SLACK_BOT_TOKEN"] = TOKEN
    env["SLACK_SIGNING_SECRET"] = SECRET
    env["DPOR_APPROVAL_CHANNEL"] = APPROVALS
    env["DPOR_NOTIFY_CHANNELS"] = NOTIFY
    env["DPOR_AUDIT_KEY"] = AUDIT_KEY
    return env


@pytest.fixture
async def upgraded(base_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """A database the operator already upgraded: what serve says at start is then its own."""
    code, _, err = await cli(base_env, tmp_path, "db", "upgrade")
    assert code == 0, err
    return base_env


def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value", "shown"),
    [
        ("DPOR_APPROVAL_CHANNEL", "dpor-approvals", "'dpor-approvals'"),
        ("DPOR_NOTIFY_CHANNELS", f"{NOTIFY},#general", "'#general' is not one"),
        ("DPOR_AUDIT_CHANNEL", "#audit", "'#audit'"),
    ],
)
async def test_a_channel_name_stops_serve_naming_its_variable(
    base_env: dict[str, str], tmp_path: Path, variable: str, value: str, shown: str
) -> None:
    env = {**base_env, variable: value}
    code, out, err = await cli(env, tmp_path, "serve", "--port", str(free_port()))
    assert code == 1 and out == ""
    line = one_line(err)
    assert line.startswith(f"error: {variable}: expected a Slack channel ID such as C0123ABCD"), line
    assert "copy the channel ID" in line and shown in line
    # Every command that reads the settings refuses the same way, before touching the database.
    code, _, err = await cli(env, tmp_path, "roles", "list")
    assert code == 1 and one_line(err) == line
    assert not (tmp_path / "dpor.db").exists()


@pytest.mark.parametrize("error", ["token_revoked", "invalid_auth"])
async def test_a_token_slack_refuses_stops_serve(
    upgraded: dict[str, str], tmp_path: Path, error: str
) -> None:
    async with SlackStandin(bot_token=TOKEN) as slack:
        slack.fail("auth.test", status=200, error=error)
        env = {**upgraded, "SLACK_API_URL": slack.base_url}
        code, _, err = await cli(env, tmp_path, "serve", "--port", str(free_port()))
        assert slack.calls_to("auth.test"), "serve never asked Slack who it is"
    assert code == 1
    line = one_line(err)
    assert line == f"error: Slack refused SLACK_BOT_TOKEN (auth.test: {error})"
    assert TOKEN not in err and SECRET not in err


async def test_a_wrong_token_stops_serve(upgraded: dict[str, str], tmp_path: Path) -> None:
    """Not a scripted failure: the stand-in knows another token, and answers invalid_auth as Slack does."""
    async with SlackStandin(bot_token="xoxb-the-real-one") as slack:
        env = {**upgraded, "SLACK_API_URL": slack.base_url}
        code, _, err = await cli(env, tmp_path, "serve", "--port", str(free_port()))
    assert code == 1
    assert one_line(err) == "error: Slack refused SLACK_BOT_TOKEN (auth.test: invalid_auth)"
