"""Slack listeners: parse a payload, call a bot service, answer. Wired by `register_listeners`."""

from slack_bolt.async_app import AsyncApp

from bot.context import BotContext
from handlers import actions, commands, home, modals, portal
from handlers.actions import finish_after_ack

__all__ = ["finish_after_ack", "register_listeners"]


def register_listeners(app: AsyncApp, ctx: BotContext) -> None:
    commands.register(app, ctx)
    actions.register(app, ctx)
    modals.register(app, ctx)
    home.register(app, ctx)
    portal.register(app, ctx)
