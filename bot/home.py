"""The read model of a person's App Home: what waits for their approval, their own requests, the
subscriptions they own, and for owners what went wrong (outbox rows given up on, partner drift).

Roles are read now, as a click reads them: the Home shows the buttons a click would accept.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot import views
from bot.errors import Refusal
from bot.policy import Policy
from bot.views import CardView
from storage import home as table
from storage.db import Database
from storage.directory import partner_names
from storage.models import ALL_SUBSCRIPTIONS, AuditEvent, ChangeRequest, RequestStatus, Subscription, utcnow
from storage.queries import Page

# How much one Home shows of each list (Slack allows 100 blocks in a view); the rest is counted.
WAITING_MAX = 10
OPEN_MAX = 10
RECENT_MAX = 10
OWNED_MAX = 20
DEAD_MAX = 3
DRIFT_MAX = 5
DRIFT_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class Role:
    role: str
    scope: str  # a subscription ID or `*`
    subscription: Subscription | None  # None for `*` (or a scope whose subscription is gone)


@dataclass(frozen=True)
class Owned:
    subscription: Subscription
    partner_name: str | None


@dataclass(frozen=True)
class DeadRow:
    id: int
    kind: str
    error: str | None
    at: datetime


@dataclass(frozen=True)
class Drift:
    at: datetime
    subscription_id: str
    subscription: Subscription | None
    provider: str
    recorded: str | None
    recorded_name: str | None
    observed: str | None
    observed_name: str | None


@dataclass(frozen=True)
class HomeView:
    user_id: str
    roles: list[Role]
    # Pending requests this person can approve now, each as its card shows it.
    waiting: Page[CardView]
    open_requests: Page[ChangeRequest]
    recent: Page[ChangeRequest]
    # The subscriptions and the partners' directory names the person's own requests name, by ID.
    named: dict[str, Subscription]
    partners: dict[str, str]
    owned: Page[Owned]
    dead: Page[DeadRow]
    drift: Page[Drift]

    @property
    def owner_scopes(self) -> list[str]:
        return [r.scope for r in self.roles if r.role == "owner"]

    @property
    def is_owner(self) -> bool:
        return bool(self.owner_scopes)


async def home(db: Database, pol: Policy, user_id: str, team_id: str | None = None) -> HomeView:
    """Everything `user_id`'s Home shows, read now (requests of `team_id` only, when given)."""
    now = utcnow()
    with contextlib.suppress(Refusal):  # not linked, or Azure slow: no roles shown (the clicks say why)
        await pol.roles.prepare(user_id, [None])
    async with db.read() as session:
        held = await pol.roles.role_list(session, user_id)
        scopes = [scope for role, scope in held if role == "owner"]
        subs = await table.subscriptions_named(session, {s for _, s in held if s != ALL_SUBSCRIPTIONS})
        roles = [Role(role, scope, subs.get(scope)) for role, scope in held]
        waiting, waiting_total = await table.waiting_for(
            session,
            user_id,
            scopes,
            now=now,
            include_own=pol.allow_self_approval,
            team_id=team_id,
            limit=WAITING_MAX,
        )
        opened, open_total = await table.requests_by(
            session, user_id, open_=True, team_id=team_id, limit=OPEN_MAX
        )
        recent, recent_total = await table.requests_by(
            session, user_id, open_=False, team_id=team_id, limit=RECENT_MAX
        )
        named = await table.subscriptions_named(session, {r.subscription_id for r in [*opened, *recent]})
        partners = await partner_names(session, [r.partner_id for r in [*opened, *recent]])
        owned, owned_total = await table.subscriptions_in(session, scopes, limit=OWNED_MAX)
        dead, dead_total = await table.dead_rows(session, scopes, limit=DEAD_MAX)
        events, drift_total = await table.drift_events(
            session, scopes, since=now - DRIFT_WINDOW, limit=DRIFT_MAX
        )
        drift_subs = await table.subscriptions_named(session, {e.subscription_id or "" for e in events})
        names = await partner_names(session, [(e.data or {}).get("recorded_partner_id") for e in events])
    cards = [await views.card(db, req.id, pol.required_approvals, pol) for req in waiting]
    # A request decided between the two reads is no longer waiting: it is left out, not shown stale.
    shown = [c for c in cards if c is not None and c.request.status == RequestStatus.PENDING]
    return HomeView(
        user_id=user_id,
        roles=roles,
        waiting=Page(shown, waiting_total - (len(waiting) - len(shown)), 0),
        open_requests=Page(opened, open_total, 0),
        recent=Page(recent, recent_total, 0),
        named=named,
        partners=partners,
        owned=Page([Owned(sub, name) for sub, name in owned], owned_total, 0),
        dead=Page([DeadRow(r.id, r.kind, r.last_error, r.created_at) for r in dead], dead_total, 0),
        drift=Page([_drift(e, drift_subs, names) for e in events], drift_total, 0),
    )


def _drift(event: AuditEvent, subs: dict[str, Subscription], names: dict[str, str]) -> Drift:
    data, sub_id = event.data or {}, event.subscription_id or ""
    recorded = data.get("recorded_partner_id")
    return Drift(
        at=event.at,
        subscription_id=sub_id,
        subscription=subs.get(sub_id),
        provider=str(data.get("provider") or ""),
        recorded=recorded,
        recorded_name=names.get(recorded or ""),
        observed=data.get("observed_partner_id"),
        observed_name=data.get("observed_partner_name"),
    )
