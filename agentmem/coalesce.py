"""Share one in-flight call among many callers, without ever answering with stale data.

A caller joins a call only if that call *started after* the caller asked; otherwise it waits
for the next one, which starts as soon as the running one ends. Under load that turns N
identical lookups per moment into one or two, and each answer is still at least as fresh as
the question: what a read-your-writes check or a revocation check needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FreshCall(Generic[T]):
    def __init__(self, call: Callable[[], Awaitable[T]]) -> None:
        self._call = call
        self._running: asyncio.Future[T] | None = None
        self._queued: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._call())
            return await asyncio.shield(self._running)
        if self._queued is None:
            self._queued = asyncio.ensure_future(self._after(self._running))
        return await asyncio.shield(self._queued)

    async def _after(self, running: asyncio.Future[T]) -> T:
        await asyncio.wait([running])
        # From here on this call is the running one; later callers queue behind it.
        self._running, self._queued = self._queued, None
        return await self._call()
