"""Memories (issue 12): writes, scoped reads and replay, each beside a raw baseline of the
same run.

- ``memory-add``: one ``agentmem.cmd.memory.add`` per call, a new sentence each time; each
  of the 64 workers adds to its own user. Compared with ``raw-command``, as rename-org and
  append-message are: a new memory is one JetStream message at expected sequence 0 on a
  fresh subject (its content's slot, ``agentmem.domain.memories``), which is exactly what
  the raw command publishes.
- ``memory-add-batch`` (and ``-postgres``): each run adds ``sizes.memories`` new memories
  (100,000; 2,000 with --quick) over ``sizes.memory_scopes`` users (1,000; 20), 1,000 per
  ``agentmem.cmd.memory.add_batch``, ``IN_FLIGHT`` commands at a time: memories per
  second acknowledged (first send to last ack), and until visible (first send to a
  ``memory.get`` of the last one, with ``after_seq`` its commit, that found it).
- ``memory-read`` (and ``-postgres``): a service holding as many memories over as many
  users (seeded, not timed, through ``memory.add_batch`` as above, until visible; the note
  says how long it took), then, one request at a time, ``memory.list`` of one user
  (``limit`` 50: the newest 50 of its 100) and ``memory.search`` of one user for ``tea``
  (which 10 of its 100 memories hold; ``limit`` 10), a different user each time.
  ``raw-memory-read`` is the baseline: a raw responder (``bench/responder.py``) over an
  SQLite file holding the same memories in a table built like the projection's (its
  columns, indexes, FTS5 index with the scope tokens, triggers; rows made by the
  projection's own ``project``), answering the least each read can do.
- ``memory-replay`` (and ``-postgres``): ``projections.replay`` of the memories projection
  over a log of ``sizes.replay_events`` ``memory.added`` commits (100,000; 500), one per
  commit as ``memory.add`` writes them, 100 per user, in a child process.
  ``raw-memory-projection`` is its baseline: pull ``fetch(1000)`` + ack over the same log,
  each batch one transaction: the rows staged in a temporary table and moved into the
  memories table with one ``INSERT ... SELECT`` (FTS5 indexes the rows its trigger hands
  it within one statement about five times faster than one row at a time; the store does
  the same), the tags with ``executemany``, and a checkpoint row.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import msgspec
import nats
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentmem import Client, ids, subjects
from agentmem.domain import memories as domain
from agentmem.domain.memories import MAX_BATCH
from agentmem.errors import UnavailableError
from agentmem.eventlog import H_TIME, StoredCommit
from agentmem.events import MemoryAdded
from agentmem.keys import KeyRing
from agentmem.projections.memories import MEMORIES, MEMORY_TAGS, PROJECTION
from agentmem.projections.migrations import MIGRATIONS
from agentmem.sealing import open_events
from agentmem.store import Upsert, fulltext, open_store, sql
from bench import env
from bench.harness import (
    Call,
    Config,
    Loop,
    Metric,
    Run,
    Session,
    Workload,
    check,
    request_metrics,
    sequential,
    two_ways,
)
from bench.messages import IN_FLIGHT
from bench.pg import postgres_store
from bench.responder import MEMORY_COLUMNS, RAW_MEMORY_LIST, RAW_MEMORY_SEARCH
from bench.workloads import clients

GROUP = "memories"
# An add_batch is 1,000 messages in one atomic batch; with IN_FLIGHT of them queued in the
# service on a machine shared with other work, one may take longer than the client's
# default 10 s. The rate is what is measured, not that bound.
BATCH_TIMEOUT = 60.0
READ_REQUESTS = 500  # one at a time, per read, per run (fewer with --quick)
LIST_LIMIT = 50
SEARCH_LIMIT = 10
SEARCHED = "tea"
# What the users drink: the searched word is in every tenth memory of every user.
DRINKS = (
    SEARCHED,
    "coffee",
    "cocoa",
    "juice",
    "water",
    "milk",
    "lemonade",
    "cider",
    "kefir",
    "soda",
)


# The memories ---------------------------------------------------------------------------
def drink(n: int, scopes: int) -> str:
    """Memory ``n`` is the ``n // scopes``-th of its user: every tenth of them is tea."""
    return DRINKS[(n // scopes) % len(DRINKS)]


def user_of(n: int, scopes: int) -> str:
    return f"user-{n % scopes}"


def text(n: int, what: str) -> str:
    """A memory as an agent writes one: a sentence."""
    return f"note {n}: prefers {what} in the morning and asks for it by name"


def new_memory(n: int, scopes: int, prefix: str = "") -> dict[str, Any]:
    """Memory ``n`` as ``memory.add_batch`` takes it; ``prefix`` makes its user a run's
    own (and so the memory a new one)."""
    what = drink(n, scopes)
    return {
        "content": text(n, what),
        "user_id": f"{prefix}{user_of(n, scopes)}",
        "tags": [what],
        "metadata": {"n": n},
    }


def added(org_id: str, n: int, scopes: int, at: int) -> MemoryAdded:
    """Memory ``n`` as ``memory.add`` records it (the id its content's first slot)."""
    item = domain.NewMemory(**new_memory(n, scopes))
    memory_id = domain.slot_id(domain.key_of_new(org_id, item), 0)
    return domain.added(org_id, memory_id, item, at)


def tea_per_user(total: int, scopes: int) -> Counter[str]:
    """How many memories of each user hold the searched word."""
    return Counter(user_of(n, scopes) for n in range(total) if drink(n, scopes) == SEARCHED)


async def add_all(clients: list[Client], items: list[dict[str, Any]]) -> tuple[int, str]:
    """Every item through ``memory.add_batch``, 1,000 per command, ``IN_FLIGHT`` at a time:
    the last commit's sequence and the last memory's id."""
    batches = [items[s : s + MAX_BATCH] for s in range(0, len(items), MAX_BATCH)]
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def add(b: int) -> str:
        async with slots:
            client = clients[b % len(clients)]
            reply = await client.add_memories(batches[b])
            if reply.added != len(batches[b]):
                raise RuntimeError(f"add_batch added {reply.added} of {len(batches[b])}")
            return reply.memory_ids[-1]

    last_ids = await asyncio.gather(*(add(b) for b in range(len(batches))))
    # Each client keeps the highest sequence its commands were answered with.
    return max(client.last_seq for client in clients), last_ids[-1]


async def visible(client: Client, memory_id: str, seq: int, seconds: float = 600) -> None:
    """Until the memories projection has applied ``seq`` (and so holds ``memory_id``)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await client.get_memory(memory_id, after_seq=seq)
            return
        except UnavailableError:  # a query waits 5 s at most; the projection may take longer
            if time.monotonic() > deadline:
                raise


@contextlib.asynccontextmanager
async def service_clients(cfg: Config, name: str, kind: str) -> AsyncIterator[list[Client]]:
    """A fresh nats-server and the service on it, with a fresh SQLite file or (``kind``
    postgres) a fresh Postgres schema; the bench's clients."""
    async with contextlib.AsyncExitStack() as stack:
        store = (
            await stack.enter_async_context(postgres_store(name)) if kind == "postgres" else None
        )
        url = await stack.enter_async_context(env.nats_server(cfg, name))
        svc = await stack.enter_async_context(env.service(cfg, url, name, 2, store))
        conns = await stack.enter_async_context(
            env.client_connections(url, cfg.sizes.connections, svc.token)
        )
        yield [env.client(nc, svc.token, BATCH_TIMEOUT) for nc in conns]


# memory.add -------------------------------------------------------------------------------
def adding(cs: list[Client]) -> Call:
    """A call that adds a new memory to the worker's own user: every content new (counted
    across runs), so nothing is a duplicate."""
    numbers = itertools.count()

    async def call(worker: int, i: int) -> None:
        n = next(numbers)
        written = await cs[worker % len(cs)].add_memory(
            text(n, drink(n, 1)), user_id=f"adder-{worker}", tags=[drink(n, 1)]
        )
        if written.fields["deduplicated"]:
            raise RuntimeError(f"memory {n} was found a duplicate")

    return call


@contextlib.asynccontextmanager
async def memory_add(cfg: Config) -> AsyncIterator[Run]:
    async with clients(cfg, "memory-add") as cs:
        call = adding(cs)

        async def run(warmup: bool) -> dict[str, float]:
            return await two_ways(cfg, "memory.add", call, warmup)

        yield run


@contextlib.asynccontextmanager
async def memory_add_split(cfg: Config) -> AsyncIterator[Run]:
    """``memory-add`` on a deployment that runs its projections in a process of their own
    (``--roles commands,queries`` and ``--roles projections``, sharing a Postgres schema):
    the command path without the projections' work on the same event loop."""
    name = "memory-add-split"
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(postgres_store(name))
        url = await stack.enter_async_context(env.nats_server(cfg, name))
        front = await stack.enter_async_context(
            env.service(cfg, url, name, 2, store, {"AGENTMEM_ROLES": "commands,queries"})
        )
        await stack.enter_async_context(
            env.service(
                cfg, url, f"{name}-projections", 2, store, {"AGENTMEM_ROLES": "projections"}
            )
        )
        conns = await stack.enter_async_context(
            env.client_connections(url, cfg.sizes.connections, front.token)
        )
        cs = [env.client(nc, front.token) for nc in conns]
        call = adding(cs)

        async def run(warmup: bool) -> dict[str, float]:
            return await two_ways(cfg, "memory.add (projections apart)", call, warmup)

        yield run


# memory.add_batch -------------------------------------------------------------------------
def add_batch_session(kind: str) -> Session:
    name = f"memory-add-batch-{kind}"

    @contextlib.asynccontextmanager
    async def session(cfg: Config) -> AsyncIterator[Run]:
        async with service_clients(cfg, name, kind) as cs:
            runs = itertools.count()

            async def run(warmup: bool) -> dict[str, float]:
                prefix = f"r{next(runs)}-"
                total, scopes = cfg.count(cfg.sizes.memories, warmup), cfg.sizes.memory_scopes
                items = [new_memory(n, scopes, prefix) for n in range(total)]
                started = time.perf_counter()
                seq, last_id = await add_all(cs, items)
                acked = time.perf_counter() - started
                await visible(cs[0], last_id, seq)
                seen = time.perf_counter() - started
                return {"rate": total / acked, "visible_rate": total / seen}

            yield run

    return session


def add_batch_workload(kind: str) -> Workload:
    return Workload(
        f"memory-add-batch{'-postgres' if kind == 'postgres' else ''}",
        f"memory.add_batch ({kind})",
        (
            Metric("rate", f"add_batch ({IN_FLIGHT} x 1,000 in flight), acked", "memories/s"),
            Metric("visible_rate", "add_batch, until visible to memory.get", "memories/s"),
        ),
        add_batch_session(kind),
        group=GROUP,
    )


# memory.list and memory.search ------------------------------------------------------------
def read_count(cfg: Config, warmup: bool) -> int:
    return cfg.count(min(READ_REQUESTS, cfg.sizes.seq_requests), warmup)


def read_session(kind: str) -> Session:
    name = f"memory-read-{kind}"

    @contextlib.asynccontextmanager
    async def session(cfg: Config) -> AsyncIterator[Run]:
        total, scopes = cfg.sizes.memories, cfg.sizes.memory_scopes
        async with service_clients(cfg, name, kind) as cs:
            started = time.perf_counter()
            seq, last_id = await add_all(cs, [new_memory(n, scopes) for n in range(total)])
            await visible(cs[0], last_id, seq)
            seeded = time.perf_counter() - started
            # The vectors and graph projections go on with the seed after the memories one
            # has it: the reads are timed once they are done, as on a service at rest.
            await env.projections_settled(cs[0])
            cfg.note(
                f"{name}: seeded {total:,} memories over {scopes:,} users through "
                f"memory.add_batch (1,000 per command, {IN_FLIGHT} in flight) in "
                f"{seeded:.1f}s until visible, every projection done in "
                f"{time.perf_counter() - started:.1f}s"
            )
            per_user = Counter(user_of(n, scopes) for n in range(total))
            teas = tea_per_user(total, scopes)
            client = cs[0]

            async def listed(user_id: str) -> int:
                found = await client.list_memories(user_id=user_id, limit=LIST_LIMIT)
                return len(found.items)

            async def searched(user_id: str) -> int:
                # The full-text search, as the raw baseline does it (hybrid, the default
                # mode, adds memories near in meaning: bench/vectors.py measures that).
                found = await client.search_memories(
                    SEARCHED, user_id=user_id, limit=SEARCH_LIMIT, mode="text"
                )
                return len(found)

            async def run(warmup: bool) -> dict[str, float]:
                result: dict[str, float] = {}
                for key, read, expected, limit in (
                    ("list", listed, per_user, LIST_LIMIT),
                    ("search", searched, teas, SEARCH_LIMIT),
                ):
                    before = env.cpu_seconds()
                    loop = await read_loop(cfg, f"{name} {key}", warmup, read, expected, limit)
                    result.update(read_figures(key, loop, before, "service"))
                return result

            yield run

    return session


def read_figures(key: str, loop: Loop, before: dict[str, float], answers: str) -> dict[str, float]:
    """A read loop's latencies, and the CPU per read of the process that ``answers`` (the
    service or the raw responder) and of the bench's client, since ``before``."""
    return {
        f"{key}_p50": loop.us(0.5) / 1000,
        f"{key}_p99": loop.us(0.99) / 1000,
        f"{key}_cpu": env.cpu_ms_per_call(before, answers, loop.completed),
        f"{key}_client_cpu": env.cpu_ms_per_call(before, "client", loop.completed),
    }


async def read_loop(
    cfg: Config,
    name: str,
    warmup: bool,
    read: Any,
    expected: Counter[str],
    limit: int,
) -> Loop:
    """``read(user_id)`` of a different user each time, one at a time; each must find what
    that user holds, up to ``limit``."""
    scopes = cfg.sizes.memory_scopes
    wrong: list[str] = []

    async def call(worker: int, i: int) -> None:
        user_id = f"user-{(i * 7919) % scopes}"
        found = await read(user_id)
        if found != min(limit, expected[user_id]):
            wrong.append(f"{user_id}: {found}")

    loop = await sequential(call, read_count(cfg, warmup), cfg.sizes.seconds * 3)
    check(cfg, name, loop)
    if wrong:
        raise RuntimeError(f"{name} found the wrong number of memories: {wrong[:3]}")
    return loop


def read_metrics(baseline: bool, postgres: bool = False) -> tuple[Metric, ...]:
    """``baseline``: compared with the raw SQLite read (and, ``postgres``, first with the
    raw read of the same table in Postgres)."""

    def refs(key: str) -> tuple[str, ...]:
        if not baseline:
            return ()
        own = (f"raw-memory-read-postgres:{key}",) if postgres else ()
        return (*own, f"raw-memory-read:{key}")

    return (
        Metric(
            "list_p50", f"memory.list of one user (limit {LIST_LIMIT}) p50", "ms", refs("list_p50")
        ),
        Metric(
            "list_p99", f"memory.list of one user (limit {LIST_LIMIT}) p99", "ms", refs("list_p99")
        ),
        Metric(
            "search_p50", f"memory.search '{SEARCHED}' of one user p50", "ms", refs("search_p50")
        ),
        Metric(
            "search_p99", f"memory.search '{SEARCHED}' of one user p99", "ms", refs("search_p99")
        ),
        # What the answering process and the client spend on a read: on a noisy machine
        # steadier than the latencies, which grow with the CPU the other processes take.
        *(
            Metric(f"{key}_{cpu}", f"{what}: {whose} CPU per read", "ms", refs(f"{key}_{cpu}"))
            for key, what in (("list", "memory.list"), ("search", "memory.search"))
            for cpu, whose in (("cpu", "answering process"), ("client_cpu", "client"))
        ),
    )


def read_workload(kind: str) -> Workload:
    return Workload(
        f"memory-read{'-postgres' if kind == 'postgres' else ''}",
        f"memory list and search, 100k memories ({kind})",
        read_metrics(True, kind == "postgres"),
        read_session(kind),
        group=GROUP,
    )


def projected_rows(org_id: str, total: int, scopes: int) -> dict[str, list[tuple[object, ...]]]:
    """The rows the memories projection makes of ``total`` memories added one per commit:
    by table, in its columns' order."""
    at = time.time_ns() // 1_000_000
    rows: dict[str, list[tuple[object, ...]]] = {MEMORIES.name: [], MEMORY_TAGS.name: []}
    columns = {t.name: t.column_names for t in (MEMORIES, MEMORY_TAGS)}
    for n in range(total):
        event = added(org_id, n, scopes, at)
        seq = n + 1
        commit = StoredCommit(
            seq, domain.subject(org_id, event.memory_id), {H_TIME: str(at)}, [event]
        )
        for op in PROJECTION.project(commit):
            if isinstance(op, Upsert):
                rows[op.table].append(tuple(op.row[c] for c in columns[op.table]))
    return rows


def insert(table_columns: tuple[str, ...], table: str) -> str:
    marks = ", ".join("?" for _ in table_columns)
    return f"INSERT INTO {table} ({', '.join(table_columns)}) VALUES ({marks})"


async def _sqlite_table(cfg: Config, rows: dict[str, list[tuple[object, ...]]]) -> str:
    """The SQLite file of ``raw-memory-read``: the tables like the projection's, the rows
    with one ``executemany``, the FTS5 index filled once from them."""
    path = cfg.tmp / "raw-memory-read.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    for statement in (*sql.create_table(MEMORIES), *sql.create_table(MEMORY_TAGS)):
        db.execute(statement)
    db.execute("BEGIN")
    db.executemany(insert(MEMORY_COLUMNS, MEMORIES.name), rows[MEMORIES.name])
    db.executemany(insert(MEMORY_TAGS.column_names, MEMORY_TAGS.name), rows[MEMORY_TAGS.name])
    # The store's FTS5 index (migration 5's statements), filled from the rows at once.
    for statement in fulltext.sqlite_rebuild(MEMORIES):
        db.execute(statement)
    db.execute("COMMIT")
    db.close()
    return str(path)


async def _postgres_table(url: str, rows: dict[str, list[tuple[object, ...]]]) -> None:
    """A fresh schema made by the store's own migrations (tables, indexes, full-text
    column), the rows copied in (``COPY``)."""
    store = await open_store(url)
    try:
        await store.migrate(MIGRATIONS)
    finally:
        await store.close()
    connection = await asyncpg.connect(url)
    try:
        for table in (MEMORIES, MEMORY_TAGS):
            await connection.copy_records_to_table(
                table.name, records=rows[table.name], columns=list(table.column_names)
            )
    finally:
        await connection.close()


def raw_read_session(kind: str) -> Session:
    name = "raw-memory-read" + ("-postgres" if kind == "postgres" else "")

    @contextlib.asynccontextmanager
    async def session(cfg: Config) -> AsyncIterator[Run]:
        total, scopes = cfg.sizes.memories, cfg.sizes.memory_scopes
        org_id = ids.new_id()
        rows = projected_rows(org_id, total, scopes)
        per_user = Counter(user_of(n, scopes) for n in range(total))
        teas = tea_per_user(total, scopes)
        encoder, decoder = msgspec.json.Encoder(), msgspec.json.Decoder()
        async with contextlib.AsyncExitStack() as stack:
            if kind == "postgres":
                db = await stack.enter_async_context(postgres_store(name))
                await _postgres_table(db, rows)
            else:
                db = await _sqlite_table(cfg, rows)
            url = await stack.enter_async_context(env.nats_server(cfg, name))
            await stack.enter_async_context(env.responder(cfg, name, url, "--db", db))
            (nc,) = await stack.enter_async_context(env.connections(url, 1))

            def reader(subject: str, limit: int) -> Any:
                async def read(user_id: str) -> int:
                    body = {"org_id": org_id, "user_id": user_id, "limit": limit, "text": SEARCHED}
                    answer = await nc.request(subject, encoder.encode(body), 10)
                    reply = decoder.decode(answer.data)
                    if not reply.get("ok"):
                        raise RuntimeError(f"raw memory read answered {reply}")
                    return len(reply["data"]["items"])

                return read

            async def run(warmup: bool) -> dict[str, float]:
                result: dict[str, float] = {}
                for key, subject, expected, limit in (
                    ("list", RAW_MEMORY_LIST, per_user, LIST_LIMIT),
                    ("search", RAW_MEMORY_SEARCH, teas, SEARCH_LIMIT),
                ):
                    read = reader(subject, limit)
                    before = env.cpu_seconds()
                    loop = await read_loop(cfg, f"{name} {key}", warmup, read, expected, limit)
                    result.update(read_figures(key, loop, before, "responder"))
                return result

            yield run

    return session


raw_memory_read = raw_read_session("sqlite")


# Replay -----------------------------------------------------------------------------------
async def seed_memories(nc: NATS, n: int) -> int:
    """``n`` memory.added commits, one memory each, as ``memory.add`` writes them: 100 per
    user (``n // 100`` users)."""
    org_id = ids.new_id()
    scopes = max(1, n // 100)
    at = time.time_ns() // 1_000_000

    def commit(i: int) -> env.Commit:
        event = added(org_id, i, scopes, at)
        return domain.subject(org_id, event.memory_id), event, "memory.add"

    return await env.seed_commits(nc, n, commit)


class _Added(msgspec.Struct):
    """The fields of ``memory.added`` a row needs; JSON values kept as they came."""

    memory_id: str
    org_id: str
    memory_type: str
    content: str
    valid_from: int
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    metadata: msgspec.Raw = msgspec.Raw(b"{}")
    tags: list[str] = msgspec.field(default_factory=list)
    importance: float = 0.5
    valid_to: int | None = None
    expires_at: int | None = None
    source: msgspec.Raw = msgspec.Raw(b"{}")
    uri: str | None = None
    mime_type: str | None = None
    supersedes: str | None = None


class _Commit(msgspec.Struct):
    events: list[_Added]


# The columns the raw projection writes, in this order: the memories table's. If the table
# grows a column, the child fails loudly rather than measure a different table.
RAW_COLUMNS = (
    "memory_id",
    "org_id",
    "memory_type",
    "user_id",
    "agent_id",
    "session_id",
    "content",
    "metadata",
    "tags",
    "importance",
    "valid_from",
    "valid_to",
    "expires_at",
    "state",
    "superseded_by",
    "supersedes",
    "source",
    "uri",
    "mime_type",
    "position",
    "created_at",
    "updated_at",
    "version",
)


def open_memories_db(path: Path) -> sqlite3.Connection:
    """The memories and memory_tags tables exactly like the projection's (indexes, FTS5
    index and triggers), WAL, synchronous=NORMAL, and a checkpoints table."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA temp_store = MEMORY")
    statements = (
        *sql.create_table(MEMORIES),
        *sql.create_table(MEMORY_TAGS),
        *fulltext.sqlite_ddl(MEMORIES),
        "CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, seq BIGINT)",
        "CREATE TEMP TABLE staged AS SELECT * FROM main.memories WHERE 0",
    )
    for statement in statements:
        db.execute(statement)
    return db


async def raw_projection_child(url: str, store: Path, events: int) -> dict[str, float]:
    """In a child process: pull ``fetch(1000)`` + ack (AckPolicy.ALL, as the worker uses)
    over every memory commit, each batch one transaction."""
    if MEMORIES.column_names != RAW_COLUMNS:
        raise RuntimeError(f"the memories table has other columns now: {MEMORIES.column_names}")
    encoder = msgspec.json.Encoder()
    durable = "bench-raw-memory-projection"
    nc = await nats.connect(url)
    # The seeded log is sealed as the service seals it: the baseline opens it as the
    # projection does, so both pay the same decryption.
    keys = KeyRing(nc, env.master_keys())
    await keys.start()
    db = open_memories_db(store)
    stage = insert(RAW_COLUMNS, "temp.staged")
    move = "INSERT INTO main.memories SELECT * FROM temp.staged ORDER BY rowid"
    tag = insert(MEMORY_TAGS.column_names, MEMORY_TAGS.name)
    rss_start = env.peak_rss_mb()
    js = nc.jetstream()
    started = time.perf_counter()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_consumer(subjects.STREAM_NAME, durable)
    config = ConsumerConfig(
        durable_name=durable,
        filter_subjects=[subjects.events_of("memory")],
        ack_policy=AckPolicy.ALL,
        deliver_policy=DeliverPolicy.ALL,
        max_ack_pending=4000,
    )
    await js.add_consumer(subjects.STREAM_NAME, config)
    subscription = await js.pull_subscribe_bind(durable, subjects.STREAM_NAME)
    done = 0
    deadline = started + 600
    while done < events and time.perf_counter() < deadline:
        messages = await subscription.fetch(1000, timeout=5)
        rows, tags = [], []
        for message in messages:
            at = int((message.headers or {}).get(H_TIME, "0"))
            seq = message.metadata.sequence.stream
            opened = await open_events(message.data, keys)
            for index, e in enumerate(x for x in opened if isinstance(x, MemoryAdded)):
                rows.append(
                    (
                        e.memory_id,
                        e.org_id,
                        e.memory_type,
                        e.user_id,
                        e.agent_id,
                        e.session_id,
                        e.content,
                        encoder.encode(e.metadata).decode(),
                        encoder.encode(e.tags).decode(),
                        round(e.importance * 1_000_000),
                        e.valid_from,
                        e.valid_to,
                        e.expires_at,
                        "live",
                        None,
                        e.supersedes,
                        encoder.encode(e.source).decode(),
                        e.uri,
                        e.mime_type,
                        seq * MAX_BATCH + index,
                        at,
                        at,
                        seq,
                    )
                )
                tags += [(e.memory_id, t, e.org_id) for t in e.tags]
        db.execute("BEGIN IMMEDIATE")
        db.executemany(stage, rows)
        db.execute(move)
        db.execute("DELETE FROM temp.staged")
        db.executemany(tag, tags)
        db.execute(
            "INSERT INTO checkpoints (name, seq) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
            ("raw", messages[-1].metadata.sequence.stream),
        )
        db.execute("COMMIT")
        await messages[-1].ack()
        done += len(messages)
    seconds = time.perf_counter() - started
    await js.delete_consumer(subjects.STREAM_NAME, durable)
    await keys.stop()
    db.close()
    await nc.close()
    return {"events": done, "seconds": seconds, "rss_start": rss_start, "rss": env.peak_rss_mb()}


def raw_projection(cfg: Config) -> contextlib.AbstractAsyncContextManager[Run]:
    return env.replay_in_child(cfg, "raw-memory-projection", None, "memory", seed_memories)


def replay_session(cfg: Config) -> contextlib.AbstractAsyncContextManager[Run]:
    return env.replay_in_child(cfg, "memory-replay", None, "memory", seed_memories)


def replay_postgres_session(cfg: Config) -> contextlib.AbstractAsyncContextManager[Run]:
    return env.replay_in_child(cfg, "memory-replay", postgres_store, "memory", seed_memories)


REPLAY_METRICS = (
    Metric("rate", "events", "events/s"),
    Metric("rss", "peak RSS (child)", "MB"),
    Metric("rss_growth", "RSS growth during the run", "MB"),
)

WORKLOADS = [
    Workload(
        "memory-add", "memory.add", request_metrics("cmd/s", "raw-command"), memory_add, group=GROUP
    ),
    add_batch_workload("sqlite"),
    Workload(
        "raw-memory-read",
        "raw memory list and search",
        read_metrics(False),
        raw_memory_read,
        group=GROUP,
    ),
    read_workload("sqlite"),
    Workload(
        "raw-memory-projection",
        "raw memory projection",
        REPLAY_METRICS,
        raw_projection,
        group=GROUP,
    ),
    Workload(
        "memory-replay",
        "replay memories into SQLite",
        (
            Metric("rate", "events", "events/s", ("raw-memory-projection:rate",)),
            Metric("rss", "peak RSS (child)", "MB", ("raw-memory-projection:rss",)),
            Metric(
                "rss_growth",
                "RSS growth during the run",
                "MB",
                ("raw-memory-projection:rss_growth",),
            ),
        ),
        replay_session,
        group=GROUP,
    ),
]
# Run when named (--only memories, or each by its id): they need a Postgres server.
ON_REQUEST = [
    Workload(
        "memory-add-split-postgres",
        "memory.add, projections in a process of their own (Postgres)",
        request_metrics("cmd/s", "raw-command"),
        memory_add_split,
        group=GROUP,
    ),
    add_batch_workload("postgres"),
    Workload(
        "raw-memory-read-postgres",
        "raw memory list and search (Postgres)",
        read_metrics(False),
        raw_read_session("postgres"),
        group=GROUP,
    ),
    read_workload("postgres"),
    Workload(
        "memory-replay-postgres",
        "replay memories into Postgres",
        (
            Metric(
                "rate", "events", "events/s", ("raw-memory-projection:rate", "memory-replay:rate")
            ),
            Metric("rss", "peak RSS (child)", "MB", ("raw-memory-projection:rss",)),
        ),
        replay_postgres_session,
        group=GROUP,
    ),
]
