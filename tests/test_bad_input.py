"""Bad input on every request subject: an ``invalid`` reply a person can act on, nothing
appended to the log, and a service that goes on answering. Bad input is sent with valid
credentials (the service administrator's), so that it is the input that gets refused.

And bad credentials on every subject that needs them (all but login and health): no
credentials, a malformed token, an unknown one, a wrong secret: ``unauthenticated`` whatever
the body, nothing appended, no secret echoed, a service that goes on answering.

One nats-server and one service serve the whole module (each case is a single request; a
fresh server per case would cost more than all the cases together). Every case checks the
log's last sequence itself and that the service still answers afterwards.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from agentmem import Client, envelope, ids, subjects
from agentmem.auth import tokens
from agentmem.commands import (
    AppendMessage,
    AppendMessages,
    ArchiveAgent,
    ChangePassword,
    CreateAgent,
    CreateApiKey,
    CreateOrg,
    DeleteAgent,
    DeleteConversation,
    DeleteOrg,
    DeleteTool,
    DeleteUser,
    Login,
    Logout,
    PatchAgentState,
    RedactMessage,
    RegisterTool,
    RegisterUser,
    RenameOrg,
    RevokeApiKey,
    SetAgentState,
    SetRoles,
    UnarchiveAgent,
    UpdateAgent,
    UpdateProfile,
    UpdateTool,
)
from agentmem.config import Settings
from agentmem.domain.agents import MAX_STATE_BYTES
from agentmem.queries import (
    EmailExists,
    GetAgent,
    GetAgentState,
    GetHistory,
    GetOrg,
    GetTool,
    GetUser,
    GetUserByEmail,
    LastMessages,
    ListAgents,
    ListApiKeys,
    ListMessages,
    ListOrgs,
    ListTools,
    ListUsers,
    SearchMessages,
    Status,
)
from agentmem.service import Service
from consumers.queries import encode_cursor
from consumers.router import MAX_REQUEST_BYTES
from tests.conftest import admin_key
from tests.realparts import bearer
from tests.support import TEST_PASSWORD_COST, NatsServer

pytestmark = pytest.mark.asyncio(loop_scope="module")
STORES = ("sqlite", "postgres")

NATS_MAX_PAYLOAD = 1024 * 1024

REQUEST_TYPES: dict[str, type[msgspec.Struct]] = {
    subjects.ORG_CREATE: CreateOrg,
    subjects.ORG_RENAME: RenameOrg,
    subjects.ORG_DELETE: DeleteOrg,
    subjects.USER_REGISTER: RegisterUser,
    subjects.USER_UPDATE_PROFILE: UpdateProfile,
    subjects.USER_CHANGE_PASSWORD: ChangePassword,
    subjects.USER_SET_ROLES: SetRoles,
    subjects.USER_DELETE: DeleteUser,
    subjects.AUTH_LOGIN: Login,
    subjects.AUTH_LOGOUT: Logout,
    subjects.APIKEY_CREATE: CreateApiKey,
    subjects.APIKEY_REVOKE: RevokeApiKey,
    subjects.ORG_GET: GetOrg,
    subjects.ORG_LIST: ListOrgs,
    subjects.USER_GET: GetUser,
    subjects.USER_GET_BY_EMAIL: GetUserByEmail,
    subjects.USER_EMAIL_EXISTS: EmailExists,
    subjects.USER_LIST: ListUsers,
    subjects.APIKEY_LIST: ListApiKeys,
    subjects.HISTORY_GET: GetHistory,
    subjects.SYS_STATUS: Status,
    subjects.SYS_HEALTH: Status,
    subjects.AGENT_CREATE: CreateAgent,
    subjects.AGENT_UPDATE: UpdateAgent,
    subjects.AGENT_ARCHIVE: ArchiveAgent,
    subjects.AGENT_UNARCHIVE: UnarchiveAgent,
    subjects.AGENT_DELETE: DeleteAgent,
    subjects.AGENT_SET_STATE: SetAgentState,
    subjects.AGENT_PATCH_STATE: PatchAgentState,
    subjects.AGENT_GET: GetAgent,
    subjects.AGENT_LIST: ListAgents,
    subjects.AGENT_GET_STATE: GetAgentState,
    subjects.TOOL_REGISTER: RegisterTool,
    subjects.TOOL_UPDATE: UpdateTool,
    subjects.TOOL_DELETE: DeleteTool,
    subjects.TOOL_GET: GetTool,
    subjects.TOOL_LIST: ListTools,
    subjects.MESSAGE_APPEND: AppendMessage,
    subjects.MESSAGE_APPEND_BATCH: AppendMessages,
    subjects.MESSAGE_REDACT: RedactMessage,
    subjects.CONVERSATION_DELETE: DeleteConversation,
    subjects.MESSAGE_LIST: ListMessages,
    subjects.MESSAGE_LAST: LastMessages,
    subjects.MESSAGE_SEARCH: SearchMessages,
}
# Answered without credentials; every other subject needs them.
PUBLIC = {subjects.AUTH_LOGIN, subjects.SYS_HEALTH}

# A valid body per subject (the ids need not exist: validity is about shape).
VALID: dict[str, dict[str, Any]] = {
    subjects.ORG_CREATE: {"name": "Acme"},
    subjects.ORG_RENAME: {"org_id": "o1", "name": "Acme 2"},
    subjects.ORG_DELETE: {"org_id": "o1"},
    subjects.USER_REGISTER: {
        "org_id": "o1",
        "name": "Ann",
        "email": "ann@example.com",
        "password": "long-enough",
    },
    subjects.USER_UPDATE_PROFILE: {"user_id": "u1", "name": "Ann"},
    subjects.USER_CHANGE_PASSWORD: {
        "user_id": "u1",
        "old_password": "old-password",
        "new_password": "new-password",
    },
    subjects.USER_SET_ROLES: {"user_id": "u1", "roles": ["admin"]},
    subjects.USER_DELETE: {"user_id": "u1"},
    subjects.AUTH_LOGIN: {"email": "ann@example.com", "password": "long-enough"},
    subjects.AUTH_LOGOUT: {},
    subjects.APIKEY_CREATE: {"name": "laptop"},
    subjects.APIKEY_REVOKE: {"key_id": "k1"},
    subjects.ORG_GET: {"org_id": "o1"},
    subjects.ORG_LIST: {"limit": 5},
    subjects.USER_GET: {"user_id": "u1"},
    subjects.USER_GET_BY_EMAIL: {"email": "ann@example.com"},
    subjects.USER_EMAIL_EXISTS: {"email": "ann@example.com"},
    subjects.USER_LIST: {"org_id": "o1"},
    subjects.APIKEY_LIST: {"user_id": "u1"},
    subjects.HISTORY_GET: {"aggregate": "org", "id": "o1"},
    subjects.SYS_STATUS: {},
    subjects.SYS_HEALTH: {},
    subjects.AGENT_CREATE: {"name": "Helper"},
    subjects.AGENT_UPDATE: {"agent_id": "a1", "name": "Helper 2"},
    subjects.AGENT_ARCHIVE: {"agent_id": "a1"},
    subjects.AGENT_UNARCHIVE: {"agent_id": "a1"},
    subjects.AGENT_DELETE: {"agent_id": "a1"},
    subjects.AGENT_SET_STATE: {"agent_id": "a1", "state": {"turn": 1}},
    subjects.AGENT_PATCH_STATE: {"agent_id": "a1", "patch": {"turn": None}},
    subjects.AGENT_GET: {"agent_id": "a1"},
    subjects.AGENT_LIST: {"tag": "support"},
    subjects.AGENT_GET_STATE: {"agent_id": "a1"},
    subjects.TOOL_REGISTER: {"name": "get_weather"},
    subjects.TOOL_UPDATE: {"tool_id": "t1", "description": "Weather"},
    subjects.TOOL_DELETE: {"tool_id": "t1"},
    subjects.TOOL_GET: {"tool_id": "t1"},
    subjects.TOOL_LIST: {"tags_any": ["web"]},
    subjects.MESSAGE_APPEND: {
        "session_id": "s1",
        "agent_id": "a1",
        "message": {"role": "user", "content": "hi"},
    },
    subjects.MESSAGE_APPEND_BATCH: {
        "session_id": "s1",
        "agent_id": "a1",
        "messages": [{"role": "user", "content": "hi"}],
    },
    subjects.MESSAGE_REDACT: {"session_id": "s1", "message_id": "m1"},
    subjects.CONVERSATION_DELETE: {"session_id": "s1"},
    subjects.MESSAGE_LIST: {"session_id": "s1"},
    subjects.MESSAGE_LAST: {"session_id": "s1", "n": 5},
    subjects.MESSAGE_SEARCH: {"text": "hello", "agent_id": "a1"},
}

# One field per subject given a value of the wrong JSON type.
WRONG_TYPES: dict[str, tuple[str, Any]] = {
    subjects.ORG_CREATE: ("name", 5),
    subjects.ORG_RENAME: ("org_id", 1),
    subjects.ORG_DELETE: ("org_id", ["o1"]),
    subjects.USER_REGISTER: ("roles", "admin"),
    subjects.USER_UPDATE_PROFILE: ("name", 7),
    subjects.USER_CHANGE_PASSWORD: ("old_password", 12345678),
    subjects.USER_SET_ROLES: ("roles", [1]),
    subjects.USER_DELETE: ("expected_version", "3"),
    subjects.AUTH_LOGIN: ("ttl_seconds", "3600"),
    subjects.AUTH_LOGOUT: ("command_id", 5),
    subjects.APIKEY_CREATE: ("name", ["laptop"]),
    subjects.APIKEY_REVOKE: ("key_id", 1),
    subjects.ORG_GET: ("org_id", None),
    subjects.ORG_LIST: ("limit", "10"),
    subjects.USER_GET: ("user_id", 1.5),
    subjects.USER_GET_BY_EMAIL: ("email", True),
    subjects.USER_EMAIL_EXISTS: ("email", {}),
    subjects.USER_LIST: ("cursor", 5),
    subjects.APIKEY_LIST: ("user_id", False),
    subjects.HISTORY_GET: ("limit", "10"),
    subjects.SYS_STATUS: ("after_seq", "x"),
    subjects.SYS_HEALTH: ("after_seq", []),
    subjects.AGENT_CREATE: ("tags", "support"),
    subjects.AGENT_UPDATE: ("model", [1]),
    subjects.AGENT_ARCHIVE: ("expected_version", "3"),
    subjects.AGENT_UNARCHIVE: ("agent_id", 5),
    subjects.AGENT_DELETE: ("agent_id", None),
    subjects.AGENT_SET_STATE: ("state", [1, 2]),
    subjects.AGENT_PATCH_STATE: ("patch", "x"),
    subjects.AGENT_GET: ("agent_id", 1),
    subjects.AGENT_LIST: ("include_archived", "yes"),
    subjects.AGENT_GET_STATE: ("after_seq", "1"),
    subjects.TOOL_REGISTER: ("parameters", "schema"),
    subjects.TOOL_UPDATE: ("tags", "web"),
    subjects.TOOL_DELETE: ("tool_id", 1),
    subjects.TOOL_GET: ("name", 5),
    subjects.TOOL_LIST: ("tags_all", "web"),
    subjects.MESSAGE_APPEND: ("message", "hi"),
    subjects.MESSAGE_APPEND_BATCH: ("messages", {"role": "user", "content": "hi"}),
    subjects.MESSAGE_REDACT: ("reason", 5),
    subjects.CONVERSATION_DELETE: ("session_id", 1),
    subjects.MESSAGE_LIST: ("since", "yesterday"),
    subjects.MESSAGE_LAST: ("n", "5"),
    subjects.MESSAGE_SEARCH: ("text", ["hello"]),
}


def required_fields(struct: type[msgspec.Struct]) -> list[str]:
    return [
        f.name
        for f in msgspec.structs.fields(struct)
        if f.default is msgspec.NODEFAULT and f.default_factory is msgspec.NODEFAULT
    ]


# The subjects the tables above cover: every request subject, as the first test checks (a
# subject missing from them fails that test instead of the module's collection).
SUBJECTS = [s for s in subjects.ALL_REQUEST_SUBJECTS if s in REQUEST_TYPES]
MISSING = [
    pytest.param(subject, name, id=f"{subject}-{name}")
    for subject in SUBJECTS
    for name in required_fields(REQUEST_TYPES[subject])
]
EMAIL_SUBJECTS = [s for s in SUBJECTS if "email" in VALID[s]]
PROTECTED = [s for s in SUBJECTS if s not in PUBLIC]


def first_string_field(subject: str) -> str | None:
    for name, value in VALID[subject].items():
        if isinstance(value, str):
            return name
    return None


# The shared server and service -------------------------------------------------------
@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, module_store_kind: str
) -> Iterator[NatsServer]:
    # A log of its own per store, so each store's run starts from an empty deployment.
    server = NatsServer(tmp_path_factory.mktemp(f"bad-input-{module_store_kind}") / "nats")
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_service(
    shared_server: NatsServer, tmp_path_factory: pytest.TempPathFactory, module_store_url: str
) -> AsyncIterator[Service]:
    data_dir: Path = tmp_path_factory.mktemp("bad-input-data")
    settings = Settings()
    settings.nats_url = shared_server.url
    settings.data_dir = data_dir
    settings.store = module_store_url
    settings.password_cost = TEST_PASSWORD_COST
    service = Service(settings)
    await service.start()
    yield service
    await service.stop()


@dataclass(frozen=True)
class Bus:
    """A NATS connection, and the service administrator's key that the first start of the
    shared service saved in its data dir."""

    nc: NATS
    admin_token: str

    @property
    def admin(self) -> dict[str, str]:
        return bearer(self.admin_token)

    async def ask(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> bytes:
        """The raw reply; sent as the administrator unless ``headers`` says otherwise."""
        headers = self.admin if headers is None else headers
        message = await self.nc.request(subject, payload, timeout=5, headers=headers or None)
        return bytes(message.data)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bus(shared_service: Service, shared_server: NatsServer) -> AsyncIterator[Bus]:
    connection = await nats.connect(shared_server.url)
    yield Bus(connection, admin_key(shared_service.settings.data_dir))
    await connection.close()


# Helpers -----------------------------------------------------------------------------
async def last_seq(bus: Bus) -> int:
    info = await bus.nc.jetstream().stream_info(subjects.STREAM_NAME)
    return int(info.state.last_seq)


async def still_answers(bus: Bus) -> None:
    reply = envelope.decode(await bus.ask(subjects.SYS_HEALTH, b"{}", headers={}))
    assert reply.ok, reply
    assert reply.data["live"] is True, reply.data
    listed = envelope.decode(await bus.ask(subjects.ORG_LIST, b"{}"))
    assert listed.ok, listed


async def assert_invalid(bus: Bus, subject: str, payload: bytes, *mentions: str) -> str:
    """Send ``payload`` as the administrator; the reply must be ``invalid`` and name each of
    ``mentions``."""
    assert len(payload) < NATS_MAX_PAYLOAD
    before = await last_seq(bus)
    reply = envelope.decode(await bus.ask(subject, payload))
    assert reply.ok is False, reply
    assert reply.error is not None
    assert reply.error.code == "invalid", reply.error
    text = reply.error.message
    assert len(text) > 10, text
    for mention in mentions:
        assert mention in text, f"{mention!r} not in {text!r}"
    assert await last_seq(bus) == before, "a bad request appended to the log"
    await still_answers(bus)
    return text


def encode(body: Any) -> bytes:
    return msgspec.json.encode(body)


# The tables themselves ---------------------------------------------------------------
async def test_the_tables_here_cover_every_route(shared_service: Service) -> None:
    assert shared_service.dispatcher is not None
    routes = shared_service.dispatcher.router.routes
    assert set(routes) == set(subjects.ALL_REQUEST_SUBJECTS)
    untested = set(subjects.ALL_REQUEST_SUBJECTS) - set(REQUEST_TYPES)
    assert not untested, f"add these subjects to the tables of this module: {sorted(untested)}"
    for subject, route in routes.items():
        assert route.decoder.type is REQUEST_TYPES[subject]
    assert {s for s, route in routes.items() if route.public} == PUBLIC
    assert set(VALID) == set(WRONG_TYPES) == set(subjects.ALL_REQUEST_SUBJECTS)


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_the_valid_bodies_are_valid(bus: Bus, subject: str) -> None:
    """So that every case below fails for the one thing it breaks."""
    msgspec.json.decode(encode(VALID[subject]), type=REQUEST_TYPES[subject])
    reply = envelope.decode(await bus.ask(subject, encode(VALID[subject])))
    assert reply.ok or reply.error is not None, reply
    if reply.error is not None:
        assert reply.error.code not in ("invalid", "internal"), reply
        # The administrator's key is good everywhere; these two refuse for their own reasons
        # (no user has that email and password; a key is not a session to end).
        if subject not in (subjects.AUTH_LOGIN, subjects.AUTH_LOGOUT):
            assert reply.error.code != "unauthenticated", reply


# Every subject -----------------------------------------------------------------------
def malformed(subject: str, kind: str) -> bytes:
    """Broken JSON that fails before any field is read (msgspec validates as it parses)."""
    valid = encode(VALID[subject])
    return {
        "unterminated": valid[:-1],
        "trailing": valid + b" {}",
        "not-json": b"not json",
        "single-quotes": b"{'org_id': 'o1'}",
        "bytes": b"\xff\xfe{}",
        "bare-key": b"{org_id: 1}",
    }[kind]


MALFORMED = ["unterminated", "trailing", "not-json", "single-quotes", "bytes", "bare-key"]


@pytest.mark.parametrize("kind", MALFORMED)
@pytest.mark.parametrize("subject", SUBJECTS)
async def test_malformed_json(bus: Bus, subject: str, kind: str) -> None:
    await assert_invalid(bus, subject, malformed(subject, kind), "malformed JSON")


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_invalid_utf8_inside_a_string(bus: Bus, subject: str) -> None:
    field = first_string_field(subject)
    if field is None:
        payload = b'{"\xff": 1}'
    else:
        prefix = encode({k: v for k, v in VALID[subject].items() if k != field})[:-1]
        payload = prefix + (b"," if prefix != b"{" else b"") + f'"{field}": "'.encode()
        payload += b'\xff\xfe"}'
    await assert_invalid(bus, subject, payload, "UTF-8")


NOT_OBJECTS = [
    pytest.param(b"[]", "array", id="empty-array"),
    pytest.param(encode([{"name": "Acme"}]), "array", id="array"),
    pytest.param(b"null", "null", id="null"),
    pytest.param(b"42", "int", id="number"),
    pytest.param(b'"org"', "str", id="string"),
    pytest.param(b"true", "bool", id="bool"),
]


@pytest.mark.parametrize(("payload", "got"), NOT_OBJECTS)
@pytest.mark.parametrize("subject", SUBJECTS)
async def test_not_an_object(bus: Bus, subject: str, payload: bytes, got: str) -> None:
    await assert_invalid(bus, subject, payload, "Expected `object`", f"got `{got}`")


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_wrong_type(bus: Bus, subject: str) -> None:
    field, value = WRONG_TYPES[subject]
    body = {**VALID[subject], field: value}
    await assert_invalid(bus, subject, encode(body), f"`$.{field}", "Expected")


@pytest.mark.parametrize(("subject", "field"), MISSING)
async def test_missing_field(bus: Bus, subject: str, field: str) -> None:
    body = {k: v for k, v in VALID[subject].items() if k != field}
    await assert_invalid(bus, subject, encode(body), "missing required field", f"`{field}`")


@pytest.mark.parametrize("subject", [s for s in SUBJECTS if required_fields(REQUEST_TYPES[s])])
async def test_empty_payload_misses_the_required_fields(bus: Bus, subject: str) -> None:
    first = required_fields(REQUEST_TYPES[subject])[0]
    await assert_invalid(bus, subject, b"", "missing required field", f"`{first}`")


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_unknown_field(bus: Bus, subject: str) -> None:
    body = {**VALID[subject], "bogus_field": 1}
    await assert_invalid(bus, subject, encode(body), "unknown field", "bogus_field")


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_oversized_payload(bus: Bus, subject: str) -> None:
    body = {**VALID[subject], "padding": "x" * (MAX_REQUEST_BYTES + 1000)}
    payload = encode(body)
    assert MAX_REQUEST_BYTES < len(payload) < NATS_MAX_PAYLOAD
    await assert_invalid(bus, subject, payload, str(MAX_REQUEST_BYTES), str(len(payload)))


# Unknown subjects --------------------------------------------------------------------
@pytest.mark.parametrize(
    "subject",
    [
        "agentmem.cmd.org.explode",
        "agentmem.cmd.user",
        "agentmem.cmd.nothing.create",
        "agentmem.cmd.org.create.extra",
        "agentmem.q.user.nope",
        "agentmem.q.org",
        "agentmem.sys.nope",
        "agentmem.sys.status.extra",
    ],
)
async def test_unknown_verb(bus: Bus, subject: str) -> None:
    for payload in (encode({"name": "Acme"}), b"not json"):
        text = await assert_invalid(bus, subject, payload, subject, "unknown subject")
        assert "docs/protocol.md" in text


# Values of the right type that break a rule ------------------------------------------
@pytest.mark.parametrize(
    "email",
    [
        "not-an-email",
        "a@b",
        "a b@example.com",
        "@example.com",
        "a@@example.com",
        "ann@example.c",
        "x" * 250 + "@e.com",
    ],
)
@pytest.mark.parametrize("subject", EMAIL_SUBJECTS)
async def test_invalid_email(bus: Bus, subject: str, email: str) -> None:
    body = {**VALID[subject], "email": email}
    await assert_invalid(bus, subject, encode(body), "`$.email`")


BAD_VALUES = [
    (subjects.ORG_CREATE, "name", ""),
    (subjects.ORG_CREATE, "name", "x" * 201),
    (subjects.ORG_CREATE, "command_id", "a.b"),
    (subjects.ORG_CREATE, "command_id", "x" * 65),
    (subjects.ORG_CREATE, "command_id", ""),
    # A trailing newline must not slip past the id pattern into a header or a subject.
    (subjects.ORG_CREATE, "command_id", "retry-1\n"),
    (subjects.ORG_RENAME, "org_id", "o1\n"),
    (subjects.ORG_RENAME, "expected_version", -1),
    (subjects.ORG_DELETE, "org_id", "o.*"),
    (subjects.ORG_DELETE, "org_id", ">"),
    (subjects.USER_REGISTER, "password", "short"),
    (subjects.USER_REGISTER, "password", "p" * 1025),
    (subjects.USER_REGISTER, "roles", []),
    (subjects.USER_REGISTER, "roles", ["root"]),
    (subjects.USER_REGISTER, "org_id", "o 1"),
    (subjects.USER_UPDATE_PROFILE, "name", ""),
    (subjects.USER_UPDATE_PROFILE, "user_id", "u1\n"),
    (subjects.USER_CHANGE_PASSWORD, "new_password", "short"),
    (subjects.USER_CHANGE_PASSWORD, "old_password", "o" * 1025),
    (subjects.USER_SET_ROLES, "roles", ["admin", "member", "readonly", "admin"]),
    (subjects.USER_SET_ROLES, "roles", ["owner"]),
    (subjects.USER_DELETE, "user_id", "x" * 65),
    (subjects.USER_DELETE, "command_id", "c\r\nX-Injected: 1"),
    (subjects.ORG_GET, "org_id", ""),
    (subjects.ORG_LIST, "limit", 0),
    (subjects.ORG_LIST, "limit", 501),
    (subjects.ORG_LIST, "cursor", "c" * 513),
    (subjects.USER_GET, "after_seq", -1),
    (subjects.USER_LIST, "limit", -5),
    (subjects.SYS_STATUS, "after_seq", -1),
    (subjects.USER_LIST, "org_id", "o 1"),
    (subjects.AUTH_LOGIN, "password", "p" * 1025),
    (subjects.AUTH_LOGIN, "ttl_seconds", 0),
    (subjects.AUTH_LOGIN, "ttl_seconds", 30 * 24 * 3600 + 1),
    (subjects.AUTH_LOGIN, "command_id", "a.b"),
    (subjects.AUTH_LOGOUT, "command_id", "x" * 65),
    (subjects.APIKEY_CREATE, "name", ""),
    (subjects.APIKEY_CREATE, "name", "x" * 201),
    (subjects.APIKEY_CREATE, "user_id", "u1\n"),
    (subjects.APIKEY_REVOKE, "key_id", "k.*"),
    (subjects.APIKEY_REVOKE, "user_id", ">"),
    (subjects.APIKEY_LIST, "user_id", "u 1"),
    (subjects.APIKEY_LIST, "after_seq", -1),
    (subjects.HISTORY_GET, "aggregate", "apikey"),
    (subjects.HISTORY_GET, "aggregate", ""),
    (subjects.HISTORY_GET, "id", ""),
    (subjects.HISTORY_GET, "id", "o1.>"),
    (subjects.HISTORY_GET, "limit", 0),
    (subjects.HISTORY_GET, "limit", 501),
    (subjects.HISTORY_GET, "cursor", "c" * 513),
    (subjects.AGENT_CREATE, "name", ""),
    (subjects.AGENT_CREATE, "description", "d" * 4001),
    (subjects.AGENT_CREATE, "tags", ["t"] * 33),
    (subjects.AGENT_CREATE, "tags", [""]),
    (subjects.AGENT_CREATE, "agent_id", "a_1"),
    (subjects.AGENT_CREATE, "org_id", "o.1"),
    (subjects.AGENT_UPDATE, "agent_id", "a.b"),
    (subjects.AGENT_UPDATE, "persona", "p" * 100_001),
    (subjects.AGENT_UPDATE, "tags", ["t" * 65]),
    (subjects.AGENT_ARCHIVE, "agent_id", "a1\n"),
    (subjects.AGENT_DELETE, "expected_version", -1),
    (subjects.AGENT_SET_STATE, "expected_version", -1),
    (subjects.AGENT_PATCH_STATE, "agent_id", ">"),
    (subjects.AGENT_GET, "agent_id", ""),
    (subjects.AGENT_LIST, "name_prefix", ""),
    (subjects.AGENT_LIST, "name_prefix", "n" * 201),
    (subjects.AGENT_LIST, "tag", "t" * 65),
    (subjects.AGENT_LIST, "limit", 501),
    (subjects.AGENT_GET_STATE, "agent_id", "a*"),
    (subjects.TOOL_REGISTER, "name", "get weather"),
    (subjects.TOOL_REGISTER, "name", "get.weather"),
    (subjects.TOOL_REGISTER, "name", "x" * 65),
    (subjects.TOOL_REGISTER, "name", ""),
    (subjects.TOOL_REGISTER, "tool_id", "t_1"),
    (subjects.TOOL_UPDATE, "name", "a b"),
    (subjects.TOOL_UPDATE, "description", "d" * 4001),
    (subjects.TOOL_DELETE, "tool_id", "t1\n"),
    (subjects.TOOL_GET, "name", "a/b"),
    (subjects.TOOL_LIST, "tags_any", ["t"] * 33),
    (subjects.TOOL_LIST, "tags_all", [""]),
    (subjects.TOOL_LIST, "cursor", "c" * 513),
    (subjects.MESSAGE_APPEND, "session_id", "s.1"),
    (subjects.MESSAGE_APPEND, "session_id", ""),
    (subjects.MESSAGE_APPEND, "agent_id", "a*"),
    (subjects.MESSAGE_APPEND, "user_id", "u 1"),
    (subjects.MESSAGE_APPEND, "message", {"role": "robot", "content": "hi"}),
    (subjects.MESSAGE_APPEND, "message", {"role": "user"}),
    (subjects.MESSAGE_APPEND, "message", {"role": "user", "content": "c" * 100_001}),
    (subjects.MESSAGE_APPEND, "message", {"role": "user", "content": "hi", "extra": 1}),
    (subjects.MESSAGE_APPEND, "message", {"role": "tool", "content": "", "tool_call_id": "a.b"}),
    (subjects.MESSAGE_APPEND, "message", {"role": "user", "content": "", "tool_calls": [1]}),
    (subjects.MESSAGE_APPEND_BATCH, "messages", []),
    (subjects.MESSAGE_APPEND_BATCH, "messages", [{"role": "user", "content": "x"}] * 1001),
    (subjects.MESSAGE_APPEND_BATCH, "messages", [{"role": "user", "content": "x"}, {}]),
    (subjects.MESSAGE_APPEND_BATCH, "org_id", "o>"),
    (subjects.MESSAGE_REDACT, "message_id", "m\n"),
    (subjects.MESSAGE_REDACT, "reason", "r" * 4001),
    (subjects.CONVERSATION_DELETE, "session_id", "x" * 65),
    (subjects.MESSAGE_LIST, "order", "sideways"),
    (subjects.MESSAGE_LIST, "since", -1),
    (subjects.MESSAGE_LIST, "until", 1.5),
    (subjects.MESSAGE_LIST, "role", "robot"),
    (subjects.MESSAGE_LIST, "limit", 501),
    (subjects.MESSAGE_LIST, "cursor", "c" * 513),
    (subjects.MESSAGE_LAST, "n", 0),
    (subjects.MESSAGE_LAST, "n", 501),
    (subjects.MESSAGE_LAST, "session_id", "s 1"),
    (subjects.MESSAGE_SEARCH, "text", ""),
    (subjects.MESSAGE_SEARCH, "text", "t" * 1001),
    (subjects.MESSAGE_SEARCH, "role", "robot"),
    (subjects.MESSAGE_SEARCH, "limit", 0),
    (subjects.MESSAGE_SEARCH, "session_id", "s.>"),
]


@pytest.mark.parametrize(
    ("subject", "field", "value"),
    [pytest.param(s, f, v, id=f"{s}-{f}-{i}") for i, (s, f, v) in enumerate(BAD_VALUES)],
)
async def test_bad_value(bus: Bus, subject: str, field: str, value: Any) -> None:
    body = {**VALID[subject], field: value}
    await assert_invalid(bus, subject, encode(body), f"`$.{field}")


async def test_a_cursor_the_service_never_made(bus: Bus) -> None:
    # Valid base64 whose bytes are not UTF-8.
    body = {"org_id": "o1", "cursor": "_w"}
    text = await assert_invalid(bus, subjects.USER_LIST, encode(body), "cursor")
    assert "_w" in text or "returned" in text
    body = {"aggregate": "org", "id": "o1", "cursor": "_w"}
    text = await assert_invalid(bus, subjects.HISTORY_GET, encode(body), "cursor")
    assert "_w" in text or "returned" in text
    for subject in (subjects.AGENT_LIST, subjects.TOOL_LIST):
        await assert_invalid(bus, subject, encode({"cursor": "_w"}), "cursor")
    body = {"session_id": "s1", "cursor": "_w"}
    await assert_invalid(bus, subjects.MESSAGE_LIST, encode(body), "cursor")
    # The service's own cursor format, from another subject: a key that is no position.
    body = {"session_id": "s1", "cursor": encode_cursor("not-a-position")}
    await assert_invalid(bus, subjects.MESSAGE_LIST, encode(body), "cursor")


# Values of the right shape that a handler refuses: still invalid, still nothing appended.
async def test_a_state_document_over_the_cap(bus: Bus) -> None:
    client = Client(bus.nc, bus.admin_token)
    agent_id = (await client.create_agent("Capped")).fields["agent_id"]
    body = {"agent_id": agent_id, "state": {"k": "x" * MAX_STATE_BYTES}}
    await assert_invalid(bus, subjects.AGENT_SET_STATE, encode(body), "state document")
    deep: dict[str, Any] = {}
    for _ in range(100):
        deep = {"a": deep}
    body = {"agent_id": agent_id, "patch": deep}
    await assert_invalid(bus, subjects.AGENT_PATCH_STATE, encode(body), "levels deep")


@pytest.mark.parametrize(
    "parameters",
    [
        {"type": "objekt"},
        {"type": "object", "properties": {"a": {"type": 5}}},
        {"type": "string"},
        {"type": "object", "description": "x" * 70_000},
    ],
)
async def test_tool_parameters_that_are_no_object_schema(
    bus: Bus, parameters: dict[str, Any]
) -> None:
    body = {"name": f"broken_{ids.new_id()}", "parameters": parameters}
    await assert_invalid(bus, subjects.TOOL_REGISTER, encode(body), "parameters")


async def test_a_search_for_no_one(bus: Bus) -> None:
    for body in ({"text": "hello"}, {"text": "hello", "session_id": "s1", "role": "user"}):
        await assert_invalid(bus, subjects.MESSAGE_SEARCH, encode(body), "agent_id or user_id")


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_a_nul_character_in_any_string(bus: Bus, subject: str) -> None:
    # Postgres text cannot hold U+0000, so no request may carry one (a projection on
    # Postgres would have to park its event). The field need not even exist.
    body = {**VALID[subject], "no_such_field": "a\u0000b"}
    await assert_invalid(bus, subject, encode(body), "NUL")


async def test_an_escaped_backslash_before_u0000_is_no_nul(bus: Bus) -> None:
    client = Client(bus.nc, bus.admin_token)
    agent_id = (await client.create_agent("Talker")).fields["agent_id"]
    written = await client.append_message("s1", agent_id, "user", "C:\\u0000 is a path")
    assert written.fields["content"] == "C:\\u0000 is a path"


async def test_a_tool_named_by_neither_or_both(bus: Bus) -> None:
    for body in ({}, {"tool_id": "t1", "name": "n"}):
        await assert_invalid(bus, subjects.TOOL_GET, encode(body), "exactly one")


# And afterwards ----------------------------------------------------------------------
async def test_bad_requests_without_a_reply_subject_do_not_hurt(bus: Bus) -> None:
    before = await last_seq(bus)
    payloads = [b'{"name": "Acme"', b"[]", b"\xff", encode({"bogus_field": 1})]
    for subject in [*SUBJECTS, "agentmem.cmd.org.explode"]:
        for payload in payloads:
            await bus.nc.publish(subject, payload, headers=bus.admin)
            await bus.nc.publish(subject, payload)
        # Valid, but without credentials.
        await bus.nc.publish(subject, encode(VALID.get(subject, {})))
    await bus.nc.flush()
    await still_answers(bus)
    await asyncio.sleep(0.3)  # each request is answered by a task of its own: let them end
    assert await last_seq(bus) == before


async def test_the_service_still_takes_valid_commands(bus: Bus) -> None:
    before = await last_seq(bus)
    created = envelope.decode(await bus.ask(subjects.ORG_CREATE, encode({"name": "Alive"})))
    assert created.ok, created
    body = {**VALID[subjects.USER_REGISTER], "org_id": created.data["org_id"]}
    registered = envelope.decode(await bus.ask(subjects.USER_REGISTER, encode(body)))
    assert registered.ok, registered
    # The org, then the user and its email reservation.
    assert await last_seq(bus) == before + 3


# Credentials -------------------------------------------------------------------------
def with_secret(token: tokens.Token, secret: str) -> tokens.Token:
    return tokens.Token(token.kind, token.org_id, token.user_id, token.credential_id, secret)


def admin_parts(bus: Bus) -> tokens.Token:
    token = tokens.parse(bus.admin_token)
    assert token is not None
    return token


# Each: the headers to send, from the administrator's real key. None of them is good.
BAD_CREDENTIALS: dict[str, Callable[[Bus], dict[str, str]]] = {
    "none": lambda bus: {},
    "not-a-token": lambda bus: {tokens.HEADER: "Bearer not-a-token"},
    "truncated-secret": lambda bus: {tokens.HEADER: f"Bearer {bus.admin_token[:-1]}"},
    "other-scheme": lambda bus: {tokens.HEADER: f"Basic {bus.admin_token}"},
    "other-header": lambda bus: {"X-Api-Key": bus.admin_token},
    # Well formed, but no such organization, user or key anywhere.
    "unknown": lambda bus: bearer(str(tokens.new_token("key", ids.new_id(), ids.new_id()))),
    # The administrator's real key id, with another secret.
    "wrong-secret": lambda bus: bearer(str(with_secret(admin_parts(bus), secrets.token_hex(32)))),
    # The administrator's real user, with a key or a session it never had.
    "unknown-key-id": lambda bus: bearer(
        str(tokens.new_token("key", admin_parts(bus).org_id, admin_parts(bus).user_id))
    ),
    "unknown-session": lambda bus: bearer(
        str(tokens.new_token("session", admin_parts(bus).org_id, admin_parts(bus).user_id))
    ),
}
MALFORMED_CREDENTIALS = {"none", "not-a-token", "truncated-secret", "other-scheme", "other-header"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def revoked_key(bus: Bus) -> str:
    """A key of the administrator's that worked, then was revoked."""
    client = Client(bus.nc, bus.admin_token)
    created = await client.create_api_key("soon revoked")
    key = created.fields["token"]
    assert (await client.with_token(key).list_orgs()).items, "the key worked"
    await client.revoke_api_key(created.fields["key_id"])
    return str(key)


async def assert_unauthenticated(
    bus: Bus, subject: str, payload: bytes, headers: dict[str, str], malformed: bool
) -> None:
    before = await last_seq(bus)
    raw = await bus.ask(subject, payload, headers=headers)
    reply = envelope.decode(raw)
    assert reply.ok is False, reply
    assert reply.error is not None
    assert reply.error.code == "unauthenticated", reply.error
    text = reply.error.message
    # It says what is wrong with the credentials, and nothing about the request.
    if malformed:
        assert tokens.HEADER in text, text
    for leak in ("JSON", "invalid request", "field", "not found", "does not exist"):
        assert leak not in text, text
    # No part of what was presented comes back.
    for value in headers.values():
        assert value.split()[-1].encode() not in raw, raw
    assert await last_seq(bus) == before, "a request without valid credentials appended"
    await still_answers(bus)


@pytest.mark.parametrize("body", ["valid", "malformed"])
@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS))
@pytest.mark.parametrize("subject", PROTECTED)
async def test_bad_credentials_are_unauthenticated(
    bus: Bus, subject: str, credentials: str, body: str
) -> None:
    """Credentials are checked first: a valid body (which with good credentials might well
    write) and a malformed one are refused alike."""
    payload = encode(VALID[subject]) if body == "valid" else b"not json"
    headers = BAD_CREDENTIALS[credentials](bus)
    await assert_unauthenticated(
        bus, subject, payload, headers, credentials in MALFORMED_CREDENTIALS
    )


@pytest.mark.parametrize("subject", PROTECTED)
async def test_a_revoked_key_is_unauthenticated(bus: Bus, revoked_key: str, subject: str) -> None:
    payload = encode(VALID[subject])
    await assert_unauthenticated(bus, subject, payload, bearer(revoked_key), malformed=False)


async def test_the_public_subjects_answer_without_credentials(bus: Bus) -> None:
    health = envelope.decode(await bus.ask(subjects.SYS_HEALTH, b"{}", headers={}))
    assert health.ok, health
    assert health.data["live"] is True

    client = Client(bus.nc, bus.admin_token)
    org = (await client.create_org("Public")).fields["org_id"]
    email, password = "login-without-credentials@example.com", "password-1"
    user = await client.register_user(org, "Lou", email, password)

    # A wrong password: refused as a wrong login (not as missing credentials), nothing written.
    before = await last_seq(bus)
    body = {"email": email, "password": "wrong-password"}
    wrong = envelope.decode(await bus.ask(subjects.AUTH_LOGIN, encode(body), headers={}))
    assert wrong.error is not None, wrong
    assert wrong.error.code == "unauthenticated", wrong
    assert tokens.HEADER not in wrong.error.message, wrong
    assert await last_seq(bus) == before

    # The right one: a session token, which then works where credentials are needed.
    body = {"email": email, "password": password}
    raw = await bus.ask(subjects.AUTH_LOGIN, encode(body), headers={})
    login = envelope.decode(raw)
    assert login.ok, login
    assert password.encode() not in raw
    session = tokens.parse(login.data["token"])
    assert session is not None
    assert session.kind == "session"
    assert (session.org_id, session.user_id) == (org, user.fields["user_id"])
    me = envelope.decode(
        await bus.ask(
            subjects.USER_GET,
            encode({"user_id": session.user_id, "after_seq": login.seq}),
            headers=bearer(str(session)),
        )
    )
    assert me.ok, me
    assert me.data["email"] == email


@pytest.mark.parametrize("key", ["not-a-seq", "-5", "1.5"])
async def test_a_history_cursor_whose_key_is_no_sequence(bus: Bus, key: str) -> None:
    """A cursor in the service's own format (one from agentmem.q.user.list, say) whose key
    is not a log sequence."""
    body = {"aggregate": "org", "id": admin_parts(bus).org_id, "cursor": encode_cursor(key)}
    await assert_invalid(bus, subjects.HISTORY_GET, encode(body), "cursor")
