"""The HTTP surface: Slack's events endpoint (signature on the raw bytes, replays, shape, then Bolt), the
health check and the metrics. `Bot` (bot/app.py) carries these handlers; `web_app` serves them and starts
the bot."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_internals import build_async_context
from slack_bolt.request.async_request import AsyncBoltRequest

from bot.metrics import CONTENT_TYPE, Metrics, authorised
from bot.settings import Settings
from storage import replay
from storage.db import Database

if TYPE_CHECKING:
    from bot.app import Bot

log = logging.getLogger("dpor")


# How far X-Slack-Request-Timestamp may be from now: Bolt's (slack_sdk's SignatureVerifier) five minutes.
SIGNATURE_WINDOW = 300
# A connection gets this long for a request's headers (counted from its opening or from the previous
# answer; aiohttp's keep-alive timer), then as long again for the body: a half-sent request is closed.
READ_TIMEOUT = 10.0
# Requests that only read (an external select's typeahead) are not recorded against replay: Slack sends two
# identical ones, signed alike, when a person types the same text twice within a second, and answering a
# copy again changes nothing.
READ_ONLY_PAYLOADS = frozenset({"block_suggestion"})
HEALTH_TIMEOUT = 5.0
MAX_BODY = 1024**2  # bytes: Slack's requests are far smaller; a bigger body is refused (413)


class HttpEdge:
    """The HTTP handlers of `Bot`: what they use of it is declared here."""

    app: AsyncApp | None
    db: Database
    settings: Settings
    metrics: Metrics
    sightings: replay.Sightings
    _signing_key: bytes
    _health_check: asyncio.Future[tuple[str, str] | None] | None
    _health_error: str | None

    async def slack_events(self, request: web.Request) -> web.Response:
        """Slack's requests: signature (on the raw bytes), replay, shape; then Bolt, which verifies again."""
        assert self.app is not None
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                raw = await request.read()
        except TimeoutError:
            log.warning("refused a request whose body did not arrive within %.0f s (408)", READ_TIMEOUT)
            return web.Response(status=408, headers={"Connection": "close"})
        except web.HTTPRequestEntityTooLarge:
            # Answered here, not raised: a raised exception is counted as the bot's own failure (outcome
            # "error", the internal-errors alert), and anyone can send a big body.
            log.warning("refused a request whose body is over %d bytes (413)", MAX_BODY)
            return web.Response(status=413, headers={"Connection": "close"})
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        if not _signed(self._signing_key, raw, timestamp, signature):
            if _is_ssl_check(raw):
                return web.Response()  # Slack's certificate check comes unsigned and only wants a 200
            log.warning("refused a request without a valid Slack signature (401)")
            return web.Response(status=401)
        try:
            bolt_request = _reparsed(
                AsyncBoltRequest(body=raw.decode(), query=request.query_string, headers=request.headers)  # type: ignore[arg-type]
            )
        except Exception as exc:  # whatever Bolt's parser trips on (not UTF-8, not JSON, not an object)
            log.warning("refused a signed request whose body is malformed (400): %s", type(exc).__name__)
            return web.Response(status=400)
        kind = bolt_request.body.get("type")
        if not isinstance(kind, str | None):
            # A list or an object is no payload type, and cannot even be looked up below (TypeError: a 500).
            log.warning("refused a signed request whose body is malformed (400): its type is not a string")
            return web.Response(status=400)
        if kind not in READ_ONLY_PAYLOADS:
            digest = hashlib.sha256(signature.encode()).hexdigest()
            try:
                first = await self.sightings.first(digest, datetime.fromtimestamp(int(timestamp), UTC))
            except Exception as exc:
                log.error(
                    "refused a request (503): its signature could not be recorded: %s", _first_line(exc)
                )
                return web.Response(status=503)
            if not first:
                log.warning("refused a replayed request (401): its signature was already seen")
                # A copy of a request already received: Slack (were it the sender) need not try again.
                return web.Response(status=401, headers={"X-Slack-No-Retry": "1"})
        response = await self.app.async_dispatch(bolt_request)
        return await to_aiohttp_response(response)

    async def healthz(self, request: web.Request) -> web.Response:
        """200 when the database answers and accepts a write (the one every Slack request makes), else 503."""
        if self._health_check is None or self._health_check.done():
            # Probes that arrive during a check share it: a flood of them is one write at a time.
            self._health_check = asyncio.ensure_future(self._database_error())
        failure = await asyncio.shield(self._health_check)
        error = failure[0] if failure else None
        if error != self._health_error:  # a line when health changes, not one per probe
            self._health_error = error
            if failure:
                log.error("healthz: %s (%s)", *failure)
            else:
                log.info("healthz: the database answers and accepts writes")
        if error is None:
            return web.json_response({"ok": True})
        return web.json_response({"ok": False, "error": error}, status=503)

    async def _database_error(self) -> tuple[str, str] | None:
        """None when healthy, else what /healthz says and what the log says."""
        if not await self.db.ping():
            return "database unreachable", "SELECT 1 failed"
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                # A made-up digest that no request can have, forgotten with the window's other rows.
                await self.sightings.first(secrets.token_hex(32), datetime.now(UTC))
        except TimeoutError:
            return "database does not accept writes", f"a write took over {HEALTH_TIMEOUT:.0f} s"
        except Exception as exc:
            return "database does not accept writes", _first_line(exc)
        return None

    async def prometheus(self, request: web.Request) -> web.Response:
        """GET /metrics: Prometheus' text format; with DPOR_METRICS_TOKEN set, only for its bearer."""
        token = self.settings.metrics_token
        if not authorised(token.get_secret_value() if token else None, request.headers.get("Authorization")):
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        body = await self.metrics.exposition(self.db)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _signed(key: bytes, raw: bytes, timestamp: str, signature: str) -> bool:
    """Slack's check as slack_sdk's SignatureVerifier (Bolt's) makes it, on the raw bytes and never raising:
    the verifier decodes the body first, and fails on one that is not UTF-8 or a timestamp that is no number.
    """
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12 and signature.isascii()):
        return False
    if abs(time.time() - int(timestamp)) > SIGNATURE_WINDOW:
        return False
    expected = hmac.new(key, b"v0:%s:%s" % (timestamp.encode(), raw), hashlib.sha256).hexdigest()
    return bool(key) and hmac.compare_digest(f"v0={expected}", signature)


def _is_ssl_check(raw: bytes) -> bool:
    """Exactly Slack's SSL check (`ssl_check=1`, perhaps a `token`): nothing that could be dispatched."""
    if len(raw) > 200 or not raw.isascii():
        return False
    fields = parse_qsl(raw.decode(), keep_blank_values=True)
    return dict(fields).get("ssl_check") == "1" and {name for name, _ in fields} <= {"ssl_check", "token"}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _reparsed(request: AsyncBoltRequest) -> AsyncBoltRequest:
    """Work around Bolt reading any form body that mentions "payload" as an interaction payload.

    `/dpor set prod 4977985 payload team` would otherwise reach Bolt as an empty body (and a 404).
    The signature is still checked on the unchanged raw body.
    """
    if request.body or "payload" not in request.raw_body:
        return request
    params = dict(parse_qsl(request.raw_body, keep_blank_values=True))
    if "payload" in params:
        return request
    request.body = params
    request.context = build_async_context(AsyncBoltContext({}), params)
    return request


def web_app(bot: Bot) -> web.Application:
    """The HTTP surface: Slack's events endpoint, a health check and the metrics; starts and stops the bot."""
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/slack/events", bot.metrics.timed(bot.slack_events))
    app.router.add_get("/healthz", bot.healthz)
    app.router.add_get("/metrics", bot.prometheus)

    async def lifecycle(_app: web.Application):  # aiohttp cleanup context
        await bot.start()
        yield
        await bot.stop()

    app.cleanup_ctx.append(lifecycle)
    return app
