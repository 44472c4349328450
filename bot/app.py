"""App assembly: the Bolt app, its HTTP server and Socket Mode runner, and the outbox worker."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import signal
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_internals import build_async_context
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot import lifecycle, outbox, reconcile
from bot.apply import Applier
from bot.context import BotContext
from bot.policy import Policy
from bot.providers import Providers
from bot.settings import ConfigError, Settings
from bot.worker import OutboxWorker
from handlers import register_listeners
from handlers.deliver import SlackDeliverer
from storage import replay
from storage.db import Database
from storage.migrate import is_current, upgrade

log = logging.getLogger("dpor")

# How far X-Slack-Request-Timestamp may be from now: Bolt's (slack_sdk's SignatureVerifier) five minutes.
SIGNATURE_WINDOW = 300
# A connection gets this long for a request's headers (counted from its opening or from the previous
# answer; aiohttp's keep-alive timer), then as long again for the body: a half-sent request is closed.
READ_TIMEOUT = 10.0
AUTH_TEST_TIMEOUT = 10.0  # start-up's one auth.test
HEALTH_TIMEOUT = 5.0
HEALTH_REUSE = (
    1.0  # /healthz answers this soon after a check reuse it: a flood of probes writes once a second
)


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def require(settings: Settings, *names: str) -> None:
    """Stop start-up with one line when a variable the mode needs is missing."""
    fields = {
        "SLACK_BOT_TOKEN": "slack_bot_token",
        "SLACK_SIGNING_SECRET": "slack_signing_secret",
        "SLACK_APP_TOKEN": "slack_app_token",
    }
    missing = [n for n in names if getattr(settings, fields[n]) is None]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} must be set: copy them from your Slack app's settings "
            "(Basic Information and OAuth & Permissions); see the README."
        )


class Bot:
    """The running bot: database, Slack client, Bolt app and outbox worker, started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker_poll_interval: float | None = None,
        socket_mode: bool = False,
        expire_interval: float | None = None,
    ) -> None:
        self.settings = settings
        self.socket_mode = socket_mode
        self.db = Database(settings.database_url)
        self.policy = Policy.from_settings(settings)
        self.providers = Providers(settings, self.db)
        self.ctx = BotContext(settings=settings, db=self.db, policy=self.policy)
        self.sightings = replay.Sightings(self.db)  # signatures seen: the replay defence
        self.http: aiohttp.ClientSession | None = None
        self.client: AsyncWebClient | None = None
        self.app: AsyncApp | None = None
        self.worker_client: AsyncWebClient | None = None
        self.worker: OutboxWorker | None = None
        self.reconciler: asyncio.Task[None] | None = None
        # Who the bot is in Slack (auth.test), resolved once by start(): never in a request's path.
        self.identity: AuthorizeResult | None = None
        secret = settings.slack_signing_secret
        self._signing_key = secret.get_secret_value().encode() if secret else b""
        self._health_check: asyncio.Future[tuple[str, str] | None] | None = None
        self._health_error: str | None = None
        # Tests poll faster than DPOR_OUTBOX_POLL_INTERVAL and DPOR_SWEEP_INTERVAL allow for.
        self._poll = worker_poll_interval or settings.outbox_poll_interval.total_seconds()
        self._expire = expire_interval or settings.sweep_interval.total_seconds()

    async def start(self) -> None:
        secret = self.settings.slack_signing_secret
        if secret is None and not self.socket_mode:
            # Without it every HTTP request would be checked against an empty key.
            raise ConfigError("SLACK_SIGNING_SECRET must be set to serve Slack over HTTP")
        await self.prepare_database()
        await self.providers.check()
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        token = self.settings.slack_bot_token.get_secret_value() if self.settings.slack_bot_token else None
        retries = [
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncRateLimitErrorRetryHandler(max_retry_count=1),
        ]
        url = self.settings.slack_api_url
        self.client = AsyncWebClient(token=token, base_url=url, session=self.http, retry_handlers=retries)
        try:
            self.identity = identity = await self._who_am_i(token)
        except BaseException:
            await self.stop()
            raise

        async def authorize() -> AuthorizeResult:
            return identity

        self.app = AsyncApp(
            # Bolt's per-request clients take the token from `authorize`: Bolt never calls auth.test itself.
            client=AsyncWebClient(base_url=url, session=self.http, retry_handlers=retries),
            authorize=authorize,
            signing_secret=secret.get_secret_value() if secret else "",
            process_before_response=True,
            logger=logging.getLogger("dpor.bolt"),
        )
        # No retries inside the client: the outbox retries, and holds a channel Slack answers 429 for.
        self.worker_client = AsyncWebClient(
            token=token, base_url=self.settings.slack_api_url, session=self.http, retry_handlers=[]
        )
        self.worker = outbox_worker(
            self.ctx,
            self.providers,
            self.worker_client,
            poll_interval=self._poll,
            sweep_interval=self._expire,
        )
        self.ctx.wake_worker = self.worker.wake
        register_listeners(self.app, self.ctx)
        self.worker.start()
        if self.settings.reconcile_every is not None:
            self.reconciler = asyncio.create_task(
                reconcile.periodically(
                    self.db,
                    self.providers,
                    self.policy,
                    self.settings.reconcile_every,
                    after_run=self.worker.wake,
                ),
                name="dpor-reconcile",
            )

    async def _who_am_i(self, token: str | None) -> AuthorizeResult:
        """Who the bot is, from one auth.test with a bounded wait; a failure is one clear line."""
        assert self.client is not None
        host = urlsplit(self.settings.slack_api_url).hostname
        try:
            async with asyncio.timeout(AUTH_TEST_TIMEOUT):
                response = await self.client.auth_test()
        except TimeoutError:
            raise ConfigError(
                f"Slack ({host}) did not answer auth.test within {AUTH_TEST_TIMEOUT:.0f} s: "
                "check SLACK_API_URL and the network, then start again"
            ) from None
        except SlackApiError as exc:
            raise ConfigError(
                f"Slack refused SLACK_BOT_TOKEN (auth.test: {exc.response.get('error')})"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ConfigError(f"cannot reach Slack ({host}) for auth.test: {type(exc).__name__}") from None
        return AuthorizeResult.from_auth_test_response(auth_test_response=response, bot_token=token)

    async def prepare_database(self) -> None:
        if await is_current(self.db):
            return
        if self.db.is_sqlite:
            await upgrade(self.db)  # an embedded database keeps itself current
        else:
            raise ConfigError("the database schema is not current: run `dpor-bot db upgrade`")

    async def stop(self) -> None:
        if self.reconciler is not None:
            self.reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reconciler
            self.reconciler = None
        if self.worker is not None:
            await self.worker.stop()
        if self.http is not None:
            await self.http.close()
        await self.db.dispose()

    async def slack_events(self, request: web.Request) -> web.Response:
        """Slack's requests: signature (on the raw bytes), replay, shape; then Bolt, which verifies again."""
        assert self.app is not None
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                raw = await request.read()
        except TimeoutError:
            log.warning("refused a request whose body did not arrive within %.0f s (408)", READ_TIMEOUT)
            return web.Response(status=408, headers={"Connection": "close"})
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        if not _signed(self._signing_key, raw, timestamp, signature):
            if _is_ssl_check(raw):
                return web.Response()  # Slack's certificate check comes unsigned and only wants a 200
            log.warning("refused a request without a valid Slack signature (401)")
            return web.Response(status=401)
        digest = hashlib.sha256(signature.encode()).hexdigest()
        try:
            first = await self.sightings.first(digest, datetime.fromtimestamp(int(timestamp), UTC))
        except Exception as exc:
            log.error("refused a request (503): its signature could not be recorded: %s", _first_line(exc))
            return web.Response(status=503)
        if not first:
            log.warning("refused a replayed request (401): its signature was already seen")
            # A copy of a request already received: Slack (were it the sender) need not try again.
            return web.Response(status=401, headers={"X-Slack-No-Retry": "1"})
        try:
            bolt_request = _reparsed(
                AsyncBoltRequest(body=raw.decode(), query=request.query_string, headers=request.headers)  # type: ignore[arg-type]
            )
        except Exception as exc:  # whatever Bolt's parser trips on (not UTF-8, not JSON, not an object)
            log.warning("refused a signed request whose body is malformed (400): %s", type(exc).__name__)
            return web.Response(status=400)
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


def outbox_worker(
    ctx: BotContext, providers: Providers, client: AsyncWebClient, **options: Any
) -> OutboxWorker:
    """The outbox worker with its deliverers: Slack's for messages, the applier for changes."""
    settings = ctx.settings
    options = {
        "lease": settings.outbox_lease,
        "max_attempts": settings.outbox_max_attempts,
        "concurrency": settings.outbox_concurrency,
        **options,
    }
    applier = Applier(ctx.db, ctx.policy, providers, max_attempts=options["max_attempts"])
    return OutboxWorker(
        ctx.db,
        {**SlackDeliverer(ctx, client).deliverers(), outbox.APPLY: applier.deliver},
        buriers={outbox.APPLY: applier.give_up},
        dead_recorders={
            outbox.CARD: lambda row: partial(lifecycle.card_unposted, request_id=row.payload["request_id"])
        },
        sweep=lambda: lifecycle.sweep(ctx.db, settings.remind_after),
        **options,
    )


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
    """The HTTP surface: Slack's events endpoint and a health check; starts and stops the bot with it."""
    app = web.Application(client_max_size=1024**2)
    app.router.add_post("/slack/events", bot.slack_events)
    app.router.add_get("/healthz", bot.healthz)

    async def lifecycle(_app: web.Application):  # aiohttp cleanup context
        await bot.start()
        yield
        await bot.stop()

    app.cleanup_ctx.append(lifecycle)
    return app


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_http(settings: Settings, port: int) -> None:
    require(settings, "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET")
    configure_logging()
    # On SIGTERM: requests in progress get 3 s, then the worker its grace (5 s): exit well within 10 s.
    runner = web.AppRunner(
        web_app(Bot(settings)),
        access_log=None,
        shutdown_timeout=3.0,
        # aiohttp's own keep-alive timer closes a connection that has not sent a whole request header in
        # READ_TIMEOUT (its default is an hour); after a 408 the unread rest of a body gets a second.
        keepalive_timeout=READ_TIMEOUT,
        lingering_time=1.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, host="0.0.0.0", port=port)
    await site.start()
    log.info("dpor-bot listening on http://0.0.0.0:%s (POST /slack/events, GET /healthz)", port)
    try:
        await _until_signalled()
    finally:
        log.info("dpor-bot shutting down")
        await runner.cleanup()


async def run_socket(settings: Settings) -> None:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    require(settings, "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN")
    configure_logging()
    bot = Bot(settings, socket_mode=True)
    await bot.start()
    assert bot.app is not None and settings.slack_app_token is not None
    handler = AsyncSocketModeHandler(bot.app, settings.slack_app_token.get_secret_value())
    try:
        await handler.connect_async()
        log.info("dpor-bot connected to Slack in Socket Mode")
        await _until_signalled()
    finally:
        await handler.close_async()
        await bot.stop()
