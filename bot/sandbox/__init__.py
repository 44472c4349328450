"""`dpor-bot sandbox`: the whole flow offline in a browser, with a local stand-in for Slack."""

from bot.sandbox.server import DEFAULT_PORT, Sandbox, run_sandbox

__all__ = ["DEFAULT_PORT", "Sandbox", "run_sandbox"]
