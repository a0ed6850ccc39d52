"""The expiry sweep: a memory whose ``expires_at`` has passed gets one ``memory.expired``.

Reads leave an expired memory out from its ``expires_at`` on (a matter of time, checked at
read); the sweep is what makes its content leave the tables: the projection empties the
memory's row when it applies the event. Every process that serves commands sweeps every
``AGENTMEM_EXPIRY_SWEEP_S`` seconds (0: never). The decision is made in the log, so that
several processes sweep safely at once: each reads the memory's subject and writes at the
version it read (expected sequence), under a command id made from the memory and its
``expires_at``. A second sweeper that read the same version fails its write (and finds the
memory expired on the next sweep); one that read it after finds nothing to do; the same
command id stored twice within the stream's duplicate window is one commit. A change made
meanwhile (an update that gave a later ``expires_at``) makes the sweep's write fail too,
and the next sweep decides on what the memory is then.

The projection tells the sweep which memories to look at (``expires_at`` passed, not
``expired`` in its row); the log decides. A projection that lags only delays the sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from agentmem.consumers.aggregates import AggregateCache
from agentmem.domain import memories
from agentmem.eventlog import CommitMeta, DuplicateCommand, EventLog, StaleVersion
from agentmem.projections import memories as reads
from agentmem.store import Store

log = structlog.get_logger("agentmem.expiry")

PRINCIPAL = "agentmem:expiry-sweep"
COMMIT_TYPE = "memory.expire"
SWEEP_PAGE = 500  # memories looked at per round; a sweep goes on while rounds fill up
CONCURRENCY = 32


def command_id(memory_id: str, expires_at: int) -> str:
    return f"expire:{memory_id}:{expires_at}"


class ExpirySweeper:
    def __init__(self, log_: EventLog, cache: AggregateCache, store: Store) -> None:
        self.log = log_
        self.cache = cache
        self.store = store

    async def expire_one(self, org_id: str, memory_id: str, now: int) -> bool:
        """Write ``memory.expired`` for one memory if the log says it is due; True when
        this call wrote it."""
        subject = memories.subject(org_id, memory_id)
        loaded = await self.cache.load(subject, memories.evolve, refresh=True)
        writes = memories.expire(loaded, now)
        if not writes:
            return False
        memory = loaded.state
        assert isinstance(memory, memories.Memory)
        assert memory.expires_at is not None
        meta = CommitMeta(
            command_id=command_id(memory_id, memory.expires_at),
            commit_type=COMMIT_TYPE,
            principal=PRINCIPAL,
            time_ms=now,
        )
        try:
            appended = await self.log.append(writes, meta)
        except (StaleVersion, DuplicateCommand):
            return False  # another sweeper or a change went first: the next sweep looks again
        if appended.duplicate:
            return False
        self.cache.record(writes, appended, meta.command_id)
        return True

    async def sweep(self, now: int | None = None) -> int:
        """Expire every memory that is due at ``now`` (default: the clock); how many this
        sweep expired."""
        at = time.time_ns() // 1_000_000 if now is None else now
        slots = asyncio.Semaphore(CONCURRENCY)
        expired, seen = 0, set[str]()

        async def one(org_id: str, memory_id: str) -> bool:
            async with slots:
                return await self.expire_one(org_id, memory_id, at)

        while True:
            due = await reads.expired_memory_ids(self.store, at, SWEEP_PAGE)
            fresh = [(o, m) for o, m in due if m not in seen]
            if not fresh:
                return expired
            seen.update(m for _, m in fresh)
            results = await asyncio.gather(*(one(o, m) for o, m in fresh))
            expired += sum(results)
            if len(due) < SWEEP_PAGE:
                return expired

    async def run(self, every_s: float, stopped: asyncio.Event) -> None:
        """Sweep every ``every_s`` seconds until ``stopped``; a failed sweep is logged and
        the next one tries again."""
        while not stopped.is_set():
            try:
                count = await self.sweep()
                if count:
                    log.info("memories expired", count=count)
            except Exception as exc:  # the sweep must outlive a store or log hiccup
                log.warning("expiry sweep failed; trying again later", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), every_s)
