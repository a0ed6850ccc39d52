"""The store for scale: Postgres through asyncpg, with a connection pool.

The SQL is the shared text of ``agentmem.store.sql`` and the queries (``?`` placeholders);
each string is translated to Postgres's ``$1..$n`` once and the translation cached, and
asyncpg prepares (and caches) the statement per connection.

A projection batch is one transaction: an ``executemany`` per run of equal statements (a
long run of upserts of new rows: one COPY, see ``_write_run``), the parked events and the
checkpoint upsert. When the database refuses something, the
transaction is rolled back and the batch applied again one item at a time, each in a
savepoint (a nested ``conn.transaction()``); the items refused again are parked and the rest
commits with the checkpoint, as in the SQLite store.

Erasing: a deletion that must leave the files (``Delete.erase``, a forget) leaves its rows
as dead tuples in the table's heap, TOAST and index files, where a plain ``VACUUM`` keeps
their bytes (it only marks the space free; measured: the text is still in the heap file
after ``DELETE``, ``VACUUM`` and ``CHECKPOINT``). So after a batch with erasing deletions, each
of their tables is rewritten with ``VACUUM FULL`` (new files, indexes
and TOAST included; the old ones are truncated at once and unlinked at the next
checkpoint), whether or not the batch removed rows: earlier updates and deletions of the
same data left dead rows too. It takes the table's exclusive lock for the rewrite: reads of
that table wait for it (seconds for a table of a few hundred thousand rows), a price paid
per forget (and per batch holding a forget in a replay). The tables due are recorded in
``rewrites_due`` in the batch's own transaction and struck off once rewritten, so a process
killed between the commit and the rewrite (a helper found the forgotten rows in the files
of 3 of 4 such kills) leaves the rewrite to the next start or forget, not the rows.
The WAL keeps what was written until its segments are recycled (docs/security.md).

Text columns are created with ``COLLATE "C"`` so that ``ORDER BY`` and ``>`` on text compare
bytes, as SQLite does: a page cursor and ``dump`` order are the same on both engines.

The pool's connections take their settings from the URL: parameters asyncpg does not know
(``?search_path=myschema``) become server settings, and ``options=-csearch_path%3D...``
is passed to the server as libpq would.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from functools import lru_cache
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import structlog

from agentmem.errors import UnavailableError
from agentmem.store import fulltext, sql
from agentmem.store.migrations import RECORD, RECORDED, SCHEMA_MIGRATIONS, Plan, failed
from agentmem.store.port import (
    READ_TIME_LIMIT_S,
    ColumnType,
    Condition,
    Delete,
    Dialect,
    Migration,
    Parked,
    ProjectionBatch,
    Row,
    Table,
    as_rows,
    fence,
    fence_version,
    read_too_long,
)
from agentmem.store.read_lane import ReadLane
from agentmem.store.system_reads import SystemReads
from agentmem.store.versions import (
    ADOPT,
    END_BUILD,
    START_BUILD,
    SWITCHED,
    VERSIONS,
    VERSIONS_DDL,
    VersionMismatch,
    VersionState,
    build_key,
    build_schema,
    versions_from,
)

# Text compared as bytes, as SQLite does: a dump or a page orders alike on both stores.
_TYPES: dict[ColumnType, str] = {
    "text": 'TEXT COLLATE "C"',
    "integer": "BIGINT",
    "json": 'TEXT COLLATE "C"',
    "blob": "BYTEA",
}

# A read's connection gone under it: the server ended the session or went away.
CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,  # pg_terminate_backend, a shutdown
    ConnectionError,
)

_SYSTEM_TABLES = [
    """CREATE TABLE IF NOT EXISTS checkpoints (
        projection TEXT COLLATE "C" NOT NULL PRIMARY KEY,
        seq BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS parked_events (
        projection TEXT COLLATE "C" NOT NULL,
        seq BIGINT NOT NULL,
        subject TEXT NOT NULL,
        error TEXT NOT NULL,
        parked_at BIGINT NOT NULL,
        PRIMARY KEY (projection, seq)
    )""",
    VERSIONS_DDL["postgres"],
    # Tables a forget deleted from whose rewrite is not done yet (see "Erasing" above):
    # written in the batch's transaction, so a process killed between the commit and the
    # rewrite leaves the rewrite to the next start (or the next forget) instead of the
    # forgotten rows to the files.
    """CREATE TABLE IF NOT EXISTS rewrites_due (
        table_name TEXT COLLATE "C" NOT NULL PRIMARY KEY
    )""",
]

# Two processes migrating at once must not race on CREATE ... IF NOT EXISTS (it can fail
# with a unique violation in the catalog): migrations hold this transaction-level lock.
_MIGRATE_LOCK = 0x6167_656E_746D_656D  # "agentmem"
_MIGRATE_LOCK_SIGNED = _MIGRATE_LOCK - (1 << 64) if _MIGRATE_LOCK >= 1 << 63 else _MIGRATE_LOCK


log = structlog.get_logger(__name__)

# A run of at least this many upserts is first tried as a COPY (``_write_run``).
# ``python -m bench --only pg-batch`` (docs/performance.md, "Batched writes on Postgres"):
# COPY in its savepoint wrote runs of 10 new rows no faster than executemany, runs of 100
# 1.7x and of 1,000 2.6x as fast; below the threshold a run stays on the simple path.
COPY_MIN_ROWS = 100
# How long close waits for connections still in use before it cuts them.
CLOSE_TIMEOUT_S = 10.0
# Connections kept for reads besides the pool's (of up to ``max_size``): a process has up
# to this many more open (docs/deploy.md).
READ_LANE_SIZE = 4
# After a failed attempt, this many long runs of the table go by executemany.
COPY_BACKOFF_RUNS = 16
# A rewrite after an erasure is done again while it had to keep dead rows (``_rewrite``).
REWRITE_ATTEMPTS = 8
REWRITE_PAUSE_S = 0.05
_KEPT = re.compile(r"(\d+) dead row versions cannot be removed yet")


def rows_of(records: list[asyncpg.Record]) -> list[Row]:
    """A query's records as rows (``as_rows``: a quarter faster than ``record.items()``)."""
    return as_rows(tuple(records[0].keys()), records) if records else []


@lru_cache(maxsize=2048)
def translate(query: str) -> str:
    """``?`` placeholders to ``$1..$n``, leaving quoted strings and identifiers alone."""
    out: list[str] = []
    n = 0
    quote: str | None = None
    for ch in query:
        if quote is not None:
            if ch == quote:
                quote = None
            out.append(ch)
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            n += 1
            out.append(f"${n}")
        else:
            out.append(ch)
    return "".join(out)


async def fence_batch(conn: asyncpg.Connection, batch: ProjectionBatch) -> None:
    """Refuse a stale batch (``port.fence``) against the checkpoint row, locked with
    FOR UPDATE until the transaction ends: a second worker's batch for the same projection
    waits here and then sees the first one's checkpoint, so one of them is refused."""
    if batch.building:
        # The live checkpoint row first, as a switch locks them: a switch and a build's
        # batch wait for each other instead of deadlocking.
        await lock_checkpoint(conn, batch.projection)
    stored = await lock_checkpoint(conn, batch.key)
    if batch.version is not None:
        # A switch changes the versions under the live checkpoint's lock, which this
        # transaction holds now: what it reads here stays true until it commits.
        found = await conn.fetch(translate(f"{VERSIONS} WHERE projection = ?"), batch.projection)
        state = versions_from([dict(r.items()) for r in found]).get(batch.projection)
        fence_version(batch, state)
    fence(batch, stored)


async def lock_checkpoint(conn: asyncpg.Connection, key: str) -> int:
    """The checkpoint of ``key``, its row locked (FOR UPDATE) until the transaction ends."""
    query = "SELECT seq FROM checkpoints WHERE projection = $1 FOR UPDATE"
    stored = await conn.fetchval(query, key)
    if stored is None:
        # No row to lock yet: create it (a concurrent creator makes this wait for its
        # commit), then lock it like any other.
        await conn.execute(
            "INSERT INTO checkpoints (projection, seq) VALUES ($1, 0) "
            "ON CONFLICT (projection) DO NOTHING",
            key,
        )
        stored = await conn.fetchval(query, key)
    return int(stored)


async def _columns(conn: asyncpg.Connection, tables: list[str]) -> dict[str, set[str]]:
    """The columns of each table, found through the search path as the queries find it."""
    rows = await conn.fetch(
        "SELECT t.name, a.attname FROM unnest($1::text[]) AS t(name) "
        "JOIN pg_attribute a ON a.attrelid = to_regclass(t.name) "
        "WHERE a.attnum > 0 AND NOT a.attisdropped",
        tables,
    )
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["name"], set()).add(row["attname"])
    return found


async def _after_use(conn: asyncpg.Connection) -> None:
    """What a connection needs when it goes back to the pool: nothing more than asyncpg
    does anyway (roll back a transaction left open). Every setting this store makes is
    ``SET LOCAL`` (gone with its transaction), it opens no cursor and listens to nothing,
    and its one session lock (``migrate``) is released by its holder, or the connection
    closed. asyncpg's default reset (``RESET ALL``, ``CLOSE ALL``, ``UNLISTEN *``, every
    advisory lock released) was one more round trip to the server on every query, before
    the query's answer was handed over: a one-row read through the pool took 413-456 µs
    with it and 171-200 µs without (p50 of 2,500, local Postgres, this 2-core machine)."""


class PostgresStore(SystemReads):
    def __init__(
        self, dsn: str, min_size: int = 1, max_size: int = 10, read_lane: int = READ_LANE_SIZE
    ) -> None:
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        # The queries' reads, on connections of their own (agentmem/store/read_lane.py).
        self._reads = ReadLane(dsn, read_lane)
        self._keys: dict[str, tuple[str, ...]] = {}
        self._copy_skips: dict[str, int] = {}  # per table, runs left before COPY is tried again
        # A query's read is cancelled after this long (``port.READ_TIME_LIMIT_S``).
        self.read_time_limit = READ_TIME_LIMIT_S
        self.dialect: Dialect = "postgres"
        # The schema the live tables are in, and the search path, as the pool's connections
        # have them: a build's tables go in a schema of their own, found first on its writes.
        self.schema = "public"
        self.search_path = "public"

    # Lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=self.min_size, max_size=self.max_size, reset=_after_use
        )
        await self._run_locked(_SYSTEM_TABLES)
        async with self.pool.acquire() as conn:
            self.schema = str(await conn.fetchval("SELECT current_schema()"))
            self.search_path = str(await conn.fetchval("SHOW search_path"))
            await self._rewrite(conn)  # what a process stopped before its rewrite left

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        await self._reads.close(CLOSE_TIMEOUT_S)
        try:
            # asyncpg's close waits, unbounded, for every connection to come back.
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("postgres connections still in use at close; cutting them")
            pool.terminate()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def _run_locked(self, statements: list[str]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK_SIGNED)
            for statement in statements:
                await conn.execute(statement)

    # Writes ------------------------------------------------------------------------------
    async def migrate(
        self, migrations: Sequence[Migration], unchecked: Collection[str] = ()
    ) -> list[int]:
        plan = Plan(migrations)
        self._keys.update(plan.keys)
        applied: list[int] = []
        async with self.pool.acquire() as conn:
            # A session lock held across the migrations' own transactions: a process that
            # starts meanwhile waits here, then finds them recorded.
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATE_LOCK_SIGNED)
            try:
                for statement in SCHEMA_MIGRATIONS["postgres"]:
                    await conn.execute(statement)
                recorded = {r["version"]: r["name"] for r in await conn.fetch(RECORDED)}
                for migration in plan.pending(recorded):
                    try:
                        async with conn.transaction():
                            for statement in plan.statements(migration, "postgres", _TYPES):
                                await conn.execute(statement)
                            await conn.execute(translate(RECORD), migration.version, migration.name)
                    except asyncpg.PostgresError as exc:
                        raise failed(migration, exc) from exc
                    applied.append(migration.version)
                plan.check_columns(await _columns(conn, list(plan.tables)), unchecked)
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATE_LOCK_SIGNED)
                except BaseException:
                    conn.terminate()  # the pool does not reset sessions (``_after_use``)
                    raise
        return applied

    async def apply(self, batch: ProjectionBatch) -> list[Parked]:
        ops = [op for _, _, item_ops in batch.items for op in item_ops]
        # Tables a forget deletes from: rewritten after the commit, whatever this batch
        # removed, as earlier deletions and updates of the same data left dead rows too.
        erasing = {op.table for op in ops if isinstance(op, Delete) and op.erase}
        async with self.pool.acquire() as conn:
            parked = list(batch.parked)
            try:
                async with conn.transaction():
                    await self._into_build(conn, batch)
                    await fence_batch(conn, batch)
                    for statement, params in sql.grouped(ops, self._keys):
                        await self._write_run(conn, statement, params)
                    await self._finish(conn, batch, parked, erasing)
                if erasing:
                    await self._rewrite(conn)
                return parked
            except asyncpg.PostgresError:
                pass
            # Some item is refused: start over one item at a time, each in a savepoint, and
            # park the ones the database refuses.
            async with conn.transaction():
                await self._into_build(conn, batch)
                await fence_batch(conn, batch)
                for seq, subject, item_ops in batch.items:
                    try:
                        async with conn.transaction():
                            for statement, params in sql.grouped(item_ops, self._keys):
                                await conn.executemany(translate(statement), params)
                    except asyncpg.PostgresError as exc:
                        parked.append(
                            Parked(batch.key, seq, subject, f"{type(exc).__name__}: {exc}")
                        )
                await self._finish(conn, batch, parked, erasing)
            if erasing:
                await self._rewrite(conn)
            return parked

    @staticmethod
    async def _rewrite(conn: asyncpg.Connection) -> None:
        """``VACUUM FULL`` each table an erasing deletion touched (see "Erasing" above) and
        ``rewrites_due`` still names; after the commit, as VACUUM runs outside a
        transaction. A rewrite copies the dead rows that a transaction still running may
        see (another table's rewrite, a long read): it is done again, a little later, until
        none is left. A failure is logged, not raised: the batch is applied, and the table
        stays due for the next forget's rewrite, or the next start's."""
        tables = [r["table_name"] for r in await conn.fetch("SELECT table_name FROM rewrites_due")]
        if not tables:
            return
        kept: list[int] = []

        def listen(_conn: Any, message: Any) -> None:
            found = _KEPT.search(getattr(message, "detail", None) or "")
            if found:
                kept.append(int(found.group(1)))

        conn.add_log_listener(listen)
        try:
            for table in sorted(tables):
                for attempt in range(REWRITE_ATTEMPTS):
                    kept.clear()
                    try:
                        await conn.execute(f'VACUUM (FULL, VERBOSE) "{table}"')
                    except asyncpg.UndefinedTableError:
                        await conn.execute("DELETE FROM rewrites_due WHERE table_name = $1", table)
                        break  # dropped since: its files went with it
                    except asyncpg.PostgresError as exc:
                        log.warning(
                            "a table could not be rewritten after an erasure",
                            table=table,
                            error=str(exc),
                        )
                        break
                    if not any(kept):
                        await conn.execute("DELETE FROM rewrites_due WHERE table_name = $1", table)
                        break
                    await asyncio.sleep(REWRITE_PAUSE_S * (attempt + 1))
                else:
                    log.warning(
                        "dead rows of an erasure are still in a table's files: a "
                        "transaction kept them visible",
                        table=table,
                        rows=sum(kept),
                    )
        finally:
            conn.remove_log_listener(listen)

    async def _write_run(
        self, conn: asyncpg.Connection, statement: str, params: list[tuple[object, ...]]
    ) -> None:
        """One run of equal statements. A long run of upserts is first tried as one COPY
        into the table, in a savepoint. It succeeds only when every row is new, and then it
        did what the upserts one after another would have done, about twice as fast
        through ``apply``; a projection's upserts nearly always make new rows (changes to a
        row come as Updates). A row whose key exists (or a key twice in the run) makes it
        fail, leaving nothing, and the run goes by executemany; the table's next few long
        runs then skip the attempt."""
        target = sql.UPSERT_TARGETS.get(statement) if len(params) >= COPY_MIN_ROWS else None
        if target is not None:
            table, columns = target
            skips = self._copy_skips.get(table, 0)
            if skips:
                self._copy_skips[table] = skips - 1
            else:
                try:
                    async with conn.transaction():
                        await conn.copy_records_to_table(
                            table, records=params, columns=list(columns)
                        )
                    return
                except Exception:  # any failure: executemany does the run, or fails as before
                    self._copy_skips[table] = COPY_BACKOFF_RUNS
        await conn.executemany(translate(statement), params)

    @staticmethod
    async def _finish(
        conn: asyncpg.Connection, batch: ProjectionBatch, parked: list[Parked], erasing: set[str]
    ) -> None:
        if erasing:
            await conn.executemany(
                "INSERT INTO rewrites_due (table_name) VALUES ($1) ON CONFLICT DO NOTHING",
                [(table,) for table in sorted(erasing)],
            )
        if parked:
            now = time.time_ns() // 1_000_000
            await conn.executemany(
                "INSERT INTO parked_events (projection, seq, subject, error, parked_at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (projection, seq) DO NOTHING",
                [(p.projection, p.seq, p.subject, p.error, now) for p in parked],
            )
        await conn.execute(
            "INSERT INTO checkpoints (projection, seq) VALUES ($1, $2) "
            "ON CONFLICT (projection) DO UPDATE SET seq = excluded.seq",
            batch.key,
            batch.checkpoint,
        )

    async def _into_build(self, conn: asyncpg.Connection, batch: ProjectionBatch) -> None:
        """A build's batch writes the tables of the build's schema, found first."""
        if batch.building:
            assert batch.version is not None  # a build's batch names its version
            schema = build_schema(self.schema, batch.projection, batch.version)
            await conn.execute(f'SET LOCAL search_path TO "{schema}", {self.search_path}')

    # Versions (docs/architecture.md, "Projection versions") -------------------------------
    async def adopt(self, projection: str, version: int, variant: str = "") -> None:
        await self.pool.execute(translate(ADOPT), projection, version, variant)

    @staticmethod
    async def _versions_of(conn: asyncpg.Connection, projection: str) -> VersionState | None:
        rows = await conn.fetch(
            translate(f"{VERSIONS} WHERE projection = ? FOR UPDATE"), projection
        )
        return versions_from([dict(r.items()) for r in rows]).get(projection)

    async def begin_build(
        self, projection: str, tables: list[Table], version: int, variant: str = ""
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await lock_checkpoint(conn, projection)
            state = await self._versions_of(conn, projection)
            if state is None or not state.needs_build(version, variant):
                raise VersionMismatch(
                    f"projection {projection}: no build of version {version} {variant!r}: "
                    f"the live one is {state}"
                )
            resumed = state.building_this(version, variant)
            if state.building is not None and not resumed:
                await self._drop_build(conn, projection, state.building)
            schema = build_schema(self.schema, projection, version)
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(f'SET LOCAL search_path TO "{schema}"')
            for table in tables:
                for statement in sql.create_table(table, _TYPES):
                    await conn.execute(statement)
                if table.full_text is not None:
                    for statement in fulltext.postgres_ddl(table):
                        await conn.execute(statement)
            await conn.execute(f"SET LOCAL search_path TO {self.search_path}")
            if not resumed:
                now = time.time_ns() // 1_000_000
                await conn.execute(translate(START_BUILD), version, variant, now, projection)

    async def _drop_build(self, conn: asyncpg.Connection, projection: str, version: int) -> None:
        schema = build_schema(self.schema, projection, version)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        key = build_key(projection, version)
        await conn.execute("DELETE FROM checkpoints WHERE projection = $1", key)
        await conn.execute("DELETE FROM parked_events WHERE projection = $1", key)
        await conn.execute(translate(END_BUILD), projection)

    async def columns(self, tables: list[str]) -> dict[str, set[str]]:
        async with self.pool.acquire() as conn:
            found = await _columns(conn, tables)
        return {name: found.get(name, set()) for name in tables}

    async def drop_build(self, projection: str, tables: list[Table]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            state = await self._versions_of(conn, projection)
            if state is not None and state.building is not None:
                await self._drop_build(conn, projection, state.building)

    async def switch(self, projection: str, tables: list[Table], version: int) -> int:
        """One transaction: the checkpoint rows locked (a batch of either side waits, then
        is refused by its fence), the live tables dropped, the build's moved into the live
        schema with their indexes (``SET SCHEMA`` rewrites no row), the bookkeeping moved.
        A query waits for the transaction's locks (milliseconds) and reads the new tables."""
        key = build_key(projection, version)
        async with self.pool.acquire() as conn, conn.transaction():
            await lock_checkpoint(conn, projection)
            checkpoint = await lock_checkpoint(conn, key)
            state = await self._versions_of(conn, projection)
            if state is None or state.building != version:
                raise VersionMismatch(
                    f"projection {projection}: cannot switch to version {version}: the version "
                    f"being built is {state.building if state else None}"
                )
            schema = build_schema(self.schema, projection, version)
            for table in tables:
                await conn.execute(f'DROP TABLE IF EXISTS "{self.schema}".{table.name}')
                await conn.execute(
                    f'ALTER TABLE "{schema}".{table.name} SET SCHEMA "{self.schema}"'
                )
            await conn.execute(f'DROP SCHEMA "{schema}"')  # empty now: not CASCADE
            await conn.execute(
                "UPDATE checkpoints SET seq = $1 WHERE projection = $2", checkpoint, projection
            )
            await conn.execute("DELETE FROM checkpoints WHERE projection = $1", key)
            await conn.execute("DELETE FROM parked_events WHERE projection = $1", projection)
            await conn.execute(
                "UPDATE parked_events SET projection = $1 WHERE projection = $2", projection, key
            )
            await conn.execute(translate(SWITCHED), time.time_ns() // 1_000_000, projection)
        return checkpoint

    async def reset(self, projection: str, tables: list[Table]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            for table in tables:
                await conn.execute(f"DELETE FROM {table.name}")
            await conn.execute("DELETE FROM checkpoints WHERE projection = $1", projection)
            await conn.execute("DELETE FROM parked_events WHERE projection = $1", projection)
            await conn.execute("DELETE FROM projection_versions WHERE projection = $1", projection)

    # Reads -------------------------------------------------------------------------------
    async def dump(self, table: Table) -> list[tuple[Any, ...]]:
        order = ", ".join(table.primary_key)
        columns = ", ".join(table.column_names)
        records = await self.pool.fetch(f"SELECT {columns} FROM {table.name} ORDER BY {order}")
        return [tuple(record) for record in records]

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for one read (the read lane's, ``read_lane``), whose failures the
        caller may retry answered as such: a read cut at its time limit, or a connection
        the server ended (a restart, an operator's ``pg_terminate_backend``: asyncpg may
        then find it in the middle of consuming that error, ``InternalClientError``), which
        answered ``internal`` before."""
        try:
            async with self._reads.connection(self.pool) as conn:
                yield conn
        except TimeoutError as exc:
            raise read_too_long(self.read_time_limit) from exc
        except CONNECTION_LOST as exc:
            raise UnavailableError(f"the store's connection was lost: {exc!r}; retry") from exc

    async def fetch_one(self, query: str, *args: Any) -> Row | None:
        """A query's first row; asyncpg cancels it on the server after ``read_time_limit``."""
        async with self._read() as conn:
            record = await conn.fetchrow(translate(query), *args, timeout=self.read_time_limit)
        return rows_of([record])[0] if record is not None else None

    async def fetch_all(self, query: str, *args: Any) -> list[Row]:
        """A query's read; asyncpg cancels it on the server after ``read_time_limit``."""
        async with self._read() as conn:
            records = await conn.fetch(translate(query), *args, timeout=self.read_time_limit)
        return rows_of(records)

    async def search(
        self,
        table: Table,
        text: str,
        where: Mapping[str, Any],
        limit: int,
        condition: Condition | None = None,
    ) -> list[Row]:
        words = fulltext.words(text)
        if not words:
            return []
        query, args = fulltext.postgres_search(table, words, where, limit, condition)
        async with self._read() as conn, conn.transaction(readonly=True):
            # Planned for its own words, walking the scope (fulltext.postgres_search).
            await conn.execute("; ".join(fulltext.PG_SEARCH_SETTINGS))
            records = await conn.fetch(translate(query), *args, timeout=self.read_time_limit)
        return fulltext.ranked(rows_of(records))
