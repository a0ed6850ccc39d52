"""A replay up to a sequence, or up to a moment, gives the state as it was then: the same
rows, checkpoints and parked events the live tables had when the log ended there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from agentmem import Client
from agentmem.eventlog import EventLog
from agentmem.projections.replay import seq_at_time
from agentmem.service import Service
from tests.pg import DSN, postgres_schema, with_search_path
from tests.realparts import clean_env, dump_file, dump_store, run_cli, wait_caught_up
from tests.support import TEST_MASTER_KEY, NatsServer

STORES = ("sqlite", "postgres")


async def last_seq(nc: NATS) -> int:
    return int((await EventLog(nc).info())["state"]["last_seq"])


@pytest.fixture
async def other_store(store_kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """A second, empty store of the same kind as the live one: the replay's target."""
    if store_kind == "postgres":
        async with postgres_schema() as schema:
            yield with_search_path(DSN, schema)
    else:
        yield str(tmp_path / "then.db")


async def test_a_replay_until_a_sequence_or_a_time_equals_the_live_tables_then(
    service: Service,
    client: Client,
    nc: NATS,
    nats_server: NatsServer,
    admin_token: str,
    other_store: str,
    tmp_path: Path,
) -> None:
    assert service.store is not None
    acme = (await client.create_org("Acme")).fields["org_id"]
    beta = (await client.create_org("Beta")).fields["org_id"]
    ann = (await client.register_user(acme, "Ann", "ann@example.com", "password-a")).fields
    bob = (await client.register_user(beta, "Bob", "bob@example.com", "password-b")).fields
    await client.rename_org(acme, "Acme Corp")
    await client.set_roles(bob["user_id"], ["readonly"])
    await wait_caught_up(nc, admin_token)
    captured = await dump_store(service.store)
    then = await last_seq(nc)
    await asyncio.sleep(0.05)
    moment = datetime.now(UTC)
    await asyncio.sleep(0.05)

    # The bad commands a point-in-time rebuild is for: they rename, delete and add.
    await client.rename_org(acme, "Acme Mistake")
    await client.delete_user(ann["user_id"])
    await client.delete_org(beta)
    await client.create_org("Gamma")
    await wait_caught_up(nc, admin_token)
    assert await last_seq(nc) > then
    assert await dump_store(service.store) != captured

    assert await seq_at_time(nc, moment) == then
    assert await seq_at_time(nc, datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert await seq_at_time(nc, datetime.now(UTC)) == await last_seq(nc)

    env = clean_env(AGENTMEM_MASTER_KEY=TEST_MASTER_KEY)  # the deployment's: its events are sealed
    connection = ("--nats", nats_server.url, "--data-dir", str(tmp_path / "cli"))
    by_seq = await run_cli(
        "replay", "--all", "--into", other_store, "--until-seq", str(then), *connection, env=env
    )
    assert by_seq.returncode == 0, by_seq
    assert await dump_file(other_store) == captured

    into_file = str(tmp_path / "by-time.db")
    by_time = await run_cli(
        "replay",
        "--all",
        "--into",
        into_file,
        "--until-time",
        moment.isoformat(),
        *connection,
        env=env,
    )
    assert by_time.returncode == 0, by_time
    assert f"ended at sequence {then:,}" in by_time.stdout
    assert await dump_file(into_file) == captured


async def test_a_point_in_time_replay_never_writes_over_the_live_store(
    service: Service,
    nats_server: NatsServer,
    nc: NATS,
    admin_token: str,
    tmp_path: Path,
    store_url: str,
) -> None:
    # The live service's projections first finish what it wrote at its start: only a
    # replay may not change the store from here on.
    await wait_caught_up(nc, admin_token)
    before = await dump_file(store_url)
    env = clean_env(AGENTMEM_MASTER_KEY=TEST_MASTER_KEY)  # the deployment's: its events are sealed
    connection = ("--nats", nats_server.url, "--store", store_url)
    for until in (["--until-seq", "1"], ["--until-time", "2026-01-01T00:00:00Z"]):
        ran = await run_cli("replay", "--all", *until, *connection, env=env)
        assert ran.returncode == 2, ran
        assert "add --into" in ran.stderr
    ran = await run_cli("replay", "--all", "--until-time", "yesterday", *connection, env=env)
    assert ran.returncode == 2, ran
    assert "not an ISO 8601 time" in ran.stderr
    assert await dump_file(store_url) == before
