"""Who may act: users (their credentials and roles), organizations and agents, in memory,
kept current by the log.

Checking a credential against the log costs a round trip to nats-server on every request,
and so does checking that an agent may still speak before an append. The access view
answers from memory instead, without giving up what the log gave: a key revoked, a session
ended, a role or a user or an organization removed, an agent archived or deleted, all take
effect on the very next request after the command was acknowledged, in every process.
Three parts make that hold:

- **The view.** Each process keeps the users, organizations and agents its requests named,
  and a JetStream consumer of its own (``agentmem-access-<id>``, explicit acks) delivers
  every later commit on those subjects; the view applies each one, then acks it.
- **The barrier** (``confirm_everywhere``). A command whose events narrow access
  (``narrows_access``) is acknowledged only once every view's consumer has acked its commit.
  A view that has not done so within ``CONFIRM_S`` has its consumer deleted, and the command
  then waits out ``LEASE_S`` before it answers.
- **The lease.** A view trusts itself only until ``LEASE_S`` after it last saw its own
  consumer exist (a consumer info request it sent). Once its consumer is gone it cannot
  renew, so it stops trusting itself before any command that cut it off is acknowledged,
  and falls back to reading the log for every request until a new consumer is in place.

What a view does not know yet (a key created a moment ago in another process) is read from
the log: the view only ever answers from what it holds, and the caller re-checks a refusal
against the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentmem import ids, subjects
from agentmem.consumers.aggregates import (
    MAX_CACHE_BYTES,
    Entry,
    FreshReads,
    advance,
    weigh_entry,
)
from agentmem.consumers.lru import LRU
from agentmem.domain.aggregate import Evolve, Loaded
from agentmem.errors import UnavailableError
from agentmem.eventlog import StoredCommit

log = structlog.get_logger(__name__)

S = TypeVar("S")

CONSUMER_PREFIX = "agentmem-access-"
WATCHED = [subjects.event("*", kind, "*") for kind in ("user", "org", "agent")]
LEASE_S = 3.0  # how long a view trusts itself after it last saw its consumer exist
RENEW_S = 1.0  # how often it looks
CONFIRM_S = 2.0  # how long a narrowing command waits for a view before cutting it off
# Beyond LEASE_S, for the time a consumer info reply may spend in flight.
LEASE_MARGIN_S = 0.5
# A process that died leaves its consumer behind this long; until then, a narrowing command
# waits CONFIRM_S + LEASE_S for it.
INACTIVE_S = 10.0
ACK_WAIT_S = 1.0  # a delivery lost on the way (a reconnect) comes again this soon
PAGE = 256  # consumers per page of JetStream's consumer list


class AccessView:
    def __init__(
        self,
        nc: NATS,
        fresh: FreshReads,
        stream: str = subjects.STREAM_NAME,
        max_entries: int = 100_000,
        max_bytes: int = MAX_CACHE_BYTES,
        replicas: int = 1,
    ) -> None:
        self.nc = nc
        self.replicas = replicas
        self.js = nc.jetstream()
        self.fresh = fresh
        self.stream = stream
        self.consumer = ""
        self._entries: LRU[Entry] = LRU(weigh_entry, max_entries, max_bytes)
        # Commits that arrived while their subject was being read from the log.
        self._arrived: dict[str, list[StoredCommit]] = {}
        self._fills: dict[str, asyncio.Future[Loaded[Any]]] = {}
        self._epoch = 0  # bumped when the view starts over; a fill from before is dropped
        self._lease_until = 0.0
        self._inbox = nc.new_inbox()
        self._subscription: Subscription | None = None
        self._keeper: asyncio.Task[None] | None = None

    @property
    def trusted(self) -> bool:
        return time.monotonic() < self._lease_until

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(self._inbox, cb=self._on_commit)
        with contextlib.suppress(Exception):  # the keeper retries; until then, log reads
            await self._open()
        self._keeper = asyncio.create_task(self._keep(), name="access-view")

    async def stop(self) -> None:
        self._lease_until = 0.0
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        # Gone at once, so that no narrowing command waits for it.
        with contextlib.suppress(Exception):
            await self.js.delete_consumer(self.stream, self.consumer)

    # Reading ----------------------------------------------------------------------------
    def peek(self, subject: str) -> Loaded[Any] | None:
        """What the view holds for ``subject``, if it holds it and trusts itself."""
        if not self.trusted:
            return None
        entry = self._entries.get(subject)
        return None if entry is None else entry.loaded

    async def load(self, subject: str, evolve: Evolve[S]) -> Loaded[S]:
        """The aggregate as of every commit the view has been delivered: from memory, or
        read from the log once and kept from then on."""
        if not self.trusted:
            return await self.fresh.load(subject, evolve)
        held = self.peek(subject)
        if held is not None:
            return held
        fill = self._fills.get(subject)
        if fill is None:
            fill = self._fills[subject] = asyncio.ensure_future(self._fill(subject, evolve))
        loaded: Loaded[S] = await asyncio.shield(fill)
        return loaded

    async def _fill(self, subject: str, evolve: Evolve[S]) -> Loaded[S]:
        epoch = self._epoch
        self._arrived[subject] = []
        try:
            loaded = await self.fresh.load(subject, evolve)
        finally:
            arrived = self._arrived.pop(subject, [])
            self._fills.pop(subject, None)
        loaded = advance(loaded, evolve, [c for c in arrived if c.seq > loaded.version])
        if epoch == self._epoch:
            self._entries.put(subject, Entry(loaded, evolve))
        return loaded

    async def _on_commit(self, msg: Msg) -> None:
        meta = msg.metadata
        if meta.consumer != self.consumer:
            return  # a delivery of a consumer this view has left behind
        subject = msg.subject
        # Read tolerantly, as the log's reads are: what this version cannot read is skipped
        # (and logged), and the commit's other events still apply.
        commit = await self.fresh.cache.log.open(
            meta.sequence.stream, subject, msg.headers or {}, msg.data
        )
        entry = self._entries.get(subject, touch=False)
        if entry is not None and commit.seq > entry.loaded.version:
            loaded = advance(entry.loaded, entry.evolve, [commit])
            self._entries.put(subject, Entry(loaded, entry.evolve))  # re-weighed
        arrived = self._arrived.get(subject)
        if arrived is not None:
            arrived.append(commit)
        # Acked only once applied: the barrier reads this ack.
        with contextlib.suppress(Exception):
            await self.nc.publish(msg.reply, b"")

    # The consumer and the lease ---------------------------------------------------------
    async def _open(self) -> None:
        """Start over: an empty view, and a fresh consumer from the end of the log."""
        self._lease_until = 0.0
        self._epoch += 1
        self._entries.clear()
        old, self.consumer = self.consumer, CONSUMER_PREFIX + ids.new_id()
        if old:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.stream, old)
        sent = time.monotonic()
        await self.js.add_consumer(
            self.stream,
            ConsumerConfig(
                name=self.consumer,
                deliver_subject=self._inbox,
                deliver_policy=DeliverPolicy.NEW,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_S,
                filter_subjects=WATCHED,
                inactive_threshold=INACTIVE_S,
                # On disk and replicated like the stream: a consumer must only ever vanish
                # by the barrier's delete (or 10 s after its process), never with a server
                # restart or a lost node, or a revocation could pass a view that still
                # trusts itself.
                mem_storage=False,
                num_replicas=self.replicas,
            ),
        )
        self._lease_until = sent + LEASE_S

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            sent = time.monotonic()
            try:
                await self.js.consumer_info(self.stream, self.consumer)
                self._lease_until = sent + LEASE_S
            except nats.js.errors.NotFoundError:
                # Cut off by a narrowing command, or expired while this process was away.
                log.warning("access view lost its consumer; starting over", consumer=self.consumer)
                with contextlib.suppress(Exception):
                    await self._open()
            except Exception as exc:  # no answer: the lease runs out on its own
                log.warning("access view could not renew its lease", error=repr(exc))


async def confirm_everywhere(nc: NATS, seq: int, stream: str = subjects.STREAM_NAME) -> None:
    """Return once every process's access view has applied the commit at ``seq`` (a commit
    on a user's or an organization's subject), or can no longer trust itself."""
    js = nc.jetstream()
    deadline = time.monotonic() + CONFIRM_S
    pause = 0.0005
    try:
        while True:
            behind = [name for name, floor in await _views(js, stream) if floor < seq]
            if not behind:
                return
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        log.warning("access views did not confirm a commit; cutting them off", views=behind)
        for name in behind:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_consumer(stream, name)
    except (TimeoutError, nats.errors.Error) as exc:
        raise UnavailableError(
            f"the commit at {seq} is in the log, but not every service process has confirmed "
            "it yet; send the command again with the same command_id to wait for them",
            {"seq": seq},
        ) from exc
    await asyncio.sleep(LEASE_S + LEASE_MARGIN_S)


async def _views(js: JetStreamContext, stream: str) -> list[tuple[str, int]]:
    """Every access view's consumer on the stream, with the last sequence it acked."""
    found: list[tuple[str, int]] = []
    offset = 0
    while True:
        page = await js.consumers_info(stream, offset=offset)
        found += [
            (info.name, info.ack_floor.stream_seq if info.ack_floor else 0)
            for info in page
            if info.name.startswith(CONSUMER_PREFIX)
        ]
        if len(page) < PAGE:
            return found
        offset += len(page)


async def load_all(
    reads: AccessView | FreshReads, wanted: Sequence[tuple[str, Evolve[Any]]]
) -> list[Loaded[Any]]:
    """Several aggregates: straight from the view's memory when it holds them all (a gather
    makes a task of each read: 5% of the service's time under published appends), else
    read side by side."""
    if isinstance(reads, AccessView):
        held: list[Loaded[Any]] = []
        for subject, _ in wanted:
            loaded = reads.peek(subject)
            if loaded is None:
                break
            held.append(loaded)
        else:
            return held
    return list(await asyncio.gather(*(reads.load(subject, evolve) for subject, evolve in wanted)))
