"""Test helpers that post Slack's requests to the bot (slash commands, clicks), signed like Slack's.

The request bodies and the signature are the product's own (sandbox.signing): the sandbox sends the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp

from sandbox.signing import (
    API_APP_ID,
    FORM_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    LEGACY_TOKEN,
    TEAM_DOMAIN,
    block_actions_body,
    block_suggestion_body,
    event_body,
    shortcut_body,
    sign,
    slash_command_body,
    view_submission_body,
)

__all__ = [
    "API_APP_ID",
    "FORM_CONTENT_TYPE",
    "LEGACY_TOKEN",
    "TEAM_DOMAIN",
    "SignedSlackClient",
    "block_actions_body",
    "block_suggestion_body",
    "event_body",
    "shortcut_body",
    "sign",
    "slash_command_body",
    "view_submission_body",
]


class SignedSlackClient:
    """Posts signed slash commands and clicks to the bot's `/slack/events` URL, as Slack does."""

    def __init__(self, signing_secret: str, session: aiohttp.ClientSession | None = None) -> None:
        self.signing_secret = signing_secret
        self._session = session
        self._owns_session = session is None

    async def post(
        self,
        url: str,
        body: str,
        *,
        content_type: str = FORM_CONTENT_TYPE,
        timestamp: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Sign and post `body`; `headers` are applied last (to tamper with a signature, say).
        Returns the status and the JSON answer, or its text when it is not JSON."""
        if self._session is None:
            self._session, self._owns_session = aiohttp.ClientSession(), True
        all_headers = {
            "Content-Type": content_type,
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            **sign(self.signing_secret, body, timestamp),
            **(headers or {}),
        }
        async with self._session.post(url, data=body.encode(), headers=all_headers) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()

    async def command(self, url: str, text: str, user_id: str, **kw: Any) -> tuple[int, Any]:
        """Post `/dpor text` from `user_id`; `kw` goes to slash_command_body."""
        return await self.post(url, slash_command_body(text, user_id=user_id, **kw))

    async def click(self, url: str, action_id: str, value: str, user_id: str, **kw: Any) -> tuple[int, Any]:
        """Post a click on button `action_id`; `kw` goes to block_actions_body (channel_id, message_ts...)."""
        return await self.post(url, block_actions_body(action_id, value, user_id=user_id, **kw))

    async def shortcut(self, url: str, callback_id: str, user_id: str, **kw: Any) -> tuple[int, Any]:
        """Post a global shortcut picked by `user_id`; `kw` goes to shortcut_body (trigger_id...)."""
        return await self.post(url, shortcut_body(callback_id, user_id=user_id, **kw))

    async def submit(
        self, url: str, view: Mapping[str, Any], values: Mapping[str, Any], user_id: str, **kw: Any
    ) -> tuple[int, Any]:
        """Post the submission of modal `view` with `values` as its state (Slack's state.values)."""
        return await self.post(url, view_submission_body(view, values, user_id=user_id, **kw))

    async def suggest(
        self, url: str, action_id: str, typed: str, user_id: str, view: Mapping[str, Any], **kw: Any
    ) -> tuple[int, Any]:
        """Post an external select's typeahead request; the answer holds `options` (or `option_groups`)."""
        return await self.post(url, block_suggestion_body(action_id, typed, user_id=user_id, view=view, **kw))

    async def event(self, url: str, event: Mapping[str, Any], **kw: Any) -> tuple[int, Any]:
        """Post an Events API delivery wrapping `event` (JSON, as Slack sends events)."""
        return await self.post(url, event_body(event, **kw), content_type=JSON_CONTENT_TYPE)

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
