"""The projection store: a port (``Store``) and its adapters (SQLite and Postgres).

Projections write no SQL for their rows: they turn each commit into row operations
(``RowOp``), and a store applies a batch of them and the projection's checkpoint in one
transaction. Each projection module also offers the named reads its queries need (its read
model), written once over the port's ``fetch_one``, ``fetch_all`` and ``search``, whose
adapters each use their engine's strengths.
"""

from __future__ import annotations

from agentmem.config import StartupError
from agentmem.store.port import (
    Column,
    Condition,
    Copy,
    Delete,
    Dialect,
    FullText,
    Parked,
    ProjectionBatch,
    Row,
    RowOp,
    StaleBatch,
    Store,
    Table,
    Update,
    Upsert,
    VersionMismatch,
)

__all__ = [
    "Column",
    "Condition",
    "Copy",
    "Delete",
    "Dialect",
    "FullText",
    "Parked",
    "ProjectionBatch",
    "Row",
    "RowOp",
    "StaleBatch",
    "Store",
    "Table",
    "Update",
    "Upsert",
    "VersionMismatch",
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
