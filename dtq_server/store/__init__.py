"""Durable task storage: the :class:`Store` interface and its SQLite implementation."""

from dtq_server.store.base import Store
from dtq_server.store.sqlite import SqliteStore

__all__ = ["SqliteStore", "Store"]
