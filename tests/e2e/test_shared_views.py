"""The outbox's rows claimed together share one read of their request's card view (handlers/deliver.py):
an event's card, DM and notification are rendered from one read, and a later claim never reuses it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from bot import outbox, views
from bot.worker import CLAIM
from storage.models import OutboxMessage
from tests.harness import ADMIN, NEW_PARTNER, NOTIFY, OWNER, Harness

VIEW_KINDS = (outbox.CARD, outbox.DM, outbox.NOTIFY, outbox.THREAD, outbox.ASK, outbox.REMIND)


def count_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the card view's reads (the deliverer's two entry points into bot.views)."""
    reads = {"n": 0}
    card, card_delivery = views.card, views.card_delivery

    async def counted_card(*args: Any, **kw: Any) -> Any:
        reads["n"] += 1
        return await card(*args, **kw)

    async def counted_delivery(*args: Any, **kw: Any) -> Any:
        reads["n"] += 1
        return await card_delivery(*args, **kw)

    monkeypatch.setattr(views, "card", counted_card)
    monkeypatch.setattr(views, "card_delivery", counted_delivery)
    return reads


async def delivered(h: Harness) -> list[OutboxMessage]:
    async with h.bot.db.read() as session:
        rows = await session.scalars(
            select(OutboxMessage).where(OutboxMessage.kind.in_(VIEW_KINDS), OutboxMessage.status == "done")
        )
        return list(rows.all())


async def test_an_events_rows_share_one_read_of_the_card(
    harness_any_db: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness_any_db
    reads = count_reads(monkeypatch)
    await h.command(f"set prod {NEW_PARTNER} shared views", ADMIN)
    await h.card(1)
    await h.settle()
    assert (await h.click("dpor_approve", 1, OWNER))[0] == 200
    for _ in range(3):  # the apply, then the rows it queued, then the steps behind the card
        await h.settle()
    assert (await h.request(1)).status == "applied"

    rows = await delivered(h)
    # Applied: its card, the requester's DM and the watchers' notification were committed together.
    applied = [r for r in rows if r.payload.get("event") == "applied" or r.kind == outbox.CARD]
    assert {r.kind for r in applied} >= {outbox.CARD, outbox.DM, outbox.NOTIFY}
    assert reads["n"] < len(rows), (reads, [(r.id, r.kind) for r in rows])
    # Each still shows what happened: the DM and the notification tell of the applied change.
    texts = [m.text for m in h.slack.messages(NOTIFY)]
    assert any("Contoso MSP" in t for t in texts), texts


async def test_a_later_claim_reads_the_card_again(harness_any_db: Harness) -> None:
    h = harness_any_db
    await h.command(f"set prod {NEW_PARTNER} later claim", ADMIN)
    await h.card(1)
    await h.settle()
    deliverer = h.bot.worker.deliverers[outbox.DM].__self__  # type: ignore[union-attr]
    row = OutboxMessage(kind=outbox.DM, key=f"dm:{ADMIN}", payload={"user_id": ADMIN, "request_id": 1})

    async def view_in_claim(claim: int) -> views.CardView:
        CLAIM.set(claim)  # this task's context, as the worker sets it for each row it claimed
        return await deliverer._view(row)

    first = await asyncio.create_task(view_in_claim(10_000))
    assert first.request.status == "pending"
    assert (await h.click("dpor_approve", 1, OWNER))[0] == 200
    for _ in range(3):
        await h.settle()
    assert (await h.request(1)).status == "applied"

    same_claim = await asyncio.create_task(view_in_claim(10_000))
    later_claim = await asyncio.create_task(view_in_claim(10_001))
    assert same_claim is first  # rows of one claim share its read
    assert later_claim.request.status == "applied"  # a later claim sees what was committed since


@pytest.mark.parametrize("dm_first", [False, True], ids=["card-first", "dm-first"])
async def test_a_card_and_the_rows_claimed_with_it_share_the_cards_read(
    harness_any_db: Harness, monkeypatch: pytest.MonkeyPatch, dm_first: bool
) -> None:
    """A card's delivery reads its view with the rows it covers; the request's other rows in its claim
    wait for that read instead of reading again, whether their task starts after the card's or before it
    (an older step of the card's thread, claimed with the card's newer update)."""
    h = harness_any_db
    await h.command(f"set prod {NEW_PARTNER} one read", ADMIN)
    await h.card(1)
    await h.settle()
    reads = count_reads(monkeypatch)
    deliverer = h.bot.worker.deliverers[outbox.CARD].__self__  # type: ignore[union-attr]
    card = OutboxMessage(id=10_000, kind=outbox.CARD, key="card:1", payload={"request_id": 1})
    dm = OutboxMessage(
        kind=outbox.DM, key=f"dm:{ADMIN}", payload={"user_id": ADMIN, "request_id": 1, "event": "approved"}
    )
    marks = len(h.slack.calls)

    async def in_claim(deliver: Any, row: OutboxMessage) -> Any:
        CLAIM.set(20_000)  # this task's context, as the worker sets it for each row it claimed
        return await deliver(row)

    steps = [(deliverer.card, card), (deliverer.dm, dm)]
    await asyncio.gather(*[asyncio.create_task(in_claim(*step)) for step in steps[:: -1 if dm_first else 1]])
    assert reads["n"] == 1
    methods = [c.method for c in h.slack.calls[marks:]]
    assert "chat.update" in methods and "chat.postMessage" in methods, methods  # both delivered


async def test_when_the_cards_read_fails_the_rows_waiting_for_it_fail_and_a_later_claim_reads_again(
    harness_any_db: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card's read that fails fails the rows of its claim waiting for it, as their own read would have
    (the worker retries them); nothing hangs, and the next claim reads anew and delivers."""
    h = harness_any_db
    await h.command(f"set prod {NEW_PARTNER} failing read", ADMIN)
    await h.card(1)
    await h.settle()
    card_delivery = views.card_delivery

    async def broken(*args: Any, **kw: Any) -> Any:
        raise ConnectionResetError("the database went away")

    monkeypatch.setattr(views, "card_delivery", broken)
    deliverer = h.bot.worker.deliverers[outbox.CARD].__self__  # type: ignore[union-attr]
    card = OutboxMessage(id=10_000, kind=outbox.CARD, key="card:1", payload={"request_id": 1})
    dm = OutboxMessage(
        kind=outbox.DM, key=f"dm:{ADMIN}", payload={"user_id": ADMIN, "request_id": 1, "event": "approved"}
    )

    async def in_claim(claim: int, deliver: Any, row: OutboxMessage) -> Any:
        CLAIM.set(claim)
        return await deliver(row)

    waiting = asyncio.create_task(in_claim(30_000, deliverer.dm, dm))  # asks first, waits for the card
    failing = asyncio.create_task(in_claim(30_000, deliverer.card, card))
    results = await asyncio.wait_for(asyncio.gather(waiting, failing, return_exceptions=True), 10)
    assert [type(r) for r in results] == [ConnectionResetError, ConnectionResetError]
    monkeypatch.setattr(views, "card_delivery", card_delivery)
    marks = len(h.slack.calls)
    await asyncio.wait_for(
        asyncio.gather(in_claim(30_001, deliverer.dm, dm), in_claim(30_001, deliverer.card, card)), 10
    )
    methods = [c.method for c in h.slack.calls[marks:]]
    assert "chat.update" in methods and "chat.postMessage" in methods, methods
