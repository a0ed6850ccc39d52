"""The embedded store: one SQLite file in WAL mode, through the ``sqlite3`` DB-API module
(``pysqlite3`` where it is installed: see "Erasing" below).

Writes: one writer thread owns the one writing connection. Every write method (``migrate``,
``apply``, ``reset``) is one call into that thread: a projection batch is BEGIN, the
executemany runs, the one-by-one fallback, the parked events, the checkpoint and COMMIT in a
single hop, not one hop per statement. The thread also serialises the writes, as SQLite
allows one writer anyway.

Reads: on the event loop thread itself, on a connection of their own. In WAL mode a reader
never waits for the writer (it reads the last commit before it started), and a query by an
indexed key takes microseconds, less than the trip to another thread and back would cost.
``python -m bench.readpath`` measured it on a 2-core machine over 10,000 users (p50 of one
call at a time; calls/s with 64 concurrent callers):

    point read by primary key   aiosqlite 122 µs, 18k/s   2-thread pool 134 µs, 14k/s
                                loop thread 10 µs, 104k/s (this store: 10 µs, 97k/s)
    page of 50 (list_users)     aiosqlite 313 µs, 2.9k/s  2-thread pool 328 µs, 2.3k/s
                                loop thread 139 µs, 7.1k/s (this store: 140 µs, 6.7k/s)

While another thread committed 1,000-row batches, a point read's p99 was 2.8 ms through
aiosqlite and 2.4 ms through the pool (a hop waits for the GIL behind the writer), 0.15 ms
on the loop thread.

A read on a reader thread is stopped after ``READ_TIME_LIMIT_S`` (3 s; its progress
handler checks the clock every 10,000 VM steps) and answered ``unavailable``; ``dump`` has
no limit.

What may hold the loop is bounded. The query handlers' reads are by primary key or along an
index (a page is at most 500 rows). A read that takes more than 10,000 SQLite VM steps
(``LOOP_READ_BUDGET`` progress-handler calls; a millisecond or two) is interrupted and run
again on a reader thread, and its SQL goes straight to that thread from then on. A read
that would have to wait for a lock (busy_timeout is 0 on the loop's connection; in WAL mode
that happens only in rare states such as recovery after a crash) moves there too instead
of sleeping. ``dump`` (a whole table) always reads on a reader thread.

Erasing: a table declared ``scrub`` holds what people wrote, and a redaction or a deletion
must leave nothing of it in the files. ``secure_delete`` zeroes deleted content in the
pages; FTS5 tables get their ``secure-delete`` option, so deleted tokens leave the index
segments too (SQLite 3.42+; with an older SQLite the store runs FTS5 ``optimize`` instead,
which rewrites the whole index); and after a batch that updated or deleted rows of such a
table, a ``wal_checkpoint(TRUNCATE)`` empties the -wal file, where the old page images are.
The stdlib ``sqlite3`` of Debian 12 is 3.40, so the store uses ``pysqlite3-binary`` (its own
SQLite, 3.51) where that is installed (Linux x86-64).

The file is plain SQLite 3, so LibSQL opens it as it is. An FTS5 table with secure-delete
on needs SQLite 3.42+ to be read or written (older ones say "invalid fts5 file format").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from agentmem.store import fulltext, sql
from agentmem.store.migrations import RECORD, RECORDED, SCHEMA_MIGRATIONS, Plan, failed
from agentmem.store.port import (
    READ_TIME_LIMIT_S,
    Condition,
    Copy,
    Delete,
    Dialect,
    Migration,
    Parked,
    ProjectionBatch,
    Row,
    RowOp,
    Table,
    Update,
    as_rows,
    fence,
    fence_version,
    read_too_long,
)
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
    shadow_name,
    shadow_table,
    versions_from,
)

if TYPE_CHECKING:
    import sqlite3
else:
    try:  # a newer SQLite than the stdlib's, where installed: see "Erasing" above
        from pysqlite3 import dbapi2 as sqlite3
    except ImportError:
        import sqlite3

log = structlog.get_logger(__name__)

T = TypeVar("T")

# FTS5's secure-delete option came with SQLite 3.42.
SECURE_FTS_DELETE = sqlite3.sqlite_version_info >= (3, 42, 0)
# How often a scrub tries to empty the -wal file while readers hold old snapshots.
SCRUB_ATTEMPTS = 20

_SYSTEM_TABLES = [
    """CREATE TABLE IF NOT EXISTS checkpoints (
        projection TEXT NOT NULL PRIMARY KEY,
        seq BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS parked_events (
        projection TEXT NOT NULL,
        seq BIGINT NOT NULL,
        subject TEXT NOT NULL,
        error TEXT NOT NULL,
        parked_at BIGINT NOT NULL,
        PRIMARY KEY (projection, seq)
    )""",
    VERSIONS_DDL["sqlite"],
]

# Threads for reads that are too long (or would wait) for the event loop thread.
READERS = 2
# A read on the loop thread may run this many SQLite VM steps (progress handler calls of
# _STEPS_PER_CALL each). A point read is under 100 steps, a page of 500 users about 7,000;
# 10,000 steps are a millisecond or two. Past it the read moves to a reader thread.
_STEPS_PER_CALL = 1_000
LOOP_READ_BUDGET = 10
# Lock waits: the writer and the reader threads may wait this long; the loop never waits.
BUSY_TIMEOUT_MS = 10_000
_MOVED_ERRORS = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_INTERRUPT}
# How often (VM steps) a read on a reader thread checks its time limit: about a millisecond.
_DEADLINE_STEPS = 10_000
_MAX_SLOW_QUERIES = 256

# What the database refuses of one item: parked, so that the rest commits. An integer past
# 64 bits is refused by the driver (OverflowError) before the database sees it; retried,
# it would fail the same batch forever and every later event would wait behind it.
REFUSED = (sqlite3.DatabaseError, OverflowError)


def _connect(path: str, busy_timeout_ms: int, check_same_thread: bool = True) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; the writer issues BEGIN/COMMIT itself,
    # so a batch is one transaction, and a read is its own short read transaction.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys = OFF")
    return conn


def _reader(path: str, busy_timeout_ms: int, check_same_thread: bool = True) -> sqlite3.Connection:
    conn = _connect(path, busy_timeout_ms, check_same_thread)
    conn.execute("PRAGMA query_only = ON")  # fetch_one/fetch_all are reads
    return conn


def _rows(cursor: sqlite3.Cursor) -> list[Row]:
    """Every row as a dict. ``fetchall`` runs the statement to its end, so the read
    transaction is over before this returns (an open one would pin the WAL)."""
    found = cursor.fetchall()
    if not found:
        return []
    return as_rows([column[0] for column in cursor.description], found)


def _moved(exc: sqlite3.OperationalError) -> bool:
    """Interrupted by the loop's budget, or it would have had to wait for a lock."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _MOVED_ERRORS


class SQLiteStore(SystemReads):
    def __init__(self, path: str) -> None:
        self.path = path
        self._keys: dict[str, tuple[str, ...]] = {}
        # The writer thread and the connection only it touches.
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        # The loop thread's reader, and the reader threads (one connection each).
        self._loop_reader: sqlite3.Connection | None = None
        self._budget = 0
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_conns_lock = threading.Lock()
        self._slow: set[str] = set()  # SQL that ran past the loop's budget once
        # A read on a reader thread is stopped after this long (``port.READ_TIME_LIMIT_S``).
        self.read_time_limit = READ_TIME_LIMIT_S
        self.dialect: Dialect = "sqlite"
        # Tables whose updates and deletes are scrubbed from disk, and the FTS5 tables.
        self._scrubbed: set[str] = set()
        self._fts_tables: set[str] = set()
        # Tables with a full-text index, and how an upsert into one is staged (``_run``).
        self._indexed: set[str] = set()
        self._staged: dict[str, tuple[str, str, str, str] | None] = {}

    # Lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # Private to the service's user from the moment it exists (message text,
            # emails); SQLite gives the -wal and -shm files the database file's mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._writer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="agentmem-sqlite-writer"
        )
        await self._write(self._open_writer)
        self._readers = concurrent.futures.ThreadPoolExecutor(
            max_workers=READERS, thread_name_prefix="agentmem-sqlite-reader"
        )
        # After the writer: WAL mode is a property of the file, so this one reads in WAL.
        self._loop_reader = _reader(self.path, busy_timeout_ms=0)
        self._loop_reader.set_progress_handler(self._spend, _STEPS_PER_CALL)

    def _open_writer(self) -> None:
        conn = self._conn = _connect(self.path, BUSY_TIMEOUT_MS)
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode is crash-safe for the database file; a lost last transaction is
        # re-applied from the log because its checkpoint was lost with it.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA secure_delete = ON")  # see "Erasing" above
        # Staged rows (``_run``) stay in memory, never in a temporary file.
        conn.execute("PRAGMA temp_store = MEMORY")
        for statement in _SYSTEM_TABLES:
            conn.execute(statement)

    async def close(self) -> None:
        if self._loop_reader is not None:
            self._loop_reader.close()
            self._loop_reader = None
        readers, self._readers = self._readers, None
        if readers is not None:
            # A read still running on a reader thread finishes first.
            await asyncio.get_running_loop().run_in_executor(None, readers.shutdown)
            with self._reader_conns_lock:
                for conn in self._reader_conns:
                    conn.close()
                self._reader_conns.clear()
        writer = self._writer
        if writer is not None:
            # Queued after any write still in the thread, so that one commits first.
            await self._write(self._close_writer)
            self._writer = None
            writer.shutdown(wait=False)

    def _close_writer(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _write(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work`` on the writer thread: one hop, however many statements it runs."""
        if self._writer is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._writer, work, *args)

    @property
    def _writer_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    # Writes (each method below the async one runs on the writer thread) --------------------
    async def migrate(
        self, migrations: Sequence[Migration], unchecked: Collection[str] = ()
    ) -> list[int]:
        plan = Plan(migrations)
        self._keys.update(plan.keys)
        applied = await self._write(self._migrate, plan, unchecked)
        await self._write(self._secure_fulltext, plan)
        return applied

    def _migrate(self, plan: Plan, unchecked: Collection[str]) -> list[int]:
        """Each pending migration in a transaction of its own. BEGIN IMMEDIATE takes the
        write lock before the recorded versions are read again, so another process that
        migrated meanwhile is seen and its work not done twice."""
        conn = self._writer_conn
        for statement in SCHEMA_MIGRATIONS["sqlite"]:
            conn.execute(statement)
        applied = []
        for migration in plan.pending(dict(conn.execute(RECORDED).fetchall())):
            conn.execute("BEGIN IMMEDIATE")
            try:
                if migration in plan.pending(dict(conn.execute(RECORDED).fetchall())):
                    for statement in plan.statements(migration, "sqlite"):
                        conn.execute(statement)
                    conn.execute(RECORD, (migration.version, migration.name))
                    applied.append(migration.version)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise failed(migration, exc) from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        plan.check_columns(
            {
                name: {
                    row[0] for row in conn.execute("SELECT name FROM pragma_table_info(?)", (name,))
                }
                for name in plan.tables
            },
            unchecked,
        )
        return applied

    async def apply(self, batch: ProjectionBatch) -> list[Parked]:
        return await self._write(self._apply, batch)

    def _apply(self, batch: ProjectionBatch) -> list[Parked]:
        conn = self._writer_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._fence(conn, batch)
            parked = list(batch.parked)
            try:
                ops = [op for _, _, item_ops in batch.items for op in item_ops]
                if batch.building:
                    ops = self._into_build(ops, batch)
                for statement, params in sql.grouped(ops, self._keys):
                    self._run(conn, statement, params)
            except REFUSED:
                # Some item is refused: start over one item at a time, each in a savepoint,
                # and park the ones the database refuses.
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                self._fence(conn, batch)
                parked += self._apply_one_by_one(conn, batch)
            self._park(conn, parked)
            conn.execute(
                "INSERT INTO checkpoints (projection, seq) VALUES (?, ?) "
                "ON CONFLICT (projection) DO UPDATE SET seq = excluded.seq",
                (batch.key, batch.checkpoint),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if self._erases(batch):
            self._scrub(conn)
        return parked

    @staticmethod
    def _fence(conn: sqlite3.Connection, batch: ProjectionBatch) -> None:
        """Refuse a stale batch (``port.fence``, ``port.fence_version``). BEGIN IMMEDIATE
        already holds the write lock, so what is read here cannot change before the COMMIT."""
        if batch.version is not None:
            fence_version(batch, SQLiteStore._versions_of(conn, batch.projection))
        row = conn.execute(
            "SELECT seq FROM checkpoints WHERE projection = ?", (batch.key,)
        ).fetchone()
        fence(batch, int(row[0]) if row else 0)

    def _into_build(self, ops: list[RowOp], batch: ProjectionBatch) -> list[RowOp]:
        """A build's operations, on its own tables (``versions.shadow_name``)."""
        version = batch.version
        assert version is not None  # a build's batch names its version (ProjectionBatch.key)
        moved: list[RowOp] = []
        for op in ops:
            changes: dict[str, Any] = {"table": shadow_name(op.table, version)}
            if isinstance(op, Copy):
                changes["source"] = shadow_name(op.source, version)
            elif isinstance(op, Delete) and op.through is not None:
                changes["through"] = shadow_name(op.through, version)
            moved.append(dataclasses.replace(op, **changes))
        return moved

    def _run(self, conn: sqlite3.Connection, statement: str, params: list[Any]) -> None:
        """One run of equal statements. A run of upserts into a table with a full-text index
        is first written to a temporary table, then moved with one INSERT ... SELECT: FTS5
        indexes the rows that its trigger hands it within one statement about five times
        faster than one statement at a time (100,000 messages: 75k against 15k rows/s)."""
        staged = self._staging(statement) if len(params) > 1 else None
        if staged is None:
            conn.executemany(statement, params)
            return
        create, fill, move, empty = staged
        conn.execute(create)  # again each time: a rolled back transaction takes it along
        conn.executemany(fill, params)
        conn.execute(move)
        conn.execute(empty)

    def _staging(self, statement: str) -> tuple[str, str, str, str] | None:
        """(make the stage, fill it, move it into the table, empty it) for an upsert into a
        table with a full-text index; None for any other statement."""
        if statement in self._staged:
            return self._staged[statement]
        staged = None
        for table in self._indexed:
            prefix = f"INSERT INTO {table} ("
            if statement.startswith(prefix) and " ON CONFLICT " in statement:
                columns = statement[len(prefix) : statement.index(")")]
                upsert = statement[statement.index(" ON CONFLICT ") :]
                stage = f"temp.{table}_staged"
                marks = ", ".join("?" for _ in columns.split(","))
                staged = (
                    f"CREATE TEMP TABLE IF NOT EXISTS {table}_staged AS "
                    f"SELECT {columns} FROM main.{table} WHERE 0",
                    f"INSERT INTO {stage} ({columns}) VALUES ({marks})",
                    # WHERE true: without it "ON" would be read as a join's (SQLite's docs).
                    f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM {stage} "
                    f"WHERE true ORDER BY rowid{upsert}",
                    f"DELETE FROM {stage}",
                )
                break
        self._staged[statement] = staged
        return staged

    def _apply_one_by_one(self, conn: sqlite3.Connection, batch: ProjectionBatch) -> list[Parked]:
        parked = []
        for seq, subject, ops in batch.items:
            conn.execute("SAVEPOINT item")
            try:
                if batch.building:
                    ops = self._into_build(ops, batch)
                for statement, params in sql.grouped(ops, self._keys):
                    self._run(conn, statement, params)
            except REFUSED as exc:
                conn.execute("ROLLBACK TO item")
                parked.append(Parked(batch.key, seq, subject, f"{type(exc).__name__}: {exc}"))
            conn.execute("RELEASE item")
        return parked

    @staticmethod
    def _park(conn: sqlite3.Connection, parked: list[Parked]) -> None:
        if not parked:
            return
        now = time.time_ns() // 1_000_000
        conn.executemany(
            "INSERT INTO parked_events (projection, seq, subject, error, parked_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (projection, seq) DO NOTHING",
            [(p.projection, p.seq, p.subject, p.error, now) for p in parked],
        )

    async def reset(self, projection: str, tables: list[Table]) -> None:
        await self._write(self._reset, projection, tables)

    def _reset(self, projection: str, tables: list[Table]) -> None:
        conn = self._writer_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in tables:
                conn.execute(f"DELETE FROM {table.name}")
            conn.execute("DELETE FROM checkpoints WHERE projection = ?", (projection,))
            conn.execute("DELETE FROM parked_events WHERE projection = ?", (projection,))
            conn.execute("DELETE FROM projection_versions WHERE projection = ?", (projection,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if any(table.name in self._scrubbed for table in tables):
            self._scrub(conn)

    # Versions (docs/architecture.md, "Projection versions") ------------------------------
    async def adopt(self, projection: str, version: int, variant: str = "") -> None:
        await self._write(
            self._in_transaction, lambda conn: conn.execute(ADOPT, (projection, version, variant))
        )

    def _in_transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._writer_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    @staticmethod
    def _versions_of(conn: sqlite3.Connection, projection: str) -> VersionState | None:
        cursor = conn.execute(f"{VERSIONS} WHERE projection = ?", (projection,))
        return versions_from(_rows(cursor)).get(projection)

    async def begin_build(
        self, projection: str, tables: list[Table], version: int, variant: str = ""
    ) -> None:
        for table in tables:
            shadow = shadow_table(table, version)
            self._keys[shadow.name] = shadow.primary_key
            if table.scrub:
                self._scrubbed.add(shadow.name)

        def begin(conn: sqlite3.Connection) -> None:
            state = self._versions_of(conn, projection)
            if state is None or not state.needs_build(version, variant):
                raise VersionMismatch(
                    f"projection {projection}: no build of version {version} {variant!r}: "
                    f"the live one is {state}"
                )
            resumed = state.building_this(version, variant)
            if state.building is not None and not resumed:
                self._drop_build(conn, projection, tables, state.building)
            for table in tables:
                for statement in sql.create_table(shadow_table(table, version)):
                    conn.execute(statement)
            if not resumed:
                now = time.time_ns() // 1_000_000
                conn.execute(START_BUILD, (version, variant, now, projection))

        await self._write(self._in_transaction, begin)

    @staticmethod
    def _drop_build(
        conn: sqlite3.Connection, projection: str, tables: list[Table], version: int
    ) -> None:
        for table in tables:
            conn.execute(f"DROP TABLE IF EXISTS {shadow_name(table.name, version)}")
        key = build_key(projection, version)
        conn.execute("DELETE FROM checkpoints WHERE projection = ?", (key,))
        conn.execute("DELETE FROM parked_events WHERE projection = ?", (key,))
        conn.execute(END_BUILD, (projection,))

    async def columns(self, tables: list[str]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for name in tables:
            rows = await self.fetch_all("SELECT name FROM pragma_table_info(?)", name)
            found[name] = {str(r["name"]) for r in rows}
        return found

    async def drop_build(self, projection: str, tables: list[Table]) -> None:
        def drop(conn: sqlite3.Connection) -> None:
            state = self._versions_of(conn, projection)
            if state is not None and state.building is not None:
                self._drop_build(conn, projection, tables, state.building)

        await self._write(self._in_transaction, drop)

    async def switch(self, projection: str, tables: list[Table], version: int) -> int:
        return await self._write(
            self._in_transaction, lambda conn: self._switch(conn, projection, tables, version)
        )

    def _switch(
        self, conn: sqlite3.Connection, projection: str, tables: list[Table], version: int
    ) -> int:
        """Under the write lock (readers go on reading the last commit, WAL): the live
        tables go, the build's take their names, then their indexes and full-text index are
        made under the declared names (SQLite cannot rename an index): the cost of the
        switch, paid by the writer alone."""
        state = self._versions_of(conn, projection)
        if state is None or state.building != version:
            raise VersionMismatch(
                f"projection {projection}: cannot switch to version {version}: the version "
                f"being built is {state.building if state else None}"
            )
        for table in tables:
            if table.full_text is not None:
                for statement in fulltext.sqlite_drop(table):
                    conn.execute(statement)
            conn.execute(f"DROP TABLE IF EXISTS {table.name}")
            shadow = shadow_table(table, version)
            conn.execute(f"ALTER TABLE {shadow.name} RENAME TO {table.name}")
            for name, _, _ in shadow.indexes:
                conn.execute(f"DROP INDEX IF EXISTS {name}")
            for statement in sql.create_table(table):
                conn.execute(statement)
            if table.full_text is not None:
                fts = fulltext.fts_table(table)
                for statement in fulltext.sqlite_ddl(table):
                    conn.execute(statement)
                conn.execute(f"INSERT INTO {fts} ({fts}) VALUES ('rebuild')")
                if SECURE_FTS_DELETE:
                    conn.execute(f"INSERT INTO {fts} ({fts}, rank) VALUES ('secure-delete', 1)")
        key = build_key(projection, version)
        row = conn.execute("SELECT seq FROM checkpoints WHERE projection = ?", (key,)).fetchone()
        checkpoint = int(row[0]) if row else 0
        conn.execute("DELETE FROM checkpoints WHERE projection IN (?, ?)", (projection, key))
        conn.execute(
            "INSERT INTO checkpoints (projection, seq) VALUES (?, ?)", (projection, checkpoint)
        )
        conn.execute("DELETE FROM parked_events WHERE projection = ?", (projection,))
        conn.execute(
            "UPDATE parked_events SET projection = ? WHERE projection = ?", (projection, key)
        )
        conn.execute(SWITCHED, (time.time_ns() // 1_000_000, projection))
        return checkpoint

    # Erasing (on the writer thread; see "Erasing" above) ----------------------------------
    def _secure_fulltext(self, plan: Plan) -> None:
        """Learn the scrubbed and full-text tables; turn on FTS5 secure-delete (a setting
        kept in the FTS5 table itself, so setting it again is harmless)."""
        conn = self._writer_conn
        self._scrubbed |= {name for name, table in plan.tables.items() if table.scrub}
        for table in plan.tables.values():
            if table.full_text is None:
                continue
            fts = fulltext.fts_table(table)
            self._fts_tables.add(fts)
            self._indexed.add(table.name)
            if SECURE_FTS_DELETE:
                conn.execute(f"INSERT INTO {fts} ({fts}, rank) VALUES ('secure-delete', 1)")

    def _erases(self, batch: ProjectionBatch) -> bool:
        """Did the batch overwrite or delete rows of a scrubbed table?"""
        scrubbed = self._scrubbed
        for _, _, ops in batch.items:
            for op in ops:
                # A loop, not ``any`` over a generator that built ``Update | Delete`` for
                # each op: together 2% of the GIL samples under memory.add.
                if isinstance(op, Delete) and (op.erase or op.table in scrubbed):
                    return True
                if isinstance(op, Update) and op.table in scrubbed:
                    return True
        return False

    def _scrub(self, conn: sqlite3.Connection) -> None:
        """Leave nothing on disk of what was just overwritten or deleted: the old page
        images in the -wal file go with a TRUNCATE checkpoint (which waits for readers of
        older snapshots; they are short), after FTS5 ``optimize`` on an SQLite without
        secure-delete."""
        if not SECURE_FTS_DELETE:
            for fts in sorted(self._fts_tables):
                conn.execute(f"INSERT INTO {fts} ({fts}) VALUES ('optimize')")
        for _ in range(SCRUB_ATTEMPTS):
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(0.05)
        log.warning(
            "the -wal file could not be emptied after an erasure; its old page images go "
            "with the next checkpoint",
            path=self.path,
        )

    # Reads -------------------------------------------------------------------------------
    async def dump(self, table: Table) -> list[tuple[Any, ...]]:
        order = ", ".join(table.primary_key)
        columns = ", ".join(table.column_names)
        query = f"SELECT {columns} FROM {table.name} ORDER BY {order}"
        return await self._on_reader_thread(self._read_tuples, query, ())

    async def fetch_one(self, query: str, *args: Any) -> Row | None:
        rows = await self.fetch_all(query, *args)
        return rows[0] if rows else None

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
        query, args = fulltext.sqlite_search(table, words, where, limit, condition)
        return fulltext.ranked(await self.fetch_all(query, *args))

    async def fetch_all(self, query: str, *args: Any) -> list[Row]:
        if query not in self._slow:
            try:
                return self._read_on_loop(query, args)
            except sqlite3.OperationalError as exc:
                if not _moved(exc):
                    raise
                if (exc.sqlite_errorcode & 0xFF) == sqlite3.SQLITE_INTERRUPT:
                    if len(self._slow) >= _MAX_SLOW_QUERIES:
                        self._slow.clear()
                    self._slow.add(query)
        return await self._on_reader_thread(self._read_rows, query, args)

    def _spend(self) -> int:
        """The loop reader's progress handler: non-zero interrupts the statement."""
        self._budget -= 1
        return self._budget < 0

    def _read_on_loop(self, query: str, args: tuple[Any, ...]) -> list[Row]:
        conn = self._loop_reader
        if conn is None:
            raise RuntimeError("store is not open")
        self._budget = LOOP_READ_BUDGET
        return _rows(conn.execute(query, args))

    async def _on_reader_thread(
        self, work: Callable[[str, tuple[Any, ...]], T], query: str, args: tuple[Any, ...]
    ) -> T:
        if self._readers is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._readers, work, query, args)

    def _thread_reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if conn is None:
            # check_same_thread off only so that close() can close it from the loop thread
            # once the reader threads have stopped; until then only this thread uses it.
            conn = _reader(self.path, BUSY_TIMEOUT_MS, check_same_thread=False)
            conn.set_progress_handler(self._past_deadline, _DEADLINE_STEPS)
            self._reader_local.conn = conn
            self._reader_local.deadline = None
            with self._reader_conns_lock:
                self._reader_conns.append(conn)
        return conn

    def _past_deadline(self) -> bool:
        """A reader thread's progress handler: true stops the statement (SQLITE_INTERRUPT)."""
        deadline: float | None = self._reader_local.deadline
        return deadline is not None and time.monotonic() > deadline

    def _read_rows(self, query: str, args: tuple[Any, ...]) -> list[Row]:
        """A query's read, stopped after ``read_time_limit`` (``dump`` has none)."""
        conn = self._thread_reader()
        self._reader_local.deadline = time.monotonic() + self.read_time_limit
        try:
            return _rows(conn.execute(query, args))
        except sqlite3.OperationalError as exc:
            if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_INTERRUPT:
                raise read_too_long(self.read_time_limit) from exc
            raise
        finally:
            self._reader_local.deadline = None

    def _read_tuples(self, query: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._thread_reader().execute(query, args).fetchall()]
