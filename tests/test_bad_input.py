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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
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
from agentmem.consumers.queries import encode_cursor
from agentmem.consumers.router import MAX_HEADER_BYTES, MAX_REQUEST_BYTES
from agentmem.domain.agents import MAX_STATE_BYTES
from agentmem.domain.associations import (
    AssociateMemories,
    DissociateMemories,
    MemoryAssociations,
)
from agentmem.domain.blocks import (
    AppendToBlock,
    AttachBlock,
    BlockHistory,
    CreateBlock,
    DeleteBlock,
    DetachBlock,
    GetBlock,
    ListBlocks,
    ReplaceInBlock,
    SetBlock,
)
from agentmem.domain.context import AssembleContext
from agentmem.domain.entities import (
    AddEntityAlias,
    CreateEntity,
    DeleteEntity,
    DeleteEntityScope,
    GetEntity,
    ListEntities,
    MergeEntity,
    RemoveEntityAlias,
    RenameEntity,
    ResolveEntity,
    SetEntityAttributes,
    UnmergeEntity,
)
from agentmem.domain.extraction import ExtractGraph
from agentmem.domain.forget import (
    ForgetAgent,
    ForgetConversation,
    ForgetMemory,
    ForgetMemoryScope,
    ForgetUser,
)
from agentmem.domain.ingest import IngestStatus
from agentmem.domain.memories import (
    AddMemories,
    AddMemory,
    ArchiveMemory,
    DeleteMemory,
    DeleteMemoryScope,
    GetMemory,
    ListMemories,
    MemoryHistory,
    MemoryStats,
    RestoreMemory,
    SearchMemories,
    SupersedeMemory,
    UpdateMemory,
)
from agentmem.domain.predicates import DeclarePredicate, ListPredicates
from agentmem.domain.relations import (
    AssertRelation,
    FindGraphPath,
    GraphFacts,
    GraphNeighbors,
    GraphStatsQuery,
    InvalidateRelation,
    RetractRelation,
)
from agentmem.domain.working import (
    ClearWorkingMemory,
    GetWorkingMemory,
    PutWorkingItem,
    RemoveWorkingItem,
)
from agentmem.natsflush import flushed
from agentmem.protocol import operations
from agentmem.queries import (
    EmailExists,
    GetAgent,
    GetAgentState,
    GetHistory,
    GetOrg,
    GetTool,
    GetUser,
    GetUserByEmail,
    Health,
    LastMessages,
    ListAgents,
    ListApiKeys,
    ListMessages,
    ListOrgs,
    ListTools,
    ListUsers,
    Schema,
    SearchMessages,
    Status,
)
from agentmem.service import Service
from tests.conftest import admin_key
from tests.realparts import bearer
from tests.support import NatsServer

pytestmark = pytest.mark.asyncio(loop_scope="module")
STORES = ("sqlite", "postgres")

NATS_MAX_PAYLOAD = 1024 * 1024

# Every operation, from the registry: a new one must be added to the tables below.
REQUEST_TYPES: dict[str, type[msgspec.Struct]] = {o.subject: o.request for o in operations()}
# Answered without credentials; every other subject needs them.
PUBLIC = {o.subject for o in operations() if o.public}

# A valid body per subject (the ids need not exist: validity is about shape).
VALID: dict[str, dict[str, Any]] = {
    CreateOrg.op.subject: {"name": "Acme"},
    RenameOrg.op.subject: {"org_id": "o1", "name": "Acme 2"},
    DeleteOrg.op.subject: {"org_id": "o1"},
    RegisterUser.op.subject: {
        "org_id": "o1",
        "name": "Ann",
        "email": "ann@example.com",
        "password": "long-enough",
    },
    UpdateProfile.op.subject: {"user_id": "u1", "name": "Ann"},
    ChangePassword.op.subject: {
        "user_id": "u1",
        "old_password": "old-password",
        "new_password": "new-password",
    },
    SetRoles.op.subject: {"user_id": "u1", "roles": ["admin"]},
    DeleteUser.op.subject: {"user_id": "u1"},
    Login.op.subject: {"email": "ann@example.com", "password": "long-enough"},
    Logout.op.subject: {},
    CreateApiKey.op.subject: {"name": "laptop"},
    RevokeApiKey.op.subject: {"key_id": "k1"},
    GetOrg.op.subject: {"org_id": "o1"},
    ListOrgs.op.subject: {"limit": 5},
    GetUser.op.subject: {"user_id": "u1"},
    GetUserByEmail.op.subject: {"email": "ann@example.com"},
    EmailExists.op.subject: {"email": "ann@example.com"},
    ListUsers.op.subject: {"org_id": "o1"},
    ListApiKeys.op.subject: {"user_id": "u1"},
    GetHistory.op.subject: {"aggregate": "org", "id": "o1"},
    Status.op.subject: {},
    Health.op.subject: {},
    Schema.op.subject: {},
    CreateAgent.op.subject: {"name": "Helper"},
    UpdateAgent.op.subject: {"agent_id": "a1", "name": "Helper 2"},
    ArchiveAgent.op.subject: {"agent_id": "a1"},
    UnarchiveAgent.op.subject: {"agent_id": "a1"},
    DeleteAgent.op.subject: {"agent_id": "a1"},
    SetAgentState.op.subject: {"agent_id": "a1", "state": {"turn": 1}},
    PatchAgentState.op.subject: {"agent_id": "a1", "patch": {"turn": None}},
    GetAgent.op.subject: {"agent_id": "a1"},
    ListAgents.op.subject: {"tag": "support"},
    GetAgentState.op.subject: {"agent_id": "a1"},
    RegisterTool.op.subject: {"name": "get_weather"},
    UpdateTool.op.subject: {"tool_id": "t1", "description": "Weather"},
    DeleteTool.op.subject: {"tool_id": "t1"},
    GetTool.op.subject: {"tool_id": "t1"},
    ListTools.op.subject: {"tags_any": ["web"]},
    AppendMessage.op.subject: {
        "session_id": "s1",
        "agent_id": "a1",
        "message": {"role": "user", "content": "hi"},
    },
    AppendMessages.op.subject: {
        "session_id": "s1",
        "agent_id": "a1",
        "messages": [{"role": "user", "content": "hi"}],
    },
    RedactMessage.op.subject: {"session_id": "s1", "message_id": "m1"},
    DeleteConversation.op.subject: {"session_id": "s1"},
    ListMessages.op.subject: {"session_id": "s1"},
    LastMessages.op.subject: {"session_id": "s1", "n": 5},
    SearchMessages.op.subject: {"text": "hello", "agent_id": "a1"},
    AddMemory.op.subject: {"content": "Ann likes tea", "user_id": "u1"},
    AddMemories.op.subject: {"memories": [{"content": "Ann likes tea", "user_id": "u1"}]},
    UpdateMemory.op.subject: {"memory_id": "m1", "importance": 0.5},
    SupersedeMemory.op.subject: {"memory_id": "m1", "content": "Ann likes coffee"},
    ArchiveMemory.op.subject: {"memory_id": "m1"},
    RestoreMemory.op.subject: {"memory_id": "m1"},
    DeleteMemory.op.subject: {"memory_id": "m1"},
    DeleteMemoryScope.op.subject: {"user_id": "u1"},
    GetMemory.op.subject: {"memory_id": "m1"},
    ListMemories.op.subject: {"user_id": "u1", "states": ["live", "archived"]},
    SearchMemories.op.subject: {"text": "tea", "user_id": "u1"},
    MemoryHistory.op.subject: {"memory_id": "m1"},
    CreateBlock.op.subject: {"label": "persona", "content": "I help.", "user_id": "u1"},
    SetBlock.op.subject: {"block_id": "b1", "content": "I help."},
    AppendToBlock.op.subject: {"block_id": "b1", "content": "More."},
    ReplaceInBlock.op.subject: {"block_id": "b1", "old_text": "help", "new_text": "assist"},
    AttachBlock.op.subject: {"block_id": "b1", "agent_id": "a1"},
    DetachBlock.op.subject: {"block_id": "b1", "agent_id": "a1"},
    DeleteBlock.op.subject: {"block_id": "b1"},
    GetBlock.op.subject: {"block_id": "b1"},
    ListBlocks.op.subject: {"agent_id": "a1"},
    BlockHistory.op.subject: {"block_id": "b1"},
    PutWorkingItem.op.subject: {"session_id": "s1", "content": "the goal", "priority": 0.9},
    RemoveWorkingItem.op.subject: {"session_id": "s1", "key": "k1"},
    ClearWorkingMemory.op.subject: {"session_id": "s1"},
    GetWorkingMemory.op.subject: {"session_id": "s1", "min_priority": 0.5},
    IngestStatus.op.subject: {"command_id": "c1"},
    MemoryStats.op.subject: {"user_id": "u1"},
    CreateEntity.op.subject: {"entity_type": "person", "name": "Ann"},
    RenameEntity.op.subject: {"entity_id": "e1", "name": "Ann Lee"},
    AddEntityAlias.op.subject: {"entity_id": "e1", "alias": "Annie"},
    RemoveEntityAlias.op.subject: {"entity_id": "e1", "alias": "Annie"},
    SetEntityAttributes.op.subject: {"entity_id": "e1", "attributes": {"born": 1990}},
    MergeEntity.op.subject: {"entity_id": "e1", "into": "e2"},
    UnmergeEntity.op.subject: {"entity_id": "e1"},
    DeleteEntity.op.subject: {"entity_id": "e1"},
    DeleteEntityScope.op.subject: {"user_id": "u1"},
    GetEntity.op.subject: {"entity_id": "e1"},
    ListEntities.op.subject: {"entity_type": "person", "name_prefix": "an"},
    ResolveEntity.op.subject: {"name": "Ann"},
    AssertRelation.op.subject: {"subject_id": "e1", "predicate": "lives_in", "object_id": "e2"},
    ExtractGraph.op.subject: {"memory_id": "m1"},
    DeclarePredicate.op.subject: {"predicate": "employer", "single_valued": True},
    ListPredicates.op.subject: {},
    InvalidateRelation.op.subject: {"relation_id": "e1_1"},
    RetractRelation.op.subject: {"relation_id": "e1_1", "reason": "wrong"},
    GraphNeighbors.op.subject: {"entity_id": "e1", "depth": 2},
    FindGraphPath.op.subject: {"from_id": "e1", "to_id": "e2"},
    GraphFacts.op.subject: {"entity_id": "e1", "as_of": 5},
    GraphStatsQuery.op.subject: {},
    AssociateMemories.op.subject: {"from_memory_id": "m1", "to_memory_id": "m2"},
    DissociateMemories.op.subject: {"from_memory_id": "m1", "to_memory_id": "m2"},
    MemoryAssociations.op.subject: {"memory_id": "m1"},
    AssembleContext.op.subject: {"agent_id": "a1", "query": "tea", "max_tokens": 1000},
    ForgetUser.op.subject: {"user_id": "u1"},
    ForgetAgent.op.subject: {"agent_id": "a1"},
    ForgetConversation.op.subject: {"session_id": "s1"},
    ForgetMemory.op.subject: {"memory_id": "m1"},
    ForgetMemoryScope.op.subject: {"user_id": "u1"},
}

# One field per subject given a value of the wrong JSON type.
WRONG_TYPES: dict[str, tuple[str, Any]] = {
    CreateOrg.op.subject: ("name", 5),
    RenameOrg.op.subject: ("org_id", 1),
    DeleteOrg.op.subject: ("org_id", ["o1"]),
    RegisterUser.op.subject: ("roles", "admin"),
    UpdateProfile.op.subject: ("name", 7),
    ChangePassword.op.subject: ("old_password", 12345678),
    SetRoles.op.subject: ("roles", [1]),
    DeleteUser.op.subject: ("expected_version", "3"),
    Login.op.subject: ("ttl_seconds", "3600"),
    Logout.op.subject: ("command_id", 5),
    CreateApiKey.op.subject: ("name", ["laptop"]),
    RevokeApiKey.op.subject: ("key_id", 1),
    GetOrg.op.subject: ("org_id", None),
    ListOrgs.op.subject: ("limit", "10"),
    GetUser.op.subject: ("user_id", 1.5),
    GetUserByEmail.op.subject: ("email", True),
    EmailExists.op.subject: ("email", {}),
    ListUsers.op.subject: ("cursor", 5),
    ListApiKeys.op.subject: ("user_id", False),
    GetHistory.op.subject: ("limit", "10"),
    Status.op.subject: ("after_seq", "x"),
    Health.op.subject: ("after_seq", []),
    Schema.op.subject: ("after_seq", "1"),
    CreateAgent.op.subject: ("tags", "support"),
    UpdateAgent.op.subject: ("model", [1]),
    ArchiveAgent.op.subject: ("expected_version", "3"),
    UnarchiveAgent.op.subject: ("agent_id", 5),
    DeleteAgent.op.subject: ("agent_id", None),
    SetAgentState.op.subject: ("state", [1, 2]),
    PatchAgentState.op.subject: ("patch", "x"),
    GetAgent.op.subject: ("agent_id", 1),
    ListAgents.op.subject: ("include_archived", "yes"),
    GetAgentState.op.subject: ("after_seq", "1"),
    RegisterTool.op.subject: ("parameters", "schema"),
    UpdateTool.op.subject: ("tags", "web"),
    DeleteTool.op.subject: ("tool_id", 1),
    GetTool.op.subject: ("name", 5),
    ListTools.op.subject: ("tags_all", "web"),
    AppendMessage.op.subject: ("message", "hi"),
    AppendMessages.op.subject: ("messages", {"role": "user", "content": "hi"}),
    RedactMessage.op.subject: ("reason", 5),
    DeleteConversation.op.subject: ("session_id", 1),
    ListMessages.op.subject: ("since", "yesterday"),
    LastMessages.op.subject: ("n", "5"),
    SearchMessages.op.subject: ("text", ["hello"]),
    AddMemory.op.subject: ("importance", "high"),
    AddMemories.op.subject: ("memories", {"content": "Ann likes tea"}),
    UpdateMemory.op.subject: ("tags", "food"),
    SupersedeMemory.op.subject: ("content", 5),
    ArchiveMemory.op.subject: ("memory_id", 1),
    RestoreMemory.op.subject: ("expected_version", "3"),
    DeleteMemory.op.subject: ("memory_id", None),
    DeleteMemoryScope.op.subject: ("user_id", 5),
    GetMemory.op.subject: ("memory_id", []),
    ListMemories.op.subject: ("states", "live"),
    SearchMemories.op.subject: ("text", 5),
    MemoryHistory.op.subject: ("limit", "10"),
    CreateBlock.op.subject: ("char_limit", "5000"),
    SetBlock.op.subject: ("content", ["I help."]),
    AppendToBlock.op.subject: ("separator", 1),
    ReplaceInBlock.op.subject: ("old_text", None),
    AttachBlock.op.subject: ("agent_id", 5),
    DetachBlock.op.subject: ("expected_version", "3"),
    DeleteBlock.op.subject: ("block_id", {}),
    GetBlock.op.subject: ("block_id", 1),
    ListBlocks.op.subject: ("limit", "10"),
    BlockHistory.op.subject: ("cursor", 5),
    PutWorkingItem.op.subject: ("priority", "high"),
    RemoveWorkingItem.op.subject: ("key", 1),
    ClearWorkingMemory.op.subject: ("session_id", ["s1"]),
    GetWorkingMemory.op.subject: ("min_priority", "0.5"),
    IngestStatus.op.subject: ("command_id", 5),
    MemoryStats.op.subject: ("memory_type", 5),
    CreateEntity.op.subject: ("aliases", "Annie"),
    RenameEntity.op.subject: ("name", 5),
    AddEntityAlias.op.subject: ("alias", ["a"]),
    RemoveEntityAlias.op.subject: ("alias", None),
    SetEntityAttributes.op.subject: ("attributes", [1]),
    MergeEntity.op.subject: ("into", 2),
    UnmergeEntity.op.subject: ("expected_version", "3"),
    DeleteEntity.op.subject: ("entity_id", 1),
    DeleteEntityScope.op.subject: ("agent_id", 5),
    GetEntity.op.subject: ("entity_id", []),
    ListEntities.op.subject: ("known_at_seq", "1"),
    ResolveEntity.op.subject: ("min_score", "high"),
    AssertRelation.op.subject: ("confidence", "high"),
    ExtractGraph.op.subject: ("extractor", 1),
    DeclarePredicate.op.subject: ("single_valued", "yes"),
    ListPredicates.op.subject: ("org_id", 5),
    InvalidateRelation.op.subject: ("valid_to", "now"),
    RetractRelation.op.subject: ("reason", 5),
    GraphNeighbors.op.subject: ("predicates", "knows"),
    FindGraphPath.op.subject: ("max_depth", "4"),
    GraphFacts.op.subject: ("as_of", "today"),
    GraphStatsQuery.op.subject: ("org_id", 5),
    AssociateMemories.op.subject: ("strength", "strong"),
    DissociateMemories.op.subject: ("association_type", 1),
    MemoryAssociations.op.subject: ("direction", 1),
    AssembleContext.op.subject: ("max_tokens", "1000"),
    ForgetUser.op.subject: ("user_id", 5),
    ForgetAgent.op.subject: ("agent_id", ["a1"]),
    ForgetConversation.op.subject: ("session_id", {"id": "s1"}),
    ForgetMemory.op.subject: ("memory_id", None),
    ForgetMemoryScope.op.subject: ("session_id", 1.5),
}


def required_fields(struct: type[msgspec.Struct]) -> list[str]:
    return [
        f.name
        for f in msgspec.structs.fields(struct)
        if f.default is msgspec.NODEFAULT and f.default_factory is msgspec.NODEFAULT
    ]


# The subjects the tables above cover: every request subject, as the first test checks (a
# subject missing from them fails that test instead of the module's collection).
SUBJECTS = [s for s in sorted(REQUEST_TYPES) if s in VALID]
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


# The shared service (module_service in conftest.py), over NATS -------------------------------
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
async def bus(module_service: Service, module_server: NatsServer) -> AsyncIterator[Bus]:
    connection = await nats.connect(module_server.url)
    yield Bus(connection, admin_key(module_service.settings.data_dir))
    await connection.close()


# Helpers -----------------------------------------------------------------------------
async def last_seq(bus: Bus) -> int:
    info = await bus.nc.jetstream().stream_info(subjects.STREAM_NAME)
    return int(info.state.last_seq)


async def still_answers(bus: Bus) -> None:
    reply = envelope.decode(await bus.ask(Health.op.subject, b"{}", headers={}))
    assert reply.ok, reply
    assert reply.data["live"] is True, reply.data
    listed = envelope.decode(await bus.ask(ListOrgs.op.subject, b"{}"))
    assert listed.ok, listed


# What ``details.reason`` of an ``invalid`` reply may be (docs/protocol.md, "Where and why
# an invalid request fails").
REASONS = {
    "malformed_json",
    "not_utf8",
    "wrong_type",
    "missing_field",
    "unknown_field",
    "out_of_range",
    "too_long",
    "too_short",
    "pattern",
    "invalid_value",
    "too_large",
    "too_deep",
    "nul_character",
    "unknown_subject",
}


def at_or_under(path: str, field: str) -> bool:
    """Whether the JSON path ``path`` is ``$.<field>`` or a path inside it."""
    top = f"$.{field}"
    return path == top or path.startswith((f"{top}.", f"{top}["))


async def assert_invalid(
    bus: Bus,
    subject: str,
    payload: bytes,
    *mentions: str,
    path: str | None = None,
    under: str | None = None,
    reason: str | None = None,
) -> str:
    """Send ``payload`` as the administrator; the reply must be ``invalid``, name each of
    ``mentions``, and say where and why in ``details``: exactly ``path``, or a path at or
    under the field ``under``, and ``reason``."""
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
    details = reply.error.details
    # Every invalid reply says where (a JSON path) and why (one of a few words).
    assert str(details.get("path", "")).startswith("$"), details
    assert details.get("reason") in REASONS, details
    if path is not None:
        assert details["path"] == path, details
    if under is not None:
        assert at_or_under(details["path"], under), details
    if reason is not None:
        assert details["reason"] == reason, details
    assert await last_seq(bus) == before, "a bad request appended to the log"
    await still_answers(bus)
    return text


def encode(body: Any) -> bytes:
    return msgspec.json.encode(body)


# The tables themselves ---------------------------------------------------------------
async def test_the_tables_here_cover_every_route(module_service: Service) -> None:
    assert module_service.dispatcher is not None
    routes = module_service.dispatcher.router.routes
    assert set(routes) == set(REQUEST_TYPES)
    untested = set(REQUEST_TYPES) - set(VALID)
    assert not untested, f"add these subjects to the tables of this module: {sorted(untested)}"
    for subject, route in routes.items():
        assert route.decoder.type is REQUEST_TYPES[subject]
    assert {s for s, route in routes.items() if route.public} == PUBLIC
    assert set(VALID) == set(WRONG_TYPES) == set(REQUEST_TYPES)


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
        if subject not in (Login.op.subject, Logout.op.subject):
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
    # Bytes that are not UTF-8 are malformed JSON that protocol.md names as such.
    reason = "not_utf8" if kind == "bytes" else "malformed_json"
    await assert_invalid(
        bus, subject, malformed(subject, kind), "malformed JSON", path="$", reason=reason
    )


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_invalid_utf8_inside_a_string(bus: Bus, subject: str) -> None:
    field = first_string_field(subject)
    if field is None:
        payload = b'{"\xff": 1}'
    else:
        prefix = encode({k: v for k, v in VALID[subject].items() if k != field})[:-1]
        payload = prefix + (b"," if prefix != b"{" else b"") + f'"{field}": "'.encode()
        payload += b'\xff\xfe"}'
    await assert_invalid(bus, subject, payload, "UTF-8", path="$", reason="not_utf8")


# protocol.md documents one message for a body that is not UTF-8, wherever the bad bytes are.
NOT_UTF8 = [
    b'{"name": "caf\xe9"}',  # Latin-1
    b"\xff\xfe{\x00}\x00",  # UTF-16 with its byte-order mark
    b'{"name": "Acme"}\xff',  # after the document
    b'{"name": "Acme", \xc3}',  # between members
]


@pytest.mark.parametrize("payload", NOT_UTF8)
async def test_a_body_that_is_not_utf8_says_so_wherever_the_bytes_are(
    bus: Bus, payload: bytes
) -> None:
    text = await assert_invalid(
        bus,
        CreateOrg.op.subject,
        payload,
        "malformed JSON: Invalid UTF-8 encoded string",
        path="$",
        reason="not_utf8",
    )
    assert "byte" in text


LONE_SURROGATES = [
    (b'{"name": "\\ud83c"}', "$.name"),  # a high surrogate at the end of a string
    (b'{"name": "\\ud83cx"}', "$.name"),
    (b'{"name": "a\\udc00b"}', "$.name"),  # a low surrogate alone
    (b'{"name": "\\ud83c\\u0041"}', "$.name"),
    (b'{"name": "Acme", "command_id": "\\ud800"}', "$.command_id"),
]


@pytest.mark.parametrize(("payload", "path"), LONE_SURROGATES)
async def test_a_lone_surrogate_escape_is_named(bus: Bus, payload: bytes, path: str) -> None:
    # It was "Input data was truncated", which sends a person looking for a cut message.
    text = await assert_invalid(
        bus, CreateOrg.op.subject, payload, "surrogate", path=path, reason="malformed_json"
    )
    assert "truncated" not in text


async def test_a_surrogate_pair_and_an_escaped_backslash_are_fine(bus: Bus) -> None:
    # A pair of escapes; a backslash, then "ud83c"; an escaped backslash before a pair.
    for payload in [
        b'{"name": "\\ud83c\\udf4c"}',
        b'{"name": "\\\\ud83c"}',
        b'{"name": "\\\\\\ud83c\\udf4c"}',
    ]:
        reply = envelope.decode(await bus.ask(CreateOrg.op.subject, payload))
        assert reply.ok, (payload, reply)


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
    await assert_invalid(
        bus, subject, payload, "Expected `object`", f"got `{got}`", path="$", reason="wrong_type"
    )


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_wrong_type(bus: Bus, subject: str) -> None:
    field, value = WRONG_TYPES[subject]
    body = {**VALID[subject], field: value}
    await assert_invalid(
        bus, subject, encode(body), f"`$.{field}", "Expected", under=field, reason="wrong_type"
    )


@pytest.mark.parametrize(("subject", "field"), MISSING)
async def test_missing_field(bus: Bus, subject: str, field: str) -> None:
    body = {k: v for k, v in VALID[subject].items() if k != field}
    await assert_invalid(
        bus,
        subject,
        encode(body),
        "missing required field",
        f"`{field}`",
        path=f"$.{field}",
        reason="missing_field",
    )


@pytest.mark.parametrize("subject", [s for s in SUBJECTS if required_fields(REQUEST_TYPES[s])])
async def test_empty_payload_misses_the_required_fields(bus: Bus, subject: str) -> None:
    first = required_fields(REQUEST_TYPES[subject])[0]
    await assert_invalid(
        bus,
        subject,
        b"",
        "missing required field",
        f"`{first}`",
        path=f"$.{first}",
        reason="missing_field",
    )


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_unknown_field(bus: Bus, subject: str) -> None:
    body = {**VALID[subject], "bogus_field": 1}
    await assert_invalid(
        bus,
        subject,
        encode(body),
        "unknown field",
        "bogus_field",
        path="$.bogus_field",
        reason="unknown_field",
    )


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_oversized_payload(bus: Bus, subject: str) -> None:
    body = {**VALID[subject], "padding": "x" * (MAX_REQUEST_BYTES + 1000)}
    payload = encode(body)
    assert MAX_REQUEST_BYTES < len(payload) < NATS_MAX_PAYLOAD
    await assert_invalid(
        bus,
        subject,
        payload,
        str(MAX_REQUEST_BYTES),
        str(len(payload)),
        path="$",
        reason="too_large",
    )


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
        text = await assert_invalid(
            bus, subject, payload, subject, "unknown subject", path="$", reason="unknown_subject"
        )
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
    reason = "too_long" if len(email) > 254 else "pattern"
    await assert_invalid(bus, subject, encode(body), "`$.email`", path="$.email", reason=reason)


BAD_VALUES = [
    (CreateOrg.op.subject, "name", "", "too_short"),
    (CreateOrg.op.subject, "name", "x" * 201, "too_long"),
    (CreateOrg.op.subject, "command_id", "a.b", "pattern"),
    (CreateOrg.op.subject, "command_id", "x" * 65, "pattern"),
    (CreateOrg.op.subject, "command_id", "", "pattern"),
    # A trailing newline must not slip past the id pattern into a header or a subject.
    (CreateOrg.op.subject, "command_id", "retry-1\n", "pattern"),
    (RenameOrg.op.subject, "org_id", "o1\n", "pattern"),
    (RenameOrg.op.subject, "expected_version", -1, "out_of_range"),
    (DeleteOrg.op.subject, "org_id", "o.*", "pattern"),
    (DeleteOrg.op.subject, "org_id", ">", "pattern"),
    (RegisterUser.op.subject, "password", "short", "too_short"),
    (RegisterUser.op.subject, "password", "p" * 1025, "too_long"),
    (RegisterUser.op.subject, "roles", [], "too_short"),
    (RegisterUser.op.subject, "roles", ["root"], "invalid_value"),
    (RegisterUser.op.subject, "org_id", "o 1", "pattern"),
    (UpdateProfile.op.subject, "name", "", "too_short"),
    (UpdateProfile.op.subject, "user_id", "u1\n", "pattern"),
    (ChangePassword.op.subject, "new_password", "short", "too_short"),
    (ChangePassword.op.subject, "old_password", "o" * 1025, "too_long"),
    (SetRoles.op.subject, "roles", ["admin", "member", "readonly", "admin"], "too_long"),
    (SetRoles.op.subject, "roles", ["owner"], "invalid_value"),
    (DeleteUser.op.subject, "user_id", "x" * 65, "pattern"),
    (DeleteUser.op.subject, "command_id", "c\r\nX-Injected: 1", "pattern"),
    (GetOrg.op.subject, "org_id", "", "pattern"),
    (ListOrgs.op.subject, "limit", 0, "out_of_range"),
    (ListOrgs.op.subject, "limit", 501, "out_of_range"),
    (ListOrgs.op.subject, "cursor", "c" * 16_385, "too_long"),
    (GetUser.op.subject, "after_seq", -1, "out_of_range"),
    (ListUsers.op.subject, "limit", -5, "out_of_range"),
    (Status.op.subject, "after_seq", -1, "out_of_range"),
    (ListUsers.op.subject, "org_id", "o 1", "pattern"),
    (Login.op.subject, "password", "p" * 1025, "too_long"),
    (Login.op.subject, "ttl_seconds", 0, "out_of_range"),
    (Login.op.subject, "ttl_seconds", 30 * 24 * 3600 + 1, "out_of_range"),
    (Login.op.subject, "command_id", "a.b", "pattern"),
    (Logout.op.subject, "command_id", "x" * 65, "pattern"),
    (CreateApiKey.op.subject, "name", "", "too_short"),
    (CreateApiKey.op.subject, "name", "x" * 201, "too_long"),
    (CreateApiKey.op.subject, "user_id", "u1\n", "pattern"),
    (RevokeApiKey.op.subject, "key_id", "k.*", "pattern"),
    (RevokeApiKey.op.subject, "user_id", ">", "pattern"),
    (ListApiKeys.op.subject, "user_id", "u 1", "pattern"),
    (ListApiKeys.op.subject, "after_seq", -1, "out_of_range"),
    (GetHistory.op.subject, "aggregate", "apikey", "invalid_value"),
    (GetHistory.op.subject, "aggregate", "", "invalid_value"),
    (GetHistory.op.subject, "id", "", "pattern"),
    (GetHistory.op.subject, "id", "o1.>", "pattern"),
    (GetHistory.op.subject, "limit", 0, "out_of_range"),
    (GetHistory.op.subject, "limit", 501, "out_of_range"),
    (GetHistory.op.subject, "cursor", "c" * 16_385, "too_long"),
    (CreateAgent.op.subject, "name", "", "too_short"),
    (CreateAgent.op.subject, "description", "d" * 4001, "too_long"),
    (CreateAgent.op.subject, "tags", ["t"] * 33, "too_long"),
    (CreateAgent.op.subject, "tags", [""], "too_short"),
    (CreateAgent.op.subject, "agent_id", "a_1", "pattern"),
    (CreateAgent.op.subject, "org_id", "o.1", "pattern"),
    (UpdateAgent.op.subject, "agent_id", "a.b", "pattern"),
    (UpdateAgent.op.subject, "persona", "p" * 100_001, "too_long"),
    (UpdateAgent.op.subject, "tags", ["t" * 65], "too_long"),
    (ArchiveAgent.op.subject, "agent_id", "a1\n", "pattern"),
    (DeleteAgent.op.subject, "expected_version", -1, "out_of_range"),
    (SetAgentState.op.subject, "expected_version", -1, "out_of_range"),
    (PatchAgentState.op.subject, "agent_id", ">", "pattern"),
    (GetAgent.op.subject, "agent_id", "", "pattern"),
    (ListAgents.op.subject, "name_prefix", "", "too_short"),
    (ListAgents.op.subject, "name_prefix", "n" * 201, "too_long"),
    (ListAgents.op.subject, "tag", "t" * 65, "too_long"),
    (ListAgents.op.subject, "limit", 501, "out_of_range"),
    (GetAgentState.op.subject, "agent_id", "a*", "pattern"),
    (RegisterTool.op.subject, "name", "get weather", "pattern"),
    (RegisterTool.op.subject, "name", "get.weather", "pattern"),
    (RegisterTool.op.subject, "name", "x" * 65, "pattern"),
    (RegisterTool.op.subject, "name", "", "pattern"),
    (RegisterTool.op.subject, "tool_id", "t_1", "pattern"),
    (UpdateTool.op.subject, "name", "a b", "pattern"),
    (UpdateTool.op.subject, "description", "d" * 4001, "too_long"),
    (DeleteTool.op.subject, "tool_id", "t1\n", "pattern"),
    (GetTool.op.subject, "name", "a/b", "pattern"),
    (ListTools.op.subject, "tags_any", ["t"] * 33, "too_long"),
    (ListTools.op.subject, "tags_all", [""], "too_short"),
    (ListTools.op.subject, "cursor", "c" * 16_385, "too_long"),
    (AppendMessage.op.subject, "session_id", "s.1", "pattern"),
    (AppendMessage.op.subject, "session_id", "", "pattern"),
    (AppendMessage.op.subject, "agent_id", "a*", "pattern"),
    (AppendMessage.op.subject, "user_id", "u 1", "pattern"),
    (AppendMessage.op.subject, "message", {"role": "robot", "content": "hi"}, "invalid_value"),
    (AppendMessage.op.subject, "message", {"role": "user"}, "missing_field"),
    (AppendMessage.op.subject, "message", {"role": "user", "content": "c" * 100_001}, "too_long"),
    (
        AppendMessage.op.subject,
        "message",
        {"role": "user", "content": "hi", "extra": 1},
        "unknown_field",
    ),
    (
        AppendMessage.op.subject,
        "message",
        {"role": "tool", "content": "", "tool_call_id": "a.b"},
        "pattern",
    ),
    (
        AppendMessage.op.subject,
        "message",
        {"role": "user", "content": "", "tool_calls": [1]},
        "wrong_type",
    ),
    (AppendMessages.op.subject, "messages", [], "too_short"),
    (
        AppendMessages.op.subject,
        "messages",
        [{"role": "user", "content": "x"}] * 1001,
        "too_long",
    ),
    (
        AppendMessages.op.subject,
        "messages",
        [{"role": "user", "content": "x"}, {}],
        "missing_field",
    ),
    (AppendMessages.op.subject, "org_id", "o>", "pattern"),
    (RedactMessage.op.subject, "message_id", "m\n", "pattern"),
    (RedactMessage.op.subject, "reason", "r" * 4001, "too_long"),
    (DeleteConversation.op.subject, "session_id", "x" * 65, "pattern"),
    (ListMessages.op.subject, "order", "sideways", "invalid_value"),
    (ListMessages.op.subject, "since", -1, "out_of_range"),
    (ListMessages.op.subject, "until", 1.5, "wrong_type"),
    (ListMessages.op.subject, "role", "robot", "invalid_value"),
    (ListMessages.op.subject, "limit", 501, "out_of_range"),
    (ListMessages.op.subject, "cursor", "c" * 16_385, "too_long"),
    (LastMessages.op.subject, "n", 0, "out_of_range"),
    (LastMessages.op.subject, "n", 501, "out_of_range"),
    (LastMessages.op.subject, "session_id", "s 1", "pattern"),
    (SearchMessages.op.subject, "text", "", "too_short"),
    (SearchMessages.op.subject, "text", "t" * 1001, "too_long"),
    (SearchMessages.op.subject, "role", "robot", "invalid_value"),
    (SearchMessages.op.subject, "limit", 0, "out_of_range"),
    (SearchMessages.op.subject, "mode", "semantic", "invalid_value"),
    (SearchMessages.op.subject, "min_score", 1.5, "out_of_range"),
    (SearchMessages.op.subject, "session_id", "s.>", "pattern"),
    (CreateBlock.op.subject, "label", "", "pattern"),
    (CreateBlock.op.subject, "label", "a/b", "pattern"),
    (CreateBlock.op.subject, "label", "l" * 101, "pattern"),
    (CreateBlock.op.subject, "char_limit", 0, "out_of_range"),
    (CreateBlock.op.subject, "char_limit", 50_001, "out_of_range"),
    (CreateBlock.op.subject, "content", "c" * 50_001, "too_long"),
    (CreateBlock.op.subject, "block_id", "b_1", "pattern"),
    (CreateBlock.op.subject, "description", "d" * 1_001, "too_long"),
    (SetBlock.op.subject, "block_id", "b.1", "pattern"),
    (AppendToBlock.op.subject, "content", "", "too_short"),
    (AppendToBlock.op.subject, "separator", "s" * 17, "too_long"),
    (ReplaceInBlock.op.subject, "old_text", "", "too_short"),
    (AttachBlock.op.subject, "agent_id", "a>", "pattern"),
    (ListBlocks.op.subject, "limit", 501, "out_of_range"),
    (PutWorkingItem.op.subject, "priority", 1.5, "out_of_range"),
    (PutWorkingItem.op.subject, "ttl_ms", 0, "out_of_range"),
    (PutWorkingItem.op.subject, "ttl_ms", 30 * 24 * 3600 * 1000 + 1, "out_of_range"),
    (PutWorkingItem.op.subject, "content", "", "too_short"),
    (PutWorkingItem.op.subject, "content", "c" * 10_001, "too_long"),
    (PutWorkingItem.op.subject, "key", "k.1", "pattern"),
    (RemoveWorkingItem.op.subject, "session_id", "s 1", "pattern"),
    (GetWorkingMemory.op.subject, "min_priority", -0.1, "out_of_range"),
    (ListMemories.op.subject, "order_by", "decay", "invalid_value"),
    # Past a store's 64-bit integer: it stalled the memories projection.
    (AddMemory.op.subject, "expires_at", 2**63, "out_of_range"),
    (AddMemory.op.subject, "valid_from", 253_402_300_800_000, "out_of_range"),
    (ListMemories.op.subject, "known_at_seq", -1, "out_of_range"),
    (ListMemories.op.subject, "metadata_filter", [], "wrong_type"),
    (SearchMemories.op.subject, "known_at", -5, "out_of_range"),
    (SearchMemories.op.subject, "states", ["gone"], "invalid_value"),
    (MemoryStats.op.subject, "memory_type", "core", "invalid_value"),
    (CreateEntity.op.subject, "entity_type", "Person", "pattern"),
    (CreateEntity.op.subject, "name", "", "too_short"),
    (CreateEntity.op.subject, "name", "n" * 201, "too_long"),
    (CreateEntity.op.subject, "name", "   ", "invalid_value"),
    (CreateEntity.op.subject, "aliases", ["a"] * 33, "too_long"),
    (AddEntityAlias.op.subject, "alias", "", "too_short"),
    (AssertRelation.op.subject, "predicate", "Lives In", "pattern"),
    (AssertRelation.op.subject, "confidence", 1.5, "out_of_range"),
    (AssertRelation.op.subject, "valid_from", -1, "out_of_range"),
    (AssertRelation.op.subject, "fact", "f" * 2001, "too_long"),
    (AssertRelation.op.subject, "source", {"memory_ids": ["a.b"]}, "pattern"),
    (InvalidateRelation.op.subject, "relation_id", "e1", "pattern"),
    (RetractRelation.op.subject, "relation_id", "e1_x", "pattern"),
    (GraphNeighbors.op.subject, "depth", 5, "out_of_range"),
    (GraphNeighbors.op.subject, "limit", 1001, "out_of_range"),
    (GraphNeighbors.op.subject, "min_confidence", -0.1, "out_of_range"),
    (GraphNeighbors.op.subject, "entity_types", ["a b"], "pattern"),
    (FindGraphPath.op.subject, "max_depth", 7, "out_of_range"),
    (GraphFacts.op.subject, "known_at_seq", -1, "out_of_range"),
    (ResolveEntity.op.subject, "limit", 51, "out_of_range"),
    (ResolveEntity.op.subject, "name", " ", "invalid_value"),
    (AssociateMemories.op.subject, "strength", 2, "out_of_range"),
    (AssociateMemories.op.subject, "association_type", "Causal", "pattern"),
    (MemoryAssociations.op.subject, "direction", "up", "invalid_value"),
]

# Metadata filters outside the language or its bounds: where the reply says, and why.
BAD_FILTERS: list[tuple[Any, str, str]] = [
    ({}, "$.metadata_filter", "too_short"),
    ({"city": {"like": "P%"}}, "$.metadata_filter.city.like", "invalid_value"),
    ({"city": {}}, "$.metadata_filter.city", "too_short"),
    ({"n": {"gt": True}}, "$.metadata_filter.n.gt", "wrong_type"),
    ({"n": {"gt": None}}, "$.metadata_filter.n.gt", "wrong_type"),
    ({"n": {"in": "a"}}, "$.metadata_filter.n.in", "wrong_type"),
    ({"n": {"in": []}}, "$.metadata_filter.n.in", "too_short"),
    ({"n": {"nin": list(range(101))}}, "$.metadata_filter.n.nin", "too_long"),
    ({"n": {"eq": [1]}}, "$.metadata_filter.n.eq", "wrong_type"),
    ({"n": {"eq": {"a": 1}}}, "$.metadata_filter.n.eq", "wrong_type"),
    ({"n": {"contains": None}}, "$.metadata_filter.n.contains", "wrong_type"),
    ({"n": 2**64}, "$.metadata_filter.n", "out_of_range"),
    ({"n": "x" * 1001}, "$.metadata_filter.n", "too_long"),
    ({"a'b": 1}, '$.metadata_filter["a\'b"]', "pattern"),
    ({"a.b.c.d.e": 1}, '$.metadata_filter["a.b.c.d.e"]', "pattern"),
    ({"or": {"a": 1}}, "$.metadata_filter.or", "wrong_type"),
    ({"or": []}, "$.metadata_filter.or", "too_short"),
    ({"and": [{"a": 1}, 5]}, "$.metadata_filter.and[1]", "wrong_type"),
    ({"not": [{"a": 1}]}, "$.metadata_filter.not", "wrong_type"),
    (
        {"not": {"not": {"not": {"not": {"not": {"not": {"a": 1}}}}}}},
        "$.metadata_filter.not.not.not.not.not.not",
        "too_deep",
    ),
    ({"or": [{"a": i} for i in range(65)]}, "$.metadata_filter.or", "too_long"),
    (
        {"and": [{"a": {"in": [1], "gt": 0}} for _ in range(33)]},
        "$.metadata_filter.and[32].a.in",
        "too_long",
    ),
]


@pytest.mark.parametrize("subject", [ListMemories.op.subject, SearchMemories.op.subject])
@pytest.mark.parametrize(("document", "path", "reason"), BAD_FILTERS)
async def test_a_bad_metadata_filter(
    bus: Bus, subject: str, document: Any, path: str, reason: str
) -> None:
    body = {**VALID[subject], "metadata_filter": document}
    await assert_invalid(bus, subject, encode(body), path=path, reason=reason)


async def test_known_at_once(bus: Bus) -> None:
    body = {**VALID[ListMemories.op.subject], "known_at": 5, "known_at_seq": 5}
    await assert_invalid(bus, ListMemories.op.subject, encode(body), "known_at", path="$.known_at")


@pytest.mark.parametrize(
    ("subject", "field", "value", "reason"),
    [pytest.param(s, f, v, r, id=f"{s}-{f}-{i}") for i, (s, f, v, r) in enumerate(BAD_VALUES)],
)
async def test_bad_value(bus: Bus, subject: str, field: str, value: Any, reason: str) -> None:
    body = {**VALID[subject], field: value}
    await assert_invalid(bus, subject, encode(body), f"`$.{field}", under=field, reason=reason)


def _unbounded(t: Any, path: str) -> list[str]:
    """The numbers under ``t`` (a msgspec type description) that have no upper bound."""
    if isinstance(t, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        return [path] if t.le is None and t.lt is None else []
    if isinstance(t, msgspec.inspect.UnionType):
        return [p for member in t.types for p in _unbounded(member, path)]
    if isinstance(t, msgspec.inspect.ListType | msgspec.inspect.VarTupleType):
        return _unbounded(t.item_type, f"{path}[]")
    if isinstance(t, msgspec.inspect.DictType):
        return _unbounded(t.value_type, f"{path}{{}}")
    if isinstance(t, msgspec.inspect.StructType):
        return [p for f in t.fields for p in _unbounded(f.type, f"{path}.{f.name}")]
    return []


async def test_every_number_a_request_carries_is_bounded() -> None:
    """An integer past what a store's signed 64 bits hold, once accepted into the log,
    stalled a projection for every organization; a time past year 9999 or a sequence past
    2**63 - 1 is refused at the door instead (agentmem.commands: TimeMs, Version)."""
    found = {
        subject: _unbounded(msgspec.inspect.type_info(request), "$")
        for subject, request in REQUEST_TYPES.items()
    }
    assert {s: paths for s, paths in found.items() if paths} == {}


TOO_BIG = [
    (RenameOrg.op.subject, "expected_version", 2**63),
    (GetUser.op.subject, "after_seq", 2**63),
    (AssertRelation.op.subject, "valid_from", 2**63),
    (AssertRelation.op.subject, "valid_to", 253_402_300_800_000),
    (InvalidateRelation.op.subject, "valid_to", 2**63),
    (GraphFacts.op.subject, "as_of", 2**63),
    (GraphNeighbors.op.subject, "known_at", 2**63),
    (GetEntity.op.subject, "known_at_seq", 2**63),
    (ListMemories.op.subject, "known_at_seq", 2**63),
    (SearchMemories.op.subject, "known_at_seq", 2**64),
    (ListMessages.op.subject, "since", 2**63),
]


@pytest.mark.parametrize(("subject", "field", "value"), TOO_BIG)
async def test_a_number_past_what_the_stores_hold(
    bus: Bus, subject: str, field: str, value: int
) -> None:
    body = {**VALID[subject], field: value}
    await assert_invalid(bus, subject, encode(body), path=f"$.{field}", reason="out_of_range")


async def test_entity_attributes_over_the_cap(bus: Bus) -> None:
    body = {**VALID[CreateEntity.op.subject], "attributes": {"x": "y" * 20_000}}
    await assert_invalid(
        bus, CreateEntity.op.subject, encode(body), "bytes", path="$.attributes", reason="too_large"
    )


async def test_a_cursor_the_service_never_made(bus: Bus) -> None:
    # Valid base64 whose bytes are not UTF-8.
    where = {"path": "$.cursor", "reason": "invalid_value"}
    body = {"org_id": "o1", "cursor": "_w"}
    text = await assert_invalid(bus, ListUsers.op.subject, encode(body), "cursor", **where)
    assert "_w" in text or "returned" in text
    body = {"aggregate": "org", "id": "o1", "cursor": "_w"}
    text = await assert_invalid(bus, GetHistory.op.subject, encode(body), "cursor", **where)
    assert "_w" in text or "returned" in text
    for subject in (ListAgents.op.subject, ListTools.op.subject):
        await assert_invalid(bus, subject, encode({"cursor": "_w"}), "cursor", **where)
    body = {"session_id": "s1", "cursor": "_w"}
    await assert_invalid(bus, ListMessages.op.subject, encode(body), "cursor", **where)
    # The service's own cursor format, from another subject: a key that is no position.
    body = {"session_id": "s1", "cursor": encode_cursor("not-a-position")}
    await assert_invalid(bus, ListMessages.op.subject, encode(body), "cursor", **where)
    # A log position past any sequence (the log refused the read: it answered unavailable),
    # and digits int() cannot read.
    for forged in ("9" * 30, str(2**63), "\u00b2\u00b3"):
        body = {"aggregate": "org", "id": "o1", "cursor": encode_cursor(forged)}
        await assert_invalid(bus, GetHistory.op.subject, encode(body), "cursor", **where)
    # A key with a NUL, which Postgres text cannot hold: it was `internal` there.
    # (An entity.list key is a name and an id, a NUL between them: a second NUL.)
    for lists, key in (
        (ListOrgs, "a\x00b"),
        (ListUsers, "a\x00b"),
        (ListAgents, "a\x00b"),
        (ListTools, "a\x00b"),
        (ListEntities, "a\x00b\x00c"),
    ):
        body = {**VALID[lists.op.subject], "cursor": encode_cursor(key)}
        await assert_invalid(bus, lists.op.subject, encode(body), "cursor", **where)


# Values of the right shape that a handler refuses: still invalid, still nothing appended.
async def test_a_block_write_over_its_limit_or_without_one_owner(bus: Bus) -> None:
    client = Client(bus.nc, bus.admin_token)
    made = await client.create_block("bounded", "12345", user_id="u-limit", char_limit=6)
    block_id = made.fields["block_id"]
    where = {"reason": "too_long"}
    for subject, body, path in (
        (
            CreateBlock.op.subject,
            {"label": "x", "content": "ab", "char_limit": 1, "user_id": "u"},
            "$.content",
        ),
        (SetBlock.op.subject, {"block_id": block_id, "content": "1234567"}, "$.content"),
        (AppendToBlock.op.subject, {"block_id": block_id, "content": "67"}, "$.content"),
        (
            ReplaceInBlock.op.subject,
            {"block_id": block_id, "old_text": "5", "new_text": "567"},
            "$.new_text",
        ),
    ):
        await assert_invalid(bus, subject, encode(body), "over its limit", path=path, **where)
    for body in ({"label": "x"}, {"label": "x", "user_id": "u", "agent_id": "a"}):
        await assert_invalid(
            bus, CreateBlock.op.subject, encode(body), "exactly one agent or one user", path="$"
        )
    await assert_invalid(
        bus, ListBlocks.op.subject, b"{}", "exactly one agent or one user", path="$"
    )


async def test_a_state_document_over_the_cap(bus: Bus) -> None:
    client = Client(bus.nc, bus.admin_token)
    agent_id = (await client.create_agent("Capped")).fields["agent_id"]
    body = {"agent_id": agent_id, "state": {"k": "x" * MAX_STATE_BYTES}}
    await assert_invalid(
        bus,
        SetAgentState.op.subject,
        encode(body),
        "state document",
        path="$.state",
        reason="too_large",
    )
    deep: dict[str, Any] = {}
    for _ in range(100):
        deep = {"a": deep}
    body = {"agent_id": agent_id, "patch": deep}
    await assert_invalid(
        bus,
        PatchAgentState.op.subject,
        encode(body),
        "levels deep",
        path="$.patch",
        reason="too_deep",
    )


@pytest.mark.parametrize(
    ("parameters", "path", "reason"),
    [
        ({"type": "objekt"}, "$.parameters.type", "invalid_value"),
        ({"type": "object", "properties": {"a": {"type": 5}}}, None, "invalid_value"),
        ({"type": "string"}, "$.parameters.type", "invalid_value"),
        ({"type": "object", "description": "x" * 70_000}, "$.parameters", "too_large"),
    ],
)
async def test_tool_parameters_that_are_no_object_schema(
    bus: Bus, parameters: dict[str, Any], path: str | None, reason: str
) -> None:
    body = {"name": f"broken_{ids.new_id()}", "parameters": parameters}
    await assert_invalid(
        bus,
        RegisterTool.op.subject,
        encode(body),
        "parameters",
        path=path,
        under="parameters",
        reason=reason,
    )


async def test_a_search_for_no_one(bus: Bus) -> None:
    for body in ({"text": "hello"}, {"text": "hello", "session_id": "s1", "role": "user"}):
        await assert_invalid(
            bus,
            SearchMessages.op.subject,
            encode(body),
            "agent_id or user_id",
            path="$",
            reason="missing_field",
        )


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_a_nul_character_in_any_string(bus: Bus, subject: str) -> None:
    # Postgres text cannot hold U+0000, so no request may carry one (a projection on
    # Postgres would have to park its event). The field need not even exist.
    body = {**VALID[subject], "no_such_field": "a\u0000b"}
    await assert_invalid(
        bus, subject, encode(body), "NUL", path="$.no_such_field", reason="nul_character"
    )


async def test_an_escaped_backslash_before_u0000_is_no_nul(bus: Bus) -> None:
    client = Client(bus.nc, bus.admin_token)
    agent_id = (await client.create_agent("Talker")).fields["agent_id"]
    written = await client.append_message("s1", agent_id, "user", "C:\\u0000 is a path")
    assert written.fields["content"] == "C:\\u0000 is a path"


async def test_a_tool_named_by_neither_or_both(bus: Bus) -> None:
    for body, reason in (({}, "missing_field"), ({"tool_id": "t1", "name": "n"}, "invalid_value")):
        await assert_invalid(
            bus, GetTool.op.subject, encode(body), "exactly one", path="$", reason=reason
        )


def deep_json(levels: int, kind: str = "object") -> bytes:
    """A JSON document ``levels`` deep, written as text (msgspec could not encode it)."""
    if kind == "object":
        return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)
    return b"[" * levels + b"]" * levels


def with_document(body: dict[str, Any], path: list[str | int], document: bytes) -> bytes:
    """``body`` as JSON, with ``document`` at ``path`` (member names and array indexes)."""
    marker = "@@deep@@"
    body = msgspec.json.decode(msgspec.json.encode(body))
    holder: Any = body
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = marker
    return encode(body).replace(b'"' + marker.encode() + b'"', document)


# Every free-form JSON document a request carries (issue 15, item 6), and where it sits.
DEEP_FIELDS: list[tuple[str, list[str | int], str]] = [
    (SetAgentState.op.subject, ["state"], "$.state"),
    (PatchAgentState.op.subject, ["patch"], "$.patch"),
    (CreateAgent.op.subject, ["model"], "$.model"),
    (CreateAgent.op.subject, ["metadata"], "$.metadata"),
    (UpdateAgent.op.subject, ["model"], "$.model"),
    (UpdateAgent.op.subject, ["metadata"], "$.metadata"),
    (RegisterTool.op.subject, ["parameters"], "$.parameters"),
    (UpdateTool.op.subject, ["parameters"], "$.parameters"),
    (AppendMessage.op.subject, ["metadata"], "$.metadata"),
    (AppendMessages.op.subject, ["messages", 0, "metadata"], "$.messages[0].metadata"),
    (AddMemory.op.subject, ["metadata"], "$.metadata"),
    (AddMemories.op.subject, ["memories", 0, "metadata"], "$.memories[0].metadata"),
    (UpdateMemory.op.subject, ["metadata"], "$.metadata"),
    (SupersedeMemory.op.subject, ["metadata"], "$.metadata"),
    (PutWorkingItem.op.subject, ["metadata"], "$.metadata"),
    (CreateEntity.op.subject, ["attributes"], "$.attributes"),
    (SetEntityAttributes.op.subject, ["attributes"], "$.attributes"),
]


@pytest.mark.parametrize("levels", [65, 1_000, 40_000])
@pytest.mark.parametrize(("subject", "where", "path"), DEEP_FIELDS)
async def test_a_deep_document_in_any_free_form_field(
    bus: Bus, subject: str, where: list[str | int], path: str, levels: int
) -> None:
    # 1,000 levels answered ``internal`` (msgspec's RecursionError reached the router), and
    # ``model`` and ``metadata`` took 960: every document is bounded at 64 levels.
    payload = with_document(VALID[subject], where, deep_json(levels))
    text = await assert_invalid(bus, subject, payload, "levels", path=path, reason="too_deep")
    assert str(levels) in text, text


@pytest.mark.parametrize("subject", SUBJECTS)
async def test_deep_json_on_any_subject(bus: Bus, subject: str) -> None:
    # Refused before anything decodes it, even in a field the request does not have.
    payload = with_document(VALID[subject], ["no_such_field"], deep_json(1_000, "array"))
    await assert_invalid(bus, subject, payload, "levels", path="$.no_such_field", reason="too_deep")


async def test_a_document_64_levels_deep_is_taken(bus: Bus) -> None:
    client = Client(bus.nc, bus.admin_token)
    agent_id = (await client.create_agent("Deep")).fields["agent_id"]
    body = {"agent_id": agent_id, "state": {}}
    reply = envelope.decode(
        await bus.ask(SetAgentState.op.subject, with_document(body, ["state"], deep_json(64)))
    )
    assert reply.ok, reply
    batch = {
        "memories": [
            {"content": "deep", "agent_id": agent_id, "metadata": {}},
        ]
    }
    payload = with_document(batch, ["memories", 0, "metadata"], deep_json(64))
    reply = envelope.decode(await bus.ask(AddMemories.op.subject, payload))
    assert reply.ok, reply


@pytest.mark.parametrize("subject", [CreateOrg.op.subject, ListOrgs.op.subject])
async def test_an_oversized_header(bus: Bus, subject: str) -> None:
    # A 50,000-character correlation id was taken, then NATS refused the commit and the
    # reply was ``unavailable``, which invites a retry that can never succeed.
    before = await last_seq(bus)
    for extra, reason in (
        ({"AgentMem-Correlation-Id": "c" * 50_000}, "too_long"),
        ({"AgentMem-Causation-Id": "c" * (MAX_HEADER_BYTES + 1)}, "too_long"),
        ({f"X-Filler-{n}": "f" * 1000 for n in range(9)}, "too_large"),
    ):
        headers = {**bus.admin, **extra}
        reply = envelope.decode(await bus.ask(subject, encode(VALID[subject]), headers=headers))
        assert reply.error is not None, reply
        assert reply.error.code == "invalid", reply.error
        assert reply.error.details["reason"] == reason, reply.error.details
        assert reply.error.details["path"] == "$", reply.error.details
        assert "header" in reply.error.message, reply.error.message
    assert await last_seq(bus) == before, "a bad request appended to the log"
    await still_answers(bus)
    # At the bound, a correlation id is taken.
    name = "AgentMem-Correlation-Id"
    headers = {**bus.admin, name: "c" * (MAX_HEADER_BYTES - len(name))}
    body = {"name": f"Headers {ids.new_id()}"}
    reply = envelope.decode(await bus.ask(CreateOrg.op.subject, encode(body), headers=headers))
    assert reply.ok, reply


async def test_a_trace_header_with_a_control_character(bus: Bus) -> None:
    # Stored on the commit and shown by history.get: an escape sequence in it would reach
    # whatever terminal or log shows the audit trail.
    before = await last_seq(bus)
    for name in ("AgentMem-Correlation-Id", "agentmem-causation-id"):
        for value in ("c\x1b[2J", "c\x00d", "c\x7f", "tab\there"):
            headers = {**bus.admin, name: value}
            body = encode({"name": f"Trace {ids.new_id()}"})
            reply = envelope.decode(await bus.ask(CreateOrg.op.subject, body, headers=headers))
            assert reply.error is not None, reply
            assert reply.error.code == "invalid", reply.error
            assert reply.error.details["reason"] == "invalid_value", reply.error.details
            assert reply.error.details["header"].lower() == name.lower(), reply.error.details
    assert await last_seq(bus) == before, "a bad request appended to the log"
    # Printable, beyond ASCII too: taken.
    headers = {**bus.admin, "AgentMem-Correlation-Id": "run 7 · étape ✓"}
    body = encode({"name": f"Trace {ids.new_id()}"})
    reply = envelope.decode(await bus.ask(CreateOrg.op.subject, body, headers=headers))
    assert reply.ok, reply


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
    await flushed(bus.nc)
    await still_answers(bus)
    await asyncio.sleep(0.3)  # each request is answered by a task of its own: let them end
    assert await last_seq(bus) == before


async def test_the_service_still_takes_valid_commands(bus: Bus) -> None:
    before = await last_seq(bus)
    created = envelope.decode(await bus.ask(CreateOrg.op.subject, encode({"name": "Alive"})))
    assert created.ok, created
    body = {**VALID[RegisterUser.op.subject], "org_id": created.data["org_id"]}
    registered = envelope.decode(await bus.ask(RegisterUser.op.subject, encode(body)))
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
# What each is told: that credentials are needed (no Authorization header), that they are
# malformed (a header, but no well-formed token in it), or that they are not valid.
NO_CREDENTIALS = {"none", "other-header"}
MALFORMED_CREDENTIALS = {"not-a-token", "truncated-secret", "other-scheme"}


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
    bus: Bus, subject: str, payload: bytes, headers: dict[str, str], told: str
) -> None:
    """``told``: how the message begins ("credentials needed", "malformed credentials" or
    "credentials are not valid")."""
    before = await last_seq(bus)
    raw = await bus.ask(subject, payload, headers=headers)
    reply = envelope.decode(raw)
    assert reply.ok is False, reply
    assert reply.error is not None
    assert reply.error.code == "unauthenticated", reply.error
    text = reply.error.message
    # It says what is wrong with the credentials, and nothing about the request.
    assert text.startswith(told), text
    if told != "credentials are not valid":
        assert tokens.HEADER in text, text  # and what to send instead
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
    if credentials in NO_CREDENTIALS:
        told = "credentials needed"
    elif credentials in MALFORMED_CREDENTIALS:
        told = "malformed credentials"
    else:
        told = "credentials are not valid"
    await assert_unauthenticated(bus, subject, payload, headers, told)


@pytest.mark.parametrize("subject", PROTECTED)
async def test_a_revoked_key_is_unauthenticated(bus: Bus, revoked_key: str, subject: str) -> None:
    payload = encode(VALID[subject])
    await assert_unauthenticated(
        bus, subject, payload, bearer(revoked_key), "credentials are not valid"
    )


@pytest.mark.parametrize("name", ["authorization", "AUTHORIZATION", "aUtHoRiZaTiOn"])
async def test_the_authorization_header_is_matched_whatever_its_case(bus: Bus, name: str) -> None:
    reply = envelope.decode(
        await bus.ask(ListOrgs.op.subject, b"{}", headers={name: f"Bearer {bus.admin_token}"})
    )
    assert reply.ok, reply
    # And a malformed one, whatever the case of its name, is called malformed.
    before = await last_seq(bus)
    raw = await bus.ask(CreateOrg.op.subject, encode({"name": "Never"}), {name: "Bearer nope"})
    refused = envelope.decode(raw)
    assert refused.error is not None, refused
    assert refused.error.code == "unauthenticated", refused
    assert refused.error.message.startswith("malformed credentials"), refused
    assert await last_seq(bus) == before


async def test_a_malformed_credential_is_told_apart_from_a_missing_one(bus: Bus) -> None:
    told = {}
    for kind in ("none", "not-a-token", "other-scheme", "unknown"):
        reply = envelope.decode(
            await bus.ask(ListOrgs.op.subject, b"{}", headers=BAD_CREDENTIALS[kind](bus))
        )
        assert reply.error is not None, reply
        assert reply.error.code == "unauthenticated", reply
        told[kind] = reply.error.message
    assert len(set(told.values())) == len(told), told  # each is told what is wrong
    assert told["none"].startswith("credentials needed"), told
    assert told["not-a-token"].startswith("malformed credentials"), told
    assert "Bearer" in told["other-scheme"], told
    assert told["unknown"].startswith("credentials are not valid"), told


async def test_the_public_subjects_answer_without_credentials(bus: Bus) -> None:
    health = envelope.decode(await bus.ask(Health.op.subject, b"{}", headers={}))
    assert health.ok, health
    assert health.data["live"] is True

    client = Client(bus.nc, bus.admin_token)
    org = (await client.create_org("Public")).fields["org_id"]
    email, password = "login-without-credentials@example.com", "password-1"
    user = await client.register_user(org, "Lou", email, password)

    # A wrong password: refused as a wrong login (not as missing credentials), nothing written.
    before = await last_seq(bus)
    body = {"email": email, "password": "wrong-password"}
    wrong = envelope.decode(await bus.ask(Login.op.subject, encode(body), headers={}))
    assert wrong.error is not None, wrong
    assert wrong.error.code == "unauthenticated", wrong
    assert tokens.HEADER not in wrong.error.message, wrong
    assert await last_seq(bus) == before

    # The right one: a session token, which then works where credentials are needed.
    body = {"email": email, "password": password}
    raw = await bus.ask(Login.op.subject, encode(body), headers={})
    login = envelope.decode(raw)
    assert login.ok, login
    assert password.encode() not in raw
    session = tokens.parse(login.data["token"])
    assert session is not None
    assert session.kind == "session"
    assert (session.org_id, session.user_id) == (org, user.fields["user_id"])
    me = envelope.decode(
        await bus.ask(
            GetUser.op.subject,
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
    await assert_invalid(
        bus, GetHistory.op.subject, encode(body), "cursor", path="$.cursor", reason="invalid_value"
    )
