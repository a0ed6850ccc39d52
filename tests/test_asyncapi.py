"""docs/asyncapi.json: current with the code, valid AsyncAPI 3.0, served on
``agentmem.sys.schema`` without credentials, and true: real replies of a real service match
the reply schemas it declares.

The AsyncAPI 3.0.0 JSON Schema is vendored from the ``@asyncapi/specs`` package (Apache-2.0,
tests/asyncapi/LICENSE and NOTICE).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, asyncapi
from agentmem.commands import (
    AppendMessage,
    CreateAgent,
    CreateApiKey,
    CreateOrg,
    Login,
    RegisterTool,
    RegisterUser,
)
from agentmem.domain.forget import ForgetUser
from agentmem.domain.memories import (
    AddMemories,
    AddMemory,
    ArchiveMemory,
    DeleteMemory,
    DeleteMemoryScope,
    GetMemory,
    ListMemories,
    MemoryHistory,
    NewMemory,
    RestoreMemory,
    SearchMemories,
    SupersedeMemory,
    UpdateMemory,
)
from agentmem.protocol import operation_of, operations
from agentmem.queries import (
    GetAgent,
    GetHistory,
    GetOrg,
    Health,
    LastMessages,
    ListAgents,
    ListApiKeys,
    ListOrgs,
    Schema,
    SearchMessages,
    Status,
)
from agentmem.replies import HealthReport, Org
from tests.realparts import bearer

STORES = ("sqlite", "postgres")
ROOT = Path(__file__).resolve().parent.parent
SPEC = Path(__file__).resolve().parent / "asyncapi" / "asyncapi-3.0.0.schema.json"


def test_the_checked_in_document_is_current() -> None:
    checked_in = (ROOT / "docs" / "asyncapi.json").read_bytes()
    assert checked_in == asyncapi.render(), (
        "docs/asyncapi.json is out of date: python -m agentmem.asyncapi > docs/asyncapi.json"
    )


def test_the_document_is_valid_asyncapi_3() -> None:
    spec = json.loads(SPEC.read_text())
    document = json.loads(asyncapi.render())
    errors = [e.message[:200] for e in jsonschema.Draft7Validator(spec).iter_errors(document)]
    assert errors == []
    assert document["asyncapi"] == "3.0.0"


def test_every_operation_has_its_channel_and_messages() -> None:
    document = asyncapi.document()
    for operation in operations():
        key = f"{operation.kind}.{operation.name}"
        assert document["channels"][key]["address"] == operation.subject
        described = document["operations"][key]
        assert described["action"] == "receive"
        assert "reply" in described
        name = operation.request.__name__
        request_schema = document["components"]["messages"][f"{name}Request"]["payload"]
        assert request_schema == {"$ref": f"#/components/schemas/{name}"}


def reply_validator(request_type: type[Any]) -> jsonschema.Draft202012Validator:
    """A validator of the reply of ``request_type``'s operation, its $refs resolved inside
    the document."""
    name = operation_of(request_type).request.__name__
    document = asyncapi.document()
    schema = {**document, "$ref": f"#/components/messages/{name}Reply/payload"}
    return jsonschema.Draft202012Validator(schema)


async def ask(nc: NATS, request: msgspec.Struct, token: str | None) -> dict[str, Any]:
    subject = operation_of(type(request)).subject
    reply = await nc.request(
        subject, msgspec.json.encode(request), timeout=10, headers=bearer(token) if token else None
    )
    decoded: dict[str, Any] = msgspec.json.decode(reply.data)
    errors = [e.message[:300] for e in reply_validator(type(request)).iter_errors(decoded)]
    assert errors == [], (subject, decoded)
    return decoded


async def test_the_schema_is_served_without_credentials(service: Any, nc: NATS) -> None:
    reply = await ask(nc, Schema(), None)
    assert reply["ok"]
    assert reply["data"] == json.loads(asyncapi.render())


async def test_real_replies_match_their_declared_schemas(
    client: Client, nc: NATS, admin_token: str
) -> None:
    """A walk through the main operations, each reply checked against its schema: a reply
    shape declared wrong fails here."""
    org = await ask(nc, CreateOrg(name="Acme"), admin_token)
    org_id = org["data"]["org_id"]
    password = "long-enough-password"
    user = await ask(
        nc,
        RegisterUser(org_id=org_id, name="Ann", email="ann@acme.example", password=password),
        admin_token,
    )
    key = await ask(nc, CreateApiKey(name="k", user_id=user["data"]["user_id"]), admin_token)
    token = key["data"]["token"]
    await ask(nc, Login(email="ann@acme.example", password=password), None)
    agent = await ask(nc, CreateAgent(name="Helper", persona="kind"), token)
    agent_id = agent["data"]["agent_id"]
    appended = await ask(
        nc,
        msgspec.convert(
            {
                "session_id": "s-1",
                "agent_id": agent_id,
                "message": {"role": "user", "content": "I am allergic to peanuts"},
            },
            AppendMessage,
        ),
        token,
    )
    after = appended["seq"]
    await ask(nc, RegisterTool(name="get_weather"), token)
    for query in (
        GetAgent(agent_id=agent_id, after_seq=after),
        ListAgents(after_seq=after),
        ListOrgs(after_seq=after),
        LastMessages(session_id="s-1", after_seq=after),
        SearchMessages(text="peanuts", agent_id=agent_id, after_seq=after),
        ListApiKeys(after_seq=after),
        GetHistory(aggregate="agent", id=agent_id),
    ):
        assert (await ask(nc, query, token))["ok"]
    assert (await ask(nc, Status(), admin_token))["ok"]
    assert (await ask(nc, Health(), None))["ok"]
    refused = await ask(nc, GetAgent(agent_id="nobody"), token)
    assert refused["error"]["code"] == "not_found"

    # Memories: each command and query, a duplicate and an empty batch included.
    memory = await ask(nc, AddMemory(content="Ann likes tea", user_id="ann", tags=["x"]), token)
    memory_id = memory["data"]["memory_id"]
    assert (await ask(nc, AddMemory(content="ann likes TEA", user_id="ann"), token))["data"][
        "deduplicated"
    ]
    batch = [NewMemory(content="Ann likes jazz", user_id="ann", memory_type="episodic")]
    assert (await ask(nc, AddMemories(memories=batch), token))["data"]["added"] == 1
    assert (await ask(nc, AddMemories(memories=batch), token))["data"]["added"] == 0
    await ask(nc, UpdateMemory(memory_id=memory_id, importance=0.7), token)
    newer = await ask(nc, SupersedeMemory(memory_id=memory_id, content="Ann likes coffee"), token)
    new_id = newer["data"]["superseded_by"]
    await ask(nc, ArchiveMemory(memory_id=new_id), token)
    await ask(nc, RestoreMemory(memory_id=new_id), token)
    after = (await ask(nc, DeleteMemory(memory_id=new_id), token))["seq"]
    for query in (
        GetMemory(memory_id=memory_id, after_seq=after),
        ListMemories(user_id="ann", states=["live", "superseded"], after_seq=after),
        SearchMemories(text="jazz", user_id="ann", after_seq=after),
        MemoryHistory(memory_id=memory_id),
    ):
        assert (await ask(nc, query, token))["ok"]
    scope = DeleteMemoryScope(user_id="ann", org_id=org_id)
    assert (await ask(nc, scope, admin_token))["data"]["deleted"] == 2
    assert (await ask(nc, scope, admin_token))["data"]["deleted"] == 0


@pytest.mark.parametrize("operation", operations(), ids=lambda o: o.name)
def test_every_request_schema_accepts_what_the_struct_accepts(operation: Any) -> None:
    """The generated request schema and the decoder agree on what is required and on
    unknown fields."""
    schema = {**asyncapi.document(), "$ref": f"#/components/schemas/{operation.request.__name__}"}
    required = [f.name for f in msgspec.structs.fields(operation.request) if f.required]
    described = asyncapi.document()["components"]["schemas"][operation.request.__name__]
    assert sorted(described.get("required", [])) == sorted(required)
    assert jsonschema.Draft202012Validator(schema).is_valid({"bogus": 1}) is False


async def test_client_send_speaks_any_operation_from_its_request_alone(client: Client) -> None:
    """No client code per operation: the request Struct says where it goes and what comes
    back."""
    created = await client.send(CreateOrg(name="Sent"))
    assert created.event == "org.created"
    assert created.seq == client.last_seq
    org = await client.send(GetOrg(org_id=created.fields["org_id"], after_seq=created.seq))
    assert isinstance(org, Org)
    assert org.name == "Sent"
    health = await client.send(Health())
    assert isinstance(health, HealthReport)
    assert health.live


async def test_a_shredded_retry_matches_its_declared_reply(nc: NATS, admin_token: str) -> None:
    """A retried command whose data was forgotten since answers ``shredded``: a reply
    shape the document declares for every command (it did not)."""
    org = await ask(nc, CreateOrg(name="Shred"), admin_token)
    org_id = org["data"]["org_id"]
    user = RegisterUser(
        org_id=org_id, name="Ann", email="ann@shred.example", password="long-enough-password"
    )
    user_id = (await ask(nc, user, admin_token))["data"]["user_id"]
    add = AddMemory(content="Ann likes tea", user_id=user_id, org_id=org_id, command_id="c-1")
    added = await ask(nc, add, admin_token)
    await ask(nc, ForgetUser(user_id=user_id), admin_token)
    again = await ask(nc, add, admin_token)
    assert again["data"] == {"event": "shredded", "of": "memory.added", "version": added["seq"]}
