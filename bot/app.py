"""App assembly: the Bolt app, its HTTP server and Socket Mode runner, and the outbox worker."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot import audit_keys, checkpoints, lifecycle, outbox, reconcile, watches
from bot.apply import Applier
from bot.azure_roles import AzureRoles, role_source
from bot.context import BotContext
from bot.http import READ_TIMEOUT, HttpEdge, web_app
from bot.logs import configure_for
from bot.metrics import Metrics
from bot.policy import Policy
from bot.providers import Providers
from bot.settings import ConfigError, Settings
from bot.worker import OutboxWorker
from handlers import finish_after_ack, register_listeners
from handlers.deliver import SlackDeliverer, archived
from storage import replay
from storage.db import Database
from storage.migrate import is_current, upgrade

log = logging.getLogger("dpor")

AUTH_TEST_TIMEOUT = 10.0  # start-up's one auth.test
# At shutdown, what a listener began after its ack gets this long, alongside the worker's grace (5 s).
AFTER_ACK_GRACE = 3.0


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


class Bot(HttpEdge):
    """The running bot: database, Slack client, Bolt app and outbox worker, started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker_poll_interval: float | None = None,
        socket_mode: bool = False,
        expire_interval: float | None = None,
        arm: Any | None = None,
    ) -> None:
        self.settings = settings
        self.socket_mode = socket_mode
        self.db = Database(settings.database_url, pool_size=settings.db_pool_size)
        # DPOR_ROLE_SOURCE: `arm` is the ARM client the Azure role source reads through (tests: a replay).
        roles = role_source(settings, self.db, arm)
        self.policy = dataclasses.replace(Policy.from_settings(settings), roles=roles)
        self.providers = Providers(settings, self.db)
        self.metrics = Metrics()  # this bot's own registry: GET /metrics
        self.ctx = BotContext(settings=settings, db=self.db, policy=self.policy, metrics=self.metrics)
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
        register_listeners(self.app, self.ctx)
        self.worker.start()
        if self.settings.reconcile_every is not None:
            self.reconciler = asyncio.create_task(
                reconcile.periodically(
                    self.db,
                    self.providers,
                    self.policy,
                    self.settings.reconcile_every,
                    metrics=self.metrics,
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
            pass
        elif self.db.is_sqlite:
            await upgrade(self.db)  # an embedded database keeps itself current
        else:
            raise ConfigError("the database schema is not current: run `dpor-bot db upgrade`")
        await audit_keys.prepare(self.db, self.settings)  # the chain's key, or one line why not

    async def stop(self) -> None:
        if self.reconciler is not None:
            self.reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reconciler
            self.reconciler = None
        # The worker's deliveries and the work begun after an ack finish together, before the Slack
        # session closes under them.
        await asyncio.gather(
            self.worker.stop() if self.worker is not None else asyncio.sleep(0),
            finish_after_ack(AFTER_ACK_GRACE),
        )
        if self.http is not None:
            await self.http.close()
        if isinstance(self.policy.roles, AzureRoles):
            await self.policy.roles.close()
        await self.db.dispose()


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
    applier = Applier(
        ctx.db, ctx.policy, providers, max_attempts=options["max_attempts"], metrics=ctx.metrics
    )
    return OutboxWorker(
        ctx.db,
        {**SlackDeliverer(ctx, client).deliverers(), outbox.APPLY: applier.deliver},
        dead_recorders={
            outbox.CARD: lambda row, _: partial(
                lifecycle.card_unposted, request_id=row.payload["request_id"]
            ),
            outbox.APPLY: applier.dead,
            outbox.NOTIFY: _archived_channel,
            outbox.NOTICE: _archived_channel,
        },
        sweep=checkpoints.with_daily(
            lambda: lifecycle.sweep(ctx.db, settings.remind_after, metrics=ctx.metrics, pol=ctx.policy),
            ctx.db,
            ctx.policy.audit_channel,
        ),
        **options,
    )


def _archived_channel(row: outbox.OutboxMessage, error: str) -> outbox.Recorder | None:
    """A notification Slack refused because its channel is archived: nobody can type `/dpor unsubscribe`
    there any more, so the channel's watches go with the row's death; else each later change would leave
    one more dead row for it, for ever."""
    if not archived(error):
        return None
    return partial(watches.channel_archived, channel_id=row.payload["channel"])


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_http(settings: Settings, port: int) -> None:
    require(settings, "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET")
    configure_for(settings)
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
    log.info("dpor-bot listening on http://0.0.0.0:%s (POST /slack/events, GET /healthz, GET /metrics)", port)
    try:
        await _until_signalled()
    finally:
        log.info("dpor-bot shutting down")
        await runner.cleanup()


async def run_socket(settings: Settings) -> None:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    require(settings, "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN")
    configure_for(settings)
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
