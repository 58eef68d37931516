"""The one check of ``sqlite:///path`` URLs, shared by the configuration (which refuses
a bad ``DB_URL``/``MQ_URL`` at start) and the factories that open the file (pure)."""

from __future__ import annotations

from urllib.parse import urlsplit

from ironfunctions.errors import ConfigError


def sqlite_path(url: str, variable: str) -> str:
    """The file path of a ``sqlite:///path`` URL (``sqlite:////abs`` or ``sqlite:///rel``
    both give what follows ``sqlite://``). Raise ``ConfigError`` naming ``variable``."""
    parts = urlsplit(url)
    if parts.netloc or not parts.path or parts.path == "/":
        raise ConfigError(f"{variable}: expected sqlite:///path/to/file.db, got {url!r}")
    return parts.path
