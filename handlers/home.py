"""App Home: `app_home_opened` -> `views.publish` of the viewer's Home, and its Block Kit.

The Home shows what waits for the viewer's approval (with the card's own Approve and Reject buttons),
their own requests, the subscriptions they own, and for owners what went wrong: outbox rows given up on
and partner drift. A bystander learns what dpor-bot does and how to get a role. A click on the Home is
handled by handlers/actions.py, which publishes the Home again (with a refusal as a notice on top).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.models.blocks import (
    Block,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot import home
from bot.context import BotContext
from bot.home import DeadRow, Drift, HomeView, Role
from bot.logs import bound
from bot.metrics import ERROR, OK
from bot.views import CardView, ChangeRequest
from handlers.messages import (
    STATUS_LINE,
    card_blocks,
    clip,
    escape,
    partner_label,
    safe,
    subscription_label,
    to_dicts,
    user,
    when,
)

log = logging.getLogger("dpor.home")

HOME = "home"  # the kind of request counted in dpor_requests (a Home published)
VIEW_BLOCK_LIMIT = 100  # Slack refuses a view with more blocks
ERROR_CLIP = 200


def _md(text: str) -> MarkdownTextObject:
    return MarkdownTextObject(text=clip(text))


def _section(text: str) -> SectionBlock:
    return SectionBlock(text=_md(text))


def _context(text: str) -> ContextBlock:
    return ContextBlock(elements=[MarkdownTextObject(text=clip(text, 2000))])


def _heading(text: str) -> list[Block]:
    return [DividerBlock(), HeaderBlock(text=PlainTextObject(text=text))]


def _more(shown: int, total: int, where: str) -> list[Block]:
    left = total - shown
    return [_context(f"and {left} more — {where}")] if left > 0 else []


def _scope(role: Role) -> str:
    if role.subscription is not None:
        return f"*{escape(role.subscription.name)}*"
    return "every subscription" if role.scope == "*" else f"`{escape(role.scope)}`"


def _roles_line(view: HomeView) -> str:
    if not view.roles:
        return "You hold no role in dpor-bot."
    held = ", ".join(f"{r.role} of {_scope(r)}" for r in view.roles)
    line = f"You are {held}."
    if not view.is_owner:
        line += " Only owners approve requests, so nothing waits for your approval."
    return line


def _waiting_item(card: CardView) -> list[Block]:
    req, sub = card.request, card.subscription
    reason = escape(req.reason) or "_none given_"
    summary = SectionBlock(
        text=_md(f"*Request #{req.id}*: {reason}"),
        fields=[
            MarkdownTextObject(text=f"*Subscription*\n{subscription_label(sub)}"),
            MarkdownTextObject(text=f"*Requested by*\n{user(req.requester_id)}"),
            MarkdownTextObject(
                text=f"*Current partner*\n{partner_label(req.previous_partner_id, card.current_name)}"
            ),
            MarkdownTextObject(
                text=f"*New partner*\n{partner_label(req.partner_id, card.new_name, new=True)}"
            ),
        ],
    )
    progress = _context(
        f"{len(card.approvers)} of {card.required} approvals · Expires {when(req.expires_at)}"
    )
    # The card's own buttons (Approve with its confirm dialog, Reject): one place words and builds them.
    buttons = [b for b in card_blocks(card) if b.type == "actions"]
    return [summary, progress, *buttons]


def _waiting(view: HomeView) -> list[Block]:
    blocks = _heading("Waiting for your approval")
    if not view.waiting.items:
        return [*blocks, _section("_Nothing waits for your approval._")]
    for card in view.waiting.items:
        blocks += _waiting_item(card)
    return blocks + _more(len(view.waiting.items), view.waiting.total, "`/dpor pending`")


def _request_line(view: HomeView, req: ChangeRequest) -> str:
    sub = view.named.get(req.subscription_id)
    name = f"*{escape(sub.name)}*" if sub else f"`{req.subscription_id}`"
    partner = partner_label(req.partner_id, view.partners.get(req.partner_id)).splitlines()[0]
    status = STATUS_LINE.get(req.status, escape(req.status))
    return f"{status} · #{req.id} {name} → {partner} · asked {when(req.created_at)}"


def _mine(view: HomeView) -> list[Block]:
    blocks = _heading("Your requests")
    opened, recent = view.open_requests, view.recent
    if opened.items:
        blocks.append(_section("\n".join(_request_line(view, r) for r in opened.items)))
        blocks += _more(len(opened.items), opened.total, "`/dpor pending`")
    else:
        blocks.append(_section("_You have no open requests._ `/dpor set` asks for a change."))
    if recent.items:
        lines = "\n".join(_request_line(view, r) for r in recent.items)
        blocks.append(_section(f"*Recently decided*\n{lines}"))
        blocks += _more(len(recent.items), recent.total, "`/dpor history SUB`")
    else:
        blocks.append(_section("_None of your requests has been decided yet._"))
    return blocks


def _owned(view: HomeView) -> list[Block]:
    blocks = _heading("Subscriptions you own")
    if not view.owned.items:
        return [*blocks, _section("_No subscription yet: an operator adds them._")]
    for owned in view.owned.items:
        sub = owned.subscription
        partner = partner_label(sub.partner_id, owned.partner_name).replace("\n", " · ")
        blocks.append(_section(f"{subscription_label(sub)}\nPartner of record: {partner}"))
    return blocks + _more(len(view.owned.items), view.owned.total, "`/dpor list`")


def _dead_line(row: DeadRow) -> str:
    error = clip(escape(row.error or "no error recorded"), ERROR_CLIP)
    return f"• row {row.id} ({escape(row.kind)}), {when(row.at)}: {error}"


def _drift_line(drift: Drift) -> str:
    def label(pid: str | None, name: str | None) -> str:
        if not pid:
            return "no partner"
        return f"*{escape(name)}* (`{escape(pid)}`)" if name else f"`{escape(pid)}`"

    sub = f"*{escape(drift.subscription.name)}*" if drift.subscription else "a removed subscription"
    return (
        f"• {when(drift.at)} {sub} `{escape(drift.subscription_id)}`: the record says "
        f"{label(drift.recorded, drift.recorded_name)}, the {escape(drift.provider)} provider reports "
        f"{label(drift.observed, drift.observed_name)}"
    )


def _trouble(view: HomeView) -> list[Block]:
    blocks = _heading("Needs attention")
    dead, drift = view.dead, view.drift
    if dead.items:
        lines = "\n".join(_dead_line(r) for r in dead.items)
        blocks.append(
            _section(
                f":rotating_light: *{dead.total} outbox row{'s' if dead.total != 1 else ''} given up on* "
                f"(messages or applies dpor-bot stopped retrying). The newest:\n{lines}"
            )
        )
        blocks.append(
            _context(
                "An operator lists them with `dpor-bot outbox list` and retries with `dpor-bot outbox retry`."
            )
        )
    else:
        blocks.append(_section(":white_check_mark: No outbox rows given up on."))
    if drift.items:
        lines = "\n".join(_drift_line(d) for d in drift.items)
        left = drift.total - len(drift.items)
        more = f"\nand {left} more" if left > 0 else ""
        blocks.append(
            _section(
                f":warning: *Partner drift* found by reconcile in the last {home.DRIFT_WINDOW.days} days: "
                f"changes that did not go through dpor-bot.\n{lines}{more}"
            )
        )
    else:
        blocks.append(
            _section(f":white_check_mark: No partner drift in the last {home.DRIFT_WINDOW.days} days.")
        )
    return blocks


BYSTANDER = (
    "*What is dpor-bot?* It changes the Digital Partner of Record (DPOR) of a cloud subscription with an "
    "approval: an admin or owner asks (`/dpor set`), an owner approves on the card, and dpor-bot applies "
    "the change and records every step in an audit log.\n"
    "*How to take part:* ask an owner of the subscription for a role. `/dpor role list SUB` shows its "
    "owners; an owner grants it with `/dpor role grant @you admin SUB`. `/dpor help` shows every command."
)


def home_blocks(view: HomeView, notice: str | None = None) -> list[Block]:
    """The Home of `view.user_id`; `notice` (already escaped) goes on top."""
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text="dpor-bot")),
        _context(_roles_line(view)),
    ]
    if notice:
        blocks.append(_section(f":no_entry_sign: {notice}"))
    if view.is_owner:
        blocks += _waiting(view)
    if view.roles or view.open_requests.total or view.recent.total:
        blocks += _mine(view)
    if view.is_owner:
        blocks += _owned(view)
        blocks += _trouble(view)
    if not view.roles:
        blocks += [DividerBlock(), _section(BYSTANDER)]
    return blocks[:VIEW_BLOCK_LIMIT]


async def publish_home(
    ctx: BotContext,
    client: AsyncWebClient,
    user_id: str,
    notice: str | None = None,
    *,
    team_id: str | None = None,
) -> None:
    """Publish `user_id`'s Home as it stands now. `notice` is a plain sentence (a refusal's message),
    escaped here keeping the `<@U…>` mentions the bot wrote; `team_id` limits requests to that workspace.
    A failure is logged with a reference and counted, never raised."""
    try:
        view = await home.home(ctx.db, ctx.policy, user_id, team_id)
        blocks = home_blocks(view, safe(notice) if notice else None)
        await client.views_publish(user_id=user_id, view={"type": "home", "blocks": to_dicts(blocks)})
    except Exception:
        ref = uuid.uuid4().hex[:8]
        log.exception("publishing the Home of %s failed (ref %s)", user_id, ref, extra={"error_ref": ref})
        ctx.metrics.request(HOME, ERROR)
        return
    ctx.metrics.request(HOME, OK)


def register(app: AsyncApp, ctx: BotContext) -> None:
    ctx.metrics.expect([HOME])

    async def on_home_opened(event: dict[str, Any], body: dict[str, Any], client: AsyncWebClient) -> None:
        user_id = str(event.get("user") or "")
        if event.get("tab") != "home" or not user_id:
            return  # the Messages tab, or no one to publish for
        with bound(slack_user=user_id):
            await publish_home(ctx, client, user_id, team_id=body.get("team_id") or None)

    app.event("app_home_opened")(on_home_opened)
