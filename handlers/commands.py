"""The `/dpor` slash command: parse, call a bot service, answer ephemerally in the ack."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from bot import directory, lifecycle, policy, views, watches
from bot.context import BotContext
from bot.errors import Refusal
from bot.logs import bound
from bot.metrics import ERROR, OK, REFUSED, UNKNOWN
from bot.reach import reach_of
from bot.roles import AZURE, ROLES_FROM_AZURE, RolesFromAzure, holders_on
from bot.text import clean
from bot.views import ChangeRequest
from handlers import forms, replies
from handlers.grammar import USAGE, Command, UsageError, parse
from handlers.replies import PAGE_SIZE, Reply
from handlers.steps import reach_text

log = logging.getLogger("dpor.commands")

Body = dict[str, Any]
Subcommand = Callable[[BotContext, Command, Body], Awaitable[Reply]]


def request_opened(req: ChangeRequest) -> str:
    """The private answer to a request opened: one wording for the typed command and the set form."""
    where = f" in <#{req.card_channel}>" if req.card_channel else ""
    return (
        f":inbox_tray: Request #{req.id} is open: set partner `{req.partner_id}` on this subscription. "
        f"An owner approves it on the card{where}; it expires {replies.when(req.expires_at)}."
        + reach_text(reach_of(req))
    )


async def _set(ctx: BotContext, cmd: Command, body: Body) -> Reply:
    if not cmd.args:  # the listener opens the form; without a trigger there is none to open
        return replies.usage("`set` without arguments opens a form in Slack.", "set")
    req = await lifecycle.create_request(
        ctx.db,
        ctx.policy,
        team_id=body["team_id"],
        user_id=body["user_id"],
        subscription=cmd.args[0],
        partner=cmd.args[1],
        reason=cmd.rest,
        channel_id=body.get("channel_id"),
    )
    return Reply(request_opened(req))


def _offset(cmd: Command) -> int:
    return (cmd.page - 1) * PAGE_SIZE


async def _show(ctx: BotContext, cmd: Command, body: Body) -> Reply:
    return replies.show(await views.overview(ctx.db, cmd.args[0]))


async def _list(ctx: BotContext, cmd: Command, body: Body) -> Reply:
    return replies.subscriptions(*await views.subscriptions(ctx.db, limit=PAGE_SIZE, offset=_offset(cmd)))


async def _history(ctx: BotContext, cmd: Command, body: Body) -> Reply:
    sub, page = await views.history(ctx.db, cmd.args[0], limit=PAGE_SIZE, offset=_offset(cmd))
    return replies.history(sub, page, f"/dpor history {sub.alias or sub.id}")


async def _pending(ctx: BotContext, cmd: Command, body: Body) -> Reply:
    return replies.pending(*await views.pending(ctx.db, limit=PAGE_SIZE, offset=_offset(cmd)))


async def _cancel(ctx: BotContext, cmd: Command, body: Body) -> Reply:
    req = await lifecycle.cancel(
        ctx.db, ctx.policy, request_id=cmd.args[0], team_id=body["team_id"], user_id=body["user_id"]
    )
    return Reply(f":heavy_multiplication_x: Request #{req.id} is cancelled.")


def _scope_words(ref: str) -> str:
    return "every subscription" if directory.is_scope_word(ref) else f"`{replies.escape(ref)}`"


async def _role_change(ctx: BotContext, cmd: Command, body: Body) -> Reply:
    if ctx.policy.roles.name == AZURE:
        raise RolesFromAzure(ROLES_FROM_AZURE)
    target, role = cmd.args[0], cmd.args[1]
    subscription = cmd.args[2] if len(cmd.args) > 2 else None
    user = body["user_id"]
    scope = await policy.require(ctx.db, "manage_roles", user, subscription)
    where = _scope_words(subscription or scope)

    async def authorise(session: Any, scope: str) -> None:
        # Again where it counts: in the transaction that writes (the check above saw no revocation
        # committed while this request waited for the write lock).
        await policy.check_scope(session, "manage_roles", user, scope)

    options = {"actor": user, "notify": ctx.policy.notify_channels, "authorise": authorise}
    if cmd.name == "role grant":
        changed = await directory.grant_role(ctx.db, target, role, scope, **options)
        verb = "is now" if changed else "already was"
    else:
        changed = await directory.revoke_role(ctx.db, target, role, scope, **options)
        verb = "is no longer" if changed else "was not"
    return Reply(f"<@{target}> {verb} {role} of {where}.")


async def _role_list(ctx: BotContext, cmd: Command, body: Body) -> Reply:
    if ctx.policy.roles.name == AZURE:
        return await _azure_role_list(ctx, cmd, body)
    assignments = await directory.list_roles(ctx.db, cmd.args[0] if cmd.args else None)
    subs = await views.subscriptions_named(ctx.db, {a.scope for a in assignments} - {views.ALL_SUBSCRIPTIONS})
    return replies.roles(assignments, subs)


async def _azure_role_list(ctx: BotContext, cmd: Command, body: Body) -> Reply:
    settings = ctx.settings
    source = (
        f"Roles come from Azure RBAC (DPOR_ROLE_SOURCE=azure): {', '.join(settings.azure_approver_roles)} "
        f"on a subscription approves, {', '.join(settings.azure_requester_roles)} requests. Only people the "
        "operator linked with `dpor-bot people link` hold them in dpor-bot."
    )
    if not cmd.args or directory.is_scope_word(cmd.args[0]):
        return Reply(f"{replies.escape(source)} Name a subscription to see who: `/dpor role list SUB`.")
    found = await holders_on(ctx.db, ctx.policy.roles, body["user_id"], cmd.args[0])
    sub = found.subscription

    def people(users: list[str]) -> str:
        return ", ".join(f"<@{u}>" for u in users) or "nobody"

    return Reply(
        f"{replies.escape(source)}\n*{replies.escape(sub.name)}* (`{sub.id}`): "
        f"owners {people(found.owners)}; admins {people(found.admins)}."
    )


async def _subscribe(ctx: BotContext, cmd: Command, body: Body) -> Reply:
    target = cmd.args[0]
    added = await watches.watch(
        ctx.db,
        team_id=body["team_id"],
        channel_id=body["channel_id"],
        subscription=target,
        user_id=body["user_id"],
        roles=ctx.policy.roles,
    )
    state = "will now get" if added else "already gets"
    return Reply(f":bell: This channel {state} DPOR change notifications for {_scope_words(target)}.")


async def _unsubscribe(ctx: BotContext, cmd: Command, body: Body) -> Reply:
    target = cmd.args[0] if cmd.args else None
    done = await watches.unwatch(
        ctx.db,
        channel_id=body["channel_id"],
        subscription=target,
        user_id=body["user_id"],
        roles=ctx.policy.roles,
    )
    kept = ""
    if done.kept:
        still = ", ".join(_scope_words(s) for s in done.kept)
        kept = f" It still gets them for {still}: only an owner or admin there can stop those."
    if not done.removed:
        return Reply(f"This channel gets no DPOR change notifications you can stop here.{kept}")
    stopped = ", ".join(_scope_words(s) for s in done.removed)
    return Reply(f":no_bell: This channel no longer gets DPOR change notifications for {stopped}.{kept}")


async def _help(ctx: BotContext, cmd: Command, body: Body) -> Reply:
    return replies.help_reply()


SUBCOMMANDS: dict[str, Subcommand] = {
    "set": _set,
    "show": _show,
    "list": _list,
    "history": _history,
    "pending": _pending,
    "cancel": _cancel,
    "role grant": _role_change,
    "role revoke": _role_change,
    "role list": _role_list,
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "help": _help,
}


# The argument that names what a subcommand is about, for the fields of its log lines.
_SUBSCRIPTION_AT = {"set": 0, "show": 0, "history": 0, "subscribe": 0, "unsubscribe": 0, "role list": 0}
_SUBSCRIPTION_AT |= {"role grant": 2, "role revoke": 2}


def _about(cmd: Command | None) -> dict[str, str]:
    """The subscription (as written) or the request a command names."""
    if cmd is None:
        return {}
    if cmd.name == "cancel" and cmd.args:
        return {"request_id": cmd.args[0]}
    at = _SUBSCRIPTION_AT.get(cmd.name)
    return {"subscription": cmd.args[at]} if at is not None and len(cmd.args) > at else {}


async def answer(ctx: BotContext, body: Body) -> Reply:
    """The reply to one `/dpor` invocation, counted by subcommand and outcome (GET /metrics); never raises."""
    cmd: Command | None = None
    kind = UNKNOWN
    with bound(slack_user=body.get("user_id")):
        try:
            cmd = parse(clean(body.get("text", "")))
            kind = cmd.name
            with bound(**_about(cmd)):
                reply, outcome = await SUBCOMMANDS[cmd.name](ctx, cmd, body), OK
        except UsageError as exc:
            if exc.subcommand in SUBCOMMANDS or exc.subcommand in USAGE:
                kind = exc.subcommand
            reply, outcome = replies.usage(exc.problem, exc.subcommand), REFUSED
        except Refusal as exc:
            reply, outcome = replies.refusal(exc.message), REFUSED
        except Exception:
            ref = uuid.uuid4().hex[:8]
            log.exception("/dpor failed (ref %s)", ref, extra={"error_ref": ref, **_about(cmd)})
            reply, outcome = replies.internal_error(ref), ERROR
    ctx.metrics.request(kind, outcome)
    return reply


def _opens_form(body: Body) -> bool:
    """`/dpor set` with no arguments: the set form, rather than an answer."""
    try:
        cmd = parse(clean(body.get("text", "")))
    except UsageError:
        return False
    return cmd.name == "set" and not cmd.args


FORM_UNOPENED = (
    "Slack did not open the form (it allows 3 seconds). Try `/dpor set` again, "
    "or type `/dpor set SUBSCRIPTION PARTNER_ID reason`."
)


def register(app: AsyncApp, ctx: BotContext) -> None:
    ctx.metrics.expect(SUBCOMMANDS)

    @app.command("/dpor")
    async def dpor_command(
        ack: AsyncAck, body: Body, context: AsyncBoltContext, client: AsyncWebClient
    ) -> None:
        home = context.authorize_result.team_id if context.authorize_result else None
        if home and body.get("team_id") != home:
            # A well-signed command from another workspace (an org-wide or shared install): not ours.
            reply = replies.refusal("dpor-bot serves another Slack workspace; nothing was done.")
            ctx.metrics.request(UNKNOWN, REFUSED)
        elif _opens_form(body):
            form = forms.set_form(body.get("channel_id"))
            if await forms.open_form(client, body.get("trigger_id", ""), form):
                await ack()  # the form is the answer
                return
            reply = replies.refusal(FORM_UNOPENED)
        else:
            reply = await answer(ctx, body)
        await ack(**reply.to_ack())
