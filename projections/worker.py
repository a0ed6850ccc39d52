"""A projection worker: a durable pull consumer, batches applied in one transaction each.

Exactly-once effect: the rows a batch changes and the projection's checkpoint are committed
together, and the batch is acked only after that commit. A worker always (re)creates its
consumer to start right after its checkpoint, and skips anything at or below it, so a crash
anywhere (before the commit, between commit and ack) neither loses nor repeats an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from agentmem import subjects
from agentmem.errors import UnavailableError
from agentmem.eventlog import StoredCommit
from agentmem.jetstream import delivery
from agentmem.keys import KeyRing
from agentmem.metrics import Metrics
from agentmem.projections.base import Projection
from agentmem.projections.board import CheckpointBoard
from agentmem.pullfeed import FeedBroken, PullFeed
from agentmem.sealing import open_commits
from agentmem.store import Parked, ProjectionBatch, Store
from agentmem.store.versions import build_key, variant_of

log = structlog.get_logger(__name__)

BATCH = 1000
# How long an idle worker waits for the next event before looking again (and noticing stop).
IDLE_WAIT_S = 0.5


def fresh(info: ConsumerInfo) -> bool:
    """Whether a consumer has delivered nothing yet, as one just made must have."""
    delivered = info.delivered.consumer_seq if info.delivered is not None else 0
    return not delivered and not info.num_ack_pending


def durable_name(projection: str) -> str:
    return f"agentmem-projection-{projection}"


def build_consumer(projection: str, version: int) -> str:
    """A build's consumer: deleted when the build stops (and made again at its checkpoint)."""
    return f"agentmem-build-{projection}-v{version}"


class ProjectionWorker:
    def __init__(
        self,
        nc: NATS,
        store: Store,
        projection: Projection,
        board: CheckpointBoard | None = None,
        stream: str = subjects.STREAM_NAME,
        batch: int = BATCH,
        consumer: str | None = None,
        until_seq: int | None = None,
        metrics: Metrics | None = None,
        keys: KeyRing | None = None,
        version: int | None = None,
        building: bool = False,
        pace: float = 0.0,
    ) -> None:
        self.nc = nc
        self.pace = pace
        self.keys = keys  # opens sealed personal fields (``agentmem.sealing``)
        self.js = nc.jetstream()
        self.store = store
        self.projection = projection
        self.board = board or CheckpointBoard()
        self.stream = stream
        self.batch = batch
        # The projection version its batches carry: the store applies them only to tables of
        # that version; with ``building``, to that version's build beside the live tables
        # (``agentmem.projections.build``), under the build's checkpoint. None: unchecked.
        self.version = version
        self.variant = variant_of(projection)
        self.building = building
        if building and version is None:
            raise ValueError("a build names its version")
        self.key = build_key(projection.name, version) if building and version else projection.name
        self.consumer = consumer or (
            build_consumer(projection.name, version)
            if building and version
            else durable_name(projection.name)
        )
        self.checkpoint = 0
        self._stopping = asyncio.Event()
        self._feed: PullFeed | None = None
        self._hurry_sub: Subscription | None = None
        self.applied = 0
        self.last_error: str | None = None
        # A point-in-time replay applies nothing after this sequence, and stops once the log
        # has shown it something past it (or has nothing more).
        self.until_seq = until_seq
        self.metrics = metrics or Metrics()
        self._past_until = False

    @property
    def name(self) -> str:
        return self.projection.name

    async def _subscribe(self) -> PullFeed:
        """A fresh durable consumer that starts right after the checkpoint."""
        durable = self.consumer
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.delete_consumer(self.stream, durable)
        config = ConsumerConfig(
            durable_name=durable,
            filter_subjects=self.projection.filter_subjects,
            ack_policy=AckPolicy.ALL,
            ack_wait=60,
            max_ack_pending=self.batch * 4,
            max_waiting=16,
        )
        if self.checkpoint > 0:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self.checkpoint + 1
        else:
            config.deliver_policy = DeliverPolicy.ALL
        info = await self.js.add_consumer(self.stream, config)
        if not fresh(info):
            # Not the consumer just asked for: nats-server gave it the state of one of the
            # same name that it did not load at recovery (a kill -9 left its directory
            # without meta.sum) but left on disk, so the delete above found nothing. Its
            # delivered sequence would skip the commits from the checkpoint on, and the
            # first ack (AckPolicy.ALL) ack them away: lost for good (a fault storm lost
            # 211 memories from the graph so). Loaded now, a delete takes its directory.
            log.warning(
                "stale consumer state; made again",
                projection=self.key,
                delivered=info.delivered.stream_seq if info.delivered is not None else None,
                checkpoint=self.checkpoint,
            )
            await self.js.delete_consumer(self.stream, durable)
            if not fresh(await self.js.add_consumer(self.stream, config)):
                raise FeedBroken(f"consumer {durable} keeps a stale state")
        feed = PullFeed(
            self.nc,
            self.stream,
            durable,
            self.batch,
            idle_wait=IDLE_WAIT_S,
            pace=self.pace,
            first_consumer_seq=1,
        )
        await feed.start()
        if self.pace > 0:
            # A reader that waits cuts the pace short: in this process through the board,
            # in another on the hurry subject (consumers.freshness). Unpaced, a hurry would
            # only wake an idle feed for nothing.
            self.board.on_wait(self.key, feed.hurry)

            async def hurried(_: Msg) -> None:
                feed.hurry()

            self._hurry_sub = await self.nc.subscribe(subjects.hurry(self.key), cb=hurried)
        return feed

    @property
    def _reached_until(self) -> bool:
        if self.until_seq is None:
            return False
        return self._past_until or self.checkpoint >= self.until_seq

    def stop(self) -> None:
        self._stopping.set()
        if self._feed is not None:
            self._feed.interrupt()  # not a wait for the open pull to expire

    async def run(
        self,
        until_caught_up: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Apply batches until stopped (or, with ``until_caught_up``, until none are pending).

        ``on_progress(applied_in_this_run, pending)`` is called after every batch.
        """
        self.checkpoint = await self.store.checkpoint(self.key)
        self.board.advance(self.key, self.checkpoint)
        if self._reached_until:
            return
        feed = self._feed = await self._subscribe()
        if self._stopping.is_set():
            feed.interrupt()
        log.info("projection started", projection=self.key, checkpoint=self.checkpoint)
        try:
            while not self._stopping.is_set():
                messages = await feed.next_batch()
                if not messages:
                    if until_caught_up:
                        info = await self.js.consumer_info(self.stream, self.consumer)
                        if info.num_pending == 0 and info.num_ack_pending == 0:
                            return
                    continue
                pending = await self._apply(messages)
                if on_progress is not None:
                    on_progress(self.applied, pending)
                if (until_caught_up and pending == 0) or self._reached_until:
                    return
        finally:
            self.board.off_wait(self.key, feed.hurry)
            if self._hurry_sub is not None:
                with contextlib.suppress(Exception):
                    await self._hurry_sub.unsubscribe()
                self._hurry_sub = None
            with contextlib.suppress(Exception):
                await feed.stop()
            if self.consumer != durable_name(self.name):  # a replay's consumer is temporary
                with contextlib.suppress(Exception):
                    await self.js.delete_consumer(self.stream, self.consumer)
            log.info("projection stopped", projection=self.key, checkpoint=self.checkpoint)

    async def _prepare(self, commits: list[StoredCommit]) -> None:
        """A projection with a ``prepare(store, commits)`` step (derived data made in bulk,
        such as embeddings) gets the whole batch before its commits are projected."""
        prepare = getattr(self.projection, "prepare", None)
        if prepare is not None and commits:
            await prepare(self.store, commits)

    async def _apply(self, messages: list[Msg]) -> int:
        """Apply one fetched batch; returns how many messages are still pending after it."""
        # Built on this worker's checkpoint: the store applies it only if that is still the
        # stored one, so a worker that lost its lease cannot apply a batch late.
        batch = ProjectionBatch(
            self.name,
            self.checkpoint,
            after=self.checkpoint,
            version=self.version,
            variant=self.variant,
            building=self.building,
        )
        last_seq = self.checkpoint
        decoded: list[tuple[int, Msg, StoredCommit | Exception]] = []
        placed = [(delivery(m).stream_seq, m) for m in messages]
        # At or below the checkpoint: applied before a crash between the commit and the ack.
        fresh = [(seq, m) for seq, m in placed if seq > self.checkpoint]
        if self.until_seq is not None:
            until = self.until_seq
            if any(seq > until for seq, _ in fresh):
                self._past_until = True
                fresh = [(seq, m) for seq, m in fresh if seq <= until]
        # Opened together: the data keys this process has not cached yet are read from the
        # bucket at once, not one commit after the other.
        opened = await open_commits([m.data for _, m in fresh], self.keys)
        for events in opened:
            if isinstance(events, UnavailableError):
                # Not the commit's fault: the key bucket did not answer (a node down, a
                # leader being elected). Parked, the event would be missing from reads for
                # good; the batch fails instead, and the worker starts again at its
                # checkpoint once the log answers.
                raise events
        for (seq, message), events in zip(fresh, opened, strict=True):
            last_seq = max(last_seq, seq)
            try:
                if isinstance(events, BaseException):
                    raise events
                commit = StoredCommit(
                    seq=seq,
                    subject=message.subject,
                    headers=message.headers or {},
                    events=events,
                )
                decoded.append((seq, message, commit))
            except Exception as exc:  # an event this code cannot read must not stall the rest
                decoded.append((seq, message, exc))
        await self._prepare([c for _, _, c in decoded if isinstance(c, StoredCommit)])
        for seq, message, commit_or_error in decoded:
            try:
                if isinstance(commit_or_error, Exception):
                    raise commit_or_error
                batch.items.append((seq, message.subject, self.projection.project(commit_or_error)))
            except Exception as exc:
                batch.parked.append(
                    Parked(self.key, seq, message.subject, f"{type(exc).__name__}: {exc}")
                )
        pending = delivery(messages[-1]).num_pending if messages else 0
        if last_seq > self.checkpoint:
            batch.checkpoint = last_seq
            started = time.perf_counter()
            parked = await self.store.apply(batch)
            for item in parked:
                log.error(
                    "event parked",
                    projection=self.key,
                    seq=item.seq,
                    subject=item.subject,
                    error=item.error,
                )
            seconds = time.perf_counter() - started
            self.applied += len(batch.items) + len(batch.parked) - len(parked)
            self.checkpoint = last_seq
            self.board.advance(self.key, last_seq)
            applied = len(batch.items) + len(batch.parked)
            self.metrics.batch(self.key, applied, len(parked), seconds)
            log.debug(
                "batch applied",
                projection=self.key,
                events=len(batch.items),
                checkpoint=last_seq,
                ms=round(seconds * 1000, 2),
            )
        # AckPolicy.ALL: acking the last message acks the whole batch, after the commit.
        await messages[-1].ack()
        return int(pending)
