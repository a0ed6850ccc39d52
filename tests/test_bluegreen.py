"""Projection versions and blue-green rebuilds (issue 19, point 1), on both stores.

A projection whose code declares a newer version than the store's live tables is built
beside them from sequence 1 while they keep answering, then switched to in one step; the
old tables are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, subjects
from agentmem.config import StartupError
from agentmem.errors import AgentMemError
from agentmem.eventlog import H_COMMAND_ID, H_TIME, CommitMeta, EventLog, StoredCommit
from agentmem.events import MessageAppended, OrgCreated, encode_commit
from agentmem.ids import new_id
from agentmem.metrics import Metrics
from agentmem.projections import ALL, vectors
from agentmem.projections import messages as message_reads
from agentmem.projections.base import Projection
from agentmem.projections.messages import MessagesProjection
from agentmem.projections.migrations import MIGRATIONS
from agentmem.projections.orgs import ORGS
from agentmem.projections.vectors import VectorsProjection
from agentmem.service import Service
from agentmem.store import (
    ProjectionBatch,
    RowOp,
    StaleBatch,
    Store,
    Table,
    Upsert,
    VersionMismatch,
    open_store,
)
from agentmem.store.migrations import Plan
from agentmem.store.versions import VersionState
from tests.conftest import admin_key, answering, settings_for
from tests.realparts import eventually, status
from tests.support import NatsServer

STORES = ("sqlite", "postgres")


@dataclass
class Bumped:
    """A projection as the next release declares it: version 2, and rows that differ (names
    in capitals), so that a test sees which version answered."""

    projection: Any
    version: int = 2
    name: str = field(init=False)
    filter_subjects: list[str] = field(init=False)
    tables: list[Table] = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.projection.name
        self.filter_subjects = self.projection.filter_subjects
        self.tables = self.projection.tables

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops = self.projection.project(commit)
        return [
            Upsert(op.table, {**op.row, "name": op.row["name"].upper()})
            if isinstance(op, Upsert) and op.table == "orgs"
            else op
            for op in ops
        ]


def bumped(name: str) -> list[Projection]:
    """Every projection of this code, ``name`` at version 2."""
    return [Bumped(p) if p.name == name else p for p in ALL]


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    store = await open_store(url)
    try:
        yield store
    finally:
        await store.close()


def said(message_id: str, content: str) -> MessageAppended:
    return MessageAppended(
        message_id=message_id, session_id="s1", agent_id="a1", role="user", content=content
    )


# The store's part ------------------------------------------------------------------------
async def test_a_build_is_written_beside_the_live_tables_and_switched_in_one_step(
    store_url: str,
) -> None:
    """Live rows answer (full-text search included) while the build's rows are written
    apart; the switch makes the build's rows, checkpoint and parked events the live ones,
    drops the old tables, and from then on the old version's batches are refused."""
    messages = MessagesProjection()
    subject = subjects.event("o1", "conversation", "s1")

    def batch(seq: int, content: str, **how: Any) -> ProjectionBatch:
        commit = StoredCommit(
            seq,
            subject,
            {H_TIME: str(1000 + seq), H_COMMAND_ID: f"c{seq}"},
            [said(f"m{seq}", content)],
        )
        return ProjectionBatch("messages", seq, [(seq, subject, messages.project(commit))], **how)

    async with opened(store_url) as store:
        await store.migrate(MIGRATIONS)
        await store.adopt("messages", 1)
        await store.adopt("messages", 7)  # adopting again changes nothing
        assert (await store.versions())["messages"].live == 1
        await store.apply(batch(5, "old peanuts", after=0, version=1))

        # The new code's batches are refused by the live tables until its build is made.
        with pytest.raises(VersionMismatch):
            await store.apply(batch(9, "x", after=5, version=2))
        await store.begin_build("messages", messages.tables, 2)
        await store.begin_build("messages", messages.tables, 2)  # resumed: nothing lost
        state = (await store.versions())["messages"]
        assert (state.live, state.building) == (1, 2)
        await store.apply(batch(5, "new peanuts", after=0, version=2, building=True))
        await store.apply(batch(8, "new almonds", after=5, version=2, building=True))
        # The live tables take the old code's batches, and the building code's (which
        # keeps them moving when they fit it); a third version's are refused.
        with pytest.raises(VersionMismatch):
            await store.apply(batch(9, "x", after=5, version=3))
        await store.apply(batch(9, "old almonds", after=5, version=1))

        where = {"org_id": "o1"}
        found = await message_reads.search_messages(store, "peanuts almonds", where, 10)
        assert sorted(r["content"] for r in found) == ["old almonds", "old peanuts"]
        assert await store.checkpoint("messages") == 9
        assert await store.checkpoint("messages@v2") == 8

        assert await store.switch("messages", messages.tables, 2) == 8
        found = await message_reads.search_messages(store, "peanuts almonds", where, 10)
        assert sorted(r["content"] for r in found) == ["new almonds", "new peanuts"]
        assert await store.checkpoints() == {"messages": 8}
        state = (await store.versions())["messages"]
        assert (state.live, state.building) == (2, None)
        assert state.switched_at is not None
        # The old version's code, and a second switch, are refused; the new one goes on.
        with pytest.raises(VersionMismatch):
            await store.apply(batch(10, "late", after=8, version=1))
        with pytest.raises(VersionMismatch):
            await store.switch("messages", messages.tables, 2)
        await store.apply(batch(10, "newer", after=8, version=2))
        found = await message_reads.search_messages(store, "newer", where, 10)
        assert [r["content"] for r in found] == ["newer"]
        names = await table_names(store)
        assert not [n for n in names if "__v" in n or "@" in n], names


async def test_a_build_of_another_version_replaces_a_leftover_one(store_url: str) -> None:
    async with opened(store_url) as store:
        await store.migrate(MIGRATIONS)
        await store.adopt("orgs", 1)
        row = Upsert(
            "orgs", {"org_id": "o1", "name": "A", "created_at": 1, "updated_at": 1, "version": 1}
        )
        await store.begin_build("orgs", [ORGS], 2)
        await store.apply(
            ProjectionBatch("orgs", 3, [(3, "s", [row])], after=0, version=2, building=True)
        )
        await store.begin_build("orgs", [ORGS], 3)  # the v2 build is dropped, v3 starts empty
        assert "orgs@v2" not in await store.checkpoints()
        with pytest.raises(StaleBatch):
            await store.apply(
                ProjectionBatch("orgs", 4, [(4, "s", [row])], after=3, version=2, building=True)
            )
        assert await store.checkpoint("orgs@v3") == 0
        with pytest.raises(VersionMismatch):
            await store.begin_build("orgs", [ORGS], 1)  # not newer than the live version
        await store.drop_build("orgs", [ORGS])
        assert (await store.versions())["orgs"].building is None


async def table_names(store: Store) -> list[str]:
    if store.dialect == "sqlite":
        rows = await store.fetch_all("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await store.fetch_all(
            "SELECT table_schema || '.' || table_name AS name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
    return [str(r["name"]) for r in rows]


# A running service -----------------------------------------------------------------------
SEEDED = 100_000
WINDOW = 5_000


async def seed_orgs(nc: NATS, count: int) -> list[str]:
    """``count`` organizations created in the log, published without waiting for each
    acknowledgement (windows of ``WINDOW``): a large log in seconds."""
    js = nc.jetstream(publish_async_max_pending=WINDOW * 2)
    ids = [new_id() for _ in range(count)]
    for start in range(0, count, WINDOW):
        for org_id in ids[start : start + WINDOW]:
            meta = CommitMeta(
                command_id=f"seed-{org_id}", commit_type="org.create", principal="seed"
            )
            await js.publish_async(
                subjects.event(org_id, "org", org_id),
                encode_commit([OrgCreated(org_id=org_id, name=f"org {org_id[-6:]}")]),
                headers=meta.headers(),
            )
        await js.publish_async_completed()
    return ids


@dataclass
class Asking:
    """Queries sent all along (an org by id, a page of orgs, and now and then a new org read
    back with its ``after_seq``): every answer, and the errors."""

    client: Client
    org_id: str
    answers: int = 0
    names: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    written: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                org = await self.client.get_org(self.org_id, after_seq=0)
                self.names.add(org.name)
                await self.client.list_orgs(limit=20, after_seq=0)
                if self.answers % 10 == 0:  # and a write, read back at once (read-your-writes)
                    created = await self.client.create_org(f"asked {self.answers}")
                    await self.client.get_org(created.fields["org_id"], after_seq=created.seq)
                    self.written += 1
                self.answers += 1
            except AgentMemError as exc:
                self.errors.append(f"{exc.code}: {exc}")
            await asyncio.sleep(0.01)


async def orgs_status(nc: NATS, token: str) -> dict[str, Any]:
    report = await status(nc, token, timeout=5.0)
    orgs: dict[str, Any] = report["projections"]["orgs"]
    return orgs


async def test_a_version_bump_is_rebuilt_beside_the_old_one_while_queries_answer(
    nats_server: NatsServer, tmp_path: Path, store_url: str, store_kind: str, nc: NATS
) -> None:
    """100,000 organizations in the log; the orgs projection's next version (names in
    capitals) is built beside the live one while queries go on, then switched to. On
    Postgres the old version's process keeps running beside the new one (a rolling
    deploy); on SQLite (one process per file) the new code's process replaces it."""
    # The log first, seeded before any worker competes for the machine's two cores.
    await EventLog(nc).ensure_stream()
    started = time.perf_counter()
    ids = await seed_orgs(nc, SEEDED)
    seeded_s = time.perf_counter() - started
    old = Service(settings_for(nats_server, tmp_path, store_url))
    await old.start()
    new: Service | None = None
    try:
        await answering(nats_server.url)
        token = admin_key(tmp_path)
        client = Client(nc, token)

        async def v1_caught_up() -> dict[str, Any] | None:
            orgs = await orgs_status(nc, token)
            return orgs if orgs["lag"] == 0 else None

        await eventually(v1_caught_up, 60, 0.2, "the v1 orgs projection caught up")
        assert (await client.get_org(ids[-1], after_seq=0)).name == f"org {ids[-1][-6:]}"

        if store_kind == "sqlite":
            await old.stop()
        new = Service(settings_for(nats_server, tmp_path, store_url), projections=bumped("orgs"))
        await new.start()
        await answering(nats_server.url)
        asking = Asking(client, ids[-1])
        stop = asyncio.Event()
        task = asyncio.create_task(asking.run(stop))
        seen_building: list[dict[str, Any]] = []
        try:

            async def switched() -> dict[str, Any] | None:
                orgs = await orgs_status(nc, token)
                if "build" in orgs:
                    seen_building.append(orgs["build"])
                return orgs if orgs["version"] == 2 and orgs["lag"] == 0 else None

            build_started = time.perf_counter()
            after = await eventually(switched, 90, 0.2, "orgs switched to version 2")
            build_s = time.perf_counter() - build_started
            await eventually(
                lambda: _named(client, ids[-1], f"ORG {ids[-1][-6:].upper()}"),
                20,
                0.1,
                "queries read the new version",
            )
        finally:
            stop.set()
            await task
        print(
            f"\n{store_kind}: seeded {SEEDED:,} in {seeded_s:.1f} s; built and switched in "
            f"{build_s:.1f} s; {asking.answers} query pairs answered meanwhile"
        )
        assert asking.errors == [], asking.errors[:5]
        assert asking.answers > 0
        assert asking.written > 0
        assert f"org {ids[-1][-6:]}" in asking.names, "the old version answered during the build"
        assert seen_building, "status showed the build under way"
        assert all(b["version"] == 2 for b in seen_building)
        assert "build" not in after

        # The new version is the live one now: new events reach it; the old tables are gone.
        created = await client.create_org("Late Comer")
        late = await client.get_org(created.fields["org_id"], after_seq=created.seq)
        assert late.name == "LATE COMER"
        assert new.store is not None
        names = await table_names(new.store)
        assert not [n for n in names if "__v" in n or "__build_" in n], names
        if store_kind == "postgres":
            # The old code's process stands aside from the projection it no longer matches.
            await eventually(
                lambda: _stood_aside(old), 10, 0.1, "the v1 process stood aside from orgs"
            )
    finally:
        if new is not None:
            await new.stop()
        if not old.stopped.is_set():
            await old.stop()


async def _named(client: Client, org_id: str, name: str) -> bool | None:
    return (await client.get_org(org_id, after_seq=0)).name == name or None


async def _stood_aside(service: Service) -> bool | None:
    leader = service.leaders["orgs"]
    return (leader.standing_aside and not leader.active) or None


async def test_another_variant_is_built_and_switched_like_a_version(store_url: str) -> None:
    """The vectors' model is their variant: the same version of another model is built
    beside the live rows; the old model's batches are refused after the switch."""
    row = Upsert(
        "orgs", {"org_id": "o1", "name": "A", "created_at": 1, "updated_at": 1, "version": 1}
    )

    def batch(seq: int, variant: str, after: int, building: bool = False) -> ProjectionBatch:
        return ProjectionBatch(
            "orgs",
            seq,
            [(seq, "s", [row])],
            after=after,
            version=1,
            variant=variant,
            building=building,
        )

    async with opened(store_url) as store:
        await store.migrate(MIGRATIONS)
        await store.adopt("orgs", 1, "model-a")
        state = (await store.versions())["orgs"]
        assert state.runs_live(1, "model-a")
        assert not state.runs_live(1, "model-b")
        assert state.needs_build(1, "model-b")
        assert state.needs_build(2, "model-a")
        assert not state.needs_build(1, "model-a")
        with pytest.raises(VersionMismatch):
            await store.apply(batch(2, "model-b", after=0))  # not the live model
        await store.apply(batch(2, "model-a", after=0))
        await store.begin_build("orgs", [ORGS], 1, "model-b")
        await store.apply(batch(3, "model-b", after=0, building=True))
        assert await store.switch("orgs", [ORGS], 1) == 3
        state = (await store.versions())["orgs"]
        assert (state.live, state.live_variant, state.building) == (1, "model-b", None)
        with pytest.raises(VersionMismatch):
            await store.apply(batch(4, "model-a", after=3))
        await store.apply(batch(4, "model-b", after=3))


def test_an_older_version_never_builds_back() -> None:
    """An old process of a rolling deploy stands aside: it neither builds nor runs."""
    live = VersionState("orgs", live=2)
    assert not live.needs_build(1)
    assert not live.runs_live(1)
    assert live.runs_live(2)
    assert not live.needs_build(2)


def test_the_metrics_show_the_versions_and_a_build() -> None:
    metrics = Metrics()
    report: dict[str, Any] = {
        "stream": {"last_seq": 10},
        "projections": {
            "orgs": {
                "checkpoint": 10,
                "lag": 0,
                "parked": 0,
                "version": 1,
                "build": {"version": 2, "lag": 7},
            },
            "users": {"checkpoint": 10, "lag": 0, "parked": 0, "version": 3},
        },
    }
    metrics.observe_status(report)
    text = metrics.text().decode()
    assert 'agentmem_projection_version{projection="orgs"} 1.0' in text
    assert 'agentmem_projection_building{projection="orgs"} 2.0' in text
    assert 'agentmem_projection_build_lag{projection="orgs"} 7.0' in text
    assert 'agentmem_projection_building{projection="users"} 0.0' in text
    assert 'agentmem_projection_build_lag{projection="users"} -1.0' in text


def test_the_tables_of_a_projection_being_rebuilt_are_not_checked_against_the_new_columns() -> None:
    """A version bump may change a table's columns without a migration: the live table of
    the old version lacks them until the switch, and the start must not refuse it."""
    plan = Plan(MIGRATIONS)
    found = {name: set(table.column_names) for name, table in plan.tables.items()}
    found["orgs"] = {"org_id", "name"}  # as an older version made it
    with pytest.raises(StartupError, match="table orgs has no column created_at"):
        plan.check_columns(found)
    plan.check_columns(found, unchecked={"orgs"})


@dataclass(frozen=True)
class Renamed:
    """The configured embedder under another model id: the next model of a deployment."""

    inner: Any
    model_id: str = "the-next-model"

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    @property
    def blocking(self) -> bool:
        return bool(self.inner.blocking)

    def embed(self, texts: list[str]) -> Any:
        return self.inner.embed(texts)


async def test_a_change_of_embedding_model_is_rebuilt_beside_and_switched(
    nats_server: NatsServer,
    tmp_path: Path,
    store_url: str,
    nc: NATS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The vectors projection's variant is its model: a service started with another model
    rebuilds the vectors with it from the log and switches; the search then answers with
    the new model, and the old model's rows went with the old table."""
    old = Service(settings_for(nats_server, tmp_path, store_url))
    await old.start()
    try:
        await answering(nats_server.url)
        client = Client(nc, admin_key(tmp_path))
        org_id = str((await client.create_org("Acme")).fields["org_id"])
        allergy = await client.add_memory(
            "Ann is allergic to peanuts", org_id=org_id, user_id="ann"
        )
        await client.add_memory("The deploy pipeline runs on Fridays", org_id=org_id, user_id="ann")
        first = vectors.PROJECTION.model
        await eventually(
            lambda: _vectors_at(nc, client, first, allergy.seq), 30, 0.1, "vectors of the model"
        )
    finally:
        await old.stop()

    following = VectorsProjection(Renamed(vectors.PROJECTION.embedder))
    monkeypatch.setattr(vectors, "PROJECTION", following)  # what the query side embeds with
    new = Service(
        settings_for(nats_server, tmp_path, store_url),
        projections=[following if p.name == "vectors" else p for p in ALL],
    )
    await new.start()
    try:
        await answering(nats_server.url)
        await eventually(
            lambda: _vectors_at(nc, client, "the-next-model", allergy.seq),
            30,
            0.1,
            "vectors switched to the next model",
        )
        found = await client.search_memories_result(
            "nut allergy", org_id=org_id, user_id="ann", mode="vector", after_seq=0
        )
        assert found.model == "the-next-model"
        assert found.items[0].memory_id == allergy.fields["memory_id"]
        assert new.store is not None
        models = await new.store.fetch_all("SELECT DISTINCT model FROM memory_vectors")
        assert [r["model"] for r in models] == ["the-next-model"]
    finally:
        await new.stop()


async def _vectors_at(nc: NATS, client: Client, model: str, seq: int) -> bool | None:
    report = await status(nc, client.token, timeout=5.0)
    at = report["projections"]["vectors"]
    done = at["variant"] == model and "build" not in at and at["checkpoint"] >= seq
    return done or None
