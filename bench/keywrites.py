"""``python -m bench.keywrites``: how many durable writes per second nats-server takes, to
the key bucket and to a plain stream, one at a time and in bursts.

Each new memory needs a data key, and storing a key is a durable write (nats-server with
``sync_interval: always`` fsyncs before it acknowledges), as the memory's event is. Whether
the key is written on the request path or ahead of it (``agentmem.keypool``), the disk
takes two writes per new memory where the raw command takes one: this measures what one
write costs on this disk, so that the ceiling of ``memory.add`` with many clients can be
read off it. Also keys stored many in one atomic batch (``KeyRing.create_many``, as
the key pool refills), one batch at a time. A fresh embedded nats-server in a temporary
directory; ``--writes`` per measurement; bursts sent with ``asyncio.gather``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path

import nats

from agentmem.embedded import EmbeddedNats
from agentmem.keys import KeyRing, MasterKeys
from bench.env import free_port

BURSTS = (1, 4, 16, 64, 256)
ATOMIC = (2, 16, 64)


async def main(writes: int) -> None:
    with tempfile.TemporaryDirectory(prefix="agentmem-keywrites-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats", "127.0.0.1", free_port(), sync_always=True)
        await server.start()
        nc = await nats.connect(server.url)
        ring = KeyRing(nc, MasterKeys([secrets.token_bytes(32)]), timeout=30)
        await ring.start()
        await nc.jetstream().add_stream(name="KEYWRITES", subjects=["keywrites.>"])
        try:

            async def key() -> object:
                return await ring.create(f"o.u.=.=.memory.k_{secrets.token_hex(8)}")

            async def event() -> object:
                return await nc.request(
                    f"keywrites.{secrets.token_hex(8)}",
                    b"x" * 300,
                    timeout=30,
                    headers={"Nats-Expected-Last-Subject-Sequence": "0"},
                )

            await asyncio.gather(*(key() for _ in range(64)))  # warm-up
            for name, write in (("data key", key), ("event", event)):
                for burst in BURSTS:
                    started = time.perf_counter()
                    for _ in range(writes // burst):
                        await asyncio.gather(*(write() for _ in range(burst)))
                    seconds = time.perf_counter() - started
                    done = writes // burst * burst
                    print(
                        f"{name:8} burst {burst:3}: {done / seconds:7,.0f} writes/s  "
                        f"{seconds / done * 1e6:6,.0f} µs each"
                    )
            for size in ATOMIC:
                started = time.perf_counter()
                for _ in range(writes // size):
                    await ring.create_many(
                        [f"o.u.=.=.memory.k_{secrets.token_hex(8)}" for _ in range(size)]
                    )
                seconds = time.perf_counter() - started
                done = writes // size * size
                print(
                    f"data key atomic batch {size:3}: {done / seconds:7,.0f} keys/s  "
                    f"{seconds / (writes // size) * 1e6:6,.0f} µs a batch"
                )
            print(f"load average after: {os.getloadavg()[0]:.1f}")
        finally:
            await ring.stop()
            await nc.close()
            await server.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.keywrites")
    p.add_argument("--writes", type=int, default=1024, help="writes per measurement")
    asyncio.run(main(p.parse_args().writes))
