"""A local stand-in for Slack's Web API and response URLs: keeps conversation state, records every call.

The state and the Web API methods are the workspace's (sandbox.workspace); this module is the HTTP side
(tokens, bodies, response URLs) and what tests steer it with (injected failures, held calls, waiting).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from zoneinfo import ZoneInfo

from aiohttp import web

from sandbox.workspace import (
    Ephemeral,
    JSONDict,
    Message,
    ResponseTarget,
    SlackError,
    User,
    Workspace,
    parse_blocks,
)

__all__ = ["RESPONSE_URL", "Call", "Ephemeral", "Message", "SlackStandin", "User"]

RESPONSE_URL = "response_url"
"""The method name under which posts to a response URL are recorded, failed and waited for."""


@dataclass(frozen=True)
class Call:
    """One request as received: `params` merges query and body, with blocks parsed and the token removed."""

    method: str
    params: JSONDict
    at: float
    status: int = 200
    error: str | None = None
    injected: bool = False
    response_token: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        outcome = "ok" if self.ok else f"error={self.error}"
        if self.status != 200:
            outcome += f" (HTTP {self.status})"
        if self.injected:
            outcome += " [injected]"
        shown = [
            f"{k}=[{len(v)} blocks]" if k == "blocks" and isinstance(v, list) else f"{k}={_short(v)}"
            for k, v in self.params.items()
        ]
        return " ".join([self.method, outcome, *shown])


@dataclass
class _Failure:
    status: int
    error: str
    retry_after: int
    remaining: int


class _Hold:
    """Calls to one method kept waiting until released (see SlackStandin.hold)."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.drop = False
        self.waiting = 0


class SlackStandin:
    """Slack's Web API on a local port: `async with SlackStandin() as slack:`; clients use `.base_url`."""

    def __init__(
        self, *, team_id: str = "T0DPOR", bot_user_id: str = "UDPORBOT", bot_token: str = "xoxb-test"
    ) -> None:
        self.team_id = team_id
        self.team_domain = "dpor"
        self.bot_user_id = bot_user_id
        self.bot_id = "B" + bot_user_id[1:]
        self.app_id = "A0DPOR"
        self._bot_token = bot_token
        self.calls: list[Call] = []
        self.workspace = Workspace(
            team_id=team_id,
            team_domain=self.team_domain,
            bot_user_id=bot_user_id,
            bot_id=self.bot_id,
            app_id=self.app_id,
        )
        self._methods = self.workspace.methods
        self._failures: dict[str, deque[_Failure]] = {}
        self._holds: dict[str, _Hold] = {}
        self._targets: dict[str, ResponseTarget] = {}
        self._changed = asyncio.Condition()
        self.app = web.Application()
        self.app.router.add_get("/api/{method}", self._api)
        self.app.router.add_post("/api/{method}", self._api)
        self.app.router.add_post("/response/{token}", self._response)
        self._runner: web.AppRunner | None = None
        self._root: str | None = None

    # lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 picks a free port); returns the Web API base URL."""
        if self._runner is not None:
            raise RuntimeError("the Slack stand-in is already running")
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        self._root = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._root = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The server's root URL, e.g. http://127.0.0.1:54321."""
        if self._root is None:
            raise RuntimeError("the Slack stand-in is not running: await start() first")
        return self._root

    @property
    def base_url(self) -> str:
        """The Web API base URL for AsyncWebClient(base_url=...) and SLACK_API_URL."""
        return f"{self.url}/api/"

    # set-up and inspection

    def add_user(
        self, user_id: str, *, name: str | None = None, real_name: str | None = None, tz: str = "UTC"
    ) -> None:
        """Describe a user for users.info; users not added get a profile made up from their ID."""
        ZoneInfo(tz)  # an unknown zone fails here, not inside users.info
        user = User(user_id, name or user_id.lower(), real_name or f"User {user_id}", tz)
        self.workspace.users[user_id] = user

    def leave(self, channel: str) -> None:
        """The bot is no longer a member of `channel`: conversations.info says so, chat.postMessage fails."""
        self.workspace.outside.add(channel)

    def archive(self, channel: str) -> None:
        """`channel` is archived: conversations.info says so, chat.postMessage fails with is_archived."""
        self.workspace.archived.add(channel)

    def response_url(
        self,
        token: str,
        *,
        channel: str | None = None,
        user: str | None = None,
        message_ts: str | None = None,
    ) -> str:
        """A response URL served here. Given the context, posts to it act as Slack's do: `replace_original`
        and `delete_original` change the message at `message_ts`, `response_type: in_channel` posts to
        `channel`, anything else is an ephemeral message to `user`."""
        self._targets[token] = ResponseTarget(channel, user, message_ts)
        return f"{self.url}/response/{token}"

    def fail(
        self,
        method: str,
        *,
        status: int = 429,
        retry_after: int = 1,
        error: str | None = None,
        times: int = 1,
    ) -> None:
        """Fail the next `times` calls to `method` (after the token check). 429 answers with `Retry-After`
        and error `ratelimited`; another status answers `{"ok": false, "error": error}` with that status
        (error defaults to `internal_error`), so `status=200, error="channel_not_found"` is a refusal."""
        if method not in self._methods and method != RESPONSE_URL:
            raise ValueError(f"unknown method {method!r}; known: {', '.join([*self._methods, RESPONSE_URL])}")
        if times < 1:
            raise ValueError("times must be at least 1")
        default = "ratelimited" if status == 429 else "internal_error"
        failure = _Failure(status, error or default, retry_after, times)
        self._failures.setdefault(method, deque()).append(failure)

    def hold(self, method: str) -> None:
        """Keep calls to `method` waiting, unprocessed and unanswered, until `release(method)`, so a test can
        stop or kill the bot while a call is in flight (`wait_held` says when one is)."""
        if method not in self._methods:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(self._methods)}")
        self._holds.setdefault(method, _Hold())

    def release(self, method: str, *, drop: bool = False) -> None:
        """Let held calls go on as usual or, with `drop`, never reach the API: they are answered 503
        `dropped`, as if lost on the way to Slack. Calls from now on are not held."""
        hold = self._holds.pop(method, None)
        if hold is not None:
            hold.drop = drop
            hold.released.set()

    async def wait_held(self, method: str, count: int = 1, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until at least `count` calls to `method` are held."""

        def held() -> int:
            hold = self._holds.get(method)
            return hold.waiting if hold is not None else 0

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: held() >= count)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {count} held {method} call(s); got {held()}"
            ) from None

    def calls_to(self, method: str) -> list[Call]:
        """Every call to `method`, failed ones included (see Call.ok)."""
        return [c for c in self.calls if c.method == method]

    def responses(self, token: str | None = None) -> list[Call]:
        """Posts to response URLs, optionally only to the one made for `token`."""
        return [c for c in self.calls_to(RESPONSE_URL) if token is None or c.response_token == token]

    def messages(self, channel: str) -> list[Message]:
        """The bot's messages in `channel` (a user ID means the bot's DM with that user), oldest first."""
        return list(self.workspace.messages.get(self.workspace.resolve(channel), []))

    def message(self, channel: str, ts: str) -> Message:
        found = self.workspace.find(self.workspace.resolve(channel), ts)
        if found is None:
            raise KeyError(f"no message {ts} in {channel}")
        return found

    def ephemerals(self, user: str | None = None) -> list[Ephemeral]:
        return [e for e in self.workspace.ephemerals if user is None or e.user == user]

    def dm_channel(self, user: str) -> str:
        """The ID of the bot's DM with `user`, the same every time (as conversations.open answers)."""
        return self.workspace.dm_channel(user)

    def clear(self) -> None:
        """Forget calls, messages, ephemerals, open DMs, response URLs and pending failures."""
        self.calls.clear()
        self.workspace.clear()
        self._failures.clear()
        self._targets.clear()

    async def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Call]:  # noqa: ASYNC109
        """Wait until at least `count` successful calls to `method` were recorded; return all of them."""

        def succeeded() -> list[Call]:
            return [c for c in self.calls_to(method) if c.ok]

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: len(succeeded()) >= count)
        except TimeoutError:
            seen = "\n".join(f"  {c.summary()}" for c in self.calls) or "  (none)"
            raise AssertionError(
                f"timed out after {timeout}s waiting for {count} successful {method} call(s); "
                f"got {len(succeeded())}. Calls seen:\n{seen}"
            ) from None
        return succeeded()

    # HTTP

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: JSONDict = dict(request.query)
        body_error: str | None = None
        try:
            params.update(await _read_body(request))
            parse_blocks(params)
        except SlackError as e:
            body_error = e.error
        token = _bearer(request) or params.get("token")
        params.pop("token", None)
        handler = self._methods.get(method)
        if handler is None:
            return await self._answer(Call(method, params, time.time(), error="unknown_method"))
        if not token:
            return await self._answer(Call(method, params, time.time(), error="not_authed"))
        if token != self._bot_token:
            return await self._answer(Call(method, params, time.time(), error="invalid_auth"))
        if (hold := self._holds.get(method)) is not None and not await self._held(hold):
            return await self._answer(Call(method, params, time.time(), 503, "dropped", True))
        if failed := await self._fail_if_injected(method, params):
            return failed
        if body_error is not None:
            return await self._answer(Call(method, params, time.time(), error=body_error))
        try:
            body = handler(params)
        except SlackError as e:
            return await self._answer(Call(method, params, time.time(), error=e.error))
        return await self._answer(Call(method, params, time.time()), body)

    async def _response(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("not an object")
            parse_blocks(body)
        except (ValueError, SlackError):
            await self._record(
                Call(RESPONSE_URL, {}, time.time(), 400, "invalid_payload", response_token=token)
            )
            return web.Response(status=400, text="invalid_payload")
        if failed := await self._fail_if_injected(RESPONSE_URL, body, token):
            return failed
        target = self._targets.get(token)
        if target is not None:
            self.workspace.apply_response(target, body)
        return await self._answer(Call(RESPONSE_URL, body, time.time(), response_token=token))

    async def _held(self, hold: _Hold) -> bool:
        """Wait while the call is held; False if it is to be dropped."""
        hold.waiting += 1
        async with self._changed:
            self._changed.notify_all()
        await hold.released.wait()
        return not hold.drop

    async def _fail_if_injected(
        self, method: str, params: JSONDict, token: str | None = None
    ) -> web.Response | None:
        queue = self._failures.get(method)
        if not queue:
            return None
        failure = queue[0]
        failure.remaining -= 1
        if failure.remaining == 0:
            queue.popleft()
        call = Call(method, params, time.time(), failure.status, failure.error, True, token)
        headers = {"Retry-After": str(failure.retry_after)} if failure.status == 429 else None
        return await self._answer(call, headers=headers)

    async def _answer(
        self, call: Call, body: JSONDict | None = None, headers: dict[str, str] | None = None
    ) -> web.Response:
        await self._record(call)
        answer = {"ok": True, **(body or {})} if call.ok else {"ok": False, "error": call.error}
        return web.json_response(answer, status=call.status, headers=headers)

    async def _record(self, call: Call) -> None:
        self.calls.append(call)
        async with self._changed:
            self._changed.notify_all()


async def _read_body(request: web.Request) -> JSONDict:
    if not request.can_read_body:
        return {}
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise SlackError("invalid_json") from None
        if not isinstance(body, dict):
            raise SlackError("invalid_json")
        return body
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _bearer(request: web.Request) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
