"""The audit chain's key: where it comes from, the key file of an embedded database, and re-keying.

The key is DPOR_AUDIT_KEY when set. Otherwise an SQLite database keeps it in a file beside itself
(`dpor-bot.db.audit-key`, mode 0600), created on the first start; PostgreSQL has no "beside" (the bot's
hosts come and go, and every one of them needs the same key), so there DPOR_AUDIT_KEY is required.

A chain written before keys (every event a plain SHA-256) is verified, then re-keyed: every hash is
recomputed with the key and an `audit.rekeyed` event records it. That happens once, at the start that
creates the key file, or by `dpor-bot audit rekey`: a key that already existed while the chain was
unkeyed means the chain may have been rewritten without it, and is never re-keyed behind the operator's
back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from bot import audit, checkpoints
from bot.errors import SYSTEM_ACTOR, Refusal
from bot.settings import AUDIT_KEY_HELP, AUDIT_KEY_MIN, ConfigError, Settings
from storage import audit as chain
from storage.db import Database

log = logging.getLogger("dpor.audit")

VARIABLE = "DPOR_AUDIT_KEY"
SUFFIX = ".audit-key"
_BATCH = 2000


@dataclass(frozen=True)
class AuditKey:
    secret: bytes
    source: str  # DPOR_AUDIT_KEY, or the key file's path
    created: bool = False  # the key file was made just now: no event can have been keyed with it yet

    @property
    def id(self) -> str:
        return chain.key_id(self.secret)


def key_file(database_url: str) -> Path | None:
    """Where an SQLite database's key lives: beside it (None for PostgreSQL and in-memory databases)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    path = url.database or ""
    if path in ("", ":memory:") or path.startswith("file:"):
        return None
    return Path(path + SUFFIX)


def _checked(text: str, source: str) -> bytes:
    text = text.strip()
    if len(text) < AUDIT_KEY_MIN:
        raise ConfigError(f"{source}: expected {AUDIT_KEY_HELP}")
    return text.encode()


def _read(path: Path) -> AuditKey | None:
    try:
        text = path.read_text(encoding="utf-8")
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the audit key file {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if mode & 0o077:
        log.warning("the audit key file %s can be read by others (mode %04o): chmod 600 it", path, mode)
    return AuditKey(_checked(text, f"the audit key file {path}"), str(path))


def _create(path: Path) -> AuditKey:
    """A new random key in `path`, mode 0600, written whole before it appears under its name (another
    process starting at the same moment reads the same key, never half of one)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, (secrets.token_hex(32) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
            created = True
        except FileExistsError:
            created = False  # another process made it first: theirs is the key
        finally:
            temporary.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot create the audit key file {path}: {exc.strerror or exc}") from None
    found = _read(path)
    assert found is not None
    if created:
        log.warning("created the audit key file %s: back it up (README: Audit log)", path)
    return AuditKey(found.secret, found.source, created)


def resolve(settings: Settings, database_url: str, *, create: bool) -> AuditKey | str:
    """The key, or why there is none. `create`: make the key file when it is missing."""
    if settings.audit_key is not None:
        return AuditKey(_checked(settings.audit_key.get_secret_value(), VARIABLE), VARIABLE)
    path = key_file(database_url)
    if path is None:
        if make_url(database_url).get_backend_name() == "sqlite":  # in memory: the key dies with the data
            return AuditKey(secrets.token_hex(32).encode(), "memory", True)
        return (
            f"{VARIABLE} must be set: on PostgreSQL the audit log is keyed with it and the bot keeps no "
            "key file (README: Audit log)"
        )
    found = _read(path)
    if found is not None:
        return found
    if not create:
        return (
            f"the audit log is keyed but its key is missing: {VARIABLE} is not set and {path} does not "
            "exist; restore the key file from its backup (README: Audit log)"
        )
    return _create(path)


async def prepare(db: Database, settings: Settings, *, required: bool = True) -> str | None:
    """Load the key into `db.audit_key` (and re-key a chain written before keys, when this start created
    the key). Returns why there is no usable key, and raises it as a ConfigError when `required`."""
    async with db.read() as session:
        first, tip = await chain.first(session), await chain.tip(session)
    keyed = tip is not None and tip.key_id is not None
    found = await asyncio.to_thread(resolve, settings, db.url, create=not keyed)
    problem = found if isinstance(found, str) else None
    if isinstance(found, AuditKey):
        if keyed and tip is not None and tip.key_id != found.id:
            problem = (
                f"{found.source} is not the audit log's key: its newest event is keyed with key id "
                f"{tip.key_id}, this key's id is {found.id} (README: Audit log)"
            )
        elif first is not None and first.key_id is None and not found.created:
            problem = (
                "the audit log holds events that are not keyed: run `dpor-bot audit rekey` once after the "
                "upgrade; if it was re-keyed before, it has been rewritten without the key since: do not "
                "re-key, see `dpor-bot audit verify`"
            )
        elif first is not None and first.key_id is None:
            try:
                await rekey(db, found, settings.audit_channel)
            except Refusal as exc:
                problem = exc.message
    if problem is None and isinstance(found, AuditKey):
        db.audit_key = found.secret
        return None
    db.audit_key = None
    if required:
        raise ConfigError(problem)
    return problem


async def rekey_unkeyed(db: Database, settings: Settings) -> int:
    """`dpor-bot audit rekey`: re-key a chain written before keys with the key of the settings (on SQLite
    made now when there is none yet); the number of events re-keyed, 0 when it was keyed already."""
    async with db.read() as session:
        tip = await chain.tip(session)
    found = await asyncio.to_thread(resolve, settings, db.url, create=tip is None or tip.key_id is None)
    if isinstance(found, str):
        raise ConfigError(found)
    count = await rekey(db, found, settings.audit_channel)
    await prepare(db, settings)  # keyed now: with this key? (else one line why not)
    return count


async def rekey(db: Database, key: AuditKey, channel: str | None) -> int:
    """Verify the chain as written (plain SHA-256, or this key), recompute every hash with the key, record
    `audit.rekeyed` and publish the new head. Refuses, changing nothing, a chain that does not verify.
    Returns how many events were re-keyed (0: the chain was keyed already)."""
    kid = key.id
    keys: dict[str | None, bytes | None] = {None: None, kid: key.secret}
    async with db.write() as session:
        first = await chain.first(session)
        if first is None or first.key_id is not None:
            return 0
        old_prev = new_prev = audit.GENESIS
        after, count = 0, 0
        while rows := await chain.rows_after(session, after, _BATCH):
            hashes: list[dict[str, Any]] = []
            for row in rows:
                problem = audit.check(row, old_prev, after + 1, keys)
                if problem is not None:
                    raise Refusal(
                        f"the audit log does not verify at event {row.seq}: {problem}; it was not re-keyed "
                        "(restore the database from a backup taken before the edit)"
                    )
                digest = chain.event_hash(row, new_prev, key.secret)
                hashes.append({"seq": row.seq, "prev_hash": new_prev, "hash": digest, "key_id": kid})
                old_prev, new_prev, after = row.hash, digest, row.seq
            await chain.rehash(session, hashes)
            count += len(rows)
        entry = audit.Entry(
            actor=SYSTEM_ACTOR,
            action="audit.rekeyed",
            data={"events": count, "key_id": kid, "unkeyed_head": old_prev},
        )
        await chain.append(session, [entry], key.secret)
        point = await checkpoints.take(session, channel, checkpoints.REKEY, key.secret)
    log.warning("re-keyed the audit log: %d events verified and keyed with key id %s", count, kid)
    checkpoints.published(point)
    return count
