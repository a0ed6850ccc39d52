"""Replaying the log rebuilds every projection table row for row."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, NotFoundError, subjects
from agentmem.events import Role
from agentmem.projections import ALL, BY_NAME
from agentmem.projections.orgs import ORGS
from agentmem.projections.replay import replay
from agentmem.projections.users import API_KEYS, USERS
from agentmem.service import Service
from agentmem.store import open_store
from tests.conftest import admin_key, settings_for
from tests.realparts import (
    LogMessage,
    bootstrap_batch,
    clean_env,
    dump_file,
    dump_store,
    keys_of,
    read_log,
    replay_into,
    rows,
    run_cli,
    wait_caught_up,
)
from tests.support import TEST_MASTER_KEY, NatsServer

# Only the ``service`` test takes a store: its live tables, on either store, must equal a
# replay into a fresh SQLite file. The CLI test replays an SQLite file in place.
STORES = ("sqlite", "postgres")
USERS_PROJECTION = BY_NAME["users"]


async def run_mix(client: Client) -> dict[str, str]:
    """Orgs, users, renames, role changes, email changes, password changes and deletes."""
    acme = (await client.create_org("Acme")).fields["org_id"]
    beta = (await client.create_org("Beta")).fields["org_id"]
    gone = (await client.create_org("Gone")).fields["org_id"]
    people = {}
    plan: list[tuple[str, list[Role] | None]] = [
        (acme, ["admin"]),
        (acme, ["member"]),
        (beta, ["readonly", "member"]),
        (gone, None),
    ]
    for n, (org, roles) in enumerate(plan):
        written = await client.register_user(
            org, f"User {n}", f"user{n}@example.com", f"password-{n}", roles=roles
        )
        people[f"u{n}"] = written.fields["user_id"]
    await client.rename_org(acme, "Acme Corp")
    await client.rename_org(acme, "Acme Corporation")
    await client.rename_org(beta, "Beta Ltd")
    await client.set_roles(people["u1"], ["admin", "member"])
    await client.set_roles(people["u1"], ["readonly"])
    await client.update_profile(people["u0"], email="boss@example.com")
    await client.update_profile(people["u2"], name="Renamed Two")
    await client.change_password(people["u2"], "password-2", "password-2b")
    await client.delete_user(people["u3"])
    await client.delete_org(gone)
    # The freed address is taken again, by a new user.
    again = await client.register_user(acme, "Reuser", "user0@example.com", "password-r")
    people["u4"] = again.fields["user_id"]
    people.update(acme=acme, beta=beta, gone=gone)
    return people


def the_admin(messages: list[LogMessage]) -> tuple[str, str]:
    """The service administrator's org and user, as the bootstrap batch in the log has them."""
    batch = bootstrap_batch(messages)
    (org_id,) = {subjects.parse(m.subject).aggregate_id for m in batch if m.aggregate == "org"}
    (user_id,) = {subjects.parse(m.subject).aggregate_id for m in batch if m.aggregate == "user"}
    return org_id, user_id


def assert_mix(dumped: dict[str, object], people: dict[str, str], admin: tuple[str, str]) -> None:
    admin_org, admin_user = admin
    orgs, users = rows(dumped, ORGS), rows(dumped, USERS)
    assert sorted(orgs) == sorted([people["acme"], people["beta"], admin_org])
    assert orgs[people["acme"]]["name"] == "Acme Corporation"
    assert set(users) == {people[u] for u in ("u0", "u1", "u2", "u4")} | {admin_user}
    assert users[admin_user]["org_id"] == admin_org
    assert users[admin_user]["service_admin"] == 1
    assert users[people["u0"]]["email"] == "boss@example.com"
    assert users[people["u4"]]["email"] == "user0@example.com"
    assert users[people["u1"]]["roles"] == '["readonly"]'
    assert users[people["u2"]]["name"] == "Renamed Two"
    assert {u["service_admin"] for k, u in users.items() if k != admin_user} == {0}
    # The one API key: the administrator's, from the first start; listed without its secret.
    (key,) = rows(dumped, API_KEYS).values()
    assert (key["user_id"], key["org_id"], key["revoked_at"]) == (admin_user, admin_org, None)


async def test_replay_into_a_fresh_file_equals_the_live_tables(
    service: Service, client: Client, nc: NATS, tmp_path: Path, admin_token: str
) -> None:
    assert service.store is not None
    people = await run_mix(client)
    await wait_caught_up(nc, admin_token)
    live = await dump_store(service.store)
    assert_mix(live, people, the_admin(await read_log(nc)))
    assert {name for name, _ in live["checkpoints"]} == {p.name for p in ALL}

    replayed = await replay_into(nc, tmp_path / "replayed.db")

    assert replayed.keys() == live.keys()
    for table in live:
        assert replayed[table] == live[table], table
    with pytest.raises(NotFoundError):
        await client.get_user(people["u3"])


@pytest.fixture
async def own_service(
    nats_server: NatsServer, tmp_path: Path, store_url: str
) -> AsyncIterator[Service]:
    """A service this test stops itself (the ``service`` fixture stops at teardown)."""
    svc = Service(settings_for(nats_server, tmp_path, store_url))
    await svc.start()
    try:
        yield svc
    finally:
        if not svc.stopped.is_set():
            await svc.stop()


SPOIL = (
    "UPDATE users SET name = 'spoiled', version = 0",
    "DELETE FROM orgs",
    "DELETE FROM api_keys",
    "UPDATE checkpoints SET seq = 1",
)


async def spoil(store_url: str) -> None:
    if store_url.startswith("postgresql://"):
        conn = await asyncpg.connect(store_url)
        try:
            for statement in SPOIL:
                await conn.execute(statement)
        finally:
            await conn.close()
        return
    with sqlite3.connect(store_url) as db:
        for statement in SPOIL:
            db.execute(statement)


async def test_replay_all_in_place_through_the_cli(
    own_service: Service, nats_server: NatsServer, nc: NATS, tmp_path: Path
) -> None:
    service = own_service
    token = admin_key(service.settings.data_dir)
    client = Client(nc, token)
    people = await run_mix(client)
    await wait_caught_up(nc, token)
    assert service.store is not None
    before = await dump_store(service.store)
    assert_mix(before, people, the_admin(await read_log(nc)))
    db = service.settings.store_url
    env = clean_env(
        AGENTMEM_NATS=nats_server.url, AGENTMEM_STORE=db, AGENTMEM_MASTER_KEY=TEST_MASTER_KEY
    )

    # While the service runs the projections (it owns the SQLite file, or holds the
    # Postgres leases), an in-place replay is refused, clearly.
    busy = await run_cli("replay", "--all", env=env, cwd=tmp_path)
    assert busy.returncode == 2
    assert "--into" in busy.stderr
    assert "Traceback" not in busy.stderr

    await service.stop()
    # Spoil the tables: the replay must rebuild them from the log, not leave them be.
    await spoil(db)
    assert await dump_file(db) != before

    ran = await run_cli("replay", "--all", env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr

    assert await dump_file(db) == before
    # One summary line per projection: events, time, ev/s and the checkpoint reached.
    messages = await read_log(nc)
    checkpoints = dict(before["checkpoints"])
    for projection in ALL:
        read = {f.split(".")[3] for f in projection.filter_subjects}
        commits = sum(1 for m in messages if m.aggregate in read)
        line = re.search(
            rf"^{projection.name}: ([\d,]+) events in [\d.]+s \(([\d,]+) ev/s\), "
            rf"checkpoint ([\d,]+)$",
            ran.stdout,
            re.MULTILINE,
        )
        assert line, ran.stdout
        assert int(line[1].replace(",", "")) == commits
        assert int(line[3].replace(",", "")) == checkpoints[projection.name]
        # And the progress bar, on stderr, ending full.
        bar = rf"{projection.name} \[#{{30}}\] {commits:,}/{commits:,} [\d,]+ ev/s"
        assert re.search(bar, ran.stderr), ran.stderr


async def test_a_replay_goes_on_after_the_nats_server_restarts_under_it(
    service: Service,
    client: Client,
    nc: NATS,
    nats_server: NatsServer,
    tmp_path: Path,
    admin_token: str,
) -> None:
    """`agentmem replay` stopped with a broken pull when a node went away mid-replay; it now
    goes on from its checkpoint once the log answers again, and ends equal to the live
    tables."""
    assert service.store is not None
    await run_mix(client)
    await wait_caught_up(nc, admin_token)
    live = await dump_store(service.store)
    restarts: list[threading.Timer] = []

    def restart_once(done: int, pending: int) -> None:
        if not restarts and pending:
            nats_server.stop()  # graceful: nothing it acknowledged is lost
            restarts.append(threading.Timer(1.0, nats_server.start))
            restarts[0].start()

    keys = await keys_of(nc)
    store = await open_store(str(tmp_path / "replayed.db"))
    try:
        result = await asyncio.wait_for(
            replay(nc, store, USERS_PROJECTION, on_progress=restart_once, batch=3, keys=keys),
            60,
        )
        replayed = await dump_store(store)
    finally:
        await keys.stop()
        await store.close()
        for timer in restarts:
            timer.join()
    assert restarts, "the replay ended in one batch: nothing was interrupted"
    assert result.checkpoint > 0
    for table in USERS_PROJECTION.tables:
        assert replayed[table.name] == live[table.name], table.name
