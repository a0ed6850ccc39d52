"""``python -m bench.responder raw-command|raw-query|raw-last50|raw-search|raw-memory-read|
raw-memory-read-postgres|raw-ingest|faststream-ingest``: a raw baseline's responder, in a
process of its own, as the service runs in its own (``python -m agentmem serve``).

The bench process starts it, reads ``ready`` from its stdout once it is subscribed, and
stops it with SIGTERM. It runs asyncio, the loop ``agentmem serve`` runs, with one NATS
connection, as the service has.

- ``raw-command``: decode a JSON command with msgspec, publish one JetStream message with
  ``Nats-Expected-Last-Subject-Sequence: 0`` on a fresh subject, reply with its sequence.
- ``raw-query``: decode, read one row by primary key, reply with it as JSON. The read is a
  plain ``sqlite3`` read on the event loop thread, the way the store reads (see
  ``agentmem/store/sqlite.py``): the least work that path could do.
- ``raw-last50``: decode, read the last ``n`` rows of one conversation from a ``messages``
  table like the projection's, by its ``(org_id, session_id, position)`` index, with the
  store's ``ORDER BY position DESC LIMIT n``, and reply with them as JSON, oldest first (the
  JSON columns as stored, not decoded).
- ``raw-search``: decode, find the newest ``limit`` messages of one agent matching any
  word of ``text`` with one FTS5 MATCH of the store's index (the scope's tokens AND the
  words, ``agentmem.store.fulltext``) ordered by rowid, read their rows by position, and
  reply with them as JSON: the least work a scoped search can do.
- ``raw-memory-read``: over a ``memories`` table like the projection's (its indexes, FTS5
  index and triggers), two subjects: the newest ``limit`` live, unexpired memories of one
  user by the ``(org_id, user_id, position)`` index, and the newest ``limit`` live memories
  of one user matching any word of ``text`` with one FTS5 MATCH (the org's, the user's and
  the state's tokens AND the words), their rows read by position; each replied as JSON (the
  JSON columns as stored).
- ``raw-memory-read-postgres``: the same two reads over a ``memories`` table in Postgres
  made by the store's own migrations (``--db`` its URL), through one asyncpg connection:
  the list with the same SQL, the search with the store's own full-text query and settings
  (``agentmem.store.fulltext.postgres_search``), the JSON columns as stored.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from agentmem import ids, subjects
from agentmem.natsflush import flushed
from agentmem.projections.memories import MEMORIES
from agentmem.projections.messages import MESSAGES
from agentmem.projections.users import USERS
from agentmem.store import Table, fulltext
from agentmem.store.postgres import translate

RAW_INGEST_IN = "bench.rawin"  # the work queue published to (raw-ingest, faststream-ingest)
RAW_INGEST_LOG = "bench.rawlog"  # the stream its consumer publishes each message to
RAW_IN_STREAM = "BENCH_RAW_IN"
RAW_LOG_STREAM = "BENCH_RAW_LOG"
INGEST_BATCH = 256
RAW_COMMAND = "bench.raw.cmd"
RAW_QUERY = "bench.raw.get"
RAW_LAST = "bench.raw.last"
RAW_SEARCH = "bench.raw.search"
RAW_MEMORY_LIST = "bench.raw.memory.list"
RAW_MEMORY_SEARCH = "bench.raw.memory.search"
USER_COLUMNS = USERS.column_names
MESSAGE_COLUMNS = MESSAGES.column_names
MEMORY_COLUMNS = MEMORIES.column_names
KINDS = (
    "raw-command",
    "raw-query",
    "raw-last50",
    "raw-search",
    "raw-memory-read",
    "raw-ingest",
    "faststream-ingest",
    "raw-memory-read-postgres",
)


class _Command(msgspec.Struct):
    org_id: str
    name: str


class _Get(msgspec.Struct):
    user_id: str


class _Last(msgspec.Struct):
    org_id: str
    session_id: str
    n: int = 50


class _Search(msgspec.Struct):
    org_id: str
    agent_id: str
    text: str
    limit: int = 10


class _MemoryRead(msgspec.Struct):
    org_id: str
    user_id: str
    limit: int
    text: str = ""


class _PubAck(msgspec.Struct):
    seq: int = 0
    error: dict[str, Any] | None = None


_encoder = msgspec.json.Encoder()


async def _serve(
    nc: NATS, subject: str, answer: Callable[[Msg], Coroutine[Any, Any, None]]
) -> None:
    """A queue-group subscription that answers each request in a task of its own (as the
    service's dispatcher does)."""
    tasks: set[asyncio.Task[None]] = set()

    async def on_message(msg: Msg) -> None:
        task = asyncio.create_task(answer(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await nc.subscribe(subject, queue="bench", cb=on_message)
    await flushed(nc)  # the server knows the interest before any client asks


async def command_responder(nc: NATS) -> None:
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

    await _serve(nc, RAW_COMMAND, answer)


async def query_responder(nc: NATS, db: sqlite3.Connection) -> None:
    """Decode, read one row by primary key, answer it as JSON."""
    decoder = msgspec.json.Decoder(_Get)
    select = f"SELECT {', '.join(USER_COLUMNS)} FROM users WHERE user_id = ?"

    async def answer(msg: Msg) -> None:
        get = decoder.decode(msg.data)
        found = db.execute(select, (get.user_id,)).fetchall()
        if not found:
            await msg.respond(_encoder.encode({"ok": False, "error": {"code": "not_found"}}))
            return
        row = dict(zip(USER_COLUMNS, found[0], strict=True))
        await msg.respond(_encoder.encode({"ok": True, "data": row, "seq": 0}))

    await _serve(nc, RAW_QUERY, answer)


async def last_responder(nc: NATS, db: sqlite3.Connection) -> None:
    """Decode, read the last ``n`` rows of one conversation, answer them oldest first."""
    decoder = msgspec.json.Decoder(_Last)
    select = (
        f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE org_id = ? AND session_id = ? "
        "ORDER BY position DESC LIMIT ?"
    )

    async def answer(msg: Msg) -> None:
        last = decoder.decode(msg.data)
        found = db.execute(select, (last.org_id, last.session_id, last.n)).fetchall()
        items = [dict(zip(MESSAGE_COLUMNS, row, strict=True)) for row in reversed(found)]
        await msg.respond(_encoder.encode({"ok": True, "data": {"items": items}, "seq": 0}))

    await _serve(nc, RAW_LAST, answer)


def scoped_match(table: Table, scope: Mapping[str, object], text: str) -> str:
    """One FTS5 MATCH of the table's index, as the store writes it: the scope's tokens AND
    any word of ``text`` in the text columns."""
    index = table.full_text
    assert index is not None
    tokens = [fulltext.scope_token(index, c, v) for c, v in scope.items()]
    words = " OR ".join(fulltext.fts5_phrase(w) for w in fulltext.words(text))
    match = "".join(f'{fulltext.SCOPE_COLUMN} : "{t}" AND ' for t in tokens)
    return match + f"{{{' '.join(index.columns)}}} : ({words})"


def newest_matches(table: Table) -> str:
    """The rows of the newest ``?`` matches of a MATCH ``?``, newest first, read by key."""
    index = table.full_text
    assert index is not None
    fts, key = fulltext.fts_table(table), index.key
    return (
        f"SELECT {', '.join(table.column_names)} FROM {table.name} WHERE {key} IN ("
        f"SELECT rowid FROM {fts} WHERE {fts} MATCH ? ORDER BY rowid DESC LIMIT ?) "
        f"ORDER BY {key} DESC"
    )


async def search_responder(nc: NATS, db: sqlite3.Connection) -> None:
    """Decode, find the newest matches in the agent's scope with one MATCH, answer them."""
    decoder = msgspec.json.Decoder(_Search)
    select = newest_matches(MESSAGES)

    async def answer(msg: Msg) -> None:
        search = decoder.decode(msg.data)
        scope = {"org_id": search.org_id, "agent_id": search.agent_id, "redacted_at": None}
        match = scoped_match(MESSAGES, scope, search.text)
        found = db.execute(select, (match, search.limit)).fetchall()
        items = [dict(zip(MESSAGE_COLUMNS, row, strict=True)) for row in found]
        await msg.respond(_encoder.encode({"ok": True, "data": {"items": items}, "seq": 0}))

    await _serve(nc, RAW_SEARCH, answer)


async def memory_responder(nc: NATS, db: sqlite3.Connection) -> None:
    """Two subjects on one memories table: the newest ``limit`` live, unexpired memories of
    one user (RAW_MEMORY_LIST), and the newest ``limit`` live ones of that user matching
    ``text`` with one MATCH (RAW_MEMORY_SEARCH)."""
    decoder = msgspec.json.Decoder(_MemoryRead)
    listing = (
        f"SELECT {', '.join(MEMORY_COLUMNS)} FROM memories "
        "WHERE org_id = ? AND user_id = ? AND state = 'live' "
        "AND (expires_at IS NULL OR expires_at > ?) ORDER BY position DESC LIMIT ?"
    )
    searching = newest_matches(MEMORIES)

    def reply(found: list[tuple[object, ...]]) -> bytes:
        items = [dict(zip(MEMORY_COLUMNS, row, strict=True)) for row in found]
        return _encoder.encode({"ok": True, "data": {"items": items}, "seq": 0})

    async def list_answer(msg: Msg) -> None:
        read = decoder.decode(msg.data)
        now = time.time_ns() // 1_000_000
        found = db.execute(listing, (read.org_id, read.user_id, now, read.limit)).fetchall()
        await msg.respond(reply(found))

    async def search_answer(msg: Msg) -> None:
        read = decoder.decode(msg.data)
        scope = {"org_id": read.org_id, "user_id": read.user_id, "state": "live"}
        match = scoped_match(MEMORIES, scope, read.text)
        await msg.respond(reply(db.execute(searching, (match, read.limit)).fetchall()))

    await _serve(nc, RAW_MEMORY_LIST, list_answer)
    await _serve(nc, RAW_MEMORY_SEARCH, search_answer)


async def _ingest_streams(nc: NATS) -> None:
    """A work-queue stream like AGENTMEM_INGEST and a "log" stream to publish to."""
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=RAW_IN_STREAM,
            subjects=[f"{RAW_INGEST_IN}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=600,
        )
    )
    await js.add_stream(
        StreamConfig(
            name=RAW_LOG_STREAM,
            subjects=[f"{RAW_INGEST_LOG}.>"],
            storage=StorageType.FILE,
            duplicate_window=600,
        )
    )


async def _forward(nc: NATS, messages: list[Msg]) -> None:
    """Publish each message to the log stream (awaited, gathered), then ack each."""
    await _forward_only(nc, messages)
    for m in messages:
        await m.ack()


async def ingest_consumer(nc: NATS) -> asyncio.Task[None]:
    """raw-ingest: one pull consumer read as the service's workers read theirs (PullFeed,
    batches of up to 256), each batch forwarded and acked."""
    from agentmem.pullfeed import PullFeed

    await _ingest_streams(nc)
    await nc.jetstream().add_consumer(
        RAW_IN_STREAM,
        ConsumerConfig(
            durable_name="raw",
            ack_policy=AckPolicy.EXPLICIT,
            max_ack_pending=INGEST_BATCH * 4,
        ),
    )
    feed = PullFeed(nc, RAW_IN_STREAM, "raw", INGEST_BATCH, 1.0)
    await feed.start()

    async def loop() -> None:
        while True:
            batch = await feed.next_batch()
            if batch:
                await _forward(nc, batch)

    return asyncio.create_task(loop())


async def faststream_consumer(url: str, nc: NATS) -> Any:
    """faststream-ingest: the same pipeline with FastStream's JetStream pull subscriber
    (batches of up to 256, acked by FastStream after the handler returns)."""
    from faststream import Context
    from faststream.nats import JStream, NatsBroker, PullSub
    from faststream.nats.message import NatsBatchMessage

    await _ingest_streams(nc)
    broker = NatsBroker(url, logger=None)

    @broker.subscriber(
        f"{RAW_INGEST_IN}.>",
        stream=JStream(RAW_IN_STREAM, declare=False),
        durable="faststream",
        pull_sub=PullSub(batch_size=INGEST_BATCH, timeout=1.0, batch=True),
    )
    async def forward(
        body: list[dict[str, Any]],
        message: NatsBatchMessage = Context("message"),  # noqa: B008
    ) -> None:
        # FastStream decodes the bodies (JSON, validated by its serializer); the publishes
        # need the messages' ids, from the batch's raw messages.
        await _forward_only(nc, list(message.raw_message))

    await broker.start()
    return broker


async def _forward_only(nc: NATS, messages: list[Msg]) -> None:
    """Publish each message to the log stream, awaited, gathered."""
    acks = await asyncio.gather(
        *(
            nc.request(
                f"{RAW_INGEST_LOG}.{m.subject.rsplit('.', 1)[-1]}",
                m.data,
                timeout=30,
                headers={"Nats-Msg-Id": (m.headers or {}).get("Nats-Msg-Id", "")},
            )
            for m in messages
        )
    )
    if any(b'"error"' in a.data for a in acks):
        raise RuntimeError("a publish to the log stream was refused")


async def postgres_memory_responder(nc: NATS, db: Any) -> None:
    """``memory_responder``'s two reads on Postgres (``db``: an asyncpg connection)."""
    decoder = msgspec.json.Decoder(_MemoryRead)
    listing = (
        f"SELECT {', '.join(MEMORY_COLUMNS)} FROM memories "
        "WHERE org_id = $1 AND user_id = $2 AND state = 'live' "
        "AND (expires_at IS NULL OR expires_at > $3) ORDER BY position DESC LIMIT $4"
    )
    settings = "; ".join(fulltext.PG_SEARCH_SETTINGS)

    def reply(found: list[Any]) -> bytes:
        items = [{c: row[c] for c in MEMORY_COLUMNS} for row in found]
        return _encoder.encode({"ok": True, "data": {"items": items}, "seq": 0})

    async def list_answer(msg: Msg) -> None:
        read = decoder.decode(msg.data)
        now = time.time_ns() // 1_000_000
        found = await db.fetch(listing, read.org_id, read.user_id, now, read.limit)
        await msg.respond(reply(found))

    async def search_answer(msg: Msg) -> None:
        read = decoder.decode(msg.data)
        scope = {"org_id": read.org_id, "user_id": read.user_id, "state": "live"}
        query, args = fulltext.postgres_search(
            MEMORIES, fulltext.words(read.text), scope, read.limit
        )
        async with db.transaction(readonly=True):
            await db.execute(settings)
            found = await db.fetch(translate(query), *args)
        await msg.respond(reply(found))

    await _serve(nc, RAW_MEMORY_LIST, list_answer)
    await _serve(nc, RAW_MEMORY_SEARCH, search_answer)


async def run(kind: str, url: str, db_path: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(url, name=f"bench-{kind}")
    db: sqlite3.Connection | None = None
    keep: Any = None  # the ingest consumer's task or broker, kept alive
    pg: Any = None
    try:
        if kind == "raw-command":
            await command_responder(nc)
        elif kind == "raw-ingest":
            keep = await ingest_consumer(nc)
        elif kind == "faststream-ingest":
            keep = await faststream_consumer(url, nc)
        elif kind == "raw-memory-read-postgres":
            pg = await asyncpg.connect(db_path)
            await postgres_memory_responder(nc, pg)
        else:
            if db_path is None:
                raise SystemExit(f"{kind} needs --db")
            db = sqlite3.connect(db_path, isolation_level=None)
            db.execute("PRAGMA query_only = ON")
            if kind == "raw-last50":
                await last_responder(nc, db)
            elif kind == "raw-search":
                await search_responder(nc, db)
            elif kind == "raw-memory-read":
                await memory_responder(nc, db)
            else:
                await query_responder(nc, db)
        print("ready", flush=True)
        await stop.wait()
        if keep is not None and hasattr(keep, "stop"):
            await keep.stop()
    finally:
        await nc.drain()
        if db is not None:
            db.close()
        if pg is not None:
            await pg.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.responder")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--nats", required=True, help="the NATS server URL")
    p.add_argument(
        "--db",
        help="raw-query, raw-last50, raw-search, raw-memory-read: the SQLite file holding the "
        "users, messages or memories table; raw-memory-read-postgres: the Postgres URL",
    )
    args = p.parse_args(argv)
    asyncio.run(run(args.kind, args.nats, args.db))
    return 0


if __name__ == "__main__":
    sys.exit(main())
