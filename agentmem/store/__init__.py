"""The projection store: a port (``Store``) and its adapters (SQLite now, Postgres next).

Projections never write SQL. They turn each commit into row operations (``RowOp``); a store
applies a batch of them and the projection's checkpoint in one transaction. Queries ask the
store through named read methods, so each adapter can use its engine's strengths.
"""

from __future__ import annotations

from agentmem.config import StartupError
from agentmem.store.port import (
    Column,
    Delete,
    FullText,
    Parked,
    ProjectionBatch,
    RowOp,
    StaleBatch,
    Store,
    Table,
    Update,
    Upsert,
)

__all__ = [
    "Column",
    "Delete",
    "FullText",
    "Parked",
    "ProjectionBatch",
    "RowOp",
    "StaleBatch",
    "Store",
    "Table",
    "Update",
    "Upsert",
    "open_store",
]


async def open_store(url: str) -> Store:
    """``sqlite:///path/to.db``, a bare path, or ``postgresql://...`` (``postgres://``)."""
    if url.startswith(("postgres://", "postgresql://")):
        import asyncpg  # type: ignore[import-untyped]

        from agentmem.store.postgres import PostgresStore

        postgres = PostgresStore(url)
        try:
            await postgres.open()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StartupError(f"cannot open the Postgres store: {exc}") from exc
        return postgres
    from agentmem.store.sqlite import SQLiteStore

    path = url.removeprefix("sqlite:///").removeprefix("sqlite://")
    store = SQLiteStore(path)
    await store.open()
    return store
