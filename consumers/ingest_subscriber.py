"""The ingestion partitions' FastStream subscriber: a broker on the service's connection and
FastStream's JetStream batch pull subscriber, whose pull loop is the workers' ``PullFeed``.

FastStream holds the subscriber's life (start, stop, the handler's call through its parser,
middlewares and dependency injection, ``AckPolicy.MANUAL``: the worker acks each message
after its outcome is recorded). Its own pull loop (``BatchPullStreamSubscriber
._consume_pull`` in 0.7.8) is replaced, for two reasons measured in docs/architecture.md
(Ingestion):

- it catches ``nats.errors.TimeoutError``, while nats-py 2.16's ``fetch`` raises a plain
  ``asyncio.TimeoutError`` when its deadline passes before the lingering pull: the
  exception leaves the loop, and the messages it had fetched for that batch are dropped
  unacked until the ack wait (60 s) while later ones of the same conversation run first;
- it keeps a partial batch until its deadline, where ``PullFeed`` hands over what the open
  pull has delivered as soon as the server says nothing more is pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Annotated, Any

from faststream import AckPolicy, Context
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.message import NatsBatchMessage
from faststream.nats.subscriber.usecases import BatchPullStreamSubscriber
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agentmem.pullfeed import PullFeed

Handle = Callable[[list[Msg]], Awaitable[None]]


class ServiceBroker(NatsBroker):
    """A FastStream broker on a connection the service already holds: connecting hands it
    over, stopping leaves it open (the service drains it last, after every worker)."""

    def __init__(self, nc: NATS) -> None:
        super().__init__(logger=None, graceful_timeout=None)
        self._shared = nc

    async def _connect(self) -> NATS:
        self.config.connect(self._shared)
        return self._shared

    async def stop(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> None:
        self._connection = None  # not FastStream's to drain
        await super().stop(exc_type, exc_val, exc_tb)


class FeedSubscriber(BatchPullStreamSubscriber):
    """``BatchPullStreamSubscriber`` whose batches come from a ``PullFeed`` on its durable
    consumer (created beforehand by the worker); a failure of the feed is handed to
    ``on_failure`` instead of FastStream's restart of the loop, so that the worker starts
    over from the stream (every message not acked is delivered again, in order)."""

    feed: PullFeed | None
    on_failure: Callable[[BaseException], None]
    idle_wait: float

    async def _create_subscription(self) -> None:
        if self.feed is not None:
            return
        stream = self.stream.name if self.stream is not None else ""
        durable = self.config.durable_name or ""
        feed = PullFeed(self.connection, stream, durable, self.pull_sub.batch_size, self.idle_wait)
        await feed.start()
        self.feed = feed
        self.add_task(self._consume_pull, restart_on_failure=False)

    async def _consume_pull(self) -> None:
        feed = self.feed
        assert feed is not None
        try:
            while self.running:
                messages = await feed.next_batch()
                if messages and self.running:
                    await self.consume(messages)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.on_failure(exc)

    async def stop(self) -> None:
        if self.feed is not None:
            self.feed.interrupt()
        await super().stop()
        if self.feed is not None:
            await self.feed.stop()
            self.feed = None


def subscribe(
    broker: ServiceBroker,
    *,
    stream: str,
    subject: str,
    durable: str,
    batch: int,
    idle_wait: float,
    handle: Handle,
    on_failure: Callable[[BaseException], None],
) -> FeedSubscriber:
    """One partition's subscriber, bound to its durable consumer, handing each pull's
    messages, in stream order, to ``handle``."""
    made = broker.subscriber(
        subject,
        stream=JStream(stream, declare=False),
        durable=durable,
        pull_sub=PullSub(batch_size=batch, batch=True),
        ack_policy=AckPolicy.MANUAL,
        decoder=_raw_messages,
        title=f"{subject}:ingest",
        include_in_schema=False,  # the ingestion subjects are in docs/asyncapi.json already
    )
    # FastStream builds the subscriber from its options; ours only replaces the pull loop.
    # An upgrade that builds another class fails here, not in production.
    if type(made) is not BatchPullStreamSubscriber:
        raise TypeError(f"FastStream made a {type(made).__name__}, not a batch pull subscriber")
    made.__class__ = FeedSubscriber
    subscriber: FeedSubscriber = made  # type: ignore[assignment]
    subscriber.feed = None
    subscriber.on_failure = on_failure
    subscriber.idle_wait = idle_wait

    @subscriber
    async def handle_batch(message: Annotated[NatsBatchMessage, Context("message")]) -> None:
        await handle(list(message.raw_message))

    return subscriber


async def _raw_messages(message: NatsBatchMessage) -> Any:
    """No decoding: the worker reads each command's bytes through the request path."""
    return None
