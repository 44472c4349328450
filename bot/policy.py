"""Who may do what, and the knobs an operator sets on the approval flow."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from bot.settings import Settings

# The policy table: which roles allow which act on a subscription.
PERMISSIONS: dict[str, frozenset[str]] = {
    "request": frozenset({"owner", "admin"}),
    "approve": frozenset({"owner"}),
    "reject": frozenset({"owner"}),
    "retry": frozenset({"owner"}),
    # The requester may always cancel their own pending request; otherwise an owner may.
    "cancel": frozenset({"owner"}),
}


def allowed(act: str, roles: set[str] | frozenset[str]) -> bool:
    return bool(PERMISSIONS[act] & roles)


@dataclass(frozen=True)
class Policy:
    required_approvals: int = 1
    allow_self_approval: bool = False
    request_ttl: timedelta = timedelta(hours=72)
    approval_channel: str | None = None
    notify_channels: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            required_approvals=settings.required_approvals,
            allow_self_approval=settings.allow_self_approval,
            request_ttl=settings.request_ttl,
            approval_channel=settings.approval_channel,
            notify_channels=tuple(settings.notify_channels),
        )
