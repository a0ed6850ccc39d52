"""Bad input on every request subject: an ``invalid`` reply a person can act on, nothing
appended to the log, and a service that goes on answering.

One nats-server and one service serve the whole module (each case is a single request; a
fresh server per case would cost more than all the cases together). Every case checks the
log's last sequence itself and that the service still answers afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from agentmem import envelope, subjects
from agentmem.commands import (
    ChangePassword,
    CreateOrg,
    DeleteOrg,
    DeleteUser,
    RegisterUser,
    RenameOrg,
    SetRoles,
    UpdateProfile,
)
from agentmem.config import Settings
from agentmem.queries import (
    EmailExists,
    GetOrg,
    GetUser,
    GetUserByEmail,
    ListOrgs,
    ListUsers,
    Status,
)
from agentmem.service import Service
from consumers.router import MAX_REQUEST_BYTES
from tests.support import TEST_PASSWORD_COST, NatsServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

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
    subjects.ORG_GET: GetOrg,
    subjects.ORG_LIST: ListOrgs,
    subjects.USER_GET: GetUser,
    subjects.USER_GET_BY_EMAIL: GetUserByEmail,
    subjects.USER_EMAIL_EXISTS: EmailExists,
    subjects.USER_LIST: ListUsers,
    subjects.SYS_STATUS: Status,
    subjects.SYS_HEALTH: Status,
}

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
    subjects.ORG_GET: {"org_id": "o1"},
    subjects.ORG_LIST: {"limit": 5},
    subjects.USER_GET: {"user_id": "u1"},
    subjects.USER_GET_BY_EMAIL: {"email": "ann@example.com"},
    subjects.USER_EMAIL_EXISTS: {"email": "ann@example.com"},
    subjects.USER_LIST: {"org_id": "o1"},
    subjects.SYS_STATUS: {},
    subjects.SYS_HEALTH: {},
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
    subjects.ORG_GET: ("org_id", None),
    subjects.ORG_LIST: ("limit", "10"),
    subjects.USER_GET: ("user_id", 1.5),
    subjects.USER_GET_BY_EMAIL: ("email", True),
    subjects.USER_EMAIL_EXISTS: ("email", {}),
    subjects.USER_LIST: ("cursor", 5),
    subjects.SYS_STATUS: ("after_seq", "x"),
    subjects.SYS_HEALTH: ("after_seq", []),
}


def required_fields(struct: type[msgspec.Struct]) -> list[str]:
    return [
        f.name
        for f in msgspec.structs.fields(struct)
        if f.default is msgspec.NODEFAULT and f.default_factory is msgspec.NODEFAULT
    ]


MISSING = [
    pytest.param(subject, name, id=f"{subject}-{name}")
    for subject in subjects.ALL_REQUEST_SUBJECTS
    for name in required_fields(REQUEST_TYPES[subject])
]
EMAIL_SUBJECTS = [s for s in subjects.ALL_REQUEST_SUBJECTS if "email" in VALID[s]]
SUBJECTS = subjects.ALL_REQUEST_SUBJECTS


def first_string_field(subject: str) -> str | None:
    for name, value in VALID[subject].items():
        if isinstance(value, str):
            return name
    return None


# The shared server and service -------------------------------------------------------
@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("bad-input") / "nats")
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_service(
    shared_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    data_dir: Path = tmp_path_factory.mktemp("bad-input-data")
    settings = Settings()
    settings.nats_url = shared_server.url
    settings.data_dir = data_dir
    settings.store = str(data_dir / "agentmem.db")
    settings.password_cost = TEST_PASSWORD_COST
    service = Service(settings)
    await service.start()
    yield service
    await service.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bus(shared_service: Service, shared_server: NatsServer) -> AsyncIterator[NATS]:
    connection = await nats.connect(shared_server.url)
    yield connection
    await connection.close()


# Helpers -----------------------------------------------------------------------------
async def last_seq(nc: NATS) -> int:
    info = await nc.jetstream().stream_info(subjects.STREAM_NAME)
    return int(info.state.last_seq)


async def still_answers(nc: NATS) -> None:
    reply = envelope.decode((await nc.request(subjects.SYS_HEALTH, b"{}", timeout=5)).data)
    assert reply.ok, reply
    assert reply.data["live"] is True, reply.data
    listed = envelope.decode((await nc.request(subjects.ORG_LIST, b"{}", timeout=5)).data)
    assert listed.ok, listed


async def assert_invalid(nc: NATS, subject: str, payload: bytes, *mentions: str) -> str:
    """Send ``payload``; the reply must be ``invalid`` and name each of ``mentions``."""
    assert len(payload) < NATS_MAX_PAYLOAD
    before = await last_seq(nc)
    message = await nc.request(subject, payload, timeout=5)
    reply = envelope.decode(message.data)
    assert reply.ok is False, reply
    assert reply.error is not None
    assert reply.error.code == "invalid", reply.error
    text = reply.error.message
    assert len(text) > 10, text
    for mention in mentions:
        assert mention in text, f"{mention!r} not in {text!r}"
    assert await last_seq(nc) == before, "a bad request appended to the log"
    await still_answers(nc)
    return text


def encode(body: Any) -> bytes:
    return msgspec.json.encode(body)


# The tables themselves ---------------------------------------------------------------
async def test_the_tables_here_cover_every_route(shared_service: Service) -> None:
    assert shared_service.dispatcher is not None
    routes = shared_service.dispatcher.router.routes
    assert set(routes) == set(subjects.ALL_REQUEST_SUBJECTS)
    for subject, route in routes.items():
        assert route.decoder.type is REQUEST_TYPES[subject]
    assert set(VALID) == set(WRONG_TYPES) == set(subjects.ALL_REQUEST_SUBJECTS)


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_the_valid_bodies_are_valid(bus: NATS, subject: str) -> None:
    """So that every case below fails for the one thing it breaks."""
    msgspec.json.decode(encode(VALID[subject]), type=REQUEST_TYPES[subject])
    reply = envelope.decode((await bus.request(subject, encode(VALID[subject]), timeout=5)).data)
    assert reply.ok or reply.error is None or reply.error.code != "invalid", reply


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
async def test_malformed_json(bus: NATS, subject: str, kind: str) -> None:
    await assert_invalid(bus, subject, malformed(subject, kind), "malformed JSON")


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_invalid_utf8_inside_a_string(bus: NATS, subject: str) -> None:
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
async def test_not_an_object(bus: NATS, subject: str, payload: bytes, got: str) -> None:
    await assert_invalid(bus, subject, payload, "Expected `object`", f"got `{got}`")


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_wrong_type(bus: NATS, subject: str) -> None:
    field, value = WRONG_TYPES[subject]
    body = {**VALID[subject], field: value}
    await assert_invalid(bus, subject, encode(body), f"`$.{field}", "Expected")


@pytest.mark.parametrize(("subject", "field"), MISSING)
async def test_missing_field(bus: NATS, subject: str, field: str) -> None:
    body = {k: v for k, v in VALID[subject].items() if k != field}
    await assert_invalid(bus, subject, encode(body), "missing required field", f"`{field}`")


@pytest.mark.parametrize("subject", [s for s in SUBJECTS if required_fields(REQUEST_TYPES[s])])
async def test_empty_payload_misses_the_required_fields(bus: NATS, subject: str) -> None:
    first = required_fields(REQUEST_TYPES[subject])[0]
    await assert_invalid(bus, subject, b"", "missing required field", f"`{first}`")


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_unknown_field(bus: NATS, subject: str) -> None:
    body = {**VALID[subject], "bogus_field": 1}
    await assert_invalid(bus, subject, encode(body), "unknown field", "bogus_field")


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_oversized_payload(bus: NATS, subject: str) -> None:
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
async def test_unknown_verb(bus: NATS, subject: str) -> None:
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
async def test_invalid_email(bus: NATS, subject: str, email: str) -> None:
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
]


@pytest.mark.parametrize(
    ("subject", "field", "value"),
    [pytest.param(s, f, v, id=f"{s}-{f}-{i}") for i, (s, f, v) in enumerate(BAD_VALUES)],
)
async def test_bad_value(bus: NATS, subject: str, field: str, value: Any) -> None:
    body = {**VALID[subject], field: value}
    await assert_invalid(bus, subject, encode(body), f"`$.{field}")


async def test_a_cursor_the_service_never_made(bus: NATS) -> None:
    # Valid base64 whose bytes are not UTF-8.
    body = {"org_id": "o1", "cursor": "_w"}
    text = await assert_invalid(bus, subjects.USER_LIST, encode(body), "cursor")
    assert "_w" in text or "returned" in text


# And afterwards ----------------------------------------------------------------------
async def test_bad_requests_without_a_reply_subject_do_not_hurt(bus: NATS) -> None:
    before = await last_seq(bus)
    payloads = [b'{"name": "Acme"', b"[]", b"\xff", encode({"bogus_field": 1})]
    for subject in [*SUBJECTS, "agentmem.cmd.org.explode"]:
        for payload in payloads:
            await bus.publish(subject, payload)
    await bus.flush()
    await still_answers(bus)
    assert await last_seq(bus) == before


async def test_the_service_still_takes_valid_commands(bus: NATS) -> None:
    before = await last_seq(bus)
    created = envelope.decode(
        (await bus.request(subjects.ORG_CREATE, encode({"name": "Alive"}), timeout=5)).data
    )
    assert created.ok, created
    body = {**VALID[subjects.USER_REGISTER], "org_id": created.data["org_id"]}
    registered = envelope.decode(
        (await bus.request(subjects.USER_REGISTER, encode(body), timeout=5)).data
    )
    assert registered.ok, registered
    assert await last_seq(bus) == before + 3
