"""One contract for every projection store: each case runs on SQLite and on Postgres.

Postgres is the machine's server (DSN from ``AGENTMEM_TEST_POSTGRES``, by default the local
one); each test gets a fresh schema of its own, dropped afterwards. With no Postgres
reachable the Postgres cases skip, unless ``CI`` is set: there they must run, so they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from agentmem import Client, subjects
from agentmem.config import StartupError
from agentmem.domain import memory_filter, metadata_filter
from agentmem.domain.memory_filter import MemoryFilter
from agentmem.errors import UnavailableError
from agentmem.eventlog import H_COMMAND_ID, H_TIME, StoredCommit
from agentmem.events import (
    AnyEvent,
    ApiKeyCreated,
    BlockAttached,
    BlockCreated,
    EntityCreated,
    EntityMerged,
    MemoryAdded,
    MemoryArchived,
    MemoryExpired,
    MemorySuperseded,
    MemoryUpdated,
    MessageAppended,
    OrgCreated,
    OrgRenamed,
    UserProfileUpdated,
    UserRegistered,
    WorkingItemPut,
)
from agentmem.projections import ALL
from agentmem.projections import blocks as block_reads
from agentmem.projections import graph as graph_reads
from agentmem.projections import memories as reads
from agentmem.projections import messages as message_reads
from agentmem.projections import working as working_reads
from agentmem.projections.blocks import BlocksProjection
from agentmem.projections.graph import GraphProjection
from agentmem.projections.memories import MemoriesProjection
from agentmem.projections.messages import MessagesProjection
from agentmem.projections.migrations import MIGRATIONS
from agentmem.projections.orgs import ORGS
from agentmem.projections.working import WorkingProjection
from agentmem.service import Service
from agentmem.store import (
    Column,
    Delete,
    Parked,
    ProjectionBatch,
    RowOp,
    StaleBatch,
    Store,
    Table,
    Update,
    Upsert,
    open_store,
    postgres,
    sql,
)
from agentmem.store.migrations import Plan
from agentmem.store.port import READ_TIME_LIMIT_S, Migration, Sql
from agentmem.store.postgres import _TYPES as PG_TYPES
from agentmem.store.postgres import PostgresStore, translate
from agentmem.store.sqlite import SQLiteStore
from tests.conftest import admin_key, settings_for
from tests.pg import DSN, postgres_file_leftovers, postgres_schema, with_search_path
from tests.support import NatsServer

ITEMS = Table(
    name="items",
    columns=(
        Column("item_id", "text"),
        Column("email", "text"),
        Column("n", "integer", nullable=True),
        Column("doc", "json", nullable=True),
    ),
    primary_key=("item_id",),
    indexes=(("items_email", ("email",), True), ("items_n", ("n",), False)),
)
PAIRS = Table(
    name="pairs",
    columns=(Column("a", "text"), Column("b", "integer"), Column("v", "text")),
    primary_key=("a", "b"),
)
TEST_MIGRATIONS = [Migration(1, "items and pairs", (ITEMS, PAIRS))]
# The tests that open stores themselves (``store_url``) run on both engines too.
STORES = ("sqlite", "postgres")


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    async with postgres_schema() as schema:
        yield schema


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with contextlib.AsyncExitStack() as stack:
        opened: Store
        if request.param == "sqlite":
            sqlite = SQLiteStore(str(tmp_path / "store.db"))
            await sqlite.open()
            opened = sqlite
        else:
            schema = await stack.enter_async_context(postgres_schema())
            opened = await open_store(with_search_path(DSN, schema))
            assert isinstance(opened, PostgresStore)
        stack.push_async_callback(opened.close)
        await opened.migrate(TEST_MIGRATIONS)
        yield opened


def item(
    seq: int, *ops: Upsert | Update | Delete
) -> tuple[int, str, list[Upsert | Update | Delete]]:
    return (seq, f"evt.{seq}", list(ops))


def row(item_id: str, email: str, n: int | None = None, doc: str | None = None) -> Upsert:
    return Upsert("items", {"item_id": item_id, "email": email, "n": n, "doc": doc})


# The placeholder translation ---------------------------------------------------------------
def test_placeholders_become_numbered_outside_quotes() -> None:
    assert translate("SELECT a FROM t WHERE a = ? AND b > ? LIMIT ?") == (
        "SELECT a FROM t WHERE a = $1 AND b > $2 LIMIT $3"
    )
    assert translate("SELECT '?' AS q, \"?\" FROM t WHERE a = ?") == (
        "SELECT '?' AS q, \"?\" FROM t WHERE a = $1"
    )


# The contract ------------------------------------------------------------------------------
async def test_migrate_is_idempotent(store: Store) -> None:
    await store.apply(ProjectionBatch("items", 1, [item(1, row("a", "a@x", 1))]))
    assert await store.migrate(TEST_MIGRATIONS) == []
    assert await store.migrate(TEST_MIGRATIONS) == []
    assert await store.dump(ITEMS) == [("a", "a@x", 1, None)]
    assert await store.checkpoint("items") == 1


async def test_apply_writes_rows_and_checkpoint_together(store: Store) -> None:
    assert await store.checkpoint("items") == 0
    assert await store.checkpoints() == {}
    parked = await store.apply(
        ProjectionBatch(
            "items",
            2,
            [
                item(1, row("a", "a@x", 1), Upsert("pairs", {"a": "a", "b": 1, "v": "x"})),
                item(2, row("b", "b@x", None, '{"k": [1, 2]}')),
            ],
        )
    )
    assert parked == []
    assert await store.dump(ITEMS) == [("a", "a@x", 1, None), ("b", "b@x", None, '{"k": [1, 2]}')]
    assert await store.dump(PAIRS) == [("a", 1, "x")]
    assert await store.checkpoint("items") == 2
    assert await store.checkpoints() == {"items": 2}
    assert await store.parked() == []


async def test_a_refused_item_is_parked_and_the_rest_commits(store: Store) -> None:
    await store.apply(ProjectionBatch("items", 1, [item(1, row("a", "same@x", 1))]))
    parked = await store.apply(
        ProjectionBatch(
            "items",
            4,
            [
                item(2, row("b", "b@x", 2)),
                item(3, row("c", "same@x", 3), Upsert("pairs", {"a": "c", "b": 3, "v": "y"})),
                item(4, row("d", "d@x", 4)),
            ],
        )
    )
    assert [(p.projection, p.seq, p.subject) for p in parked] == [("items", 3, "evt.3")]
    assert parked[0].error  # why, for an operator
    # The refused item left nothing behind, not even its first operation's partner.
    assert [r[0] for r in await store.dump(ITEMS)] == ["a", "b", "d"]
    assert await store.dump(PAIRS) == []
    assert await store.checkpoint("items") == 4
    assert [(p.seq, p.subject) for p in await store.parked("items")] == [(3, "evt.3")]
    assert [p.seq for p in await store.parked()] == [3]
    assert await store.parked("other") == []


async def test_a_value_the_database_cannot_hold_is_parked_not_retried_forever(
    store: Store,
) -> None:
    """An integer past 64 bits (an event the log accepted) is refused by the driver, not
    the database: its item is parked like any refused one, or the projection would fail on
    it again and again, and every later event would wait behind it."""
    parked = await store.apply(
        ProjectionBatch(
            "items",
            3,
            [
                item(1, row("a", "a@x", 1)),
                item(2, row("b", "b@x", 2**63)),
                item(3, row("c", "c@x")),
            ],
        )
    )
    assert [(p.seq, p.subject) for p in parked] == [(2, "evt.2")]
    assert [r[0] for r in await store.dump(ITEMS)] == ["a", "c"]
    assert await store.checkpoint("items") == 3


async def test_batch_parked_events_are_kept_with_the_checkpoint(store: Store) -> None:
    given = Parked("items", 5, "evt.5", "ValueError: cannot decode")
    parked = await store.apply(ProjectionBatch("items", 5, [item(4, row("a", "a@x"))], [given]))
    assert parked == [given]
    assert await store.parked("items") == [given]
    assert await store.checkpoint("items") == 5


# A write of checkpoint 7 fails, after the batch's rows were written: the failure between the
# rows and the checkpoint that one transaction for both must make harmless.
REFUSE_CHECKPOINT_7 = Migration(
    2,
    "refuse checkpoint 7",
    (
        Sql(
            sqlite=tuple(
                f"CREATE TRIGGER refuse_checkpoint_7_{verb} BEFORE {verb} ON checkpoints "
                "WHEN NEW.seq = 7 BEGIN SELECT RAISE(ABORT, 'checkpoint 7 refused'); END"
                for verb in ("INSERT", "UPDATE")
            ),
            postgres=(
                "CREATE FUNCTION refuse_checkpoint_7() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN IF NEW.seq = 7 THEN RAISE EXCEPTION 'checkpoint 7 refused'; END IF; "
                "RETURN NEW; END $$",
                "CREATE TRIGGER refuse_checkpoint_7 BEFORE INSERT OR UPDATE ON checkpoints "
                "FOR EACH ROW EXECUTE FUNCTION refuse_checkpoint_7()",
            ),
        ),
    ),
)
ALLOW_CHECKPOINT_7 = Migration(
    3,
    "allow checkpoint 7 again",
    (
        Sql(
            sqlite=(
                "DROP TRIGGER refuse_checkpoint_7_INSERT",
                "DROP TRIGGER refuse_checkpoint_7_UPDATE",
            ),
            postgres=("DROP TRIGGER refuse_checkpoint_7 ON checkpoints",),
        ),
    ),
)


async def test_a_checkpoint_that_fails_to_write_takes_the_batch_rows_with_it(
    store: Store,
) -> None:
    """Rows and checkpoint are one transaction: when the checkpoint cannot be written after
    the rows were, neither is committed (nor the batch's parked events), and the batch
    applies whole once the checkpoint can be written."""
    await store.apply(ProjectionBatch("items", 1, [item(1, row("a", "a@x", 1))]))
    await store.migrate([*TEST_MIGRATIONS, REFUSE_CHECKPOINT_7])

    def batch() -> ProjectionBatch:
        return ProjectionBatch(
            "items",
            7,
            [
                item(5, row("b", "b@x", 5), Upsert("pairs", {"a": "b", "b": 5, "v": "x"})),
                item(
                    7,
                    Update("items", {"item_id": "a"}, {"n": 70}),
                    Delete("items", {"item_id": "b"}),
                ),
            ],
            [Parked("items", 6, "evt.6", "ValueError: cannot decode")],
            after=1,
        )

    with pytest.raises(Exception, match="checkpoint 7 refused"):
        await store.apply(batch())
    assert await store.dump(ITEMS) == [("a", "a@x", 1, None)]
    assert await store.dump(PAIRS) == []
    assert await store.parked() == []
    assert await store.checkpoint("items") == 1

    await store.migrate([*TEST_MIGRATIONS, REFUSE_CHECKPOINT_7, ALLOW_CHECKPOINT_7])
    assert [p.seq for p in await store.apply(batch())] == [6]
    assert await store.dump(ITEMS) == [("a", "a@x", 70, None)]
    assert await store.dump(PAIRS) == [("b", 5, "x")]
    assert await store.checkpoint("items") == 7


async def test_upsert_update_delete(store: Store) -> None:
    await store.apply(
        ProjectionBatch(
            "items",
            3,
            [
                item(1, row("a", "a@x", 1), row("b", "b@x", 2)),
                # An upsert of an existing key replaces every column but the key.
                item(2, row("a", "a2@x", None, "{}")),
                item(3, Update("items", {"item_id": "b"}, {"n": 20, "doc": "[]"})),
            ],
        )
    )
    assert await store.dump(ITEMS) == [("a", "a2@x", None, "{}"), ("b", "b@x", 20, "[]")]
    await store.apply(
        ProjectionBatch(
            "items",
            5,
            [
                item(4, Update("items", {"item_id": "missing"}, {"n": 1})),  # no row: no-op
                item(5, Delete("items", {"item_id": "a"}), Delete("items", {"email": "none"})),
            ],
        )
    )
    assert await store.dump(ITEMS) == [("b", "b@x", 20, "[]")]
    # A key of several columns.
    await store.apply(
        ProjectionBatch(
            "pairs",
            2,
            [
                item(1, Upsert("pairs", {"a": "k", "b": 1, "v": "one"})),
                item(
                    2,
                    Upsert("pairs", {"a": "k", "b": 1, "v": "uno"}),
                    Upsert("pairs", {"a": "k", "b": 2, "v": "two"}),
                ),
            ],
        )
    )
    assert await store.dump(PAIRS) == [("k", 1, "uno"), ("k", 2, "two")]
    await store.apply(ProjectionBatch("pairs", 3, [item(3, Delete("pairs", {"a": "k", "b": 1}))]))
    assert await store.dump(PAIRS) == [("k", 2, "two")]
    assert await store.checkpoints() == {"items": 5, "pairs": 3}


async def test_reset_empties_tables_checkpoint_and_parked(store: Store) -> None:
    await store.apply(
        ProjectionBatch(
            "items",
            2,
            [item(1, row("a", "a@x")), item(2, row("b", "a@x"))],  # the second is parked
        )
    )
    await store.apply(
        ProjectionBatch("pairs", 1, [item(1, Upsert("pairs", {"a": "k", "b": 1, "v": "v"}))])
    )
    assert len(await store.parked("items")) == 1
    await store.reset("items", [ITEMS])
    assert await store.dump(ITEMS) == []
    assert await store.checkpoint("items") == 0
    assert await store.parked("items") == []
    # Another projection's state is untouched.
    assert await store.checkpoints() == {"pairs": 1}
    assert await store.dump(PAIRS) == [("k", 1, "v")]


async def test_dump_is_ordered_by_primary_key_bytewise(store: Store) -> None:
    keys = ["b", "B", "a", "_x", "A", "a1", "a10", "a2", "Z", "é"]
    pairs = [("k", 10), ("k", 2), ("j", 3), ("K", 1)]
    await store.apply(
        ProjectionBatch(
            "items",
            2,
            [
                item(1, *(row(k, f"{k}@x", i) for i, k in enumerate(keys))),
                item(2, *(Upsert("pairs", {"a": a, "b": b, "v": ""}) for a, b in pairs)),
            ],
        )
    )
    assert [r[0] for r in await store.dump(ITEMS)] == sorted(keys, key=lambda k: k.encode())
    assert [(r[0], r[1]) for r in await store.dump(PAIRS)] == sorted(pairs)


async def test_fetch_one_and_fetch_all(store: Store) -> None:
    await store.apply(
        ProjectionBatch(
            "items",
            1,
            [item(1, *(row(f"i{n}", f"{n}@x", n) for n in range(1, 6)), row("z", "z@x"))],
        )
    )
    assert await store.fetch_one("SELECT item_id, n, doc FROM items WHERE item_id = ?", "i3") == {
        "item_id": "i3",
        "n": 3,
        "doc": None,
    }
    assert await store.fetch_one("SELECT item_id FROM items WHERE item_id = ?", "nope") is None
    assert await store.fetch_one("SELECT 1 AS found FROM items WHERE email = ?", "2@x") == {
        "found": 1
    }
    rows = await store.fetch_all(
        "SELECT item_id, n FROM items WHERE item_id > ? AND n IS NOT NULL ORDER BY item_id LIMIT ?",
        "i1",
        3,
    )
    assert rows == [{"item_id": "i2", "n": 2}, {"item_id": "i3", "n": 3}, {"item_id": "i4", "n": 4}]
    assert all(type(r["n"]) is int for r in rows)
    assert await store.fetch_all("SELECT item_id FROM items WHERE n > ?", 100) == []


# Fencing: a worker that lost its lease must not apply a batch late ------------------------
async def test_a_batch_built_on_an_old_checkpoint_is_refused_whole(store: Store) -> None:
    """Two workers built a batch on checkpoint 0; the first one applied; the second (the
    stale holder of a lost lease, writing late) is refused and writes nothing."""
    first = ProjectionBatch("items", 2, [item(1, row("a", "a@x", 1)), item(2, row("b", "b@x"))])
    first.after = 0
    await store.apply(first)
    late = ProjectionBatch(
        "items",
        3,
        [item(1, row("a", "stale@x", 9)), item(3, row("c", "c@x"))],
        [Parked("items", 2, "evt.2", "stale")],
        after=0,
    )
    with pytest.raises(StaleBatch, match="built on checkpoint 0 but the stored checkpoint is 2"):
        await store.apply(late)
    # Even a batch of new events only: it was built on a checkpoint that moved since.
    with pytest.raises(StaleBatch):
        await store.apply(ProjectionBatch("items", 3, [item(3, row("c", "c@x"))], after=1))
    assert await store.dump(ITEMS) == [("a", "a@x", 1, None), ("b", "b@x", None, None)]
    assert await store.checkpoint("items") == 2
    assert await store.parked() == []
    # The holder that is still active goes on from the stored checkpoint.
    await store.apply(ProjectionBatch("items", 3, [item(3, row("c", "c@x"))], after=2))
    assert await store.checkpoint("items") == 3


async def test_events_at_or_below_the_checkpoint_are_never_applied_again(store: Store) -> None:
    await store.apply(ProjectionBatch("items", 5, [item(5, row("a", "a@x", 5))]))
    for again in (
        ProjectionBatch("items", 6, [item(5, row("a", "a@x", 55)), item(6, row("b", "b@x"))]),
        ProjectionBatch("items", 6, [item(6, row("b", "b@x"))], [Parked("items", 4, "e", "x")]),
        ProjectionBatch("items", 4),  # the checkpoint moved back
    ):
        with pytest.raises(StaleBatch):
            await store.apply(again)
    assert await store.dump(ITEMS) == [("a", "a@x", 5, None)]
    assert (await store.checkpoint("items"), await store.parked()) == (5, [])
    # Another projection's checkpoint is its own.
    await store.apply(
        ProjectionBatch(
            "pairs", 1, [item(1, Upsert("pairs", {"a": "k", "b": 1, "v": ""}))], after=0
        )
    )
    assert await store.checkpoints() == {"items": 5, "pairs": 1}


async def test_a_stale_batch_with_a_refused_item_is_refused_not_parked(store: Store) -> None:
    """The one-item-at-a-time fallback checks the checkpoint again, in its own transaction."""
    await store.apply(ProjectionBatch("items", 2, [item(2, row("a", "same@x"))], after=0))
    late = ProjectionBatch(
        "items", 4, [item(3, row("b", "b@x")), item(4, row("c", "same@x"))], after=1
    )
    with pytest.raises(StaleBatch):
        await store.apply(late)
    assert [r[0] for r in await store.dump(ITEMS)] == ["a"]
    assert await store.parked() == []
    assert await store.checkpoint("items") == 2


async def test_two_workers_racing_on_one_checkpoint_apply_it_once(store: Store) -> None:
    """Both batches start from the same checkpoint and run at once; the store lets exactly
    one of them through. The first round has no checkpoint row yet, the others do."""
    checkpoint = 0
    for _ in range(5):

        def batch(n: int, start: int = checkpoint) -> ProjectionBatch:
            seqs = range(start + 1, start + 51)
            items = [item(seq, row(f"k{seq}", f"{seq}@x", n)) for seq in seqs]
            return ProjectionBatch("items", start + 50, items, after=start)

        outcomes = await asyncio.gather(
            store.apply(batch(1)), store.apply(batch(2)), return_exceptions=True
        )
        assert sum(isinstance(o, StaleBatch) for o in outcomes) == 1, outcomes
        assert [o for o in outcomes if not isinstance(o, StaleBatch)] == [[]]
        checkpoint += 50
        dumped = await store.dump(ITEMS)
        assert len(dumped) == checkpoint
        this_round = {f"k{seq}" for seq in range(checkpoint - 49, checkpoint + 1)}
        winners = {r[2] for r in dumped if r[0] in this_round}
        assert len(winners) == 1, "every row of this round from the one batch that won"
        assert await store.checkpoint("items") == checkpoint


# The real projections -----------------------------------------------------------------------
def commit(seq: int, subject: str, *events: object) -> StoredCommit:
    return StoredCommit(seq, subject, {H_TIME: str(1_700_000_000_000 + seq)}, list(events))  # type: ignore[arg-type]


async def test_the_projection_tables_work(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        await check_the_projection_tables(store)
    finally:
        await store.close()


async def check_the_projection_tables(store: Store) -> None:
    tables = [t for p in ALL for t in p.tables]
    await store.migrate(MIGRATIONS)
    await store.migrate(MIGRATIONS)
    commits = [
        commit(1, subjects.event("o1", "org", "o1"), OrgCreated(org_id="o1", name="Acme")),
        commit(2, subjects.event("o1", "org", "o1"), OrgRenamed(org_id="o1", name="Acme Ltd")),
        commit(
            3,
            subjects.event("o1", "user", "u1"),
            UserRegistered(user_id="u1", org_id="o1", name="Ann", email="ann@x", password_hash="h"),
        ),
        commit(
            4,
            subjects.event("o1", "user", "u2"),
            UserRegistered(
                user_id="u2",
                org_id="o1",
                name="Bob",
                email="bob@x",
                password_hash="h",
                roles=("admin",),
                service_admin=True,
            ),
        ),
        commit(
            5,
            subjects.event("o1", "user", "u1"),
            UserProfileUpdated(user_id="u1", name="Annie", email="annie@x"),
        ),
        commit(
            6,
            subjects.event("o1", "user", "u2"),
            ApiKeyCreated(key_id="k1", user_id="u2", name="ci", prefix="am_k1", digest="x"),
        ),
        # Takes an email already in use: refused by the unique index, parked.
        commit(
            7,
            subjects.event("o1", "user", "u3"),
            UserRegistered(user_id="u3", org_id="o1", name="Eve", email="bob@x", password_hash="h"),
        ),
    ]
    for projection in ALL:
        batch = ProjectionBatch(projection.name, 7)
        for c in commits:
            ops = projection.project(c)
            if ops:
                batch.items.append((c.seq, c.subject, ops))
        await store.apply(batch)
    by_name = {t.name: t for t in tables}
    at = 1_700_000_000_000
    assert await store.dump(by_name["orgs"]) == [("o1", "Acme Ltd", at + 1, at + 2, 2)]
    assert await store.dump(by_name["users"]) == [
        ("u1", "o1", "Annie", "annie@x", '["member"]', 0, at + 3, at + 5, 5),
        # The key is a commit on Bob's subject: his version moves, nothing shown does.
        ("u2", "o1", "Bob", "bob@x", '["admin"]', 1, at + 4, at + 4, 6),
    ]
    assert await store.dump(by_name["api_keys"]) == [
        ("k1", "u2", "o1", "ci", "am_k1", at + 6, None)
    ]
    assert [(p.projection, p.seq) for p in await store.parked()] == [("users", 7)]
    assert await store.checkpoints() == {p.name: 7 for p in ALL}
    assert await store.fetch_one("SELECT name FROM users WHERE email = ?", "annie@x") == {
        "name": "Annie"
    }


# End to end on Postgres ----------------------------------------------------------------------
async def test_the_service_runs_on_postgres(
    nats_server: NatsServer, tmp_path: Path, pg_schema: str
) -> None:
    import nats

    settings = settings_for(nats_server, tmp_path)
    settings.store = with_search_path(DSN, pg_schema)
    service = Service(settings)
    await service.start()
    nc = await nats.connect(nats_server.url)
    try:
        assert isinstance(service.store, PostgresStore)
        api = Client(nc, admin_key(tmp_path))
        org = await api.create_org("Acme")
        org_id = org.fields["org_id"]
        written = await api.register_user(org_id, "Ann", "Ann@Example.com", "first-secret-pass")
        user = await api.get_user(written.fields["user_id"], after_seq=api.last_seq)
        assert (user.org_id, user.name, user.email, user.roles) == (
            org_id,
            "Ann",
            "ann@example.com",
            ["member"],
        )
        listed = await api.list_users(org_id, after_seq=api.last_seq)
        assert [u.user_id for u in listed.items] == [written.fields["user_id"]]
        # The rows are in the test's schema on the server.
        conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
        try:
            assert await conn.fetchval("SELECT count(*) FROM users") >= 2  # admin and Ann
        finally:
            await conn.close()
    finally:
        await nc.close()
        await service.stop()


# Schema migrations -----------------------------------------------------------------------------
# A step that fails when run twice (CREATE TABLE without IF NOT EXISTS) and takes a while, so
# that two stores migrating at once would both run it were they not kept apart.
SLOW_MARKER = Sql(
    sqlite=(
        "CREATE TABLE marker (n INTEGER)",
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 200000) "
        "SELECT count(*) FROM c",
    ),
    postgres=("CREATE TABLE marker (n INTEGER)", "SELECT pg_sleep(0.3)"),
)
NOTES = Table("notes", (Column("note_id", "text"), Column("body", "text")), ("note_id",))
SECOND = Migration(2, "notes", (NOTES, SLOW_MARKER))


async def recorded(store: Store) -> list[tuple[int, str]]:
    rows = await store.fetch_all("SELECT version, name FROM schema_migrations ORDER BY version")
    return [(row["version"], row["name"]) for row in rows]


async def execute_raw(store_url: str, statements: list[str]) -> None:
    """Run DDL and writes straight on the database, as other code would."""
    if store_url.startswith("postgresql://"):
        conn = await asyncpg.connect(store_url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()
        return
    db = sqlite3.connect(store_url)
    try:
        for statement in statements:
            db.execute(statement)
        db.commit()
    finally:
        db.close()


def test_migration_versions_must_run_1_2_3() -> None:
    Plan([Migration(1, "a", ()), Migration(2, "b", ())])
    for versions in ([2], [1, 3], [2, 1], [1, 1]):
        with pytest.raises(ValueError, match="1, 2, 3"):
            Plan([Migration(v, str(v), ()) for v in versions])


def test_every_projection_table_is_made_by_a_migration() -> None:
    made = {step.name for m in MIGRATIONS for step in m.steps if isinstance(step, Table)}
    needed = {t.name for p in ALL for t in p.tables}
    assert needed <= made, f"add a migration for {sorted(needed - made)}"


async def test_a_fresh_store_records_every_migration(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        assert await store.migrate(MIGRATIONS) == [m.version for m in MIGRATIONS]
        assert await recorded(store) == [(m.version, m.name) for m in MIGRATIONS]
        assert (
            await store.fetch_all("SELECT version FROM schema_migrations WHERE applied_at IS NULL")
            == []
        )
        for projection in ALL:
            for table in projection.tables:
                assert await store.dump(table) == []
        # Again, and after a restart: nothing to do.
        assert await store.migrate(MIGRATIONS) == []
    finally:
        await store.close()
    store = await open_store(store_url)
    try:
        assert await store.migrate(MIGRATIONS) == []
        assert await recorded(store) == [(m.version, m.name) for m in MIGRATIONS]
        if isinstance(store, PostgresStore):
            # What a person with psql sees: \dt+ shows each table's comment.
            described = await store.fetch_one(
                "SELECT obj_description(to_regclass('users'), 'pg_class') AS comment"
            )
            assert described is not None
            assert described["comment"].startswith("AgentMem projection users")
    finally:
        await store.close()


async def test_a_new_migration_applies_to_a_store_in_use(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        assert await store.migrate(TEST_MIGRATIONS) == [1]
        await store.apply(ProjectionBatch("items", 1, [item(1, row("a", "a@x", 1))]))
        assert await store.migrate([*TEST_MIGRATIONS, SECOND]) == [2]
        assert await store.migrate([*TEST_MIGRATIONS, SECOND]) == []  # the marker is not made twice
        assert await recorded(store) == [(1, "items and pairs"), (2, "notes")]
        assert await store.dump(ITEMS) == [("a", "a@x", 1, None)]
        await store.apply(
            ProjectionBatch("notes", 1, [item(1, Upsert("notes", {"note_id": "n", "body": "b"}))])
        )
        assert await store.dump(NOTES) == [("n", "b")]
    finally:
        await store.close()


async def test_a_failed_migration_is_rolled_back_whole(store_url: str) -> None:
    broken = Migration(2, "notes", (NOTES, Sql(sqlite=("BOGUS",), postgres=("BOGUS",))))
    store = await open_store(store_url)
    try:
        await store.migrate(TEST_MIGRATIONS)
        with pytest.raises(StartupError) as refused:
            await store.migrate([*TEST_MIGRATIONS, broken])
        assert "schema migration 2 (notes) failed" in str(refused.value)
        assert "\n" not in str(refused.value)
        assert await recorded(store) == [(1, "items and pairs")]
        # Its table went with it: the fixed migration starts from nothing.
        assert await store.migrate([*TEST_MIGRATIONS, SECOND]) == [2]
        assert await store.dump(NOTES) == []
    finally:
        await store.close()


FIRST_TABLES = [step for step in MIGRATIONS[0].steps if isinstance(step, Table)]


async def test_a_store_made_before_migrations_is_adopted(store_url: str) -> None:
    store = await open_store(store_url)  # makes the system tables, as the old code did
    await store.close()
    # The tables of migration 1 as the code before migrations made them (what there was
    # then), with a row and a checkpoint in them.
    types = PG_TYPES if store_url.startswith("postgresql://") else sql.TYPES
    await execute_raw(
        store_url,
        [
            *(s for t in FIRST_TABLES for s in sql.create_table(t, types)),
            "INSERT INTO orgs (org_id, name, created_at, updated_at, version) "
            "VALUES ('o1', 'Acme', 1, 1, 1)",
            "INSERT INTO checkpoints (projection, seq) VALUES ('orgs', 1)",
        ],
    )
    store = await open_store(store_url)
    try:
        assert await store.migrate(MIGRATIONS) == [m.version for m in MIGRATIONS]
        assert await recorded(store) == [(m.version, m.name) for m in MIGRATIONS]
        assert await store.dump(ORGS) == [("o1", "Acme", 1, 1, 1)]
        assert await store.checkpoint("orgs") == 1
        # And it goes on working: the old row is updated in place.
        await store.apply(
            ProjectionBatch(
                "orgs", 2, [item(2, Update("orgs", {"org_id": "o1"}, {"name": "Acme Ltd"}))]
            )
        )
        assert await store.dump(ORGS) == [("o1", "Acme Ltd", 1, 1, 1)]
    finally:
        await store.close()


async def test_a_table_without_a_declared_column_is_refused(store_url: str) -> None:
    await execute_raw(
        store_url, ["CREATE TABLE items (item_id TEXT PRIMARY KEY, email TEXT, n BIGINT)"]
    )
    store = await open_store(store_url)
    try:
        with pytest.raises(StartupError, match="table items has no column doc: "):
            await store.migrate(TEST_MIGRATIONS)
    finally:
        await store.close()


async def test_a_store_newer_than_the_code_is_refused(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        await store.migrate([*TEST_MIGRATIONS, SECOND])
        with pytest.raises(StartupError) as refused:
            await store.migrate(TEST_MIGRATIONS)
        message = str(refused.value)
        assert "\n" not in message
        assert "migration 2 (notes), newer than this AgentMem knows (up to 1)" in message
        # Another schema's migration under the same number is refused too.
        with pytest.raises(StartupError, match="migration 1 is 'items and pairs'"):
            await store.migrate([Migration(1, "something else", (ITEMS,)), SECOND])
        assert await recorded(store) == [(1, "items and pairs"), (2, "notes")]
    finally:
        await store.close()


async def test_stores_migrating_at_once_apply_each_migration_once(store_url: str) -> None:
    race = [Migration(1, "marker", (SLOW_MARKER,)), Migration(2, "notes", (NOTES,))]
    first, second = await open_store(store_url), await open_store(store_url)
    try:
        applied = await asyncio.gather(first.migrate(race), second.migrate(race))
        assert sorted(applied[0] + applied[1]) == [1, 2]
        assert await recorded(first) == [(1, "marker"), (2, "notes")]
    finally:
        await first.close()
        await second.close()


# Long runs: the Postgres store tries them as one COPY ------------------------------------------
LONG = 250  # upserts in a run: more than postgres.COPY_MIN_ROWS


def numbered(prefix: str, numbers: range, email: str = "x") -> list[Upsert]:
    return [row(f"{prefix}{n:04}", f"{prefix}{n}@{email}", n) for n in numbers]


def one_per_item(first_seq: int, ops: list[Upsert]) -> list[tuple[int, str, list[RowOp]]]:
    """One upsert per item, as a projection makes them for a run of registrations."""
    return [item(seq, op) for seq, op in enumerate(ops, start=first_seq)]


async def test_long_runs_of_upserts_do_what_one_upsert_after_another_does(store: Store) -> None:
    new = numbered("k", range(LONG))
    await store.apply(ProjectionBatch("items", LONG, one_per_item(1, new)))
    assert await store.dump(ITEMS) == [(f"k{n:04}", f"k{n}@x", n, None) for n in range(LONG)]
    # A key twice in one run of new rows: the later upsert wins.
    twice = [row("dup", "d1@x", 1), *numbered("m", range(LONG)), row("dup", "d2@x", 2)]
    await store.apply(ProjectionBatch("items", 2 * LONG + 2, one_per_item(LONG + 1, twice)))
    assert await store.fetch_one("SELECT email, n FROM items WHERE item_id = ?", "dup") == {
        "email": "d2@x",
        "n": 2,
    }
    # Half of the keys exist: those rows are replaced, the rest inserted.
    again = numbered("k", range(LONG // 2, LONG + LONG // 2), email="y")
    await store.apply(ProjectionBatch("items", 3 * LONG + 2, one_per_item(2 * LONG + 3, again)))
    keys = [r for r in await store.dump(ITEMS) if r[0].startswith("k")]
    assert keys == [
        (f"k{n:04}", f"k{n}@{'x' if n < LONG // 2 else 'y'}", n, None)
        for n in range(LONG + LONG // 2)
    ]
    assert len(await store.dump(ITEMS)) == LONG + LONG // 2 + LONG + 1
    assert await store.parked() == []
    assert await store.checkpoint("items") == 3 * LONG + 2


async def test_a_refused_row_in_a_long_run_is_parked_alone(store: Store) -> None:
    await store.apply(ProjectionBatch("items", 1, [item(1, row("a", "taken@x"))]))
    ops = numbered("k", range(LONG))
    ops[100] = row("k0100", "taken@x", 100)  # the unique email index refuses it
    parked = await store.apply(ProjectionBatch("items", LONG + 1, one_per_item(2, ops)))
    assert [p.seq for p in parked] == [102]
    assert len(await store.dump(ITEMS)) == LONG  # "a" and every other row of the run
    assert await store.fetch_one("SELECT 1 AS found FROM items WHERE item_id = ?", "k0100") is None
    assert await store.checkpoint("items") == LONG + 1


async def test_postgres_copies_a_long_run_of_new_rows(store: Store) -> None:
    if not isinstance(store, PostgresStore):
        pytest.skip("the Postgres store's own way of writing")
    assert postgres.COPY_MIN_ROWS <= LONG
    await store.apply(ProjectionBatch("items", LONG, one_per_item(1, numbered("k", range(LONG)))))
    assert store._copy_skips == {}  # the COPY went through
    again = numbered("k", range(LONG))  # every key exists: the COPY fails, executemany writes
    await store.apply(ProjectionBatch("items", 2 * LONG, one_per_item(LONG + 1, again)))
    assert store._copy_skips == {"items": postgres.COPY_BACKOFF_RUNS}
    assert len(await store.dump(ITEMS)) == LONG


async def test_a_postgres_store_closes_even_with_a_connection_still_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop must not hang on work that outlived the drain: close cuts what is left."""
    monkeypatch.setattr("agentmem.store.postgres.CLOSE_TIMEOUT_S", 0.3)
    async with postgres_schema() as schema:
        opened = await open_store(with_search_path(DSN, schema))
        assert isinstance(opened, PostgresStore)
        await opened.pool.acquire()  # never released, as by a stuck task
        # Without the bound, asyncpg's close waits for that connection for ever.
        await asyncio.wait_for(opened.close(), 5)


async def test_a_read_past_its_time_limit_is_stopped_and_answered_unavailable(
    store: Store,
) -> None:
    """No query's read may hold a connection or a reader thread for ever: past the store's
    time limit it is stopped (SQLite: its progress handler; Postgres: asyncpg cancels it on
    the server) and answered ``unavailable``, and the store goes on reading. On Postgres the
    query must be gone from the server too, not left running with nobody to read it."""
    assert store.read_time_limit == READ_TIME_LIMIT_S
    store.read_time_limit = 0.2
    tag = f"/* cut {secrets.token_hex(6)} */"  # finds this test's queries on the server
    counting = (
        f"{tag} WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < ?) "
        "SELECT count(*) AS n FROM c"
    )
    long = 2_000_000_000  # minutes of work on either engine
    with pytest.raises(UnavailableError, match=r"took longer than 0\.2 s"):
        await asyncio.wait_for(store.fetch_all(counting, long), 30)
    with pytest.raises(UnavailableError, match=r"took longer than 0\.2 s"):
        await asyncio.wait_for(store.fetch_one(counting, long), 30)
    assert await store.fetch_one(counting, 10) == {"n": 10}
    if isinstance(store, PostgresStore):
        assert await running_on_server(tag, seconds=5) == 0


async def running_on_server(tag: str, seconds: float) -> int:
    """How many queries holding ``tag`` still run on the test server once ``seconds`` have
    passed (0 as soon as there are none)."""
    admin = await asyncpg.connect(DSN)
    try:
        for _ in range(int(seconds * 10)):
            running = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
                tag,
            )
            if running == 0:
                return 0
            await asyncio.sleep(0.1)
        return int(running)
    finally:
        await admin.close()


# The memory reads ------------------------------------------------------------------------------
async def test_the_memory_reads_keep_scopes_apart(store_url: str) -> None:
    """The named reads of ``projections.memories`` on each engine: search scoped inside the
    full-text match, list filters, the ids a scope deletion takes."""
    store = await open_store(store_url)
    try:
        await store.migrate(MIGRATIONS)
        projection = MemoriesProjection()
        made = [
            ("m1", "o1", "ann", None, "Ann is allergic to peanuts", {}),
            ("m2", "o1", "bob", None, "Bob is allergic to peanuts", {}),
            ("m3", "o2", "ann", None, "Ann is allergic to peanuts", {}),
            ("m4", "o1", "ann", "helper", "Ann avoids peanuts", {"importance": 0.9}),
            ("m5", "o1", "ann", None, "Ann liked peanuts once", {"expires_at": 5}),
            ("m6", "o1", "ann", None, "Ann ate peanuts", {"valid_from": 100}),
        ]
        batch = ProjectionBatch(projection.name, 20)
        for seq, (memory_id, org, user, agent, content, fields) in enumerate(made, start=1):
            event = MemoryAdded(
                memory_id=memory_id,
                org_id=org,
                memory_type="semantic",
                content=content,
                valid_from=int(str(fields.get("valid_from", 1_000))),
                user_id=user,
                agent_id=agent,
                importance=float(str(fields.get("importance", 0.5))),
                expires_at=fields.get("expires_at"),  # type: ignore[arg-type]
            )
            c = commit(seq, subjects.event(org, "memory", memory_id), event)
            batch.items.append((seq, c.subject, projection.project(c)))
        changes = [
            (7, "m6", MemorySuperseded(memory_id="m6", superseded_by="m1", valid_to=500)),
            (8, "m2", MemoryArchived(memory_id="m2")),
        ]
        for seq, memory_id, change in changes:
            c = commit(seq, subjects.event("o1", "memory", memory_id), change)
            batch.items.append((seq, c.subject, projection.project(c)))
        await store.apply(batch)

        def only(org_id: str = "o1", **fields: Any) -> MemoryFilter:
            fields.setdefault("states", ("live",))
            return MemoryFilter(org_id, **fields)

        ann = {"user_id": "ann"}
        found = await reads.search_memories(store, "allergic peanuts", only(scope=ann), 10_000, 10)
        assert [(r["memory_id"], r["rank"]) for r in found] == [("m1", 2.0), ("m4", 1.0)]
        # m5 has expired by then: left out inside the query (before the limit).
        found = await reads.search_memories(store, "allergic peanuts", only(scope=ann), 4, 2)
        assert [r["memory_id"] for r in found] == ["m1", "m5"]
        archived = only(states=("archived",))
        found = await reads.search_memories(store, "peanuts", archived, 10_000, 10)
        assert [r["memory_id"] for r in found] == ["m2"]
        found = await reads.search_memories(store, "peanuts", only("o2"), 10_000, 10)
        assert [r["memory_id"] for r in found] == ["m3"]
        was_true = only(scope=ann, states=("live", "superseded"), as_of=200)
        found = await reads.search_memories(store, "peanuts", was_true, 10_000, 10)
        assert [r["memory_id"] for r in found] == ["m6"]

        async def listed(**filters: Any) -> list[str]:
            order = {k: filters.pop(k) for k in ("order_by", "descending", "after") if k in filters}
            filters.setdefault("scope", ann)
            rows = await reads.list_memories(
                store,
                only(**filters),
                now=10_000,
                order_by=order.get("order_by", "created"),
                descending=order.get("descending", True),
                after=order.get("after"),
                limit=10,
            )
            return [r["memory_id"] for r in rows]

        assert await listed() == ["m4", "m1"]
        assert await listed(states=("expired",)) == ["m5"]
        assert await listed(states=("superseded",)) == ["m6"]
        assert await listed(as_of=200, states=("live", "superseded")) == ["m6"]
        assert await listed(min_importance=600_000) == ["m4"]
        assert await listed(scope={"agent_id": "helper"}) == ["m4"]
        assert await listed(descending=False, after=(0, 1000)) == ["m4"]
        assert await reads.scope_memory_ids(store, "o1", {"user_id": "ann"}, "", 100) == [
            "m1",
            "m4",
            "m5",
            "m6",
        ]
        assert await reads.scope_memory_ids(store, "o1", {"user_id": "ann"}, "m4", 1) == ["m5"]
    finally:
        await store.close()


# The block and working memory reads ------------------------------------------------------------
async def test_the_block_and_working_reads(store_url: str) -> None:
    """The named reads of ``projections.blocks`` and ``projections.working`` on each engine:
    an agent's blocks (own and attached) by label, a user's, organizations apart; working
    items above a priority, highest first, expired ones left out at the given time."""
    store = await open_store(store_url)
    try:
        await store.migrate(MIGRATIONS)
        blocks_projection, working_projection = BlocksProjection(), WorkingProjection()
        made = [
            ("b1", "o1", "persona", {"agent_id": "a1"}),
            ("b2", "o1", "human", {"user_id": "ann"}),
            ("b3", "o1", "project", {"agent_id": "a2"}),
            ("b4", "o2", "persona", {"agent_id": "a1"}),  # the same agent id elsewhere
        ]
        batch = ProjectionBatch(blocks_projection.name, 0)
        seq = 0
        for block_id, org, label, owner in made:
            seq += 1
            created = BlockCreated(
                block_id=block_id,
                org_id=org,
                label=label,
                content=f"{label} text",
                char_limit=100,
                **owner,
            )
            c = commit(seq, subjects.event(org, "block", block_id), created)
            batch.items.append((seq, c.subject, blocks_projection.project(c)))
        for block_id, agent_id, label in (("b2", "a1", "human"), ("b3", "a1", "project")):
            seq += 1
            attached = BlockAttached(
                block_id=block_id, agent_id=agent_id, label=label, agent_ids=(agent_id,)
            )
            c = commit(seq, subjects.event("o1", "block", block_id), attached)
            batch.items.append((seq, c.subject, blocks_projection.project(c)))
        await store.apply(batch)

        rows = await block_reads.agent_blocks(store, "o1", "a1", "", 10)
        assert [r["block_id"] for r in rows] == ["b2", "b1", "b3"]  # human, persona, project
        [view] = await block_reads.block_views(store, rows[:1])
        assert view["attached_agent_ids"] == ["a1"]
        rows = await block_reads.agent_blocks(store, "o1", "a1", "human", 1)
        assert [r["label"] for r in rows] == ["persona"]
        assert [
            r["block_id"] for r in await block_reads.agent_blocks(store, "o2", "a1", "", 10)
        ] == ["b4"]
        assert [
            r["block_id"] for r in await block_reads.user_blocks(store, "o1", "ann", "", 10)
        ] == ["b2"]
        assert await block_reads.user_blocks(store, "o2", "ann", "", 10) == []
        got = await block_reads.get_block(store, "b3")
        assert got is not None
        assert (got["content"], got["agent_id"]) == ("project text", "a2")

        batch = ProjectionBatch(working_projection.name, 0)
        items = [
            ("s1", "low", 0.2, None),
            ("s1", "high", 0.9, None),
            ("s1", "brief", 1.0, 500),  # expires at its commit's time + 500
            ("s1", "mid", 0.5, None),
            ("s2", "other", 1.0, None),
        ]
        for seq, (session, key, priority, ttl) in enumerate(items, start=1):
            put = WorkingItemPut(
                session_id=session, key=key, content=key, priority=priority, ttl_ms=ttl
            )
            c = commit(seq, subjects.event("o1", "working", session), put)
            batch.items.append((seq, c.subject, working_projection.project(c)))
        await store.apply(batch)
        put_at = int(commit(3, "x").headers[H_TIME])

        async def keys(now: int, floor: float | None = None, limit: int = 10) -> list[str]:
            found = await working_reads.live_items(store, "o1", "s1", now, floor, limit)
            return [working_reads.item_view(r)["key"] for r in found]

        assert await keys(put_at) == ["brief", "high", "mid", "low"]
        assert await keys(put_at + 499) == ["brief", "high", "mid", "low"]
        assert await keys(put_at + 500) == ["high", "mid", "low"]
        assert await keys(put_at, floor=0.5) == ["brief", "high", "mid"]
        assert await keys(put_at, limit=2) == ["brief", "high"]
        assert await working_reads.live_items(store, "o2", "s1", put_at, None, 10) == []
    finally:
        await store.close()


async def _memory_store(store_url: str, made: list[tuple[int, str, AnyEvent]]) -> Store:
    """A store with the memory projection applied to ``made`` (seq, memory id, event)."""
    store = await open_store(store_url)
    await store.migrate(MIGRATIONS)
    projection = MemoriesProjection()
    batch = ProjectionBatch(projection.name, max(seq for seq, _, _ in made))
    for seq, memory_id, event in made:
        c = commit(seq, subjects.event("o1", "memory", memory_id), event)
        c.headers[H_TIME] = str(seq * 1_000)  # recorded at seq seconds
        batch.items.append((seq, c.subject, projection.project(c)))
    await store.apply(batch)
    return store


def _memory(memory_id: str, content: str, **fields: Any) -> MemoryAdded:
    values: dict[str, Any] = {
        "org_id": "o1",
        "memory_type": "semantic",
        "valid_from": 1,
        "user_id": "ann",
    }
    values.update(fields)
    return MemoryAdded(memory_id=memory_id, content=content, **values)


FILTERED = [
    (1, "a", _memory("a", "note a", metadata={"city": "Paris", "n": 5, "ok": True})),
    (2, "b", _memory("b", "note b", metadata={"city": "Rome", "n": 12.5, "tags": ["x", "y"]})),
    (3, "c", _memory("c", "note c", metadata={"city": "paris", "n": "5", "ok": False})),
    (4, "d", _memory("d", "note d", metadata={"n": None, "address": {"city": "Paris"}})),
    (5, "e", _memory("e", "note e", metadata={"tags": ["y", 1, True], "city": "Parisian"})),
]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"city": "Paris"}, ["a"]),
        ({"city": {"eq": "Paris"}}, ["a"]),
        ({"city": {"ne": "Paris"}}, ["b", "c", "d", "e"]),  # a missing key is not equal
        ({"n": 5}, ["a"]),  # the number, not the string "5"
        ({"n": 5.0}, ["a"]),
        ({"n": "5"}, ["c"]),
        ({"ok": True}, ["a"]),  # true is not the number 1
        ({"n": None}, ["d"]),
        ({"n": {"gt": 5}}, ["b"]),
        ({"n": {"gte": 5, "lt": 100}}, ["a", "b"]),
        ({"n": {"lte": 5}}, ["a"]),  # numbers only: "5" is a string
        ({"city": {"gt": "Paris"}}, ["b", "c", "e"]),  # code point order
        ({"city": {"in": ["Rome", "paris"]}}, ["b", "c"]),
        ({"city": {"nin": ["Rome", "paris"]}}, ["a", "d", "e"]),
        ({"city": {"contains": "aris"}}, ["a", "c", "e"]),
        ({"tags": {"contains": "y"}}, ["b", "e"]),
        ({"tags": {"contains": 1}}, ["e"]),
        ({"tags": {"contains": True}}, ["e"]),
        ({"address.city": "Paris"}, ["d"]),
        ({"or": [{"city": "Rome"}, {"n": {"lt": 6}}]}, ["a", "b"]),
        ({"and": [{"city": {"contains": "Paris"}}, {"not": {"city": "Paris"}}]}, ["e"]),
        ({"not": {"or": [{"city": "Paris"}, {"city": "Rome"}]}}, ["c", "d", "e"]),
        ({"NOT": {"ok": {"in": [True, False]}}}, ["b", "d", "e"]),
        # ``in`` is ``eq`` to any of its values, type for type.
        ({"n": {"in": [5, "x"]}}, ["a"]),
        ({"n": {"in": ["5"]}}, ["c"]),
        ({"n": {"in": [None]}}, ["d"]),
        ({"n": {"in": [5.0, 12.5]}}, ["a", "b"]),
        ({"ok": {"in": [1, 0]}}, []),  # true and false are not numbers
        ({"n": {"nin": [5, None]}}, ["b", "c", "e"]),
        ({"city": "x'); DROP TABLE memories; --"}, []),
    ],
)
async def test_metadata_filters_mean_the_same_on_both_stores(
    store_url: str, document: dict[str, Any], expected: list[str]
) -> None:
    """Every operator of the filter language, evaluated inside the store's query."""
    store = await _memory_store(store_url, FILTERED)
    try:
        memory_filter = MemoryFilter("o1", ("live",), metadata=metadata_filter.parse(document))
        rows = await reads.list_memories(
            store,
            memory_filter,
            now=10,
            order_by="created",
            descending=False,
            after=None,
            limit=10,
        )
        assert [r["memory_id"] for r in rows] == expected
        # The same filter inside a full-text search (a word every note holds).
        found = await reads.search_memories(store, "note", memory_filter, 10, 10)
        assert sorted(r["memory_id"] for r in found) == expected
    finally:
        await store.close()


async def test_known_at_answers_what_the_service_knew_then(store_url: str) -> None:
    """ "What did we believe at 3 s about where Ann lives": the versions the log recorded,
    each current between two sequences (and two times)."""
    made: list[tuple[int, str, AnyEvent]] = [
        (1, "p", _memory("p", "Ann lives in Paris", metadata={"k": 1}, tags=("home",))),
        (
            3,
            "p",
            MemoryUpdated(
                memory_id="p",
                content="Ann lives in Paris, France",
                metadata={"k": 2},
                tags=("city",),
                importance=0.5,
                valid_from=1,
            ),
        ),
        (5, "r", _memory("r", "Ann lives in Rome", valid_from=4)),
        (6, "p", MemorySuperseded(memory_id="p", superseded_by="r", valid_to=4)),
        (7, "r", MemoryArchived(memory_id="r")),
        (8, "x", _memory("x", "Ann hates Rome", expires_at=8_500)),
        (9, "x", MemoryExpired(memory_id="x", expires_at=8_500)),
    ]
    store = await _memory_store(store_url, made)
    try:

        async def believed(states: tuple[str, ...] = ("live",), **at: Any) -> list[Any]:
            memory_filter = MemoryFilter("o1", states, **at)
            rows = await reads.list_memories(
                store,
                memory_filter,
                now=100_000,
                order_by="created",
                descending=False,
                after=None,
                limit=10,
            )
            return [(r["memory_id"], r["content"], r["state"]) for r in rows]

        assert await believed(known_at_seq=1) == [("p", "Ann lives in Paris", "live")]
        assert await believed(known_at=2_999) == [("p", "Ann lives in Paris", "live")]
        assert await believed(known_at_seq=3) == [("p", "Ann lives in Paris, France", "live")]
        assert await believed(known_at_seq=5) == [
            ("p", "Ann lives in Paris, France", "live"),
            ("r", "Ann lives in Rome", "live"),
        ]
        assert await believed(known_at=6_000) == [("r", "Ann lives in Rome", "live")]
        assert await believed(("superseded",), known_at_seq=6) == [
            ("p", "Ann lives in Paris, France", "superseded")
        ]
        assert await believed(known_at_seq=7) == []
        assert await believed(("archived",), known_at_seq=7) == [
            ("r", "Ann lives in Rome", "archived")
        ]
        # A version's own tags and metadata filter it.
        tagged = {"tags_any": ("home",), "known_at_seq": 2}
        assert await believed(**tagged) == [("p", "Ann lives in Paris", "live")]
        assert await believed(tags_any=("home",), known_at_seq=3) == []
        old_metadata = metadata_filter.parse({"k": 1})
        assert await believed(metadata=old_metadata, known_at_seq=2) == [
            ("p", "Ann lives in Paris", "live")
        ]
        # Search asks the versions' own full-text index.
        at_five = MemoryFilter("o1", ("live",), known_at_seq=5)
        found = await reads.search_memories(store, "France", at_five, 100_000, 10)
        assert [r["memory_id"] for r in found] == ["p"]
        at_two = MemoryFilter("o1", ("live",), known_at_seq=2)
        assert await reads.search_memories(store, "France", at_two, 100_000, 10) == []
        # An expired memory's content left every version too.
        # (x's expires_at has passed at the query's time: it counts as expired.)
        assert await believed(("expired",), known_at_seq=8) == [("x", "", "live")]
        assert await reads.search_memories(store, "hates", at_five, 100_000, 10) == []
        everything = MemoryFilter("o1", ("live",), known_at_seq=8)
        assert await reads.search_memories(store, "hates", everything, 100_000, 10) == []
    finally:
        await store.close()


async def test_stats_decay_order_and_the_sweep_look_up(store_url: str) -> None:
    day = memory_filter.DAY_MS
    made: list[tuple[int, str, AnyEvent]] = [
        (1, "s", _memory("s", "a fact", importance=0.6)),
        (2, "e", _memory("e", "an event", memory_type="episodic", importance=0.9)),
        (3, "g", _memory("g", "agent how-to", memory_type="procedural", agent_id="bot")),
        (4, "t", _memory("t", "session note", session_id="s1", user_id=None, expires_at=10)),
        (5, "o", _memory("o", "old", user_id="bob")),
        (6, "o", MemorySuperseded(memory_id="o", superseded_by="s", valid_to=2)),
        (7, "a", _memory("a", "archived", user_id="bob")),
        (8, "a", MemoryArchived(memory_id="a")),
    ]
    store = await _memory_store(store_url, made)
    try:
        counts = await reads.memory_stats(store, MemoryFilter("o1", ()), 100)
        assert counts == {
            "by_type": {"semantic": 4, "episodic": 1, "procedural": 1, "resource": 0},
            "by_state": {"live": 3, "archived": 1, "superseded": 1, "expired": 1},
            "by_scope": {"user": 5, "agent": 1, "session": 1},
            "distinct": {"user": 2, "agent": 1, "session": 1},
        }
        ann = await reads.memory_stats(store, MemoryFilter("o1", (), {"user_id": "ann"}), 100)
        assert ann["by_state"] == {"live": 3, "archived": 0, "superseded": 0, "expired": 0}
        assert await reads.expired_memory_ids(store, 100, 10) == [("o1", "t")]
        assert await reads.expired_memory_ids(store, 9, 10) == []

        async def by_importance(at: int, after: tuple[float, int] | None = None) -> list[Any]:
            rows = await reads.list_memories(
                store,
                MemoryFilter("o1", ("live",)),
                now=at,
                order_by="importance",
                descending=True,
                after=after,
                limit=10,
            )
            return [(r["memory_id"], r["order_key"], r["position"]) for r in rows]

        # Fresh: as stored. After 60 days the event (half-life 30 days) fell to a quarter.
        assert [m for m, _, _ in await by_importance(8_000)] == ["e", "s", "g"]
        later = await by_importance(8_000 + 60 * day)
        assert [m for m, _, _ in later] == ["s", "g", "e"]
        # e was written at 2 s: 60 days and 6 s before.
        elapsed = 60 * day + 6_000
        assert later[2][1] == pytest.approx(900_000 * 0.5 ** (elapsed / (30 * day)), rel=1e-9)
        # A page after a row goes on from its key at the same time.
        _, key, position_ = later[0]
        assert [m for m, _, _ in await by_importance(8_000 + 60 * day, (key, position_))] == [
            "g",
            "e",
        ]
    finally:
        await store.close()


async def test_migration_7_on_an_older_store(store_url: str) -> None:
    """A store made before memory_versions: its rows are the current versions, found by
    known_at from their last change on; a change after the migration keeps the old one."""
    store = await open_store(store_url)
    try:
        assert await store.migrate(MIGRATIONS[:6]) == [1, 2, 3, 4, 5, 6]
        projection = MemoriesProjection()
        made = _memory("m1", "Ann lives in Paris")
        c = commit(9, subjects.event("o1", "memory", "m1"), made)
        rows = [op for op in projection.project(c) if op.table != "memory_versions"]
        await store.apply(ProjectionBatch("memories", 9, [(9, c.subject, rows)]))
        assert await store.migrate(MIGRATIONS[:7]) == [7]
        archived = commit(12, subjects.event("o1", "memory", "m1"), MemoryArchived(memory_id="m1"))
        batch = ProjectionBatch(
            "memories", 12, [(12, archived.subject, projection.project(archived))]
        )
        await store.apply(batch)
        for at, state in ((8, None), (9, "live"), (11, "live"), (12, "archived")):
            then = MemoryFilter("o1", ("live", "archived"), known_at_seq=at)
            found = await reads.search_memories(store, "Paris", then, 10_000, 10)
            assert [r["state"] for r in found] == ([state] if state else []), at
    finally:
        await store.close()


async def test_migration_8_on_an_older_store(store_url: str) -> None:
    """A store made before the message filters' indexes and the appends' command ids: its
    messages stay, the indexes and ``message_commands`` are added, and the next append
    commit records its command id."""
    store = await open_store(store_url)
    try:
        assert await store.migrate(MIGRATIONS[:7]) == list(range(1, 8))
        projection = MessagesProjection()
        subject = subjects.event("o1", "conversation", "s1")
        first = StoredCommit(9, subject, {H_TIME: "1000", H_COMMAND_ID: "o1.u1.c1"}, [_said("m1")])
        ops = [op for op in projection.project(first) if op.table != "message_commands"]
        await store.apply(ProjectionBatch("messages", 9, [(9, subject, ops)]))
        assert await store.migrate(MIGRATIONS[:8]) == [8]
        later = StoredCommit(12, subject, {H_TIME: "2000", H_COMMAND_ID: "o1.u1.c2"}, [_said("m2")])
        await store.apply(
            ProjectionBatch("messages", 12, [(12, subject, projection.project(later))])
        )
        assert await message_reads.appended_by(store, "o1", "s1", "o1.u1.c2") == 12
        assert await message_reads.appended_by(store, "o1", "s1", "o1.u1.c1") is None
        recent = await message_reads.list_messages(
            store, "o1", "s1", after=None, order="asc", since=1500, until=None, role=None, limit=5
        )
        assert [r["message_id"] for r in recent] == ["m2"]
    finally:
        await store.close()


def _said(message_id: str) -> MessageAppended:
    return MessageAppended(
        message_id=message_id, session_id="s1", agent_id="a1", role="user", content="hi"
    )


async def test_graph_walks_in_the_store_stay_in_scope_and_time(store_url: str) -> None:
    """The graph's reads on each store: a walk's recursive query with the organization, the
    scope and the time in its join, cycles ended, valid and system time, merges."""
    from agentmem.events import (
        EntityCreated,
        EntityMerged,
        RelationAsserted,
        RelationInvalidated,
        RelationRetracted,
    )
    from agentmem.projections import graph

    store = await open_store(store_url)
    try:
        await store.migrate(MIGRATIONS)
        seq = 0

        async def write(org: str, *events: object) -> int:
            nonlocal seq
            seq += 1
            stored = StoredCommit(
                seq, subjects.event(org, "entity", "x"), {H_TIME: str(seq * 100)}, list(events)
            )
            ops = graph.PROJECTION.project(stored)
            await store.apply(ProjectionBatch("graph", seq, [(seq, stored.subject, ops)]))
            return seq

        def person(org: str, entity_id: str, user_id: str | None = None) -> EntityCreated:
            return EntityCreated(entity_id, org, "person", entity_id.upper(), user_id=user_id)

        def fact(rid: str, a: str, b: str, user_id: str | None = None, **kw: object) -> object:
            return RelationAsserted(
                relation_id=rid,
                org_id="o1",
                subject_id=a,
                predicate="knows",
                object_id=b,
                fact=f"{a} knows {b}",
                confidence=0.9,
                valid_from=10,
                user_id=user_id,
                **kw,
            )

        await write("o1", *(person("o1", e) for e in ("a", "b", "c", "d")))
        await write("o1", person("o1", "u", "u1"))
        await write("o2", person("o2", "z"))
        await write("o1", fact("a_1", "a", "b"), fact("b_1", "b", "c"), fact("c_1", "c", "a"))
        await write("o1", fact("c_2", "c", "d"), fact("u_1", "u", "a", user_id="u1"))
        before_end = await write("o1", RelationInvalidated(relation_id="c_2", valid_to=50))
        retracted = await write("o1", RelationRetracted(relation_id="b_1"))

        def at(as_of: int, **known: int) -> graph.EdgeFilter:
            return graph.EdgeFilter(org_id="o1", at=graph.At(as_of, **known))  # type: ignore[arg-type]

        async def reached(start: str, depth: int, f: graph.EdgeFilter) -> dict[str, int]:
            nodes, _ = await graph.neighbors(store, start, depth, 100, f)
            return {n["entity_id"]: int(n["depth"]) for n in nodes}

        assert await reached("a", 3, at(20)) == {"a": 0, "b": 1, "c": 1, "u": 1, "d": 2}
        assert await reached("a", 3, at(60)) == {"a": 0, "b": 1, "c": 1, "u": 1}
        assert await reached("a", 3, at(60, known_seq=before_end - 1)) == {
            "a": 0,
            "b": 1,
            "c": 1,
            "u": 1,
            "d": 2,
        }
        assert await reached("c", 1, at(20)) == {"c": 0, "a": 1, "d": 1}
        assert await reached("c", 1, at(20, known_seq=retracted - 1)) == {
            "c": 0,
            "a": 1,
            "b": 1,
            "d": 1,
        }
        scoped = graph.EdgeFilter(org_id="o1", at=graph.At(20), user_id="u1")
        assert await reached("a", 3, scoped) == {"a": 0, "u": 1}
        assert await reached("z", 3, at(20)) == {}  # another organization's start
        found = await graph.path(store, "b", "d", 4, at(20))
        assert found == (["b", "a", "c", "d"], ["a_1", "c_1", "c_2"])
        assert await graph.path(store, "b", "d", 2, at(20)) is None
        await write("o1", EntityMerged(entity_id="d", into="b", members=("d",)))
        assert await reached("c", 1, at(20)) == {"c": 0, "a": 1, "b": 1}
        assert (await graph.get_entity(store, "d") or {})["entity_id"] == "b"
    finally:
        await store.close()


async def test_the_graph_history_and_memory_scopes_are_filled_on_upgrade(store_url: str) -> None:
    """Migrations 14 and 15 on a store that already holds an entity (renamed, with an alias,
    merged) and a memory: the memory's scope and the entity's values now become rows of
    the new tables, so a forget finds the memory's links and a read at a point finds a
    name (on Postgres the JSON attributes become text)."""
    store = await open_store(store_url)
    new = ("graph_entity_history", "graph_memory_scopes")
    try:
        await store.migrate([m for m in MIGRATIONS if m.version <= 13])
        graph = GraphProjection()
        made = [
            commit(
                3,
                subjects.event("o1", "memory", "m1"),
                MemoryAdded(
                    memory_id="m1",
                    org_id="o1",
                    memory_type="semantic",
                    content="x",
                    valid_from=1,
                    user_id="u1",
                ),
            ),
            commit(
                4,
                subjects.event("o1", "entity", "e1"),
                EntityCreated(
                    entity_id="e1",
                    org_id="o1",
                    entity_type="person",
                    name="Ann",
                    aliases=("Annie",),
                    attributes={"city": "Oslo"},
                ),
            ),
            commit(
                5,
                subjects.event("o1", "entity", "e2"),
                EntityCreated(
                    entity_id="e2",
                    org_id="o1",
                    entity_type="person",
                    name="Bob",
                ),
            ),
            commit(
                6,
                subjects.event("o1", "entity", "e2"),
                EntityMerged(
                    entity_id="e2",
                    into="e1",
                    members=("e2",),
                ),
            ),
        ]
        for c in made:
            ops = [*graph.project(c), *MemoriesProjection().project(c)]
            kept = [op for op in ops if op.table not in new]
            await store.apply(ProjectionBatch("graph", c.seq, [(c.seq, "evt", kept)]))
        assert await store.migrate(MIGRATIONS) == [m.version for m in MIGRATIONS if m.version > 13]
        scopes = await store.fetch_all("SELECT memory_id, user_id FROM graph_memory_scopes")
        assert scopes == [{"memory_id": "m1", "user_id": "u1"}]
        spans = await store.fetch_all(
            "SELECT entity_id, field, norm, from_seq, value FROM graph_entity_history "
            "ORDER BY entity_id, field, norm"
        )
        assert [(s["entity_id"], s["field"], s["value"]) for s in spans] == [
            ("e1", "alias", "Annie"),
            ("e1", "attributes", '{"city":"Oslo"}'),
            ("e1", "name", "Ann"),
            ("e2", "attributes", "{}"),
            ("e2", "merged_into", "e1"),
            ("e2", "name", "Bob"),
        ]
        for seq, answer in ((5, ("e2", "Bob", [])), (6, ("e1", "Ann", ["Annie"]))):
            then = await graph_reads.get_entity(store, "e2", known_seq=seq)
            assert then is not None
            assert (then["entity_id"], then["name"], then["aliases"]) == answer
    finally:
        await store.close()


async def test_a_rewrite_cut_short_by_a_stop_is_done_at_the_next_start(
    pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres: a forget's deletion leaves the rows' bytes in the table's files until the
    table is rewritten after the commit. A process killed in between (here: the rewrite
    skipped) must not leave them there for good: the next start rewrites the table."""
    marker = f"forgotten-{secrets.token_hex(6)}".encode()
    url = with_search_path(DSN, pg_schema)
    first = await open_store(url)
    assert isinstance(first, PostgresStore)
    await first.migrate(TEST_MIGRATIONS)
    await first.apply(ProjectionBatch("items", 1, [item(1, row("a", marker.decode()))]))

    async def killed(*args: Any) -> None:
        return None

    monkeypatch.setattr(PostgresStore, "_rewrite", staticmethod(killed))
    erase = Delete("items", {"item_id": "a"}, erase=True)
    await first.apply(ProjectionBatch("items", 2, [item(2, erase)]))
    await first.close()
    files = await postgres_file_leftovers(url, [marker])
    if files is None:
        pytest.skip("the Postgres server's data directory is not readable here")
    assert files  # the rewrite was skipped: the bytes are still there
    monkeypatch.undo()
    second = await open_store(url)
    await second.close()
    assert await postgres_file_leftovers(url, [marker]) == []
