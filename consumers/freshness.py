"""Read-your-writes: make a query wait (bounded) until its projection has caught up.

Usually ``after_seq`` names an event the projection reads, and the wait ends when the
worker's checkpoint passes it: in-process, the checkpoint board wakes the query at once.
But ``after_seq`` may name an event of another aggregate, which this projection never sees;
then the projection has caught up when the log holds none of its events between its
checkpoint and ``after_seq`` (a direct get per filter subject, from the checkpoint on). The
durable consumer's acks are not asked: with leases moving between processes, an old
holder's late ack could make it look drained while the tables lag. That check costs
JetStream calls, so it waits a few milliseconds first and is shared by all queries waiting
at once.

In a process that does not run the projection's worker (no projections role, or another
process holds the projection's lease) there is no board to wake it: the query polls the
store's checkpoint, which the active worker commits, every 10 ms (one read shared by all
queries waiting on that projection), besides the same check of the log. A worker paces its
batches under a steady trickle (``PullFeed``): a query that waits tells it so, through the
board in-process, else on ``agentmem.hurry.<projection>``, so that it applies what it holds
at once.
"""

from __future__ import annotations

import asyncio
import time

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from agentmem import subjects
from agentmem.coalesce import FreshCall
from agentmem.errors import UnavailableError
from agentmem.eventlog import EventLog
from agentmem.projections import BY_NAME
from agentmem.projections.board import CheckpointBoard
from agentmem.store import Store
from agentmem.validation import invalid

DEFAULT_WAIT_S = 5.0
POLL_S = 0.01  # how often a query re-reads a checkpoint it cannot be woken for
GRACE_S = 0.005  # how long to wait for the worker before asking the log
RECHECK_S = 0.05  # how long to wait for the worker between two questions to the log


class Freshness:
    def __init__(
        self,
        nc: NATS,
        store: Store,
        board: CheckpointBoard,
        stream: str = subjects.STREAM_NAME,
        max_wait: float = DEFAULT_WAIT_S,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.store = store
        self.board = board
        self.stream = stream
        self.max_wait = max_wait
        self.log = EventLog(nc, stream)
        self._log_checks: dict[str, FreshCall[tuple[int | None, int]]] = {}
        self._store_reads: dict[str, FreshCall[int]] = {}

    async def checkpoint(self, projection: str) -> int:
        """The projection's checkpoint: from the board when its worker runs here, else from
        the store (whichever process runs the worker commits it there)."""
        if self.board.has(projection):
            return self.board.get(projection)
        return await self.store.checkpoint(projection)

    async def _log_position(self, projection: str) -> tuple[int | None, int]:
        """(the first sequence after the projection's checkpoint that it reads, or None when
        it has applied every event of the log it reads; the log's last sequence).

        Asked of the log and the checkpoint alone, never of the durable consumer's acks: an
        old lease holder's late ack (or the new holder's, before its commit) may leave the
        consumer with nothing pending while the tables lag; the checkpoint is committed with
        the rows. One direct get per filter subject, and the stream's state."""
        checkpoint = await self.checkpoint(projection)

        try:
            known = BY_NAME.get(projection)
            # A projection this code does not know: any later event may be its own.
            patterns = known.filter_subjects if known else [f"{subjects.EVENT_PREFIX}.>"]
            # Asked of the stream's leader: a replica that has not applied an acknowledged
            # write yet would say the projection had caught up (a fault storm saw a
            # memory.delete_scope miss a memory added just before it).
            heads = await asyncio.gather(
                *(self.log.next_head(p, checkpoint, leader=True) for p in patterns)
            )
            stream = await self.js.stream_info(self.stream)
        except nats.errors.Error as exc:  # JetStream API errors are among them
            # A cluster without quorum, or a node restarting: the client may retry.
            raise UnavailableError(f"the event log did not answer: {exc!r}") from exc
        pending = min((head.seq for head in heads if head is not None), default=None)
        return pending, int(stream.state.last_seq)

    def _stored(self, projection: str) -> FreshCall[int]:
        """The store's checkpoint, one read shared by every query waiting on it."""
        read = self._store_reads.get(projection)
        if read is None:
            read = self._store_reads[projection] = FreshCall(
                lambda: self.store.checkpoint(projection)
            )
        return read

    async def wait(self, projection: str, after_seq: int | None) -> int:
        """Return the checkpoint the answer will be read at, once it covers ``after_seq``."""
        seq = await self.checkpoint(projection)
        if after_seq is None or seq >= after_seq:
            return seq
        deadline = time.monotonic() + self.max_wait
        # Usually the event is this projection's own and lands within milliseconds.
        if self.board.has(projection) and await self.board.reached(projection, after_seq, GRACE_S):
            return self.board.get(projection)
        check = self._log_checks.get(projection)
        if check is None:
            check = self._log_checks[projection] = FreshCall(lambda: self._log_position(projection))
        while True:
            pending, last = await check()
            if after_seq > last:
                raise invalid(
                    f"after_seq {after_seq} is past the end of the log (last seq {last})",
                    "$.after_seq",
                    "out_of_range",
                    after_seq=after_seq,
                    last_seq=last,
                )
            if pending is None or pending > after_seq:
                # Every event up to after_seq that this projection reads is applied.
                return after_seq
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seq = await self.checkpoint(projection)
                raise UnavailableError(
                    f"projection {projection} has not reached seq {after_seq} "
                    f"within {self.max_wait:g}s (it is at {seq})",
                    {"projection": projection, "after_seq": after_seq, "checkpoint": seq},
                )
            # Asked each round: this process may take over the projection, or lose it.
            if self.board.has(projection):
                if await self.board.reached(projection, after_seq, min(remaining, RECHECK_S)):
                    return self.board.get(projection)
                continue
            # No worker here (a process without the projections role, or one that does not
            # hold the projection's lease): another process moves the store's checkpoint.
            await self.nc.publish(subjects.hurry(projection))
            until = time.monotonic() + min(remaining, RECHECK_S)
            while time.monotonic() < until:
                await asyncio.sleep(POLL_S)
                seq = await self._stored(projection)()
                if seq >= after_seq:
                    return seq
