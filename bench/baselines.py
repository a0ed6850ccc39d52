"""Baselines: the least work each AgentMem path could do, with plain nats-py and aiosqlite,
and a peer, the ``eventsourcing`` library on SQLite. Measured in the same run as AgentMem."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec
import nats
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentmem import ids, subjects
from agentmem.store import sql
from bench import env
from bench.harness import Config, Metric, Run, Workload, request_metrics, sequential, two_ways
from projections.users import USERS

RAW_COMMAND = "bench.raw.cmd"
RAW_QUERY = "bench.raw.get"
USER_COLUMNS = USERS.column_names
H_TIME = "AgentMem-Time"


class _Command(msgspec.Struct):
    org_id: str
    name: str


class _Get(msgspec.Struct):
    user_id: str


class _PubAck(msgspec.Struct):
    seq: int = 0
    error: dict[str, Any] | None = None


class _Reply(msgspec.Struct):
    ok: bool
    data: Any = None
    seq: int | None = None
    error: Any = None


_encoder = msgspec.json.Encoder()
_reply = msgspec.json.Decoder(_Reply)


async def _serve(
    nc: NATS, subject: str, answer: Callable[[Msg], Coroutine[Any, Any, None]]
) -> Subscription:
    """A queue-group subscription that answers each request in a task of its own."""
    tasks: set[asyncio.Task[None]] = set()

    async def on_message(msg: Msg) -> None:
        task = asyncio.create_task(answer(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    subscription: Subscription = await nc.subscribe(subject, queue="bench", cb=on_message)
    await nc.flush()  # the server knows the interest before any client asks
    return subscription


async def _checked(nc: NATS, subject: str, payload: bytes) -> None:
    reply = _reply.decode((await nc.request(subject, payload, timeout=10)).data)
    if not reply.ok:
        raise RuntimeError(f"error reply: {reply.error}")


# Raw command ------------------------------------------------------------------------------
async def command_responder(nc: NATS) -> Subscription:
    """Decode, append one message with expected sequence 0 on a fresh subject, answer."""
    decoder = msgspec.json.Decoder(_Command)
    ack_decoder = msgspec.json.Decoder(_PubAck)
    prefix = ids.new_id()
    counter = itertools.count()
    headers = {"Nats-Expected-Last-Subject-Sequence": "0"}

    async def answer(msg: Msg) -> None:
        command = decoder.decode(msg.data)
        subject = subjects.event("bench", "raw", f"{prefix}-{next(counter)}")
        reply = await nc.request(subject, _encoder.encode(command), timeout=5, headers=headers)
        ack = ack_decoder.decode(reply.data)
        if ack.error is not None:
            await msg.respond(_encoder.encode({"ok": False, "error": ack.error}))
            return
        await msg.respond(_encoder.encode({"ok": True, "data": {"seq": ack.seq}, "seq": ack.seq}))

    return await _serve(nc, RAW_COMMAND, answer)


@contextlib.asynccontextmanager
async def raw_command(cfg: Config) -> AsyncIterator[Run]:
    async with env.nats_server(cfg, "raw-command") as url:
        await env.ensure_stream(url)
        async with (
            env.connections(url, 1) as (responder,),
            env.connections(url, cfg.sizes.connections) as conns,
        ):
            await command_responder(responder)
            org_id = ids.new_id()

            async def call(worker: int, i: int) -> None:
                payload = _encoder.encode({"org_id": org_id, "name": f"name {i}"})
                await _checked(conns[worker % len(conns)], RAW_COMMAND, payload)

            async def run(warmup: bool) -> dict[str, float]:
                return await two_ways(cfg, "raw command", call, warmup)

            yield run


# Raw query --------------------------------------------------------------------------------
def user_row(i: int, user_id: str, org_id: str) -> tuple[object, ...]:
    now = time.time_ns() // 1_000_000
    return (user_id, org_id, f"User {i}", f"user{i}@bench.example", '["member"]', now, now, i + 1)


async def open_users_db(path: Path) -> aiosqlite.Connection:
    """A users table exactly like the projection's, WAL, synchronous=NORMAL."""
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA synchronous = NORMAL")
    for statement in sql.create_table(USERS):
        await db.execute(statement)
    await db.execute("CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, seq BIGINT)")
    return db


INSERT_USER = (
    f"INSERT INTO users ({', '.join(USER_COLUMNS)}) VALUES ({', '.join('?' for _ in USER_COLUMNS)})"
)


async def query_responder(nc: NATS, db: aiosqlite.Connection) -> Subscription:
    """Decode, read one row by primary key with ``execute_fetchall``, answer it as JSON."""
    decoder = msgspec.json.Decoder(_Get)
    select = f"SELECT {', '.join(USER_COLUMNS)} FROM users WHERE user_id = ?"

    async def answer(msg: Msg) -> None:
        get = decoder.decode(msg.data)
        found = list(await db.execute_fetchall(select, (get.user_id,)))
        if not found:
            await msg.respond(_encoder.encode({"ok": False, "error": {"code": "not_found"}}))
            return
        row = dict(zip(USER_COLUMNS, found[0], strict=True))
        await msg.respond(_encoder.encode({"ok": True, "data": row, "seq": 0}))

    return await _serve(nc, RAW_QUERY, answer)


@contextlib.asynccontextmanager
async def raw_query(cfg: Config) -> AsyncIterator[Run]:
    n = cfg.sizes.query_rows
    db = await open_users_db(cfg.tmp / "raw-query.db")
    try:
        org_id = ids.new_id()
        user_ids = [ids.new_id() for _ in range(n)]
        await db.execute("BEGIN")
        await db.executemany(INSERT_USER, [user_row(i, u, org_id) for i, u in enumerate(user_ids)])
        await db.execute("COMMIT")
        async with (
            env.nats_server(cfg, "raw-query") as url,
            env.connections(url, 1) as (responder,),
            env.connections(url, cfg.sizes.connections) as conns,
        ):
            await query_responder(responder, db)

            async def call(worker: int, i: int) -> None:
                payload = _encoder.encode({"user_id": user_ids[(i * 7919) % n]})
                await _checked(conns[worker % len(conns)], RAW_QUERY, payload)

            async def run(warmup: bool) -> dict[str, float]:
                return await two_ways(cfg, "raw query", call, warmup)

            yield run
    finally:
        await db.close()


# Raw projection ---------------------------------------------------------------------------
class _UserRegistered(msgspec.Struct):
    user_id: str
    org_id: str
    name: str
    email: str
    roles: list[str] = msgspec.field(default_factory=lambda: ["member"])


class _Commit(msgspec.Struct):
    events: list[_UserRegistered]


async def raw_projection_child(url: str, store: Path, events: int) -> dict[str, float]:
    """In a child process: pull ``fetch(1000)`` + ack (AckPolicy.ALL, as the worker uses)
    over every user commit, each batch one transaction: executemany plus a checkpoint row."""
    decoder = msgspec.json.Decoder(_Commit)
    durable = "bench-raw-projection"
    nc = await nats.connect(url)
    db = await open_users_db(store)
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
                rows.append((e.user_id, e.org_id, e.name, e.email, roles, at, at, seq))
        await db.execute("BEGIN IMMEDIATE")
        await db.executemany(INSERT_USER, rows)
        await db.execute(
            "INSERT INTO checkpoints (name, seq) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
            ("raw", messages[-1].metadata.sequence.stream),
        )
        await db.execute("COMMIT")
        await messages[-1].ack()
        done += len(messages)
    seconds = time.perf_counter() - started
    await js.delete_consumer(subjects.STREAM_NAME, durable)
    await db.close()
    await nc.close()
    return {"events": done, "seconds": seconds, "rss_start": rss_start, "rss": env.peak_rss_mb()}


@contextlib.asynccontextmanager
async def raw_projection(cfg: Config) -> AsyncIterator[Run]:
    log = await cfg.shared(
        f"log-{cfg.sizes.replay_events}", lambda: env.seeded_log(cfg, cfg.sizes.replay_events)
    )
    runs = itertools.count()

    async def run(warmup: bool) -> dict[str, float]:
        store = cfg.tmp / f"raw-projection-{next(runs)}.db"
        result = await env.run_child(cfg, "raw-projection", log.url, store, log.events)
        if result["events"] != log.events:
            cfg.note(f"raw projection applied {result['events']:.0f} of {log.events} events")
        return {
            "rate": result["events"] / result["seconds"],
            "rss": result["rss"],
            "rss_growth": result["rss"] - result["rss_start"],
        }

    yield run


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
