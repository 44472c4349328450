"""Reference data: subscription imports, the partner directory, roles and channel watches."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from bot import directory
from bot.directory import SubscriptionRow
from bot.errors import BadInput, Conflict, InvalidPartnerId, InvalidSubscriptionId, UnknownSubscription
from storage import directory as store
from storage.db import Database
from storage.models import AuditEvent, Base, Partner, RoleAssignment, Subscription

OPERATOR = "operator"
A = "11111111-2222-3333-4444-555555555555"
B = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
C = "cccccccc-0000-0000-0000-000000000000"
USER = "UUSER"


async def count(db: Database, model: type[Base]) -> int:
    async with db.read() as session:
        return await session.scalar(select(func.count()).select_from(model)) or 0


async def stored_subscriptions(db: Database) -> dict[str, tuple[str, str | None]]:
    async with db.read() as session:
        return {s.id: (s.name, s.alias) for s in await session.scalars(select(Subscription))}


async def audit_events(db: Database, action: str) -> list[AuditEvent]:
    async with db.read() as session:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        return list((await session.scalars(query)).all())


async def roles(db: Database, user_id: str, subscription_id: str) -> set[str]:
    async with db.read() as session:
        return await store.roles_for(session, user_id, subscription_id)


async def two_subscriptions(db: Database) -> None:
    await directory.upsert_subscriptions(
        db, [SubscriptionRow(A, "Production", "prod"), SubscriptionRow(B, "Staging", "stage")], actor=OPERATOR
    )


# --- subscriptions ---------------------------------------------------------------------------------


async def test_upsert_adds_then_is_idempotent(db: Database) -> None:
    rows = [SubscriptionRow(A.upper(), "  Production  EU ", "prod"), SubscriptionRow(B, "Staging")]
    result = await directory.upsert_subscriptions(db, rows, actor=OPERATOR)
    assert (result.added, result.updated, result.unchanged) == (2, 0, 0)
    assert await stored_subscriptions(db) == {A: ("Production EU", "prod"), B: ("Staging", None)}
    added = await audit_events(db, "subscription.added")
    assert [(e.actor, e.subscription_id) for e in added] == [(OPERATOR, A), (OPERATOR, B)]
    assert added[0].data == {"name": "Production EU", "alias": "prod", "updated": False}

    again = await directory.upsert_subscriptions(db, rows, actor=OPERATOR)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 2)
    assert await count(db, AuditEvent) == 2
    assert await stored_subscriptions(db) == {A: ("Production EU", "prod"), B: ("Staging", None)}


async def test_upsert_updates_what_changed(db: Database) -> None:
    await two_subscriptions(db)
    result = await directory.upsert_subscriptions(
        db,
        [SubscriptionRow(A, "Production", "prod"), SubscriptionRow(B, "Staging EU", "stage-eu")],
        actor=OPERATOR,
    )
    assert (result.added, result.updated, result.unchanged) == (0, 1, 1)
    assert await stored_subscriptions(db) == {A: ("Production", "prod"), B: ("Staging EU", "stage-eu")}
    last = (await audit_events(db, "subscription.added"))[-1]
    assert (last.subscription_id, last.data["updated"]) == (B, True)


async def test_aliases_swap_within_one_import(db: Database) -> None:
    await two_subscriptions(db)
    result = await directory.upsert_subscriptions(
        db, [SubscriptionRow(A, "Production", "stage"), SubscriptionRow(B, "Staging", "prod")], actor=OPERATOR
    )
    assert result.updated == 2
    assert await stored_subscriptions(db) == {A: ("Production", "stage"), B: ("Staging", "prod")}


async def test_an_alias_moves_to_a_new_subscription_in_one_import(db: Database) -> None:
    await two_subscriptions(db)
    result = await directory.upsert_subscriptions(
        db, [SubscriptionRow(A, "Production"), SubscriptionRow(C, "Production 2", "prod")], actor=OPERATOR
    )
    assert (result.added, result.updated) == (1, 1)
    assert (await stored_subscriptions(db))[C] == ("Production 2", "prod")


async def test_an_alias_held_by_another_subscription_is_refused(db: Database) -> None:
    await two_subscriptions(db)
    before = (await stored_subscriptions(db), await count(db, AuditEvent))
    with pytest.raises(Conflict, match=f"`prod` already belongs to subscription `{A}`"):
        await directory.upsert_subscriptions(
            db, [SubscriptionRow(C, "New", "prod"), SubscriptionRow(B, "Staging renamed")], actor=OPERATOR
        )
    assert (await stored_subscriptions(db), await count(db, AuditEvent)) == before


async def test_one_alias_for_two_subscriptions_in_the_input_is_refused(db: Database) -> None:
    with pytest.raises(Conflict, match="given to two subscriptions"):
        await directory.upsert_subscriptions(
            db, [SubscriptionRow(A, "One", "same"), SubscriptionRow(B, "Two", "same")], actor=OPERATOR
        )
    assert await count(db, Subscription) == 0
    assert await count(db, AuditEvent) == 0


@pytest.mark.parametrize(
    ("bad", "refusal"),
    [
        (SubscriptionRow("not-a-guid", "Bad"), InvalidSubscriptionId),
        (SubscriptionRow("11111111-2222-3333-4444-55555555555", "Short"), InvalidSubscriptionId),
        (SubscriptionRow(C, "   "), BadInput),
        (SubscriptionRow(C, "x" * 201), BadInput),
        (SubscriptionRow(C, "Spaced alias", "two words"), BadInput),
        (SubscriptionRow(C, "GUID alias", B), BadInput),
    ],
)
async def test_a_bad_row_refuses_the_whole_batch(
    db: Database, bad: SubscriptionRow, refusal: type[Exception]
) -> None:
    await two_subscriptions(db)
    before = (await stored_subscriptions(db), await count(db, AuditEvent))
    rows = [SubscriptionRow(A, "Production renamed", "prod"), SubscriptionRow(B, "Staging"), bad]
    with pytest.raises(refusal):
        await directory.upsert_subscriptions(db, rows, actor=OPERATOR)
    assert (await stored_subscriptions(db), await count(db, AuditEvent)) == before


async def test_resolve_by_id_or_alias(db: Database) -> None:
    await two_subscriptions(db)
    async with db.read() as session:
        assert (await directory.resolve_subscription(session, A.upper())).id == A
        assert (await directory.resolve_subscription(session, " stage ")).id == B
        with pytest.raises(UnknownSubscription, match="is not known"):
            await directory.resolve_subscription(session, C)
        with pytest.raises(UnknownSubscription, match="No subscription has the ID or alias"):
            await directory.resolve_subscription(session, "nope")
        with pytest.raises(InvalidSubscriptionId):
            await directory.resolve_subscription(session, "1111111-2222-3333-4444-555555555555")


# --- partners ---------------------------------------------------------------------------------------


async def test_partner_directory(db: Database) -> None:
    assert await directory.add_partner(db, "4977985", "Contoso", actor=OPERATOR) is True
    assert await directory.add_partner(db, "4977985", " Contoso ", actor=OPERATOR) is False
    assert await directory.add_partner(db, "4977985", "Contoso Ltd", actor=OPERATOR) is True
    assert [(p.partner_id, p.name) for p in await directory.list_partners(db)] == [("4977985", "Contoso Ltd")]
    events = await audit_events(db, "partner.added")
    assert [e.data for e in events] == [
        {"partner_id": "4977985", "name": "Contoso", "updated": False},
        {"partner_id": "4977985", "name": "Contoso Ltd", "updated": True},
    ]
    with pytest.raises(InvalidPartnerId):
        await directory.add_partner(db, "12345", "Too short", actor=OPERATOR)
    assert await count(db, Partner) == 1


# --- roles ------------------------------------------------------------------------------------------


async def test_a_role_on_one_subscription(db: Database) -> None:
    await two_subscriptions(db)
    assert await directory.grant_role(db, USER, "Owner", "prod", actor=OPERATOR) is True
    assert await roles(db, USER, A) == {"owner"}
    assert await roles(db, USER, B) == set()
    [event] = await audit_events(db, "role.granted")
    assert (event.actor, event.subscription_id) == (OPERATOR, A)
    assert event.data == {"user_id": USER, "role": "owner", "scope": A}


async def test_a_role_on_every_subscription(db: Database) -> None:
    await two_subscriptions(db)
    assert await directory.grant_role(db, USER, "admin", None, actor=OPERATOR) is True
    await directory.grant_role(db, USER, "owner", B, actor=OPERATOR)
    assert await roles(db, USER, A) == {"admin"}
    assert await roles(db, USER, B) == {"admin", "owner"}
    event = (await audit_events(db, "role.granted"))[0]
    assert event.subscription_id is None
    assert event.data["scope"] == "*"
    listed = await directory.list_roles(db, "prod")
    assert [(r.user_id, r.role, r.scope) for r in listed] == [(USER, "admin", "*")]


async def test_granting_twice_is_a_no_op(db: Database) -> None:
    await two_subscriptions(db)
    assert await directory.grant_role(db, USER, "owner", A, actor=OPERATOR) is True
    assert await directory.grant_role(db, USER, "owner", "prod", actor="someone-else") is False
    assert await count(db, RoleAssignment) == 1
    assert len(await audit_events(db, "role.granted")) == 1


async def test_revoke(db: Database) -> None:
    await two_subscriptions(db)
    # Another owner everywhere, so revoking USER's owner roles leaves no subscription without an owner.
    await directory.grant_role(db, "UKEEPER", "owner", None, actor=OPERATOR)
    await directory.grant_role(db, USER, "owner", A, actor=OPERATOR)
    await directory.grant_role(db, USER, "owner", None, actor=OPERATOR)
    assert await directory.revoke_role(db, USER, "owner", A, actor="UREVOKER") is True
    # The grant for every subscription is separate and stays.
    assert await roles(db, USER, A) == {"owner"}
    assert await directory.revoke_role(db, USER, "owner", None, actor="UREVOKER") is True
    assert await roles(db, USER, A) == set()
    assert await directory.revoke_role(db, USER, "owner", A, actor="UREVOKER") is False
    events = await audit_events(db, "role.revoked")
    assert [(e.actor, e.subscription_id, e.data["scope"]) for e in events] == [
        ("UREVOKER", A, A),
        ("UREVOKER", None, "*"),
    ]
    assert await count(db, RoleAssignment) == 1  # UKEEPER's


async def test_role_refusals_write_nothing(db: Database) -> None:
    await two_subscriptions(db)
    before = await count(db, AuditEvent)
    with pytest.raises(BadInput, match="not a role"):
        await directory.grant_role(db, USER, "superuser", A, actor=OPERATOR)
    with pytest.raises(UnknownSubscription):
        await directory.grant_role(db, USER, "owner", C, actor=OPERATOR)
    assert (await count(db, RoleAssignment), await count(db, AuditEvent)) == (0, before)


# --- aliases and scopes (issue 16, items 2 and 12) ---------------------------------------------------


@pytest.mark.parametrize(
    "alias",
    [
        "*",
        "all",
        "ALL",
        "Ａｌｌ",  # fullwidth: NFKC reads it as `All`
        "＊",
        B,
        B.upper(),
        "1111111-2222-3333-4444-555555555555",  # a GUID with a digit missing
        "11111111-2222-3333-4444-55555555555O",  # a GUID with the letter O for a zero
        "pr\u200bod",  # zero-width space
        "prod\u2060",  # word joiner
        "\u200eprod",  # left-to-right mark
        "prod\U000e0041",  # a tag character
        "pr\x00od",
    ],
)
async def test_an_alias_that_reads_as_something_else_is_refused(db: Database, alias: str) -> None:
    await two_subscriptions(db)
    before = (await stored_subscriptions(db), await count(db, AuditEvent))
    with pytest.raises(BadInput, match=r"(?i)alias"):
        await directory.upsert_subscriptions(db, [SubscriptionRow(C, "New", alias)], actor=OPERATOR)
    with pytest.raises(BadInput):  # nor may an existing subscription take it
        await directory.upsert_subscriptions(db, [SubscriptionRow(A, "Production", alias)], actor=OPERATOR)
    assert (await stored_subscriptions(db), await count(db, AuditEvent)) == before


@pytest.mark.parametrize("alike", ["PROD", "Prod", "ｐｒｏｄ"])
async def test_an_alias_that_reads_the_same_as_another_is_refused(db: Database, alike: str) -> None:
    await two_subscriptions(db)
    before = (await stored_subscriptions(db), await count(db, AuditEvent))
    taken = f"`{alike}` reads the same as `prod`, the alias of subscription `{A}`"
    with pytest.raises(Conflict, match=taken):
        await directory.upsert_subscriptions(db, [SubscriptionRow(C, "New", alike)], actor=OPERATOR)
    with pytest.raises(Conflict, match=f"`prod` and `{alike}` read the same"):
        await directory.upsert_subscriptions(
            db,
            [
                SubscriptionRow(A, "Production", "main"),
                SubscriptionRow(B, "Staging", "prod"),
                SubscriptionRow(C, "New", alike),
            ],
            actor=OPERATOR,
        )
    assert (await stored_subscriptions(db), await count(db, AuditEvent)) == before

    # A subscription may change how its own alias is written, and take one another gives up.
    await directory.upsert_subscriptions(db, [SubscriptionRow(A, "Production", alike)], actor=OPERATOR)
    await directory.upsert_subscriptions(
        db, [SubscriptionRow(A, "Production", "main"), SubscriptionRow(C, "New", "prod")], actor=OPERATOR
    )
    assert await stored_subscriptions(db) == {
        A: ("Production", "main"),
        B: ("Staging", "stage"),
        C: ("New", "prod"),
    }


async def test_keep_leaves_the_alias_as_it_is(db: Database) -> None:
    await two_subscriptions(db)
    result = await directory.upsert_subscriptions(
        db,
        [
            SubscriptionRow(A, "Production EU", directory.KEEP),
            SubscriptionRow(B, "Staging", directory.KEEP),
            SubscriptionRow(C, "New", directory.KEEP),
        ],
        actor=OPERATOR,
    )
    assert (result.added, result.updated, result.unchanged) == (1, 1, 1)
    assert await stored_subscriptions(db) == {
        A: ("Production EU", "prod"),
        B: ("Staging", "stage"),
        C: ("New", None),
    }
    # A kept alias still holds: another subscription cannot take it in the same input.
    with pytest.raises(Conflict, match="given to two subscriptions"):
        await directory.upsert_subscriptions(
            db,
            [SubscriptionRow(A, "Production EU", directory.KEEP), SubscriptionRow(C, "New", "prod")],
            actor=OPERATOR,
        )


async def test_a_scope_is_resolved_in_one_place(db: Database) -> None:
    await two_subscriptions(db)
    async with db.read() as session:
        for every in (None, "*", "all", " ALL ", "Ａｌｌ"):
            assert await directory.resolve_scope(session, every) == "*"
        assert await directory.resolve_scope(session, "prod") == A
        assert await directory.resolve_scope(session, B.upper()) == B
        with pytest.raises(UnknownSubscription):
            await directory.resolve_scope(session, "nope")
    assert (await directory.change_role(db, USER, "owner", "all", grant=True, actor=OPERATOR)).scope == "*"
    assert await roles(db, USER, B) == {"owner"}
    assert await directory.grant_role(db, USER, "owner", "*", actor=OPERATOR) is False
    await directory.grant_role(db, "UKEEPER", "owner", "all", actor=OPERATOR)  # not the last owner then
    revoked = await directory.change_role(db, USER, "owner", None, grant=False, actor=OPERATOR)
    assert (revoked.scope, revoked.changed) == ("*", True)


async def test_a_scope_word_never_names_one_subscription(db: Database) -> None:
    """A subscription aliased `*` before aliases were checked: `*` still means every subscription."""
    await two_subscriptions(db)
    async with db.write(serial=False) as session:
        await session.execute(update(Subscription).where(Subscription.id == A).values(alias="*"))
    async with db.read() as session:
        for word in ("*", "all"):
            with pytest.raises(UnknownSubscription, match="means every subscription"):
                await directory.resolve_subscription(session, word)
            assert await directory.resolve_scope(session, word) == "*"
    # Its owner holds a role on that one subscription, never on every one.
    await directory.grant_role(db, USER, "owner", A, actor=OPERATOR)
    assert await roles(db, USER, B) == set()
    listed = await directory.list_roles(db, "*")
    assert listed == []
