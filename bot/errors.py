"""Refusals: typed outcomes of a domain call that did not happen, each with a sentence for a person."""

from __future__ import annotations

from datetime import datetime


class Refusal(Exception):
    """The request was understood and refused; nothing was written (except, for clicks, the audit)."""

    code = "refused"
    # The form field a refusal is about (a modal's block_id), when it is about one; None: the whole input.
    field: str | None = None

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if field is not None:
            self.field = field


class BadInput(Refusal):
    code = "bad_input"


class InvalidSubscriptionId(Refusal):
    code = "invalid_subscription_id"
    field = "subscription"


class InvalidPartnerId(Refusal):
    code = "invalid_partner_id"
    field = "partner"


class UnknownSubscription(Refusal):
    code = "unknown_subscription"
    field = "subscription"


class UnknownRequest(Refusal):
    code = "unknown_request"


class PartnerAlreadySet(Refusal):
    code = "partner_already_set"
    field = "partner"


class OpenRequestExists(Refusal):
    code = "open_request_exists"
    field = "subscription"

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class NotAuthorised(Refusal):
    """The user holds no role that allows this on that subscription."""

    code = "not_authorised"
    field = "subscription"


class NotOwner(Refusal):
    code = "not_owner"


class SelfApproval(Refusal):
    code = "self_approval"


class AlreadyDecided(Refusal):
    code = "already_decided"


class RequestExpired(Refusal):
    code = "expired"


class WrongTeam(Refusal):
    code = "wrong_team"


class Conflict(Refusal):
    """The record exists already in another shape (an alias taken, a duplicate ID)."""

    code = "conflict"


SYSTEM_ACTOR = "dpor-bot"
# The actor of what an operator does with the `dpor-bot` CLI: `cli:<login>`.
OPERATOR_PREFIX = "cli:"


def person(user_id: str | None) -> str:
    """A person named in a refusal: `<@U123>`, the reference Slack shows as a mention (the bot: its name;
    an operator at the CLI: `an operator (cli:alice)`, which is no Slack user)."""
    if user_id in (None, SYSTEM_ACTOR):
        return SYSTEM_ACTOR
    if user_id.startswith(OPERATOR_PREFIX):
        return f"an operator ({user_id})"
    return f"<@{user_id}>"


def moment(at: datetime) -> str:
    """A time in a sentence: Slack's date token, which each reader sees in their own time zone, falling back
    to UTC where Slack cannot render it (`<!date^...|2026-03-10 09:05 UTC>`)."""
    return f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{at:%Y-%m-%d %H:%M} UTC>"
