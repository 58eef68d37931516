"""What the configuration checks of a ``postgres://`` ``DB_URL`` before libpq sees it
(pure, but for libpq's own parser).

The URL goes to libpq as it is, so every libpq parameter works in its query
(``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``, ``sslcrl``, ``connect_timeout``,
...), and libpq itself refuses a parameter it does not know. Checked here, so that a
typo stops the daemon at start with one line instead of leaving it retrying a
connection that can never succeed (or, worse, succeeding without the check the
operator asked for): that libpq can parse the URL, that ``sslmode`` is one libpq knows
(libpq only says so at connection time), and which files the URL names, for the
caller to check they can be read (an absent ``sslcert`` is silently skipped by libpq).
"""

from __future__ import annotations

import psycopg2
import psycopg2.extensions

from ironfunctions.errors import ConfigError

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
FILE_PARAMETERS = ("sslrootcert", "sslcert", "sslkey", "sslcrl")
# libpq 16+: trust the system's CAs, not a file; sslmode then defaults to verify-full
# and libpq refuses a weaker one.
SYSTEM_ROOT = "system"


def postgres_files(name: str, url: str) -> list[tuple[str, str]]:
    """``(parameter, path)`` of every file ``url`` names. Raise ``ConfigError`` naming
    ``name`` (never echoing the URL: it may hold a password) if libpq cannot parse
    it or ``sslmode`` is not one of libpq's."""
    try:
        params = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError as e:
        raise ConfigError(f"{name}: invalid postgres URL ({_first_line(e)})") from None
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in SSLMODES:
        raise ConfigError(f"{name}: sslmode must be one of {', '.join(SSLMODES)}, got {sslmode!r}")
    if params.get("sslrootcert") == SYSTEM_ROOT and sslmode not in (None, "verify-full"):
        raise ConfigError(f"{name}: sslrootcert=system needs sslmode=verify-full")
    return [(p, params[p]) for p in FILE_PARAMETERS
            if params.get(p) and not (p == "sslrootcert" and params[p] == SYSTEM_ROOT)]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().removeprefix("invalid dsn: ")
    return text.splitlines()[0] if text else type(error).__name__
