"""Read-your-writes: make a query wait (bounded) until its projection has caught up.

A projection's checkpoint only moves on the events it reads, so ``after_seq`` may name an
event of another aggregate that this projection will never see. The projection has then
caught up when its consumer has nothing left to deliver or to ack: a batch is acked only
after its transaction committed.
"""

from __future__ import annotations

import asyncio
import time

import nats.js.errors
from nats.aio.client import Client as NATS

from agentmem import subjects
from agentmem.errors import InvalidError, UnavailableError
from agentmem.store import Store
from projections.board import CheckpointBoard
from projections.worker import durable_name

DEFAULT_WAIT_S = 5.0


class Freshness:
    def __init__(
        self,
        nc: NATS,
        store: Store,
        board: CheckpointBoard,
        stream: str = subjects.STREAM_NAME,
        max_wait: float = DEFAULT_WAIT_S,
    ) -> None:
        self.js = nc.jetstream()
        self.store = store
        self.board = board
        self.stream = stream
        self.max_wait = max_wait

    async def checkpoint(self, projection: str) -> int:
        known = self.board.get(projection)
        return known if known else await self.store.checkpoint(projection)

    async def _stream_last_seq(self) -> int:
        info = await self.js.stream_info(self.stream)
        return int(info.state.last_seq)

    async def _drained(self, projection: str) -> bool:
        try:
            info = await self.js.consumer_info(self.stream, durable_name(projection))
        except nats.js.errors.NotFoundError:
            return False
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    async def wait(self, projection: str, after_seq: int | None) -> int:
        """Return the checkpoint the answer will be read at, once it covers ``after_seq``."""
        seq = self.board.get(projection)
        if after_seq is None or seq >= after_seq:
            return seq if seq else await self.store.checkpoint(projection)
        deadline = time.monotonic() + self.max_wait
        while True:
            seq = max(self.board.get(projection), await self.store.checkpoint(projection))
            if seq >= after_seq:
                return seq
            if await self._drained(projection):
                last = await self._stream_last_seq()
                if after_seq > last:
                    raise InvalidError(
                        f"after_seq {after_seq} is past the end of the log (last seq {last})",
                        {"after_seq": after_seq, "last_seq": last},
                    )
                # Every event up to after_seq that this projection reads is applied.
                return after_seq
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UnavailableError(
                    f"projection {projection} has not reached seq {after_seq} "
                    f"within {self.max_wait:g}s (it is at {seq})",
                    {"projection": projection, "after_seq": after_seq, "checkpoint": seq},
                )
            # Wake on a local checkpoint change; poll for workers in other processes.
            await self.board.wait_change(min(remaining, 0.02))
            await asyncio.sleep(0)
