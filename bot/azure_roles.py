"""`DPOR_ROLE_SOURCE=azure`: the bot's roles read from a person's live Azure role assignments.

A Slack user is linked by an operator to a Microsoft Entra object ID (`dpor-bot people link`, the
`people` table). Their roles on subscription S are the role assignments ARM lists for that principal on
`/subscriptions/S` with the `assignedTo()` filter: assignments at S or inherited from above it, and those
of the groups the principal belongs to. A role definition in DPOR_AZURE_APPROVER_ROLES (default Owner)
makes them the bot's "owner"; one in DPOR_AZURE_REQUESTER_ROLES (default Contributor) its "admin".

Each answer is cached for DPOR_AZURE_ROLE_CACHE (default 60 s): a revoked Azure owner is refused within
it. A fetch is awaited at most DPOR_AZURE_ROLE_WAIT (default 2 s, so Slack's 3 s limit holds); when ARM
is slower the person is told to try again in a few seconds, nothing is written, and the fetch carries on
in the background to fill the cache for the next try. Errors are not cached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.azure_ids import role_guids
from bot.directory import resolve_scope
from bot.errors import Refusal
from bot.roles import AZURE, LOCAL_ROLES, RoleSource, RolesUnavailable, not_linked
from bot.settings import ConfigError, Settings
from storage import people
from storage.db import Database
from storage.models import ALL_SUBSCRIPTIONS
from storage.queries import all_subscriptions

log = logging.getLogger("dpor.roles")

# At most this many ARM reads at once (holders() of many linked people on a cold cache).
CONCURRENCY = 8


def build_arm(settings: Settings) -> Any:
    """The shared ARM client (`bot.providers.arm.Arm`), imported only when Azure is the role source."""
    try:
        from bot.providers.arm import Arm
    except ImportError:
        raise ConfigError(
            "DPOR_ROLE_SOURCE=azure needs the Azure SDK: pip install 'dpor-bot[azure]'"
        ) from None
    return Arm(settings)


def role_source(settings: Settings, db: Database, arm: Any | None = None) -> RoleSource:
    """DPOR_ROLE_SOURCE as a role source: the bot's own table, or Azure through `arm` (tests pass one
    with a replaying transport; None: the bot's own identity)."""
    if settings.role_source != AZURE:
        return LOCAL_ROLES
    return AzureRoles(db, settings, arm)


class AzureRoles:
    name = AZURE

    def __init__(self, db: Database, settings: Settings, arm: Any | None = None) -> None:
        self.db = db
        self.arm = arm if arm is not None else build_arm(settings)
        self.owner_guids = role_guids(settings.azure_approver_roles)
        self.admin_guids = role_guids(settings.azure_requester_roles)
        self.ttl = settings.azure_role_cache.total_seconds()
        self.wait = settings.azure_role_wait.total_seconds()
        # (object ID, subscription ID) -> (monotonic time fetched, the bot's roles)
        self._cache: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}
        self._fetching: dict[tuple[str, str], asyncio.Task[frozenset[str]]] = {}
        self._limit = asyncio.Semaphore(CONCURRENCY)

    # -- the cache and the bounded fetch -------------------------------------------------------------

    def _fresh(self, key: tuple[str, str]) -> frozenset[str] | None:
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        return None

    async def _read(self, object_id: str, subscription_id: str) -> frozenset[str]:
        async with self._limit:
            found = await self.arm.assignments(subscription_id, principal_id=object_id)
        guids = {str(a.role_guid).lower() for a in found}
        held = {"owner"} if guids & self.owner_guids else set()
        if guids & self.admin_guids:
            held.add("admin")
        roles = frozenset(held)
        self._cache[(object_id, subscription_id)] = (time.monotonic(), roles)
        return roles

    def _task(self, key: tuple[str, str]) -> asyncio.Task[frozenset[str]]:
        task = self._fetching.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._read(*key))
            self._fetching[key] = task
            task.add_done_callback(lambda done, key=key: self._finished(key, done))
        return task

    def _finished(self, key: tuple[str, str], task: asyncio.Task[frozenset[str]]) -> None:
        self._fetching.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            # Logged once here: the person is told in their own answer; the error is not cached.
            log.warning("reading Azure roles of %s on %s failed: %s", key[0], key[1], task.exception())

    async def _ensure(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], frozenset[str]]:
        """The roles of each (object ID, subscription), from the cache or ARM, waited for at most `wait`."""
        found: dict[tuple[str, str], frozenset[str]] = {}
        tasks: dict[tuple[str, str], asyncio.Task[frozenset[str]]] = {}
        for key in dict.fromkeys(keys):
            cached = self._fresh(key)
            if cached is not None:
                found[key] = cached
            else:
                tasks[key] = self._task(key)
        if not tasks:
            return found
        _, pending = await asyncio.wait(tasks.values(), timeout=self.wait)
        if pending:
            # The fetches carry on (the tasks are not cancelled) and fill the cache for the next try.
            raise RolesUnavailable(
                "Azure has not answered yet about who holds which role; nothing was done. "
                "Try again in a few seconds."
            )
        for key, task in tasks.items():
            exc = task.exception()
            if exc is not None:
                raise RolesUnavailable(
                    "dpor-bot could not read the roles from Azure, so nothing was done: "
                    f"{_reason(exc)} Try again; if it keeps failing, tell the operator."
                )
            found[key] = task.result()
        return found

    async def _subscriptions(self, session: AsyncSession | None, subscription_id: str) -> list[str]:
        if subscription_id != ALL_SUBSCRIPTIONS:
            return [subscription_id]
        if session is None:
            async with self.db.read() as fresh:
                return [sub.id for sub in await all_subscriptions(fresh)]
        return [sub.id for sub in await all_subscriptions(session)]

    async def close(self) -> None:
        for task in list(self._fetching.values()):
            task.cancel()
        closing = getattr(self.arm, "close", None)
        if closing is not None:
            await closing()

    # -- the RoleSource protocol ---------------------------------------------------------------------

    async def prepare(
        self,
        actor: str | None,
        subscriptions: Sequence[str | None],
        others: Sequence[str] = (),
        *,
        everyone: bool = False,
    ) -> None:
        users = [u for u in dict.fromkeys([*([actor] if actor else []), *others]) if u]
        async with self.db.read() as session:
            linked = await people.object_ids(session, users)
            if everyone:
                linked.update((p.slack_user_id, p.object_id) for p in await people.everyone(session))
            subs: list[str] = []
            for ref in subscriptions:
                try:
                    scope = await resolve_scope(session, ref)
                except Refusal:
                    continue  # the caller refuses an unknown subscription in its own words
                subs.extend(await self._subscriptions(session, scope))
        if actor and actor not in linked:
            raise not_linked(actor)
        await self._ensure((oid, sub) for oid in linked.values() for sub in dict.fromkeys(subs))

    async def roles(self, session: AsyncSession, user_id: str, subscription_id: str) -> frozenset[str]:
        linked = await people.object_ids(session, [user_id])
        if user_id not in linked:
            return frozenset()
        subs = await self._subscriptions(session, subscription_id)
        if not subs:
            return frozenset()
        found = await self._ensure((linked[user_id], sub) for sub in subs)
        # On `*`: the roles held on every subscription.
        return frozenset.intersection(*found.values())

    async def holders(self, session: AsyncSession, role: str, subscription_id: str) -> list[str]:
        """Linked people whose Azure roles there give `role`: one ARM read per linked person and cache
        window (at most CONCURRENCY at once)."""
        everyone = await people.everyone(session)
        subs = await self._subscriptions(session, subscription_id)
        if not subs:
            return []
        found = await self._ensure((p.object_id, sub) for p in everyone for sub in subs)
        return [p.slack_user_id for p in everyone if all(role in found[(p.object_id, s)] for s in subs)]

    async def role_list(self, session: AsyncSession, user_id: str) -> list[tuple[str, str]]:
        linked = await people.object_ids(session, [user_id])
        if user_id not in linked:
            return []
        subs = await self._subscriptions(session, ALL_SUBSCRIPTIONS)
        try:
            found = await self._ensure((linked[user_id], sub) for sub in subs)
        except RolesUnavailable:
            return []
        return sorted((role, sub) for sub in subs for role in found[(linked[user_id], sub)])


def _reason(exc: BaseException) -> str:
    """A provider error's own sentence (bounded, secret-free by construction in bot.providers)."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = " ".join(str(text).split())[:300]
    return text if text.endswith(".") else text + "."
