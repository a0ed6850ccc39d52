"""``python -m bench.readpath``: which way should a query read SQLite from the event loop?

The micro-measurement behind ``agentmem/store/sqlite.py``'s read path. Over a users table
shaped like the projection's (10,000 rows, WAL, synchronous=NORMAL) it times a point read by
primary key and a 50-row keyset page (``list_users``) four ways:

- ``aiosqlite``: ``execute_fetchall`` on one of two aiosqlite reader connections (the store
  before this measurement): one hop to the connection's thread and back per statement;
- ``pool``: a plain ``sqlite3`` connection per thread of a 2-thread executor, through
  ``loop.run_in_executor``: one hop per statement as well;
- ``loop``: a plain ``sqlite3`` connection used directly on the event loop thread;
- ``store``: ``SQLiteStore.fetch_all`` as built: a read on the loop thread, with the
  progress handler that bounds how long a read may hold the loop, and rows made into dicts.

Each is timed one call at a time (p50, p99) and with 64 concurrent callers (calls/s), first
on an idle file, then while another thread commits 1,000-row batches into the same file.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

try:
    import aiosqlite
except ImportError:  # the store no longer needs it; `pip install -e '.[bench]'` has it
    aiosqlite = None  # type: ignore[assignment]

from agentmem import ids
from agentmem.projections.users import USERS
from agentmem.store import sql
from agentmem.store.sqlite import SQLiteStore

COLUMNS = ", ".join(USERS.column_names)
POINT = f"SELECT {COLUMNS} FROM users WHERE user_id = ?"
PAGE = f"SELECT {COLUMNS} FROM users WHERE org_id = ? AND user_id > ? ORDER BY user_id LIMIT ?"
INSERT = (
    f"INSERT INTO users ({COLUMNS}) VALUES ({', '.join('?' for _ in USERS.column_names)}) "
    "ON CONFLICT (user_id) DO UPDATE SET name = excluded.name, version = excluded.version"
)

Read = Callable[[str, tuple[Any, ...]], Awaitable[list[dict[str, Any]]]]


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 100")
    return conn


def as_dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    rows = cursor.fetchall()
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in rows]


def user_row(i: int, user_id: str, org_id: str) -> tuple[object, ...]:
    """A row of the users table, whatever columns it has grown."""
    known: dict[str, object] = {
        "user_id": user_id,
        "org_id": org_id,
        "name": f"User {i}",
        "email": f"{user_id}@bench.example",
        "roles": '["member"]',
        "version": i + 1,
    }
    empty = {"text": "", "json": "[]", "integer": 0}
    return tuple(known.get(c.name, empty[c.type]) for c in USERS.columns)


def seed(path: Path, n: int, orgs: int) -> tuple[list[str], list[str]]:
    conn = connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for statement in sql.create_table(USERS):
        conn.execute(statement)
    org_ids = [ids.new_id() for _ in range(orgs)]
    user_ids = [ids.new_id() for _ in range(n)]
    rows = [user_row(i, u, org_ids[i % orgs]) for i, u in enumerate(user_ids)]
    conn.execute("BEGIN")
    conn.executemany(INSERT, rows)
    conn.execute("COMMIT")
    conn.close()
    return user_ids, org_ids


def writer_thread(
    path: Path, user_ids: list[str], org_ids: list[str], stop: threading.Event
) -> threading.Thread:
    """Commit 1,000-row upsert batches back to back, as a busy projection would."""

    def run() -> None:
        conn = connect(path)
        conn.execute("PRAGMA synchronous = NORMAL")
        version = 10**6
        while not stop.is_set():
            version += 1
            start = (version * 1000) % len(user_ids)
            batch = user_ids[start : start + 1000]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                INSERT,
                [
                    user_row(version, u, org_ids[(start + i) % len(org_ids)])
                    for i, u in enumerate(batch)
                ],
            )
            conn.execute("COMMIT")
            time.sleep(0.002)
        conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def timed(
    read: Read, make_args: Callable[[int], tuple[str, tuple[Any, ...]]], n: int
) -> dict[str, float]:
    for i in range(200):  # warm-up: statement caches, page cache
        await read(*make_args(i))
    latencies = []
    for i in range(n):
        before = time.perf_counter()
        await read(*make_args(i))
        latencies.append(time.perf_counter() - before)
    latencies.sort()
    counter = iter(range(10**9))
    started = time.perf_counter()
    total = n * 4

    async def worker() -> None:
        for i in counter:
            if i >= total:
                return
            await read(*make_args(i))

    await asyncio.gather(*(worker() for _ in range(64)))
    rate = total / (time.perf_counter() - started)
    return {
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "conc_per_s": rate,
    }


async def ways(path: Path) -> tuple[Callable[[], Awaitable[None]], dict[str, Read]]:
    found: dict[str, Read] = {}
    readers: list[Any] = []
    if aiosqlite is not None:
        readers = [await aiosqlite.connect(path, isolation_level=None) for _ in range(2)]
        turn = iter(range(10**12))

        async def via_aiosqlite(query: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
            db = readers[next(turn) % 2]
            rows = await db.execute_fetchall(query, args)
            return [dict(zip(USERS.column_names, row, strict=True)) for row in rows]

        found["aiosqlite"] = via_aiosqlite

    local = threading.local()

    def pooled(query: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = connect(path)
        return as_dicts(conn.execute(query, args))

    pool = concurrent.futures.ThreadPoolExecutor(2)
    loop = asyncio.get_running_loop()

    async def via_pool(query: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        return await loop.run_in_executor(pool, pooled, query, args)

    on_loop = connect(path)

    async def via_loop(query: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        return as_dicts(on_loop.execute(query, args))

    store = SQLiteStore(str(path))
    await store.open()

    async def via_store(query: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        return await store.fetch_all(query, *args)

    async def close() -> None:
        for db in readers:
            await db.close()
        pool.shutdown()
        on_loop.close()
        await store.close()

    return close, {**found, "pool": via_pool, "loop": via_loop, "store": via_store}


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="agentmem-readpath-") as tmp:
        path = Path(tmp) / "users.db"
        user_ids, org_ids = seed(path, 10_000, 20)
        close, reads = await ways(path)

        def point(i: int) -> tuple[str, tuple[Any, ...]]:
            return POINT, (user_ids[(i * 7919) % len(user_ids)],)

        def page(i: int) -> tuple[str, tuple[Any, ...]]:
            return PAGE, (org_ids[i % len(org_ids)], "", 51)

        print(f"{'shape':10} {'way':11} {'writer':7} {'p50 µs':>8} {'p99 µs':>8} {'64 conc/s':>10}")
        for busy in (False, True):
            stop = threading.Event()
            thread = writer_thread(path, user_ids, org_ids, stop) if busy else None
            for shape, make in (("point", point), ("page of 50", page)):
                for way, read in reads.items():
                    r = await timed(read, make, n)
                    print(
                        f"{shape:10} {way:11} {'busy' if busy else 'idle':7} "
                        f"{r['p50_us']:8.1f} {r['p99_us']:8.1f} {r['conc_per_s']:10,.0f}",
                        flush=True,
                    )
            stop.set()
            if thread:
                thread.join()
        await close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.readpath")
    p.add_argument("-n", type=int, default=5000, help="timed calls per way (default 5000)")
    asyncio.run(main(p.parse_args().n))
