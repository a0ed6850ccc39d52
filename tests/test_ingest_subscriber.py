"""The ingestion partitions' FastStream subscriber, on a real nats-server: each pull's
messages in stream order, nothing acked by FastStream (the worker acks after the outcome),
a consumer's messages handed over whole across pulls, and the service's connection left
open when the broker stops."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from agentmem.consumers.ingest_subscriber import FeedSubscriber, ServiceBroker, subscribe
from agentmem.pullfeed import FeedBroken

STREAM = "T_INGEST"
SUBJECT = "t.in.>"
CONSUMER = "t-ingest"


async def work_queue(nc: NATS, count: int) -> None:
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name=STREAM, subjects=[SUBJECT], retention=RetentionPolicy.WORK_QUEUE)
    )
    await js.add_consumer(
        STREAM,
        ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1),
    )
    for i in range(count):
        await js.publish(f"t.in.{i % 3}", str(i).encode())


async def test_batches_in_stream_order_and_only_the_worker_acks(nc: NATS) -> None:
    await work_queue(nc, 300)
    taken: list[Msg] = []
    pulls: list[int] = []
    all_taken = asyncio.Event()

    async def take(messages: list[Msg]) -> None:
        pulls.append(len(messages))
        taken.extend(messages)
        if len(taken) >= 300:
            all_taken.set()

    def fail(exc: BaseException) -> None:
        raise AssertionError(f"the feed failed: {exc!r}")

    broker = ServiceBroker(nc)
    subscriber = subscribe(
        broker,
        stream=STREAM,
        subject=SUBJECT,
        durable=CONSUMER,
        batch=64,
        idle_wait=0.5,
        handle=take,
        on_failure=fail,
    )
    assert isinstance(subscriber, FeedSubscriber)
    await broker.start()
    try:
        await asyncio.wait_for(all_taken.wait(), 10)
    finally:
        await broker.stop()

    assert [m.data for m in taken] == [str(i).encode() for i in range(300)]
    assert max(pulls) <= 64
    assert len(pulls) >= 300 // 64
    info = await nc.jetstream().consumer_info(STREAM, CONSUMER)
    assert info.num_ack_pending == 300  # FastStream acked none of them (AckPolicy.MANUAL)

    # The broker stopped; the connection is the service's and stays open.
    assert nc.is_connected
    for m in taken:
        await m.ack_sync()  # confirmed by the server, so that the count below is final
    info = await nc.jetstream().consumer_info(STREAM, CONSUMER)
    assert info.num_ack_pending == 0


async def test_a_failing_feed_is_handed_to_the_worker(nc: NATS) -> None:
    """A pull on a consumer that does not exist ends with a status (503, no responders):
    the worker hears of it (and starts over), instead of FastStream retrying the loop in
    the background."""
    await nc.jetstream().add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT]))
    failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def take(messages: list[Msg]) -> None:
        raise AssertionError("nothing to take")

    broker = ServiceBroker(nc)
    subscribe(
        broker,
        stream=STREAM,
        subject=SUBJECT,
        durable="nobody",
        batch=8,
        idle_wait=0.2,
        handle=take,
        on_failure=failed.set_result,
    )
    await broker.start()
    try:
        exc = await asyncio.wait_for(failed, 10)
    finally:
        await broker.stop()
    assert isinstance(exc, FeedBroken)
    assert "503" in str(exc)  # no responders: the consumer is not there
    assert nc.is_connected
