"""Connection set-up time, and what the clients' account costs a request:
``python -m bench.connect [--n 200]``.

One ``agentmem serve``-like deployment (the embedded nats-server and the service in this
process), then ``n`` connections made and closed one after another, each way:

- ``service``: the service's own user and password (no auth callout): the raw baseline;
- ``api key``: an API key as the NATS token, decided by the service's auth callout;
- ``anonymous``: the anonymous token, decided by the callout without a credential check.

Prints the median and p90 of ``nats.connect`` (TCP, INFO, CONNECT, the callout, PONG) in
milliseconds, and the ratio of each to the baseline.

Then ``n`` rounds of one ``org.rename`` and one ``user.get``, one at a time, each round
once through a client connection (the ``CLIENTS`` account, the service import) and once
through the service principal's (the same account as the service), interleaved so that the
machine's drift falls on both alike: the medians and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

from agentmem import Client, natsauth
from agentmem.auth import tokens
from agentmem.config import Settings
from agentmem.service import Service
from bench.env import free_port


async def timed(url: str, n: int, options: dict[str, Any]) -> list[float]:
    took = []
    for _ in range(n):
        started = time.perf_counter()
        nc = await nats.connect(url, **options)
        took.append((time.perf_counter() - started) * 1000)
        await nc.close()
    return took


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings()
        settings.nats_url = None
        settings.listen = f"127.0.0.1:{free_port()}"
        settings.data_dir = Path(tmp)
        settings.password_cost = 2
        service = Service(settings)
        await service.start()
        try:
            assert service.embedded is not None
            url = f"nats://{settings.listen}"
            key = (Path(tmp) / "admin.key").read_text().strip()
            ways = {
                "service": (service.embedded.url, {}),
                "api key": (url, natsauth.connection_options(key)),
                "anonymous": (url, natsauth.connection_options(None)),
            }
            for where, options in ways.values():  # warm up every path once
                await timed(where, 5, options)
            results = {name: await timed(where, n, opts) for name, (where, opts) in ways.items()}
            requests = await paired_requests(service.embedded.url, url, key, n)
        finally:
            await service.stop()
    base = statistics.median(results["service"])
    print(f"connection set-up, {n} connections one after another each way (ms)")
    for name, took in results.items():
        median = statistics.median(took)
        p90 = statistics.quantiles(took, n=10)[-1]
        print(f"  {name:10} median {median:6.2f}  p90 {p90:6.2f}  x{median / base:4.2f}")
    print(f"one request at a time, {n} interleaved rounds (µs, median)")
    for op in ("rename-org", "point-query"):
        client_side = statistics.median(requests[("client", op)])
        service_side = statistics.median(requests[("service", op)])
        print(
            f"  {op:12} client account {client_side:7.0f}  service account "
            f"{service_side:7.0f}  x{client_side / service_side:4.2f}"
        )


async def paired_requests(service_url: str, url: str, key: str, n: int) -> dict[Any, list[float]]:
    via_client = await Client.connect(url, token=key)
    via_service = Client(await nats.connect(service_url), key)
    took: dict[Any, list[float]] = {}
    try:
        org_id = str((await via_client.create_org("bench")).fields["org_id"])
        me = tokens.parse(key)
        assert me is not None
        for i in range(n + 10):
            for name, client in (("client", via_client), ("service", via_service)):
                for op, call in (
                    ("rename-org", client.rename_org(org_id, f"name {i} {name}")),
                    ("point-query", client.get_user(me.user_id, after_seq=0)),
                ):
                    started = time.perf_counter()
                    await call
                    if i >= 10:  # the first rounds warm up
                        took.setdefault((name, op), []).append(
                            (time.perf_counter() - started) * 1e6
                        )
    finally:
        await via_client.close()
        await via_service.close()
    return took


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    asyncio.run(main(parser.parse_args().n))
