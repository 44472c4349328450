"""Ephemeral answers to `/dpor`: pure functions from query results to Block Kit, within Slack's limits."""

from __future__ import annotations

from dataclasses import dataclass

from slack_sdk.models.blocks import (
    Block,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from bot.views import ChangeRequest, Overview, Page, RoleAssignment, Subscription
from handlers.grammar import USAGE
from handlers.messages import SECTION_LIMIT, clip, escape, partner_label, safe, user, when

PAGE_SIZE = 20


@dataclass(frozen=True)
class Reply:
    text: str
    blocks: list[Block] | None = None

    def to_ack(self) -> dict:
        ack: dict = {"text": self.text, "response_type": "ephemeral"}
        if self.blocks:
            ack["blocks"] = [b.to_dict() for b in self.blocks]
        return ack


def refusal(message: str) -> Reply:
    return Reply(clip(f":no_entry: {safe(message)}"))


def usage(problem: str, subcommand: str | None) -> Reply:
    if subcommand in USAGE:
        line, example = USAGE[subcommand]
        return Reply(clip(f":warning: {safe(problem)}\nUsage: `{line}`\nExample: `{example}`"))
    return Reply(clip(f":warning: {safe(problem)} Try `/dpor help`."))


def internal_error(ref: str) -> Reply:
    return Reply(f":boom: Something went wrong (ref {ref}). The operator can find it in the bot's log.")


def help_reply() -> Reply:
    lines = [f"`{line}`" for line, _ in USAGE.values()]
    text = (
        "*dpor-bot* governs changes of a subscription's Digital Partner of Record (DPOR).\n"
        "Admins and owners request a change; an owner other than the requester approves it on the card.\n\n"
        + "\n".join(lines)
    )
    return Reply("dpor-bot help", [SectionBlock(text=MarkdownTextObject(text=clip(text)))])


def _sections(lines: list[str]) -> list[Block]:
    """Pack lines into as few sections as fit Slack's 3,000-character limit."""
    blocks: list[Block] = []
    chunk: list[str] = []
    size = 0
    for line in lines:
        line = clip(line, 1000)
        if chunk and size + len(line) + 1 > SECTION_LIMIT:
            blocks.append(SectionBlock(text=MarkdownTextObject(text="\n".join(chunk))))
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        blocks.append(SectionBlock(text=MarkdownTextObject(text="\n".join(chunk))))
    return blocks


def _paged(title: str, lines: list[str], page: Page, next_command: str, empty: str) -> Reply:
    if not lines:
        note = empty if page.offset == 0 else f"There is no page {page.offset // PAGE_SIZE + 1}."
        return Reply(note, [SectionBlock(text=MarkdownTextObject(text=note))])
    first, last = page.offset + 1, page.offset + len(page.items)
    footer = f"{first}-{last} of {page.total}"
    if page.more:
        footer += (
            f" · `{next_command} {page.offset // PAGE_SIZE + 2}` for the next {min(PAGE_SIZE, page.more)}"
        )
    blocks: list[Block] = [HeaderBlock(text=PlainTextObject(text=title)), *_sections(lines)]
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=footer)]))
    # The title is plain text in the header block; in the message's text it is mrkdwn, so escaped there.
    return Reply(f"{escape(title)} ({footer})", blocks)


def show(overview: Overview) -> Reply:
    sub, name, open_request = overview.subscription, overview.partner_name, overview.open_request
    alias = f" (alias `{escape(sub.alias)}`)" if sub.alias else ""
    partner = partner_label(sub.partner_id, name)
    lines = [
        f"*{escape(sub.name)}*{alias}",
        f"Subscription ID: `{sub.id}`",
        f"Partner of record: {partner}",
    ]
    if sub.partner_set_at:
        lines.append(f"Set {when(sub.partner_set_at)}")
    if open_request is not None:
        lines.append(
            f"Open request #{open_request.id}: partner `{open_request.partner_id}`, {open_request.status}, "
            f"requested by {user(open_request.requester_id)}"
        )
    text = "\n".join(lines)
    plain = f"{sub.name}: partner {sub.partner_id or 'none'}" + (f" ({name})" if name else "")
    return Reply(escape(plain), [SectionBlock(text=MarkdownTextObject(text=clip(text)))])


def subscriptions(page: Page[Subscription], names: dict[str, str]) -> Reply:
    lines = []
    for sub in page.items:
        alias = f" `{escape(sub.alias)}`" if sub.alias else ""
        partner = (
            f"{escape(names[sub.partner_id])} ({sub.partner_id})"
            if sub.partner_id in names
            else (sub.partner_id or "no partner")
        )
        lines.append(f"• *{escape(sub.name)}*{alias} `{sub.id}`: {partner}")
    return _paged(
        "Subscriptions",
        lines,
        page,
        "/dpor list",
        "No subscriptions yet: an operator adds them with `dpor-bot subscriptions add` or `import`.",
    )


def request_line(req: ChangeRequest, sub_name: str | None = None) -> str:
    on = f" on *{escape(sub_name)}*" if sub_name else ""
    return (
        f"• #{req.id}{on}: `{req.previous_partner_id or 'none'}` → `{req.partner_id}`, *{req.status}*, "
        f"by {user(req.requester_id)} {when(req.created_at)}"
    )


def history(sub: Subscription, page: Page[ChangeRequest], command: str) -> Reply:
    lines = [request_line(r) for r in page.items]
    return _paged(
        f"History of {sub.name}"[:150], lines, page, command, f"No requests for {escape(sub.name)} yet."
    )


def pending(page: Page[ChangeRequest], subs: dict[str, Subscription]) -> Reply:
    lines = [
        request_line(r, subs[r.subscription_id].name if r.subscription_id in subs else None)
        for r in page.items
    ]
    return _paged("Open requests", lines, page, "/dpor pending", "No open requests.")


def roles(assignments: list[RoleAssignment], subs: dict[str, Subscription]) -> Reply:
    lines = []
    for a in assignments:
        where = (
            "every subscription"
            if a.scope == "*"
            else (f"*{escape(subs[a.scope].name)}*" if a.scope in subs else f"`{a.scope}`")
        )
        lines.append(f"• {user(a.user_id)}: {a.role} of {where}")
    shown = lines[:100]
    if len(lines) > len(shown):
        shown.append(f"…and {len(lines) - len(shown)} more; `dpor-bot roles list` shows all.")
    if not shown:
        return Reply("No roles granted yet.")
    return Reply(
        f"{len(lines)} role assignments",
        [HeaderBlock(text=PlainTextObject(text="Roles")), *_sections(shown)][:50],
    )
