"""The sandbox's Slack side over HTTP: the page's API drives the real bot with signed requests."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import pytest

from sandbox.seed import APPROVALS, NOTIFICATIONS
from sandbox.server import Sandbox
from tests.sandbox.tree import find, text_of

T = TypeVar("T")
ADMIN, OWNER, BYSTANDER = "U0ADMIN", "U0OWNER1", "U0BYSTAND"
SET = "/dpor set prod-eu 4977985 Contoso now runs our support"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(port=0) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def api(http: aiohttp.ClientSession, sandbox: Sandbox, path: str, **body: Any) -> tuple[int, Any]:
    async with http.post(sandbox.url + path.lstrip("/"), json=body) as response:
        return response.status, await response.json()


async def until(check: Callable[[], T], timeout: float = 10.0) -> T:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := check()):
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for the sandbox")
        await asyncio.sleep(0.05)
    return result


async def quiet(sandbox: Sandbox) -> int:
    """The number of Web API calls once the bot has made none for half a second (its worker is done)."""
    calls = -1
    while calls != len(sandbox.slack.calls):
        calls = len(sandbox.slack.calls)
        await asyncio.sleep(0.5)
    return calls


def items(sandbox: Sandbox, channel: str, user: str) -> list[dict[str, Any]]:
    return sandbox.page.timeline(channel, user)


def seen(sandbox: Sandbox, channel: str, user: str) -> str:
    return "\n".join(text_of(i["body"]) for i in items(sandbox, channel, user))


def card(sandbox: Sandbox) -> dict[str, Any] | None:
    return next((i for i in items(sandbox, APPROVALS, OWNER) if i["kind"] == "message"), None)


async def test_the_whole_flow_through_the_page_api(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    status, answer = await api(http, sandbox, "/sandbox/command", user=ADMIN, channel=APPROVALS, text=SET)
    assert (status, answer) == (200, {"ok": True, "problem": None})
    (mine,) = [i for i in items(sandbox, APPROVALS, ADMIN) if i["kind"] == "command"]
    assert mine["command"] == SET and "Request #1 is open" in text_of(mine["body"])
    assert not [i for i in items(sandbox, APPROVALS, OWNER) if i["kind"] == "command"]  # only Alex sees it

    posted = await until(lambda: card(sandbox))
    approve = next(b for b in find(posted["body"], el="button") if b["action"]["action_id"] == "dpor_approve")
    assert approve["confirm"]["title"] == "Approve this change?"

    status, _ = await api(http, sandbox, "/sandbox/click", user=BYSTANDER, **approve["action"])
    assert status == 200
    refusal = await until(
        lambda: [i for i in items(sandbox, APPROVALS, BYSTANDER) if i["kind"] == "ephemeral"]
    )
    assert "Only an owner of subscription Production EU" in text_of(refusal[0]["body"])
    assert not [i for i in items(sandbox, APPROVALS, OWNER) if i["kind"] == "ephemeral"]

    status, _ = await api(http, sandbox, "/sandbox/click", user=OWNER, **approve["action"])
    assert status == 200
    await until(lambda: "Applied" in text_of(card(sandbox)["body"]))  # type: ignore[index]
    assert card(sandbox)["edited"]  # type: ignore[index]
    assert not find(card(sandbox)["body"], el="button")  # type: ignore[index]
    await until(lambda: "was applied" in seen(sandbox, NOTIFICATIONS, BYSTANDER))
    await until(lambda: "was applied" in seen(sandbox, sandbox.slack.dm_channel(ADMIN), ADMIN))
    # The outcome's DM is the requester's own (an approver's DM asks for the approval only).
    assert "was applied" not in seen(sandbox, sandbox.slack.dm_channel(OWNER), OWNER)


async def test_the_bot_checks_the_signature_of_what_the_sandbox_sends(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    await api(http, sandbox, "/sandbox/command", user=ADMIN, channel=APPROVALS, text=SET)
    posted = await until(lambda: card(sandbox))
    calls = await quiet(sandbox)
    sandbox.signing_secret = "not-the-bots-secret"

    status, answer = await api(
        http, sandbox, "/sandbox/command", user=ADMIN, channel=APPROVALS, text="/dpor help"
    )
    assert status == 200 and "the bot answered HTTP 401" in answer["problem"]
    approve = find(posted["body"], el="button")[0]["action"]
    status, answer = await api(http, sandbox, "/sandbox/click", user=OWNER, **approve)
    assert status == 200 and "the bot answered HTTP 401" in answer["problem"]
    (problem,) = [i for i in items(sandbox, APPROVALS, OWNER) if i["kind"] == "problem"]
    assert "HTTP 401" in text_of(problem["body"])
    assert not [i for i in items(sandbox, APPROVALS, ADMIN) if i["kind"] == "problem"]
    await asyncio.sleep(0.3)
    assert len(sandbox.slack.calls) == calls  # the bot did nothing
    assert "Pending approval" in text_of(card(sandbox)["body"])  # type: ignore[index]


def test_command_text_arrives_as_slack_sends_it() -> None:
    sandbox = Sandbox(port=0)
    sent = sandbox.page.as_slack_sends("R&D <b>x</b> @ben @Olivia @nobody #dpor-approvals ticket #123 a@ben")
    assert sent == (
        "R&amp;D &lt;b&gt;x&lt;/b&gt; <@U0BYSTAND|ben> <@U0OWNER1|olivia> @nobody "
        "<#C0APPROVALS|dpor-approvals> ticket #123 a@ben"
    )


async def test_what_is_not_a_dpor_command_never_reaches_the_bot(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    _, answer = await api(
        http, sandbox, "/sandbox/command", user=ADMIN, channel=APPROVALS, text="/deploy now"
    )
    assert answer["problem"].startswith("/deploy is not a valid command")
    _, answer = await api(http, sandbox, "/sandbox/command", user=ADMIN, channel=APPROVALS, text="hello")
    assert "only slash commands" in answer["problem"]
    assert [i["kind"] for i in items(sandbox, APPROVALS, ADMIN)] == ["command", "command"]


async def test_commands_work_in_a_dm_and_answers_with_blocks_render(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    dm = sandbox.slack.dm_channel(OWNER)
    _, answer = await api(http, sandbox, "/sandbox/command", user=OWNER, channel=dm, text="/dpor help")
    assert answer["ok"]
    assert "/dpor set" in seen(sandbox, dm, OWNER)


async def test_the_api_refuses_what_the_page_would_never_send(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    calls = [c.method for c in sandbox.slack.calls]  # the bot's own at start-up, if any
    status, answer = await api(
        http, sandbox, "/sandbox/command", user="U0INTRUDER", channel=APPROVALS, text=SET
    )
    assert status == 400 and "unknown user" in answer["problem"]
    other_dm = sandbox.slack.dm_channel(OWNER)
    status, answer = await api(http, sandbox, "/sandbox/command", user=ADMIN, channel=other_dm, text=SET)
    assert status == 400 and "not in channel" in answer["problem"]
    status, _ = await api(
        http, sandbox, "/sandbox/click", user=OWNER, channel=APPROVALS, ts="1.0", action_id="x"
    )
    assert status == 404
    form = {"user": ADMIN, "channel": APPROVALS, "text": SET}
    async with http.post(sandbox.url + "sandbox/command", data=form) as response:
        assert response.status == 415  # another site's form cannot post a command
    assert [c.method for c in sandbox.slack.calls] == calls


async def test_the_page_and_its_files(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    async with http.get(sandbox.url) as response:
        assert response.status == 200 and response.content_type == "text/html"
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert '<script src="/static/sandbox.js"' in await response.text()
    scripts = ("dates.js", "views.js", "layout.js", "sandbox.js")
    for name, kind in (*((n, "text/javascript") for n in scripts), ("sandbox.css", "text/css")):
        async with http.get(f"{sandbox.url}static/{name}") as response:
            assert response.status == 200 and response.content_type == kind
    async with http.get(f"{sandbox.url}static/server.py") as response:
        assert response.status == 404


async def test_a_waiting_page_hears_of_a_change_at_once(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    version = (await sandbox.page.view(ADMIN))["version"]

    async def wait() -> dict[str, Any]:
        async with http.get(f"{sandbox.url}sandbox/state?user={OWNER}&after={version}") as response:
            return await response.json()

    waiting = asyncio.create_task(wait())
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await api(http, sandbox, "/sandbox/command", user=ADMIN, channel=APPROVALS, text="/dpor help")
    state = await asyncio.wait_for(waiting, 5)
    assert state["version"] > version and state["viewer"] == OWNER


async def test_stopping_answers_waiting_pages_and_removes_the_temporary_database(
    http: aiohttp.ClientSession,
) -> None:
    first = Sandbox(port=0)
    await first.start()
    assert first.bot is not None
    database = Path(first.bot.settings.database_url.split("///", 1)[1])
    assert await asyncio.to_thread(database.exists)
    await api(http, first, "/sandbox/command", user=ADMIN, channel=APPROVALS, text=SET)
    version = (await first.page.view(ADMIN))["version"]
    waiting = asyncio.create_task(http.get(f"{first.url}sandbox/state?user={ADMIN}&after={version}"))
    await asyncio.sleep(0.2)
    await asyncio.wait_for(first.stop(), 5)
    (await waiting).release()
    assert not await asyncio.to_thread(database.parent.exists)

    async with Sandbox(port=0) as second:  # a second run starts fresh
        _, answer = await api(http, second, "/sandbox/command", user=ADMIN, channel=APPROVALS, text=SET)
        assert answer["ok"]
        assert "Request #1 is open" in seen(second, APPROVALS, ADMIN)


async def test_replies_in_a_thread_are_shown_in_place_and_marked(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    assert sandbox.bot is not None and sandbox.bot.settings.slack_bot_token is not None
    token = sandbox.bot.settings.slack_bot_token.get_secret_value()
    for thread_ts in (None, "1.000001"):
        params = {"channel": APPROVALS, "text": f"*reply* to {thread_ts}"} | (
            {"thread_ts": thread_ts} if thread_ts else {}
        )
        async with http.post(
            sandbox.slack.base_url + "chat.postMessage",
            json=params,
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            assert (await response.json())["ok"]
    top, reply = items(sandbox, APPROVALS, OWNER)
    assert (top["thread"], reply["thread"]) == (False, True)
    assert text_of(reply["body"]) == "reply to 1.000001"


async def status_for(sandbox: Sandbox, host: str | None, request: str = "GET / HTTP/1.1") -> int:
    """The status of `request` sent with this Host header (None: none at all), byte for byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", urlsplit(sandbox.url).port)
    header = "" if host is None else f"Host: {host}\r\n"
    writer.write(f"{request}\r\n{header}Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


async def test_only_requests_addressed_to_the_sandbox_by_a_loopback_name_are_answered(
    sandbox: Sandbox,
) -> None:
    """DNS rebinding: a page of evil.example, its name now resolved to 127.0.0.1, sends Host: evil.example."""
    port = urlsplit(sandbox.url).port
    calls = len(sandbox.slack.calls)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}"):
        assert await status_for(sandbox, host) == 200, host
    refused = [
        f"evil.example:{port}",
        "evil.example",
        f"127.0.0.1.evil.example:{port}",
        "127.0.0.1",
        f"127.0.0.1:{port + 1}",
        f"0.0.0.0:{port}",
        "",
    ]
    for path in ("/", f"/sandbox/state?user={ADMIN}", "/api/auth.test"):
        for host in refused:
            assert await status_for(sandbox, host, f"GET {path} HTTP/1.1") == 421, (path, host)
        assert await status_for(sandbox, None, f"GET {path} HTTP/1.0") == 421, path  # no Host at all
    assert len(sandbox.slack.calls) == calls  # the Web API never saw them


async def test_both_sides_listen_on_loopback_only(sandbox: Sandbox) -> None:
    assert sandbox.bot_url is not None
    outside = _an_address_other_than_loopback()
    for url in (sandbox.url, sandbox.bot_url):
        assert urlsplit(url).hostname == "127.0.0.1"
        if outside is not None:
            with pytest.raises(OSError):
                await asyncio.open_connection(outside, urlsplit(url).port)


def _an_address_other_than_loopback() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


async def test_the_people_list_shows_roles_granted_while_it_runs(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    def roles(state: dict[str, Any]) -> dict[str, str]:
        return {p["id"]: p["role"] for p in state["people"]}

    assert roles(await sandbox.page.view(BYSTANDER))[BYSTANDER] == "no role"
    _, answer = await api(
        http,
        sandbox,
        "/sandbox/command",
        user=OWNER,
        channel=APPROVALS,
        text="/dpor role grant @ben owner prod-eu",
    )
    assert answer["ok"]
    assert roles(await sandbox.page.view(BYSTANDER))[BYSTANDER] == "owner of prod-eu"
    assert roles(await sandbox.page.view(BYSTANDER))[OWNER] == "owner of all"


async def test_the_sandbox_keeps_its_own_roles_when_the_host_takes_them_from_azure(
    monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession
) -> None:
    """A host where production runs with DPOR_ROLE_SOURCE=azure: the sandbox's made-up people have their
    seeded roles, not "not linked to an Azure identity" (and nothing asks Azure)."""
    monkeypatch.setenv("DPOR_ROLE_SOURCE", "azure")
    async with Sandbox(port=0) as sandbox:
        assert sandbox.bot is not None and sandbox.bot.settings.role_source == "local"
        _, answer = await api(http, sandbox, "/sandbox/command", user=ADMIN, channel=APPROVALS, text=SET)
        assert answer["ok"]
        (mine,) = [i for i in items(sandbox, APPROVALS, ADMIN) if i["kind"] == "command"]
        assert "Request #1 is open" in text_of(mine["body"]), text_of(mine["body"])


def test_the_shortcuts_menu_names_the_manifests_shortcuts() -> None:
    """The page's ⚡ menu offers the global shortcuts manifest.yaml gives Slack, by the same names."""
    import re
    from pathlib import Path

    from sandbox.interact import SHORTCUTS

    manifest = (Path(__file__).parents[2] / "manifest.yaml").read_text()
    declared = dict(
        (callback, name.strip())
        for name, callback in re.findall(
            r"- name: ([^\n]+)\n\s+type: global\n\s+callback_id: (\w+)", manifest
        )
    )
    assert declared and declared == SHORTCUTS
