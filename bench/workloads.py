"""AgentMem workloads: ``agentmem.Client`` in this process against ``python -m agentmem serve``
in another (as the service's administrator, whose key its first start saved)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

import nats

from agentmem import Client
from agentmem.commands import MAX_MESSAGES_PER_BATCH
from agentmem.domain.passwords import DEFAULT_COST
from agentmem.errors import UnavailableError
from agentmem.keys import KeyRing
from agentmem.projections.base import Projection
from agentmem.projections.replay import replay
from agentmem.projections.users import UsersProjection
from agentmem.store import open_store
from bench import env
from bench.harness import (
    Config,
    Metric,
    Run,
    Session,
    Workload,
    percentile,
    request_metrics,
    two_ways,
)
from bench.messages import IN_FLIGHT, LAST_N, TEXT, visible
from bench.pg import postgres_store

MINIMAL_COST = 2  # the smallest scrypt n: the command pipeline without the KDF
PASSWORD = "correct horse battery"


@contextlib.asynccontextmanager
async def clients(
    cfg: Config, name: str, password_cost: int = MINIMAL_COST
) -> AsyncIterator[list[Client]]:
    """A fresh nats-server, the service on it, and ``connections`` clients."""
    async with (
        env.nats_server(cfg, name) as url,
        env.service(cfg, url, name, password_cost) as svc,
        env.client_connections(url, cfg.sizes.connections, svc.token) as conns,
    ):
        yield [env.client(nc, svc.token) for nc in conns]


# Commands ---------------------------------------------------------------------------------
def register_user(password_cost: int, name: str) -> Session:
    """Each registration is an atomic batch of two messages (the email reservation and the
    user), after loading the org and the reservation subject, and a scrypt hash."""

    @contextlib.asynccontextmanager
    async def session(cfg: Config) -> AsyncIterator[Run]:
        async with clients(cfg, name, password_cost) as cs:
            org_id = (await cs[0].create_org("bench")).fields["org_id"]
            numbers = itertools.count()

            async def call(worker: int, i: int) -> None:
                n = next(numbers)
                client = cs[worker % len(cs)]
                await client.register_user(org_id, f"User {n}", f"user{n}@bench.example", PASSWORD)

            async def run(warmup: bool) -> dict[str, float]:
                kdf = password_cost > MINIMAL_COST
                return await two_ways(cfg, name, call, warmup, kdf=kdf)

            yield run

    return session


@contextlib.asynccontextmanager
async def rename_org(cfg: Config) -> AsyncIterator[Run]:
    """One JetStream message per command on an existing aggregate (cached state, expected
    sequence = its version). Each of the 64 workers renames its own org: no conflicts."""
    async with clients(cfg, "rename-org") as cs:
        orgs = [
            (await cs[0].create_org(f"org {w}")).fields["org_id"] for w in range(cfg.sizes.clients)
        ]

        async def call(worker: int, i: int) -> None:
            await cs[worker % len(cs)].rename_org(orgs[worker], f"name {i}")

        async def run(warmup: bool) -> dict[str, float]:
            return await two_ways(cfg, "rename-org", call, warmup)

        yield run


@contextlib.asynccontextmanager
async def append_message(cfg: Config) -> AsyncIterator[Run]:
    """One message per command (``agentmem.cmd.message.append``), a sentence or two, by one
    agent. Each of the 64 workers appends to its own conversation: no conflicts."""
    async with clients(cfg, "append-message") as cs:
        agent_id = str((await cs[0].create_agent("bench agent")).fields["agent_id"])

        async def call(worker: int, i: int) -> None:
            client = cs[worker % len(cs)]
            await client.append_message(f"bench-{worker}", agent_id, "user", TEXT.format(n=i))

        async def run(warmup: bool) -> dict[str, float]:
            return await two_ways(cfg, "append-message", call, warmup)

        yield run


# Queries ----------------------------------------------------------------------------------
async def wait_visible(client: Client, user_id: str, seq: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            await client.get_user(user_id, after_seq=seq)
            return
        except UnavailableError:
            if time.monotonic() > deadline:
                raise


@contextlib.asynccontextmanager
async def point_query(cfg: Config) -> AsyncIterator[Run]:
    """User get by id, over a users table as large as the raw query's."""
    n = cfg.sizes.query_rows
    async with env.nats_server(cfg, "point-query") as url:
        await env.ensure_stream(url)
        async with env.connections(url, 1) as (nc,):
            last, user_ids = await env.seed_users(nc, n, keep_ids=True)
        async with (
            env.service(cfg, url, "point-query", MINIMAL_COST) as svc,
            env.client_connections(url, cfg.sizes.connections, svc.token) as conns,
        ):
            cs = [env.client(c, svc.token) for c in conns]
            await wait_visible(cs[0], user_ids[-1], last)

            async def call(worker: int, i: int) -> None:
                await cs[worker % len(cs)].get_user(user_ids[(i * 7919) % n])

            async def run(warmup: bool) -> dict[str, float]:
                return await two_ways(cfg, "point query", call, warmup)

            yield run


@contextlib.asynccontextmanager
async def last_50(cfg: Config) -> AsyncIterator[Run]:
    """The last 50 messages of a conversation (``agentmem.q.message.last``, n=50) as long as
    the raw one's: appended beforehand in batches of 1,000, until visible to queries."""
    total = cfg.sizes.last_conversation
    session_id = "bench-last"
    async with clients(cfg, "last-50") as cs:
        agent_id = str((await cs[0].create_agent("bench agent")).fields["agent_id"])
        per = MAX_MESSAGES_PER_BATCH
        batches = [
            [{"role": "user", "content": TEXT.format(n=n)} for n in range(s, min(s + per, total))]
            for s in range(0, total, per)
        ]
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def append(b: int) -> int:
            async with slots:
                written = await cs[b % len(cs)].append_messages(session_id, agent_id, batches[b])
                return written.seq

        seqs = await asyncio.gather(*(append(b) for b in range(len(batches))))
        await visible(cs[0], session_id, max(seqs))
        found = len(await cs[0].last_messages(session_id, LAST_N))
        if found != min(LAST_N, total):
            raise RuntimeError(f"last {LAST_N} answered {found} messages")

        async def call(worker: int, i: int) -> None:
            await cs[worker % len(cs)].last_messages(session_id, LAST_N)

        async def run(warmup: bool) -> dict[str, float]:
            return await two_ways(cfg, "last-50", call, warmup)

        yield run


# Replay -----------------------------------------------------------------------------------
async def replay_child(
    url: str, store: str, events: int, projection: Projection | None = None
) -> dict[str, float]:
    """In a child process: ``projections.replay.replay`` of a projection (the users one
    unless told) into a fresh store (an SQLite file or a Postgres schema); its own clock and
    peak RSS."""
    nc = await nats.connect(url)
    db = await open_store(store)
    keys = KeyRing(nc, env.master_keys())
    await keys.start()
    rss_start = env.peak_rss_mb()
    started = time.perf_counter()
    result = await replay(nc, db, projection or UsersProjection(), keys=keys)
    seconds = time.perf_counter() - started
    await keys.stop()
    await db.close()
    await nc.close()
    return {
        "events": result.events,
        "seconds": seconds,
        "rss_start": rss_start,
        "rss": env.peak_rss_mb(),
    }


def replay_session(cfg: Config) -> contextlib.AbstractAsyncContextManager[Run]:
    return env.replay_in_child(cfg, "replay")


def replay_postgres_session(cfg: Config) -> contextlib.AbstractAsyncContextManager[Run]:
    return env.replay_in_child(cfg, "replay", postgres_store)


# Write-to-visible lag ---------------------------------------------------------------------
@contextlib.asynccontextmanager
async def lag(cfg: Config) -> AsyncIterator[Run]:
    """Rename-org commands at a steady rate (open loop); after each one's ack, a get with
    ``after_seq`` = its seq. The lag is from the ack to that query's answer. Commands go
    round-robin over enough orgs that one org is renamed every 250 ms: no conflicts while
    the service keeps up."""
    async with clients(cfg, "lag") as cs:
        count = max(cfg.sizes.clients, int(cfg.sizes.lag_rate / 4))
        orgs = [(await cs[0].create_org(f"org {w}")).fields["org_id"] for w in range(count)]

        async def run(warmup: bool) -> dict[str, float]:
            rate = cfg.sizes.lag_rate
            total = max(1, int(rate * cfg.sizes.lag_seconds * (0.4 if warmup else 1.0)))
            lags: list[float] = []
            stale = errors = 0
            first_error: list[str] = []

            async def one(i: int) -> None:
                nonlocal stale, errors
                org_id, client = orgs[i % len(orgs)], cs[i % len(cs)]
                try:
                    written = await client.rename_org(org_id, f"name {i}")
                    acked = time.perf_counter()
                    got = await client.get_org(org_id, after_seq=written.seq)
                    lags.append(time.perf_counter() - acked)
                    stale += got.version < written.seq
                except Exception as exc:
                    errors += 1
                    if not first_error:
                        first_error.append(repr(exc))

            tasks: list[asyncio.Task[None]] = []
            started = time.perf_counter()
            for i in range(total):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            sent = time.perf_counter() - started
            _, late = await asyncio.wait(tasks, timeout=cfg.sizes.seconds + 10)
            for task in late:
                task.cancel()
            if not lags:
                raise RuntimeError(
                    f"lag: no command of {total} was read back; first error: "
                    f"{first_error[0] if first_error else None}"
                )
            if errors or late or stale:
                cfg.note(
                    f"lag: {errors} errors, {len(late)} unfinished, {stale} stale reads "
                    f"of {total}; first error: {first_error[0] if first_error else None}"
                )
            return {
                "p50": percentile(lags, 0.5) * 1e3,
                "p99": percentile(lags, 0.99) * 1e3,
                "rate": len(lags) / sent,
            }

        yield run


REGISTER_SCRYPT = f"register-user (scrypt 2^{DEFAULT_COST.bit_length() - 1})"
REGISTER_MINIMAL = "register-user (KDF minimal)"

WORKLOADS = [
    Workload(
        "register-user-scrypt",
        REGISTER_SCRYPT,
        request_metrics("cmd/s", None),
        register_user(DEFAULT_COST, REGISTER_SCRYPT),
        group="register-user",
    ),
    Workload(
        "register-user-minimal",
        REGISTER_MINIMAL,
        request_metrics("cmd/s", "raw-command", "peer:save_rate"),
        register_user(MINIMAL_COST, REGISTER_MINIMAL),
        group="register-user",
    ),
    Workload(
        "rename-org",
        "rename-org",
        request_metrics("cmd/s", "raw-command", "peer:save_rate"),
        rename_org,
    ),
    Workload(
        "append-message",
        "append-message",
        request_metrics("cmd/s", "raw-command", "peer:save_rate"),
        append_message,
    ),
    Workload(
        "point-query", "point query (user get)", request_metrics("req/s", "raw-query"), point_query
    ),
    Workload("last-50", "last 50 messages", request_metrics("req/s", "raw-last50"), last_50),
    Workload(
        "replay",
        "replay users into SQLite",
        (
            Metric("rate", "events", "events/s", ("raw-projection:rate",)),
            Metric("rss", "peak RSS (child)", "MB", ("raw-projection:rss",)),
            Metric("rss_growth", "RSS growth during the run", "MB", ("raw-projection:rss_growth",)),
        ),
        replay_session,
    ),
    Workload(
        "lag",
        "write-to-visible lag",
        (
            Metric("p50", "p50", "ms"),
            Metric("p99", "p99", "ms"),
            Metric("rate", "commands achieved", "cmd/s"),
        ),
        lag,
    ),
]

# Run when named (--only replay-postgres): it needs a Postgres server.
ON_REQUEST = [
    Workload(
        "replay-postgres",
        "replay users into Postgres",
        (
            Metric("rate", "events", "events/s", ("raw-projection:rate", "replay:rate")),
            Metric("rss", "peak RSS (child)", "MB", ("raw-projection:rss",)),
        ),
        replay_postgres_session,
    ),
]
