"""``flushed``: once it returns, the server has what the connection queued before it
(agentmem/natsflush.py). Checked on a real nats-server, with the connection's flusher task
made late, as a loaded machine makes it: nats-py's own ``flush`` then returns before a
subscription reaches the server, and a request on another connection finds no responder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agentmem.natsflush import flushed
from tests.support import NatsServer

LATE_S = 0.3


@pytest.fixture
async def late(nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[NATS]:
    """A connection whose flusher task writes the queue ``LATE_S`` after being asked to."""
    connection = await nats.connect(nats_server.url)
    queue = connection._flush_queue
    assert queue is not None
    on_time = queue.get

    async def late_get() -> asyncio.Future[Any]:
        asked = await on_time()
        await asyncio.sleep(LATE_S)
        return asked

    monkeypatch.setattr(queue, "get", late_get)
    # The flusher already waits in the on-time ``get``: one pass sends it to the late one.
    passed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    queue.put_nowait(passed)
    await passed
    yield connection
    await connection.close()


async def answer(msg: Msg) -> None:
    await msg.respond(b"here")


async def asked_at_once(
    late: NATS, nc: NATS, flush: Callable[[NATS], Awaitable[None]], subject: str
) -> bytes:
    await late.subscribe(subject, cb=answer)
    await flush(late)
    return (await nc.request(subject, b"", timeout=5)).data


async def test_a_subscription_is_on_the_server_once_flushed(late: NATS, nc: NATS) -> None:
    assert await asked_at_once(late, nc, flushed, "probe.flushed") == b"here"


async def test_nats_py_flush_alone_does_not_prove_it(late: NATS, nc: NATS) -> None:
    """Why ``flushed`` exists: if this fails, nats-py's ``flush`` was fixed and ``flushed``
    may go."""

    async def flush(connection: NATS) -> None:
        await connection.flush()

    with pytest.raises(nats.errors.NoRespondersError):
        await asked_at_once(late, nc, flush, "probe.flush")
