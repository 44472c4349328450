"""Block Kit and mrkdwn builders: pure functions from the bot's read models to Slack messages.

One wording per fact: the card, the requester's DM, the channel notification, the reminder and the drift
notice all say what happened in the sentences below.
"""

from __future__ import annotations

import re
from datetime import datetime

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from bot.errors import moment, person
from bot.views import CardView, Subscription

SECTION_LIMIT = 3000
MAX_BLOCKS = 50
APPROVE, REJECT, RETRY = "dpor_approve", "dpor_reject", "dpor_retry"


def escape(text: str | None) -> str:
    """Slack's own escaping for echoed text: no mentions, channel pings or links can be smuggled in."""
    return (text or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_MENTION = re.compile(r"&lt;@([UW][A-Z0-9]+)&gt;")
# Slack's date token exactly as bot.errors.moment writes it, once escaped: a time, never a ping or a link.
_DATE = re.compile(
    r"&lt;!date\^([0-9]{1,12})\^\{date_short_pretty\} \{time\}"
    r"\|([0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2} UTC)&gt;"
)


def safe(message: str) -> str:
    """Escape a sentence that may echo user input, keeping the user mentions and the date tokens the bot
    itself wrote (anything else, `<!channel>` included, stays escaped)."""
    kept = _MENTION.sub(r"<@\1>", escape(message))
    return _DATE.sub(r"<!date^\1^{date_short_pretty} {time}|\2>", kept)


def clip(text: str, limit: int = SECTION_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def when(at: datetime | None) -> str:
    """A timestamp each reader sees in their own time zone, with a UTC fallback."""
    return "-" if at is None else moment(at)


def user(user_id: str | None) -> str:
    return person(escape(user_id) if user_id else None)


def subscription_label(sub: Subscription) -> str:
    alias = f" ({escape(sub.alias)})" if sub.alias else ""
    return f"*{escape(sub.name)}*{alias}\n`{sub.id}`"


def partner_label(partner_id: str | None, name: str | None, *, new: bool = False) -> str:
    if not partner_id:
        return "_none_"
    if name:
        return f"*{escape(name)}* (`{partner_id}`)"
    warning = (
        ":warning: *not in the partner directory*: verify the partner's name before approving"
        if new
        else "_not in the partner directory_"
    )
    return f"`{partner_id}`\n{warning}"


STATUS_LINE = {
    "pending": ":hourglass_flowing_sand: *Pending approval*",
    "approved": ":white_check_mark: *Approved*: applying now",
    "applying": ":gear: *Applying*",
    "applied": ":white_check_mark: *Applied*",
    "failed": ":x: *Apply failed*",
    "rejected": ":no_entry: *Rejected*",
    "cancelled": ":heavy_multiplication_x: *Cancelled*",
    "expired": ":alarm_clock: *Expired*",
}


def approvals_text(view: CardView) -> str:
    """Every approval, who and when (on a pending request, those of people who are owners now)."""
    shown = view.approvals
    if view.request.status == "pending":
        shown = [(who, at) for who, at in view.approvals if who in view.approvers]
    return ", ".join(f"{user(who)} {when(at)}" for who, at in shown)


def _status_detail(view: CardView) -> str:
    req = view.request
    status = STATUS_LINE.get(req.status, req.status)
    if req.status == "pending":
        approved = approvals_text(view)
        progress = f"{len(view.approvers)} of {view.required} approvals"
        return f"{status}: {progress}" + (f" ({approved})" if approved else "")
    if awaits_portal(view):
        return (
            f":hourglass_flowing_sand: *Waiting for the Azure portal*: approved by {user(req.decided_by)} at "
            f"{when(req.decided_at)}. An owner sets the partner there, then says so below."
        )
    if req.status in ("approved", "applying", "rejected", "cancelled"):
        note = reason_line(req.decision_note)  # a rejection's reason
        return f"{status} by {user(req.decided_by)} at {when(req.decided_at)}{note}"
    if req.status == "applied":
        detail = ""
        result = req.result or {}
        returned = result.get("partner_name")
        if returned and returned != view.new_name:
            detail = (
                f"\n:warning: The provider names partner `{req.partner_id}` *{escape(returned)}*, "
                f"not *{escape(view.new_name or 'unknown')}* as in the directory."
            )
        if result.get("attested"):
            detail += f"\nAttested by {user(result.get('attested_by'))}: {escape(result.get('note'))}"
        return f"{status} at {when(req.applied_at)} (approved by {approvals_text(view)}){detail}"
    if req.status == "failed":
        return (
            f"{status}: {escape(req.error or 'unknown error')}\n"
            f"An owner can retry until {when(req.expires_at)} unless the partner or a newer request moves on."
        )
    if req.status == "expired":
        return f"{status} {when(req.expires_at)} without a decision"
    return status


def _card_status(view: CardView) -> str:
    """The card's status, and on a decided card that was not applied, every approval it had."""
    detail = _status_detail(view)
    if view.request.status not in ("pending", "applied") and view.approvals:
        detail += f"\nApproved by {approvals_text(view)}"
    return detail


def card_blocks(view: CardView) -> list[Block]:
    req, sub = view.request, view.subscription
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=f"DPOR change request #{req.id}")),
        SectionBlock(
            fields=[
                MarkdownTextObject(text=f"*Subscription*\n{subscription_label(sub)}"),
                MarkdownTextObject(text=f"*Requested by*\n{user(req.requester_id)}"),
                MarkdownTextObject(
                    text=f"*{'Current' if req.status == 'pending' else 'Previous'} partner*\n"
                    f"{partner_label(req.previous_partner_id, view.current_name)}"
                ),
                MarkdownTextObject(
                    text=f"*New partner*\n{partner_label(req.partner_id, view.new_name, new=True)}"
                ),
            ]
        ),
        SectionBlock(text=MarkdownTextObject(text=clip(f"*Reason*\n{escape(req.reason) or '_none given_'}"))),
    ]
    if grant := grant_text(view):
        blocks.append(SectionBlock(text=MarkdownTextObject(text=clip(grant))))
    if req.status == "pending":  # a decided card says when it ended instead (failed: until when to retry)
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=f"Expires {when(req.expires_at)}")]))
    blocks += [DividerBlock(), SectionBlock(text=MarkdownTextObject(text=clip(_card_status(view))))]
    if req.status == "pending":
        new = escape(view.new_name) if view.new_name else f"{req.partner_id} (not in the partner directory)"
        blocks.append(
            ActionsBlock(
                block_id=f"dpor_request_{req.id}",
                elements=[
                    ButtonElement(
                        text="Approve",
                        action_id=APPROVE,
                        value=str(req.id),
                        style="primary",
                        confirm=ConfirmObject(
                            title="Approve this change?",
                            text=MarkdownTextObject(
                                text=clip(
                                    f"Set the partner of record of *{escape(sub.name)}* to *{new}* "
                                    f"(`{req.partner_id}`). Check the partner's name first.",
                                    300,
                                )
                            ),
                            confirm="Approve",
                            deny="Cancel",
                        ),
                    ),
                    ButtonElement(text="Reject", action_id=REJECT, value=str(req.id), style="danger"),
                ],
            )
        )
    elif awaits_portal(view):
        from handlers.portal import portal_blocks  # its module builds on this one's wording

        blocks += portal_blocks(view)
    elif req.status == "failed":
        blocks.append(
            ActionsBlock(
                block_id=f"dpor_request_{req.id}",
                elements=[ButtonElement(text="Retry", action_id=RETRY, value=str(req.id))],
            )
        )
    return blocks


def grant_text(view: CardView) -> str | None:
    """What approving grants when the provider credits through role assignments (azure-rbac); else None."""
    req = view.request
    if view.grant_role is None or req.status not in ("pending", "approved", "applying", "failed"):
        return None
    new = escape(view.new_name) if view.new_name else f"Partner {req.partner_id}"
    text = (
        f":key: *What approving grants*: {new}'s principal gets *{escape(view.grant_role)}* on "
        f"*{escape(view.subscription.name)}*: real access to its resources, which is how Microsoft credits "
        "the partner."
    )
    if req.previous_partner_id:
        old = escape(view.current_name) if view.current_name else f"Partner {req.previous_partner_id}"
        text += f" {old}'s loses it."
    return text


def awaits_portal(view: CardView) -> bool:
    """The request was approved and waits for an owner to set it in the Azure portal (the portal provider)."""
    return view.request.status == "applying" and (view.request.result or {}).get("awaiting") == "attestation"


def card_text(view: CardView) -> str:
    """The notification fallback for the card (what push notifications and screen readers show)."""
    req = view.request
    return (
        f"DPOR change request #{req.id} for {escape(view.subscription.name)}: "
        f"partner {req.partner_id}, {req.status}"
    )


EVENT_SENTENCES = {
    "approved": "was approved by {decider}; it is being applied now.",
    "rejected": "was rejected by {decider}.",
    "cancelled": "was cancelled by {decider}.",
    "expired": "expired without a decision.",
    "applied": "was applied: the partner of record is now {new}.",
    "failed": "could not be applied: {error}",
    "approval": "has approval {count} of {required}, from {decider}.",
    "retried": "is being applied again: {decider} retried it.",
    "asked": "needs an owner's approval: {requester} asked for it.",
    "awaiting": "was approved; an owner must now set it in the Azure portal and say so on the card.",
    "withdrawn": (
        "was withdrawn by dpor-bot: you no longer hold a role that may request changes on that subscription."
    ),
    "voided": (
        "was withdrawn by dpor-bot: {requester}, who asked for it, no longer holds a role that may request "
        "changes on that subscription."
    ),
    "unposted": (
        "has no approval card: Slack would not post it in that channel. Cancel it, and ask an operator "
        "to set DPOR_APPROVAL_CHANNEL to a channel the bot is in, or run /dpor set where the bot is."
    ),
}


def event_text(view: CardView, event: str, facts: dict | None = None) -> str:
    """One sentence about what happened to a request, for a DM, a channel notification or the card's
    thread; `facts` are the step's own (who, approval k of N, the error), where it has them."""
    req, sub, facts = view.request, view.subscription, facts or {}
    new = f"{escape(view.new_name)} ({req.partner_id})" if view.new_name else req.partner_id
    decider = user(facts.get("by") or req.decided_by)
    if event == "approved" and len(view.approvals) > 1:  # every approver, not only the last
        decider = _people([who for who, _ in view.approvals])
    sentence = EVENT_SENTENCES.get(event, event).format(
        decider=decider,
        new=new,
        error=escape(facts.get("error") or req.error or "unknown error"),
        count=int(facts.get("count") or len(view.approvers)),
        required=int(facts.get("required") or view.required),
        requester=user(req.requester_id),
    )
    note = reason_line(req.decision_note) if event == "rejected" else ""
    return f"Request #{req.id} to set the DPOR of *{escape(sub.name)}* to {new} {sentence}{note}"


def _people(user_ids: list[str]) -> str:
    """`<@A>`, `<@A> and <@B>`, `<@A>, <@B> and <@C>`."""
    named = [user(u) for u in dict.fromkeys(user_ids)]
    return named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"


def reason_line(note: str | None) -> str:
    """The decider's reason (a rejection's), escaped, on a line of its own; nothing when none was given."""
    return f"\nReason: {escape(note)}" if note else ""


def reminder_text(view: CardView) -> str:
    """The reminder posted once in the card's thread when a request waits longer than DPOR_REMIND_AFTER."""
    req = view.request
    if awaits_portal(view):
        from handlers.portal import portal_reminder

        return portal_reminder(view)
    return (
        f":bell: Request #{req.id} for *{escape(view.subscription.name)}* is still waiting for approval "
        f"({len(view.approvers)} of {view.required} approvals). It expires {when(req.expires_at)}."
    ) + (f" Waiting on {', '.join(user(owner) for owner in view.missing)}." if view.missing else "")



def notification_blocks(view: CardView, event: str) -> list[Block]:
    req = view.request
    old = partner_label(req.previous_partner_id, view.current_name)
    new = partner_label(req.partner_id, view.new_name)
    return [
        SectionBlock(text=MarkdownTextObject(text=clip(event_text(view, event)))),
        ContextBlock(
            elements=[
                MarkdownTextObject(
                    text=clip(
                        f"{escape(view.subscription.id)} · {old.splitlines()[0]} → {new.splitlines()[0]} · "
                        f"requested by {user(req.requester_id)}",
                        2000,
                    )
                )
            ]
        ),
    ]


def to_dicts(blocks: list[Block]) -> list[dict]:
    return [b.to_dict() for b in blocks]


def drift_text(facts: dict) -> str:
    """The channel notice of a partner drift found by reconcile (every name from outside is escaped)."""

    def label(pid: str | None, name: str | None) -> str:
        if not pid:
            return "no partner"
        return f"*{escape(name)}* (`{pid}`)" if name else f"`{pid}`"

    alias = f" ({escape(facts['alias'])})" if facts.get("alias") else ""
    recorded = label(facts.get("recorded"), facts.get("recorded_name"))
    observed = label(facts.get("observed"), facts.get("observed_name"))
    if facts.get("several"):  # azure-rbac: role assignments credit more than one partner
        each = [label(p.get("id"), p.get("name")) for p in facts["several"]]
        observed = "several partners: " + ", ".join(each)
    return (
        f":warning: *Partner drift* on *{escape(facts['name'])}*{alias} `{facts['subscription_id']}`: "
        f"dpor-bot's record says {recorded}, but the {escape(facts['provider'])} provider "
        f"reports {observed}. The change did not go through dpor-bot; "
        "find out who made it, and request the intended partner if it must change."
    )


def checkpoint_text(seq: int, hash_: str, at: str) -> str:
    """The audit channel's copy of a checkpoint: the chain's head, in the form `--checkpoints` reads back."""
    return (
        f":lock: *Audit checkpoint* `seq={int(seq)} hash={escape(hash_)} at={escape(at)}`: "
        f"dpor-bot's audit log had event {int(seq)} with this hash at that time. Keep this message: "
        "`dpor-bot audit verify --checkpoints FILE` proves the database still holds this history."
    )


def role_text(facts: dict) -> str:
    """The channel notice of a role granted or revoked (names from outside escaped, people as mentions)."""
    if facts.get("subscription"):
        alias = f" ({escape(facts['alias'])})" if facts.get("alias") else ""
        where = f"*{escape(facts['subscription'])}*{alias} `{escape(facts['scope'])}`"
    else:
        where = "*every subscription*"
    who, role, by = user(facts["user_id"]), escape(facts["role"]), user(facts.get("actor"))
    if facts.get("granted"):
        return f":key: {who} is now *{role}* of {where}, granted by {by}."
    text = f":key: {who} is no longer *{role}* of {where}, revoked by {by}."
    if facts.get("forced"):
        named = [f"*{escape(name)}*" for name in facts.get("left_without_owner", [])]
        more = int(facts.get("left_without_owner_count", len(named))) - len(named)
        left = ", ".join(named) + (f" and {more} more" if more > 0 else "")
        text += (
            f" The operator forced it: no owner is left on {left}, so nobody can approve requests "
            "there until someone is granted the owner role."
        )
    return text
