"""The real bot over real HTTP: Bolt app + worker behind aiohttp, a Slack stand-in, signed requests.

One seed and one set of people for every suite that drives the app (e2e, durability, sandbox); the
fixtures that start it (`harness`, `harness_any_db`, `bot_env`) are in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp.test_utils import TestServer
from sqlalchemy import func, select

from bot import directory
from bot.app import Bot, web_app
from bot.settings import Settings
from sandbox.signing import home_opened_event
from sandbox.standin import Message, SlackStandin
from sandbox.surfaces import Surfaces
from storage.db import Database
from storage.models import AuditEvent, ChangeRequest, OutboxMessage, utcnow
from tests.slack import SignedSlackClient

SECRET = "e2e-signing-secret"
JSONDict = dict[str, Any]
TOKEN = "xoxb-e2e-token"
TEAM = "T0DPOR"
APPROVALS = "C0APPROVALS"
NOTIFY = "C0NOTIFY"
PROD = "11111111-2222-3333-4444-555555555555"
DEV = "66666666-7777-8888-9999-000000000000"
OLD_PARTNER, NEW_PARTNER = "1234566", "4977985"
ADMIN, OWNER, OWNER2, BYSTANDER, DEV_OWNER = "U0ADMIN", "U0OWNER", "U0OWNER2", "U0BYSTAND", "U0DEVOWNER"


@dataclass
class Harness:
    bot: Bot
    slack: SlackStandin
    client: SignedSlackClient
    url: str
    extra_env: dict[str, Any] = field(default_factory=dict)

    async def command(self, text: str, user_id: str, **kw: Any) -> tuple[int, Any]:
        kw.setdefault("channel_id", APPROVALS)
        kw.setdefault("trigger_id", self.surfaces.trigger(user_id))
        return await self.client.command(self.url, text, user_id, team_id=kw.pop("team_id", TEAM), **kw)

    # Views: modals and App Home, as the stand-in holds them (sandbox.surfaces).

    @property
    def surfaces(self) -> Surfaces:
        return self.slack.workspace.surfaces

    def modal(self, user_id: str) -> JSONDict:
        """The modal open on top of `user_id`'s screen, as Slack sends it in payloads."""
        view = self.surfaces.modal(user_id)
        assert view is not None, f"{user_id} has no modal open"
        return self.surfaces.payload(view)

    def home(self, user_id: str) -> JSONDict | None:
        """The Home tab published for `user_id`, as Slack sends it in payloads, or None."""
        view = self.surfaces.home(user_id)
        return self.surfaces.payload(view) if view is not None else None

    async def shortcut(self, callback_id: str, user_id: str) -> tuple[int, Any]:
        trigger = self.surfaces.trigger(user_id)
        return await self.client.shortcut(self.url, callback_id, user_id, team_id=TEAM, trigger_id=trigger)

    async def submit(self, user_id: str, values: JSONDict) -> tuple[int, Any]:
        """Submit `user_id`'s top modal with `values` (Slack's state.values); Slack acts on the answer."""
        view = self.modal(user_id)
        status, answer = await self.client.submit(self.url, view, values, user_id, team_id=TEAM)
        if status == 200:
            self.surfaces.set_state(view["id"], values)
            self.surfaces.answer(user_id, answer if isinstance(answer, dict) else None)
        return status, answer

    async def suggest(self, user_id: str, action_id: str, typed: str) -> tuple[int, Any]:
        """Type `typed` into external select `action_id` of `user_id`'s top modal."""
        return await self.client.suggest(
            self.url, action_id, typed, user_id, self.modal(user_id), team_id=TEAM
        )

    async def home_opened(self, user_id: str) -> tuple[int, Any]:
        """`user_id` opens the app's Home tab (Slack's app_home_opened event)."""
        return await self.client.event(self.url, home_opened_event(user_id, self.home(user_id)), team_id=TEAM)

    def published(self) -> int:
        """How many Homes the bot has published so far (views.publish calls Slack accepted)."""
        return len([c for c in self.slack.calls_to("views.publish") if c.ok])

    async def republished(self, published: int) -> None:
        """Wait for the Home the bot publishes after answering a Home click or a form from the Home (it
        publishes once Slack has its answer): one more than `published`."""
        await self.slack.wait_for("views.publish", published + 1)

    async def click_home(self, action_id: str, request_id: int | str, user_id: str) -> tuple[int, Any]:
        """Click button `action_id` for request `request_id` on `user_id`'s Home tab."""
        view = self.home(user_id)
        assert view is not None, f"{user_id} has no Home tab published"
        trigger = self.surfaces.trigger(user_id)
        return await self.client.click(
            self.url, action_id, str(request_id), user_id, team_id=TEAM, view=view, trigger_id=trigger
        )

    async def click(self, action_id: str, request_id: int | str, user_id: str, **kw: Any) -> tuple[int, Any]:
        if "message_ts" not in kw:
            kw["message_ts"] = (await self.card(int(request_id))).ts
        kw.setdefault("channel_id", APPROVALS)
        kw.setdefault("trigger_id", self.surfaces.trigger(user_id))
        kw.setdefault(
            "response_url",
            self.slack.response_url(f"click-{user_id}", channel=kw["channel_id"], user=user_id),
        )
        return await self.client.click(
            self.url, action_id, str(request_id), user_id, team_id=kw.pop("team_id", TEAM), **kw
        )

    async def card(self, request_id: int) -> Message:
        """The approval card of a request, once the worker has posted it."""
        for _ in range(200):
            async with self.bot.db.read() as session:
                req = await session.get(ChangeRequest, request_id)
            if req is not None and req.card_ts:
                return self.slack.message(req.card_channel, req.card_ts)
            await asyncio.sleep(0.02)
        raise AssertionError(f"request {request_id} has no card")

    async def request(self, request_id: int) -> ChangeRequest:
        async with self.bot.db.read() as session:
            req = await session.get(ChangeRequest, request_id)
        assert req is not None
        return req

    async def counts(self) -> dict[str, int]:
        """Rows in the tables a refused request must not touch."""
        out = {}
        async with self.bot.db.read() as session:
            for model in (ChangeRequest, AuditEvent, OutboxMessage):
                out[model.__tablename__] = await session.scalar(select(func.count()).select_from(model))
        return out

    async def audit_actions(self) -> list[str]:
        async with self.bot.db.read() as session:
            return list((await session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq))).all())

    async def settle(self, within: float = 10.0) -> None:
        """Wait until the worker has delivered every outbox row that is due."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            async with self.bot.db.read() as session:
                waiting = await session.scalar(
                    select(func.count())
                    .select_from(OutboxMessage)
                    .where(OutboxMessage.status == "pending", OutboxMessage.available_at <= utcnow())
                )
            if not waiting:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{waiting} outbox rows still undelivered after {within}s")


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until `check()` holds (what the bot does after its answer to Slack), or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"still not so after {within}s")
        await asyncio.sleep(0.02)


async def seed(db: Database, extra_owners: tuple[str, ...] = ()) -> None:
    """Production EU (prod) and Dev (dev), two partners, an admin and owners of prod, a global owner."""
    await directory.upsert_subscriptions(
        db,
        [
            directory.SubscriptionRow(PROD, "Production EU", "prod"),
            directory.SubscriptionRow(DEV, "Dev", "dev"),
        ],
        actor="test",
    )
    await directory.add_partner(db, OLD_PARTNER, "Fabrikam Consulting", actor="test")
    await directory.add_partner(db, NEW_PARTNER, "Contoso MSP", actor="test")
    await directory.grant_role(db, ADMIN, "admin", "prod", actor="test")
    for owner in (OWNER, *extra_owners):
        await directory.grant_role(db, owner, "owner", "prod", actor="test")
    await directory.grant_role(db, OWNER2, "owner", None, actor="test")
    await directory.grant_role(db, DEV_OWNER, "owner", "dev", actor="test")


def make_settings(slack: SlackStandin, database_url: str, **env: Any) -> Settings:
    values = {
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.base_url,
        "DATABASE_URL": database_url,
        "DPOR_APPROVAL_CHANNEL": APPROVALS,
        "DPOR_NOTIFY_CHANNELS": NOTIFY,
        **env,
    }
    return Settings(**values)


async def start_harness(database_url: str, **env: Any) -> AsyncIterator[Harness]:
    async with SlackStandin(bot_token=TOKEN) as slack, SignedSlackClient(SECRET) as client:
        bot = Bot(make_settings(slack, database_url, **env), worker_poll_interval=0.05)
        server = TestServer(web_app(bot), host="127.0.0.1")
        await server.start_server()
        try:
            await seed(bot.db)
            yield Harness(bot, slack, client, str(server.make_url("/slack/events")))
        finally:
            await server.close()
