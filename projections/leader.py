"""Run a projection's worker in this process only while this process holds its lease.

Every process with the projections role runs one ``ProjectionLeader`` per projection. About
once a second each asks its lease (``Leases.hold``): the one that holds it runs the worker,
the others wait. The leases are spread: a process asks only while it holds less than its
fair share (the projections over the processes that share the leases, rounded up), and a
process over its share hands one lease over per round (its worker stopped first, so
there are never two holders), which a process with room takes on its next round.

When the holder dies its lease frees, the next process to ask takes it, and
its new worker starts from the store's checkpoint (the worker always re-creates its durable
consumer at checkpoint + 1). When a holder finds its lease lost, it stops its worker at once;
a batch that worker still commits late is refused by the store (``port.fence``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from agentmem.projections.board import CheckpointBoard
from agentmem.store import StaleBatch
from agentmem.store.leases import Leases, fair_share

log = structlog.get_logger(__name__)

# How often a process asks for (or confirms) its lease: the bound on a takeover's wait.
POLL_S = 1.0
# A worker that failed starts again from its checkpoint after this long.
RETRY_S = 1.0
# How long a worker that lost its lease may take to finish its batch before it is cancelled.
STOP_GRACE_S = 2.0
# After losing its lease (or handing it over) a process waits this many rounds before it
# asks again, so that a standby (which asks every round) takes over rather than itself.
STAND_BACK_ROUNDS = 3
# A process at its fair share still takes a lease that nobody held for this many rounds.
ORPHAN_ROUNDS = 2
# A worker that failed this many times in a row, none of its runs lasting ``STEADY_S``, is
# reported as failing (``sys.health`` is then not ready, and says why): it restarts all the
# same. Not "applying nothing in between": an ingestion partition stuck on one command
# applies the others fetched with it before it fails, run after run.
FAILING_AFTER = 3
STEADY_S = 5.0


class LeasedWorker(Protocol):
    """What a leader runs while it holds its lease: a projection's worker, a projection
    version's ``Build`` (``projections/build.py``), or an ingestion partition's
    (``consumers/ingest.py``)."""

    last_error: str | None

    async def run(self) -> None: ...

    def stop(self) -> None: ...


def _count_projections() -> int:
    from agentmem.projections import ALL  # the package imports this module while it looks

    return len(ALL)


class ProjectionLeader:
    def __init__(
        self,
        name: str,
        make_worker: Callable[[], LeasedWorker],
        leases: Leases,
        board: CheckpointBoard,
        poll: float = POLL_S,
        total: int | None = None,
        may_run: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.name = name
        # How many projections share the leases: a fair share is counted from it.
        self.total = total if total is not None else _count_projections()
        self.make_worker = make_worker
        self.leases = leases
        self.board = board
        self.poll = poll
        # Asked every round before the lease: False while this process's code may not run
        # the projection (its version is not the store's live one; a build is done): the
        # leader then holds no lease and runs nothing (``agentmem.projections.build``).
        self.may_run = may_run
        self.standing_aside = False
        self.worker: LeasedWorker | None = None
        self.last_error: str | None = None
        self.active_since: float | None = None  # time.time() when this process took over
        self._holding = False
        # Set once the lease has been asked for the first time (and the worker started if
        # it was granted): a starting service waits for it before it says it is ready.
        self.first_look = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._failed_at = 0.0
        self._started_at = 0.0
        self.failures = 0  # in a row, none of the runs between them steady
        self._stand_back_until = 0.0
        self._seen_free = 0

    @property
    def failing(self) -> str | None:
        """The last error, while the worker keeps failing (``FAILING_AFTER`` times in a row,
        no run lasting ``STEADY_S``); None while it works."""
        return self.last_error if self.failures >= FAILING_AFTER else None

    @property
    def active(self) -> bool:
        """True while this process holds the lease, so runs the projection's worker (or is
        about to start it again after a failure)."""
        return self._holding

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if not await self._allowed():
                    if self._holding:
                        await self._stop_worker()
                        await self.leases.release(self.name)
                elif not self._holding and time.monotonic() < self._stand_back_until:
                    pass
                elif await self._ask():
                    if not self._holding:
                        self._holding = True
                        self.active_since = time.time()
                        log.info(
                            "projection lease taken; this process is active", projection=self.name
                        )
                    if await self._over_share():
                        await self._hand_over()
                    else:
                        self._note_progress()
                        self._start_if_idle()
                elif self._holding:
                    log.warning("projection lease lost; stopping its worker", projection=self.name)
                    self._stand_back_until = time.monotonic() + STAND_BACK_ROUNDS * self.poll
                    await self._stop_worker()
                self.first_look.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.poll)
        finally:
            self.first_look.set()
            await self._stop_worker()
            with contextlib.suppress(Exception):
                await self.leases.release(self.name)

    async def _allowed(self) -> bool:
        """``may_run``, or no change when it cannot be asked (the store is away: the worker
        fails and restarts on its own meanwhile)."""
        if self.may_run is None:
            return True
        try:
            allowed = await self.may_run()
        except Exception as exc:
            log.warning(
                "could not ask whether to run the projection", projection=self.name, error=repr(exc)
            )
            return not self.standing_aside
        if allowed == self.standing_aside:
            self.standing_aside = not allowed
            log.info(
                "projection runs here again" if allowed else "projection stands aside here",
                projection=self.name,
            )
        return allowed

    async def _ask(self) -> bool:
        """Confirm the lease, or take it: while this process holds less than its fair share
        of the leases, or when nobody has held it for ``ORPHAN_ROUNDS`` rounds (the count
        of members may lag a process that joined or died: no lease may stay without a
        worker for that). True while this process holds it."""
        if self._holding:
            return await self.leases.hold(self.name)
        share = fair_share(self.total, await self.leases.members())
        if share is None or len(self.leases.held) < share:
            self._seen_free = 0
            return await self.leases.hold(self.name, within=share)
        self._seen_free = 0 if await self.leases.taken(self.name) else self._seen_free + 1
        return self._seen_free >= ORPHAN_ROUNDS and await self.leases.hold(self.name)

    async def _over_share(self) -> bool:
        """Whether this process holds more than its fair share and this lease is the one it
        gives up this round (one per process per round, the last in name order)."""
        share = fair_share(self.total, await self.leases.members())
        held = self.leases.held
        return share is not None and len(held) > share and self.name == max(held)

    async def _hand_over(self) -> None:
        """Rebalancing: stop the worker (its batch in hand commits or is fenced), then free
        the lease for a process with room, which takes it on its next round; stand back
        meanwhile, as after a loss."""
        log.info("projection lease handed over to spread the load", projection=self.name)
        self._stand_back_until = time.monotonic() + STAND_BACK_ROUNDS * self.poll
        await self._stop_worker()
        await self.leases.release(self.name)

    def _start_if_idle(self) -> None:
        task = self._task
        if task is not None and not task.done():
            return
        if task is not None:
            self._task = None
            self._record_end(task)
            if time.monotonic() - self._failed_at < RETRY_S:
                return  # failed just now: start again on the next round
        self.worker = self.make_worker()
        self._started_at = time.monotonic()
        self._task = asyncio.create_task(self.worker.run(), name=f"projection-{self.name}")

    def _note_progress(self) -> None:
        """A worker that has kept running for ``STEADY_S`` is working again."""
        task = self._task
        running = task is not None and not task.done()
        if self.failures and running and time.monotonic() - self._started_at >= STEADY_S:
            self.failures = 0

    def _record_end(self, task: asyncio.Task[None]) -> None:
        """Why the worker ended: a failure is kept for health and logged; it restarts from
        its checkpoint while this process still holds the lease."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        self._failed_at = time.monotonic()
        self.failures += 1
        self.last_error = repr(exc)
        if isinstance(exc, StaleBatch):
            log.error(
                "projection batch fenced off; restarting", projection=self.name, error=str(exc)
            )
        else:
            log.error("projection failed; restarting", projection=self.name, error=repr(exc))
        if self.worker is not None:
            self.worker.last_error = self.last_error

    async def _stop_worker(self) -> None:
        task, worker = self._task, self.worker
        self._task = None
        self._holding = False
        self.active_since = None
        if task is None:
            self.board.forget(self.name)
            return
        if worker is not None:
            worker.stop()
        # The batch in hand may finish (the store fences it); past the grace, cancel.
        done, _ = await asyncio.wait([task], timeout=STOP_GRACE_S)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        elif not task.cancelled() and task.exception() is not None:
            self._record_end(task)
        # Only now: a batch that finished after the stop advanced the board again, and
        # this process's reads then trusted a checkpoint nobody here moves any more (their
        # `after_seq` waits answered `unavailable` for good; the fault storm).
        self.board.forget(self.name)
