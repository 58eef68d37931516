"""Datastores, chosen by ``DB_URL``: ``memory://``, ``sqlite:///path``, ``postgres://...``.

The database ``DB_URL`` names holds two stores: the datastore (apps, routes: an
``IDatastore``) and the call store (call records and logs: an ``ICallStore``).
``stores_from_url`` builds both over one connection (or pool, or dict), so call writes
and route writes share its transactions' ordering; the datastore's ``start``/``close``
open and close what they share.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import attrs

from ironfunctions.calls.interface import ICallStore
from ironfunctions.datastore.interface import IDatastore
from ironfunctions.errors import ConfigError
from ironfunctions.storage.urls import sqlite_path


@attrs.frozen
class Stores:
    """What one ``DB_URL`` holds: the datastore, and the call store it starts and
    closes along with itself."""

    datastore: IDatastore
    calls: ICallStore


def stores_from_url(url: str, reactor: Any) -> Stores:
    """Build (not connect) the stores ``url`` names. Raise ``ConfigError`` naming DB_URL."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from ironfunctions.calls.memory import MemoryCallStore
        from ironfunctions.datastore.memory import MemoryDatastore

        return Stores(MemoryDatastore(), MemoryCallStore())
    if scheme == "sqlite":
        from ironfunctions.calls.sqlite import SqliteCallStore
        from ironfunctions.datastore.sqlite import SqliteDatastore, sqlite_database

        database = sqlite_database(sqlite_path(url, "DB_URL"), reactor)
        return Stores(SqliteDatastore(database), SqliteCallStore(database))
    if scheme in ("postgres", "postgresql"):
        from ironfunctions.calls.postgres import PostgresCallStore
        from ironfunctions.datastore.postgres import PostgresDatastore
        from ironfunctions.storage.postgres import PostgresDatabase

        pg = PostgresDatabase(url, reactor)
        return Stores(PostgresDatastore(pg), PostgresCallStore(pg))
    raise ConfigError(f"DB_URL: unsupported scheme {scheme!r} (use memory://, sqlite:/// or postgres://)")
