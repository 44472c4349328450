"""Crash recovery: `dpor-bot serve` killed right after an ack, or at a named point in the worker; the next
process finishes every request and delivers every message once (twice only for the one message whose
delivery Slack accepted just before the crash, the window no Slack API call can close)."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.durability.conftest import CRASH_AT_ENV, BotProcess, Stack
from tests.harness import ADMIN, NEW_PARTNER, NOTIFY, OWNER, PROD

SET = f"set prod {NEW_PARTNER} Contoso runs our support now"


class CrashingBot:
    """The flow's bot: started with each crash point in turn, restarted (without one) after each crash."""

    def __init__(self, stack: Stack, points: list[str]) -> None:
        self.stack = stack
        self.points = list(points)
        self.crashed: list[str] = []
        self.bot: BotProcess | None = None

    async def alive(self) -> BotProcess:
        if self.bot is None or self.bot.returncode is not None:
            if self.bot is not None:
                code, log = self.bot.returncode, self.bot.log()
                assert code == -signal.SIGKILL, f"{self.bot.name} exited with {code}, not by a crash:\n{log}"
                assert f"{CRASH_AT_ENV}={self.bot.crash_at}" in log, log
                self.crashed.append(str(self.bot.crash_at))
            self.bot = await self.stack.start(crash_at=self.points.pop(0) if self.points else None)
        return self.bot

    async def send(self, post: Callable[[BotProcess], Awaitable[tuple[int, Any]]]) -> tuple[int, Any] | None:
        """Post to the live bot. A crash point may kill it between its commit and its answer (the worker
        starts on the new rows at once); then there is no answer, and the test reads the outcome from
        the database instead."""
        bot = await self.alive()
        try:
            return await post(bot)
        except aiohttp.ClientError:
            assert await bot.exited() == -signal.SIGKILL, bot.log()
            return None


async def run_flow(stack: Stack, points: list[str]) -> list[str]:
    """`/dpor set`, wait for the card, Approve, wait until applied and every row is delivered; the bot
    crashes at each of `points` on the way. Returns the points it crashed at."""
    flow = CrashingBot(stack, points)
    answer = await flow.send(lambda bot: stack.command(bot, SET, ADMIN))
    assert answer is None or (answer[0] == 200 and "Request #1" in answer[1]["text"]), answer

    async def card_posted() -> bool:
        return (await stack.request(1)).card_ts is not None and await stack.undelivered() == 0

    await stack.until("the card posted", card_posted, between=flow.alive)
    answer = await flow.send(lambda bot: stack.click(bot, "dpor_approve", 1, OWNER))
    assert answer is None or answer[0] == 200, answer

    async def finished() -> bool:
        return (
            len(flow.crashed) == len(points)
            and (await stack.request(1)).status == "applied"
            and await stack.undelivered() == 0
        )

    await stack.until(f"applied after crashes at {points}", finished, between=flow.alive)
    return flow.crashed


async def assert_everything_delivered(stack: Stack, *, twice: frozenset[str] = frozenset()) -> None:
    """The request is applied, audited once per step, and every message is there once (the ones named in
    `twice`, the crash's unrecorded delivery, exactly twice)."""
    assert (await stack.request(1)).status == "applied"
    assert await stack.partner_of(PROD) == NEW_PARTNER
    actions = await stack.audit_actions()
    for action in ("request.created", "request.approved", "apply.started", "apply.succeeded"):
        assert actions[action] == 1, actions
    await stack.verify_audit()
    assert all(row.status == "done" for row in await stack.outbox())

    cards = stack.card_messages()
    assert len(cards) == (2 if "card" in twice else 1), [c.text for c in cards]
    assert await stack.card_shows(1, "Applied")
    dms = stack.texts(stack.slack.dm_channel(ADMIN))
    assert sum("was approved" in t for t in dms) == (2 if "dm" in twice else 1), dms
    assert sum("was applied" in t for t in dms) == 1, dms
    notices = stack.texts(NOTIFY)
    assert len(notices) == (2 if "notify" in twice else 1), notices
    assert all("was applied" in t for t in notices)


async def test_killed_right_after_the_ack_of_set_and_of_approve(stack: Stack) -> None:
    """What Slack was told was acked is committed: kill -9 right after each ack, with the worker's Slack
    calls held in flight (not yet at Slack), and a new process does all of it, once."""
    slack = stack.slack
    bot = await stack.start()
    slack.hold("chat.postMessage")
    status, body = await stack.command(bot, SET, ADMIN)
    assert status == 200 and "Request #1" in body["text"], body
    await bot.kill()
    slack.release("chat.postMessage", drop=True)
    assert (await stack.request(1)).status == "pending"

    bot = await stack.start()

    async def card_posted() -> bool:
        return (await stack.request(1)).card_ts is not None and await stack.undelivered() == 0

    await stack.until("the card posted", card_posted)
    for method in ("chat.postMessage", "chat.update"):
        slack.hold(method)
    status, _ = await stack.click(bot, "dpor_approve", 1, OWNER)
    assert status == 200
    await bot.kill()
    for method in ("chat.postMessage", "chat.update"):
        slack.release(method, drop=True)
    assert (await stack.request(1)).status in ("approved", "applying", "applied")

    await stack.start()

    async def applied() -> bool:
        return (await stack.request(1)).status == "applied" and await stack.undelivered() == 0

    await stack.until("applied", applied)
    await assert_everything_delivered(stack)


@pytest.mark.parametrize(
    "points",
    [
        pytest.param(
            ["card.claimed", "apply.started", "apply.applied", "apply.delivered"],
            id="after-a-claim-and-mid-apply",
        ),
    ],
)
async def test_killed_at_each_point_before_slack_accepts(stack: Stack, points: list[str]) -> None:
    """Killed after a claim (nothing sent yet), and at every step of an apply (before the provider; after
    it, its result handed to the worker but not written; inside the transaction writing the result with
    the row's outcome, before its commit): nothing lost, nothing twice, and the apply repeated safely (one
    apply.started, one apply.succeeded)."""
    assert await run_flow(stack, points) == points
    await assert_everything_delivered(stack)


async def test_killed_after_slack_accepted_a_message(stack: Stack) -> None:
    """Killed after Slack accepted a message but before the worker recorded it: the message is sent again
    (Slack offers no idempotency key), exactly once more, and everything else once."""
    points = ["card.delivered", "dm.delivered"]
    assert await run_flow(stack, points) == points
    await assert_everything_delivered(stack, twice=frozenset({"card", "dm"}))
    # The card the bot records (and updates) is the second one; the first is left as it was posted.
    first, second = stack.card_messages()
    assert (await stack.request(1)).card_ts == second.ts and first.updated == 0


async def test_sigterm_during_delivery_exits_0_and_loses_nothing(stack: Stack) -> None:
    """SIGTERM while the card's post is in flight: the bot stops taking work, records the answer that
    arrives within its grace period, closes everything and exits 0; what it had not started (the owners'
    DMs, queued behind the card) waits in the database and the next process delivers it."""
    slack = stack.slack
    bot = await stack.start()
    slack.hold("chat.postMessage")
    status, _ = await stack.command(bot, SET, ADMIN)
    assert status == 200
    await slack.wait_held("chat.postMessage")
    bot.signal(signal.SIGTERM)
    await bot.logged("dpor-bot shutting down")
    slack.release("chat.postMessage")
    assert await bot.exited(within=10) == 0, bot.log()
    assert "Traceback" not in bot.log(), bot.log()
    assert (await stack.request(1)).card_ts == stack.card_messages()[0].ts, "the post was not recorded"
    waiting = [row for row in await stack.outbox() if row.status != "done"]
    assert waiting and {row.kind for row in waiting} == {"ask"}, waiting  # not started: nothing half-done
    assert all(row.attempts == 0 and row.claimed_by is None for row in waiting)
    await stack.start()

    async def delivered() -> bool:
        return await stack.undelivered() == 0

    await stack.until("the next process delivers what was left", delivered)
    assert len(stack.card_messages()) == 1  # the card recorded before the exit is not posted again
