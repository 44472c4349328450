"""What the listeners need from the bot: the database, the policy, its metrics and a nudge for the worker."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.metrics import Metrics
from bot.policy import Policy
from bot.settings import Settings
from storage.db import Database


@dataclass
class BotContext:
    settings: Settings
    db: Database
    policy: Policy
    # What the listeners count (GET /metrics): the Bot's own registry.
    metrics: Metrics = field(default_factory=Metrics)
