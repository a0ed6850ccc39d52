"""Full-text search and erasure through the store port, on SQLite and on Postgres: the same
cases on both engines (SQLite FTS5; Postgres tsvector + GIN), and, for SQLite, the files
themselves after an erasure."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentmem.store import (
    Column,
    Delete,
    FullText,
    ProjectionBatch,
    Store,
    Table,
    Update,
    Upsert,
    fulltext,
    open_store,
)
from agentmem.store.port import Migration, Sql
from agentmem.store.sqlite import SQLiteStore
from tests.pg import DSN, postgres_schema, with_search_path

NOTES = Table(
    name="notes",
    columns=(
        Column("note_id", "text"),
        Column("owner", "text"),
        Column("body", "text"),
        Column("pos", "integer"),
        Column("gone_at", "integer", nullable=True),
    ),
    primary_key=("note_id",),
    indexes=(("notes_pos", ("pos",), True),),
    full_text=FullText(columns=("body",), key="pos"),
    scrub=True,
)
MIGRATIONS = [Migration(1, "notes", (NOTES, Sql(**fulltext.ddl(NOTES))))]


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
        yield opened


class Notes:
    """Applies batches to the notes table, one seq after the other."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seq = 0

    async def apply(self, *ops: Upsert | Update | Delete) -> None:
        self.seq += 1
        parked = await self.store.apply(
            ProjectionBatch("notes", self.seq, [(self.seq, f"evt.{self.seq}", list(ops))])
        )
        assert parked == []

    async def add(self, note_id: str, body: str, owner: str = "ann") -> None:
        row = {
            "note_id": note_id,
            "owner": owner,
            "body": body,
            "pos": len(note_id) * 1000 + int(note_id[1:]),
        }
        await self.apply(Upsert("notes", row))


async def ids(store: Store, text: str, **where: object) -> list[str]:
    return [r["note_id"] for r in await store.search(NOTES, text, where, 20)]


async def test_any_word_matches_and_more_words_rank_higher(store: Store) -> None:
    notes = Notes(store)
    await notes.add("n1", "She is allergic to peanuts and shellfish")
    await notes.add("n2", "Peanut butter sandwiches for lunch")
    await notes.add("n3", "The weather was nice today")
    await notes.add("n4", "allergic reaction to a bee sting")
    found = await store.search(NOTES, "peanut allergy allergic", {}, 20)
    assert found[0]["note_id"] == "n1"  # both words
    assert {r["note_id"] for r in found} == {"n1", "n2", "n4"}  # stemmed: peanuts, allergic
    ranks = [r["rank"] for r in found]
    assert ranks == sorted(ranks, reverse=True)
    assert all(isinstance(r, float) and r > 0 for r in ranks)
    assert set(found[0]) == {*NOTES.column_names, "rank"}
    assert await ids(store, "weather") == ["n3"]
    assert await ids(store, "volcano") == []


async def test_filters_are_equalities_and_none_is_null(store: Store) -> None:
    notes = Notes(store)
    await notes.add("n1", "apple pie", owner="ann")
    await notes.add("n2", "apple tart", owner="bob")
    await notes.apply(Update("notes", {"note_id": "n2"}, {"gone_at": 5}))
    assert sorted(await ids(store, "apple")) == ["n1", "n2"]
    assert await ids(store, "apple", owner="bob") == ["n2"]
    assert await ids(store, "apple", gone_at=None) == ["n1"]
    assert await ids(store, "apple", owner="bob", gone_at=None) == []
    with pytest.raises(ValueError, match="no column"):
        await store.search(NOTES, "apple", {"nope": 1}, 5)


@pytest.mark.parametrize(
    "text",
    [
        '"',
        '""',
        "'",
        "AND",
        "NOT apple",
        "apple OR",
        "NEAR(apple pie)",
        "body:apple",
        "apple*",
        "^apple",
        "-apple",
        "(apple",
        "apple & | ! <-> :*",
        "\\",
        "a\x00b",
        "ünïcödé apple",
        "!!!",
    ],
)
async def test_search_syntax_in_the_text_is_taken_literally(store: Store, text: str) -> None:
    notes = Notes(store)
    await notes.add("n1", "apple pie with ünïcödé")
    found = await ids(store, text)
    assert found in ([], ["n1"])
    # A word that is "apple" once its punctuation is gone finds it, on both engines.
    if any(word.strip("^*-(") == "apple" for word in text.split()):
        assert found == ["n1"], text


async def test_updates_and_deletes_reach_the_index(store: Store) -> None:
    notes = Notes(store)
    await notes.add("n1", "kiwi smoothie")
    await notes.add("n2", "kiwi salad")
    await notes.apply(Update("notes", {"note_id": "n1"}, {"body": "mango smoothie"}))
    assert await ids(store, "kiwi") == ["n2"]
    assert await ids(store, "mango") == ["n1"]
    await notes.apply(Delete("notes", {"note_id": "n2"}))
    assert await ids(store, "kiwi") == []
    await store.reset("notes", [NOTES])
    assert await ids(store, "mango smoothie") == []
    await notes.add("n3", "kiwi again")
    assert await ids(store, "kiwi") == ["n3"]


def traces(path: Path, needle: bytes) -> dict[str, int]:
    """How often ``needle`` occurs in the database file and its -wal and -shm files."""
    found = {}
    for suffix in ("", "-wal", "-shm"):
        file = Path(f"{path}{suffix}")
        if file.exists():
            found[file.name] = file.read_bytes().count(needle)
    return found


@pytest.mark.parametrize("erase", ["update", "delete"])
async def test_sqlite_erasure_leaves_nothing_in_the_files(tmp_path: Path, erase: str) -> None:
    path = tmp_path / "erase.db"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        await store.migrate(MIGRATIONS)
        notes = Notes(store)
        secret = secrets.token_hex(12)
        for n in range(1, 300):  # enough rows for several pages and index segments
            await notes.add(f"n{n}", f"ordinary words number {n} about nothing much")
        await notes.add("n999", f"the code is qzx{secret} do not share")
        assert await ids(store, f"qzx{secret}") == ["n999"]
        needle = secret[2:].encode()  # FTS5 may store a term's first bytes as a shared prefix
        assert sum(traces(path, needle).values()) > 0, "the check would see it"
        if erase == "update":
            await notes.apply(Update("notes", {"note_id": "n999"}, {"body": "", "gone_at": 1}))
        else:
            await notes.apply(Delete("notes", {"note_id": "n999"}))
        assert traces(path, needle) == {name: 0 for name in traces(path, needle)}
        assert await ids(store, f"qzx{secret}") == []
        assert await ids(store, "ordinary") != []
    finally:
        await store.close()


async def test_a_refused_row_in_a_run_is_parked_and_the_rest_indexed(store: Store) -> None:
    """A long run of upserts (SQLite stages it and moves it in one statement): one item
    refused by the unique key index is parked, the others are stored and found."""
    notes = Notes(store)
    await notes.add("n1", "first note")

    def upsert(note_id: str, pos: int) -> Upsert:
        row = {"note_id": note_id, "owner": "ann", "body": f"batch note {note_id}", "pos": pos}
        return Upsert("notes", row)

    items = [(10 + n, f"evt.{10 + n}", [upsert(f"b{n}", 100 + n)]) for n in range(20)]
    items[7] = (17, "evt.17", [upsert("b7", 2001)])  # n1's key: refused
    parked = await store.apply(ProjectionBatch("notes", 29, items))
    assert [(p.seq, p.subject) for p in parked] == [(17, "evt.17")]
    found = await ids(store, "batch")
    assert sorted(found) == sorted(f"b{n}" for n in range(20) if n != 7)
    # And the next run goes the same way.
    more = [(30 + n, f"evt.{30 + n}", [upsert(f"c{n}", 300 + n)]) for n in range(5)]
    assert await store.apply(ProjectionBatch("notes", 34, more)) == []
    assert len(await store.search(NOTES, "batch", {}, 100)) == 24
