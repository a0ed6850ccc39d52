"""A few Postgres connections kept for the queries' reads, apart from the pool.

asyncpg's pool costs a read about 25-35 µs of Python on this machine (the holder, the
connection proxy, the release's timeout and inactivity timer), a fifth of a 50-row
``memory.list`` read: ``SELECT 1`` p50 107 µs through the pool, 79 µs on a bare connection
and 82-90 µs through this lane (docs/performance.md, "The reads' own connections"). A read
takes an idle lane connection, or opens one while the lane has fewer than ``size``;
beyond that it goes through the pool, so a burst of reads is never refused for the lane.

A connection goes back to the lane only after a read that ended normally. After any
exception (an SQL error, a read cut at its time limit, a lost server, the task cancelled)
it leaves the lane and is closed in the background with ``close``, which first waits for
the server to acknowledge the cancellation asyncpg sent for a cut or cancelled read:
``terminate`` would drop that cancellation, and the query would go on running on the
server with nobody to read its answer. An idle connection whose session the server ended
is dropped before a read takes it, as the pool does. Reads only: no session setting, lock
or transaction outlives the ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]

# A read that needs a new connection waits this long for the server (asyncpg's own default
# is 60 s), then fails like any read of a server that does not answer.
CONNECT_TIMEOUT_S = 5.0
# How long a connection a read failed on may take to close (its cancellation acknowledged).
CLOSE_TIMEOUT_S = 10.0


class ReadLane:
    def __init__(self, dsn: str, size: int) -> None:
        self.dsn = dsn
        self.size = size
        self._idle: list[asyncpg.Connection] = []
        self._count = 0  # the lane's connections, idle or in use
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def connection(self, pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
        """A connection for one read: the lane's, or the pool's when the lane is busy."""
        while self._idle and self._idle[-1].is_closed():
            # Its server session ended while it waited (a restart, an operator's
            # pg_terminate_backend): the pool would open a new one without a failed read.
            self._count -= 1
            self._idle.pop().terminate()
        if self._idle:
            conn = self._idle.pop()
        elif self._count < self.size and not self._closed:
            self._count += 1
            try:
                conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT_S)
            except BaseException:
                self._count -= 1
                raise
        else:
            async with pool.acquire() as pooled:
                yield pooled
            return
        try:
            yield conn
        except BaseException:
            self._retire(conn)
            raise
        if self._closed:
            self._retire(conn)
        else:
            self._idle.append(conn)

    def _retire(self, conn: asyncpg.Connection) -> None:
        """Out of the lane, closed in the background (the reader does not wait for it)."""
        self._count -= 1
        task = asyncio.get_running_loop().create_task(_close(conn, CLOSE_TIMEOUT_S))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self, timeout: float) -> None:
        """Close the idle connections and those still closing now, the others as their
        reads end."""
        self._closed = True
        idle, self._idle = self._idle, []
        self._count -= len(idle)
        await asyncio.gather(*(_close(conn, timeout) for conn in idle), *self._closing)


async def _close(conn: asyncpg.Connection, timeout: float) -> None:
    """Close gracefully: any cancellation in flight acknowledged first (asyncpg's ``close``
    waits for it), then the session ended. A server that does not answer in time is cut
    off (asyncpg aborts the connection when its close fails)."""
    with contextlib.suppress(Exception):
        await conn.close(timeout=timeout)
