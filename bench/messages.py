"""Conversations: batch appends into one session, and "the last 50 messages" of it once it
holds ``sizes.conversation`` messages (100,000; 2,000 with --quick), on each store.

Each run appends a fresh conversation of that many messages, 1,000 per ``append_batch``
command, ``IN_FLIGHT`` commands at a time over the bench's connections, and reports:

- ``rate``: messages per second acknowledged (stored in the log), first send to last ack;
- ``visible_rate``: messages per second until the last one is in the messages table
  (the projection, with its full-text index), first send to a query that saw it;
- ``last50_p50`` / ``p99``: ``agentmem.q.message.last`` with n=50 on that conversation,
  one request at a time.

The service runs as ``python -m agentmem serve`` in a process of its own, on a fresh SQLite
file, or on a fresh schema of the Postgres server at ``AGENTMEM_BENCH_POSTGRES`` (default:
``AGENTMEM_TEST_POSTGRES``, else the local one).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

from agentmem import Client
from agentmem.commands import MAX_MESSAGES_PER_BATCH
from agentmem.errors import UnavailableError
from bench import env
from bench.harness import Config, Metric, Run, Session, Workload, percentile
from bench.pg import postgres_store

IN_FLIGHT = 8  # append_batch commands at a time
LAST_N = 50
LAST_REQUESTS = 500  # one at a time, per run
# A message as a chat has them: a sentence or two.
TEXT = (
    "message {n}: could you check whether the order placed on Tuesday has shipped, "
    "and tell me when it should arrive?"
)


async def visible(client: Client, session_id: str, seq: int, seconds: float = 600) -> None:
    """Until the messages projection has applied ``seq``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await client.last_messages(session_id, 1, after_seq=seq)
            return
        except UnavailableError:  # a query waits 5 s at most; the projection may take longer
            if time.monotonic() > deadline:
                raise


def conversation(kind: str) -> Session:
    name = f"messages-{kind}"

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
            conns = await stack.enter_async_context(
                env.client_connections(url, cfg.sizes.connections, svc.token)
            )
            clients = [env.client(nc, svc.token) for nc in conns]
            agent_id = str((await clients[0].create_agent("bench agent")).fields["agent_id"])
            runs = itertools.count()

            async def run(warmup: bool) -> dict[str, float]:
                session_id = f"bench-{next(runs)}"
                total = cfg.count(cfg.sizes.conversation, warmup)
                per = MAX_MESSAGES_PER_BATCH
                batches = [
                    [
                        {"role": "user", "content": TEXT.format(n=n)}
                        for n in range(s, min(s + per, total))
                    ]
                    for s in range(0, total, per)
                ]
                slots = asyncio.Semaphore(IN_FLIGHT)

                async def append(b: int) -> int:
                    async with slots:
                        client = clients[b % len(clients)]
                        written = await client.append_messages(session_id, agent_id, batches[b])
                        return written.seq

                started = time.perf_counter()
                seqs = await asyncio.gather(*(append(b) for b in range(len(batches))))
                acked = time.perf_counter() - started
                await visible(clients[0], session_id, max(seqs))
                seen = time.perf_counter() - started

                latencies = []
                client = clients[0]
                for _ in range(cfg.count(LAST_REQUESTS, warmup)):
                    before = time.perf_counter()
                    last = await client.last_messages(session_id, LAST_N)
                    latencies.append(time.perf_counter() - before)
                if len(last) != min(LAST_N, total):
                    raise RuntimeError(f"last {LAST_N} answered {len(last)} messages")
                return {
                    "rate": total / acked,
                    "visible_rate": total / seen,
                    "last50_p50": percentile(latencies, 0.5) * 1e6,
                    "last50_p99": percentile(latencies, 0.99) * 1e6,
                }

            yield run

    return session


def metrics() -> tuple[Metric, ...]:
    return (
        Metric("rate", f"batch append ({IN_FLIGHT} x 1,000 in flight), acked", "msg/s"),
        Metric("visible_rate", "batch append, until visible to queries", "msg/s"),
        Metric("last50_p50", "last 50 messages p50", "µs"),
        Metric("last50_p99", "last 50 messages p99", "µs"),
    )


def workload(kind: str) -> Workload:
    return Workload(
        f"messages-{kind}",
        f"conversation ({kind}): append and last 50",
        metrics(),
        conversation(kind),
        group="messages",
    )


WORKLOADS = [workload("sqlite")]
# Run when named (--only messages, or messages-postgres): it needs a Postgres server.
ON_REQUEST = [workload("postgres")]
