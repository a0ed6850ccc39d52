"""In-process notice board of projection checkpoints, so a waiting query wakes at once.

Waiters register the sequence they need; an advance wakes exactly the waiters it satisfies,
so a thousand queries waiting on a busy projection cost nothing until their turn comes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class CheckpointBoard:
    def __init__(self) -> None:
        self._seqs: dict[str, int] = {}
        self._waiters: dict[str, list[tuple[int, int, asyncio.Future[None]]]] = {}
        self._order = itertools.count()  # breaks ties in the heap: futures do not compare
        # Per projection, how to tell its worker that a reader waits (``PullFeed.hurry``).
        self._hurry: dict[str, Callable[[], None]] = {}

    def on_wait(self, projection: str, hurry: Callable[[], None]) -> None:
        """``hurry`` is called whenever a reader starts waiting for ``projection``."""
        self._hurry[projection] = hurry

    def off_wait(self, projection: str, hurry: Callable[[], None]) -> None:
        if self._hurry.get(projection) == hurry:
            del self._hurry[projection]

    def has(self, projection: str) -> bool:
        """True once a worker in this process has reported for ``projection``."""
        return projection in self._seqs

    def forget(self, projection: str) -> None:
        """This process no longer runs the projection's worker (it lost or gave up its
        lease): readers go back to the store's checkpoint, which another process moves."""
        self._seqs.pop(projection, None)

    def get(self, projection: str) -> int:
        return self._seqs.get(projection, 0)

    def advance(self, projection: str, seq: int) -> None:
        self._seqs[projection] = seq
        waiters = self._waiters.get(projection)
        while waiters and waiters[0][0] <= seq:
            _, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(None)

    async def reached(self, projection: str, seq: int, timeout: float) -> bool:
        """Wait until the projection's checkpoint is at least ``seq``; False on timeout."""
        if self.get(projection) >= seq:
            return True
        hurry = self._hurry.get(projection)
        if hurry is not None:
            hurry()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters.setdefault(projection, []), (seq, next(self._order), future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return True
