"""The Postgres store's reads on connections of their own (``agentmem/store/read_lane.py``),
on the test server: kept between reads, dropped after any failure, never more than the
lane's size (a burst goes through the pool), closed with the store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]
import pytest

from agentmem.errors import AgentMemError, UnavailableError
from agentmem.store.postgres import PostgresStore
from tests.pg import DSN, end_session, postgres_schema, with_search_path

LANE = 2
POOL = 3
PID = "SELECT pg_backend_pid() AS pid"


@contextlib.asynccontextmanager
async def store_with_lane() -> AsyncIterator[PostgresStore]:
    async with postgres_schema() as schema:
        store = PostgresStore(with_search_path(DSN, schema), max_size=POOL, read_lane=LANE)
        await store.open()
        try:
            yield store
        finally:
            await store.close()


async def backend(store: PostgresStore) -> int:
    row = await store.fetch_one(PID)
    assert row is not None
    return int(row["pid"])


async def open_backends(pids: set[int], seconds: float = 2.0) -> set[int]:
    """Which of ``pids`` still have a session on the server once ``seconds`` have passed
    (at once when none has): a connection leaves the lane at once and closes just after."""
    admin = await asyncpg.connect(DSN)
    try:
        for _ in range(int(seconds * 20)):
            rows = await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(pids)
            )
            if not rows:
                break
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    return {row["pid"] for row in rows}


async def test_reads_one_after_another_share_one_connection_apart_from_the_pool() -> None:
    async with store_with_lane() as store:
        first = await backend(store)
        assert [await backend(store) for _ in range(5)] == [first] * 5
        rows = await store.fetch_all(PID)
        assert rows == [{"pid": first}]
        async with store.pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") != first


async def test_a_failed_read_drops_its_connection_and_the_next_read_opens_another() -> None:
    async with store_with_lane() as store:
        before = await backend(store)
        with pytest.raises(asyncpg.PostgresError):
            await store.fetch_all("SELECT * FROM no_such_table")
        after = await backend(store)
        assert after != before
        assert await open_backends({before}) == set()


async def test_a_session_the_server_ended_is_replaced_without_a_failed_read() -> None:
    async with store_with_lane() as store:
        before = await backend(store)
        admin = await asyncpg.connect(DSN)
        try:
            await end_session(admin, before)
        finally:
            await admin.close()
        await asyncio.sleep(0.2)  # the client sees its socket closed
        after = await backend(store)
        assert after != before


async def test_a_read_cut_at_its_time_limit_leaves_the_lane_usable() -> None:
    async with store_with_lane() as store:
        store.read_time_limit = 0.2
        before = await backend(store)
        with pytest.raises(AgentMemError):
            await store.fetch_all("SELECT pg_sleep(2)")
        after = await backend(store)
        assert after != before  # the cut read's connection was dropped, not reused


async def test_a_burst_of_reads_goes_past_the_lane_through_the_pool() -> None:
    async with store_with_lane() as store:
        burst = LANE + POOL + 1
        rows = await asyncio.gather(
            *(store.fetch_all(f"{PID}, pg_sleep(0.3)") for _ in range(burst))
        )
        assert all(len(found) == 1 for found in rows)  # none refused
        # The lane's connections and the pool's, the last read waiting for one of them: an
        # unbounded lane would have opened one per read.
        assert len({found[0]["pid"] for found in rows}) == LANE + POOL


async def test_closing_the_store_closes_the_lane() -> None:
    async with store_with_lane() as store:
        pids = set(
            found[0]["pid"]
            for found in await asyncio.gather(
                *(
                    store.fetch_all("SELECT pg_backend_pid() AS pid, pg_sleep(0.2)")
                    for _ in range(LANE)
                )
            )
        )
    assert await open_backends(pids) == set()


async def test_a_read_whose_session_the_server_ends_answers_unavailable() -> None:
    """A read cut by the server (a restart, an operator's ``pg_terminate_backend``) is one
    the caller may retry: `unavailable`, where asyncpg's own error answered `internal`."""
    async with store_with_lane() as store:
        pid = await backend(store)
        reading = asyncio.create_task(store.fetch_all(f"{PID}, pg_sleep(5)"))
        admin = await asyncpg.connect(DSN)
        try:
            for _ in range(100):  # until the read runs on the server
                running = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                    pid,
                )
                if running:
                    break
                await asyncio.sleep(0.02)
            await end_session(admin, pid)
        finally:
            await admin.close()
        with pytest.raises(UnavailableError, match="connection was lost"):
            await asyncio.wait_for(reading, 10)
        assert await backend(store) != pid  # and the next read has a connection of its own
