"""``python -m bench.responder raw-command|raw-query|raw-last50|raw-search``: a raw baseline's
responder,
in a process of its own, as the service runs in its own (``python -m agentmem serve``).

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
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sqlite3
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agentmem import ids, subjects
from agentmem.projections.messages import MESSAGES
from agentmem.projections.users import USERS
from agentmem.store import fulltext

RAW_COMMAND = "bench.raw.cmd"
RAW_QUERY = "bench.raw.get"
RAW_LAST = "bench.raw.last"
RAW_SEARCH = "bench.raw.search"
USER_COLUMNS = USERS.column_names
MESSAGE_COLUMNS = MESSAGES.column_names
KINDS = ("raw-command", "raw-query", "raw-last50", "raw-search")


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
    await nc.flush()  # the server knows the interest before any client asks


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


async def search_responder(nc: NATS, db: sqlite3.Connection) -> None:
    """Decode, find the newest matches in the agent's scope with one MATCH, answer them."""
    decoder = msgspec.json.Decoder(_Search)
    index = MESSAGES.full_text
    assert index is not None
    fts = fulltext.fts_table(MESSAGES)
    select = (
        f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE position IN ("
        f"SELECT rowid FROM {fts} WHERE {fts} MATCH ? ORDER BY rowid DESC LIMIT ?) "
        "ORDER BY position DESC"
    )

    async def answer(msg: Msg) -> None:
        search = decoder.decode(msg.data)
        scope = {"org_id": search.org_id, "agent_id": search.agent_id, "redacted_at": None}
        tokens = [fulltext.scope_token(index, c, v) for c, v in scope.items()]
        words = " OR ".join(fulltext.fts5_phrase(w) for w in fulltext.words(search.text))
        match = "".join(f'{fulltext.SCOPE_COLUMN} : "{t}" AND ' for t in tokens)
        match += f"{{{' '.join(index.columns)}}} : ({words})"
        found = db.execute(select, (match, search.limit)).fetchall()
        items = [dict(zip(MESSAGE_COLUMNS, row, strict=True)) for row in found]
        await msg.respond(_encoder.encode({"ok": True, "data": {"items": items}, "seq": 0}))

    await _serve(nc, RAW_SEARCH, answer)


async def run(kind: str, url: str, db_path: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(url, name=f"bench-{kind}")
    db: sqlite3.Connection | None = None
    try:
        if kind == "raw-command":
            await command_responder(nc)
        else:
            if db_path is None:
                raise SystemExit(f"{kind} needs --db")
            db = sqlite3.connect(db_path, isolation_level=None)
            db.execute("PRAGMA query_only = ON")
            if kind == "raw-last50":
                await last_responder(nc, db)
            elif kind == "raw-search":
                await search_responder(nc, db)
            else:
                await query_responder(nc, db)
        print("ready", flush=True)
        await stop.wait()
    finally:
        await nc.drain()
        if db is not None:
            db.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.responder")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--nats", required=True, help="the NATS server URL")
    p.add_argument(
        "--db",
        help="raw-query, raw-last50, raw-search: the SQLite file holding the users or messages "
        "table",
    )
    args = p.parse_args(argv)
    asyncio.run(run(args.kind, args.nats, args.db))
    return 0


if __name__ == "__main__":
    sys.exit(main())
