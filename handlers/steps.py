"""Messages about a request's steps: the DM asking an owner to approve, the replies in the card's thread,
and what the requester is told of the owners reached. The sentences are handlers.messages' (one wording)."""

from __future__ import annotations

from slack_sdk.models.blocks import Block, MarkdownTextObject, SectionBlock

from bot.reach import Reach
from bot.views import CardView
from handlers.messages import clip, escape, event_text, partner_label, when

THREAD_ICONS = {
    "approval": ":heavy_check_mark:",
    "applied": ":white_check_mark:",
    "failed": ":x:",
    "retried": ":repeat:",
    "rejected": ":no_entry:",
    "cancelled": ":heavy_multiplication_x:",
    "voided": ":heavy_multiplication_x:",
    "expired": ":alarm_clock:",
}


def thread_text(view: CardView, event: str, facts: dict) -> str:
    """One step of a request, as a reply in its card's thread (the wording of its DMs and notifications)."""
    return f"{THREAD_ICONS.get(event, ':speech_balloon:')} {event_text(view, event, facts)}"


def ask_blocks(view: CardView, link: str | None) -> list[Block]:
    """The DM to an owner who can approve a new request: what it changes, who asks and why, and the card."""
    req = view.request
    old = partner_label(req.previous_partner_id, view.current_name).replace("\n", " ")
    new = partner_label(req.partner_id, view.new_name, new=True).replace("\n", " ")
    where = "Approve or reject it on its card."
    if link and link.startswith("https://") and not set(link) & set("<>| "):
        where = f"<{link}|Open the card> to approve or reject it."
    return [
        SectionBlock(text=MarkdownTextObject(text=clip(f":inbox_tray: {event_text(view, 'asked')}"))),
        SectionBlock(
            text=MarkdownTextObject(
                text=clip(
                    f"*Subscription*: {escape(view.subscription.name)} `{view.subscription.id}`\n"
                    f"*Current partner*: {old}\n*New partner*: {new}\n"
                    f"*Reason*: {escape(req.reason) or '_none given_'}\n"
                    f"It expires {when(req.expires_at)}. {where}"
                )
            )
        ),
    ]


def reach_text(reach: Reach | None) -> str:
    """What the requester is told of the owners dpor-bot messaged about their new request."""
    if reach is None or reach.cap == 0:
        return ""
    if reach.over_cap:
        return (
            f" {reach.eligible} owners can approve it, more than the {reach.cap} dpor-bot messages directly, "
            "so nobody was messaged: the approval channel has it."
        )
    if reach.messaged == 0:
        return " No other owner can approve it yet, so nobody was messaged."
    return f" {reach.messaged} owner{'s were' if reach.messaged != 1 else ' was'} messaged directly."
