"""Batched upserts on Postgres: asyncpg ``executemany`` against COPY, for the projection
workload. ``python -m bench --only pg-batch``.

Each batch is one transaction holding a run of upserts into the projection's ``users``
table (its indexes included) and the checkpoint upsert, as ``PostgresStore.apply`` writes
it. Four cases per run, each on an emptied table: batches of 10, 100 and 1,000 new rows,
and batches of 1,000 upserts of rows that exist (the ``DO UPDATE`` path). Rows (and the
store's batches) are built before the clock starts; the figure is rows per second, timed
batch by batch with the ways taking turns.

The ways to write a batch:

- ``executemany``: the store's way before this measurement, one prepared upsert per row
  (asyncpg pipelines them).
- ``copy``: ``copy_records_to_table`` into a temporary table (``ON COMMIT DELETE ROWS``,
  made once per connection), then one ``INSERT ... SELECT ... ORDER BY ord ON CONFLICT DO
  UPDATE``: works for upserts, as the store needs.
- ``unnest``: one ``INSERT ... SELECT FROM unnest($1::text[], ...) WITH ORDINALITY ... ON
  CONFLICT DO UPDATE`` with a column array per parameter.
- ``copy-direct``: ``copy_records_to_table`` straight into the table, in a savepoint (as
  the store tries it): it works only when every row is new, so the update case does not
  apply.
- ``store``: ``PostgresStore.apply`` itself, with its own choice of the above, and
  ``store-executemany``, the same with COPY turned off (the store before this measurement).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from agentmem import ids
from agentmem.projections.migrations import MIGRATIONS
from agentmem.projections.users import USERS
from agentmem.store import ProjectionBatch, Upsert, postgres
from agentmem.store.postgres import COPY_MIN_ROWS, PostgresStore
from bench.harness import Config, Metric, Run, Workload
from bench.pg import postgres_store

COLUMNS = USERS.column_names
KEY = USERS.primary_key
# (metric key, label, rows per batch, upserts of existing rows)
CASES = (
    ("new10", "10 new", 10, False),
    ("new100", "100 new", 100, False),
    ("new1000", "1000 new", 1_000, False),
    ("update1000", "1000 existing", 1_000, True),
)
UPDATES = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in KEY)
UPSERT = (
    f"INSERT INTO users ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))}) "
    f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {UPDATES}"
)
CHECKPOINT = (
    "INSERT INTO checkpoints (projection, seq) VALUES ('bench', $1) "
    "ON CONFLICT (projection) DO UPDATE SET seq = excluded.seq"
)
_PG_TYPES = {"text": "text", "json": "text", "integer": "bigint"}
UNNEST = (
    f"INSERT INTO users ({', '.join(COLUMNS)}) "
    f"SELECT {', '.join(COLUMNS)} FROM unnest("
    + ", ".join(f"${i}::{_PG_TYPES[c.type]}[]" for i, c in enumerate(USERS.columns, start=1))
    + f") WITH ORDINALITY AS r({', '.join(COLUMNS)}, ord) ORDER BY ord "
    f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {UPDATES}"
)
TEMP = "bench_batch_users"
MAKE_TEMP = (
    f"CREATE TEMP TABLE IF NOT EXISTS {TEMP} "
    "(LIKE users INCLUDING DEFAULTS, ord BIGINT NOT NULL) ON COMMIT DELETE ROWS"
)
FROM_TEMP = (
    f"INSERT INTO users ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM {TEMP} "
    f"ORDER BY ord ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {UPDATES}"
)

Row = tuple[Any, ...]
Write = Callable[[asyncpg.Connection, list[Row]], Awaitable[None]]


async def by_executemany(conn: asyncpg.Connection, rows: list[Row]) -> None:
    await conn.executemany(UPSERT, rows)


async def by_copy(conn: asyncpg.Connection, rows: list[Row]) -> None:
    await conn.copy_records_to_table(
        TEMP, records=[(*r, i) for i, r in enumerate(rows)], columns=[*COLUMNS, "ord"]
    )
    await conn.execute(FROM_TEMP)


async def by_unnest(conn: asyncpg.Connection, rows: list[Row]) -> None:
    await conn.execute(UNNEST, *(list(column) for column in zip(*rows, strict=True)))


async def by_copy_direct(conn: asyncpg.Connection, rows: list[Row]) -> None:
    async with conn.transaction():  # in a savepoint, as the store tries it
        await conn.copy_records_to_table("users", records=rows, columns=list(COLUMNS))


def user(n: int, key: str, version: int) -> Row:
    at = 1_700_000_000_000 + n
    values = {
        "user_id": key,
        "org_id": "bench-org",
        "name": f"User {n} v{version}",
        "email": f"{key}@bench.example",
        "roles": '["member"]',
        "service_admin": 0,
        "created_at": at,
        "updated_at": at + version,
        "version": version,
    }
    return tuple(values[c] for c in COLUMNS)


def batches(keys: list[str], size: int, version: int) -> list[list[Row]]:
    rows = [user(n, key, version) for n, key in enumerate(keys)]
    return [rows[i : i + size] for i in range(0, len(rows), size)]


@contextlib.asynccontextmanager
async def schema() -> AsyncIterator[str]:
    """A schema of its own on the server, with the store's tables; dropped afterwards."""
    async with postgres_store("pg-batch") as dsn:
        store = PostgresStore(dsn, min_size=1, max_size=2)
        await store.open()
        try:
            await store.migrate(MIGRATIONS)
        finally:
            await store.close()
        yield dsn


def rows_per_case(cfg: Config, warmup: bool) -> int:
    # A fifth of the replay size (20,000 rows in a normal run), at least two large batches.
    return max(2_000, cfg.count(cfg.sizes.replay_events // 5, warmup))


def store_batches(name: str, todo: list[list[Row]], after: int) -> list[ProjectionBatch]:
    """The same rows as projection batches: one Upsert per item, as registrations make."""
    out = []
    for rows in todo:
        batch = ProjectionBatch(name, after + len(rows), after=after)
        for row in rows:
            after += 1
            op = Upsert("users", dict(zip(COLUMNS, row, strict=True)))
            batch.items.append((after, "bench", [op]))
        out.append(batch)
    return out


@contextlib.asynccontextmanager
async def session(cfg: Config) -> AsyncIterator[Run]:
    """Every way on one table. Within a case the ways take turns batch by batch (the order
    rotates from one repeat to the next), so a busy moment on the machine, which shares its
    2 cores with whatever else runs, falls on all of them alike."""
    async with schema() as dsn:
        conn = await asyncpg.connect(dsn)
        store = PostgresStore(dsn, min_size=1, max_size=2)
        await store.open()
        try:
            await store.migrate(MIGRATIONS)
            await conn.execute(MAKE_TEMP)
            rotation = 0
            checkpoints = {"raw": 0, **dict.fromkeys(STORE_WAYS, 0)}

            async def write(way: str, rows: list[Row]) -> None:
                checkpoints["raw"] += len(rows)
                async with conn.transaction():
                    await WAYS[way](conn, rows)
                    await conn.execute(CHECKPOINT, checkpoints["raw"])

            async def run(warmup: bool) -> dict[str, float]:
                nonlocal rotation
                n = rows_per_case(cfg, warmup)
                rotation += 1
                result: dict[str, float] = {}
                for key, _, size, update in CASES:
                    ways = [w for w in [*WAYS, *STORE_WAYS] if not (update and w == "copy-direct")]
                    ways = ways[rotation % len(ways) :] + ways[: rotation % len(ways)]
                    await conn.execute("TRUNCATE users")
                    todo: dict[str, list[list[Row]]] = {}
                    for way in ways:
                        keys = [ids.new_id() for _ in range(n)]
                        if update:
                            for rows in batches(keys, 1_000, 1):
                                await write("copy-direct", rows)
                        todo[way] = batches(keys, size, 2 if update else 1)
                    prepared: dict[str, list[ProjectionBatch]] = {}
                    for way in STORE_WAYS:
                        prepared[way] = store_batches(way, todo[way], checkpoints[way])
                        checkpoints[way] = prepared[way][-1].checkpoint
                    spent = dict.fromkeys(ways, 0.0)
                    for i in range(len(todo[ways[0]])):
                        for way in ways:
                            started = time.perf_counter()
                            if way in STORE_WAYS:
                                postgres.COPY_MIN_ROWS = STORE_WAYS[way]
                                assert not await store.apply(prepared[way][i])
                            else:
                                await write(way, todo[way][i])
                            spent[way] += time.perf_counter() - started
                    for way in ways:
                        result[f"{way}.{key}"] = n / spent[way]
                return result

            yield run
        finally:
            postgres.COPY_MIN_ROWS = COPY_MIN_ROWS
            await store.close()
            await conn.close()


WAYS: dict[str, Write] = {
    "executemany": by_executemany,
    "copy": by_copy,
    "unnest": by_unnest,
    "copy-direct": by_copy_direct,
}
# The store as it is, and as it was before COPY (every run by executemany).
STORE_WAYS = {"store": COPY_MIN_ROWS, "store-executemany": sys.maxsize}
TITLES = {
    "executemany": "executemany",
    "copy": "COPY to temp + INSERT",
    "unnest": "INSERT FROM unnest",
    "copy-direct": "COPY into table (savepoint)",
    "store": "store.apply",
    "store-executemany": "store.apply, no COPY",
}


def metrics() -> tuple[Metric, ...]:
    out = []
    for key, label, _, update in CASES:
        for way, title in TITLES.items():
            if update and way == "copy-direct":
                continue
            base = () if way == "executemany" else (f"pg-batch:executemany.{key}",)
            out.append(Metric(f"{way}.{key}", f"{label} rows/batch: {title}", "rows/s", base))
    return tuple(out)


WORKLOADS = [Workload("pg-batch", "Postgres batched upserts", metrics(), session)]
