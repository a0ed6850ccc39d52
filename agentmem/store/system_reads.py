"""Reads of the system tables every store keeps: checkpoints, parked events, versions.

Written once in portable SQL on top of an adapter's ``fetch_one``/``fetch_all``.
"""

from __future__ import annotations

from typing import Any

from agentmem.store.port import Parked, Row
from agentmem.store.versions import VERSIONS, VersionState, versions_from


class SystemReads:
    async def fetch_one(self, query: str, *args: Any) -> Row | None:
        raise NotImplementedError

    async def fetch_all(self, query: str, *args: Any) -> list[Row]:
        raise NotImplementedError

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

    async def versions(self) -> dict[str, VersionState]:
        return versions_from(await self.fetch_all(VERSIONS))
