"""A store whose query reads are timed: what the query handlers are given.

The reads (``fetch_one``, ``fetch_all``, ``search``) report their time to ``observe``
(``Metrics.store_read_seconds``); everything else goes to the wrapped store untimed. The
projection workers keep the bare store: their writes are timed per batch instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from agentmem.store.port import (
    Condition,
    Dialect,
    Migration,
    Parked,
    ProjectionBatch,
    Row,
    Store,
    Table,
)
from agentmem.store.versions import VersionState


class MeteredStore:
    def __init__(self, store: Store, observe: Callable[[float], None]) -> None:
        self.store = store
        self.observe = observe
        self.read_time_limit = store.read_time_limit
        self.dialect: Dialect = store.dialect

    async def fetch_one(self, sql: str, *args: Any) -> Row | None:
        started = time.perf_counter()
        try:
            return await self.store.fetch_one(sql, *args)
        finally:
            self.observe(time.perf_counter() - started)

    async def fetch_all(self, sql: str, *args: Any) -> list[Row]:
        started = time.perf_counter()
        try:
            return await self.store.fetch_all(sql, *args)
        finally:
            self.observe(time.perf_counter() - started)

    async def search(
        self,
        table: Table,
        text: str,
        where: Mapping[str, Any],
        limit: int,
        condition: Condition | None = None,
    ) -> list[Row]:
        started = time.perf_counter()
        try:
            return await self.store.search(table, text, where, limit, condition)
        finally:
            self.observe(time.perf_counter() - started)

    # Untimed: not a query's read.
    async def close(self) -> None:
        await self.store.close()

    async def migrate(
        self, migrations: Sequence[Migration], unchecked: Collection[str] = ()
    ) -> list[int]:
        return await self.store.migrate(migrations, unchecked)

    async def apply(self, batch: ProjectionBatch) -> list[Parked]:
        return await self.store.apply(batch)

    async def checkpoint(self, projection: str) -> int:
        return await self.store.checkpoint(projection)

    async def checkpoints(self) -> dict[str, int]:
        return await self.store.checkpoints()

    async def parked(self, projection: str | None = None) -> list[Parked]:
        return await self.store.parked(projection)

    async def reset(self, projection: str, tables: list[Table]) -> None:
        await self.store.reset(projection, tables)

    async def dump(self, table: Table) -> list[tuple[Any, ...]]:
        return await self.store.dump(table)

    async def versions(self) -> dict[str, VersionState]:
        return await self.store.versions()

    async def adopt(self, projection: str, version: int, variant: str = "") -> None:
        await self.store.adopt(projection, version, variant)

    async def begin_build(
        self, projection: str, tables: list[Table], version: int, variant: str = ""
    ) -> None:
        await self.store.begin_build(projection, tables, version, variant)

    async def switch(self, projection: str, tables: list[Table], version: int) -> int:
        return await self.store.switch(projection, tables, version)

    async def drop_build(self, projection: str, tables: list[Table]) -> None:
        await self.store.drop_build(projection, tables)

    async def columns(self, tables: list[str]) -> dict[str, set[str]]:
        return await self.store.columns(tables)
