"""The sandbox's made-up workspace: people, channels, subscriptions and partners, seeded via the domain."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bot.directory import SubscriptionRow, add_partner, grant_role, upsert_subscriptions
from storage.db import Database
from storage.models import RoleAssignment

TEAM_ID = "T0DPOR"
APPROVALS = "C0APPROVALS"
NOTIFICATIONS = "C0NOTIFY"
ACTOR = "sandbox"


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    handle: str
    role: str | None
    scope: str | None  # a subscription alias, or None for every subscription
    about: str

    @property
    def label(self) -> str:
        if self.role is None:
            return "no role"
        return f"{self.role} of {self.scope or 'all'}"


PEOPLE = (
    Person(
        "U0ADMIN", "Alex Admin", "alex", "admin", None, "admin: may request changes on every subscription"
    ),
    Person("U0OWNER1", "Olivia Owner", "olivia", "owner", None, "owner of every subscription: approves"),
    Person("U0OWNER2", "Oscar Owner", "oscar", "owner", "prod-eu", "owner of prod-eu only"),
    Person("U0BYSTAND", "Ben Bystander", "ben", None, None, "no role: may look, may not approve"),
)

CHANNELS = {APPROVALS: "dpor-approvals", NOTIFICATIONS: "dpor-notifications"}

SUBSCRIPTIONS = (
    SubscriptionRow("11111111-1111-4111-8111-111111111111", "Production EU", "prod-eu"),
    SubscriptionRow("22222222-2222-4222-8222-222222222222", "Staging US", "staging-us"),
)

PARTNERS = (
    ("4977985", "Contoso MSP"),
    ("1234566", "Fabrikam Consulting"),
    ("123456", "Northwind Partners"),
)

EXAMPLES = (
    "/dpor help",
    "/dpor set prod-eu 4977985 Contoso now runs our support",
    "/dpor show prod-eu",
    "/dpor pending",
    "/dpor list",
    "/dpor history prod-eu",
    "/dpor role list",
)


async def seed(db: Database) -> None:
    """Safe to run again on the same database: every step leaves existing data as it is."""
    await upsert_subscriptions(db, list(SUBSCRIPTIONS), actor=ACTOR)
    for partner_id, name in PARTNERS:
        await add_partner(db, partner_id, name, actor=ACTOR)
    for person in PEOPLE:
        if person.role is not None:
            await grant_role(db, person.id, person.role, person.scope, actor=ACTOR)


def role_labels(assignments: Iterable[RoleAssignment]) -> dict[str, str]:
    """Each person's roles as the page's people list shows them: "owner of prod-eu", "admin of all"."""
    aliases = {s.id: s.alias or s.name for s in SUBSCRIPTIONS}
    held: dict[str, list[str]] = {}
    for a in sorted(assignments, key=lambda a: (a.user_id, a.role, a.scope)):
        where = "all" if a.scope == "*" else aliases.get(a.scope, a.scope[:8])
        held.setdefault(a.user_id, []).append(f"{a.role} of {where}")
    return {user: ", ".join(labels) for user, labels in held.items()}
