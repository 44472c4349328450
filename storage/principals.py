"""SQL for a partner's PAL-linked principals and the role assignments dpor-bot made for them (azure-rbac)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import ManagedAssignment, PartnerPrincipal


async def add_principal(session: AsyncSession, partner_id: str, object_id: str, added_by: str) -> bool:
    """Link the principal to the partner; False when it already was."""
    if await session.get(PartnerPrincipal, (partner_id, object_id)) is not None:
        return False
    session.add(PartnerPrincipal(partner_id=partner_id, object_id=object_id, added_by=added_by))
    await session.flush()
    return True


async def principals_of(session: AsyncSession, partner_id: str) -> list[str]:
    rows = await session.scalars(
        select(PartnerPrincipal.object_id)
        .where(PartnerPrincipal.partner_id == partner_id)
        .order_by(PartnerPrincipal.object_id)
    )
    return list(rows.all())


async def all_principals(session: AsyncSession) -> dict[str, list[str]]:
    """Every partner's principals: partner ID -> object IDs."""
    found: dict[str, list[str]] = {}
    rows = await session.execute(
        select(PartnerPrincipal.partner_id, PartnerPrincipal.object_id).order_by(
            PartnerPrincipal.partner_id, PartnerPrincipal.object_id
        )
    )
    for partner_id, object_id in rows:
        found.setdefault(partner_id, []).append(object_id)
    return found


async def managed_on(session: AsyncSession, subscription_id: str) -> list[ManagedAssignment]:
    """The role assignments dpor-bot made on the subscription and has not removed."""
    rows = await session.scalars(
        select(ManagedAssignment)
        .where(ManagedAssignment.subscription_id == subscription_id, ManagedAssignment.removed_at.is_(None))
        .order_by(ManagedAssignment.created_at)
    )
    return list(rows.all())


async def record_managed(session: AsyncSession, rows: Iterable[ManagedAssignment]) -> None:
    """Record assignments dpor-bot made; one recorded before (an apply tried again) is live again."""
    for row in rows:
        known = await session.get(ManagedAssignment, row.assignment_id)
        if known is None:
            session.add(row)
        else:
            known.removed_at = None
    await session.flush()


async def mark_removed(session: AsyncSession, assignment_ids: Iterable[str], at: datetime) -> None:
    ids = list(assignment_ids)
    if ids:
        await session.execute(
            update(ManagedAssignment).where(ManagedAssignment.assignment_id.in_(ids)).values(removed_at=at)
        )


async def delete_principals(session: AsyncSession, partner_id: str) -> list[str]:
    """Unlink every principal of the partner (it leaves the directory); returns their object IDs."""
    gone = await principals_of(session, partner_id)
    if gone:
        await session.execute(delete(PartnerPrincipal).where(PartnerPrincipal.partner_id == partner_id))
    return gone
