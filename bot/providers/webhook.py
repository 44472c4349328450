"""The webhook provider: POST a signed JSON description of each change to a receiver the operator runs.

Signature: `X-DPOR-Signature: v1=<hex HMAC-SHA256 of "{X-DPOR-Timestamp}.{raw body}" under
DPOR_WEBHOOK_SECRET>`. 2xx means applied; 4xx is refused with the receiver's message; 429, 5xx,
timeouts and unreachable receivers are retried by the outbox.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any

import aiohttp

from bot.providers import CannotRead, PartnerState, ProviderError, name_check, retry_after
from bot.settings import ConfigError, Settings
from storage import requests
from storage.db import Database
from storage.models import utcnow
from storage.queries import partner_name
from storage.urls import url_host

log = logging.getLogger("dpor.providers.webhook")

EVENT = "partner.apply"
SIGNATURE_VERSION = "v1"
MAX_MESSAGE = 300
MAX_RESPONSE = 64 * 1024


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-DPOR-Signature value a receiver recomputes to trust a delivery."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


class WebhookProvider:
    name = "webhook"

    def __init__(self, settings: Settings, db: Database) -> None:
        if not settings.webhook_url:
            raise ConfigError("DPOR_WEBHOOK_URL: the webhook provider needs the receiver's URL")
        if settings.webhook_secret is None or not settings.webhook_secret.get_secret_value():
            raise ConfigError("DPOR_WEBHOOK_SECRET: the webhook provider needs a secret to sign deliveries")
        self.db = db
        self.url = settings.webhook_url
        self.host = url_host(self.url)  # never the URL's credentials or query
        self._secret = settings.webhook_secret.get_secret_value().encode()
        self.timeout = settings.provider_timeout.total_seconds()

    async def apply(self, subscription_id: str, partner_id: str) -> PartnerState:
        body = json.dumps(
            await self._change(subscription_id, partner_id), separators=(",", ":"), ensure_ascii=False
        ).encode()
        timestamp = str(int(time.time()))
        delivery = uuid.uuid4().hex
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "dpor-bot",
            "X-DPOR-Event": EVENT,
            "X-DPOR-Delivery": delivery,
            "X-DPOR-Timestamp": timestamp,
            "X-DPOR-Signature": signature(self._secret, timestamp, body),
        }
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session,
                session.post(self.url, data=body, headers=headers, allow_redirects=False) as response,
            ):
                status = response.status
                answer = (await response.content.read(MAX_RESPONSE)).decode("utf-8", "replace")
                wait = retry_after(response.headers)
        except TimeoutError:
            raise ProviderError(
                f"the webhook receiver at {self.host} did not answer within {self.timeout:g}s", retryable=True
            ) from None
        except aiohttp.ClientError as exc:
            raise ProviderError(
                f"the webhook receiver at {self.host} could not be reached ({type(exc).__name__})",
                retryable=True,
            ) from None
        said = _said(answer)
        if 200 <= status < 300:
            reported = _json(answer)
            returned_id = _text(reported.get("partner_id")) or partner_id
            returned_name = _text(reported.get("partner_name"))
            if returned_id != partner_id:
                raise ProviderError(
                    f"the webhook receiver answered HTTP {status} but reports partner {returned_id}, "
                    f"not {partner_id}"
                )
            log.info(
                "webhook: %s applied partner %s to subscription %s (delivery %s)",
                self.host,
                partner_id,
                subscription_id,
                delivery,
            )
            return PartnerState(
                returned_id,
                returned_name,
                {"webhook": self.host, "delivery": delivery, "status": status},
                await name_check(self.db, partner_id, returned_name),
            )
        if status == 429 or status == 408 or status >= 500:
            raise ProviderError(
                f"the webhook receiver at {self.host} answered HTTP {status}" + (f": {said}" if said else ""),
                retryable=True,
                retry_after=wait,
            )
        if 300 <= status < 400:
            raise ProviderError(
                f"the webhook receiver at {self.host} redirected (HTTP {status}); "
                "set DPOR_WEBHOOK_URL to the final URL"
            )
        raise ProviderError(
            f"the webhook receiver refused the change (HTTP {status})" + (f": {said}" if said else "")
        )

    async def current(self, subscription_id: str) -> PartnerState:
        raise CannotRead("a webhook receiver is only told of changes; it is not asked what it holds")

    async def _change(self, subscription_id: str, partner_id: str) -> dict[str, Any]:
        """The JSON description of the change: what, where, from what, and which request asked for it."""
        async with self.db.read() as session:
            sub = await requests.subscription(session, subscription_id)
            req = await requests.applying_for(session, subscription_id, partner_id)
            previous = sub.partner_id if sub else None
            return {
                "type": EVENT,
                "sent_at": utcnow().isoformat(timespec="seconds"),
                "subscription": {"id": subscription_id, "name": sub.name if sub else None},
                "partner": {"id": partner_id, "name": await partner_name(session, partner_id)},
                "previous_partner": (
                    {"id": previous, "name": await partner_name(session, previous)} if previous else None
                ),
                "request": (
                    {"id": req.id, "reason": req.reason, "approved_at": _iso(req.decided_at)} if req else None
                ),
            }


def _iso(at: Any) -> str | None:
    return at.isoformat(timespec="seconds") if at is not None else None


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _said(answer: str) -> str:
    """The receiver's own words: its JSON `message` or `error`, else the start of its body."""
    reported = _json(answer)
    text = _text(reported.get("message")) or _text(reported.get("error")) or answer
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"
