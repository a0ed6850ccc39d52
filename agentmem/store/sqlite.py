"""The embedded store: one SQLite file in WAL mode, through aiosqlite.

One connection writes (projection batches are serialised by a lock, as SQLite allows one
writer anyway); a few more read, which WAL lets run beside the writer. The file is plain
SQLite 3, so LibSQL opens it as it is.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiosqlite

from agentmem.store import sql
from agentmem.store.port import Parked, ProjectionBatch, Row, Table

_SYSTEM_TABLES = [
    """CREATE TABLE IF NOT EXISTS checkpoints (
        projection TEXT NOT NULL PRIMARY KEY,
        seq BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS parked_events (
        projection TEXT NOT NULL,
        seq BIGINT NOT NULL,
        subject TEXT NOT NULL,
        error TEXT NOT NULL,
        parked_at BIGINT NOT NULL,
        PRIMARY KEY (projection, seq)
    )""",
]

READERS = 2


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = itertools.cycle(range(READERS))
        self._write_lock = asyncio.Lock()
        self._keys: dict[str, tuple[str, ...]] = {}

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is one transaction.
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA busy_timeout = 10000")
        await conn.execute("PRAGMA foreign_keys = OFF")
        return conn

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        await self._writer.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode is crash-safe for the database file; a lost last transaction is
        # re-applied from the log because its checkpoint was lost with it.
        await self._writer.execute("PRAGMA synchronous = NORMAL")
        for statement in _SYSTEM_TABLES:
            await self._writer.execute(statement)
        self._readers = [await self._connect() for _ in range(READERS)]

    async def close(self) -> None:
        for conn in [*self._readers, *([self._writer] if self._writer else [])]:
            await conn.close()
        self._readers, self._writer = [], None

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise RuntimeError("store is not open")
        return self._writer

    def _reader(self) -> aiosqlite.Connection:
        return self._readers[next(self._next_reader)]

    async def migrate(self, tables: list[Table]) -> None:
        async with self._write_lock:
            for table in tables:
                self._keys[table.name] = table.primary_key
                for statement in sql.create_table(table):
                    await self.writer.execute(statement)

    async def apply(self, batch: ProjectionBatch) -> list[Parked]:
        async with self._write_lock:
            conn = self.writer
            await conn.execute("BEGIN IMMEDIATE")
            try:
                parked = list(batch.parked)
                try:
                    ops = [op for _, _, item_ops in batch.items for op in item_ops]
                    for statement, params in sql.grouped(ops, self._keys):
                        await conn.executemany(statement, params)
                except sqlite3.DatabaseError:
                    # Some item is refused: start over one item at a time, each in a
                    # savepoint, and park the ones the database refuses.
                    await conn.execute("ROLLBACK")
                    await conn.execute("BEGIN IMMEDIATE")
                    parked += await self._apply_one_by_one(batch)
                await self._park(batch.projection, parked)
                await conn.execute(
                    "INSERT INTO checkpoints (projection, seq) VALUES (?, ?) "
                    "ON CONFLICT (projection) DO UPDATE SET seq = excluded.seq",
                    (batch.projection, batch.checkpoint),
                )
                await conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise
        return parked

    async def _apply_one_by_one(self, batch: ProjectionBatch) -> list[Parked]:
        parked = []
        for seq, subject, ops in batch.items:
            await self.writer.execute("SAVEPOINT item")
            try:
                for statement, params in sql.grouped(ops, self._keys):
                    await self.writer.executemany(statement, params)
            except sqlite3.DatabaseError as exc:
                await self.writer.execute("ROLLBACK TO item")
                parked.append(
                    Parked(batch.projection, seq, subject, f"{type(exc).__name__}: {exc}")
                )
            await self.writer.execute("RELEASE item")
        return parked

    async def _park(self, projection: str, parked: list[Parked]) -> None:
        if not parked:
            return
        now = time.time_ns() // 1_000_000
        await self.writer.executemany(
            "INSERT INTO parked_events (projection, seq, subject, error, parked_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (projection, seq) DO NOTHING",
            [(p.projection, p.seq, p.subject, p.error, now) for p in parked],
        )

    async def checkpoint(self, projection: str) -> int:
        row = await self.fetch_one("SELECT seq FROM checkpoints WHERE projection = ?", projection)
        return int(row["seq"]) if row else 0

    async def checkpoints(self) -> dict[str, int]:
        rows = await self.fetch_all("SELECT projection, seq FROM checkpoints")
        return {row["projection"]: int(row["seq"]) for row in rows}

    async def parked(self, projection: str | None = None) -> list[Parked]:
        query = "SELECT projection, seq, subject, error FROM parked_events"
        rows = await (
            self.fetch_all(f"{query} WHERE projection = ? ORDER BY seq", projection)
            if projection
            else self.fetch_all(f"{query} ORDER BY projection, seq")
        )
        return [Parked(r["projection"], r["seq"], r["subject"], r["error"]) for r in rows]

    async def reset(self, projection: str, tables: list[Table]) -> None:
        async with self._write_lock:
            conn = self.writer
            await conn.execute("BEGIN IMMEDIATE")
            for table in tables:
                await conn.execute(f"DELETE FROM {table.name}")
            await conn.execute("DELETE FROM checkpoints WHERE projection = ?", (projection,))
            await conn.execute("DELETE FROM parked_events WHERE projection = ?", (projection,))
            await conn.execute("COMMIT")

    async def dump(self, table: Table) -> list[tuple[Any, ...]]:
        order = ", ".join(table.primary_key)
        columns = ", ".join(table.column_names)
        rows = await self._reader().execute_fetchall(
            f"SELECT {columns} FROM {table.name} ORDER BY {order}"
        )
        return [tuple(row) for row in rows]

    async def fetch_one(self, query: str, *args: Any) -> Row | None:
        rows = await self._reader().execute_fetchall(query, args)
        for row in rows:
            return dict(row)
        return None

    async def fetch_all(self, query: str, *args: Any) -> list[Row]:
        rows = await self._reader().execute_fetchall(query, args)
        return [dict(row) for row in rows]
