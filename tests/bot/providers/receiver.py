"""A webhook receiver as an operator would write one: it checks the signature, then answers from a script."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web
from aiohttp.test_utils import TestServer

SECRET = "webhook-signing-secret-not-for-logs"


@dataclass
class Delivery:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] | None = None
    delay: float = 0.0


class Receiver:
    """`async with Receiver(Reply(200)) as r:` then point DPOR_WEBHOOK_URL at `r.url`."""

    def __init__(self, *replies: Reply, secret: str = SECRET) -> None:
        self.replies = deque(replies)
        self.secret = secret.encode()
        self.deliveries: list[Delivery] = []
        self.forged = 0
        app = web.Application()
        app.router.add_post("/dpor", self._receive)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self.server.make_url("/dpor"))

    async def __aenter__(self) -> Self:
        await self.server.start_server()
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.server.close()

    def verified(self, request_headers: Any, raw: bytes) -> bool:
        """The README's recipe: HMAC-SHA256 over "{timestamp}.{body}", compared in constant time."""
        timestamp = request_headers.get("X-DPOR-Timestamp", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
            return False
        expected = "v1=" + hmac.new(self.secret, timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, request_headers.get("X-DPOR-Signature", ""))

    async def _receive(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if not self.verified(request.headers, raw):
            self.forged += 1
            return web.json_response({"message": "bad signature"}, status=401)
        self.deliveries.append(Delivery(dict(request.headers), json.loads(raw)))
        reply = self.replies.popleft() if self.replies else Reply(200)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)
