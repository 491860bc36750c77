"""Event stores: SQLite (embedded default) and MongoDB, behind `base.EventStore`."""

from __future__ import annotations

from loader.stores.base import EventStore, open_store

__all__ = ["EventStore", "open_store"]
