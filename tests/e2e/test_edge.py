"""The HTTP edge: malformed bodies, Slack's identity at start-up, /healthz, and half-sent requests."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import pytest

from bot.app import AUTH_TEST_TIMEOUT, READ_TIMEOUT
from sandbox.standin import SlackStandin
from tests.harness import ADMIN, APPROVALS, SECRET, TOKEN, Harness
from tests.processes import DPOR_BOT, free_port, wait_healthy
from tests.slack import FORM_CONTENT_TYPE, sign, slash_command_body

JSON = "application/json"


async def post_bytes(url: str, body: bytes, content_type: str, headers: dict[str, str]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={"Content-Type": content_type, **headers}) as response,
    ):
        return response.status


def trouble(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


MALFORMED = [
    pytest.param(JSON, b"this is not JSON", id="json-type-non-json"),
    pytest.param(FORM_CONTENT_TYPE, b"payload=%7B%22type%22%3A%22block_act", id="broken-payload"),
    pytest.param(FORM_CONTENT_TYPE, b"text=\xff\xfe\xfa&command=%2Fdpor", id="not-utf8"),
    pytest.param(JSON, b"[1, 2, 3]", id="json-not-an-object"),
    pytest.param(JSON, b'{"type": ["event_callback"]}', id="type-not-a-string"),
    pytest.param(JSON, b'{"type": {"a": 1}}', id="type-an-object"),
]


@pytest.mark.parametrize(("content_type", "body"), MALFORMED)
async def test_an_unsigned_malformed_body_is_refused_before_parsing(
    harness: Harness, caplog: pytest.LogCaptureFixture, content_type: str, body: bytes
) -> None:
    before = await harness.counts()
    caplog.clear()
    headers = {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=" + "0" * 64}
    assert await post_bytes(harness.url, body, content_type, headers) == 401
    (line,) = trouble(caplog)
    assert "401" in line.getMessage() and line.exc_info is None
    assert await harness.counts() == before


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=00"},
        {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=ümlaut"},
    ],
    ids=["no-headers", "timestamp-not-a-number", "signature-not-ascii"],
)
async def test_odd_signature_headers_are_refused(
    harness: Harness, caplog: pytest.LogCaptureFixture, headers: dict[str, str]
) -> None:
    caplog.clear()
    body = slash_command_body("help", user_id=ADMIN).encode()
    assert await post_bytes(harness.url, body, FORM_CONTENT_TYPE, headers) == 401
    (line,) = trouble(caplog)
    assert line.exc_info is None


@pytest.mark.parametrize(("content_type", "body"), MALFORMED)
async def test_a_signed_malformed_body_is_a_bad_request(
    harness: Harness, caplog: pytest.LogCaptureFixture, content_type: str, body: bytes
) -> None:
    before = await harness.counts()
    caplog.clear()
    assert await post_bytes(harness.url, body, content_type, sign(SECRET, body)) == 400
    (line,) = trouble(caplog)
    assert "400" in line.getMessage() and line.exc_info is None
    assert await harness.counts() == before


async def test_slacks_unsigned_ssl_check_gets_its_200_and_nothing_else(harness: Harness) -> None:
    assert await post_bytes(harness.url, b"ssl_check=1&token=abc", FORM_CONTENT_TYPE, {}) == 200
    smuggled = "ssl_check=1&payload=" + quote(json.dumps({"type": "block_actions", "actions": []}))
    assert await post_bytes(harness.url, smuggled.encode(), FORM_CONTENT_TYPE, {}) == 401
    assert await post_bytes(harness.url, b"ssl_check=0", FORM_CONTENT_TYPE, {}) == 401


async def test_identity_is_resolved_at_start_not_in_a_request(harness: Harness) -> None:
    assert len(harness.slack.calls_to("auth.test")) == 1  # at start-up
    harness.slack.hold("auth.test")  # Slack hangs from now on
    try:
        started = time.monotonic()
        status, body = await asyncio.wait_for(harness.command("help", ADMIN), 5)
        assert status == 200 and "/dpor" in json.dumps(body)
        assert time.monotonic() - started < 2.0
        status, body = await harness.command("show prod", ADMIN, team_id="T0ELSEWHERE")
        assert (
            status == 200 and "another Slack workspace" in body["text"]
        )  # the team check still has its team
    finally:
        harness.slack.release("auth.test")
    assert len(harness.slack.calls_to("auth.test")) == 1


@asynccontextmanager
async def serving(
    tmp_path: Path, slack: SlackStandin
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`dpor-bot serve` on an SQLite file, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DPOR_", "DATABASE_URL"))}
    env |= {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'dpor.db'}",
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.base_url,
        "DPOR_APPROVAL_CHANNEL": APPROVALS,
    }
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        DPOR_BOT, "serve", "--port", str(port), env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    try:
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 15)


async def test_serve_stops_with_one_line_when_slack_does_not_answer_auth_test(tmp_path: Path) -> None:
    async with SlackStandin(bot_token=TOKEN) as slack:
        slack.hold("auth.test")
        try:
            async with serving(tmp_path, slack) as (proc, _):
                code = await asyncio.wait_for(
                    proc.wait(), AUTH_TEST_TIMEOUT + 30
                )  # start-up itself takes seconds on a busy machine
                assert proc.stderr is not None
                stderr = (await proc.stderr.read()).decode()
        finally:
            slack.release("auth.test")
    assert code == 1
    assert "Traceback" not in stderr and "Unclosed" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: ") and "auth.test" in stderr


async def test_healthz_is_503_when_sqlite_cannot_write(tmp_path: Path) -> None:
    """A full disk: the kernel refuses to write the database's files (RLIMIT_FSIZE), reads still work."""
    async with SlackStandin(bot_token=TOKEN) as slack, serving(tmp_path, slack) as (proc, port):
        health = f"http://127.0.0.1:{port}/healthz"
        await wait_healthy(health, proc)
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1, hard))
        async with aiohttp.ClientSession() as session:
            async with session.get(health) as response:
                assert response.status == 503
                assert await response.json() == {"ok": False, "error": "database does not accept writes"}
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
            async with session.get(health) as response:
                assert response.status == 200


async def _pg_admin(sql: str) -> None:
    import asyncpg

    parts = urlsplit(os.environ["DPOR_TEST_DATABASE_URL"])
    conn = await asyncpg.connect(urlunsplit(("postgresql", parts.netloc, parts.path, "", "")))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_healthz_is_503_when_postgresql_refuses_writes(
    harness_any_db: Harness, database_url: str
) -> None:
    """Every write fails while SELECT 1 still answers: new transactions are read-only."""
    name = urlsplit(database_url).path.lstrip("/")
    others = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    health = harness_any_db.url.replace("/slack/events", "/healthz")
    async with aiohttp.ClientSession() as session:
        try:
            await _pg_admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            await _pg_admin(others)
            async with session.get(health) as response:
                assert response.status == 503
                assert await response.json() == {"ok": False, "error": "database does not accept writes"}
        finally:
            await _pg_admin(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
            await _pg_admin(others)
        async with session.get(health) as response:
            assert response.status == 200


async def test_half_sent_requests_are_closed(tmp_path: Path) -> None:
    """Slowloris: half a header, or a header and half a body, gets the connection closed, not held open."""
    async with SlackStandin(bot_token=TOKEN) as slack, serving(tmp_path, slack) as (proc, port):
        await wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)

        async def closed_after(request: bytes) -> tuple[float, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            writer.write(request)
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(), 2 * READ_TIMEOUT + 5)
            finally:
                writer.close()
            return time.monotonic() - started, answer

        head = b"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        half_head, half_body = await asyncio.gather(
            closed_after(head),
            closed_after(head + b'Content-Length: 100\r\n\r\n{"type":'),
        )
    assert half_head[0] < READ_TIMEOUT + 5 and half_head[1] == b""
    assert half_body[0] < READ_TIMEOUT + 5 and half_body[1].startswith(b"HTTP/1.1 408")
