"""Authentication and authorization over NATS, against a real service: sessions, keys,
throttling, secrets, audit, and the scoping rules around the role matrix.

The role matrix itself (every subject against every role) is tests/test_role_matrix.py.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import pytest_asyncio
import structlog
from nats.aio.client import Client as NATS

from agentmem import Client, envelope, subjects
from agentmem.commands import RenameOrg
from agentmem.errors import ForbiddenError, NotFoundError, UnauthenticatedError
from agentmem.queries import ListApiKeys
from agentmem.service import Service
from tests.conftest import admin_key
from tests.support import NatsServer

pytestmark = pytest.mark.asyncio(loop_scope="module")
STORES = ("sqlite", "postgres")
PASSWORD = "correct horse battery"
_emails = itertools.count()


def email() -> str:
    return f"person{next(_emails)}@example.com"


# One service for the module (module_service in conftest.py) ----------------------------------
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def nc(module_service: Service, module_server: NatsServer) -> AsyncIterator[NATS]:
    connection = await nats.connect(module_server.url)
    yield connection
    await connection.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def root(nc: NATS, module_data_dir: Path) -> Client:
    return Client(nc, admin_key(module_data_dir))


@dataclass
class Tenant:
    org_id: str
    keys: dict[str, str]  # role -> API key of a user with that role


@dataclass
class World:
    root: Client
    tenants: dict[str, Tenant]  # "own", "other"

    def as_role(self, role: str) -> Client:
        if role == "service_admin":
            return self.root
        if role == "anonymous":
            return self.root.with_token(None)
        return self.root.with_token(self.tenants["own"].keys[role])


async def new_user(root: Client, org_id: str, roles: list[Any]) -> tuple[str, str]:
    """(user id, API key) of a fresh user, made by the service administrator."""
    user = await root.register_user(org_id, "Someone", email(), PASSWORD, roles=roles)
    key = await root.create_api_key("test", user_id=user.fields["user_id"])
    return user.fields["user_id"], key.fields["token"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(root: Client) -> World:
    tenants = {}
    for name in ("own", "other"):
        org_id = (await root.create_org(f"{name} org")).fields["org_id"]
        keys = {}
        for role in ("admin", "member", "readonly"):
            _, keys[role] = await new_user(root, org_id, [role])
        tenants[name] = Tenant(org_id, keys)
    return World(root, tenants)


# Helpers --------------------------------------------------------------------------------------
async def log_end(nc: NATS) -> int:
    return int((await nc.jetstream().stream_info(subjects.STREAM_NAME)).state.last_seq)


async def test_org_list_is_scoped_by_the_principal_not_by_a_filter(world: World) -> None:
    member = world.as_role("member")
    listed = await member.list_orgs(after_seq=world.root.last_seq)
    assert [o.org_id for o in listed.items] == [world.tenants["own"].org_id]
    everything = await world.root.list_orgs(after_seq=world.root.last_seq, limit=500)
    assert {t.org_id for t in world.tenants.values()} <= {o.org_id for o in everything.items}
    # users.list defaults to the caller's org; naming another org does not widen it.
    mine = await member.list_users(after_seq=world.root.last_seq)
    assert {u.org_id for u in mine.items} == {world.tenants["own"].org_id}
    with pytest.raises(NotFoundError):
        await member.list_users(world.tenants["other"].org_id)


# Sessions, keys, throttling -----------------------------------------------------------------
async def test_login_session_works_and_expires(world: World) -> None:
    org = world.tenants["own"].org_id
    address = email()
    await world.root.register_user(org, "Sam", address, PASSWORD)
    session = await world.root.login(address, PASSWORD, ttl_seconds=1)
    token = session.fields["token"]
    assert token.startswith("ams_")
    as_sam = world.root.with_token(token)
    assert (await as_sam.get_org(org)).org_id == org
    await asyncio.sleep(1.2)
    with pytest.raises(UnauthenticatedError, match="expired"):
        await as_sam.get_org(org)


async def test_logout_ends_the_session(world: World) -> None:
    org = world.tenants["own"].org_id
    address = email()
    await world.root.register_user(org, "Lou", address, PASSWORD)
    as_lou = world.root.with_token((await world.root.login(address, PASSWORD)).fields["token"])
    await as_lou.logout()
    with pytest.raises(UnauthenticatedError):
        await as_lou.get_org(org)


async def test_wrong_password_and_unknown_email_get_the_same_answer(world: World) -> None:
    org = world.tenants["own"].org_id
    address = email()
    await world.root.register_user(org, "Kim", address, PASSWORD)
    with pytest.raises(UnauthenticatedError) as wrong:
        await world.root.login(address, "not the password")
    with pytest.raises(UnauthenticatedError) as unknown:
        await world.root.login(email(), "not the password")
    assert wrong.value.message == unknown.value.message == "wrong email or password"


async def test_failed_logins_are_throttled_with_a_retry_time(world: World) -> None:
    org = world.tenants["own"].org_id
    address = email()
    await world.root.register_user(org, "Pat", address, PASSWORD)
    for _ in range(5):
        with pytest.raises(UnauthenticatedError, match="wrong email or password"):
            await world.root.login(address, "guess")
    with pytest.raises(UnauthenticatedError, match="too many failed logins") as throttled:
        await world.root.login(address, PASSWORD)  # even the right password, for now
    assert 0 < throttled.value.details["retry_after_s"] <= 301


async def test_a_revoked_key_is_refused_by_the_very_next_request(world: World) -> None:
    org = world.tenants["own"].org_id
    user_id, key = await new_user(world.root, org, ["member"])
    as_user = world.root.with_token(key)
    await as_user.get_org(org)  # the key works, and every cache has seen it
    keys = await world.root.list_api_keys(user_id=user_id, after_seq=world.root.last_seq)
    assert [k["revoked_at"] for k in keys] == [None]
    assert all("token" not in k and "digest" not in k for k in keys)
    await world.root.revoke_api_key(keys[0]["key_id"], user_id=user_id)
    with pytest.raises(UnauthenticatedError):
        await as_user.get_org(org)


async def test_api_keys_are_listed_in_pages_revoked_ones_too(world: World) -> None:
    """Revoked keys have no bound: the list of a user who made and revoked thousands was
    one reply over what NATS carries, and never arrived. It comes in pages now."""
    org = world.tenants["own"].org_id
    user_id, _ = await new_user(world.root, org, ["member"])
    for n in range(4):
        made = await world.root.create_api_key(f"key {n}", user_id=user_id)
        if n % 2:
            await world.root.revoke_api_key(str(made.fields["key_id"]), user_id=user_id)
    every = await world.root.list_api_keys(user_id=user_id, after_seq=world.root.last_seq)
    assert len(every) == 5  # the key new_user made, and four
    assert [k["revoked_at"] is None for k in every].count(False) == 2
    pages, cursor = [], None
    while True:
        body = {"user_id": user_id, "limit": 2, "cursor": cursor}
        data = (await world.root.request(ListApiKeys.op.subject, body)).data
        pages.append([k["key_id"] for k in data["items"]])
        cursor = data["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [k for p in pages for k in p] == sorted(k["key_id"] for k in every)


async def test_a_revoked_key_is_refused_at_once_by_another_service_process(
    world: World, nc: NATS, module_server: NatsServer, tmp_path: Path
) -> None:
    """A second process (its own caches) that accepted a key refuses it right after the
    first process acknowledged the revocation."""
    from agentmem.consumers.aggregates import AggregateCache
    from agentmem.consumers.auth import Authenticator
    from agentmem.consumers.commands import CommandRunner, command_router
    from agentmem.consumers.router import Dispatcher
    from agentmem.eventlog import EventLog
    from tests.realparts import deployment_keys, second_process

    org = world.tenants["own"].org_id
    user_id, key = await new_user(world.root, org, ["admin"])
    log = EventLog(nc, keys=deployment_keys(nc))
    cache = AggregateCache(log)
    second = Dispatcher(
        nc,
        command_router(second_process(nc, CommandRunner(log, cache))),
        Authenticator(cache),
    )
    headers = {"Authorization": f"Bearer {key}"}
    body = msgspec.json.encode({"org_id": org, "name": "Renamed by the second process"})
    accepted = envelope.decode(await second.handle(RenameOrg.op.subject, body, headers))
    assert accepted.ok, accepted
    key_id = (await world.root.list_api_keys(user_id=user_id, after_seq=world.root.last_seq))[0][
        "key_id"
    ]
    await world.root.revoke_api_key(key_id, user_id=user_id)
    refused = envelope.decode(await second.handle(RenameOrg.op.subject, body, headers))
    assert not refused.ok
    assert refused.error is not None
    assert refused.error.code == "unauthenticated"


async def test_role_changes_and_deletion_take_effect_at_once(world: World) -> None:
    org = world.tenants["own"].org_id
    user_id, key = await new_user(world.root, org, ["admin"])
    as_user = world.root.with_token(key)
    await as_user.rename_org(org, "Renamed by an admin")
    await world.root.set_roles(user_id, ["readonly"])
    with pytest.raises(ForbiddenError):
        await as_user.rename_org(org, "Not any more")
    await world.root.delete_user(user_id)
    with pytest.raises(UnauthenticatedError):
        await as_user.get_org(org)


async def test_a_member_manages_its_own_keys_and_password(world: World) -> None:
    org = world.tenants["own"].org_id
    address = email()
    user_id = (await world.root.register_user(org, "Max", address, PASSWORD)).fields["user_id"]
    session = (await world.root.login(address, PASSWORD)).fields["token"]
    as_max = world.root.with_token(session)
    created = await as_max.create_api_key("laptop")
    own_key = created.fields["token"]
    assert own_key.startswith("amk_")
    assert created.fields["user_id"] == user_id
    await world.root.with_token(own_key).get_org(org)
    await as_max.change_password(user_id, PASSWORD, "another good password")
    await as_max.revoke_api_key(created.fields["key_id"])
    with pytest.raises(UnauthenticatedError):
        await world.root.with_token(own_key).get_org(org)


# Secrets never leak -----------------------------------------------------------------------------
async def test_no_secret_in_logs_replies_or_events(world: World, nc: NATS) -> None:
    org = world.tenants["own"].org_id
    address = email()
    secrets: list[str] = [PASSWORD]
    replies: list[Any] = []
    with structlog.testing.capture_logs() as logs:
        user = await world.root.register_user(org, "Val", address, PASSWORD)
        replies.append(user)
        session = await world.root.login(address, PASSWORD)
        secrets.append(session.fields["token"])
        as_val = world.root.with_token(session.fields["token"])
        key = await as_val.create_api_key("ci")
        secrets.append(key.fields["token"])
        replies.append(await as_val.list_api_keys(after_seq=world.root.last_seq))
        replies.append(await world.root.history("user", user.fields["user_id"]))
        with pytest.raises(UnauthenticatedError):
            await world.root.login(address, "a wrong password")
    texts = [repr(entry) for entry in logs] + [repr(reply) for reply in replies]
    for secret in secrets:
        # The secret part of a token is everything after its last underscore.
        needle = secret.rsplit("_", 1)[-1]
        assert not any(needle in text for text in texts), "a secret leaked"
    # The log itself holds digests only.
    js = nc.jetstream()
    info = await js.stream_info(subjects.STREAM_NAME)
    for seq in range(max(1, info.state.last_seq - 10), info.state.last_seq + 1):
        data = (await js.get_msg(subjects.STREAM_NAME, seq)).data or b""
        for secret in secrets:
            assert secret.rsplit("_", 1)[-1].encode() not in data
    assert "scrypt$" not in " ".join(repr(r) for r in replies)


# Audit -----------------------------------------------------------------------------------------
async def test_history_says_who_did_what_and_when(world: World) -> None:
    org = world.tenants["own"].org_id
    user_id, key = await new_user(world.root, org, ["admin"])
    as_admin = world.root.with_token(key)
    target = (await world.root.register_user(org, "Tia", email(), PASSWORD)).fields["user_id"]
    await as_admin.set_roles(target, ["readonly"])
    history = await as_admin.history("user", target)
    kinds = [item["commit_type"] for item in history.items]
    assert kinds == ["user.register", "user.set_roles"]
    registered, roles_set = history.items
    assert registered["principal"].startswith("user:")
    assert user_id not in registered["principal"]
    assert roles_set["principal"].startswith(f"user:{user_id} via key:")
    assert roles_set["time"] >= registered["time"] > 0
    assert roles_set["events"][0]["roles"] == ["readonly"]
    assert "password_hash" not in repr(history)
    # Paging through it one entry at a time gives the same entries.
    first = await as_admin.history("user", target, limit=1)
    assert first.next_cursor is not None
    second = await as_admin.history("user", target, limit=1, cursor=first.next_cursor)
    assert [*first.items, *second.items] == history.items
    assert second.next_cursor is None


async def test_replay_reproduces_users_keys_and_roles(
    world: World, module_service: Service, nc: NATS, tmp_path: Path
) -> None:
    """Credentials live in the log: a replay rebuilds the same users, roles and keys, and
    authentication (which reads the log) does not depend on any table."""
    from agentmem.projections import BY_NAME
    from agentmem.projections.replay import replay
    from agentmem.store import open_store
    from tests.realparts import deployment_keys

    users = BY_NAME["users"]
    await world.root.list_users(after_seq=await log_end(nc))  # the live table caught up
    assert module_service.store is not None
    live = {t.name: await module_service.store.dump(t) for t in users.tables}
    rebuilt_store = await open_store(str(tmp_path / "rebuilt.db"))
    try:
        await replay(nc, rebuilt_store, users, keys=deployment_keys(nc))
        rebuilt = {t.name: await rebuilt_store.dump(t) for t in users.tables}
    finally:
        await rebuilt_store.close()
    assert rebuilt == live
    assert live["api_keys"], "the world made keys"


async def test_an_org_admin_in_the_service_org_cannot_take_over_the_service_admin(
    world: World, nc: NATS
) -> None:
    from agentmem.bootstrap import find_admin
    from agentmem.eventlog import EventLog
    from tests.realparts import deployment_keys

    admin = await find_admin(EventLog(nc, keys=deployment_keys(nc)))
    assert admin is not None
    _, key = await new_user(world.root, admin.org_id, ["admin"])
    insider = world.root.with_token(key)
    before = await log_end(nc)
    for attempt in (
        insider.create_api_key("mine now", user_id=admin.user_id),
        insider.set_roles(admin.user_id, ["readonly"]),
        insider.delete_user(admin.user_id),
        insider.update_profile(admin.user_id, name="Owned"),
        insider.delete_org(admin.org_id),
        insider.list_api_keys(user_id=admin.user_id, after_seq=world.root.last_seq),
        insider.revoke_api_key("any-key", user_id=admin.user_id),
        insider.forget_user(admin.user_id),
    ):
        with pytest.raises(ForbiddenError):
            await attempt
    assert await log_end(nc) == before
    with pytest.raises(ForbiddenError, match="own organization"):
        await world.root.delete_org(admin.org_id)


async def test_the_service_admin_cannot_delete_or_forget_itself(world: World, nc: NATS) -> None:
    """Deleting or forgetting itself left a deployment that nobody could administer
    (``agentmem admin create-key`` needs the user); another service administrator's request
    is refused the same way."""
    from agentmem.bootstrap import find_admin
    from agentmem.eventlog import EventLog
    from tests.realparts import deployment_keys

    admin = await find_admin(EventLog(nc, keys=deployment_keys(nc)))
    assert admin is not None
    before = await log_end(nc)
    for attempt in (world.root.delete_user(admin.user_id), world.root.forget_user(admin.user_id)):
        with pytest.raises(ForbiddenError, match="cannot be deleted or forgotten") as refused:
            await attempt
        assert refused.value.details == {"user_id": admin.user_id}
    assert await log_end(nc) == before
    assert (await world.root.get_user(admin.user_id)).user_id == admin.user_id


async def test_client_chosen_ids_may_not_carry_the_credential_separator(world: World) -> None:
    from agentmem.errors import InvalidError

    with pytest.raises(InvalidError, match="org_id"):
        await world.root.create_org("Acme EU", org_id="acme_eu")
    with pytest.raises(InvalidError, match="org_id"):
        await world.root.create_org("Sneaky", org_id="_global")
    org = (await world.root.create_org("Acme EU", org_id="acme-eu")).fields["org_id"]
    user_id = "ann-at-acme-eu"
    address = email()
    await world.root.register_user(org, "Ann", address, PASSWORD, user_id=user_id)
    token = (await world.root.login(address, PASSWORD)).fields["token"]
    assert (await world.root.with_token(token).get_org(org)).org_id == "acme-eu"


async def test_login_into_a_deleted_org_is_refused_and_writes_nothing(
    world: World, nc: NATS
) -> None:
    org = (await world.root.create_org("Short lived")).fields["org_id"]
    address = email()
    await world.root.register_user(org, "Gus", address, PASSWORD)
    await world.root.delete_org(org)
    before = await log_end(nc)
    with pytest.raises(UnauthenticatedError, match="wrong email or password"):
        await world.root.login(address, PASSWORD)
    assert await log_end(nc) == before
