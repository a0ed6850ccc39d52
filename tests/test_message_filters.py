"""``message.list`` by time range and by role reads along an index, on both stores: a long
conversation filtered to its last hour, or to one role, is not read whole.

The plans are the stores' own: SQLite's ``EXPLAIN QUERY PLAN`` must name the filter's index,
and Postgres's ``EXPLAIN (ANALYZE)`` must read no more rows of ``messages`` than the range
holds (with the table's statistics and without them). The pages are checked against the
same filter applied in Python to the whole conversation.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentmem.projections.messages import list_messages, list_sql, position
from agentmem.projections.migrations import MIGRATIONS
from agentmem.store import ProjectionBatch, Store, Upsert, open_store
from agentmem.store.postgres import PostgresStore, translate
from agentmem.store.sqlite import SQLiteStore
from tests.pg import DSN, postgres_schema, with_search_path
from tests.test_store_search import most_rows_read

ORG, SESSION = "org-a", "long-chat"
HOUR_MS = 3_600_000
COMMITS, PER_COMMIT = 30, 999  # a commit of 999 messages an hour: 29,970 messages
ROLES = ("user", "assistant", "tool")
PAGE = 51


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = str(tmp_path / "store.db")
        else:
            url = with_search_path(DSN, await stack.enter_async_context(postgres_schema()))
        opened = await open_store(url)
        stack.push_async_callback(opened.close)
        await opened.migrate(MIGRATIONS)
        await seed(opened)
        yield opened


async def seed(store: Store) -> None:
    """A conversation of 30 hours, and a short one beside it, as the projection writes them."""
    for seq in range(1, COMMITS + 1):
        ops = [
            Upsert("messages", row(SESSION, seq, index, ROLES[index % 3]))
            for index in range(PER_COMMIT)
        ]
        # A position is unique across conversations: the commit's last one is another's.
        ops.append(Upsert("messages", row("short-chat", seq, PER_COMMIT, "user")))
        parked = await store.apply(ProjectionBatch("messages", seq, [(seq, f"evt.{seq}", ops)]))
        assert parked == [], parked[:1]


def row(session_id: str, seq: int, index: int, role: str) -> dict[str, Any]:
    return {
        "message_id": f"{session_id}-{seq}-{index}",
        "org_id": ORG,
        "session_id": session_id,
        "agent_id": "agent-a",
        "user_id": None,
        "role": role,
        "content": f"message {index} of hour {seq}",
        "tool_calls": "[]",
        "tool_call_id": None,
        "metadata": "{}",
        "seq": seq,
        "position": position(seq, index),
        "created_at": seq * HOUR_MS,
        "redacted_at": None,
    }


LAST_HOUR = {"since": COMMITS * HOUR_MS, "until": None, "role": None}
CASES = {
    "last hour": LAST_HOUR,
    "an hour in the middle": {"since": 10 * HOUR_MS, "until": 11 * HOUR_MS, "role": None},
    "assistant": {"since": None, "until": None, "role": "assistant"},
    "assistant, last hour": {**LAST_HOUR, "role": "assistant"},
}


def expected(filters: dict[str, Any], order: str, after: int | None) -> list[int]:
    """The positions a page must hold: the filter applied in Python to every message."""
    positions = []
    for seq in range(1, COMMITS + 1):
        at = seq * HOUR_MS
        if filters["since"] is not None and at < filters["since"]:
            continue
        if filters["until"] is not None and at >= filters["until"]:
            continue
        for index in range(PER_COMMIT):
            if filters["role"] is None or ROLES[index % 3] == filters["role"]:
                positions.append(position(seq, index))
    if order == "desc":
        positions.reverse()
    if after is not None:
        positions = [p for p in positions if (p > after if order == "asc" else p < after)]
    return positions[:PAGE]


async def test_filtered_pages_read_along_an_index(store: Store) -> None:
    """Every case, both orders, the first page and the next (after its cursor)."""
    for case, filters in CASES.items():
        for order in ("asc", "desc"):
            first = expected(filters, order, None)
            pages = ((None, first), (first[-1], expected(filters, order, first[-1])))
            for after, want in pages:
                rows = await list_messages(
                    store, ORG, SESSION, after=after, order=order, limit=PAGE, **filters
                )
                assert [r["position"] for r in rows] == want, (case, order, after)
                sql, args = list_sql(ORG, SESSION, after=after, order=order, limit=PAGE, **filters)
                if isinstance(store, SQLiteStore):
                    await assert_sqlite_plan(store, sql, args, filters)
                else:
                    assert isinstance(store, PostgresStore)
                    await assert_postgres_reads(store, sql, args, filters)


async def assert_sqlite_plan(
    store: SQLiteStore, sql: str, args: list[Any], filters: dict[str, Any]
) -> None:
    conn = store._loop_reader
    assert conn is not None
    plan = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
    index = "messages_session_time" if filters["since"] is not None else "messages_session_role"
    assert any(step.startswith(f"SEARCH messages USING INDEX {index} ") for step in plan), plan


async def assert_postgres_reads(
    store: PostgresStore, sql: str, args: list[Any], filters: dict[str, Any]
) -> None:
    """Rows of ``messages`` read: at most the time range's (an hour: 999), or a page and a
    little for a role alone; the conversation holds 29,970. Without statistics and with."""
    bound = PER_COMMIT if filters["since"] is not None else 3 * PAGE
    for analyzed in (False, True):
        if analyzed:
            await store.fetch_all("ANALYZE messages")
        async with store.pool.acquire() as conn:
            explained = await conn.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {translate(sql)}", *args
            )
        most = most_rows_read(json.loads(explained)[0]["Plan"], "messages")
        assert 0 < most <= bound, (analyzed, most, explained)
