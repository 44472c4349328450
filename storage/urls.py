"""URLs that carry credentials: the database's and a receiver's. Read them strictly, show them masked."""

from __future__ import annotations

import re

from sqlalchemy.engine import make_url

DEFAULT_DATABASE_URL = "sqlite:///dpor-bot.db"
_SSLMODE = re.compile(r"(^|&)sslmode=")
_DATABASE_URL_HELP = "sqlite:///path/to/file.db or postgresql://user:password@host:5432/database"
AMBIGUOUS_USERINFO = (
    "a URL whose user name and password percent-encode `/` (%2F), `?` (%3F), `#` (%23) and `@` (%40): "
    "as written, part of the password would be read as the host"
)


def has_ambiguous_userinfo(url: str) -> bool:
    """Whether parsers could disagree on where the credentials end and the host begins.

    Python's urlsplit ends the host at the first `/`, `?` or `#`; SQLAlchemy and others end the password at
    the last `@`. A URL that has an `@` after one of those (or two `@` before the host) means one thing to
    one and another to the other, and the password's prefix can end up shown as the "host". An `@` in a
    path or query is legal but rare: written as %40 it is unambiguous, so such a URL is refused too.
    """
    _, sep, rest = url.partition("://")
    if not sep or rest.startswith("/"):  # no authority (sqlite:///path may hold any character)
        return False
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return rest.count("@", 0, end) > 1 or "@" in rest[end:]


def redact_url(url: str) -> str:
    """The URL with its password (or a lone user part, often a token), query and fragment masked.

    Never reveals a secret, however the URL is written: the credentials are taken to end at the last `@`,
    so an unencoded `/` or `?` in a password is masked with the rest of it.
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        return "***" if "@" in url else url
    if rest.startswith("/"):
        where, query = _split_query(rest)
        return f"{scheme}://{where}{query}"
    userinfo, at, hostpart = rest.rpartition("@")
    shown = ""
    if at:
        user, colon, _ = userinfo.partition(":")
        shown = f"{user}:***@" if colon and not any(c in user for c in "/?#@") else "***@"
    where, query = _split_query(hostpart)
    return f"{scheme}://{shown}{where}{query}"


def url_host(url: str) -> str:
    """The host (and port) a URL names, never its credentials, path or query: for logs and messages."""
    _, _, rest = redact_url(url).partition("://")
    authority = rest
    for c in "/?#":
        authority = authority.split(c, 1)[0]
    return authority.rpartition("@")[2]


def _split_query(text: str) -> tuple[str, str]:
    cut = min((i for i in (text.find("?"), text.find("#")) if i >= 0), default=-1)
    if cut < 0:
        return text, ""
    return text[:cut], f"{text[cut]}***"


# The query of a PostgreSQL URL is handed to the driver (asyncpg.connect) as keyword arguments, each a
# string: those it takes as one, and SQLAlchemy's own. Anything else (libpq's `application_name`,
# `connect_timeout`, `sslrootcert`; a number asyncpg compares as one) was a TypeError traceback from every
# command at its first connection: refused here in one line instead.
DRIVER_ARGUMENTS = (
    "ssl",
    "command_timeout",
    "prepared_statement_cache_size",
    "target_session_attrs",
    "user",
    "password",
    "host",
    "port",
    "database",
    "passfile",
    "krbsrvname",
    "gsslib",
)
# SQLAlchemy reads these itself, and takes them more than once: a unix socket's directory
# (`?host=/var/run/postgresql&port=5433`), or several servers (`?host=a:5432&host=b:5432`,
# `?host=a,b&port=5432,5433`), tried in turn.
_HOSTS = ("host", "port")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _check_driver_arguments(rest: str) -> None:
    expected = "expected a postgresql:// URL"
    for name, value in make_url(f"postgresql://{rest}").query.items():
        if name not in DRIVER_ARGUMENTS:
            raise ValueError(
                f"{expected} whose query holds only {', '.join(DRIVER_ARGUMENTS)} (or libpq's sslmode): "
                f"asyncpg, dpor-bot's driver, takes no `{name}`"
            )
        if not isinstance(value, str) and name not in _HOSTS:
            raise ValueError(f"{expected} that gives `{name}` once")
        if name == "port" and not _numbers(value):
            raise ValueError(f"{expected} whose port is a number (or numbers, separated by commas)")
        if name == "ssl" and value not in SSL_MODES:
            raise ValueError(f"{expected} whose ssl (or sslmode) is one of {', '.join(SSL_MODES)}")
        if name == "command_timeout" and not _positive(value):
            raise ValueError(f"{expected} whose command_timeout is a number of seconds over 0")
        if name == "prepared_statement_cache_size" and not (value.isascii() and value.isdigit()):
            raise ValueError(f"{expected} whose prepared_statement_cache_size is a whole number")


def _numbers(value: str | tuple[str, ...]) -> bool:
    parts = ",".join([value] if isinstance(value, str) else value).split(",")
    return all(part.isascii() and part.isdigit() for part in parts if part)


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def normalise_database_url(url: str) -> str:
    """Map the URLs operators write (sqlite:///x.db, postgres://, postgresql://) to async drivers."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep or not rest:
        raise ValueError(f"expected {_DATABASE_URL_HELP}")
    base = scheme.split("+", 1)[0].lower()
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    if base in ("postgres", "postgresql"):
        if has_ambiguous_userinfo(url):
            raise ValueError(f"expected {AMBIGUOUS_USERINFO}")
        host = rest.rsplit("@", 1)[-1]
        if not host or host.startswith("/"):
            raise ValueError(
                "expected a postgresql:// URL with a host, such as postgresql://user@host:5432/db"
            )
        try:
            port = make_url(f"postgresql://{rest}").port  # read as the engine will read it, at connection
        except ValueError:
            bad = True
        else:
            bad = port is not None and not 0 < port < 65536
        if bad:
            raise ValueError(
                "expected a postgresql:// URL whose host is followed by nothing or by `:` and a port number, "
                "such as postgresql://user@host:5432/db"
            )
        # libpq's `sslmode=require` (the form hosts and Azure Database for PostgreSQL give) is asyncpg's
        # `ssl=require`, with the same modes: passed on as written, asyncpg refuses the keyword.
        where, query_mark, query = rest.partition("?")
        if query_mark:
            rest = where + "?" + _SSLMODE.sub(r"\1ssl=", query)
            _check_driver_arguments(rest)
        return f"postgresql+asyncpg://{rest}"
    raise ValueError(f"expected {_DATABASE_URL_HELP}")
