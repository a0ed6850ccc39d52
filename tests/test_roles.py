"""``agentmem serve --roles``: which handlers and workers a process runs.

- Roles come from ``--roles`` or ``AGENTMEM_ROLES`` (default: all three); a wrong name stops
  the start with one line.
- An SQLite store belongs to one process, so a split of the roles on SQLite is refused in
  one line: a deployment over several processes needs Postgres.
- On Postgres, a process subscribes only its roles' subjects: commands go to the one with the
  commands role, queries to the one with the queries role, which has no worker of its own and
  still honours ``after_seq`` from the store's checkpoints. Status says who answered.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client
from agentmem.config import ROLES, Settings, StartupError, parse_roles
from agentmem.projections import ALL
from agentmem.projections import worker as worker_module
from agentmem.queries import GetOrg, Health
from agentmem.service import Service
from tests.conftest import admin_key, settings_for
from tests.pg import DSN, postgres_schema, with_search_path
from tests.realparts import bearer, clean_env, run_cli, status
from tests.support import NatsServer


def split_service(nats_server: NatsServer, tmp_path: Path, pg_url: str, roles: str) -> Service:
    """A process of a deployment split over several, with ``roles``."""
    settings = settings_for(nats_server, tmp_path, pg_url)
    settings.roles = parse_roles(roles)
    return Service(settings)


def test_roles_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_roles(" Commands, queries ,") == frozenset({"commands", "queries"})
    monkeypatch.delenv("AGENTMEM_ROLES", raising=False)
    assert Settings().roles == frozenset(ROLES)
    monkeypatch.setenv("AGENTMEM_ROLES", "projections")
    assert Settings().roles == frozenset({"projections"})
    for wrong in ("", " , ", "commands,workers"):
        with pytest.raises(StartupError, match="must name one or more of commands, queries"):
            parse_roles(wrong, "--roles")
    monkeypatch.setenv("AGENTMEM_ROLES", "everything")
    with pytest.raises(StartupError, match=r"^AGENTMEM_ROLES must name"):
        Settings()


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        (["--roles", "queries"], "roles queries split the service over several processes"),
        (["--roles", "commands,projections"], "roles commands,projections split the service"),
        (["--roles", "all"], "--roles must name one or more of commands, queries, projections"),
        ([], "AGENTMEM_ROLES must name one or more of"),
    ],
)
async def test_a_split_that_cannot_work_stops_the_start_in_one_line(
    nats_server: NatsServer, tmp_path: Path, how: list[str], expected: str
) -> None:
    env = clean_env(AGENTMEM_NATS=nats_server.url, AGENTMEM_DATA_DIR=str(tmp_path))
    if not how:
        env["AGENTMEM_ROLES"] = "commands;queries"
    ran = await run_cli("serve", *how, env=env, cwd=tmp_path)
    assert ran.returncode == 2
    assert ran.stderr.count("\n") == 1, ran.stderr
    assert ran.stderr.startswith("agentmem: ")
    assert expected in ran.stderr
    if how and how[1] != "all":
        assert "needs a Postgres store" in ran.stderr
    # Refused before touching anything: no store file, no administrator written.
    assert not (tmp_path / "agentmem.db").exists()
    assert not (tmp_path / "admin.key").exists()


async def test_all_roles_spelled_out_run_on_sqlite(nats_server: NatsServer, tmp_path: Path) -> None:
    settings = settings_for(nats_server, tmp_path)
    settings.roles = parse_roles("projections,commands,queries")
    service = Service(settings)
    await service.start()
    try:
        assert service.this_process()["active"] == sorted(p.name for p in ALL)
    finally:
        await service.stop()


# A split on Postgres ---------------------------------------------------------------------------
@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with postgres_schema() as schema:
        yield with_search_path(DSN, schema)


async def test_commands_and_projections_in_one_process_queries_in_another(
    nats_server: NatsServer, nc: NATS, tmp_path: Path, pg_url: str
) -> None:
    writer = split_service(nats_server, tmp_path, pg_url, "commands,projections")
    reader = split_service(nats_server, tmp_path, pg_url, "queries")
    await writer.start()
    try:
        await reader.start()
        try:
            assert reader.leaders == {}
            assert reader.this_process()["active"] == []
            assert writer.this_process()["active"] == sorted(p.name for p in ALL)
            client = Client(nc, admin_key(tmp_path))
            # Commands reach the writer only, queries the reader only.
            org = await client.create_org("Acme")
            org_id = org.fields["org_id"]
            assert (await client.get_org(org_id, after_seq=org.seq)).name == "Acme"
            ann = await client.register_user(org_id, "Ann", "ann@example.com", "password-1")
            user = await client.get_user(ann.fields["user_id"], after_seq=ann.seq)
            assert user.email == "ann@example.com"
            # after_seq of an event this projection never reads (a user's, for orgs).
            renamed = await client.rename_org(org_id, "Acme 2")
            await client.set_roles(ann.fields["user_id"], ["admin"])
            assert (await client.get_org(org_id, after_seq=client.last_seq)).version == (
                renamed.seq
            )

            # Whichever process answers status says which it is (both run in this test's
            # process, so their roles tell them apart, not their pid).
            token = admin_key(tmp_path)
            seen = set()
            for _ in range(40):
                process = (await status(nc, token))["process"]
                seen.add((tuple(process["roles"]), tuple(process["active"])))
            names = tuple(sorted(p.name for p in ALL))
            assert seen == {(("commands", "projections"), names), (("queries",), ())}

            # And `agentmem status` prints it.
            ran = await run_cli(
                "status",
                "--nats",
                nats_server.url,
                "--store",
                pg_url,
                env=clean_env(AGENTMEM_TOKEN=token),
                cwd=tmp_path,
            )
            assert ran.returncode == 0, ran.stderr
            (line,) = [x for x in ran.stdout.splitlines() if x.startswith("answered by")]
            assert re.fullmatch(
                rf"answered by pid \d+ on \S+: roles (commands,projections; active for "
                rf"projections: {', '.join(names)}|queries; active for projections: none)",
                line,
            ), line

            # Health, from both: the reader runs no projection and is live.
            health = await nc.request(Health.op.subject, b"{}", timeout=2)
            assert b'"live":true' in health.data
        finally:
            await reader.stop()
        # With the reader gone nobody answers queries; commands still work.
        with pytest.raises(nats.errors.NoRespondersError):
            await nc.request(GetOrg.op.subject, b"{}", timeout=2, headers=bearer(token))
        await client.rename_org(org_id, "Acme 3")
    finally:
        await writer.stop()


async def test_a_query_in_another_process_hurries_a_paced_projection(
    nats_server: NatsServer,
    nc: NATS,
    tmp_path: Path,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process that waits for a projection is not the one that runs it: it tells the
    worker on ``agentmem.hurry.<projection>``, else each read after a write would wait
    for the pace (here longer than the read's 5 s, so that it would fail)."""
    monkeypatch.setattr(worker_module, "IDLE_WAIT_S", 30.0)

    writer = split_service(nats_server, tmp_path, pg_url, "commands,projections")
    writer.settings.projection_pace_ms = 30_000
    reader = split_service(nats_server, tmp_path, pg_url, "queries")
    await writer.start()
    try:
        await reader.start()
        try:
            client = Client(nc, admin_key(tmp_path))
            for n in range(4):
                memory_id = (await client.add_memory(f"fact {n}", user_id="u")).fields["memory_id"]
                assert (await client.get_memory(str(memory_id))).content == f"fact {n}"
        finally:
            await reader.stop()
    finally:
        await writer.stop()
