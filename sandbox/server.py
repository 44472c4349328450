"""The sandbox: the unchanged bot, and a local Slack that serves a web page, its JSON API and the Web API.

The Slack side is the Web API stand-in (sandbox.standin) with the page's routes (sandbox.page) added. The
page turns what someone does into the requests Slack would send; this module signs them with the signing
secret and posts them to the bot's /slack/events over HTTP. The bot runs as `dpor-bot serve` does,
signature checks on, on a port of its own in the same process.

Both listen on 127.0.0.1 only, and the Slack side answers only requests addressed to it by a loopback
name (the Host header): a web page elsewhere cannot reach it through a DNS name rebound to 127.0.0.1.
Its data goes to a temporary database, or to one named for it and checked first (sandbox.database).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from bot.app import Bot, web_app
from bot.directory import list_roles
from bot.logs import configure as configure_logging
from bot.settings import ConfigError, load_settings, normalise_database_url
from sandbox.database import VARIABLE, foreign_data
from sandbox.page import BotAnswer, BotUnreachable, Page
from sandbox.seed import APPROVALS, NOTIFICATIONS, PEOPLE, TEAM_ID, role_labels, seed
from sandbox.signing import FORM_CONTENT_TYPE, sign
from sandbox.standin import SlackStandin

log = logging.getLogger("dpor.sandbox")

HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# The sandbox's data is made up, so its audit chain's key is no secret: it keys a database of the sandbox's
# own on any engine (PostgreSQL too), and never the operator's DPOR_AUDIT_KEY.
AUDIT_KEY = "dpor-bot sandbox: made-up data, a key that is no secret"


class Sandbox:
    """`async with Sandbox(port=0) as sandbox:` runs both sides; open `sandbox.url` in a browser."""

    def __init__(self, *, port: int = DEFAULT_PORT, database_url: str | None = None) -> None:
        self.port = port
        self.database_url = database_url
        self.signing_secret = secrets.token_hex(16)
        self._bot_token = f"xoxb-sandbox-{secrets.token_hex(8)}"
        self.slack = SlackStandin(team_id=TEAM_ID, bot_token=self._bot_token)
        self.bot: Bot | None = None
        self.bot_url: str | None = None
        self._bot_runner: web.AppRunner | None = None
        self._bot_running = False
        self._http: aiohttp.ClientSession | None = None
        self._tmpdir: str | None = None
        self.slack.app.middlewares.append(self._addressed_to_us())
        self.page = Page(self.slack, self.post, self.roles)
        self.page.add_routes(self.slack.app)

    @property
    def url(self) -> str:
        return self.slack.url + "/"

    # lifecycle

    async def start(self) -> str:
        """Start the Slack side on the port, then the bot on a free one; returns the page's URL."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self.url

    async def _start(self) -> None:
        database_url = await self._database()
        for person in PEOPLE:
            self.slack.add_user(person.id, name=person.handle, real_name=person.name)
        try:
            await self.slack.start(HOST, self.port)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {HOST}:{self.port} ({exc.strerror or exc}): "
                "choose another port with --port"
            ) from None
        settings = load_settings(
            SLACK_BOT_TOKEN=self._bot_token,
            SLACK_SIGNING_SECRET=self.signing_secret,
            SLACK_API_URL=self.slack.base_url,
            DATABASE_URL=database_url,
            DPOR_APPROVAL_CHANNEL=APPROVALS,
            DPOR_NOTIFY_CHANNELS=NOTIFICATIONS,
            DPOR_PROVIDER="ledger",
            # The seed's roles are rows of the bot's own table: a host's DPOR_ROLE_SOURCE=azure (production's)
            # would leave every made-up person "not linked", and ask Azure as the host's identity.
            DPOR_ROLE_SOURCE="local",
            DPOR_AUDIT_KEY=AUDIT_KEY,
        )
        self.bot = Bot(settings)
        # As `serve` does: requests still in progress at shutdown get 3 s.
        self._bot_runner = web.AppRunner(web_app(self.bot), access_log=None, shutdown_timeout=3.0)
        await self._bot_runner.setup()  # starts the bot: migrates the database, starts the worker
        self._bot_running = True
        await seed(self.bot.db)
        await web.TCPSite(self._bot_runner, HOST, 0).start()
        self.bot_url = f"http://{HOST}:{self._bot_runner.addresses[0][1]}/slack/events"
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def _database(self) -> str:
        """A new temporary SQLite database, or the one given when it holds no data that is not ours."""
        if self.database_url is None:
            self._tmpdir = tempfile.mkdtemp(prefix="dpor-sandbox-")
            return f"sqlite:///{Path(self._tmpdir) / 'sandbox.db'}"
        try:
            url = normalise_database_url(self.database_url)
        except ValueError as exc:
            raise ConfigError(f"--database-url or {VARIABLE}: {exc}") from None
        found = await foreign_data(url)
        if found is not None:
            raise ConfigError(
                f"refusing the sandbox's database: {found}, so it holds data that is not the sandbox's; "
                f"name an empty database, or leave out --database-url and {VARIABLE} for a temporary one"
            )
        return url

    def _addressed_to_us(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        """Middleware: 421 for a request whose Host is not a loopback name with our port (DNS rebinding)."""

        @web.middleware
        async def check_host(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            port = urlsplit(self.slack.url).port
            names = ("127.0.0.1", "localhost", "[::1]")
            allowed = {f"{name}:{port}" for name in names} | (set(names) if port == 80 else set())
            if request.headers.get("Host", "").lower() not in allowed:
                raise web.HTTPMisdirectedRequest(
                    text=f"The sandbox answers only at http://127.0.0.1:{port}/ or http://localhost:{port}/.\n"
                )
            return await handler(request)

        return check_host

    async def stop(self) -> None:
        self.page.close()
        if self._bot_running and self._bot_runner is not None:
            await self._bot_runner.cleanup()  # stops the bot too
        elif self.bot is not None:
            await self.bot.stop()
        self._bot_running, self._bot_runner = False, None
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self.slack.stop()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def roles(self) -> dict[str, str]:
        """Each person's roles as they stand in the database now (granted or revoked while it runs)."""
        if self.bot is None:
            return {}
        return role_labels(await list_roles(self.bot.db))

    async def post(self, form: str, content_type: str = FORM_CONTENT_TYPE) -> BotAnswer:
        """Sign and post a request to the bot, as Slack does (form-encoded, or JSON for an event)."""
        if self._http is None or self.bot_url is None:
            raise BotUnreachable("The bot is not running (yet): try again in a moment.")
        headers = {
            "Content-Type": content_type,
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            **sign(self.signing_secret, form),
        }
        started = time.monotonic()
        try:
            async with self._http.post(self.bot_url, data=form.encode(), headers=headers) as response:
                raw = await response.read()
                status, content_type = response.status, response.content_type
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("the bot did not answer: %r", exc)
            raise BotUnreachable(f"The bot did not answer ({type(exc).__name__}).") from None
        seconds = time.monotonic() - started
        if not raw:
            return BotAnswer(status, None, seconds)
        text = raw.decode("utf-8", "replace")
        if content_type == "application/json":
            with contextlib.suppress(ValueError):
                return BotAnswer(status, json.loads(text), seconds)
        return BotAnswer(status, text, seconds)


async def run_sandbox(port: int = DEFAULT_PORT, database_url: str | None = None) -> None:
    """`dpor-bot sandbox`: run until Ctrl-C or SIGTERM, then stop both sides and remove the temporary data.

    The data goes to a temporary database unless `database_url` (--database-url, DPOR_SANDBOX_DATABASE_URL)
    names one; DATABASE_URL is never read."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    configure_logging(logging.WARNING)
    database_url = database_url or None
    sandbox = Sandbox(port=port, database_url=database_url)
    try:
        url = await sandbox.start()
        where = "a temporary database, removed on exit"
        if database_url is not None:
            where = f"the database named by --database-url or {VARIABLE}, kept on exit"
        print(f"dpor-bot sandbox: open {url} in a browser", flush=True)
        print(f"  the bot answers on {sandbox.bot_url} and keeps its data in {where}", flush=True)
        print("  press Ctrl-C to stop", flush=True)
        await stop.wait()
        print("dpor-bot sandbox: stopping", flush=True)
    finally:
        await sandbox.stop()
