"""App assembly: the Bolt app, its HTTP server and Socket Mode runner, and the outbox worker."""

from __future__ import annotations

from bot.settings import Settings


async def run_http(settings: Settings, port: int) -> None:
    raise NotImplementedError


async def run_socket(settings: Settings) -> None:
    raise NotImplementedError
