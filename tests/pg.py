"""The test Postgres server: a fresh schema per test, and a store URL that selects it.

The DSN comes from ``AGENTMEM_TEST_POSTGRES`` (by default the local server). With no Postgres
reachable a test that needs it skips, with the reason on one line, unless ``CI`` is set:
there the Postgres tests must run, so they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import asyncpg  # type: ignore[import-untyped]
import pytest

DSN = os.environ.get("AGENTMEM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A fresh schema on the test server, dropped afterwards; skips (or fails in CI)."""
    try:
        admin = await asyncpg.connect(DSN, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = f"Postgres unreachable at {DSN}: {type(exc).__name__}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run the Postgres store tests)")
        pytest.skip(reason)
    schema = f"test_{secrets.token_hex(6)}"
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield schema
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` with ``schema`` as the search path of every connection made from it."""
    return f"{dsn}{'&' if '?' in dsn else '?'}options={quote(f'-csearch_path={schema}')}"


# pg_terminate_backend's own wait for the exit (5 s) once ran out in a CI run: the wait then
# goes on here, by pid, as long as this.
SESSION_EXIT_S = 30.0


async def end_session(admin: asyncpg.Connection, pid: int) -> None:
    """End a session from the server's side, as a dead host or a cut network does, and
    return once it has exited (its locks freed with it): without a timeout
    ``pg_terminate_backend`` returns as soon as it has signalled the backend, which then
    tells its client (the FATAL error that asyncpg, idle, reports on the next call as
    "another operation is in progress") and only afterwards exits and frees its advisory
    locks; a session asking for such a lock in between is refused."""
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    deadline = time.monotonic() + SESSION_EXIT_S
    while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
        assert time.monotonic() < deadline, f"session {pid} still there after {SESSION_EXIT_S}s"
        await asyncio.sleep(0.02)


# Every file of the schema's tables: heap, indexes, TOAST and TOAST index.
_RELATION_FILES = """
SELECT c.relname AS name, pg_relation_filepath(c.oid) AS path FROM pg_class c
 WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'i')
UNION
SELECT c.relname || ' (TOAST)', pg_relation_filepath(c.reltoastrelid) FROM pg_class c
 WHERE c.relnamespace = current_schema()::regnamespace AND c.reltoastrelid <> 0
UNION
SELECT c.relname || ' (TOAST index)', pg_relation_filepath(i.indexrelid) FROM pg_class c
  JOIN pg_index i ON i.indrelid = c.reltoastrelid
 WHERE c.relnamespace = current_schema()::regnamespace
"""


async def postgres_file_leftovers(store_url: str, wanted: list[bytes]) -> list[str] | None:
    """Every (file, needle) where a file of the schema's tables (heap, index, TOAST; read
    after a CHECKPOINT wrote every dirty page) holds a needle's bytes: dead rows included,
    which SQL cannot see. None when the server's data directory is not readable here (a
    server on another machine: then the SQL check is what can be checked)."""
    connection = await asyncpg.connect(store_url)
    try:
        folder = Path(await connection.fetchval("SHOW data_directory"))
        if not os.access(folder, os.R_OK | os.X_OK):
            return None
        await connection.execute("CHECKPOINT")
        paths = {
            row["path"]: row["name"]
            for row in await connection.fetch(_RELATION_FILES)
            if row["path"]
        }
    finally:
        await connection.close()
    return _files_holding(folder, paths, wanted)


def _files_holding(folder: Path, paths: dict[str, str], wanted: list[bytes]) -> list[str]:
    found = []
    for relative, name in paths.items():
        for path in sorted(folder.glob(f"{relative}*")):  # its segments: 123, 123.1, ...
            if path.name.split(".")[0] != Path(relative).name or "_" in path.name:
                continue  # another relation's file, or a free-space or visibility map
            data = path.read_bytes()
            found += [f"{name} ({relative}): {n[:40]!r}" for n in wanted if n in data]
    return found
