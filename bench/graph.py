"""The knowledge graph at scale (issue 14): walks over ``ENTITIES`` entities and ``3 x``
as many relations (100,000 and 300,000; 2,000 and 6,000 with --quick), on each store, and
relation assertions per second.

Setup (once per workload, not timed): the graph's rows are written into the store through
the graph projection's own ``project`` and ``Store.apply`` (commits of 1,000 synthetic
``entity.created`` or ``relation.asserted`` events), so the tables, indexes and rows are
exactly what the service makes; then a service starts on that store. Relations join two
entities drawn at random (seeded), with one of eight predicates, valid since a fixed time:
on average six relations touch an entity, either direction.

Each run then asks, one request at a time, ``WALKS`` times each, from random entities:

- ``d1``, ``d2``, ``d3``: ``agentmem.q.graph.neighbors`` at depth 1, 2 and 3 (limit 1,000);
- ``path4``: ``agentmem.q.graph.path`` between two random entities, ``max_depth`` 4;
- ``assert1``: ``relation.assert`` per second, one client, one at a time; ``assert64``: 64
  concurrent clients (on 8 connections), each fact about one of 1,000 subjects created for it.

``raw-graph-*`` is the baseline in the same run: the same named reads
(``agentmem.projections.graph.neighbors`` and ``path``, so the same SQL) called in this
process without NATS, the service or authorization: on SQLite over a plain connection on
the calling thread (the store itself moves a read past its loop budget to a reader thread),
on Postgres through the store. What the recursive queries themselves cost.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

from agentmem import Client, subjects
from agentmem.eventlog import H_TIME, StoredCommit
from agentmem.events import AnyEvent, EntityCreated, RelationAsserted
from agentmem.projections import graph as reads
from agentmem.projections.migrations import MIGRATIONS
from agentmem.store import ProjectionBatch, Store, open_store
from agentmem.store.sqlite import sqlite3
from bench import env
from bench.harness import Config, Loop, Metric, Run, Workload, check, concurrent, sequential
from bench.pg import postgres_store

WALKS = 300  # one at a time, per depth, per run
ASSERTS = 500  # one client, per run
ASSERTS_CONCURRENT = 3_000  # over 64 clients, per run
PER_COMMIT = 1_000
PREDICATES = ("knows", "likes", "met", "visited", "owns", "mentions", "follows", "wrote")
T0 = 1_700_000_000_000
ORG = "bench-graph-org"


def sizes(cfg: Config) -> tuple[int, int]:
    """Entities and relations: 100,000 and 300,000 (a fiftieth with --quick)."""
    entities = 100_000 if cfg.sizes.search >= 100_000 else 2_000
    return entities, 3 * entities


def entity_id(n: int) -> str:
    return f"e{n:07d}-0"


async def fill(store: Store, entities: int, relations: int) -> None:
    """The graph's rows, made by the projection itself from synthetic commits."""
    await store.migrate(MIGRATIONS)
    rng = random.Random(14)
    seq = 0

    async def commit(events: list[AnyEvent]) -> None:
        nonlocal seq
        seq += 1
        stored = StoredCommit(
            seq,
            subjects.event(ORG, "entity", "bench"),
            {H_TIME: str(T0 + seq)},
            events,
        )
        ops = reads.PROJECTION.project(stored)
        await store.apply(
            ProjectionBatch("graph", seq, [(seq, stored.subject, ops)], after=seq - 1)
        )

    made: list[AnyEvent] = []
    for n in range(entities):
        name = f"Person {n}"
        made.append(EntityCreated(entity_id(n), ORG, "person", name))
        if len(made) == PER_COMMIT:
            await commit(made)
            made = []
    if made:
        await commit(made)
    facts: list[AnyEvent] = []
    counts = [0] * entities
    for _ in range(relations):
        a, b = rng.randrange(entities), rng.randrange(entities)
        if a == b:
            b = (b + 1) % entities
        counts[a] += 1
        predicate = rng.choice(PREDICATES)
        facts.append(
            RelationAsserted(
                relation_id=f"{entity_id(a)}_{counts[a]}",
                org_id=ORG,
                subject_id=entity_id(a),
                predicate=predicate,
                object_id=entity_id(b),
                fact=f"Person {a} {predicate} Person {b}",
                confidence=rng.random(),
                valid_from=T0,
            )
        )
        if len(facts) == PER_COMMIT:
            await commit(facts)
            facts = []
    if facts:
        await commit(facts)


@contextlib.asynccontextmanager
async def graph_store(cfg: Config, kind: str, name: str) -> AsyncIterator[str]:
    """A store holding the benchmark's graph; its URL."""
    async with contextlib.AsyncExitStack() as stack:
        if kind == "postgres":
            url = await stack.enter_async_context(postgres_store(name))
        else:
            (cfg.tmp / name).mkdir(parents=True, exist_ok=True)
            url = str(cfg.tmp / name / "graph.db")
        store = await open_store(url)
        try:
            await fill(store, *sizes(cfg))
        finally:
            await store.close()
        yield url


def _pairs(cfg: Config, count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    entities, _ = sizes(cfg)
    return [
        (entity_id(rng.randrange(entities)), entity_id(rng.randrange(entities)))
        for _ in range(count)
    ]


def _figures(loop: Loop, key: str) -> dict[str, float]:
    return {f"{key}_p50": loop.us(0.5) / 1000, f"{key}_p99": loop.us(0.99) / 1000}


def service_session(kind: str) -> Any:
    name = f"graph-{kind}"

    @contextlib.asynccontextmanager
    async def session(cfg: Config) -> AsyncIterator[Run]:
        async with contextlib.AsyncExitStack() as stack:
            store = await stack.enter_async_context(graph_store(cfg, kind, name))
            url = await stack.enter_async_context(env.nats_server(cfg, name))
            svc = await stack.enter_async_context(env.service(cfg, url, name, 2, store))
            conns = await stack.enter_async_context(
                env.client_connections(url, cfg.sizes.connections, svc.token)
            )
            clients = [env.client(nc, svc.token) for nc in conns]
            admin = clients[0]
            subjects_ = [
                str((await admin.create_entity("person", f"Asserter {n}")).fields["entity_id"])
                for n in range(1_000 if cfg.sizes.search >= 100_000 else 100)
            ]
            target = subjects_[0]
            asserted = [0]

            async def walk(depth: int, count: int, seed: int) -> Loop:
                starts = _pairs(cfg, count, seed)

                async def call(worker: int, i: int) -> None:
                    found = await admin.neighbors(starts[i][0], depth=depth, limit=1_000)
                    if not found.nodes:
                        raise RuntimeError("a walk found not even its start")

                return await sequential(call, count, cfg.sizes.seconds * 3)

            async def path(count: int, seed: int) -> Loop:
                pairs = _pairs(cfg, count, seed)

                async def call(worker: int, i: int) -> None:
                    await admin.graph_path(*pairs[i], max_depth=4)

                return await sequential(call, count, cfg.sizes.seconds * 3)

            async def assertion(client: Client) -> None:
                asserted[0] += 1
                n = asserted[0]
                subject = subjects_[n % len(subjects_)]
                await client.assert_relation(subject, "mentions", target, fact=f"fact {n}")

            async def run(warmup: bool) -> dict[str, float]:
                result: dict[str, float] = {}
                seed = 1 if warmup else 2
                for depth in (1, 2, 3):
                    loop = await walk(depth, cfg.count(WALKS, warmup), seed + depth)
                    check(cfg, f"{name} depth {depth}", loop)
                    result |= _figures(loop, f"d{depth}")
                loop = await path(cfg.count(WALKS, warmup), seed)
                check(cfg, f"{name} path", loop)
                result |= _figures(loop, "path4")
                one = await sequential(
                    lambda w, i: assertion(admin), cfg.count(ASSERTS, warmup), cfg.sizes.seconds
                )
                check(cfg, f"{name} assert", one)
                result["assert1"] = one.rate
                many = await concurrent(
                    lambda w, i: assertion(clients[w % len(clients)]),
                    cfg.sizes.clients,
                    cfg.count(ASSERTS_CONCURRENT, warmup),
                    cfg.sizes.seconds,
                )
                check(cfg, f"{name} assert x64", many)
                result["assert64"] = many.rate
                return result

            yield run

    return session


class PlainSQLite:
    """The least a walk can cost on SQLite: the store's own statements on a plain
    connection, run on the calling thread (no loop budget, no reader thread)."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    async def fetch_all(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        cursor = self.conn.execute(sql, args)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    async def fetch_one(self, sql: str, *args: Any) -> dict[str, Any] | None:
        rows = await self.fetch_all(sql, *args)
        return rows[0] if rows else None

    async def close(self) -> None:
        self.conn.close()


def raw_session(kind: str) -> Any:
    name = f"raw-graph-{kind}"

    @contextlib.asynccontextmanager
    async def session(cfg: Config) -> AsyncIterator[Run]:
        async with graph_store(cfg, kind, name) as url:
            # SQLite: a plain connection; Postgres: the store (an asyncpg pool) itself.
            store: Any = PlainSQLite(url) if kind == "sqlite" else await open_store(url)
            f = reads.EdgeFilter(org_id=ORG, at=reads.At(T0 + 1))
            try:

                async def run(warmup: bool) -> dict[str, float]:
                    result: dict[str, float] = {}
                    seed = 1 if warmup else 2
                    count = cfg.count(WALKS, warmup)
                    for depth in (1, 2, 3):
                        starts = _pairs(cfg, count, seed + depth)

                        async def call(
                            worker: int, i: int, depth: int = depth, starts: Any = starts
                        ) -> None:
                            await reads.neighbors(store, starts[i][0], depth, 1_001, f)

                        loop = await sequential(call, count, cfg.sizes.seconds * 3)
                        check(cfg, f"{name} depth {depth}", loop)
                        result |= _figures(loop, f"d{depth}")
                    pairs = _pairs(cfg, count, seed)

                    async def find(worker: int, i: int) -> None:
                        await reads.path(store, *pairs[i], 4, f)

                    loop = await sequential(find, count, cfg.sizes.seconds * 3)
                    check(cfg, f"{name} path", loop)
                    return result | _figures(loop, "path4")

                yield run
            finally:
                await store.close()

    return session


def _walk_metrics(raw: str | None) -> tuple[Metric, ...]:
    def against(key: str) -> tuple[str, ...]:
        return (f"{raw}:{key}",) if raw else ()

    labels = {"d1": "neighbors depth 1", "d2": "neighbors depth 2", "d3": "neighbors depth 3"}
    labels["path4"] = "path, max depth 4"
    found = []
    for key, label in labels.items():
        found.append(Metric(f"{key}_p50", f"{label} p50", "ms", against(f"{key}_p50")))
        found.append(Metric(f"{key}_p99", f"{label} p99", "ms", against(f"{key}_p99")))
    return tuple(found)


def workloads(kind: str) -> list[Workload]:
    raw_id = f"raw-graph-{kind}"
    raw = Workload(
        raw_id,
        f"raw graph reads on the store ({kind})",
        _walk_metrics(None),
        raw_session(kind),
        group="graph",
    )
    served = Workload(
        f"graph-{kind}",
        f"graph 100k entities, 300k relations ({kind})",
        (
            *_walk_metrics(raw_id),
            Metric("assert1", "relation.assert, one client", "/s"),
            Metric("assert64", "relation.assert, 64 clients", "/s"),
        ),
        service_session(kind),
        group="graph",
    )
    return [raw, served]


# Run when named (--only graph, or graph-sqlite, graph-postgres): they take minutes to fill.
ON_REQUEST = [*workloads("sqlite"), *workloads("postgres")]
