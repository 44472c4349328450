"""Read-only questions to Slack for `dpor-bot doctor`: whose token the bot holds, and is it in a channel.

Nothing is posted or changed: `auth.test` and `conversations.info` (which needs channels:read, and
groups:read for private channels). Each answer is a verdict and one sentence for the operator.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

TIMEOUT = 10.0

_REFUSALS = {
    "channel_not_found": "Slack knows no such channel, or it is private and the bot is not in it",
    "missing_scope": (
        "the token may not read channels: add the channels:read and groups:read scopes "
        "(manifest.yaml) and reinstall the app"
    ),
}


@dataclass(frozen=True)
class Answer:
    ok: bool
    detail: str


class _NoAnswer(Exception):
    """No data: Slack's error code (`error`), or a sentence saying why Slack could not be asked."""

    def __init__(self, sentence: str, error: str | None = None) -> None:
        super().__init__(sentence)
        self.sentence = sentence
        self.error = error


class SlackProbe:
    """Asks Slack's Web API at `api_url` (SLACK_API_URL) with the bot's token."""

    def __init__(self, token: str, api_url: str, *, timeout: float = TIMEOUT) -> None:
        self.client = AsyncWebClient(token=token, base_url=api_url, timeout=int(timeout))
        self.host = urlsplit(api_url).hostname
        self.timeout = timeout
        self.bot_name: str | None = None

    async def _call(self, method: str, **params: str) -> dict:
        try:
            async with asyncio.timeout(self.timeout):
                response = await self.client.api_call(method, http_verb="GET", params=params)
        except TimeoutError:
            raise _NoAnswer(
                f"Slack ({self.host}) did not answer {method} within {self.timeout:g} s"
            ) from None
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "unknown_error")
            raise _NoAnswer(f"{method}: {error}", error) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _NoAnswer(f"cannot reach Slack ({self.host}) for {method}: {type(exc).__name__}") from None
        return dict(response.data) if isinstance(response.data, dict) else {}

    async def token(self) -> Answer:
        """`auth.test`: the token works, and whose it is (a revoked or wrong token fails)."""
        try:
            found = await self._call("auth.test")
        except _NoAnswer as exc:
            refused = f"Slack refused SLACK_BOT_TOKEN ({exc.sentence})"
            return Answer(False, refused if exc.error else exc.sentence)
        self.bot_name = found.get("user")
        return Answer(
            True,
            f"the bot @{found.get('user')} ({found.get('user_id')}) "
            f"in workspace {found.get('team')} ({found.get('team_id')})",
        )

    async def membership(self, channel: str) -> Answer:
        """`conversations.info`: the channel exists, is not archived, and the bot is in it."""
        try:
            found = await self._call("conversations.info", channel=channel)
        except _NoAnswer as exc:
            return Answer(False, f"{channel}: {_REFUSALS.get(exc.error or '', exc.sentence)}")
        info = found.get("channel") or {}
        label = f"#{info['name']} ({channel})" if info.get("name") else channel
        if info.get("is_archived"):
            return Answer(False, f"{label} is archived")
        if info.get("is_im"):
            return Answer(True, f"{label}: a direct message")
        if not info.get("is_member"):
            invite = f"/invite @{self.bot_name}" if self.bot_name else "/invite the bot"
            return Answer(False, f"{label}: the bot is not a member (run `{invite}` in the channel)")
        return Answer(True, f"{label}: the bot is a member")
