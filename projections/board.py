"""In-process notice board of projection checkpoints, so a waiting query wakes at once."""

from __future__ import annotations

import asyncio
import contextlib


class CheckpointBoard:
    def __init__(self) -> None:
        self._seqs: dict[str, int] = {}
        self._changed = asyncio.Condition()

    def get(self, projection: str) -> int:
        return self._seqs.get(projection, 0)

    async def advance(self, projection: str, seq: int) -> None:
        async with self._changed:
            self._seqs[projection] = seq
            self._changed.notify_all()

    async def wait_change(self, timeout: float) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
