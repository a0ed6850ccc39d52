"""The pull feed against a real nats-server: a live event is handed over at once, a backlog
comes in full batches, and one pull serves many live events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentmem.pullfeed import FeedBroken, PullFeed
from tests.support import NatsServer

STREAM = "FEED"


@pytest_asyncio.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    connection = await nats.connect(nats_server.url)
    js = connection.jetstream()
    await js.add_stream(name=STREAM, subjects=["feed.>"])
    await js.add_consumer(
        STREAM,
        ConsumerConfig(
            durable_name="worker",
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=10_000,
        ),
    )
    yield connection
    await connection.close()


async def publish(nc: NATS, n: int) -> None:
    js = nc.jetstream()
    for i in range(n):
        await js.publish(f"feed.{i % 7}", str(i).encode())


def numbers(batch: list[Msg]) -> list[int]:
    return [int(m.data) for m in batch]


async def test_a_backlog_comes_in_full_batches(nc: NATS) -> None:
    await publish(nc, 250)
    feed = PullFeed(nc, STREAM, "worker", batch=100, idle_wait=0.5)
    await feed.start()
    sizes = []
    got: list[int] = []
    while len(got) < 250:
        batch = await feed.next_batch()
        sizes.append(len(batch))
        got += numbers(batch)
        if batch:
            await batch[-1].ack()
    assert sizes == [100, 100, 50]
    assert got == list(range(250))
    await feed.stop()


async def test_a_live_event_is_handed_over_without_waiting_for_the_pull_to_end(
    nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = PullFeed(nc, STREAM, "worker", batch=100, idle_wait=5.0)
    await feed.start()
    got: list[int] = []
    # The pull requests as they leave for the server (a second connection subscribed to
    # their subject saw none in two CI runs on a quiet machine, though the feed was fed).
    pulls: list[bytes] = []
    publish = nc.publish

    async def counting(subject: str, payload: bytes = b"", **options: Any) -> None:
        if subject == f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.worker":
            pulls.append(payload)
        await publish(subject, payload, **options)

    monkeypatch.setattr(nc, "publish", counting)
    for i in range(5):
        waiting = asyncio.create_task(feed.next_batch())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # nothing yet: it waits
        started = time.monotonic()
        await nc.jetstream().publish("feed.live", str(i).encode())
        batch = await asyncio.wait_for(waiting, timeout=1.0)
        # Handed over at once, not when the 5 s pull expires.
        assert time.monotonic() - started < 1.0
        got += numbers(batch)
        await batch[-1].ack()
    assert got == [0, 1, 2, 3, 4]
    assert len(pulls) == 1, "one open pull served all five events"
    await feed.stop()


async def test_an_expired_pull_gives_an_empty_batch_and_the_next_one_works(nc: NATS) -> None:
    feed = PullFeed(nc, STREAM, "worker", batch=10, idle_wait=0.2)
    await feed.start()
    assert await feed.next_batch() == []
    await publish(nc, 3)
    batch = await feed.next_batch()
    assert numbers(batch) == [0, 1, 2]
    await feed.stop()


async def test_a_deleted_consumer_breaks_the_feed(nc: NATS) -> None:
    """The worker then starts over from its checkpoint with a new consumer."""
    feed = PullFeed(nc, STREAM, "worker", batch=10, idle_wait=5.0)
    await feed.start()
    waiting = asyncio.create_task(feed.next_batch())
    await asyncio.sleep(0.1)
    await nc.jetstream().delete_consumer(STREAM, "worker")
    with pytest.raises(FeedBroken, match="409"):
        await asyncio.wait_for(waiting, timeout=3.0)
    await feed.stop()


async def test_an_interrupt_ends_the_batch_without_waiting_for_the_pull(nc: NATS) -> None:
    """A stopping worker is not held for the open pull's whole life (30 s here)."""
    feed = PullFeed(nc, STREAM, "worker", batch=10, idle_wait=30.0)
    await feed.start()
    waiting = asyncio.create_task(feed.next_batch())
    await asyncio.sleep(0.1)
    feed.interrupt()
    assert await asyncio.wait_for(waiting, timeout=3.0) == []
    await feed.stop()


async def test_a_backlog_of_large_commits_is_pulled_in_pieces_the_client_can_hold(
    nc: NATS,
) -> None:
    """150 messages of 900 KB (about 135 MB) asked for in one batch of 1,000: one pull of
    them all would pass nats-py's 64 MiB pending limit, drop messages and break the feed."""
    js = nc.jetstream()
    for i in range(150):
        await js.publish(f"feed.{i % 7}", str(i).encode().ljust(900_000, b" "))
    feed = PullFeed(nc, STREAM, "worker", batch=1_000, idle_wait=2.0)
    await feed.start()
    got: list[int] = []
    try:
        while len(got) < 150:
            batch = await feed.next_batch()
            assert batch, "the feed ended before the backlog"
            got += numbers(batch)
            await batch[-1].ack()
    finally:
        await feed.stop()
    assert got == list(range(150))


async def test_a_paced_feed_gathers_a_trickle_into_one_batch(nc: NATS) -> None:
    """Events that arrive within the pace after the last batch wait for each other; the
    first event after a quiet spell is handed over at once."""
    feed = PullFeed(nc, STREAM, "worker", batch=100, idle_wait=5.0, pace=0.4)
    await feed.start()
    started = time.monotonic()
    await nc.jetstream().publish("feed.live", b"0")
    first = await feed.next_batch()
    assert numbers(first) == [0]
    assert time.monotonic() - started < 0.3  # quiet before: not held back
    await first[-1].ack()
    waiting = asyncio.create_task(feed.next_batch())
    for i in range(1, 6):
        await nc.jetstream().publish("feed.live", str(i).encode())
        await asyncio.sleep(0.02)
    second = await asyncio.wait_for(waiting, timeout=2.0)
    assert numbers(second) == [1, 2, 3, 4, 5]
    assert time.monotonic() - started >= 0.4
    await feed.stop()


async def test_a_hurried_feed_hands_over_what_it_has(nc: NATS) -> None:
    feed = PullFeed(nc, STREAM, "worker", batch=100, idle_wait=5.0, pace=30.0)
    await feed.start()
    await nc.jetstream().publish("feed.live", b"0")
    await (await feed.next_batch())[-1].ack()
    waiting = asyncio.create_task(feed.next_batch())
    await nc.jetstream().publish("feed.live", b"1")
    await asyncio.sleep(0.2)
    assert not waiting.done()  # held back by the pace
    feed.hurry()
    assert numbers(await asyncio.wait_for(waiting, timeout=2.0)) == [1]
    await feed.stop()


async def test_a_feed_told_its_consumer_is_new_refuses_one_that_delivered_before(
    nc: NATS,
) -> None:
    """A projection's consumer is made anew at each start: a first delivery past consumer
    sequence 1 means it inherited another's state, whose first ack would ack away what it
    skipped."""
    await publish(nc, 3)
    before = PullFeed(nc, STREAM, "worker", batch=2, idle_wait=0.5)
    await before.start()
    await (await before.next_batch())[-1].ack()
    await before.stop()
    feed = PullFeed(nc, STREAM, "worker", batch=10, idle_wait=0.5, first_consumer_seq=1)
    await feed.start()
    with pytest.raises(FeedBroken, match="not new"):
        await feed.next_batch()
    await feed.stop()
