"""Baselines: the least work each AgentMem path could do, with plain nats-py and sqlite3,
and a peer, the ``eventsourcing`` library on SQLite. Measured in the same run as AgentMem.

The raw responders run in a process of their own (``bench/responder.py``), as the service
does; the clients run in the bench process. SQLite is driven through the standard
``sqlite3`` module the way the store drives it (reads on the event loop thread, a batch as
one transaction), not through aiosqlite: an aiosqlite baseline would now be slower than
AgentMem's own store and flatter every ratio.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentmem import ids, subjects
from agentmem.commands import MAX_MESSAGES_PER_BATCH
from agentmem.projections.messages import MESSAGES
from agentmem.projections.users import USERS
from agentmem.store import fulltext, sql
from bench import env
from bench.harness import Config, Metric, Run, Workload, request_metrics, sequential, two_ways
from bench.messages import LAST_N, TEXT
from bench.responder import MESSAGE_COLUMNS, RAW_COMMAND, RAW_LAST, RAW_QUERY, USER_COLUMNS

H_TIME = "AgentMem-Time"


class _Reply(msgspec.Struct):
    ok: bool
    data: Any = None
    seq: int | None = None
    error: Any = None


_encoder = msgspec.json.Encoder()
_reply = msgspec.json.Decoder(_Reply)


async def _checked(nc: NATS, subject: str, payload: bytes) -> None:
    reply = _reply.decode((await nc.request(subject, payload, timeout=10)).data)
    if not reply.ok:
        raise RuntimeError(f"error reply: {reply.error}")


# Raw command ------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def raw_command(cfg: Config) -> AsyncIterator[Run]:
    async with env.nats_server(cfg, "raw-command") as url:
        await env.ensure_stream(url)
        async with (
            env.responder(cfg, "raw-command", url),
            env.connections(url, cfg.sizes.connections) as conns,
        ):
            org_id = ids.new_id()

            async def call(worker: int, i: int) -> None:
                payload = _encoder.encode({"org_id": org_id, "name": f"name {i}"})
                await _checked(conns[worker % len(conns)], RAW_COMMAND, payload)

            async def run(warmup: bool) -> dict[str, float]:
                return await two_ways(cfg, "raw command", call, warmup)

            yield run


# Raw query --------------------------------------------------------------------------------
def user_row(i: int, user_id: str, org_id: str) -> tuple[object, ...]:
    """A row of the projection's users table, whatever columns it has grown."""
    now = time.time_ns() // 1_000_000
    known: dict[str, object] = {
        "user_id": user_id,
        "org_id": org_id,
        "name": f"User {i}",
        "email": f"user{i}@bench.example",
        "roles": '["member"]',
        "created_at": now,
        "updated_at": now,
        "version": i + 1,
    }
    empty = {"text": "", "json": "[]", "integer": 0}
    return tuple(known.get(c.name, empty[c.type]) for c in USERS.columns)


def open_users_db(path: Path) -> sqlite3.Connection:
    """A users table exactly like the projection's, WAL, synchronous=NORMAL."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    for statement in sql.create_table(USERS):
        db.execute(statement)
    db.execute("CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, seq BIGINT)")
    return db


INSERT_USER = (
    f"INSERT INTO users ({', '.join(USER_COLUMNS)}) VALUES ({', '.join('?' for _ in USER_COLUMNS)})"
)


@contextlib.asynccontextmanager
async def _reader(
    cfg: Config,
    kind: str,
    db: sqlite3.Connection,
    path: Path,
    insert: str,
    rows: list[tuple[object, ...]],
) -> AsyncIterator[list[NATS]]:
    """``rows`` written into ``db`` (the file at ``path``) in one transaction, then the
    ``kind`` responder reading that file on a fresh server; yields the client connections."""
    db.execute("BEGIN")
    db.executemany(insert, rows)
    db.execute("COMMIT")
    db.close()
    async with (
        env.nats_server(cfg, kind) as url,
        env.responder(cfg, kind, url, "--db", str(path)),
        env.connections(url, cfg.sizes.connections) as conns,
    ):
        yield conns


@contextlib.asynccontextmanager
async def raw_query(cfg: Config) -> AsyncIterator[Run]:
    n = cfg.sizes.query_rows
    path = cfg.tmp / "raw-query.db"
    org_id = ids.new_id()
    user_ids = [ids.new_id() for _ in range(n)]
    rows = [user_row(i, u, org_id) for i, u in enumerate(user_ids)]
    async with _reader(cfg, "raw-query", open_users_db(path), path, INSERT_USER, rows) as conns:

        async def call(worker: int, i: int) -> None:
            payload = _encoder.encode({"user_id": user_ids[(i * 7919) % n]})
            await _checked(conns[worker % len(conns)], RAW_QUERY, payload)

        async def run(warmup: bool) -> dict[str, float]:
            return await two_ways(cfg, "raw query", call, warmup)

        yield run


# Raw last 50 ------------------------------------------------------------------------------
def message_row(
    n: int, org_id: str, session_id: str, agent_id: str, seq: int, index: int
) -> tuple[object, ...]:
    """A row of the projection's messages table, whatever columns it has grown: message ``n``
    of a conversation, the ``index``-th of the commit ``seq`` (its position as the
    projection's)."""
    known: dict[str, object] = {
        "message_id": ids.new_id(),
        "org_id": org_id,
        "session_id": session_id,
        "agent_id": agent_id,
        "user_id": None,
        "role": "user",
        "content": TEXT.format(n=n),
        "tool_calls": "[]",
        "tool_call_id": None,
        "metadata": "{}",
        "seq": seq,
        "position": seq * MAX_MESSAGES_PER_BATCH + index,
        "created_at": time.time_ns() // 1_000_000,
        "redacted_at": None,
    }
    empty = {"text": "", "json": "[]", "integer": 0}
    return tuple(known.get(c.name, None if c.nullable else empty[c.type]) for c in MESSAGES.columns)


def open_messages_db(path: Path) -> sqlite3.Connection:
    """A messages table exactly like the projection's (its indexes, and its FTS5 index and
    triggers), WAL, synchronous=NORMAL."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    for statement in (*sql.create_table(MESSAGES), *fulltext.sqlite_ddl(MESSAGES)):
        db.execute(statement)
    return db


INSERT_MESSAGE = (
    f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in MESSAGE_COLUMNS)})"
)


@contextlib.asynccontextmanager
async def raw_last50(cfg: Config) -> AsyncIterator[Run]:
    """One conversation of ``last_conversation`` messages, 1,000 per commit, as last-50's."""
    n = cfg.sizes.last_conversation
    path = cfg.tmp / "raw-last50.db"
    org_id, session_id, agent_id = ids.new_id(), "bench-last", ids.new_id()
    per = MAX_MESSAGES_PER_BATCH
    rows = [message_row(i, org_id, session_id, agent_id, 1 + i // per, i % per) for i in range(n)]
    db = open_messages_db(path)
    async with _reader(cfg, "raw-last50", db, path, INSERT_MESSAGE, rows) as conns:

        def payload() -> bytes:
            return _encoder.encode({"org_id": org_id, "session_id": session_id, "n": LAST_N})

        reply = _reply.decode((await conns[0].request(RAW_LAST, payload(), timeout=10)).data)
        found = len(reply.data["items"]) if reply.ok else 0
        if found != min(LAST_N, n):
            raise RuntimeError(f"raw last {LAST_N} answered {found} messages: {reply.error}")

        async def call(worker: int, i: int) -> None:
            await _checked(conns[worker % len(conns)], RAW_LAST, payload())

        async def run(warmup: bool) -> dict[str, float]:
            return await two_ways(cfg, "raw last 50", call, warmup)

        yield run


# Raw projection ---------------------------------------------------------------------------
class _UserRegistered(msgspec.Struct):
    user_id: str
    org_id: str
    # Sealed in the seeded log (agentmem.sealing): the raw baseline does not decrypt, so it
    # writes them empty; what opening them costs shows in the replay's ratio to this.
    name: str = ""
    email: str = ""
    roles: list[str] = msgspec.field(default_factory=lambda: ["member"])
    service_admin: bool = False


# The columns the raw projection writes, in this order: those of the users projection. If the
# table grows a column, the insert fails loudly rather than measuring a different table.
RAW_PROJECTION_COLUMNS = (
    "user_id",
    "org_id",
    "name",
    "email",
    "roles",
    "service_admin",
    "created_at",
    "updated_at",
    "version",
)
RAW_PROJECTION_INSERT = (
    f"INSERT INTO users ({', '.join(RAW_PROJECTION_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in RAW_PROJECTION_COLUMNS)})"
)


class _Commit(msgspec.Struct):
    events: list[_UserRegistered]


async def raw_projection_child(url: str, store: Path, events: int) -> dict[str, float]:
    """In a child process: pull ``fetch(1000)`` + ack (AckPolicy.ALL, as the worker uses)
    over every user commit, each batch one transaction: executemany plus a checkpoint row."""
    decoder = msgspec.json.Decoder(_Commit)
    durable = "bench-raw-projection"
    nc = await nats.connect(url)
    db = open_users_db(store)
    rss_start = env.peak_rss_mb()
    js = nc.jetstream()
    started = time.perf_counter()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_consumer(subjects.STREAM_NAME, durable)
    config = ConsumerConfig(
        durable_name=durable,
        filter_subjects=[subjects.events_of("user")],
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
        rows = []
        for message in messages:
            at = int((message.headers or {}).get(H_TIME, "0"))
            seq = message.metadata.sequence.stream
            for e in decoder.decode(message.data).events:
                roles = _encoder.encode(e.roles).decode()
                admin = int(e.service_admin)
                email = e.email or f"{e.user_id}@sealed"  # unique, as the index wants
                rows.append((e.user_id, e.org_id, e.name, email, roles, admin, at, at, seq))
        db.execute("BEGIN IMMEDIATE")
        db.executemany(RAW_PROJECTION_INSERT, rows)
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
    db.close()
    await nc.close()
    return {"events": done, "seconds": seconds, "rss_start": rss_start, "rss": env.peak_rss_mb()}


def raw_projection(cfg: Config) -> contextlib.AbstractAsyncContextManager[Run]:
    return env.replay_in_child(cfg, "raw-projection")


# Peer: the eventsourcing library ----------------------------------------------------------
@contextlib.asynccontextmanager
async def peer(cfg: Config) -> AsyncIterator[Run]:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class User(Aggregate):
        @event("Registered")
        def __init__(self, org_id: str, name: str, email: str) -> None:
            self.org_id = org_id
            self.name = name
            self.email = email

    runs = itertools.count()

    async def run(warmup: bool) -> dict[str, float]:
        n = cfg.count(cfg.sizes.peer_aggregates, warmup)
        app: Application[Any] = Application(
            env={
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(cfg.tmp / f"peer-{next(runs)}.db"),
            }
        )
        saved: list[Any] = []
        started = time.perf_counter()
        for i in range(n):
            user = User(org_id="org", name=f"User {i}", email=f"user{i}@bench.example")
            app.save(user)
            saved.append(user.id)
            if time.perf_counter() - started > cfg.sizes.seconds * 3:
                break
        save_rate = len(saved) / (time.perf_counter() - started)

        async def get(worker: int, i: int) -> None:
            app.repository.get(saved[(i * 7919) % len(saved)])

        reads = await sequential(get, len(saved), cfg.sizes.seconds)
        app.close()
        return {"save_rate": save_rate, "read_p50": reads.us(0.5)}

    yield run


WORKLOADS = [
    Workload("raw-command", "raw command", request_metrics("req/s", None), raw_command),
    Workload("raw-query", "raw query", request_metrics("req/s", None), raw_query),
    Workload("raw-last50", "raw last 50", request_metrics("req/s", None), raw_last50),
    Workload(
        "raw-projection",
        "raw projection",
        (
            Metric("rate", "events", "events/s"),
            Metric("rss", "peak RSS (child)", "MB"),
            Metric("rss_growth", "RSS growth during the run", "MB"),
        ),
        raw_projection,
    ),
    Workload(
        "peer",
        "peer: eventsourcing (SQLite)",
        (
            Metric("save_rate", "save 1-event aggregates", "saves/s"),
            Metric("read_p50", "get p50", "µs"),
        ),
        peer,
    ),
]
