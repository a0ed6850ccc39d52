"""The access view: credentials checked from memory, revocations still seen at once.

Two service processes share one log and one Postgres store, as two hosts of a deployment
would (each a full ``Service``, with its own NATS connection and its own view). A request
is put to one chosen process through its dispatcher, which is what that process does with
a request NATS hands it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agentmem import Client, envelope, subjects
from agentmem.auth import tokens
from agentmem.commands import (
    AppendMessage,
    ArchiveAgent,
    CreateAgent,
    CreateApiKey,
    CreateOrg,
    DeleteOrg,
    DeleteUser,
    Login,
    Logout,
    RegisterUser,
    RenameOrg,
    RevokeApiKey,
    SetRoles,
    UnarchiveAgent,
)
from agentmem.consumers import access_view
from agentmem.consumers.access_view import AccessView
from agentmem.consumers.aggregates import AggregateCache, FreshReads
from agentmem.consumers.auth import Authenticator
from agentmem.eventlog import EventLog
from agentmem.natsflush import flushed
from agentmem.queries import GetOrg
from agentmem.service import Service
from tests.conftest import admin_key, settings_for
from tests.pg import DSN, postgres_schema, with_search_path
from tests.realparts import deployment_keys
from tests.support import NatsServer

pytestmark = pytest.mark.asyncio(loop_scope="module")
PASSWORD = "correct horse battery"
_numbers = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    started = NatsServer(tmp_path_factory.mktemp("access") / "nats")
    started.start()
    yield started
    started.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def processes(
    server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Service, Service, str]]:
    """Two service processes on one log and one store, and the administrator's key."""
    async with postgres_schema() as schema:
        store = with_search_path(DSN, schema)
        first_dir = tmp_path_factory.mktemp("first")
        first = Service(settings_for(server, first_dir, store))
        await first.start()
        second = Service(settings_for(server, tmp_path_factory.mktemp("second"), store))
        await second.start()
        yield first, second, admin_key(first_dir)
        await second.stop()
        await first.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def nc(server: NatsServer) -> AsyncIterator[NATS]:
    connection = await nats.connect(server.url)
    yield connection
    await connection.close()


@dataclass
class Someone:
    org_id: str
    user_id: str
    email: str
    key: str
    seq: int  # of the key's creation: the last write that made this person

    @property
    def key_id(self) -> str:
        parsed = tokens.parse(self.key)
        assert parsed is not None
        return parsed.credential_id


async def ask(process: Service, subject: str, body: dict[str, Any], token: str) -> envelope.Reply:
    """What ``process`` answers to a request with ``token``."""
    assert process.dispatcher is not None
    headers = {tokens.HEADER: f"Bearer {token}"}
    payload = await process.dispatcher.handle(subject, msgspec.json.encode(body), headers)
    return envelope.decode(payload)


async def someone(
    processes: tuple[Service, Service, str], roles: list[str] | None = None
) -> Someone:
    """A fresh organization with an admin user, made through the first process."""
    first, _, root = processes
    n = next(_numbers)
    org = await ask(first, CreateOrg.op.subject, {"name": f"org {n}"}, root)
    assert org.ok, org
    org_id = org.data["org_id"]
    email = f"someone{n}@example.com"
    user = await ask(
        first,
        RegisterUser.op.subject,
        {
            "org_id": org_id,
            "name": "Someone",
            "email": email,
            "password": PASSWORD,
            "roles": roles or ["admin"],
        },
        root,
    )
    assert user.ok, user
    key = await ask(
        first, CreateApiKey.op.subject, {"name": "k", "user_id": user.data["user_id"]}, root
    )
    assert key.ok, key
    assert key.seq is not None
    return Someone(org_id, user.data["user_id"], email, key.data["token"], key.seq)


def rename(person: Someone) -> tuple[str, dict[str, Any]]:
    return RenameOrg.op.subject, {"org_id": person.org_id, "name": f"name {next(_numbers)}"}


async def test_a_key_made_in_one_process_works_at_once_in_another(
    processes: tuple[Service, Service, str],
) -> None:
    _, second, _ = processes
    person = await someone(processes)
    reply = await ask(second, *rename(person), person.key)
    assert reply.ok, reply


async def test_a_process_decides_a_refusal_on_the_log_not_on_its_cache(
    processes: tuple[Service, Service, str],
) -> None:
    """A process whose cached aggregate another process has moved on refuses nothing for
    that: a right ``expected_version``, and a retry of a command the log holds, stored by
    the other process (both answered ``conflict`` from the stale state)."""
    first, second, _ = processes
    person = await someone(processes)

    async def renamed(process: Service, **fields: Any) -> envelope.Reply:
        subject, body = rename(person)
        reply = await ask(process, subject, {**body, **fields}, person.key)
        assert reply.ok, reply
        return reply

    await renamed(second)  # the second process caches the organization
    moved = await renamed(first)
    await renamed(second, expected_version=moved.seq)
    at = (await renamed(first)).seq
    retried = {"expected_version": at, "command_id": "stale-retry"}
    done = await renamed(first, **retried)
    again = await renamed(second, **retried)
    assert again.seq == done.seq


async def test_a_revoked_key_is_refused_at_once_by_the_other_process(
    processes: tuple[Service, Service, str],
) -> None:
    first, second, root = processes
    person = await someone(processes)
    assert (await ask(second, *rename(person), person.key)).ok  # the second one holds it
    revoked = await ask(
        first, RevokeApiKey.op.subject, {"key_id": person.key_id, "user_id": person.user_id}, root
    )
    assert revoked.ok, revoked
    refused = await ask(second, *rename(person), person.key)
    assert refused.error is not None
    assert refused.error.code == "unauthenticated"


async def test_an_ended_session_is_refused_at_once_by_the_other_process(
    processes: tuple[Service, Service, str],
) -> None:
    first, second, _ = processes
    person = await someone(processes)
    login = await ask(first, Login.op.subject, {"email": person.email, "password": PASSWORD}, "")
    assert login.ok, login
    session = login.data["token"]
    assert (await ask(second, *rename(person), session)).ok
    assert (await ask(first, Logout.op.subject, {}, session)).ok
    refused = await ask(second, *rename(person), session)
    assert refused.error is not None
    assert refused.error.code == "unauthenticated"


async def test_a_role_taken_away_is_seen_at_once_by_the_other_process(
    processes: tuple[Service, Service, str],
) -> None:
    first, second, root = processes
    person = await someone(processes)
    assert (await ask(second, *rename(person), person.key)).ok
    demoted = await ask(
        first, SetRoles.op.subject, {"user_id": person.user_id, "roles": ["readonly"]}, root
    )
    assert demoted.ok, demoted
    refused = await ask(second, *rename(person), person.key)
    assert refused.error is not None
    assert refused.error.code == "forbidden"


@pytest.mark.parametrize("removed", ["user", "org"])
async def test_a_deleted_user_or_org_is_refused_at_once_by_the_other_process(
    processes: tuple[Service, Service, str], removed: str
) -> None:
    first, second, root = processes
    person = await someone(processes)
    assert (await ask(second, *rename(person), person.key)).ok
    if removed == "user":
        deleted = await ask(first, DeleteUser.op.subject, {"user_id": person.user_id}, root)
    else:
        deleted = await ask(first, DeleteOrg.op.subject, {"org_id": person.org_id}, root)
    assert deleted.ok, deleted
    refused = await ask(second, GetOrg.op.subject, {"org_id": person.org_id}, person.key)
    assert refused.error is not None
    assert refused.error.code == "unauthenticated"


async def test_a_known_credential_costs_no_read_of_the_log(
    processes: tuple[Service, Service, str], nc: NATS
) -> None:
    """The point of the view: once it holds a user, checking their key asks nothing of
    nats-server. Every read of the log is a direct get or the leader's get, which this test
    listens for."""
    _, second, _ = processes
    person = await someone(processes)
    reads: list[Msg] = []

    async def seen(msg: Msg) -> None:
        reads.append(msg)

    # A direct get (any replica), or the leader's get (what a refresh reads).
    listeners = [
        await nc.subscribe(f"$JS.API.{api}.{subjects.STREAM_NAME}", cb=seen)
        for api in ("DIRECT.GET", "STREAM.MSG.GET")
    ]
    await flushed(nc)
    assert (await ask(second, GetOrg.op.subject, {"org_id": person.org_id}, person.key)).ok
    await asyncio.sleep(0.1)
    assert reads, "the first request reads the user and the org from the log"
    reads.clear()
    for _ in range(20):
        reply = await ask(second, GetOrg.op.subject, {"org_id": person.org_id}, person.key)
        assert reply.ok, reply
    await asyncio.sleep(0.1)
    for listener in listeners:
        await listener.unsubscribe()
    assert reads == []


async def test_an_unknown_key_is_refused_after_a_read_of_the_log(
    processes: tuple[Service, Service, str],
) -> None:
    _, second, _ = processes
    person = await someone(processes)
    assert (await ask(second, *rename(person), person.key)).ok
    forged = tokens.Token("key", person.org_id, person.user_id, "k" * 26, "0" * 64)
    refused = await ask(second, *rename(person), str(forged))
    assert refused.error is not None
    assert refused.error.code == "unauthenticated"


# A process that stops confirming --------------------------------------------------------
@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_view, "CONFIRM_S", 0.3)
    monkeypatch.setattr(access_view, "LEASE_S", 0.6)
    monkeypatch.setattr(access_view, "RENEW_S", 0.1)
    monkeypatch.setattr(access_view, "LEASE_MARGIN_S", 0.1)


async def test_a_process_that_stops_confirming_is_cut_off_and_reads_the_log(
    processes: tuple[Service, Service, str], server: NatsServer, short_lease: None
) -> None:
    """A third process whose view stops applying what it is delivered (stuck, or cut off
    from the server) must not hold up revocations for ever, nor answer from its stale view
    once the revocation is acknowledged."""
    first, _, root = processes
    person = await someone(processes)
    stuck_nc = await nats.connect(server.url)
    stuck_log = EventLog(stuck_nc, keys=deployment_keys(stuck_nc))
    view = AccessView(stuck_nc, FreshReads(AggregateCache(stuck_log)))
    await view.start()
    try:
        authenticate = Authenticator(AggregateCache(stuck_log), view)
        headers = {tokens.HEADER: f"Bearer {person.key}"}
        assert (await authenticate(headers)).user_id == person.user_id
        assert view.peek(subjects.event(person.org_id, "user", person.user_id)) is not None
        cut_off = view.consumer

        async def ignore(msg: Msg) -> None:
            return None

        view._on_commit = ignore  # type: ignore[method-assign]
        assert view._subscription is not None
        view._subscription._cb = ignore
        started = time.monotonic()
        revoked = await ask(
            first,
            RevokeApiKey.op.subject,
            {"key_id": person.key_id, "user_id": person.user_id},
            root,
        )
        waited = time.monotonic() - started
        assert revoked.ok, revoked
        # It waited for the stuck view, cut it off, then let its lease run out.
        assert waited >= access_view.CONFIRM_S + access_view.LEASE_S
        assert view.consumer != cut_off or not view.trusted
        with pytest.raises(Exception, match="not valid"):
            await authenticate(headers)
        # It starts over with a new consumer and trusts itself again.
        deadline = time.monotonic() + 5
        while not (view.trusted and view.consumer != cut_off):
            assert time.monotonic() < deadline, "the view did not start over"
            await asyncio.sleep(0.05)
    finally:
        await view.stop()
        await stuck_nc.close()


async def test_a_stopped_process_leaves_no_consumer_behind(
    processes: tuple[Service, Service, str], server: NatsServer
) -> None:
    watcher = await nats.connect(server.url)
    js = watcher.jetstream()
    view = AccessView(
        watcher, FreshReads(AggregateCache(EventLog(watcher, keys=deployment_keys(watcher))))
    )
    await view.start()
    names = {c.name for c in await js.consumers_info(subjects.STREAM_NAME)}
    assert view.consumer in names
    await view.stop()
    names = {c.name for c in await js.consumers_info(subjects.STREAM_NAME)}
    assert view.consumer not in names
    await watcher.close()


async def test_the_client_sees_it_too(processes: tuple[Service, Service, str], nc: NATS) -> None:
    """Over NATS, whichever process answers: revoke, then the next request is refused."""
    _, _, root = processes
    person = await someone(processes)
    client = Client(nc, root)
    as_person = client.with_token(person.key)
    for _ in range(10):  # both processes of the queue group come to hold the key
        await as_person.get_org(person.org_id, after_seq=person.seq)
    await client.revoke_api_key(person.key_id, user_id=person.user_id)
    for _ in range(10):
        with pytest.raises(Exception, match="not valid"):
            await as_person.get_org(person.org_id)


async def test_an_archived_agent_speaks_no_more_in_the_other_process_and_again_once_restored(
    processes: tuple[Service, Service, str],
) -> None:
    first, second, _ = processes
    person = await someone(processes)
    agent = await ask(first, CreateAgent.op.subject, {"name": "Helper"}, person.key)
    assert agent.ok, agent
    agent_id = agent.data["agent_id"]
    say = {"session_id": "s1", "agent_id": agent_id, "message": {"role": "user", "content": "hi"}}
    assert (await ask(second, AppendMessage.op.subject, say, person.key)).ok
    archived = await ask(first, ArchiveAgent.op.subject, {"agent_id": agent_id}, person.key)
    assert archived.ok, archived
    refused = await ask(second, AppendMessage.op.subject, say, person.key)
    assert refused.error is not None
    assert "archived" in refused.error.message
    restored = await ask(first, UnarchiveAgent.op.subject, {"agent_id": agent_id}, person.key)
    assert restored.ok, restored
    # The second process may not have the unarchive yet; it asks the log before refusing.
    assert (await ask(second, AppendMessage.op.subject, say, person.key)).ok


async def test_a_revocation_after_a_nats_server_restart_is_seen_at_once(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The view's consumer must outlive a restart of the server: had it vanished with it,
    a revocation right after would pass the barrier without this view, which still trusts
    itself for the rest of its lease (made long here, and not renewed meanwhile, so that
    the window is wide open)."""
    monkeypatch.setattr(access_view, "LEASE_S", 60.0)
    monkeypatch.setattr(access_view, "RENEW_S", 60.0)
    service = Service(settings_for(nats_server, tmp_path))
    await service.start()
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        root = Client(nc, admin_key(tmp_path))
        org_id = (await root.create_org("Acme")).fields["org_id"]
        user = await root.register_user(org_id, "Ann", "ann@example.com", PASSWORD)
        user_id = user.fields["user_id"]
        key = await root.create_api_key("k", user_id=user_id)
        as_ann = root.with_token(key.fields["token"])
        await as_ann.get_org(org_id, after_seq=root.last_seq)  # the view holds Ann now
        nats_server.restart()
        deadline = time.monotonic() + 20
        while True:  # until both connections are back and JetStream answers
            try:
                await as_ann.get_org(org_id)
                break
            except Exception:
                assert time.monotonic() < deadline, "the service did not come back"
                await asyncio.sleep(0.2)
        assert service.access is not None
        assert service.access.trusted
        await root.revoke_api_key(key.fields["key_id"], user_id=user_id)
        with pytest.raises(Exception, match="not valid"):
            await as_ann.get_org(org_id)
    finally:
        await nc.close()
        await service.stop()
