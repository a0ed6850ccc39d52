"""Several ``agentmem serve`` processes, one truth: each projection has one active worker at a
time, and when its process dies another takes over from the checkpoint.

Postgres only (a multi-process deployment needs it). With no Postgres reachable these tests
skip with the reason, unless ``CI`` is set: there they fail (tests/pg.py).

- The leases themselves: a session advisory lock per projection, one holder at a time,
  freed when the holder's connection goes, separate per schema.
- A leader whose lease connection breaks stops its worker; the standby takes over and goes on
  from the checkpoint.
- The leases spread: one process takes them all, two more join and each ends with a fair
  share, never two workers of one projection at once; a death hands its leases to the others.
- Three real processes under load, the leases spread over them: SIGKILL one; the other two
  take its leases within seconds; afterwards every command is in the log exactly once and
  the tables equal a fresh replay of the log.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, subjects
from agentmem.domain.aggregate import Write
from agentmem.eventlog import CommitMeta, EventLog
from agentmem.events import OrgCreated
from agentmem.projections import ALL
from agentmem.projections.board import CheckpointBoard
from agentmem.projections.leader import ProjectionLeader
from agentmem.projections.migrations import MIGRATIONS
from agentmem.projections.orgs import ORGS, OrgsProjection
from agentmem.projections.users import USERS
from agentmem.projections.worker import ProjectionWorker
from agentmem.store import Store, open_store
from agentmem.store.leases import (
    MEMBER_IDLE_S,
    MEMBERS_TTL_S,
    PostgresLeases,
    fair_share,
    lock_key,
)
from tests.pg import DSN, end_session, postgres_schema, with_search_path
from tests.realparts import (
    after_bootstrap,
    dump_store,
    eventually,
    read_log,
    replay_into,
    rows,
    status,
    wait_caught_up,
)
from tests.support import NatsServer, ServiceProcess
from tests.test_crash import MESSAGES_PER_COMMAND, Journal, connect, drive, wait_acked

PROJECTIONS = sorted(p.name for p in ALL)


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async with postgres_schema() as name:
        yield name


@pytest.fixture
async def admin(schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test server, to look at (and break) sessions."""
    conn = await asyncpg.connect(DSN, server_settings={"search_path": schema})
    yield conn
    await conn.close()


async def holders(admin: asyncpg.Connection, schema: str) -> dict[str, str]:
    """Which session holds each projection's lease: {projection: application_name}."""
    wanted = {lock_key(schema, name) & (2**64 - 1): name for name in PROJECTIONS}
    found: dict[str, str] = {}
    for row in await admin.fetch(
        "SELECT l.classid, l.objid, a.application_name FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    ):
        key = (int(row["classid"]) << 32) | int(row["objid"])
        if key in wanted:
            found[wanted[key]] = row["application_name"]
    return found


async def terminate(admin: asyncpg.Connection, application_name: str) -> None:
    """End the session named ``application_name`` (``tests.pg.end_session``), if it is
    still there: on a loaded machine a lease call past its timeout drops the connection
    (its leases with it) on its own, and the test has cut the reconnecting off, so the
    session may have ended already, as a dead host's does (a CI run met that)."""
    pids = [
        row["pid"]
        for row in await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application_name
        )
    ]
    assert len(pids) <= 1, pids
    for pid in pids:
        await end_session(admin, pid)


# The leases -----------------------------------------------------------------------------------
async def test_one_holder_per_lease_freed_when_its_session_ends(
    schema: str, admin: asyncpg.Connection
) -> None:
    url = with_search_path(DSN, schema)
    one, two = PostgresLeases(url, "lease test one"), PostgresLeases(url, "lease test two")
    try:
        assert await one.hold("orgs")
        assert not await two.hold("orgs")
        assert await one.hold("orgs"), "the holder confirms its lease, again and again"
        assert await two.hold("users"), "each projection has a lease of its own"
        assert await holders(admin, schema) == {"orgs": "lease test one", "users": "lease test two"}

        # The holder's session ends (its process died, or the network between them did).
        await terminate(admin, "lease test one")
        assert not await one.hold("orgs"), "the old holder sees its lease lost"
        assert await two.hold("orgs")
        assert await holders(admin, schema) == {"orgs": "lease test two", "users": "lease test two"}
        assert not await one.hold("orgs")  # and it does not get it back while two holds it

        # Given back on a clean stop: the other process takes it at its next look.
        await two.release("orgs")
        assert await one.hold("orgs")
    finally:
        await one.close()
        await two.close()


async def test_leases_of_another_schema_are_its_own(schema: str) -> None:
    """Two deployments in one database (or two test runs) do not share a lease."""
    async with postgres_schema() as other:
        here = PostgresLeases(with_search_path(DSN, schema))
        there = PostgresLeases(with_search_path(DSN, other))
        try:
            assert await here.hold("orgs")
            assert await there.hold("orgs")
        finally:
            await here.close()
            await there.close()


async def test_leases_of_another_database_are_neither_held_nor_counted_here(
    schema: str, admin: asyncpg.Connection
) -> None:
    """Another deployment on the same server, in another database (with a schema of the
    same name, as two that both use ``public``): its leases and members are its own."""
    other_db = f"test_leases_{secrets.token_hex(4)}"
    await admin.execute(f"CREATE DATABASE {other_db}")
    other_dsn = DSN.rsplit("/", 1)[0] + f"/{other_db}"
    try:
        setup = await asyncpg.connect(other_dsn)
        await setup.execute(f"CREATE SCHEMA {schema}")
        await setup.close()
        here = PostgresLeases(with_search_path(DSN, schema), "lease here")
        there = [PostgresLeases(with_search_path(other_dsn, schema), f"t{n}") for n in range(3)]
        try:
            for lease in there:
                assert await lease.members() is not None
            assert await there[0].hold("orgs")
            assert await here.members() == 1, "the other database's processes counted here"
            assert not await here.taken("orgs")
            assert await here.hold("orgs")
            await asyncio.sleep(MEMBERS_TTL_S + 0.1)  # each process's count is that old
            assert await there[0].members() == 3
        finally:
            for lease in (here, *there):
                await lease.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {other_db} WITH (FORCE)")


# A leader in-process: loses its lease, stops; the standby takes over ---------------------------
@pytest.fixture
async def pg_store(schema: str) -> AsyncIterator[Store]:
    store = await open_store(with_search_path(DSN, schema))
    await store.migrate(MIGRATIONS)
    yield store
    await store.close()


async def append_orgs(log: EventLog, first: int, count: int) -> int:
    last = 0
    for n in range(first, first + count):
        org_id = f"org{n}"
        write = Write(subjects.event(org_id, "org", org_id), 0, [OrgCreated(org_id, f"n{n}")])
        last = (await log.append([write], CommitMeta(f"create-{n}", "org.create"))).last_seq
    return last


async def test_a_leader_that_loses_its_lease_stops_and_the_standby_goes_on(
    nc: NATS, schema: str, admin: asyncpg.Connection, pg_store: Store
) -> None:
    log = EventLog(nc)
    await log.ensure_stream()
    url = with_search_path(DSN, schema)
    leaders: dict[str, ProjectionLeader] = {}
    tasks = []
    for name in ("first", "second"):
        board = CheckpointBoard()

        def make_worker(board: CheckpointBoard = board) -> ProjectionWorker:
            return ProjectionWorker(nc, pg_store, OrgsProjection(), board)

        leases = PostgresLeases(url, f"leader {name}")
        leaders[name] = ProjectionLeader("orgs", make_worker, leases, board, poll=0.1)
        tasks.append(asyncio.create_task(leaders[name].run()))
        if name == "first":

            async def first_active() -> bool:
                return leaders["first"].active

            await eventually(first_active, 10, 0.05, "the first leader active")
    try:
        last = await append_orgs(log, 0, 20)

        async def first_applied() -> bool:
            return leaders["first"].board.get("orgs") == last

        await eventually(first_applied, 15, 0.05, "the first leader's worker applying")
        assert await pg_store.checkpoint("orgs") == last
        assert not leaders["second"].active
        assert leaders["first"].board.has("orgs")
        assert not leaders["second"].board.has("orgs")

        await terminate(admin, "leader first")

        async def switched() -> bool:
            return leaders["second"].active and not leaders["first"].active

        await eventually(switched, 10, 0.05, "the standby active, the old holder stopped")
        assert not leaders["first"].board.has("orgs"), "its queries read the store again"
        last = await append_orgs(log, 20, 20)

        async def applied() -> bool:
            return await pg_store.checkpoint("orgs") == last

        await eventually(applied, 15, 0.05, "the new holder applies from the checkpoint")
        assert [r[0] for r in await pg_store.dump(ORGS)] == sorted(f"org{n}" for n in range(40))
        assert await pg_store.parked() == []
    finally:
        for leader in leaders.values():
            leader.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        for leader in leaders.values():
            await leader.leases.close()


# Leases spread over processes -----------------------------------------------------------------
class Member:
    """What one process with the projections role runs: a leader per projection, on a lease
    connection of its own."""

    def __init__(
        self, name: str, nc: NATS, store: Store, url: str, leases: PostgresLeases | None = None
    ) -> None:
        self.name = name
        self.leases = leases or PostgresLeases(url, f"member {name}")
        self.leaders: dict[str, ProjectionLeader] = {}
        self.tasks: list[asyncio.Task[None]] = []
        for projection in ALL:
            board = CheckpointBoard()

            def make_worker(
                board: CheckpointBoard = board, p: Any = projection
            ) -> ProjectionWorker:
                return ProjectionWorker(nc, store, p, board)

            leader = ProjectionLeader(projection.name, make_worker, self.leases, board, poll=0.1)
            self.leaders[projection.name] = leader
            self.tasks.append(asyncio.create_task(leader.run()))

    def active(self) -> set[str]:
        return {name for name, leader in self.leaders.items() if leader.active}

    async def stop(self) -> None:
        for leader in self.leaders.values():
            leader.stop()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 15)
        await self.leases.close()


async def test_leases_spread_over_processes_and_rebalance_without_two_workers(
    nc: NATS, schema: str, admin: asyncpg.Connection, pg_store: Store
) -> None:
    """One process takes every lease; two more join and each ends with a fair share (the
    eight projections over 3: 3, 3 and 2), handed over one at a time; at no moment do two
    processes run one projection's worker. When one process dies its leases go to the
    others within the failover's bound, and the tables are exact."""
    log = EventLog(nc)
    await log.ensure_stream()
    url = with_search_path(DSN, schema)
    members: list[Member] = []
    overlaps: list[tuple[str, list[str]]] = []
    # How long each projection went without a worker, once the first process ran them all.
    gaps: list[tuple[str, float]] = []
    covered = asyncio.Event()
    watching = asyncio.Event()

    async def watch() -> None:
        idle_since: dict[str, float] = {}
        while not watching.is_set():
            now = time.monotonic()
            for projection in PROJECTIONS:
                running = [m.name for m in members if projection in m.active()]
                if len(running) > 1:
                    overlaps.append((projection, running))
                if not covered.is_set():
                    continue
                if not running:
                    idle_since.setdefault(projection, now)
                elif projection in idle_since:
                    gaps.append((projection, now - idle_since.pop(projection)))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        members.append(Member("a", nc, pg_store, url))

        async def spread(names: str) -> bool:
            """Every lease held, by exactly ``names``, none over its fair share, and each
            member runs the workers of the leases it holds."""
            found = await holders(admin, schema)
            counts = Counter(h.removeprefix("member ") for h in found.values())
            actives = Counter({m.name: len(m.active()) for m in members if m.name in names})
            return (
                len(found) == len(PROJECTIONS)
                and set(counts) == set(names)
                and max(counts.values()) <= fair_share(len(PROJECTIONS), len(names))
                and counts == actives
            )

        await eventually(lambda: spread("a"), 15, 0.05, "the first process holding all")
        covered.set()
        last = await append_orgs(log, 0, 20)
        members.append(Member("b", nc, pg_store, url))
        members.append(Member("c", nc, pg_store, url))
        await eventually(lambda: spread("abc"), 30, 0.05, "the leases spread over three")
        last = await append_orgs(log, 20, 20)

        async def applied() -> bool:
            return await pg_store.checkpoint("orgs") == last

        await eventually(applied, 15, 0.05, "the orgs applied, by whichever process holds it")

        # "c" dies: its session ends as a dead host's does, and it never asks again.
        dead = members.pop()
        lost = dead.active()

        async def unreachable() -> asyncpg.Connection:
            raise ConnectionError("this process is dead")

        dead.leases._connection = unreachable  # type: ignore[method-assign]
        await terminate(admin, "member c")
        killed_at = time.monotonic()
        await eventually(
            lambda: spread("ab"),
            TAKEOVER_LIMIT_S,
            0.05,
            "the dead process's leases taken by the others",
        )
        took_over = time.monotonic() - killed_at
        print(f"\nrebalanced after a death in {took_over:.2f}s ({sorted(lost)})")
        assert took_over < 5
        await dead.stop()
        last = await append_orgs(log, 40, 20)
        await eventually(applied, 15, 0.05, "the orgs applied after the rebalance")
        assert [r[0] for r in await pg_store.dump(ORGS)] == sorted(f"org{n}" for n in range(60))
        assert await pg_store.parked() == []
        assert overlaps == [], overlaps[:5]
        # Handed over or taken after a death: never longer without a worker than a
        # failover's bound (5 s; a round is 0.1 s here, 1 s in a service).
        longest = max(gaps, key=lambda g: g[1], default=("none", 0.0))
        print(f"handovers: {len(gaps)}, the longest without a worker {longest[1]:.2f}s")
        assert gaps, "no lease ever moved"
        assert longest[1] < 5, longest
    finally:
        watching.set()
        await watcher
        for member in members:
            await member.stop()


async def test_a_member_that_asks_nothing_makes_no_lease_go_round(
    nc: NATS, schema: str, admin: asyncpg.Connection, pg_store: Store
) -> None:
    """A process that joined and was SIGSTOPped before it took a lease holds the members
    lock and asks nothing. Counted, it made the share of the live two 4 (eleven over three),
    too few for eleven leases: the three left were taken as orphans and handed over again,
    round after round, for as long as it stayed stopped. It is no member while it asks
    nothing: the live two take every lease and keep it; continued, it gets its share as any
    joining process does."""
    log = EventLog(nc)
    await log.ensure_stream()
    url = with_search_path(DSN, schema)
    members = [Member("a", nc, pg_store, url), Member("b", nc, pg_store, url)]
    moves: list[tuple[str, str | None, str | None]] = []
    watching = asyncio.Event()

    async def watch() -> None:
        last: dict[str, str] = {}
        conn = await asyncpg.connect(DSN)  # admin's connection is the test's own
        try:
            while not watching.is_set():
                found = await holders(conn, schema)
                for projection in PROJECTIONS:
                    if found.get(projection) != last.get(projection):
                        moves.append((projection, last.get(projection), found.get(projection)))
                last = found
                await asyncio.sleep(0.02)
        finally:
            await conn.close()

    async def spread(names: str) -> dict[str, int] | None:
        found = await holders(admin, schema)
        counts = Counter(h.removeprefix("member ") for h in found.values())
        fair = sorted(found) == PROJECTIONS and set(counts) == set(names)
        if fair and max(counts.values()) <= fair_share(len(PROJECTIONS), len(names)):
            return dict(counts)
        return None

    # "c" starts: its lease session joins the members; then SIGSTOP, before any lease.
    stopped = PostgresLeases(url, "member c")
    watcher = asyncio.create_task(watch())
    try:
        await eventually(lambda: spread("ab"), 30, 0.05, "the leases spread over two")
        assert await stopped.members() == 3
        await asyncio.sleep(MEMBER_IDLE_S + 1)
        held = await eventually(lambda: spread("ab"), 15, 0.05, "every lease held by the two")
        moves.clear()
        await asyncio.sleep(3)  # 30 rounds of 0.1 s
        assert moves == [], f"{len(moves)} moves while c was stopped: {moves[:6]}"
        assert await spread("ab") == held

        # SIGCONT: "c" asks again, on the same session, and is handed its share.
        members.append(Member("c", nc, pg_store, url, leases=stopped))
        await eventually(lambda: spread("abc"), 15, 0.05, "the leases spread over three")
    finally:
        watching.set()
        await watcher
        for member in members:
            await member.stop()
        await stopped.close()


# Three processes, SIGKILL the active one under load ---------------------------------------------
CLIENTS = 3
ACKED_BEFORE_KILL = 150
ACKED_AFTER_KILL = 100
TAKEOVER_LIMIT_S = 15.0  # "within seconds"; a takeover measures ~1-2 s on a 2-core box


def logged(process: ServiceProcess, event: str) -> list[dict[str, Any]]:
    lines = []
    for line in process.log_path.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                lines.append(record)
    return lines


async def ready(process: ServiceProcess, timeout: float = 30.0) -> None:
    """This process (not just any in the queue group) has logged that it is ready."""

    async def check() -> bool:
        assert process.process is not None
        if process.process.poll() is not None:
            raise AssertionError(f"service exited: {process.log_path.read_text()[-2000:]}")
        return bool(logged(process, "agentmem ready"))

    await eventually(check, timeout, 0.1, f"{process.log_path.name} ready")


def lease_name(process: ServiceProcess) -> str:
    assert process.process is not None
    return f"pid {process.process.pid}"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.kill()


async def test_sigkill_the_active_projection_process_under_load(
    nats_server: NatsServer,
    schema: str,
    admin: asyncpg.Connection,
    processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    url = with_search_path(DSN, schema)
    data = tmp_path / "data"  # one data dir: the first start saves the admin key there
    data.mkdir()

    def service(name: str, roles: str) -> ServiceProcess:
        env = {"AGENTMEM_STORE": url, "AGENTMEM_ROLES": roles}
        process = ServiceProcess(nats_server.url, data / "unused.db", tmp_path / name, env)
        processes.append(process)
        process.start()
        return process

    # The first process starts alone, so it takes every lease.
    first = service("first.log", "commands,queries,projections")
    await ready(first)

    async def held_as(*processes: ServiceProcess) -> dict[str, int] | None:
        """Every lease held, by exactly these processes, none over its fair share: how
        many each holds (by pid)."""
        found = await holders(admin, schema)
        counts = Counter(h.rsplit(" pid ", 1)[-1] for h in found.values())
        fair = sorted(found) == PROJECTIONS and set(counts) == {pid(p) for p in processes}
        if fair and max(counts.values()) <= fair_share(len(PROJECTIONS), len(processes)):
            return dict(counts)
        return None

    def pid(process: ServiceProcess) -> str:
        assert process.process is not None
        return str(process.process.pid)

    await eventually(lambda: held_as(first), 15, 0.1, "the first process holding every lease")
    # Two more join: the leases spread, a fair share each (eight over three: 3, 3, 2).
    second = service("second.log", "projections,queries,commands")
    third = service("third.log", "commands,queries,projections")
    await asyncio.gather(ready(second), ready(third))
    spread = await eventually(
        lambda: held_as(first, second, third), 30, 0.1, "the leases spread over three"
    )
    token = first.admin_key()

    nc = await connect(nats_server.url)
    journal = Journal()
    tasks = [asyncio.create_task(drive(n, nats_server.url, token, journal)) for n in range(CLIENTS)]
    try:
        await wait_acked(journal, ACKED_BEFORE_KILL, tasks)
        assert await held_as(first, second, third) == spread, "leases moved while all lived"
        before = await pg_checkpoints(url)
        first.kill()  # SIGKILL: commands in flight, a batch perhaps half applied
        killed_at = time.monotonic()
        journal.crashed = True
        assert first.process is not None
        assert first.process.returncode == -signal.SIGKILL

        await eventually(
            lambda: held_as(second, third), TAKEOVER_LIMIT_S, 0.05, "the others take over"
        )
        took_over = time.monotonic() - killed_at

        async def moving_again() -> bool:
            now = await pg_checkpoints(url)
            # The load writes orgs and users: those two checkpoints must move on.
            return all(now.get(name, 0) > before.get(name, 0) for name in ("orgs", "users"))

        await eventually(moving_again, TAKEOVER_LIMIT_S, 0.05, "both projections applying again")
        applying = time.monotonic() - killed_at
        print(f"\ntakeover: leases in {took_over:.2f}s, projections applying in {applying:.2f}s")
        assert took_over < 5

        await wait_acked(journal, journal.acked + ACKED_AFTER_KILL, tasks)
    finally:
        journal.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

    try:
        await check_one_truth(journal, nc, token, url, tmp_path, second, third)
    finally:
        await nc.close()


async def pg_checkpoints(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        return {r["projection"]: r["seq"] for r in await conn.fetch("SELECT * FROM checkpoints")}
    finally:
        await conn.close()


async def check_one_truth(
    journal: Journal,
    nc: NATS,
    token: str,
    url: str,
    tmp_path: Path,
    second: ServiceProcess,
    third: ServiceProcess,
) -> None:
    assert all(s.written for s in journal.sent), "every command acknowledged in the end"
    await wait_caught_up(nc, token, timeout=30)

    # The status report says which process answered and what it runs.
    async def both_answered() -> dict[int, dict[str, Any]]:
        seen: dict[int, dict[str, Any]] = {}
        for _ in range(20):
            report = await status(nc, token)
            seen[report["process"]["pid"]] = report["process"]
        return seen if len(seen) == 2 else {}

    seen = await eventually(both_answered, 15, 0.01, "status from both live processes")
    assert second.process is not None
    assert third.process is not None
    # The two that lived share the projections between them, half each.
    second_active = seen[second.process.pid]["active"]
    third_active = seen[third.process.pid]["active"]
    assert sorted(second_active + third_active) == PROJECTIONS
    # An odd count splits one apart: either process may hold the larger half.
    halves = sorted([len(second_active), len(third_active)])
    assert halves == [len(PROJECTIONS) // 2, -(-len(PROJECTIONS) // 2)]
    for pid in (second.process.pid, third.process.pid):
        assert seen[pid]["roles"] == ["commands", "queries", "projections"]

    # Nothing lost, nothing doubled in the log: each command exactly once.
    messages = after_bootstrap(await read_log(nc))
    per_command = Counter(m.command_id for m in messages)
    by_seq = {m.seq: m for m in messages}
    for sent in journal.sent:
        assert sent.written is not None
        assert per_command[sent.command_id] == MESSAGES_PER_COMMAND[sent.kind], sent
        assert by_seq[sent.written.seq].command_id == sent.command_id, sent
    assert len(per_command) == len(journal.sent), "nothing in the log that no client sent"

    # Nothing lost, nothing doubled in the tables: they equal a fresh replay of the log.
    store = await open_store(url)
    try:
        live = await dump_store(store)
    finally:
        await store.close()
    replayed = await replay_into(nc, tmp_path / "replayed.db")
    assert replayed == live
    assert live["parked_events"] == []
    orgs, users = rows(live, ORGS), rows(live, USERS)
    registered = [s for s in journal.sent if s.kind == "register"]
    assert len(orgs) == CLIENTS + 1  # and the administrator's
    assert len(users) == len(registered) + 1

    # Each client's org reads, through either remaining process, as its last rename left it.
    client = Client(nc, token)
    last_rename = {s.client: s for s in journal.sent if s.kind == "rename"}
    assert len(last_rename) == CLIENTS
    for sent in last_rename.values():
        assert sent.written is not None
        for _ in range(4):  # the queue group spreads them over both processes
            org = await client.get_org(sent.written.fields["org_id"], after_seq=sent.written.seq)
            assert (org.name, org.version) == (sent.value, sent.written.seq)
