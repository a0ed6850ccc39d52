"""A long conversation: ``message.list`` filtered to a recent window and to one role, and
what an append with a ``command_id`` costs at 10 messages and at ``LONG`` (1,000,000;
2,000 with --quick), on each store.

The session appends a conversation of ``LONG`` messages (100 per ``append_batch``, roles
alternating user and assistant) and one of 10, waits until both are in the messages table,
then each run measures, one request at a time (p50, µs):

- ``recent_p50``: ``agentmem.q.message.list`` with ``since`` = the time the last batch was
  sent (the window holding the last 100 messages: "the last hour" of a conversation that
  gets 100 messages an hour), a page of 50;
- ``role_p50``: the newest 50 of the assistant's messages (``role``, ``order=desc``);
- ``append_short_p50`` / ``append_long_p50``: ``agentmem.cmd.message.append`` with a new
  client ``command_id`` (the retry check: one direct get and one read by key) into the
  10-message and the long conversation, interleaved;
- ``append_plain_p50``: the same append without a ``command_id`` (no check), into the long
  one.

The service runs as ``python -m agentmem serve`` in a process of its own, on a fresh SQLite
file, or on a fresh schema of the Postgres server at ``AGENTMEM_BENCH_POSTGRES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from agentmem import Client, ids
from agentmem.errors import UnavailableError
from bench import env
from bench.harness import Config, Metric, Run, Session, Workload, percentile
from bench.messages import IN_FLIGHT, TEXT, visible
from bench.pg import postgres_store

LONG = 1_000_000
QUICK_LONG = 2_000
SHORT = 10
FILL_BATCH = 100
REQUESTS = 200  # of each kind, one at a time, per run


async def p50_us(call: Callable[[], Awaitable[object]], count: int) -> float:
    latencies = []
    for _ in range(count):
        before = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - before)
    return percentile(latencies, 0.5) * 1e6


async def fill(clients: list[Client], session_id: str, agent_id: str, total: int) -> int:
    """``total`` messages, roles alternating; returns the time (ms) the last batch was sent,
    after every other batch was stored."""
    # 100 a command, not the most (1,000): a projection's pull of 1,000 commits of 1,000
    # messages (~300 MB) overflows the client's 64 MiB pending limit, and the server cuts
    # the service off as a slow consumer (seen at 1,000,000 messages; reported).
    per = FILL_BATCH
    batches = [
        [
            {"role": ("user", "assistant")[n % 2], "content": TEXT.format(n=n)}
            for n in range(s, min(s + per, total))
        ]
        for s in range(0, total, per)
    ]
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def append(b: int) -> int:
        async with slots:
            # On a loaded machine a write may time out: sent again under its command id, it
            # is stored once (what this module measures the cost of).
            for attempt in itertools.count():
                try:
                    written = await clients[b % len(clients)].append_messages(
                        session_id, agent_id, batches[b], command_id=f"fill-{session_id}-{b}"
                    )
                    return written.seq
                except UnavailableError:
                    if attempt >= 10:
                        raise
                    await asyncio.sleep(1)
        raise AssertionError("unreachable")

    await asyncio.gather(*(append(b) for b in range(len(batches) - 1)))
    since_ms = time.time_ns() // 1_000_000
    last = await append(len(batches) - 1)
    await visible(clients[0], session_id, last, seconds=3_600)
    return since_ms


def long_conversation(kind: str) -> Session:
    name = f"long-conversation-{kind}"

    @contextlib.asynccontextmanager
    async def session(cfg: Config) -> AsyncIterator[Run]:
        async with contextlib.AsyncExitStack() as stack:
            store = (
                await stack.enter_async_context(postgres_store(name))
                if kind == "postgres"
                else None
            )
            url = await stack.enter_async_context(env.nats_server(cfg, name))
            svc = await stack.enter_async_context(env.service(cfg, url, name, 2, store))
            conns = await stack.enter_async_context(env.connections(url, cfg.sizes.connections))
            clients = [env.client(nc, svc.token) for nc in conns]
            client = clients[0]
            agent_id = str((await client.create_agent("bench agent")).fields["agent_id"])
            total = QUICK_LONG if cfg.sizes.conversation < 100_000 else LONG
            started = time.perf_counter()
            since_ms = await fill(clients, "long", agent_id, total)
            await fill(clients, "short", agent_id, SHORT)
            cfg.note(
                f"long-conversation-{kind}: {total:,} messages appended and projected in "
                f"{time.perf_counter() - started:.0f} s"
            )
            runs = itertools.count()

            async def run(warmup: bool) -> dict[str, float]:
                count = cfg.count(REQUESTS, warmup)
                n = next(runs)
                page = await client.list_messages("long", since=since_ms, limit=50)
                if len(page.items) != 50 or page.items[0].created_at < since_ms:
                    raise RuntimeError(f"the recent window answered {page.items[:1]}")
                recent = await p50_us(
                    lambda: client.list_messages("long", since=since_ms, limit=50), count
                )
                role = await p50_us(
                    lambda: client.list_messages("long", role="assistant", order="desc", limit=50),
                    count,
                )
                latencies: dict[str, list[float]] = {"short": [], "long": []}
                for i in range(count):
                    for session_id in ("short", "long"):
                        before = time.perf_counter()
                        await client.append_message(
                            session_id,
                            agent_id,
                            "user",
                            f"run {n} message {i}",
                            command_id=ids.new_id(),
                        )
                        latencies[session_id].append(time.perf_counter() - before)
                plain = await p50_us(
                    lambda: client.append_message("long", agent_id, "user", "plain"), count
                )
                return {
                    "recent_p50": recent,
                    "role_p50": role,
                    "append_short_p50": percentile(latencies["short"], 0.5) * 1e6,
                    "append_long_p50": percentile(latencies["long"], 0.5) * 1e6,
                    "append_plain_p50": plain,
                }

            yield run

    return session


def workload(kind: str) -> Workload:
    return Workload(
        f"long-conversation-{kind}",
        f"a long conversation ({kind}): filters and appends with a command id",
        (
            Metric("recent_p50", "list, the window of the last 100, p50", "µs"),
            Metric("role_p50", "list, the assistant's newest 50, p50", "µs"),
            Metric("append_short_p50", "append with command_id at 10 messages, p50", "µs"),
            Metric("append_long_p50", "append with command_id in the long one, p50", "µs"),
            Metric("append_plain_p50", "append without command_id, long one, p50", "µs"),
        ),
        long_conversation(kind),
        group="long-conversation",
    )


# Run when named (--only long-conversation, or one of them): a million messages take a while.
ON_REQUEST = [workload("sqlite"), workload("postgres")]
