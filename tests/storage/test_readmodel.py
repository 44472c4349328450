"""The read model (storage/readmodel.py): partners, roles and watches in memory, reloaded whenever the
version row says another writer changed them, and only then; on both engines."""

from __future__ import annotations

from sqlalchemy import text

from bot import directory, watches
from bot.directory import SubscriptionRow
from storage import directory as store
from storage.db import Database

A = "11111111-2222-3333-4444-555555555555"
B = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


async def seed(db: Database) -> None:
    await directory.upsert_subscriptions(
        db, [SubscriptionRow(A, "Production", "prod"), SubscriptionRow(B, "Staging", "stage")], actor="test"
    )
    await directory.grant_role(db, "UOWNER", "owner", "prod", actor="test")
    await directory.grant_role(db, "UGLOBAL", "owner", None, actor="test")
    await directory.add_partner(db, "1234567", "Contoso", actor="test")


async def holders(db: Database, subscription_id: str) -> list[str]:
    async with db.read() as session:
        return await store.holders(session, "owner", subscription_id)


async def test_answers_from_memory_until_the_tables_change(db: Database) -> None:
    await seed(db)
    assert await holders(db, A) == ["UGLOBAL", "UOWNER"]
    loads = db.model.loads
    for _ in range(5):
        assert await holders(db, A) == ["UGLOBAL", "UOWNER"]
        assert await holders(db, B) == ["UGLOBAL"]
        async with db.read() as session:
            assert await store.partner_names(session, ["1234567", "7654321"]) == {"1234567": "Contoso"}
    assert db.model.loads == loads  # nothing changed: no reload


async def test_another_process_revoking_a_role_is_seen_at_the_next_read(database_url: str) -> None:
    serve, cli = Database(database_url), Database(database_url)  # two processes' engines and models
    try:
        await seed(cli)
        assert await holders(serve, A) == ["UGLOBAL", "UOWNER"]
        await directory.revoke_role(cli, "UOWNER", "owner", "prod", actor="test")
        assert await holders(serve, A) == ["UGLOBAL"]
        # A person with a database console, bypassing the bot: the triggers still renew the version.
        async with cli.engine.begin() as conn:
            await conn.execute(text("DELETE FROM role_assignments WHERE user_id = 'UGLOBAL'"))
        assert await holders(serve, A) == []
        async with cli.engine.begin() as conn:
            await conn.execute(text("UPDATE partners SET name = 'Fabrikam' WHERE partner_id = '1234567'"))
        async with serve.read() as session:
            assert await store.partner_names(session, ["1234567"]) == {"1234567": "Fabrikam"}
    finally:
        await serve.dispose()
        await cli.dispose()


async def test_a_partner_of_record_changing_does_not_reload(db: Database) -> None:
    """Every apply moves a subscription's partner_id: that is read from the row, never from memory."""
    await seed(db)
    await holders(db, A)
    loads = db.model.loads
    async with db.engine.begin() as conn:
        await conn.execute(text(f"UPDATE subscriptions SET partner_id = '1234567' WHERE id = '{A}'"))
    await holders(db, A)
    assert db.model.loads == loads
    async with db.engine.begin() as conn:
        await conn.execute(text(f"UPDATE subscriptions SET alias = 'production' WHERE id = '{A}'"))
    await holders(db, A)
    assert db.model.loads == loads + 1


async def test_a_write_transaction_sees_its_own_changes(db: Database) -> None:
    await seed(db)
    await holders(db, A)
    async with db.write() as session:
        await store.insert_role(session, "UNEW", "owner", A, granted_by="test")
        assert await store.holders(session, "owner", A) == ["UGLOBAL", "UNEW", "UOWNER"]
        assert await store.roles_for(session, "UNEW", A) == {"owner"}
    assert await holders(db, A) == ["UGLOBAL", "UNEW", "UOWNER"]


async def test_watches_in_the_order_channels_subscribed(db: Database) -> None:
    await seed(db)
    await watches.watch(db, team_id="T1", channel_id="CALL", subscription="all", user_id="UGLOBAL")
    await watches.watch(db, team_id="T1", channel_id="CPROD", subscription="prod", user_id="UOWNER")
    async with db.read() as session:
        assert await store.watching_channels(session, A) == ["CALL", "CPROD"]
        assert await store.watching_channels(session, B) == ["CALL"]
