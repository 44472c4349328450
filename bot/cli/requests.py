"""`dpor-bot requests`: list the change requests, show one with its decisions and audit events, cancel one."""

from __future__ import annotations

import json
from dataclasses import dataclass

import click

from bot import lifecycle
from bot.cli.command import actor, run, settings, table, when
from bot.policy import Policy
from storage import requests as store
from storage.db import Database
from storage.directory import partner_names
from storage.models import Approval, AuditEvent, ChangeRequest, RequestStatus, Subscription
from storage.queries import request_events, requests_page

REQUEST_STATUSES = tuple(status.value for status in RequestStatus)


@click.group()
def requests() -> None:
    """Change requests made with /dpor set."""


async def _all_requests(database: Database, statuses: tuple[str, ...] | None) -> list[ChangeRequest]:
    found: list[ChangeRequest] = []
    async with database.read() as session:
        while True:
            page = await requests_page(session, statuses=statuses, limit=500, offset=len(found))
            found += page.items
            if not page.items or not page.more:
                return found


@requests.command("list")
@click.option("--status", type=click.Choice(REQUEST_STATUSES), help="Only requests in this state.")
def requests_list(status: str | None) -> None:
    """Show change requests, newest first."""
    found = run(lambda database: _all_requests(database, (status,) if status else None), audit_key=False)
    if not found:
        click.echo("no requests" + (f" with status {status}" if status else ""))
        return
    table(
        ("ID", "STATUS", "SUBSCRIPTION", "PARTNER", "PREVIOUS", "REQUESTER", "CREATED", "DECIDED_BY"),
        [
            (
                r.id,
                r.status,
                r.subscription_id,
                r.partner_id,
                r.previous_partner_id,
                r.requester_id,
                when(r.created_at),
                r.decided_by,
            )
            for r in found
        ],
    )


@dataclass(frozen=True)
class _Detail:
    request: ChangeRequest
    subscription: Subscription | None
    names: dict[str, str]
    decisions: list[Approval]
    events: list[AuditEvent]


async def _detail(database: Database, raw_id: str) -> _Detail:
    """The request, its subscription, its partners' names, its decisions and its audit events: one read."""
    async with database.read() as session:
        req = await lifecycle.load(session, raw_id, None)
        return _Detail(
            req,
            await store.subscription(session, req.subscription_id),
            await partner_names(session, [req.partner_id, req.previous_partner_id]),
            await store.decisions(session, req.id),
            await request_events(session, req.id),
        )


def _partner(pid: str | None, names: dict[str, str]) -> str:
    if not pid:
        return "none"
    return f"{pid} ({names[pid]})" if pid in names else f"{pid} (not in the partner directory)"


@requests.command("show")
@click.argument("request_id", metavar="ID")
def requests_show(request_id: str) -> None:
    """Show one request: its fields, every decision on it, and its audit events in chain order."""
    found = run(lambda database: _detail(database, request_id), audit_key=False)
    req, sub = found.request, found.subscription
    label = f"{sub.name}{f' ({sub.alias})' if sub.alias else ''} " if sub else ""
    fields = [
        ("request", f"#{req.id}"),
        ("status", req.status),
        ("subscription", f"{label}{req.subscription_id}"),
        ("partner", _partner(req.partner_id, found.names)),
        ("previous", _partner(req.previous_partner_id, found.names)),
        ("requester", req.requester_id),
        ("reason", req.reason or None),
        ("created", when(req.created_at)),
        ("expires", when(req.expires_at)),
        ("decided", f"by {req.decided_by} at {when(req.decided_at)}" if req.decided_at else None),
        ("applied", when(req.applied_at)),
        ("error", req.error),
        ("card", f"{req.card_channel} {req.card_ts or '(not posted)'}" if req.card_channel else None),
    ]
    for name, value in fields:
        click.echo(f"{name:<13} {'-' if value in (None, '') else value}")
    click.echo()
    if found.decisions:
        table(
            ("DECIDED_BY", "DECISION", "AT"),
            [(d.approver_id, d.decision, when(d.at)) for d in found.decisions],
        )
    else:
        click.echo("no decisions")
    click.echo()
    table(
        ("SEQ", "AT", "ACTOR", "ACTION", "DATA"),
        [
            (
                e.seq,
                when(e.at),
                e.actor,
                e.action,
                json.dumps(e.data or {}, sort_keys=True, ensure_ascii=False),
            )
            for e in found.events
        ],
    )


@requests.command("cancel")
@click.argument("request_id", metavar="ID")
@click.option("--reason", required=True, help="Why: recorded in the audit log (request.cancelled).")
def requests_cancel(request_id: str, reason: str) -> None:
    """Cancel a pending request as an operator (no Slack role needed).

    The audit log records the operator (cli:<login>) and the reason; the running bot updates the
    request's card and tells the requester.
    """
    config = settings()
    req = run(
        lambda database: lifecycle.cancel(
            database,
            Policy.from_settings(config),
            request_id=request_id,
            team_id=None,
            user_id=actor(),
            reason=reason,
            operator=True,
        )
    )
    click.echo(f"cancelled request #{req.id}")
