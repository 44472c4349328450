"""The benchmark's anchor: a bare Bolt AsyncApp whose /dpor listener only acks, served like dpor-bot."""

from __future__ import annotations

import argparse
import asyncio
import logging

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient


def build(signing_secret: str, token: str, api_url: str, *, process_before_response: bool) -> web.Application:
    bolt = AsyncApp(
        client=AsyncWebClient(token=token, base_url=api_url),
        signing_secret=signing_secret,
        process_before_response=process_before_response,
    )

    @bolt.command("/dpor")
    async def dpor(ack: AsyncAck) -> None:
        await ack()

    async def events(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await bolt.async_dispatch(await to_bolt_request(request)))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/slack/events", events)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--signing-secret", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--process-before-response", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    app = build(
        args.signing_secret, args.token, args.api_url, process_before_response=args.process_before_response
    )
    web.run_app(
        app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=asyncio.new_event_loop()
    )


if __name__ == "__main__":
    main()
