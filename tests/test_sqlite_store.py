"""The SQLite store's threads: writes in one hop to the writer thread, reads on the event loop
thread, and what moves a read off the loop (a read past its budget, a lock it would wait for).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agentmem.store import Column, ProjectionBatch, Table, Upsert
from agentmem.store import sqlite as sqlite_store
from agentmem.store.port import Migration
from agentmem.store.sqlite import SQLiteStore

# The DB-API module the store uses (pysqlite3 where it is installed): its errors are the ones
# the store tells apart.
sqlite3 = sqlite_store.sqlite3

ITEMS = Table(
    name="items",
    columns=(Column("item_id", "text"), Column("n", "integer")),
    primary_key=("item_id",),
    indexes=(("items_n", ("n",), True),),
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(str(tmp_path / "store.db"))
    await opened.open()
    await opened.migrate([Migration(1, "items", (ITEMS,))])
    yield opened
    await opened.close()


def batch(checkpoint: int, rows: list[tuple[str, int]]) -> ProjectionBatch:
    return ProjectionBatch(
        projection="items",
        checkpoint=checkpoint,
        items=[
            (seq, f"evt.{item_id}", [Upsert("items", {"item_id": item_id, "n": n})])
            for seq, (item_id, n) in enumerate(rows, start=checkpoint - len(rows) + 1)
        ],
    )


async def test_a_batch_is_one_call_to_the_writer_thread(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    write = store._write

    async def counted(work: Callable[..., Any], *args: Any) -> Any:
        threads.append(getattr(work, "__name__", "?"))
        return await write(work, *args)

    monkeypatch.setattr(store, "_write", counted)
    # The second item collides with the first on the unique n: the batch falls back to one
    # item at a time, parks one, and still takes one call.
    parked = await store.apply(batch(3, [("a", 1), ("b", 1), ("c", 3)]))
    assert threads == ["_apply"]
    assert [(p.seq, p.subject) for p in parked] == [(2, "evt.b")]
    assert await store.fetch_all("SELECT item_id FROM items ORDER BY item_id") == [
        {"item_id": "a"},
        {"item_id": "c"},
    ]
    assert await store.checkpoint("items") == 3


async def test_a_read_on_the_loop_sees_the_commit_that_apply_returned_from(
    store: SQLiteStore,
) -> None:
    for i in range(1, 51):
        await store.apply(batch(i, [(f"item{i}", i)]))
        row = await store.fetch_one("SELECT n FROM items WHERE item_id = ?", f"item{i}")
        assert row == {"n": i}
        assert await store.checkpoint("items") == i


async def test_a_read_past_the_loop_budget_moves_to_a_reader_thread(
    store: SQLiteStore,
) -> None:
    rows = [(f"item{i:05}", i) for i in range(20_000)]
    await store.apply(batch(len(rows), rows))
    scan = "SELECT item_id, n FROM items ORDER BY n"  # every row: far past the budget
    found = await store.fetch_all(scan)
    assert len(found) == 20_000
    assert found[0] == {"item_id": "item00000", "n": 0}
    assert scan in store._slow  # from now on it goes straight to a reader thread
    assert len(await store.fetch_all(scan)) == 20_000
    # A point read stays on the loop.
    point = "SELECT n FROM items WHERE item_id = ?"
    assert await store.fetch_one(point, "item00007") == {"n": 7}
    assert point not in store._slow
    assert len(await store.dump(ITEMS)) == 20_000


async def test_a_read_that_would_wait_for_a_lock_moves_to_a_reader_thread(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WAL reader is refused only in rare states (recovery after a crash, an
    exclusive-mode connection); the loop's reader does not wait then (busy_timeout 0), it
    hands the read to a reader thread, which may wait."""
    await store.apply(batch(1, [("a", 1)]))
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY

    class Refusing:
        def execute(self, *args: object) -> sqlite3.Cursor:
            raise busy

    monkeypatch.setattr(store, "_loop_reader", Refusing())
    query = "SELECT n FROM items WHERE item_id = ?"
    assert await store.fetch_one(query, "a") == {"n": 1}
    assert query not in store._slow  # a lock is not the query's fault: next time, the loop


async def test_the_loop_reader_does_not_wait_for_locks(store: SQLiteStore) -> None:
    assert store._loop_reader is not None
    assert store._loop_reader.execute("PRAGMA busy_timeout").fetchone() == (0,)


async def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "closed.db"))
    await store.open()
    await store.close()
    with pytest.raises(RuntimeError, match="not open"):
        await store.fetch_one("SELECT 1")
    with pytest.raises(RuntimeError, match="not open"):
        await store.apply(batch(1, [("a", 1)]))
