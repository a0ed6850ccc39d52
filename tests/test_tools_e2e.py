"""Tools over NATS, against the real service and a real nats-server, on each projection
store (``STORES``): the lifecycle, names unique within an organization (also under
concurrency), JSON Schema checks (and that none holds the event loop), tag filters and pages,
organizations kept apart. Who may do what to a tool is in the role matrix,
tests/test_role_matrix.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
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
    Written,
    subjects,
)
from agentmem.domain import tools
from agentmem.events import ToolRegistered, decode_commit
from agentmem.queries import Health
from agentmem.replies import Tool
from tests.realparts import read_log
from tests.support import NatsServer

STORES = ("sqlite", "postgres")

PASSWORD = "long-enough-password"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
}


# Helpers ---------------------------------------------------------------------------------
async def last_seq(nc: NATS) -> int:
    info = await nc.jetstream().stream_info(subjects.STREAM_NAME)
    return int(info.state.last_seq)


async def as_user(admin: Client, org_id: str, email: str, roles: list[Any]) -> Client:
    user = await admin.register_user(org_id, "Someone", email, PASSWORD, roles=roles)
    key = await admin.create_api_key("test", user_id=user.fields["user_id"])
    return admin.with_token(str(key.fields["token"]))


@pytest.fixture
async def acme(client: Client) -> tuple[str, Client]:
    """A fresh organization and a client of one of its admins (not a service admin)."""
    org_id = str((await client.create_org("Acme")).fields["org_id"])
    return org_id, await as_user(client, org_id, "admin@acme.example", ["admin"])


@pytest.fixture
async def connections(nats_server: NatsServer) -> AsyncIterator[list[NATS]]:
    opened = [await nats.connect(nats_server.url) for _ in range(6)]
    yield opened
    for connection in opened:
        await connection.close()


async def outcomes(calls: list[Any]) -> tuple[list[Written], list[BaseException]]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    return (
        [r for r in results if isinstance(r, Written)],
        [r for r in results if isinstance(r, BaseException)],
    )


async def registered_names(nc: NATS, org_id: str) -> list[str]:
    """The name of every tool.registered in the organization, straight from the log."""
    names = []
    for message in await read_log(nc):
        if message.subject.startswith(f"agentmem.evt.{org_id}.tool."):
            events = decode_commit(message.data).events
            names += [e.name for e in events if isinstance(e, ToolRegistered)]
    return sorted(names)


# The lifecycle ---------------------------------------------------------------------------
async def test_register_get_update_delete(acme: tuple[str, Client], nc: NATS) -> None:
    org_id, api = acme
    registered = await api.register_tool(
        "get_weather",
        description="The weather now",
        parameters=WEATHER,
        tags=["weather", "web", "weather"],
    )
    tool_id = registered.fields["tool_id"]
    assert registered.event == "tool.registered"
    assert registered.fields["org_id"] == org_id
    assert registered.version == registered.seq == await last_seq(nc)

    expected = Tool(
        tool_id=tool_id,
        org_id=org_id,
        name="get_weather",
        version=registered.version,
        description="The weather now",
        parameters=WEATHER,
        tags=["weather", "web"],
    )
    by_id = await api.get_tool(tool_id=tool_id, after_seq=api.last_seq)
    assert by_id == msgspec.structs.replace(
        expected, created_at=by_id.created_at, updated_at=by_id.updated_at
    )
    assert await api.get_tool(name="get_weather") == by_id
    assert by_id.created_at == by_id.updated_at > 0

    # A rename frees the old name and takes the new one; other fields keep their value.
    renamed = await api.update_tool(
        tool_id, name="weather_now", expected_version=registered.version
    )
    tool = await api.get_tool(name="weather_now", after_seq=api.last_seq)
    assert (tool.tool_id, tool.description, tool.parameters, tool.version) == (
        tool_id,
        "The weather now",
        WEATHER,
        renamed.version,
    )
    with pytest.raises(NotFoundError, match="get_weather"):
        await api.get_tool(name="get_weather")
    with pytest.raises(ConflictError) as stale:
        await api.update_tool(tool_id, description="late", expected_version=registered.version)
    assert stale.value.details == {
        "expected_version": registered.version,
        "current_version": renamed.version,
    }
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    await api.update_tool(tool_id, parameters=schema, tags=[], description="")
    tool = await api.get_tool(tool_id=tool_id, after_seq=api.last_seq)
    assert (tool.name, tool.parameters, tool.tags, tool.description) == (
        "weather_now",
        schema,
        [],
        "",
    )
    # The old name is free for another tool.
    other = await api.register_tool("get_weather")
    assert other.fields["name"] == "get_weather"

    deleted = await api.delete_tool(tool_id)
    assert deleted.event == "tool.deleted"
    with pytest.raises(NotFoundError, match=f"tool {tool_id} does not exist"):
        await api.get_tool(tool_id=tool_id, after_seq=api.last_seq)
    with pytest.raises(NotFoundError):
        await api.get_tool(name="weather_now")
    for write in (api.update_tool(tool_id, description="x"), api.delete_tool(tool_id)):
        with pytest.raises(NotFoundError):
            await write
    # Its name is free again.
    await api.register_tool("weather_now")


async def test_get_needs_exactly_one_of_id_and_name(acme: tuple[str, Client]) -> None:
    _, api = acme
    tool_id = (await api.register_tool("t")).fields["tool_id"]
    for kwargs in ({}, {"tool_id": tool_id, "name": "t"}):
        with pytest.raises(InvalidError, match="exactly one of tool_id and name"):
            await api.get_tool(**kwargs)


async def test_a_client_chosen_id_and_a_retried_register(client: Client, nc: NATS) -> None:
    first = await client.register_tool("mine", tool_id="my-tool-1", command_id="reg-1")
    before = await last_seq(nc)
    again = await client.register_tool("mine", tool_id="my-tool-1", command_id="reg-1")
    assert (again.seq, again.fields) == (first.seq, first.fields)
    # Without a client-chosen id the retry is recognised too (by its command id).
    second = await client.register_tool("mine2", command_id="reg-2")
    assert await client.register_tool("mine2", command_id="reg-2") == second
    with pytest.raises(ConflictError, match="my-tool-1 already exists"):
        await client.register_tool("other", tool_id="my-tool-1")
    assert await last_seq(nc) == before + 2  # the second tool and its reservation


# Unique names ----------------------------------------------------------------------------
async def test_names_are_unique_within_an_org(
    client: Client, acme: tuple[str, Client], nc: NATS
) -> None:
    _, api = acme
    first = await api.register_tool("search")
    before = await last_seq(nc)
    with pytest.raises(ConflictError, match="'search' already exists") as taken:
        await api.register_tool("search", description="another")
    assert taken.value.details == {"name": "search", "tool_id": first.fields["tool_id"]}
    second = (await api.register_tool("lookup")).fields["tool_id"]
    with pytest.raises(ConflictError, match="'search' already exists"):
        await api.update_tool(second, name="search")
    assert await last_seq(nc) == before + 2  # only "lookup" and its reservation
    # Names are case-sensitive, and each organization has its own.
    await api.register_tool("Search")
    other_org = str((await client.create_org("Other")).fields["org_id"])
    await client.register_tool("search", org_id=other_org)
    assert (
        await client.get_tool(name="search", org_id=other_org, after_seq=client.last_seq)
    ).org_id == other_org
    assert (await api.get_tool(name="search")).tool_id == first.fields["tool_id"]


async def test_registrations_racing_for_one_name_have_one_winner(
    acme: tuple[str, Client], connections: list[NATS], nc: NATS
) -> None:
    org_id, api = acme
    racers = [Client(c, api.token) for c in connections]
    before = await last_seq(nc)
    ok, failed = await outcomes(
        [r.register_tool("contended", description=f"racer {i}") for i, r in enumerate(racers)]
    )
    assert len(ok) == 1, failed
    assert len(failed) == len(racers) - 1
    for error in failed:
        assert isinstance(error, ConflictError), error
        assert error.details == {"name": "contended", "tool_id": ok[0].fields["tool_id"]}
    assert await last_seq(nc) == before + 2  # one tool and one reservation, nothing else
    listed = await api.list_tools(after_seq=ok[0].seq)
    assert [(t.name, t.description) for t in listed.items] == [
        ("contended", ok[0].fields["description"])
    ]
    assert await registered_names(nc, org_id) == ["contended"]


async def test_renames_racing_for_one_name_have_one_winner(
    acme: tuple[str, Client], connections: list[NATS], nc: NATS
) -> None:
    _, api = acme
    ids = [(await api.register_tool(f"tool_{i}")).fields["tool_id"] for i in range(4)]
    racers = [Client(c, api.token) for c in connections]
    ok, failed = await outcomes(
        [r.update_tool(tool_id, name="prize") for r, tool_id in zip(racers, ids, strict=False)]
    )
    assert len(ok) == 1, failed
    assert all(isinstance(f, ConflictError) for f in failed), failed
    winner = ok[0].fields["tool_id"]
    names = {t.tool_id: t.name for t in (await api.list_tools(after_seq=ok[0].seq)).items}
    assert names == {
        tool_id: "prize" if tool_id == winner else f"tool_{i}" for i, tool_id in enumerate(ids)
    }
    # The winner's old name was released in the same batch; the losers kept theirs.
    old = f"tool_{ids.index(winner)}"
    await api.register_tool(old)
    with pytest.raises(ConflictError):
        await api.register_tool("prize")


# JSON Schema -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("parameters", "says", "path"),
    [
        ({"type": "objekt"}, "not a valid JSON Schema", "$.parameters.type"),
        (
            {"type": "object", "properties": {"city": {"type": "text"}}},
            "not a valid JSON Schema",
            "$.parameters.properties.city.type",
        ),
        (
            {"type": "object", "required": "city"},
            "not a valid JSON Schema",
            "$.parameters.required",
        ),
        ({"type": "array", "items": {}}, '"type": "object"', "$.parameters.type"),
        ({"properties": {}}, '"type": "object"', "$.parameters.type"),
    ],
)
async def test_invalid_parameters_are_refused(
    acme: tuple[str, Client], nc: NATS, parameters: dict[str, Any], says: str, path: str
) -> None:
    _, api = acme
    tool_id = (await api.register_tool("ok")).fields["tool_id"]
    before = await last_seq(nc)
    with pytest.raises(InvalidError, match=says) as refused:
        await api.register_tool("broken", parameters=parameters)
    assert refused.value.details["path"] == path
    with pytest.raises(InvalidError, match=says):
        await api.update_tool(tool_id, parameters=parameters)
    assert await last_seq(nc) == before
    with pytest.raises(NotFoundError):
        await api.get_tool(name="broken", after_seq=before)


# A check that would hold the event loop ------------------------------------------------
def slow_to_check() -> dict[str, Any]:
    """The schema of the finding: 6,646 distinct objects in a ``type`` array, 65 KB. jsonschema
    compares them pairwise (``uniqueItems``); on the event loop that took 52 s."""
    schema = {"type": "object", "properties": {"x": {"type": [{"": i} for i in range(6646)]}}}
    assert len(msgspec.json.encode(schema)) <= tools.MAX_PARAMETERS_BYTES
    return schema


def largest_allowed() -> dict[str, Any]:
    """A valid schema at the value cap, made of empty subschemas: the costliest JSON Schema
    check the caps let through (about 0.5 s of CPU), which must run off the event loop."""
    half = (tools.MAX_PARAMETERS_VALUES - 3) // 2
    return {"type": "object", "allOf": [{}] * half, "anyOf": [{}] * half}


async def health_gaps(nc: NATS, stop: asyncio.Event) -> list[float]:
    """Ask ``agentmem.sys.health`` again 5 ms after each answer, until ``stop``; the time
    between one answer and the next. The service runs in this process: a stall of its event
    loop stalls this loop too, and shows as a long gap wherever this probe was waiting."""
    gaps = []
    last = time.perf_counter()
    while not stop.is_set():
        try:
            reply = await nc.request(Health.op.subject, b"{}", timeout=5)
            assert msgspec.json.decode(reply.data)["ok"], reply.data
        except nats.errors.TimeoutError:
            pass  # the gap says how long
        now = time.perf_counter()
        gaps.append(now - last)
        await asyncio.sleep(0.005)
        last = now
    return gaps


@pytest.mark.parametrize("verb", ["register", "update"])
async def test_a_schema_slow_to_check_never_holds_the_event_loop(
    client: Client, acme: tuple[str, Client], nc: NATS, verb: str
) -> None:
    """While a member's tool.register or tool.update carries the schema of the finding,
    health keeps answering (no gap of 500 ms: the finding's schema held the loop for
    52 s, and a machine busy with other work stretched gaps to 190 ms); the schema is
    refused as invalid, naming where."""
    org_id, _ = acme
    member = await as_user(client, org_id, "member@acme.example", ["member"])
    tool_id = (await member.register_tool("ok")).fields["tool_id"]
    parameters = slow_to_check()
    before = await last_seq(nc)

    stop = asyncio.Event()
    probe = asyncio.create_task(health_gaps(nc, stop))
    await asyncio.sleep(0.05)  # health is answering
    if verb == "register":
        call = member.register_tool("heavy", parameters=parameters)
    else:
        call = member.update_tool(tool_id, parameters=parameters)
    [outcome] = await asyncio.gather(call, return_exceptions=True)
    await asyncio.sleep(0.05)
    stop.set()
    gaps = await probe

    # Each answer within 500 ms of the one before (5 ms of which the probe waits itself).
    longest = max(gaps)
    assert longest < 0.5, (
        f"health went {longest * 1000:.0f} ms without an answer while {verb} was checked "
        f"({len(gaps)} answers; {verb} answered {outcome!r:.200})"
    )
    assert isinstance(outcome, InvalidError), outcome
    assert outcome.details["path"] == "$.parameters.properties.x.type"
    assert outcome.details["reason"] == "too_long"
    assert "type array" in outcome.message
    assert await last_seq(nc) == before
    with pytest.raises(NotFoundError):
        await member.get_tool(name="heavy", after_seq=before)


async def test_the_costliest_schema_allowed_is_checked_off_the_event_loop(
    client: Client, acme: tuple[str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The costliest JSON Schema check that the caps let through (~0.5 s of CPU) runs in a
    thread, so the event loop keeps turning meanwhile: counted in turns of the loop made
    while the check ran, not in times (an earlier bound on the longest pause of the loop
    failed in CI beside other work, where the process may wait for a core at any moment)."""
    org_id, _ = acme
    member = await as_user(client, org_id, "member@acme.example", ["member"])
    checking = threading.Event()
    checked_in: list[threading.Thread] = []
    check_schema = tools.check_schema

    def watched_check(parameters: Any) -> None:
        checked_in.append(threading.current_thread())
        checking.set()
        try:
            check_schema(parameters)
        finally:
            checking.clear()

    monkeypatch.setattr(tools, "check_schema", watched_check)
    turns_while_checking = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal turns_while_checking
        while not stop.is_set():
            before = checking.is_set()
            await asyncio.sleep(0.001)
            turns_while_checking += before and checking.is_set()

    watcher = asyncio.create_task(watch())
    registered = await member.register_tool("big", parameters=largest_allowed())
    stop.set()
    await watcher
    assert registered.event == "tool.registered"
    assert checked_in
    assert threading.main_thread() not in checked_in
    # On the loop, the check would hold it from start to end: not one turn in between.
    assert turns_while_checking >= 3, turns_while_checking


# Lists -----------------------------------------------------------------------------------
TAGGED = {
    "a": ["x", "y"],
    "b": ["x"],
    "c": ["y", "z"],
    "d": [],
    "e": ["x", "y", "z"],
}


async def test_list_by_tags_any_and_all(acme: tuple[str, Client]) -> None:
    _, api = acme
    for name, tags in TAGGED.items():
        await api.register_tool(name, tags=tags)

    async def names(**filters: Any) -> list[str]:
        page = await api.list_tools(after_seq=api.last_seq, **filters)
        return sorted(t.name for t in page.items)

    assert await names() == ["a", "b", "c", "d", "e"]
    assert await names(tags_any=["x"]) == ["a", "b", "e"]
    assert await names(tags_any=["x", "z"]) == ["a", "b", "c", "e"]
    assert await names(tags_any=["nope"]) == []
    assert await names(tags_all=["x", "y"]) == ["a", "e"]
    assert await names(tags_all=["x", "y", "z"]) == ["e"]
    assert await names(tags_all=["x", "x"]) == ["a", "b", "e"]
    assert await names(tags_all=["x", "nope"]) == []
    assert await names(tags_any=["z"], tags_all=["x"]) == ["e"]
    # An empty list filters nothing, as if left out.
    assert await names(tags_any=[], tags_all=[]) == ["a", "b", "c", "d", "e"]
    # Tags follow updates.
    tool = await api.get_tool(name="d")
    await api.update_tool(tool.tool_id, tags=["z"])
    assert await names(tags_all=["z"]) == ["c", "d", "e"]


async def test_list_pages_front_to_back(acme: tuple[str, Client]) -> None:
    _, api = acme
    made = sorted(
        [(await api.register_tool(f"t{n}", tags=["p"])).fields["tool_id"] for n in range(11)]
    )
    got: list[str] = []
    cursor = None
    while True:
        page = await api.list_tools(tags_any=["p"], limit=4, cursor=cursor, after_seq=api.last_seq)
        got += [t.tool_id for t in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert got == made


# Organizations kept apart -----------------------------------------------------------------
async def test_another_orgs_tool_is_answered_as_missing(
    client: Client, acme: tuple[str, Client], nc: NATS
) -> None:
    acme_org, api = acme
    tool_id = (await api.register_tool("private", tags=["x"])).fields["tool_id"]
    other_org = str((await client.create_org("Other")).fields["org_id"])
    other = await as_user(client, other_org, "admin@other.example", ["admin"])
    before = await last_seq(nc)
    for target in (tool_id, "no-such-tool"):
        for call in (
            other.get_tool(tool_id=target, after_seq=api.last_seq),
            other.update_tool(target, description="stolen"),
            other.delete_tool(target),
        ):
            with pytest.raises(NotFoundError) as hidden:
                await call
            assert hidden.value.message == f"tool {target} does not exist"
    with pytest.raises(NotFoundError):
        await other.get_tool(name="private")
    with pytest.raises(NotFoundError):
        await other.get_tool(name="private", org_id=acme_org)
    with pytest.raises(NotFoundError):
        await other.get_tool(tool_id=tool_id, org_id=acme_org)
    with pytest.raises(NotFoundError):
        await other.list_tools(org_id=acme_org)
    with pytest.raises(NotFoundError):
        await other.register_tool("planted", org_id=acme_org)
    assert (await other.list_tools(tags_any=["x"])).items == []
    assert await last_seq(nc) == before
    # The same name in the other organization is no conflict.
    await other.register_tool("private")
    # A service administrator naming the organization sees it.
    assert (await client.get_tool(name="private", org_id=acme_org)).tool_id == tool_id


async def test_deleting_the_org_removes_its_tools(client: Client, acme: tuple[str, Client]) -> None:
    org_id, api = acme
    tool_id = (await api.register_tool("doomed", tags=["t"])).fields["tool_id"]
    await client.delete_org(org_id)
    with pytest.raises(NotFoundError):
        await client.get_tool(tool_id=tool_id, after_seq=client.last_seq)
    with pytest.raises(NotFoundError, match=f"tool {tool_id} does not exist"):
        await client.update_tool(tool_id, description="x")
    assert (await client.list_tools(org_id=org_id)).items == []
