"""The read model: partners, roles and channel watches kept in process memory, true to the database.

Every check before a write, every card, reminder and DM asks who holds a role and what a partner is
called, several times per request; these tables change a few times a day. Each process keeps them in
memory (one `ReadModel` per `Database`) and, before answering from memory, reads one row:
`read_model_version`, which triggers (migration 0006) set to a new random number whenever any of those
tables changes, whoever writes it: this bot, the CLI, another process, a person with psql. A different
value loads the three tables again, in the caller's own session, so a write transaction sees what it
sees (its own changes included). A role revoked from the CLI is therefore refused at the next click,
with no cache window and no message between processes.

A subscription's row is not kept: it carries the partner of record, which changes with every apply,
and is read by its primary key where needed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage import direct
from storage.models import ALL_SUBSCRIPTIONS, ChannelWatch, Partner, ReadModelVersion, RoleAssignment

_MODEL = "dpor_read_model"  # where a session carries its Database's ReadModel (session.info)
_ONCE = "dpor_read_model_seen"  # a read session's snapshot, once it has looked (see `attach`)
_VERSION = select(ReadModelVersion.__table__.c.version).where(ReadModelVersion.__table__.c.id == 1)


@dataclass
class Snapshot:
    version: int | None
    partners: dict[str, str] = field(default_factory=dict)
    # user -> {(role, scope)}; (role, scope) -> users. Scope: a subscription ID or `*`.
    by_user: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))
    by_role: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    # channel -> scopes in the order they were subscribed; scope -> channels in that order.
    scopes_of: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    channels_of: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))

    def roles_for(self, user_id: str, subscription_id: str) -> set[str]:
        scopes = (subscription_id, ALL_SUBSCRIPTIONS)
        return {role for role, scope in self.by_user.get(user_id, ()) if scope in scopes}

    def holders(self, role: str, subscription_id: str) -> list[str]:
        users = self.by_role.get((role, subscription_id), set()) | self.by_role.get(
            (role, ALL_SUBSCRIPTIONS), set()
        )
        return sorted(users)

    def watching(self, subscription_id: str) -> list[str]:
        ordered = sorted(
            self.channels_of.get(subscription_id, []) + self.channels_of.get(ALL_SUBSCRIPTIONS, []),
            key=lambda pair: pair[0],
        )
        return list(dict.fromkeys(channel for _, channel in ordered))


class ReadModel:
    """One per Database. `snapshot(session)` is the tables as that session sees them now."""

    def __init__(self) -> None:
        self._snapshot = Snapshot(version=None)
        self.loads = 0  # how many times the tables were read: tests and the benchmark look

    async def snapshot(self, session: AsyncSession) -> Snapshot:
        lane = direct.lane(session)
        if lane is not None:
            found = direct.rows(lane, direct.query(_VERSION), {})
            version = found[0][0] if found else None
        else:
            version = (await session.execute(_VERSION)).scalar()
        if version is None or version != self._snapshot.version:
            self._snapshot = await _load(session, version)
            self.loads += 1
        return self._snapshot


async def _load(session: AsyncSession, version: int | None) -> Snapshot:
    snap = Snapshot(version=version)
    for pid, name in await session.execute(select(Partner.partner_id, Partner.name)):
        snap.partners[pid] = name
    for user, role, scope in await session.execute(
        select(RoleAssignment.user_id, RoleAssignment.role, RoleAssignment.scope)
    ):
        snap.by_user[user].add((role, scope))
        snap.by_role[(role, scope)].add(user)
    for wid, channel, scope in await session.execute(
        select(ChannelWatch.id, ChannelWatch.channel_id, ChannelWatch.scope).order_by(ChannelWatch.id)
    ):
        snap.scopes_of[channel].append(scope)
        snap.channels_of[scope].append((wid, channel))
    return snap


def attach(session: AsyncSession, model: ReadModel, *, once: bool = False) -> None:
    """`once`: a read session checks the version at its first use only (a read is one short look; a
    write checks at each use, since its own changes to roles or watches renew the version)."""
    session.info[_MODEL] = model
    if once:
        session.info[_ONCE] = None


async def of(session: AsyncSession) -> Snapshot | None:
    """The read model as this session sees it, or None for a session no Database opened (read the tables)."""
    model: ReadModel | None = session.info.get(_MODEL)
    if model is None:
        return None
    if _ONCE not in session.info:
        return await model.snapshot(session)
    snap = session.info[_ONCE]
    if snap is None:
        snap = session.info[_ONCE] = await model.snapshot(session)
    return snap
