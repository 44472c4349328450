"""The audit chain's checkpoints: each head (position, hash, time) the bot published outside the database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import AuditCheckpoint


async def record(session: AsyncSession, seq: int, hash_: str, at: datetime, reason: str) -> None:
    await session.execute(_RECORD, {"seq": seq, "hash": hash_, "at": at, "reason": reason})


_RECORD = insert(AuditCheckpoint.__table__)  # built once: the values are the call's parameters


async def latest(session: AsyncSession) -> AuditCheckpoint | None:
    """The newest checkpoint taken."""
    return (
        await session.scalars(
            select(AuditCheckpoint).order_by(AuditCheckpoint.at.desc(), AuditCheckpoint.id.desc()).limit(1)
        )
    ).first()


async def after(session: AsyncSession, checkpoint_id: int, limit: int) -> list[AuditCheckpoint]:
    """The next `limit` checkpoints after id `checkpoint_id`, oldest first."""
    return list(
        (
            await session.scalars(
                select(AuditCheckpoint)
                .where(AuditCheckpoint.id > checkpoint_id)
                .order_by(AuditCheckpoint.id)
                .limit(limit)
            )
        ).all()
    )
