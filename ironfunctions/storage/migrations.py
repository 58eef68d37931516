"""Versioned schema migrations shipped in the package (``schema/<dialect>/NNNN_name.sql``).

Pure planning: which files to apply given the version a database is at. Each provider
applies them in its own transaction and records the version it reached.
"""

from __future__ import annotations

from importlib import resources

import attrs


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    """Every migration of ``dialect``, in version order."""
    folder = resources.files("ironfunctions.storage") / "schema" / dialect
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest[: -len(".sql")], entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


def pending(dialect: str, current_version: int) -> list[Migration]:
    """The migrations a database at ``current_version`` still needs, in order."""
    return [m for m in migrations(dialect) if m.version > current_version]
