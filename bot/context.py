"""What the listeners need from the running bot: the database, the policy and a nudge for the worker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot.policy import Policy
from bot.settings import Settings
from storage.db import Database


@dataclass
class BotContext:
    settings: Settings
    db: Database
    policy: Policy
    # Called after a commit that wrote outbox rows, so delivery starts now rather than at the next poll.
    wake_worker: Callable[[], None] = lambda: None
