"""Semantic and hybrid memory search at scale (issue 13), on each store.

- ``vectors-raw``: the baselines, in this process with the same model: WordLlama embedding
  texts in bulk (texts/s) and one query (p50), and an exact numpy search over a matrix of
  ``sizes.search`` vectors (the whole organization) and over one scope's rows.
- ``vectors-ingest``: ``INGEST`` memories (1,000 per ``memory.add_batch``, ``IN_FLIGHT`` at
  a time) into a running service until ``memory.list`` reads after the last write (the
  memories projection alone, no embedding: the comparison), then until a vector search
  does (the vector projection has embedded and written them too): memories/s.
- ``vectors-search``: one organization of ``sizes.search`` memories (100,000; 2,000 with
  --quick): ``SCOPES`` users of about 1,000 memories each. ``memory.search`` in hybrid mode,
  one request at a time, for one user's scope and for the whole organization (p50, p99);
  the vector side's recall@10 against an exact search in this process over the same
  vectors (the same model run here), on ``RECALL_QUERIES`` queries of one scope and of the
  organization.
- ``vectors-rebuild``: a child process replays the vector projection of that log into a
  fresh SQLite file: the time to embed and write every memory, and its peak RSS.

``--only vectors`` runs the SQLite ones; ``vectors-ingest-postgres`` and
``vectors-search-postgres`` need a Postgres server.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats
import numpy as np

from agentmem import Client, UnavailableError, ids
from agentmem.domain.memories import MAX_BATCH

# Imported here, it limits numpy to one BLAS thread in this process as in the service, so
# that the raw baselines measure the same arithmetic.
from agentmem.embedding.wordllama import WordLlamaEmbedder
from agentmem.keys import KeyRing
from agentmem.projections.replay import replay
from agentmem.projections.vectors import VectorsProjection
from agentmem.store import open_store
from bench import env
from bench.harness import Config, Metric, Run, Session, Workload, check, sequential
from bench.pg import postgres_store

SCOPE = 1_000  # memories per user
IN_FLIGHT = 2  # memory.add_batch commands in flight
RETRIES = 5
SEARCH_REQUESTS = 500  # per query kind, one at a time
RECALL_QUERIES = 50
LIMIT = 10
INGEST = 20_000  # memories per ingest run (--quick: sizes.search // 2)

NAMES = [
    "Ann", "Bob", "Carla", "Dev", "Elif", "Femi", "Gus", "Hana", "Ivan", "Jun",
    "Kofi", "Lena", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq",
]  # fmt: skip
FACTS = [
    "is allergic to {x}", "prefers {x} for breakfast", "works on the {x} project",
    "is learning to play the {x}", "travels to {x} every spring", "keeps a {x} as a pet",
    "asked about {x} pricing last week", "dislikes {x} in meetings", "reads books about {x}",
    "uses {x} to write code", "is saving money for a {x}", "met the team in {x}",
]  # fmt: skip
THINGS = [
    "peanuts", "oat porridge", "billing", "cello", "Lisbon", "parrot", "enterprise plan",
    "long slides", "astronomy", "Rust", "sailboat", "Nairobi", "shellfish", "green tea",
    "search", "violin", "Kyoto", "tortoise", "the free tier", "small talk", "gardening",
    "Python", "camper van", "Montreal", "gluten", "pancakes", "onboarding", "drums",
    "Oslo", "goldfish", "annual billing", "late calls", "chess", "Go", "house", "Lagos",
]  # fmt: skip
QUESTIONS = [
    "what food should be avoided", "which instrument is someone practising", "pets at home",
    "where do they go on holiday", "programming language preferences", "money goals",
    "what do they eat in the morning", "which plan did the customer ask about",
    "hobbies and reading", "what annoys them at work", "nut allergy", "city trips",
]  # fmt: skip


def memory_text(n: int, salt: str = "") -> str:
    """A short fact, different for every ``n``."""
    pick = random.Random(f"{salt}{n}")
    fact = pick.choice(FACTS).format(x=pick.choice(THINGS))
    return f"{pick.choice(NAMES)} {fact} (note {salt}{n})"


async def add_all(client: Client, texts: list[str], users: list[str], org_id: str) -> int:
    """Every text as a memory of ``users[i]``, 1,000 per command; the last sequence."""
    batches = [
        [
            {"content": t, "user_id": u}
            for t, u in zip(texts[s : s + MAX_BATCH], users[s:], strict=False)
        ]
        for s in range(0, len(texts), MAX_BATCH)
    ]
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def add(batch: list[dict[str, Any]]) -> None:
        command_id = ids.new_id()
        async with slots:
            for attempt in range(RETRIES):
                try:
                    # Sent again with its command id when a busy machine makes it late: the
                    # log stores it once.
                    await client.add_memories(batch, org_id=org_id, command_id=command_id)
                    return
                except UnavailableError:
                    if attempt == RETRIES - 1:
                        raise

    await asyncio.gather(*(add(b) for b in batches))
    return client.last_seq


async def searchable(client: Client, org_id: str, seq: int, seconds: float = 900) -> None:
    """Until a vector search reads at ``seq`` (memories and vectors both applied it)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await client.search_memories(
                "probe", org_id=org_id, mode="vector", limit=1, after_seq=seq
            )
            return
        except UnavailableError:  # a query waits 5 s at most; the projections may take longer
            if time.monotonic() > deadline:
                raise


async def listed(client: Client, org_id: str, seq: int, seconds: float = 900) -> None:
    """Until the memories projection has applied ``seq`` (no embedding involved)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await client.list_memories(org_id=org_id, limit=1, after_seq=seq)
            return
        except UnavailableError:
            if time.monotonic() > deadline:
                raise


# The raw baselines ----------------------------------------------------------------------
@contextlib.asynccontextmanager
async def raw_session(cfg: Config) -> AsyncIterator[Run]:
    n = cfg.sizes.search
    embedder = WordLlamaEmbedder()
    texts = [memory_text(i) for i in range(n)]
    matrix = await asyncio.to_thread(embedder.embed, texts)
    scope_rows = np.arange(0, min(SCOPE, n))
    queries = embedder.embed(QUESTIONS)

    async def run(warmup: bool) -> dict[str, float]:
        count = min(n, INGEST)
        started = time.perf_counter()
        await asyncio.to_thread(embedder.embed, texts[:count])
        rate = count / (time.perf_counter() - started)
        one, org, scope = [], [], []
        for i in range(cfg.count(SEARCH_REQUESTS, warmup)):
            clock = time.perf_counter()
            asked = embedder.embed([QUESTIONS[i % len(QUESTIONS)]])[0]
            one.append(time.perf_counter() - clock)
            query = queries[i % len(queries)]
            clock = time.perf_counter()
            scores = matrix @ query
            np.argpartition(-scores, LIMIT)[:LIMIT]
            org.append(time.perf_counter() - clock)
            clock = time.perf_counter()
            scores = matrix[scope_rows] @ asked
            np.argpartition(-scores, LIMIT)[:LIMIT]
            scope.append(time.perf_counter() - clock)
        return {
            "embed_rate": rate,
            "query_ms": float(np.median(one)) * 1000,
            "org_ms": float(np.median(org)) * 1000,
            "scope_ms": float(np.median(scope)) * 1000,
        }

    yield run


# Ingest ---------------------------------------------------------------------------------
def ingest_session(kind: str) -> Session:
    name = f"vectors-ingest-{kind}"

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
            (nc,) = await stack.enter_async_context(env.connections(url, 1))
            client = env.client(nc, svc.token)
            org_id = str((await client.create_org("ingest")).fields["org_id"])
            runs = iter(range(1_000_000))
            count = INGEST if cfg.sizes.search >= 100_000 else cfg.sizes.search // 2

            async def run(warmup: bool) -> dict[str, float]:
                salt = f"r{next(runs)}-"
                size = max(cfg.count(count, warmup), MAX_BATCH)
                texts = [memory_text(i, salt) for i in range(size)]
                users = [f"u{i // SCOPE}" for i in range(size)]
                started = time.perf_counter()
                seq = await add_all(client, texts, users, org_id)
                await listed(client, org_id, seq)
                listed_at = time.perf_counter()
                await searchable(client, org_id, seq)
                return {
                    "rate": size / (time.perf_counter() - started),
                    "listed_rate": size / (listed_at - started),
                }

            yield run

    return session


# Search and recall ----------------------------------------------------------------------
@dataclass(frozen=True)
class Loaded:
    url: str
    client: Client
    org_id: str
    texts: list[str]
    users: list[str]
    ids: list[str]  # memory ids, as texts
    seconds: float


@contextlib.asynccontextmanager
async def loaded_log(cfg: Config, kind: str, name: str) -> AsyncIterator[Loaded]:
    """A service whose one organization holds ``sizes.search`` memories, kept for the run
    (the search and rebuild workloads share it)."""
    async with contextlib.AsyncExitStack() as stack:
        store = (
            await stack.enter_async_context(postgres_store(name)) if kind == "postgres" else None
        )
        url = await stack.enter_async_context(env.nats_server(cfg, name))
        env.master_keys()  # set before the service starts: the rebuild child opens its log
        svc = await stack.enter_async_context(env.service(cfg, url, name, 2, store))
        (nc,) = await stack.enter_async_context(env.connections(url, 1))
        client = env.client(nc, svc.token)
        org_id = str((await client.create_org("searched")).fields["org_id"])
        n = cfg.sizes.search
        texts = [memory_text(i) for i in range(n)]
        users = [f"u{i % max(n // SCOPE, 1)}" for i in range(n)]  # scopes interleaved in time
        started = time.perf_counter()
        seq = await add_all(client, texts, users, org_id)
        await searchable(client, org_id, seq)
        seconds = time.perf_counter() - started
        cfg.note(f"{name}: {n:,} memories added and searchable in {seconds:.1f}s")
        ids: dict[str, str] = {}
        for user in sorted(set(users)):
            cursor = None
            while True:
                page = await client.list_memories(
                    org_id=org_id, user_id=user, limit=500, cursor=cursor
                )
                for memory in page.items:
                    ids[memory.content] = memory.memory_id
                cursor = page.next_cursor
                if cursor is None:
                    break
        listed = [ids[t] for t in texts]
        yield Loaded(url, client, org_id, texts, users, listed, seconds)


def search_session(kind: str) -> Session:
    name = f"vectors-search-{kind}"

    @contextlib.asynccontextmanager
    async def session(cfg: Config) -> AsyncIterator[Run]:
        loaded = await cfg.shared(name, lambda: loaded_log(cfg, kind, name))
        client, org_id = loaded.client, loaded.org_id
        embedder = WordLlamaEmbedder()
        matrix = await asyncio.to_thread(embedder.embed, loaded.texts)
        users = np.array(loaded.users)
        one_user = loaded.users[0]
        scope_rows = np.flatnonzero(users == one_user)

        def exact(question: str, rows: np.ndarray[Any, Any] | None) -> set[str]:
            asked = embedder.embed([question])[0]
            candidates = np.arange(len(loaded.texts)) if rows is None else rows
            scores = matrix[candidates] @ asked
            best = np.argsort(-scores, kind="stable")[:LIMIT]
            return {loaded.ids[int(candidates[i])] for i in best}

        async def recall(scoped: bool) -> float:
            found = 0
            for i in range(RECALL_QUERIES):
                question = f"{QUESTIONS[i % len(QUESTIONS)]} {THINGS[i % len(THINGS)]}"
                scope = {"user_id": one_user} if scoped else {}
                got = await client.search_memories(
                    question, org_id=org_id, mode="vector", min_score=0.0, limit=LIMIT, **scope
                )
                truth = exact(question, scope_rows if scoped else None)
                found += len({m.memory_id for m in got} & truth)
            return found / (RECALL_QUERIES * LIMIT)

        async def timed(scoped: bool, warmup: bool) -> tuple[float, float]:
            scope = {"user_id": one_user} if scoped else {}

            async def call(worker: int, i: int) -> None:
                await client.search_memories(
                    QUESTIONS[i % len(QUESTIONS)], org_id=org_id, limit=LIMIT, **scope
                )

            loop = await sequential(call, cfg.count(SEARCH_REQUESTS, warmup), cfg.sizes.seconds * 3)
            check(cfg, f"{name} {'scope' if scoped else 'org'}", loop)
            return loop.us(0.5) / 1000, loop.us(0.99) / 1000

        async def run(warmup: bool) -> dict[str, float]:
            scope_p50, scope_p99 = await timed(True, warmup)
            org_p50, org_p99 = await timed(False, warmup)
            return {
                "scope_p50": scope_p50,
                "scope_p99": scope_p99,
                "org_p50": org_p50,
                "org_p99": org_p99,
                "recall_scope": await recall(True),
                "recall_org": await recall(False),
            }

        yield run

    return session


# Rebuild --------------------------------------------------------------------------------
async def rebuild_child(url: str, store: str, events: int) -> dict[str, float]:
    """In a child process: replay the vector projection into a fresh store; its own clock
    and peak RSS."""
    nc = await nats.connect(url)
    db = await open_store(store)
    rss_start = env.peak_rss_mb()
    started = time.perf_counter()
    projection = VectorsProjection(WordLlamaEmbedder())
    # The log's personal fields are sealed: the replay opens them with the deployment's keys,
    # as the service's projection does (without them every memory event parks).
    keys = KeyRing(nc, env.master_keys())
    await keys.start()
    result = await replay(nc, db, projection, keys=keys)
    seconds = time.perf_counter() - started
    parked = await db.parked(projection.name)
    await keys.stop()
    await db.close()
    await nc.close()
    return {
        "events": result.events,
        "parked": float(len(parked)),
        "embedded": projection.embedded,
        "seconds": seconds,
        "rss_start": rss_start,
        "rss": env.peak_rss_mb(),
    }


@contextlib.asynccontextmanager
async def rebuild_session(cfg: Config) -> AsyncIterator[Run]:
    name = "vectors-search-sqlite"
    loaded = await cfg.shared(name, lambda: loaded_log(cfg, "sqlite", name))
    runs = iter(range(1_000_000))

    async def run(warmup: bool) -> dict[str, float]:
        store = cfg.tmp / f"vectors-rebuild-{next(runs)}.db"
        result = await env.run_child(cfg, "vectors-rebuild", loaded.url, store, len(loaded.texts))
        if result["embedded"] != len(loaded.texts):
            cfg.note(
                f"vectors-rebuild embedded {result['embedded']:.0f} of {len(loaded.texts)} "
                f"({result['events']:.0f} events read, {result['parked']:.0f} parked)"
            )
        return {
            "seconds": result["seconds"],
            "rate": result["embedded"] / result["seconds"],
            "rss": result["rss"],
        }

    yield run


# Workloads ------------------------------------------------------------------------------
RAW = Workload(
    "vectors-raw",
    "raw WordLlama embedding and numpy exact search, in process",
    (
        Metric("embed_rate", "embed texts in bulk", "texts/s"),
        Metric("query_ms", "embed one query p50", "ms"),
        Metric("org_ms", "exact top-10 over the whole org p50", "ms"),
        Metric("scope_ms", "exact top-10 over one scope p50", "ms"),
    ),
    raw_session,
    group="vectors",
)


def ingest(kind: str, wid: str) -> Workload:
    return Workload(
        wid,
        f"memories added until vector-searchable ({kind})",
        (
            Metric(
                "listed_rate",
                "memories until listed (memories projection only)",
                "mem/s",
                ("vectors-raw:embed_rate",),
            ),
            Metric(
                "rate", "memories until vector-searchable", "mem/s", ("vectors-raw:embed_rate",)
            ),
        ),
        ingest_session(kind),
        group="vectors",
    )


def search(kind: str, wid: str) -> Workload:
    return Workload(
        wid,
        f"memory.search hybrid, 100k memories in one org ({kind})",
        (
            Metric("scope_p50", "hybrid, one user's scope p50", "ms", ("vectors-raw:scope_ms",)),
            Metric("scope_p99", "hybrid, one user's scope p99", "ms"),
            Metric("org_p50", "hybrid, whole org p50", "ms", ("vectors-raw:org_ms",)),
            Metric("org_p99", "hybrid, whole org p99", "ms"),
            Metric("recall_scope", "vector recall@10 vs exact, one scope", "ratio"),
            Metric("recall_org", "vector recall@10 vs exact, whole org", "ratio"),
        ),
        search_session(kind),
        group="vectors",
    )


REBUILD = Workload(
    "vectors-rebuild",
    "rebuild the embeddings of every memory (replay into SQLite, child process)",
    (
        Metric("seconds", "rebuild time", "s"),
        Metric("rate", "memories embedded and written", "mem/s", ("vectors-raw:embed_rate",)),
        Metric("rss", "peak RSS of the rebuilding process", "MB"),
    ),
    rebuild_session,
    group="vectors",
)

WORKLOADS = [RAW, ingest("sqlite", "vectors-ingest"), search("sqlite", "vectors-search"), REBUILD]
# Run when named: they need a Postgres server.
ON_REQUEST = [
    ingest("postgres", "vectors-ingest-postgres"),
    search("postgres", "vectors-search-postgres"),
]
