"""A flush that proves the server has what this connection queued before it.

nats-py 2.16's ``Client.flush`` writes its PING straight to the socket, ahead of the
commands still queued for the connection's flusher task, so its PONG does not prove that a
SUB just made, or a reply just published, has left the process. When the flusher ran late
(a loaded machine), a request sent on another connection right after the dispatcher's
flush found no responder: in tests/test_caller_turns.py 10 runs of 40 beside three busy
processes, and nats-server's trace showed the SUB arriving after the PONG. Here the queue is
written out first; the round trip after it then proves the server has read all of it.
"""

from __future__ import annotations

import asyncio

import nats.errors
from nats.aio.client import Client as NATS


async def flushed(nc: NATS, timeout: int = 10) -> None:
    """Return once the server has read every command ``nc`` queued before this call, or
    raise ``nats.errors.FlushTimeoutError`` as ``flush`` does."""
    try:
        # Waits for the flusher task to write the queue (nats-py has no public call for it).
        await asyncio.wait_for(nc._flush_pending(force_flush=True), timeout)
    except TimeoutError:
        raise nats.errors.FlushTimeoutError from None
    await nc.flush(timeout)
