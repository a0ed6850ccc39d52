"""Projection throughput on Postgres: one process with the projections role against three,
the leases spread over them.

The session seeds one log (a service on an SQLite file of its own, stopped afterwards):
``MESSAGES`` messages in ``append_batch`` commands of 1,000 over 10 conversations, and
``SINGLES`` agents, tools and users (one command each), so that several projections have
work. Each run starts, on a fresh Postgres schema, one or three ``python -m agentmem
serve --roles projections`` processes at once, and times them from their start until every
projection's checkpoint in the schema has reached the last event of the log it reads
(read from the seeding service's own checkpoints):

- ``one_s`` / ``three_s``: seconds until every projection has caught up;
- ``speedup``: ``one_s / three_s``.

Startup (a process, its migrations, its leases) is inside the time, as it is in a deploy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]

from agentmem import Client
from bench import env
from bench.harness import Config, Metric, Run, Workload
from bench.messages import TEXT
from bench.pg import postgres_store

MESSAGES = 200_000
SINGLES = 5_000  # agents, tools and users each
QUICK_FACTOR = 50
IN_FLIGHT = 32


async def seed(client: Client, messages: int, singles: int) -> None:
    org_id = str((await client.create_org("spread")).fields["org_id"])
    agent_id = str((await client.create_agent("talker", org_id=org_id)).fields["agent_id"])
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(kind: str, n: int) -> None:
        async with slots:
            if kind == "batch":
                batch = [{"role": "user", "content": TEXT.format(n=m)} for m in range(1_000)]
                await client.append_messages(f"chat-{n % 10}", agent_id, batch, org_id=org_id)
            elif kind == "agent":
                await client.create_agent(f"agent {n}", org_id=org_id)
            elif kind == "tool":
                await client.register_tool(f"tool_{n}", org_id=org_id)
            else:
                await client.register_user(
                    org_id, f"user {n}", f"user{n}@spread.example", "bench-password-1"
                )

    calls = [one("batch", n) for n in range(max(1, messages // 1_000))]
    for kind in ("agent", "tool", "user"):
        calls += [one(kind, n) for n in range(singles)]
    await asyncio.gather(*calls)


async def checkpoints(store: str) -> dict[str, int]:
    conn = await asyncpg.connect(store)
    try:
        return {
            r["projection"]: int(r["seq"]) for r in await conn.fetch("SELECT * FROM checkpoints")
        }
    except asyncpg.UndefinedTableError:
        return {}
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def spread_session(cfg: Config) -> AsyncIterator[Run]:
    name = "projection-spread"
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(env.nats_server(cfg, name))
        quick = cfg.sizes.conversation < 100_000
        factor = QUICK_FACTOR if quick else 1
        async with env.service(cfg, url, f"{name}-seed", 2) as seeding:
            (nc,) = await stack.enter_async_context(env.connections(url, 1))
            client = env.client(nc, seeding.token)
            started = time.perf_counter()
            await seed(client, MESSAGES // factor, SINGLES // factor)
            status = await env.projections_settled(client)
            targets = {n: int(p["checkpoint"]) for n, p in status["projections"].items()}
            events = int(status["stream"]["last_seq"])
            cfg.note(
                f"projection-spread: {events:,} events seeded in "
                f"{time.perf_counter() - started:.0f} s; checkpoints {targets}"
            )
        runs = iter(range(1_000))

        async def catch_up(processes: int) -> float:
            async with contextlib.AsyncExitStack() as inner:
                store = await inner.enter_async_context(
                    postgres_store(f"{name}-{processes}-{next(runs)}")
                )
                started = time.perf_counter()
                await asyncio.gather(
                    *(
                        inner.enter_async_context(
                            env.service(
                                cfg,
                                url,
                                f"{name}-{processes}-{i}-{started:.0f}",
                                2,
                                store,
                                {"AGENTMEM_ROLES": "projections"},
                            )
                        )
                        for i in range(processes)
                    )
                )
                while True:
                    now = await checkpoints(store)
                    if all(now.get(p, 0) >= seq for p, seq in targets.items()):
                        return time.perf_counter() - started
                    await asyncio.sleep(0.05)

        async def run(warmup: bool) -> dict[str, float]:
            one = await catch_up(1)
            three = await catch_up(3)
            return {"one_s": one, "three_s": three, "speedup": one / three}

        yield run


WORKLOAD = Workload(
    "projection-spread-postgres",
    "projections on Postgres: one process against three",
    (
        Metric("one_s", "one process: the whole log applied in", "s"),
        Metric("three_s", "three processes, the leases spread: applied in", "s"),
        Metric("speedup", "one process's time / three processes' time", "x"),
    ),
    spread_session,
    group="projection-spread",
)
# Run when named: it needs a Postgres server and seeds a log of its own.
ON_REQUEST = [WORKLOAD]
