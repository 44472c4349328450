"""What a person waits for, one request at a time, and the resident memory of `dpor-bot serve`.

Light load: for each of `count` subscriptions, a signed `/dpor set` (timed until the Slack stand-in records
the approval card's chat.postMessage), then the owner's signed Approve click on that card (timed until the
stand-in records the chat.update that shows the card Applied). Both clocks are the stand-in's `Call.at`
(time.time() in this process) against time.time() just before the request is sent, so the times include
the HTTP round trip on loopback, the ack and the bot's work up to the Slack call.

Memory: VmRSS (and VmHWM, the peak) from /proc/PID/status: no dependency, Linux only.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import seed
from sandbox.signing import block_actions_body, sign, slash_command_body
from sandbox.standin import Call, SlackStandin

APPROVALS = "C0APPROVALS"
APPROVE = "dpor_approve"
APPLIED = ":white_check_mark: *Applied*"  # handlers/messages.py STATUS_LINE["applied"]
PAUSE_S = 0.05  # between requests, so the DMs and notices of one request do not overlap the next
TIMEOUT_S = 10.0


@dataclass
class Latency:
    measurement: str
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int


@dataclass
class Memory:
    idle_mb: float
    after_load_mb: float | None = None
    peak_mb: float | None = None


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summarise(measurement: str, samples_s: list[float], errors: int) -> Latency:
    ms = [s * 1000 for s in samples_s] or [0.0]
    return Latency(
        measurement=measurement,
        samples=len(samples_s),
        p50_ms=round(percentile(ms, 50), 2),
        p99_ms=round(percentile(ms, 99), 2),
        max_ms=round(max(ms), 2),
        errors=errors,
    )


def status_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS: resident now; VmHWM: the peak resident size)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def rss_mb(pid: int) -> float:
    return round(status_kb(pid, "VmRSS") / 1024, 1)


def peak_mb(pid: int) -> float:
    return round(status_kb(pid, "VmHWM") / 1024, 1)


def _has_button(blocks: object, request_id: int) -> bool:
    if not isinstance(blocks, list):
        return False
    for block in blocks:
        if isinstance(block, dict) and block.get("type") == "actions":
            for element in block.get("elements", []):
                if element.get("action_id") == APPROVE and element.get("value") == str(request_id):
                    return True
    return False


async def _first_call(slack: SlackStandin, method: str, after: int, match: Callable[[Call], bool]) -> Call:
    """The first successful call to `method` recorded at index `after` or later that `match`es."""
    deadline = time.monotonic() + TIMEOUT_S
    seen = after
    while True:
        calls = slack.calls
        for call in calls[seen:]:
            if call.method == method and call.ok and match(call):
                return call
        seen = len(calls)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no matching {method} within {TIMEOUT_S:.0f} s")
        # wake at the next recorded call of this method (wait_for counts successes, so ask for one more)
        done = sum(1 for c in calls if c.method == method and c.ok)
        try:
            await slack.wait_for(method, count=done + 1, timeout=remaining)
        except AssertionError:
            raise TimeoutError(f"no matching {method} within {TIMEOUT_S:.0f} s") from None


async def _post(session: aiohttp.ClientSession, url: str, secret: str, body: str) -> tuple[int, str]:
    headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(secret, body)}
    async with session.post(url, data=body.encode(), headers=headers) as response:
        return response.status, await response.text()


async def light_load(
    slack: SlackStandin, port: int, secret: str, subscriptions: Sequence[str], count: int
) -> list[Latency]:
    """`set` -> card posted and Approve -> card applied, `count` of each, one request at a time."""
    url = f"http://127.0.0.1:{port}/slack/events"
    posted: list[float] = []
    applied: list[float] = []
    set_errors = approve_errors = 0
    async with aiohttp.ClientSession() as session:
        for n, sub in enumerate(subscriptions[:count]):
            body = slash_command_body(
                f"set {sub} {seed.NEW_PARTNER} bench light {n}",
                user_id=seed.ADMIN,
                team_id=seed.TEAM,
                channel_id=APPROVALS,
            )
            mark = len(slack.calls)
            started = time.time()
            status, text = await _post(session, url, secret, body)
            found = re.search(r"Request #(\d+)", text)
            if status != 200 or found is None:
                set_errors += 1
                continue
            rid = int(found.group(1))
            try:
                card = await _first_call(
                    slack,
                    "chat.postMessage",
                    mark,
                    lambda c, rid=rid: _has_button(c.params.get("blocks"), rid),
                )
            except TimeoutError:
                set_errors += 1
                continue
            posted.append(card.at - started)
            message = next((m for m in slack.messages(APPROVALS) if _has_button(m.blocks, rid)), None)
            if message is None:
                approve_errors += 1
                continue
            await asyncio.sleep(PAUSE_S)

            click = block_actions_body(
                APPROVE,
                str(rid),
                user_id=seed.OWNER,
                team_id=seed.TEAM,
                channel_id=APPROVALS,
                message_ts=message.ts,
                message={"ts": message.ts, "text": message.text, "blocks": message.blocks},
            )
            mark = len(slack.calls)
            started = time.time()
            status, _ = await _post(session, url, secret, click)
            if status != 200:
                approve_errors += 1
                continue
            try:
                update = await _first_call(
                    slack,
                    "chat.update",
                    mark,
                    lambda c, ts=message.ts: c.params.get("ts") == ts and APPLIED in json.dumps(c.params),
                )
            except TimeoutError:
                approve_errors += 1
                continue
            applied.append(update.at - started)
            await asyncio.sleep(PAUSE_S)
    return [
        summarise("`set` -> card posted", posted, set_errors),
        summarise("Approve -> card Applied", applied, approve_errors),
    ]
