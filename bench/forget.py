"""Forgetting a user who has a history: ``agentmem.cmd.user.forget`` of a user with
10,000 messages (100 conversations of 100) and 10,000 memories (with --quick: 200 and 200).

Each run registers a fresh user, writes their messages and memories (``append_batch`` and
``add_batch``, 1,000 at a time), waits until the projections show them, then forgets the
user and reports:

- ``forget_s``: the command, from the request to its reply (every data key deleted, erased
  on disk, and ``data.forgotten`` appended);
- ``gone_s``: until the projections have dropped every row (a memory list of the user is
  empty and the messages are gone), from the same start;
- ``keys``: how many data keys the forget deleted (one per memory, one per conversation,
  the profile's and the email reservation's).

The service runs as ``python -m agentmem serve`` in a process of its own, on a fresh SQLite
file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

from agentmem.errors import UnavailableError
from bench import env
from bench.harness import QUICK, Config, Metric, Run, Workload

MESSAGES = 10_000
MEMORIES = 10_000
PER_SESSION = 100
BATCH = 1_000
IN_FLIGHT = 8


@contextlib.asynccontextmanager
async def forget_user(cfg: Config) -> AsyncIterator[Run]:
    name = "forget-user"
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(env.nats_server(cfg, name))
        svc = await stack.enter_async_context(env.service(cfg, url, name, 2))
        (nc,) = await stack.enter_async_context(env.connections(url, 1))
        client = env.client(nc, svc.token)
        org_id = str((await client.create_org("forgetful")).fields["org_id"])
        agent_id = str((await client.create_agent("bench", org_id=org_id)).fields["agent_id"])
        runs = itertools.count()
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def run(warmup: bool) -> dict[str, float]:
            n = next(runs)
            quick = cfg.sizes == QUICK
            messages = cfg.count(200 if quick else MESSAGES, warmup)
            memories = cfg.count(200 if quick else MEMORIES, warmup)
            user = await client.register_user(
                org_id, f"User {n}", f"user{n}@bench.example", "long-enough-password"
            )
            user_id = str(user.fields["user_id"])

            async def append(start: int) -> None:
                async with slots:
                    session = f"s{n}-{start // PER_SESSION}"
                    count = min(PER_SESSION, messages - start)
                    batch = [
                        {"role": "user", "content": f"message {i} of {user_id}"}
                        for i in range(count)
                    ]
                    await client.append_messages(
                        session, agent_id, batch, user_id=user_id, org_id=org_id
                    )

            async def remember(start: int) -> None:
                async with slots:
                    batch = [
                        {"content": f"fact {i} about {user_id}", "user_id": user_id}
                        for i in range(start, min(start + BATCH, memories))
                    ]
                    await client.add_memories(batch, org_id=org_id)

            await asyncio.gather(*(append(s) for s in range(0, messages, PER_SESSION)))
            await asyncio.gather(*(remember(s) for s in range(0, memories, BATCH)))
            while True:  # until the projections show them (a query waits 5 s at most)
                try:
                    await client.list_memories(org_id=org_id, user_id=user_id, limit=1)
                    await client.list_messages(f"s{n}-0", org_id=org_id, limit=1)
                    break
                except UnavailableError:
                    continue

            client.timeout = 600.0  # erasing 10,000 keys takes longer than a request's 10 s
            started = time.perf_counter()
            forgotten = await client.forget_user(user_id)
            forget_s = time.perf_counter() - started
            while True:  # a query waits 5 s at most; dropping 20,000 rows may take longer
                try:
                    page = await client.list_memories(org_id=org_id, user_id=user_id, limit=1)
                    found = await client.list_messages(f"s{n}-0", org_id=org_id, limit=1)
                    break
                except UnavailableError:
                    if time.perf_counter() - started > 600:
                        raise
            gone_s = time.perf_counter() - started
            if page.items or found.items:
                raise RuntimeError("the forgotten user's rows are still there")
            return {"forget_s": forget_s, "gone_s": gone_s, "keys": forgotten.fields["keys"]}

        yield run


WORKLOADS: list[Workload] = []
# Run when named (--only forget-user): minutes of writing before each forget.
ON_REQUEST = [
    Workload(
        "forget-user",
        "forget a user with 10,000 messages and 10,000 memories",
        (
            Metric("forget_s", "user.forget, request to reply", "s"),
            Metric("gone_s", "until every row is gone", "s"),
            Metric("keys", "data keys deleted", "keys"),
        ),
        forget_user,
    )
]
