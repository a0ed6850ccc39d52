"""Full-text search and erasure through the store port, on SQLite and on Postgres: the same
cases on both engines (SQLite FTS5; Postgres tsvector + GIN), and, for SQLite, the files
themselves after an erasure."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncpg.connection import LoggedQuery  # type: ignore[import-untyped]

from agentmem.projections.messages import MESSAGES, position
from agentmem.projections.migrations import MIGRATIONS as PROJECTION_MIGRATIONS
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
from agentmem.store.postgres import PostgresStore
from agentmem.store.sqlite import SQLiteStore, sqlite3
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
    full_text=FullText(columns=("body",), key="pos", scope=("owner", "gone_at")),
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


async def test_a_word_of_several_tokens_is_a_phrase_on_both_engines(store: Store) -> None:
    """FTS5 reads "peace-hello" as the phrase "peace hello"; Postgres matched a row holding
    any one of its tokens, so the two stores answered one search differently."""
    notes = Notes(store)
    await notes.add("n1", "hello world")
    await notes.add("n2", "a peace-hello gesture")
    await notes.add("n3", "content: hello again")
    assert await ids(store, "peace-hello") == ["n2"]
    assert await ids(store, "world-hello") == []
    assert await ids(store, "content:hello") == ["n3"]
    assert sorted(await ids(store, "hello")) == ["n1", "n2", "n3"]


async def test_punctuation_splits_words_on_both_engines(store: Store) -> None:
    """Postgres's parser kept URLs, file names, versions and e-mail addresses whole: a part
    of one found nothing there, and the row on SQLite."""
    notes = Notes(store)
    await notes.add("n1", "I code in node.js daily")
    await notes.add("n2", "version 1.5.2 released")
    await notes.add("n3", "see path/to/file.txt or visit http://x.example/a-b now")
    await notes.add("n4", "write to ann@example.org")
    for query, found in [
        ("node", ["n1"]),
        ("node.js", ["n1"]),
        ("1.5", ["n2"]),
        ("file.txt", ["n3"]),
        ("path/to", ["n3"]),
        ("a-b", ["n3"]),
        ("x.example", ["n3"]),
        ("ann@example.org", ["n4"]),
        ("example.org", ["n4"]),
        ("gamma:A", []),
    ]:
        assert await ids(store, query) == found, query


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


# Message search: scoped, bounded, and blind to other organizations -------------------------
SCOPE_B = {"org_id": "org-b", "agent_id": "agent-b", "redacted_at": None}


@pytest.fixture(params=["sqlite", "postgres"])
async def messages_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A store with the application's own tables (projections/migrations.py)."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = str(tmp_path / "store.db")
        else:
            url = with_search_path(DSN, await stack.enter_async_context(postgres_schema()))
        opened = await open_store(url)
        stack.push_async_callback(opened.close)
        await opened.migrate(PROJECTION_MIGRATIONS)
        yield opened


class Messages:
    """Writes rows of the messages table as its projection does, one commit per call."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seq = 0

    async def add(
        self,
        org_id: str,
        agent_id: str,
        contents: list[str],
        session_id: str = "chat",
        user_id: str | None = None,
        role: str = "user",
    ) -> list[str]:
        """The messages' ids, in order; at most 1,000 per call (one commit's positions)."""
        self.seq += 1
        seq, ops, made = self.seq, [], []
        for index, content in enumerate(contents):
            message_id = f"m{seq}-{index}"
            made.append(message_id)
            row = {
                "message_id": message_id,
                "org_id": org_id,
                "session_id": session_id,
                "agent_id": agent_id,
                "user_id": user_id,
                "role": role,
                "content": content,
                "tool_calls": "[]",
                "tool_call_id": None,
                "metadata": "{}",
                "seq": seq,
                "position": position(seq, index),
                "created_at": seq,
                "redacted_at": None,
            }
            ops.append(Upsert("messages", row))
        batch = ProjectionBatch("messages", seq, [(seq, f"evt.{seq}", list(ops))])
        assert await self.store.apply(batch) == []
        return made

    async def apply(self, op: Update | Delete) -> None:
        self.seq += 1
        batch = ProjectionBatch("messages", self.seq, [(self.seq, f"evt.{self.seq}", [op])])
        assert await self.store.apply(batch) == []


async def ranked_ids(store: Store, text: str, where: dict[str, object], limit: int = 20) -> list:
    return [(r["message_id"], r["rank"]) for r in await store.search(MESSAGES, text, where, limit)]


async def test_ranks_in_one_org_do_not_move_when_another_org_writes(messages_store: Store) -> None:
    """Finding A: what a search answers (which messages, in which order, with which ranks)
    depends on the caller's organization's messages only. With bm25 over one index for
    every organization, org A writing a word moved org B's ranks, telling B whether and
    how often another tenant uses it."""
    store, messages = messages_store, Messages(messages_store)
    await messages.add(
        "org-b",
        "agent-b",
        [
            "peanut butter on toast",
            "peanut peanut peanut, I said peanut",
            "butter",
            "a long message that goes on about the weather and the garden and, once, a peanut",
            "Peanuts",
            "jam only",
            "butter and more butter, with peanut butter",
        ],
    )
    before = await ranked_ids(store, "peanut butter", SCOPE_B)
    assert len(before) == 6
    # Another organization: many rows with one of the words, long and short, and the
    # other word rare, so that any statistic over the whole index changes.
    for _ in range(3):
        await messages.add("org-a", "agent-a", ["peanut"] * 400 + ["peanut " * 60 + "butter"])
    after = await ranked_ids(store, "peanut butter", SCOPE_B)
    assert after == before
    # And org A is found in org A only.
    assert all(m.startswith("m1-") for m, _ in await ranked_ids(store, "peanut", SCOPE_B))


# A plan step that reads one row of the messages table by the position FTS5 returned.
KEY_LOOKUP = re.compile(r"SEARCH \w+ USING INDEX \w+ \((\w+=\? AND )*position=\?\)")


def plan_of(conn: sqlite3.Connection, query: str, args: tuple[object, ...]) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", args)]


@pytest.mark.parametrize(
    "where",
    [
        SCOPE_B,
        {"org_id": "org-b", "user_id": "user-b", "redacted_at": None},
        {"org_id": "org-b", "agent_id": "agent-b", "session_id": "s", "role": "user"},
    ],
)
@pytest.mark.parametrize("text", ["peanut", "peanut butter jelly"])
async def test_sqlite_search_is_driven_by_the_index_not_by_the_scopes_rows(
    tmp_path: Path, where: dict[str, object], text: str
) -> None:
    """Finding B: the plan must not walk the scope's rows (an agent's, a user's) and probe
    FTS5 once per row, which grew with the square of the matches (16,000 matches: 6 s).
    The full-text index finds the scope's matches itself; the messages table is only read
    by its key for the rows the index found."""
    store = SQLiteStore(str(tmp_path / "plan.db"))
    await store.open()
    try:
        await store.migrate(PROJECTION_MIGRATIONS)
        seen: list[tuple[str, tuple[object, ...]]] = []
        read = store.fetch_all

        async def capture(query: str, *args: object) -> list[dict[str, object]]:
            seen.append((query, args))
            return await read(query, *args)

        store.fetch_all = capture  # type: ignore[method-assign]
        await store.search(MESSAGES, text, where, 10)
        assert seen, "the search ran no query"
        conn = store._loop_reader
        assert conn is not None
        for query, args in seen:
            plan = plan_of(conn, query, args)
            on_messages = [d for d in plan if re.match(r"(SCAN|SEARCH) (t|messages)\b", d)]
            assert on_messages, plan
            for step in on_messages:
                # Only ever a lookup of one row by the key the index returned.
                assert KEY_LOOKUP.fullmatch(step), plan
            fts = [d for d in plan if "VIRTUAL TABLE INDEX" in d]
            assert fts, plan
            for step in fts:
                # FTS5's plan string: "=" is a probe for one rowid, taken once per outer row.
                assert "=" not in step.rsplit(":", 1)[-1], plan
    finally:
        await store.close()


async def test_postgres_search_reads_a_bounded_number_of_rows() -> None:
    """Finding B on Postgres: a search reads at most the newest ``SEARCH_WINDOW`` matches of
    its scope (and the newest rows with every word), however many the scope holds, with
    the table's statistics or without them (a fresh table, or autovacuum off); it used to
    read and rank every match (32,000 matches: 0.1 s). The statements the store sent are
    replayed under EXPLAIN ANALYZE, with the settings it sent before them."""
    async with postgres_schema() as schema:
        # Every read through the pool's one connection (no read lane), whose queries are logged.
        store = PostgresStore(with_search_path(DSN, schema), min_size=1, max_size=1, read_lane=0)
        await store.open()
        try:
            await store.migrate(PROJECTION_MIGRATIONS)
            messages = Messages(store)
            # Every message holds "peanut", one in ten "butter" too.
            texts = [f"y peanut {n}" + " butter" * (n % 10 == 0) for n in range(1_000)]
            for _ in range(3):
                await messages.add("org-b", "agent-b", texts)
            sent: list[LoggedQuery] = []
            async with store.pool.acquire() as conn:  # the pool's one connection
                conn.add_query_logger(sent.append)
            for analyzed in (False, True):
                if analyzed:
                    await store.fetch_all("ANALYZE messages")
                sent.clear()
                for text in ("peanut", "peanut butter"):
                    assert len(await store.search(MESSAGES, text, SCOPE_B, 10)) == 10
                settings = [q.query for q in sent if q.query.startswith("SET")]
                searches = [q for q in sent if q.args and "messages" in q.query]
                assert len(searches) == 2
                async with store.pool.acquire() as conn, conn.transaction():
                    for setting in settings:
                        await conn.execute(setting)
                    for search in searches:
                        explained = await conn.fetchval(
                            f"EXPLAIN (ANALYZE, FORMAT JSON) {search.query}", *search.args
                        )
                        most = most_rows_read(json.loads(explained)[0]["Plan"], "messages")
                        assert 0 < most <= fulltext.SEARCH_WINDOW + 10 < 3_000, (analyzed, most)
        finally:
            await store.close()


def most_rows_read(node: dict[str, object], table: str) -> int:
    """The most rows any one scan of ``table`` in the plan read (kept or filtered out)."""
    here = 0
    if node.get("Relation Name") == table:
        loops = int(node.get("Actual Loops", 1))  # type: ignore[call-overload]
        kept = int(node.get("Actual Rows", 0))  # type: ignore[call-overload]
        removed = int(node.get("Rows Removed by Filter", 0))  # type: ignore[call-overload]
        here = (kept + removed) * loops
    children = node.get("Plans", [])
    assert isinstance(children, list)
    return max([here, *(most_rows_read(child, table) for child in children)])


async def test_rank_counts_the_words_and_ties_go_newest_first(messages_store: Store) -> None:
    store, messages = messages_store, Messages(messages_store)
    made = await messages.add(
        "org-b",
        "agent-b",
        ["Peanut butter", "peanut peanut peanut", "butter, jam and peanuts", "jam", "toast"],
    )
    found = await ranked_ids(store, "peanut butter jam", SCOPE_B)
    # Three words, two, then one (newest first): repeating a word adds nothing.
    assert found == [(made[2], 3.0), (made[0], 2.0), (made[3], 1.0), (made[1], 1.0)]
    assert all(isinstance(rank, float) for _, rank in found)


async def test_a_message_with_every_word_is_found_however_old(messages_store: Store) -> None:
    """The ranked candidates: the newest SEARCH_WINDOW matches in the scope, and the newest
    rows holding every word, however old. A row with only some of the words, older than
    the window, is not found."""
    store, messages = messages_store, Messages(messages_store)
    [old_every] = await messages.add("org-b", "agent-b", ["a peanut butter sandwich"])
    [old_some] = await messages.add("org-b", "agent-b", ["butter, long ago"])
    window = await messages.add("org-b", "agent-b", [f"peanut {n}" for n in range(1_000)])
    assert len(window) == fulltext.SEARCH_WINDOW
    new_every, new_some = await messages.add(
        "org-b", "agent-b", ["peanut and butter again", "more butter"]
    )
    found = await ranked_ids(store, "peanut butter", SCOPE_B, 5)
    assert found == [
        (new_every, 2.0),
        (old_every, 2.0),
        (new_some, 1.0),
        (window[-1], 1.0),
        (window[-2], 1.0),
    ]
    everything = [m for m, _ in await ranked_ids(store, "peanut butter", SCOPE_B, 500)]
    assert old_every in everything
    assert old_some not in everything
    # Narrowing the scope brings it back.
    assert await ranked_ids(store, "butter", {**SCOPE_B, "session_id": "chat"}, 500) != []


async def test_every_filter_is_exact_inside_the_index(messages_store: Store) -> None:
    """Scope tokens stand for exact values: ids differ by case, hyphens, spaces."""
    store, messages = messages_store, Messages(messages_store)
    ids_by_scope = {}
    for org, agent, session, user, role in [
        ("org-b", "agent-b", "chat-42", "user-b", "user"),
        ("org-b", "agent-b", "Chat-42", "user-b", "user"),
        ("org-b", "agent-b", "chat", None, "assistant"),
        ("org-b", "Agent-b", "chat", "user-b", "user"),
        ("org-a", "agent-b", "chat-42", "user-b", "user"),
    ]:
        [made] = await messages.add(org, agent, ["peanut"], session, user, role)
        ids_by_scope[(org, agent, session, user, role)] = made

    async def found(**where: object) -> set[str]:
        return {r["message_id"] for r in await store.search(MESSAGES, "peanut", where, 50)}

    def expected(**where: object) -> set[str]:
        names = ("org_id", "agent_id", "session_id", "user_id", "role")
        return {
            made
            for scope, made in ids_by_scope.items()
            if all(dict(zip(names, scope, strict=True))[k] == v for k, v in where.items())
        }

    for where in [
        {"org_id": "org-b", "agent_id": "agent-b"},
        {"org_id": "org-b", "agent_id": "Agent-b"},
        {"org_id": "org-b", "agent_id": "agent-b", "session_id": "chat-42"},
        {"org_id": "org-b", "agent_id": "agent-b", "session_id": "Chat-42"},
        {"org_id": "org-b", "agent_id": "agent-b", "session_id": "chat"},
        {"org_id": "org-b", "user_id": "user-b"},
        {"org_id": "org-b", "user_id": None},
        {"org_id": "org-b", "agent_id": "agent-b", "role": "assistant"},
        {"org_id": "org-a", "agent_id": "agent-b"},
        {"org_id": "org-c", "agent_id": "agent-b"},
    ]:
        assert await found(**where) == expected(**where), where
    # A redaction empties the content and sets redacted_at: the row leaves every search.
    some = expected(org_id="org-b", agent_id="agent-b", session_id="chat")
    [message_id] = some
    erased = {"content": "", "redacted_at": 7}
    await messages.apply(Update("messages", {"message_id": message_id}, erased))
    chat = {"org_id": "org-b", "agent_id": "agent-b", "session_id": "chat"}
    assert await found(**chat, redacted_at=None) == set()
    assert await found(**chat) == set()


@contextlib.asynccontextmanager
async def fresh_store(tmp_path: Path, kind: str) -> AsyncIterator[Store]:
    """An empty store of that kind, not migrated: a test takes it through the migrations."""
    async with contextlib.AsyncExitStack() as stack:
        if kind == "sqlite":
            url = str(tmp_path / "store.db")
        else:
            url = with_search_path(DSN, await stack.enter_async_context(postgres_schema()))
        store = await open_store(url)
        stack.push_async_callback(store.close)
        yield store


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_messages_indexed_before_migration_4_are_found_after_it(
    tmp_path: Path, kind: str
) -> None:
    """Migration 4 rebuilds the SQLite index from the messages table, scope tokens and all;
    the index stays in step with the table afterwards."""
    async with fresh_store(tmp_path, kind) as store:
        assert await store.migrate(PROJECTION_MIGRATIONS[:3]) == [1, 2, 3]
        messages = Messages(store)
        made_b = await messages.add("org-b", "agent-b", ["peanut butter", "butter"])
        await messages.add("org-a", "agent-b", ["peanut butter"])
        assert await store.migrate(PROJECTION_MIGRATIONS[:4]) == [4]
        assert await ranked_ids(store, "peanut butter", SCOPE_B) == [
            (made_b[0], 2.0),
            (made_b[1], 1.0),
        ]
        [later] = await messages.add("org-b", "agent-b", ["more peanut"])
        await messages.apply(Delete("messages", {"message_id": made_b[0]}))
        assert await ranked_ids(store, "peanut butter", SCOPE_B) == [
            (later, 1.0),
            (made_b[1], 1.0),
        ]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_messages_indexed_before_migration_17_split_at_punctuation_after_it(
    tmp_path: Path, kind: str
) -> None:
    """Migration 17 makes the Postgres documents again, split at punctuation as SQLite's
    are: the rows written before it are found by a part of a dotted word after it."""
    async with fresh_store(tmp_path, kind) as store:
        assert await store.migrate(PROJECTION_MIGRATIONS[:16]) == list(range(1, 17))
        messages = Messages(store)
        [made] = await messages.add("org-b", "agent-b", ["I code in node.js daily"])
        assert await store.migrate(PROJECTION_MIGRATIONS[:17]) == [17]
        assert await ranked_ids(store, "node", SCOPE_B) == [(made, 1.0)]
        [later] = await messages.add("org-b", "agent-b", ["deno.land or node"])
        assert sorted(await ranked_ids(store, "node", SCOPE_B)) == sorted(
            [(made, 1.0), (later, 1.0)]
        )
