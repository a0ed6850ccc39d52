"""Every command and query over NATS, against the real service and a real nats-server, on
each projection store: SQLite and Postgres (``STORES``; see ``tests/conftest.py``).

Each test gets its own nats-server and service (the ``client`` fixture). Replies are recorded,
and after every test no reply may carry a password or a password hash.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from agentmem import (
    Client,
    ConflictError,
    InvalidError,
    NotFoundError,
    UnauthenticatedError,
    Written,
    envelope,
    subjects,
)
from agentmem.bootstrap import ADMIN_ORG_NAME
from agentmem.commands import ChangePassword, CreateOrg, DeleteUser, RegisterUser, RenameOrg
from agentmem.consumers import commands as command_handlers
from agentmem.consumers.aggregates import AggregateCache
from agentmem.consumers.auth import Authenticator
from agentmem.consumers.freshness import Freshness
from agentmem.consumers.parts import routers
from agentmem.consumers.router import Dispatcher
from agentmem.eventlog import EventLog
from agentmem.projections.board import CheckpointBoard
from agentmem.protocol import Operation, operations
from agentmem.queries import EmailExists, GetOrg, GetUser, GetUserByEmail, ListOrgs, ListUsers
from agentmem.replies import Org
from agentmem.service import Service
from agentmem.store import Store
from tests.realparts import deployment_keys, second_process
from tests.support import NatsServer

STORES = ("sqlite", "postgres")

PASSWORD = "first-secret-pass"
NEW_PASSWORD = "second-secret-pass"
SECRET_FIELDS = ("password", "old_password", "new_password")


# Recording every reply -------------------------------------------------------------------
class RecordingConnection:
    """Stands in for a NATS connection in ``Client``: passes requests on, keeps the replies."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.exchanges: list[tuple[str, bytes, bytes]] = []

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> Any:
        message = await self.nc.request(subject, payload, timeout=timeout, headers=headers)
        self.exchanges.append((subject, payload, message.data))
        return message

    async def close(self) -> None:
        pass


def assert_no_secret_in(exchanges: list[tuple[str, bytes, bytes]]) -> None:
    secrets = {b"scrypt$"}
    for _, payload, _ in exchanges:
        body = msgspec.json.decode(payload) if payload else {}
        secrets |= {str(body[k]).encode() for k in SECRET_FIELDS if body.get(k)}
    for subject, _, reply in exchanges:
        for secret in secrets:
            assert secret not in reply, f"a reply on {subject} carries a secret: {reply!r}"
        decoded = envelope.decode(reply)
        if decoded.ok:
            keys = set(keys_of(decoded.data))
            assert not {k for k in keys if "password" in k}, f"{subject} answered {reply!r}"


def keys_of(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [k for k in value] + [k for v in value.values() for k in keys_of(v)]
    if isinstance(value, list):
        return [k for v in value for k in keys_of(v)]
    return []


@pytest.fixture
async def recorded(service: Service, nc: NATS) -> AsyncIterator[RecordingConnection]:
    connection = RecordingConnection(nc)
    yield connection
    assert connection.exchanges
    assert_no_secret_in(connection.exchanges)


@pytest.fixture
async def api(recorded: RecordingConnection, admin_token: str) -> Client:
    return Client(recorded, admin_token)  # type: ignore[arg-type]


# Helpers ---------------------------------------------------------------------------------
async def stream_state(nc: NATS) -> tuple[int, int]:
    """(last sequence, message count) of the event stream, from the JetStream API."""
    info = await nc.jetstream().stream_info(subjects.STREAM_NAME)
    return info.state.last_seq, info.state.messages


class _Admin:
    """The service administrator's key for the running test (set by ``as_admin``)."""

    token = ""

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


ADMIN = _Admin()


@pytest.fixture(autouse=True)
def as_admin(request: pytest.FixtureRequest) -> None:
    if "service" in request.fixturenames:
        ADMIN.token = request.getfixturevalue("admin_token")


async def raw(nc: Any, subject: str, body: dict[str, Any]) -> envelope.Reply:
    message = await nc.request(
        subject, msgspec.json.encode(body), timeout=10, headers=ADMIN.headers()
    )
    return envelope.decode(message.data)


async def cold_handle(
    nc: NATS, subject: str, body: dict[str, Any], store: Store | None = None
) -> envelope.Reply:
    """Handle a command as a second service process would: its own, empty aggregate cache
    (and the deployment's ``store``, for a command that reads projections: ``user.delete``
    deletes the user's entities, found in the graph's tables)."""
    parts = second_process(nc)
    if store is not None:
        parts = replace(parts, store=store, freshness=Freshness(nc, store, CheckpointBoard()))
    router = command_handlers.command_router(parts)
    dispatcher = Dispatcher(nc, router, Authenticator(parts.runner.cache))
    payload = msgspec.json.encode(body)
    return envelope.decode(await dispatcher.handle(subject, payload, ADMIN.headers()))


def tenants(orgs: list[Org]) -> list[Org]:
    """The organizations a test made: without the service's own, made by the bootstrap."""
    return [org for org in orgs if org.name != ADMIN_ORG_NAME]


async def new_org(api: Client, name: str = "Acme") -> str:
    return str((await api.create_org(name)).fields["org_id"])


async def new_user(api: Client, org_id: str, email: str, **kwargs: Any) -> str:
    written = await api.register_user(org_id, "User", email, PASSWORD, **kwargs)
    return str(written.fields["user_id"])


async def outcomes(
    calls: list[Awaitable[Written]],
) -> tuple[list[Written], list[BaseException]]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    ok = [r for r in results if isinstance(r, Written)]
    failed = [r for r in results if isinstance(r, BaseException)]
    return ok, failed


@pytest.fixture
async def connections(nats_server: NatsServer) -> AsyncIterator[list[NATS]]:
    opened = [await nats.connect(nats_server.url) for _ in range(10)]
    yield opened
    for connection in opened:
        await connection.close()


# Organizations ---------------------------------------------------------------------------
async def test_org_create_get_rename_list_delete(api: Client, nc: NATS) -> None:
    created = await api.create_org("Acme")
    org_id = created.fields["org_id"]
    assert created.event == "org.created"
    assert created.fields == {"org_id": org_id, "name": "Acme"}
    assert created.version == created.seq == (await stream_state(nc))[0]

    org = await api.get_org(org_id, after_seq=api.last_seq)
    assert (org.org_id, org.name, org.version) == (org_id, "Acme", created.version)
    assert org.created_at == org.updated_at > 0

    renamed = await api.rename_org(org_id, "Acme Ltd", expected_version=created.version)
    assert renamed.event == "org.renamed"
    assert renamed.version > created.version
    org = await api.get_org(org_id, after_seq=api.last_seq)
    assert (org.name, org.version) == ("Acme Ltd", renamed.version)

    other = await new_org(api, "Other")
    listed = await api.list_orgs(after_seq=api.last_seq)
    assert {o.org_id: o.name for o in tenants(listed.items)} == {
        org_id: "Acme Ltd",
        other: "Other",
    }
    assert listed.next_cursor is None

    deleted = await api.delete_org(org_id)
    assert deleted.event == "org.deleted"
    with pytest.raises(NotFoundError):
        await api.get_org(org_id, after_seq=api.last_seq)
    assert [o.org_id for o in tenants((await api.list_orgs(after_seq=api.last_seq)).items)] == [
        other
    ]

    before = await stream_state(nc)
    with pytest.raises(NotFoundError):
        await api.rename_org(org_id, "Zombie")
    with pytest.raises(NotFoundError):
        await api.delete_org(org_id)
    with pytest.raises(NotFoundError):
        await api.rename_org("no-such-org", "Ghost")
    with pytest.raises(NotFoundError):
        await api.get_org("no-such-org")
    assert await stream_state(nc) == before


async def test_list_orgs_pages_through_everything(api: Client) -> None:
    made = {await new_org(api, f"Org {i}") for i in range(5)}
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page = await api.list_orgs(limit=2, cursor=cursor, after_seq=api.last_seq)
        seen += [o.org_id for o in tenants(page.items)]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(made)


# Users -----------------------------------------------------------------------------------
async def test_user_register_get_update_roles_delete(api: Client, nc: NATS) -> None:
    org_id = await new_org(api)
    written = await api.register_user(org_id, "Ann", "Ann@Example.COM", PASSWORD)
    user_id = written.fields["user_id"]
    assert written.event == "user.registered"
    assert written.fields == {
        "user_id": user_id,
        "org_id": org_id,
        "name": "Ann",
        "email": "ann@example.com",  # normalised
        "roles": ["member"],  # the default
        "service_admin": False,  # only the bootstrap makes one
    }

    user = await api.get_user(user_id, after_seq=api.last_seq)
    assert (user.org_id, user.name, user.email, user.roles, user.version) == (
        org_id,
        "Ann",
        "ann@example.com",
        ["member"],
        written.version,
    )
    assert await api.get_user_by_email("ANN@example.com") == user
    assert await api.email_exists("ann@EXAMPLE.com")
    assert not await api.email_exists("bob@example.com")
    with pytest.raises(NotFoundError):
        await api.get_user_by_email("bob@example.com")

    updated = await api.update_profile(user_id, name="Ann B.", expected_version=written.version)
    assert updated.event == "user.profile_updated"
    assert updated.fields == {"user_id": user_id, "name": "Ann B.", "email": "ann@example.com"}
    user = await api.get_user(user_id, after_seq=api.last_seq)
    assert (user.name, user.email, user.version) == ("Ann B.", "ann@example.com", updated.version)

    roles = await api.set_roles(user_id, ["admin", "readonly", "admin"])
    assert roles.event == "user.roles_set"
    assert roles.fields["roles"] == ["admin", "readonly"]
    user = await api.get_user(user_id, after_seq=api.last_seq)
    assert (user.roles, user.version) == (["admin", "readonly"], roles.version)

    listed = await api.list_users(org_id, after_seq=api.last_seq)
    assert listed.items == [user]

    deleted = await api.delete_user(user_id, expected_version=roles.version)
    assert deleted.event == "user.deleted"
    with pytest.raises(NotFoundError):
        await api.get_user(user_id, after_seq=api.last_seq)
    assert not await api.email_exists("ann@example.com", after_seq=api.last_seq)
    assert (await api.list_users(org_id, after_seq=api.last_seq)).items == []

    before = await stream_state(nc)
    for attempt in (
        api.delete_user(user_id),
        api.set_roles(user_id, ["admin"]),
        api.update_profile(user_id, name="Ghost"),
        api.change_password(user_id, PASSWORD, NEW_PASSWORD),
        api.delete_user("no-such-user"),
        api.set_roles("no-such-user", ["admin"]),
        api.update_profile("no-such-user", name="x"),
        api.change_password("no-such-user", PASSWORD, NEW_PASSWORD),
    ):
        with pytest.raises(NotFoundError):
            await attempt
    with pytest.raises(NotFoundError):
        await api.get_user("no-such-user")
    assert await stream_state(nc) == before


async def test_a_users_version_moves_with_its_keys_and_sessions(api: Client) -> None:
    """A key or a login is a commit on the user's subject: the version user.get gives is
    the one an update's expected_version must name (it left them out, so a read-then-update
    of a user who had logged in always failed)."""
    org = await new_org(api)
    user_id = await new_user(api, org, "versioned@example.com")
    key = await api.create_api_key("laptop", user_id=user_id)
    read = await api.get_user(user_id)
    assert read.version == key.version
    await api.login("versioned@example.com", PASSWORD)
    relogged = await api.get_user(user_id)
    assert relogged.version > read.version
    updated = await api.update_profile(user_id, name="Ann", expected_version=relogged.version)
    assert updated.fields["name"] == "Ann"


async def test_register_with_roles(api: Client) -> None:
    org_id = await new_org(api)
    user_id = await new_user(api, org_id, "r@example.com", roles=["readonly", "readonly"])
    assert (await api.get_user(user_id, after_seq=api.last_seq)).roles == ["readonly"]


async def test_change_password(api: Client, nc: NATS) -> None:
    org_id = await new_org(api)
    user_id = await new_user(api, org_id, "pw@example.com")

    before = await stream_state(nc)
    with pytest.raises(UnauthenticatedError):
        await api.change_password(user_id, "not-the-password", NEW_PASSWORD)
    assert await stream_state(nc) == before

    changed = await api.change_password(user_id, PASSWORD, NEW_PASSWORD)
    assert changed.event == "user.password_changed"
    assert changed.fields == {"user_id": user_id}
    assert (await api.get_user(user_id, after_seq=api.last_seq)).version == changed.version

    # The old password no longer counts; the new one does.
    with pytest.raises(UnauthenticatedError):
        await api.change_password(user_id, PASSWORD, "third-secret-pass")
    again = await api.change_password(user_id, NEW_PASSWORD, "third-secret-pass")
    assert again.version > changed.version


async def test_list_users_pages_front_to_back(api: Client) -> None:
    org_id = await new_org(api)
    other_org = await new_org(api, "Other")
    await new_user(api, other_org, "elsewhere@example.com")
    made = set(
        await asyncio.gather(*(new_user(api, org_id, f"u{i}@example.com") for i in range(25)))
    )
    assert len(made) == 25

    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await api.list_users(org_id, limit=10, cursor=cursor, after_seq=api.last_seq)
        pages.append([u.user_id for u in page.items])
        cursor = page.next_cursor
        if cursor is None:
            break
        assert len(pages) < 5, "pagination does not end"
    assert [len(p) for p in pages] == [10, 10, 5]
    seen = [user_id for p in pages for user_id in p]
    assert seen == sorted(made)  # in key order, no duplicate, no gap, no stranger


# Read-your-writes ------------------------------------------------------------------------
async def test_every_query_reads_its_writes(api: Client, recorded: RecordingConnection) -> None:
    org_id = await new_org(api)
    user_id = await new_user(api, org_id, "ryw@example.com")
    for i in range(5):
        await api.rename_org(org_id, f"Name {i}")
        assert (await api.get_org(org_id, after_seq=api.last_seq)).name == f"Name {i}"
        await api.update_profile(user_id, name=f"User {i}")
        assert (await api.get_user(user_id, after_seq=api.last_seq)).name == f"User {i}"

    after = api.last_seq
    queries: list[tuple[str, dict[str, Any]]] = [
        (GetOrg.op.subject, {"org_id": org_id}),
        (ListOrgs.op.subject, {}),
        (GetUser.op.subject, {"user_id": user_id}),
        (GetUserByEmail.op.subject, {"email": "ryw@example.com"}),
        (EmailExists.op.subject, {"email": "ryw@example.com"}),
        (ListUsers.op.subject, {"org_id": org_id}),
    ]
    for subject, body in queries:
        reply = await raw(recorded, subject, {**body, "after_seq": after})
        assert reply.ok, reply
        assert reply.seq is not None
        assert reply.seq >= after


async def test_after_seq_of_an_event_the_projection_does_not_read(
    api: Client, recorded: RecordingConnection
) -> None:
    org_id = await new_org(api)
    user_id = await new_user(api, org_id, "a@example.com")
    user_seq = api.last_seq
    await api.rename_org(org_id, "Renamed")  # an org event: the users projection skips it
    org_seq = api.last_seq
    assert org_seq > user_seq

    started = time.monotonic()
    reply = await raw(recorded, GetUser.op.subject, {"user_id": user_id, "after_seq": org_seq})
    listed = await raw(recorded, ListUsers.op.subject, {"org_id": org_id, "after_seq": org_seq})
    elapsed = time.monotonic() - started
    assert reply.ok, reply
    assert listed.ok, listed
    assert reply.data["user_id"] == user_id
    assert reply.seq is not None
    assert reply.seq >= org_seq
    # Far below the 5 s bound the service would wait for a checkpoint that never comes.
    assert elapsed < 2.0

    # And the other way round: an org query after a user event.
    await api.set_roles(user_id, ["admin"])
    started = time.monotonic()
    org = await api.get_org(org_id, after_seq=api.last_seq)
    assert time.monotonic() - started < 2.0
    assert org.name == "Renamed"


# Optimistic concurrency ------------------------------------------------------------------
async def test_two_writers_with_one_expected_version_on_an_org(
    service: Service, connections: list[NATS], nc: NATS
) -> None:
    first, second = Client(connections[0], ADMIN.token), Client(connections[1], ADMIN.token)
    org_id = str((await first.create_org("Acme")).fields["org_id"])
    version = first.last_seq

    ok, failed = await outcomes(
        [
            first.rename_org(org_id, "By first", expected_version=version),
            second.rename_org(org_id, "By second", expected_version=version),
        ]
    )
    assert len(ok) == 1
    assert len(failed) == 1
    assert isinstance(failed[0], ConflictError), failed
    assert failed[0].details == {"expected_version": version, "current_version": ok[0].version}
    org = await first.get_org(org_id, after_seq=ok[0].seq)
    assert org.name == ok[0].fields["name"]
    assert (await stream_state(nc))[0] == ok[0].seq


async def test_two_writers_with_one_expected_version_on_a_user_email(
    service: Service, connections: list[NATS], nc: NATS
) -> None:
    """An email change is an atomic batch of three writes: the loser stores none of them."""
    first, second = Client(connections[0], ADMIN.token), Client(connections[1], ADMIN.token)
    org_id = str((await first.create_org("Acme")).fields["org_id"])
    written = await first.register_user(org_id, "Ann", "ann@example.com", PASSWORD)
    user_id = written.fields["user_id"]
    before = await stream_state(nc)

    ok, failed = await outcomes(
        [
            first.update_profile(user_id, email="x@example.com", expected_version=written.version),
            second.update_profile(user_id, email="y@example.com", expected_version=written.version),
        ]
    )
    assert len(ok) == 1
    assert len(failed) == 1
    assert isinstance(failed[0], ConflictError), failed
    assert failed[0].details["current_version"] == ok[0].version
    assert await stream_state(nc) == (before[0] + 3, before[1] + 3)

    winner = ok[0].fields["email"]
    loser = ({"x@example.com", "y@example.com"} - {winner}).pop()
    user = await first.get_user(user_id, after_seq=first.last_seq)
    assert user.email == winner
    # The loser's reservation was never stored; the old address was released.
    assert not await first.email_exists(loser)
    await first.register_user(org_id, "Loser", loser, PASSWORD)
    await first.register_user(org_id, "Old", "ann@example.com", PASSWORD)
    with pytest.raises(ConflictError):
        await first.register_user(org_id, "Copy", winner, PASSWORD)


async def test_set_roles_with_the_current_version_then_a_stale_one(api: Client, nc: NATS) -> None:
    org_id = await new_org(api)
    user_id = await new_user(api, org_id, "v@example.com")
    version = api.last_seq
    done = await api.set_roles(user_id, ["admin"], expected_version=version)
    before = await stream_state(nc)
    with pytest.raises(ConflictError) as caught:
        await api.set_roles(user_id, ["readonly"], expected_version=version)
    assert caught.value.details == {"expected_version": version, "current_version": done.version}
    assert await stream_state(nc) == before


# Retried commands ------------------------------------------------------------------------
async def assert_retry_is_stored_once(
    nc: NATS, send: Callable[[], Awaitable[envelope.Reply]], stored: int
) -> envelope.Reply:
    before = await stream_state(nc)
    first = await send()
    assert first.ok, first
    after_first = await stream_state(nc)
    assert after_first == (before[0] + stored, before[1] + stored)
    retry = await send()
    assert retry == first  # same ids, same version, same seq
    assert await stream_state(nc) == after_first
    return first


async def test_retried_org_create_is_stored_once(
    api: Client, recorded: RecordingConnection, nc: NATS
) -> None:
    body = {"name": "Acme", "command_id": "create-acme-1"}
    first = await assert_retry_is_stored_once(
        nc, lambda: raw(recorded, CreateOrg.op.subject, body), stored=1
    )
    assert (await cold_handle(nc, CreateOrg.op.subject, body)) == first
    listed = await api.list_orgs(after_seq=first.seq)
    assert [o.org_id for o in tenants(listed.items)] == [first.data["org_id"]]


async def test_retried_org_rename_is_stored_once(
    api: Client, recorded: RecordingConnection, nc: NATS
) -> None:
    created = await api.create_org("Acme")
    # A retry carries the expected_version it was first sent with, stale by then: it must
    # still get the first outcome, not a conflict.
    body = {
        "org_id": created.fields["org_id"],
        "name": "Renamed",
        "expected_version": created.version,
        "command_id": "rename-1",
    }
    first = await assert_retry_is_stored_once(
        nc, lambda: raw(recorded, RenameOrg.op.subject, body), stored=1
    )
    assert first.data["version"] > created.version
    assert (await cold_handle(nc, RenameOrg.op.subject, body)) == first


async def test_retried_user_register_is_stored_once(
    api: Client, recorded: RecordingConnection, nc: NATS
) -> None:
    org_id = await new_org(api)
    body = {
        "org_id": org_id,
        "name": "Ann",
        "email": "ann@example.com",
        "password": PASSWORD,
        "command_id": "register-ann-1",
    }
    first = await assert_retry_is_stored_once(
        nc, lambda: raw(recorded, RegisterUser.op.subject, body), stored=2
    )
    before = await stream_state(nc)
    assert (await cold_handle(nc, RegisterUser.op.subject, body)) == first
    assert await stream_state(nc) == before
    listed = await api.list_users(org_id, after_seq=first.seq)
    assert [u.user_id for u in listed.items] == [first.data["user_id"]]


async def test_concurrent_retries_of_one_registration_are_stored_once(
    service: Service, connections: list[NATS], nc: NATS
) -> None:
    org_id = str((await Client(nc, ADMIN.token).create_org("Acme")).fields["org_id"])
    body = {
        "org_id": org_id,
        "name": "Ann",
        "email": "ann@example.com",
        "password": PASSWORD,
        "command_id": "register-ann-twice",
    }
    before = await stream_state(nc)
    replies = await asyncio.gather(
        *(raw(connection, RegisterUser.op.subject, body) for connection in connections[:4])
    )
    assert all(r.ok for r in replies), replies
    assert all(r == replies[0] for r in replies)
    assert await stream_state(nc) == (before[0] + 2, before[1] + 2)


async def test_retried_user_delete_is_stored_once(
    api: Client, recorded: RecordingConnection, nc: NATS, service: Service
) -> None:
    org_id = await new_org(api)
    user_id = await new_user(api, org_id, "gone@example.com")
    body = {"user_id": user_id, "expected_version": api.last_seq, "command_id": "delete-1"}
    # Deleting frees the email in the same batch: two messages.
    first = await assert_retry_is_stored_once(
        nc, lambda: raw(recorded, DeleteUser.op.subject, body), stored=2
    )
    assert first.data == {"user_id": user_id, "event": "user.deleted", "version": first.seq}
    assert (await cold_handle(nc, DeleteUser.op.subject, body, service.store)) == first
    # A new command id is a new command: the user is gone.
    with pytest.raises(NotFoundError):
        await api.delete_user(user_id, command_id="delete-2")


async def test_retried_change_password_is_stored_once(
    api: Client, recorded: RecordingConnection, nc: NATS
) -> None:
    org_id = await new_org(api)
    user_id = await new_user(api, org_id, "pw@example.com")
    body = {
        "user_id": user_id,
        "old_password": PASSWORD,
        "new_password": NEW_PASSWORD,
        "command_id": "pw-1",
    }
    first = await assert_retry_is_stored_once(
        nc, lambda: raw(recorded, ChangePassword.op.subject, body), stored=1
    )
    # The old password is wrong by now, but the retry is recognised before it is checked.
    assert (await cold_handle(nc, ChangePassword.op.subject, body)) == first


# Unique emails ---------------------------------------------------------------------------
async def test_concurrent_registrations_of_one_email(
    service: Service, connections: list[NATS], nc: NATS
) -> None:
    org_id = str((await Client(nc, ADMIN.token).create_org("Acme")).fields["org_id"])
    before = await stream_state(nc)
    clients = [Client(connection, ADMIN.token) for connection in connections]
    ok, failed = await outcomes(
        [
            c.register_user(org_id, f"Racer {i}", "race@example.com", PASSWORD)
            for i, c in enumerate(clients)
        ]
    )
    assert len(ok) == 1, failed
    assert len(failed) == 9
    assert all(isinstance(f, ConflictError) for f in failed), failed
    assert await stream_state(nc) == (before[0] + 2, before[1] + 2)

    listed = await clients[0].list_users(org_id, after_seq=ok[0].seq)
    assert [u.user_id for u in listed.items] == [ok[0].fields["user_id"]]
    assert service.store is not None
    rows = await service.store.fetch_all(
        "SELECT user_id FROM users WHERE email = ?", "race@example.com"
    )
    assert rows == [{"user_id": ok[0].fields["user_id"]}]


async def test_an_email_is_unique_across_orgs_and_case(api: Client, nc: NATS) -> None:
    first_org, second_org = await new_org(api), await new_org(api, "Other")
    await new_user(api, first_org, "ann@example.com")
    before = await stream_state(nc)
    for org_id, email in [(first_org, "ann@example.com"), (second_org, "ANN@Example.com")]:
        with pytest.raises(ConflictError) as caught:
            await new_user(api, org_id, email)
        assert caught.value.details == {"email": "ann@example.com"}
    assert await stream_state(nc) == before


async def test_an_email_change_frees_the_old_address_and_holds_the_new(
    api: Client, nc: NATS
) -> None:
    org_id = await new_org(api)
    ann = await new_user(api, org_id, "ann@example.com")
    bob = await new_user(api, org_id, "bob@example.com")

    before = await stream_state(nc)
    changed = await api.update_profile(ann, email="Ann.New@example.com")
    assert changed.fields["email"] == "ann.new@example.com"
    assert await stream_state(nc) == (before[0] + 3, before[1] + 3)  # reserve, release, update
    assert (await api.get_user(ann, after_seq=api.last_seq)).email == "ann.new@example.com"
    assert (await api.get_user_by_email("ann.new@example.com")).user_id == ann
    assert not await api.email_exists("ann@example.com")

    # The new address is held...
    with pytest.raises(ConflictError):
        await new_user(api, org_id, "ann.new@example.com")
    # ...and nobody may move onto it, nor onto any other held address.
    before = await stream_state(nc)
    with pytest.raises(ConflictError):
        await api.update_profile(bob, email="ann.new@example.com")
    assert await stream_state(nc) == before
    assert (await api.get_user(bob)).email == "bob@example.com"

    # The old address is free for anyone.
    carl = await new_user(api, org_id, "ann@example.com")
    assert (await api.get_user_by_email("ann@example.com", after_seq=api.last_seq)).user_id == carl

    # And Ann can move back to an address that was hers once, when it is free again.
    await api.update_profile(ann, email="ann.third@example.com")
    await api.update_profile(ann, email="ann.new@example.com")
    assert (await api.get_user(ann, after_seq=api.last_seq)).email == "ann.new@example.com"


async def test_deleting_a_user_frees_the_email(api: Client) -> None:
    org_id = await new_org(api)
    first = await new_user(api, org_id, "reuse@example.com")
    await api.delete_user(first)
    second = await new_user(api, org_id, "reuse@example.com")
    assert second != first
    user = await api.get_user_by_email("reuse@example.com", after_seq=api.last_seq)
    assert user.user_id == second
    with pytest.raises(NotFoundError):
        await api.get_user(first)
    listed = await api.list_users(org_id, after_seq=api.last_seq)
    assert [u.user_id for u in listed.items] == [second]


async def test_deleting_an_org_frees_its_users_emails_for_exactly_one_owner(
    service: Service, connections: list[NATS], nc: NATS
) -> None:
    """An organization's deletion releases its users' addresses (no write per address: a
    reservation whose holder's organization is gone reads as free), and registrations that
    race the deletion, and each other, leave the address with exactly one live owner."""
    api = Client(nc, ADMIN.token)
    doomed, other = await new_org(api, "Doomed"), await new_org(api, "Other")
    ann = await new_user(api, doomed, "ann@example.com")
    clients = [Client(connection, ADMIN.token) for connection in connections]
    results = await asyncio.gather(
        api.delete_org(doomed),
        *(
            c.register_user(other, f"Ann {i}", "Ann@Example.com", PASSWORD)
            for i, c in enumerate(clients)
        ),
        return_exceptions=True,
    )
    assert isinstance(results[0], Written), results[0]
    won = [r for r in results[1:] if isinstance(r, Written)]
    assert len(won) <= 1, won
    assert all(isinstance(r, ConflictError) for r in results[1:] if not isinstance(r, Written))
    if not won:  # every registration came before the deletion: the address is free now
        won = [await api.register_user(other, "Ann again", "ann@example.com", PASSWORD)]
    owner = str(won[0].fields["user_id"])
    assert owner != ann
    # Held again: by the new owner, in the log and in the table.
    with pytest.raises(ConflictError):
        await new_user(api, other, "ann@example.com")
    # The winner may have written after the deletion, from another connection: wait for its
    # own sequence, not for this client's last write.
    found = await api.get_user_by_email("ann@example.com", after_seq=max(won[0].seq, api.last_seq))
    assert found.user_id == owner
    assert service.store is not None
    rows = await service.store.fetch_all(
        "SELECT user_id FROM users WHERE email = ?", "ann@example.com"
    )
    assert rows == [{"user_id": owner}]


@pytest.mark.parametrize("deleted", ["user", "org"])
async def test_a_deleted_users_email_is_free_even_to_a_process_that_cached_it_live(
    api: Client, nc: NATS, deleted: str
) -> None:
    """A process whose cache still holds the holder as live does not refuse on it: a refusal
    is decided on a fresh read of the holder."""
    org_id = await new_org(api)
    doomed = await new_org(api, "Doomed")
    bob = await new_user(api, doomed, "bob@example.com")
    parts = second_process(nc)
    dispatcher = Dispatcher(
        nc, command_handlers.command_router(parts), Authenticator(parts.runner.cache)
    )
    body = {"org_id": org_id, "name": "Bob", "email": "bob@example.com", "password": PASSWORD}

    async def register_elsewhere() -> envelope.Reply:
        payload = msgspec.json.encode(body)
        return envelope.decode(
            await dispatcher.handle(RegisterUser.op.subject, payload, ADMIN.headers())
        )

    refused = await register_elsewhere()  # the other process caches the live holder
    assert refused.error is not None, refused
    assert refused.error.code == "conflict", refused
    await (api.delete_user(bob) if deleted == "user" else api.delete_org(doomed))
    registered = await register_elsewhere()
    assert registered.ok, registered


async def test_register_into_a_missing_or_deleted_org(api: Client, nc: NATS) -> None:
    deleted = await new_org(api, "Doomed")
    await api.delete_org(deleted)
    before = await stream_state(nc)
    for org_id in ("no-such-org", deleted):
        with pytest.raises(NotFoundError) as caught:
            await new_user(api, org_id, "lost@example.com")
        assert caught.value.details == {"org_id": org_id}
    assert await stream_state(nc) == before
    # The failed attempts reserved nothing.
    live = await new_org(api, "Alive")
    await new_user(api, live, "lost@example.com")


# Secrets ---------------------------------------------------------------------------------
async def test_no_password_leaves_the_service(
    api: Client, recorded: RecordingConnection, nc: NATS
) -> None:
    org_id = await new_org(api)
    user_id = await new_user(api, org_id, "secret@example.com")
    await api.change_password(user_id, PASSWORD, NEW_PASSWORD)
    with pytest.raises(UnauthenticatedError):
        await api.change_password(user_id, PASSWORD, "whatever-else-1")
    await api.get_user(user_id, after_seq=api.last_seq)
    await api.get_user_by_email("secret@example.com")
    await api.list_users(org_id)
    await api.update_profile(user_id, email="secret2@example.com")
    await api.set_roles(user_id, ["admin"])
    await api.status()
    await api.delete_user(user_id)
    assert_no_secret_in(recorded.exchanges)

    # The log holds hashes, never a password as typed.
    last_seq, _ = await stream_state(nc)
    for seq in range(1, last_seq + 1):
        reply = await nc.request(
            f"$JS.API.DIRECT.GET.{subjects.STREAM_NAME}", msgspec.json.encode({"seq": seq})
        )
        assert PASSWORD.encode() not in reply.data
        assert NEW_PASSWORD.encode() not in reply.data


# Client-chosen ids, org deletion, cursors ---------------------------------------------------
async def test_a_client_chosen_org_id_makes_create_idempotent_beyond_the_dedup_window(
    api: Client, nc: NATS
) -> None:
    org_id = "01a2ffff-0000-7000-8000-000000000001"
    first = await api.create_org("Acme", org_id=org_id, command_id="create-acme")
    assert first.fields["org_id"] == org_id
    before = await stream_state(nc)
    # The same command again is answered with the first outcome from the org's own history,
    # whatever the server's duplicate window says.
    again = await api.create_org("Acme", org_id=org_id, command_id="create-acme")
    assert again == first
    assert await stream_state(nc) == before
    # Another command that wants the same id is refused.
    with pytest.raises(ConflictError, match="already exists"):
        await api.create_org("Impostor", org_id=org_id)
    assert await stream_state(nc) == before


async def test_a_client_chosen_user_id_taken_in_any_org_is_refused(api: Client, nc: NATS) -> None:
    one = (await api.create_org("One")).fields["org_id"]
    two = (await api.create_org("Two")).fields["org_id"]
    user_id = "01a2ffff-0000-7000-8000-0000000000aa"
    made = await api.register_user(one, "Ann", "ann@example.com", PASSWORD, user_id=user_id)
    assert made.fields["user_id"] == user_id
    before = await stream_state(nc)
    with pytest.raises(ConflictError, match="already exists"):
        await api.register_user(two, "Bob", "bob@example.com", PASSWORD, user_id=user_id)
    assert await stream_state(nc) == before
    assert not await api.email_exists("bob@example.com", after_seq=api.last_seq)


async def test_deleting_an_org_removes_its_users_and_refuses_their_commands(api: Client) -> None:
    org_id = (await api.create_org("Doomed")).fields["org_id"]
    user_id = (await api.register_user(org_id, "Ann", "ann@example.com", PASSWORD)).fields[
        "user_id"
    ]
    await api.delete_org(org_id)
    assert (await api.list_users(org_id, after_seq=api.last_seq)).items == []
    with pytest.raises(NotFoundError):
        await api.get_user(user_id, after_seq=api.last_seq)
    with pytest.raises(NotFoundError, match="organization"):
        await api.set_roles(user_id, ["admin"])


@pytest.mark.parametrize("cursor", ["!!!", "abc", "a2V5", "eyJrIjoiIn0"])
async def test_a_cursor_this_service_did_not_return_is_invalid(api: Client, cursor: str) -> None:
    org_id = (await api.create_org("Acme")).fields["org_id"]
    with pytest.raises(InvalidError, match="cursor"):
        await api.list_users(org_id, cursor=cursor)
    with pytest.raises(InvalidError, match="cursor"):
        await api.list_orgs(cursor=cursor)


CHOSEN_ID = "01a2ffff-0000-7000-8000-0000000000bb"
# A create of each aggregate whose id a client may choose, in organization ``org``.
CHOSEN_ID_CREATES: dict[str, Callable[[str], dict[str, Any]]] = {
    "org": lambda org: {"name": "Chosen", "org_id": CHOSEN_ID},
    "user": lambda org: {
        "org_id": org,
        "name": "Ann",
        "email": "ann.retry@example.com",
        "password": PASSWORD,
        "user_id": CHOSEN_ID,
    },
    "agent": lambda org: {"org_id": org, "name": "Helper", "agent_id": CHOSEN_ID},
    "tool": lambda org: {"org_id": org, "name": "get_weather", "tool_id": CHOSEN_ID},
    "block": lambda org: {
        "org_id": org,
        "label": "persona",
        "user_id": "retrying-user",
        "block_id": CHOSEN_ID,
    },
}


def creates_with_a_chosen_id() -> dict[str, Operation]:
    """From the registry: every command with an optional ``<aggregate>_id`` of its own."""
    found = {}
    for operation in operations():
        aggregate = operation.name.split(".")[0]
        fields = {f.name: f for f in msgspec.structs.fields(operation.request)}
        chosen = fields.get(f"{aggregate}_id")
        if operation.kind == "command" and chosen is not None and not chosen.required:
            found[aggregate] = operation
    return found


def test_the_stale_cache_case_covers_every_create_with_a_chosen_id() -> None:
    assert set(creates_with_a_chosen_id()) == set(CHOSEN_ID_CREATES)


@pytest.mark.parametrize("aggregate", sorted(CHOSEN_ID_CREATES))
async def test_a_retried_create_is_answered_even_by_a_process_with_a_stale_cache(
    api: Client, nc: NATS, aggregate: str
) -> None:
    """A process that once read the new aggregate's subject before it existed holds that
    empty state in its cache; a retry of the create reaching it is still the same command,
    answered with its first outcome, not refused as a taken id."""
    operation = creates_with_a_chosen_id()[aggregate]
    org_id = CHOSEN_ID if aggregate == "org" else (await api.create_org("Retry")).fields["org_id"]
    log = EventLog(nc, keys=deployment_keys(nc))
    runner = command_handlers.CommandRunner(log, AggregateCache(log))
    stale = await runner.cache.load(subjects.event(org_id, aggregate, CHOSEN_ID), lambda s, e: e)
    assert stale.state is None
    body = {**CHOSEN_ID_CREATES[aggregate](org_id), "command_id": f"create-{aggregate}-once"}
    first = await raw(api.nc, operation.subject, body)
    assert first.ok, first
    before = await stream_state(nc)
    router, _ = routers(second_process(nc, runner), frozenset({"commands"}))
    dispatcher = Dispatcher(nc, router, Authenticator(runner.cache))
    payload = msgspec.json.encode(body)
    retried = envelope.decode(await dispatcher.handle(operation.subject, payload, ADMIN.headers()))
    assert retried.ok, retried
    assert retried.seq == first.seq
    assert await stream_state(nc) == before


async def test_an_email_with_surrounding_spaces_is_trimmed_everywhere(api: Client) -> None:
    # protocol.md: "Emails are trimmed and lower-cased before they are stored or compared".
    org_id = await new_org(api)
    written = await api.register_user(org_id, "Bob", "  Bob@Example.com \n", PASSWORD)
    assert written.fields["email"] == "bob@example.com"
    user = await api.get_user_by_email(" BOB@example.com ")
    assert user.user_id == written.fields["user_id"]
    assert (await api.login("\tbob@example.com ", PASSWORD)).fields["user_id"] == user.user_id
    with pytest.raises(ConflictError) as caught:
        await new_user(api, org_id, " bob@EXAMPLE.com")
    assert caught.value.details == {"email": "bob@example.com"}
    # Spaces inside the address are still refused.
    with pytest.raises(InvalidError) as refused:
        await new_user(api, org_id, "bob smith@example.com")
    assert refused.value.details["reason"] == "pattern"


async def test_every_list_answers_another_orgs_id_as_a_missing_one(api: Client) -> None:
    # An org admin of one organization lists in another, and in one that does not exist:
    # every list answers both alike, as protocol.md says ("with details.org_id").
    mine, theirs = await new_org(api), await new_org(api, "Other")
    await api.register_user(mine, "Ann", "ann@example.com", PASSWORD, roles=["admin"])
    token = str((await api.login("ann@example.com", PASSWORD)).fields["token"])
    ann = Client(api.nc, token)
    lists = ["user.list", "agent.list", "tool.list", "memory.list"]
    answers: dict[tuple[str, str], tuple[str, str, dict[str, Any]]] = {}
    for name in lists:
        for org_id in (theirs, "no-such-org"):
            with pytest.raises(NotFoundError) as caught:
                await ann.request(f"agentmem.q.{name}", {"org_id": org_id})
            answers[name, org_id] = (
                caught.value.code,
                str(caught.value).replace(org_id, "<org_id>"),
                {k: str(v).replace(org_id, "<org_id>") for k, v in caught.value.details.items()},
            )
    expected = ("not_found", "organization <org_id> does not exist", {"org_id": "<org_id>"})
    assert answers == {key: expected for key in answers}
