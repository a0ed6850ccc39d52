"""Agents over NATS, against the real service and a real nats-server, on each projection
store (``STORES``): the lifecycle, the state document and its versions, list filters and
pages, organizations kept apart, and concurrent writers. Who may do what to an agent is in
the role matrix, tests/test_role_matrix.py.
"""

from __future__ import annotations

import asyncio
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
    envelope,
    subjects,
)
from agentmem.commands import SetAgentState
from agentmem.consumers import agents as agent_handlers
from agentmem.consumers.aggregates import AggregateCache
from agentmem.consumers.auth import Authenticator
from agentmem.consumers.commands import CommandRunner
from agentmem.consumers.queries import MAX_PAGE_BYTES
from agentmem.consumers.router import Dispatcher
from agentmem.domain import agents
from agentmem.domain.agents import MAX_STATE_BYTES
from agentmem.eventlog import EventLog
from agentmem.events import AgentArchived, AgentStateCleared, AgentStateSet
from agentmem.replies import Agent
from tests.realparts import bearer, deployment_keys, second_process
from tests.support import NatsServer

STORES = ("sqlite", "postgres")

PASSWORD = "long-enough-password"


# Helpers ---------------------------------------------------------------------------------
async def last_seq(nc: NATS) -> int:
    info = await nc.jetstream().stream_info(subjects.STREAM_NAME)
    return int(info.state.last_seq)


async def as_user(admin: Client, org_id: str, email: str, roles: list[Any]) -> Client:
    """A client acting as a new user of ``org_id`` with ``roles``, through an API key."""
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
    opened = [await nats.connect(nats_server.url) for _ in range(4)]
    yield opened
    for connection in opened:
        await connection.close()


async def outcomes(calls: list[Any]) -> tuple[list[Written], list[BaseException]]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    return (
        [r for r in results if isinstance(r, Written)],
        [r for r in results if isinstance(r, BaseException)],
    )


def seen(*clients: Client) -> int:
    return max(c.last_seq for c in clients)


# The lifecycle ---------------------------------------------------------------------------
async def test_create_get_update_archive_delete(acme: tuple[str, Client], nc: NATS) -> None:
    org_id, api = acme
    created = await api.create_agent(
        "Helper",
        description="answers questions",
        persona="You are helpful.",
        model={"provider": "acme", "name": "m-1", "temperature": 0.2},
        metadata={"team": "support", "nested": {"a": [1, 2]}},
        tags=["support", "beta", "support"],
    )
    agent_id = created.fields["agent_id"]
    assert created.event == "agent.created"
    assert created.version == created.seq == await last_seq(nc)
    assert created.fields["org_id"] == org_id  # the caller's organization by default
    assert created.fields["tags"] == ["support", "beta"]

    agent = await api.get_agent(agent_id, after_seq=api.last_seq)
    assert agent == Agent(
        agent_id=agent_id,
        org_id=org_id,
        name="Helper",
        version=created.version,
        description="answers questions",
        persona="You are helpful.",
        model={"provider": "acme", "name": "m-1", "temperature": 0.2},
        metadata={"team": "support", "nested": {"a": [1, 2]}},
        tags=["support", "beta"],
        archived=False,
        created_at=agent.created_at,
        updated_at=agent.created_at,
    )
    assert agent.created_at > 0

    # Fields left out keep their value; model and metadata are replaced whole.
    updated = await api.update_agent(
        agent_id, description="", metadata={"team": "ops"}, expected_version=created.version
    )
    agent = await api.get_agent(agent_id, after_seq=api.last_seq)
    assert (agent.name, agent.description, agent.persona) == ("Helper", "", "You are helpful.")
    assert (agent.metadata, agent.model["name"], agent.version) == (
        {"team": "ops"},
        "m-1",
        updated.version,
    )
    with pytest.raises(ConflictError) as stale:
        await api.update_agent(agent_id, name="late", expected_version=created.version)
    assert stale.value.details == {
        "expected_version": created.version,
        "current_version": updated.version,
    }

    # Archived: still readable, hidden from the default list, no state writes.
    await api.set_agent_state(agent_id, {"turn": 1})
    archived = await api.archive_agent(agent_id)
    assert archived.event == "agent.archived"
    agent = await api.get_agent(agent_id, after_seq=api.last_seq)
    assert (agent.archived, agent.version) == (True, archived.version)
    assert (await api.list_agents(after_seq=api.last_seq)).items == []
    listed = await api.list_agents(include_archived=True)
    assert [a.agent_id for a in listed.items] == [agent_id]
    before = await last_seq(nc)
    for write in (
        api.set_agent_state(agent_id, {"turn": 2}),
        api.patch_agent_state(agent_id, {"turn": 2}),
        api.archive_agent(agent_id),
    ):
        with pytest.raises(ConflictError, match="archived"):
            await write
    assert await last_seq(nc) == before
    # Its profile can still be edited, and it can come back.
    await api.update_agent(agent_id, name="Helper (old)")
    await api.unarchive_agent(agent_id)
    with pytest.raises(ConflictError, match="not archived"):
        await api.unarchive_agent(agent_id)
    await api.patch_agent_state(agent_id, {"turn": 2})
    state = await api.get_agent_state(agent_id, after_seq=api.last_seq)
    assert state.state == {"turn": 2}

    deleted = await api.delete_agent(agent_id)
    assert deleted.event == "agent.deleted"
    assert await last_seq(nc) == deleted.seq == before + 5  # + the batch's state_cleared
    with pytest.raises(NotFoundError, match=f"agent {agent_id} does not exist"):
        await api.get_agent(agent_id, after_seq=api.last_seq)
    with pytest.raises(NotFoundError):
        await api.get_agent_state(agent_id)
    for write in (
        api.set_agent_state(agent_id, {}),
        api.update_agent(agent_id, name="x"),
        api.delete_agent(agent_id),
    ):
        with pytest.raises(NotFoundError):
            await write
    assert (await api.list_agents(include_archived=True)).items == []


async def test_state_versions_are_the_state_subjects_own(acme: tuple[str, Client]) -> None:
    _, api = acme
    agent_id = (await api.create_agent("Stateful")).fields["agent_id"]
    # Never set: the empty document at version 0, which expected_version may name.
    empty = await api.get_agent_state(agent_id, after_seq=api.last_seq)
    assert (empty.agent_id, empty.state, empty.version) == (agent_id, {}, 0)

    first = await api.set_agent_state(agent_id, {"plan": ["a", "b"], "n": 1}, expected_version=0)
    assert first.event == "agent.state_set"
    assert first.fields == {
        "agent_id": agent_id,
        "state": {"plan": ["a", "b"], "n": 1},
        "patched": False,
    }
    # A profile edit does not move the state's version, nor make a state write stale.
    profile = await api.update_agent(agent_id, name="Renamed")
    patched = await api.patch_agent_state(
        agent_id, {"n": None, "plan": ["c"], "mood": {"calm": True}}, expected_version=first.version
    )
    assert patched.fields["state"] == {"plan": ["c"], "mood": {"calm": True}}
    assert patched.fields["patched"] is True
    state = await api.get_agent_state(agent_id, after_seq=api.last_seq)
    assert (state.state, state.version) == (
        {"plan": ["c"], "mood": {"calm": True}},
        patched.version,
    )
    agent = await api.get_agent(agent_id)
    assert agent.version == profile.version != state.version

    with pytest.raises(ConflictError) as stale:
        await api.set_agent_state(agent_id, {}, expected_version=first.version)
    assert stale.value.details == {
        "expected_version": first.version,
        "current_version": patched.version,
    }
    # A stale version of the profile is no state version either.
    with pytest.raises(ConflictError):
        await api.patch_agent_state(agent_id, {"x": 1}, expected_version=profile.version)


async def test_an_archive_before_any_state_write_moves_the_state_version(
    acme: tuple[str, Client],
) -> None:
    """The archive's fence on the state subject is the state's version, a document set or
    not: get_state gives the version a state write may name (it said 0, which a write after
    the unarchive then failed with)."""
    _, api = acme
    agent_id = (await api.create_agent("Fenced")).fields["agent_id"]
    await api.archive_agent(agent_id)
    await api.unarchive_agent(agent_id)
    fenced = await api.get_agent_state(agent_id, after_seq=api.last_seq)
    assert fenced.state == {}
    assert fenced.version > 0
    written = await api.set_agent_state(agent_id, {"n": 1}, expected_version=fenced.version)
    assert written.fields["state"] == {"n": 1}


async def test_a_state_document_over_the_cap_is_invalid(acme: tuple[str, Client], nc: NATS) -> None:
    _, api = acme
    agent_id = (await api.create_agent("Big")).fields["agent_id"]
    await api.set_agent_state(agent_id, {"k": "x" * (MAX_STATE_BYTES - 100)})
    before = await last_seq(nc)
    with pytest.raises(InvalidError, match="state document is") as refused:
        await api.set_agent_state(agent_id, {"k": "x" * MAX_STATE_BYTES})
    assert refused.value.details["max_bytes"] == MAX_STATE_BYTES
    with pytest.raises(InvalidError, match="state document is"):
        await api.patch_agent_state(agent_id, {"more": "y" * 200})
    assert await last_seq(nc) == before


async def test_a_client_chosen_id_and_a_retried_create(client: Client, nc: NATS) -> None:
    created = await client.create_agent("Mine", agent_id="my-agent-1", command_id="create-1")
    assert created.fields["agent_id"] == "my-agent-1"
    before = await last_seq(nc)
    again = await client.create_agent("Mine", agent_id="my-agent-1", command_id="create-1")
    assert (again.seq, again.fields) == (created.seq, created.fields)
    with pytest.raises(ConflictError, match="already exists"):
        await client.create_agent("Other", agent_id="my-agent-1")
    # A retried state write (same command id) is stored once too.
    one = await client.set_agent_state("my-agent-1", {"a": 1}, command_id="state-1")
    two = await client.set_agent_state("my-agent-1", {"a": 1}, command_id="state-1")
    assert one == two
    assert await last_seq(nc) == before + 1


# Lists -----------------------------------------------------------------------------------
NAMES = [
    "alpha",
    "alphabet",
    "al%pha",
    "al_pha",
    "alXpha",
    "beta",
    "Alpha",
    "älpha",
    "alpha\U0010ffff",
    "zeta",
]


async def test_list_filters_by_tag_and_name_prefix(acme: tuple[str, Client]) -> None:
    _, api = acme
    ids: dict[str, str] = {}
    for n, name in enumerate(NAMES):
        tags = ["even" if n % 2 == 0 else "odd"] + (["first"] if n < 3 else [])
        ids[name] = (await api.create_agent(name, tags=tags)).fields["agent_id"]
    archived = (await api.create_agent("alpha archived", tags=["even"])).fields["agent_id"]
    await api.archive_agent(archived)

    async def names(**filters: Any) -> set[str]:
        page = await api.list_agents(after_seq=api.last_seq, limit=500, **filters)
        assert page.next_cursor is None
        return {a.name for a in page.items}

    assert await names() == set(NAMES)
    assert await names(include_archived=True) == {*NAMES, "alpha archived"}
    assert await names(tag="even") == set(NAMES[0::2])
    assert await names(tag="first") == set(NAMES[:3])
    assert await names(tag="none") == set()
    assert await names(name_prefix="alpha") == {"alpha", "alphabet", "alpha\U0010ffff"}
    assert await names(name_prefix="alpha", include_archived=True) == {
        "alpha",
        "alphabet",
        "alpha\U0010ffff",
        "alpha archived",
    }
    # LIKE's wildcards are plain characters here; case and accents matter.
    assert await names(name_prefix="al%") == {"al%pha"}
    assert await names(name_prefix="al_") == {"al_pha"}
    assert await names(name_prefix="A") == {"Alpha"}
    assert await names(name_prefix="ä") == {"älpha"}
    assert await names(name_prefix="alpha\U0010ffff") == {"alpha\U0010ffff"}
    assert await names(name_prefix="zeta!") == set()
    assert await names(name_prefix="alpha", tag="odd") == {"alphabet"}


async def test_list_pages_front_to_back(acme: tuple[str, Client]) -> None:
    _, api = acme
    made = sorted(
        [(await api.create_agent(f"agent {n}", tags=["t"])).fields["agent_id"] for n in range(12)]
    )
    seen_ids: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await api.list_agents(tag="t", limit=5, cursor=cursor, after_seq=api.last_seq)
        seen_ids += [a.agent_id for a in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen_ids == made  # in agent_id order, each once
    assert pages == 3


async def test_a_page_of_large_agents_is_cut_short_by_size(acme: tuple[str, Client]) -> None:
    """Fifty 90 KB personas would be a 4.5 MB reply, over NATS's 1 MB limit: the page ends
    early and the cursor goes on from there."""
    _, api = acme
    persona = "p" * 90_000
    for n in range(12):
        await api.create_agent(f"big {n}", persona=persona)
    first = await api.list_agents(limit=50, after_seq=api.last_seq)
    # About 90.2 KB of JSON each: 512 KiB holds five of them, not six.
    assert len(first.items) == MAX_PAGE_BYTES // 90_200 == 5
    assert len(msgspec.json.encode(first.items)) <= MAX_PAGE_BYTES
    assert first.next_cursor is not None
    rest = await api.list_agents(limit=50, cursor=first.next_cursor)
    everything = [a.agent_id for a in first.items + rest.items]
    while rest.next_cursor is not None:
        rest = await api.list_agents(limit=50, cursor=rest.next_cursor)
        everything += [a.agent_id for a in rest.items]
    assert len(everything) == len(set(everything)) == 12


# Organizations kept apart -----------------------------------------------------------------
async def test_another_orgs_agent_is_answered_as_missing(
    client: Client, acme: tuple[str, Client], nc: NATS
) -> None:
    acme_org, acme_api = acme
    agent_id = (await acme_api.create_agent("Secret", tags=["x"])).fields["agent_id"]
    await acme_api.set_agent_state(agent_id, {"secret": True})
    other_org = str((await client.create_org("Other")).fields["org_id"])
    other = await as_user(client, other_org, "admin@other.example", ["admin"])

    missing_id = "no-such-agent"
    before = await last_seq(nc)
    for target in (agent_id, missing_id):
        for call in (
            other.get_agent(target, after_seq=seen(acme_api)),
            other.get_agent_state(target),
            other.update_agent(target, name="stolen"),
            other.archive_agent(target),
            other.set_agent_state(target, {"secret": False}),
            other.patch_agent_state(target, {"secret": False}),
            other.delete_agent(target),
        ):
            with pytest.raises(NotFoundError) as hidden:
                await call
            assert hidden.value.message == f"agent {target} does not exist"
    assert await last_seq(nc) == before
    assert (await other.list_agents(tag="x")).items == []
    with pytest.raises(NotFoundError):
        await other.list_agents(org_id=acme_org)
    with pytest.raises(NotFoundError):
        await other.create_agent("Planted", org_id=acme_org)
    # A service administrator may act in any organization, naming it.
    planted = await client.create_agent("Planted by admin", org_id=acme_org)
    assert planted.fields["org_id"] == acme_org
    assert len((await acme_api.list_agents(after_seq=client.last_seq)).items) == 2


async def test_deleting_the_org_removes_its_agents(
    client: Client, acme: tuple[str, Client]
) -> None:
    org_id, api = acme
    agent_id = (await api.create_agent("Doomed", tags=["t"])).fields["agent_id"]
    await api.set_agent_state(agent_id, {"a": 1})
    await client.delete_org(org_id)
    with pytest.raises(NotFoundError):
        await client.get_agent(agent_id, after_seq=client.last_seq)
    with pytest.raises(NotFoundError):
        await client.get_agent_state(agent_id)
    with pytest.raises(NotFoundError, match=f"agent {agent_id} does not exist"):
        await client.set_agent_state(agent_id, {"a": 2})
    assert (await client.list_agents(org_id=org_id, include_archived=True)).items == []


# Concurrency -----------------------------------------------------------------------------
async def test_concurrent_state_writes_at_one_version_have_one_winner(
    acme: tuple[str, Client], connections: list[NATS], nc: NATS
) -> None:
    _, api = acme
    agent_id = (await api.create_agent("Contended")).fields["agent_id"]
    base = await api.set_agent_state(agent_id, {"n": 0})
    writers = [Client(c, api.token) for c in connections] * 2  # 8 writers on 4 connections
    before = await last_seq(nc)
    calls = [
        (
            w.set_agent_state(agent_id, {"n": i}, expected_version=base.version)
            if i % 2
            else w.patch_agent_state(agent_id, {"by": i}, expected_version=base.version)
        )
        for i, w in enumerate(writers)
    ]
    ok, failed = await outcomes(calls)
    assert len(ok) == 1, failed
    assert len(failed) == len(writers) - 1
    for error in failed:
        assert isinstance(error, ConflictError), error
        assert error.details == {
            "expected_version": base.version,
            "current_version": ok[0].version,
        }
    assert await last_seq(nc) == before + 1
    state = await api.get_agent_state(agent_id, after_seq=ok[0].seq)
    assert (state.state, state.version) == (ok[0].fields["state"], ok[0].version)


async def test_concurrent_patches_without_a_version_lose_nothing(
    acme: tuple[str, Client], connections: list[NATS]
) -> None:
    """Each patch is decided again on the latest document when another landed first."""
    _, api = acme
    agent_id = (await api.create_agent("Busy")).fields["agent_id"]
    await api.set_agent_state(agent_id, {"kept": True})
    writers = [Client(c, api.token) for c in connections]
    ok, failed = await outcomes(
        [w.patch_agent_state(agent_id, {f"key{i}": i}) for i, w in enumerate(writers)]
    )
    assert failed == []
    state = await api.get_agent_state(agent_id, after_seq=seen(*writers))
    assert state.state == {"kept": True, "key0": 0, "key1": 1, "key2": 2, "key3": 3}
    assert state.version == max(w.version for w in ok)


async def test_a_deletion_racing_state_writes_leaves_no_state_behind(
    client: Client, acme: tuple[str, Client], nc: NATS, admin_token: str
) -> None:
    """However they interleave, no state write is stored after the deletion, and a second
    process (its own cache) that read the agent before the deletion is refused too.

    Four commands race, and this process's cache is one write behind: a command is decided
    again only after another one succeeded (or once for that stale cache), so none runs out
    of its five attempts (``MAX_ATTEMPTS``) and every outcome is a success or not_found."""
    _, api = acme
    agent_id = (await api.create_agent("Racing")).fields["agent_id"]
    await api.set_agent_state(agent_id, {"n": 0})
    log = EventLog(nc, keys=deployment_keys(nc))
    other_process = CommandRunner(log, AggregateCache(log))
    dispatcher = Dispatcher(
        nc,
        agent_handlers.command_router(second_process(nc, other_process)),
        Authenticator(other_process.cache),
    )

    async def write_elsewhere(n: int) -> envelope.Reply:
        body = msgspec.json.encode({"agent_id": agent_id, "state": {"n": n}})
        return envelope.decode(
            await dispatcher.handle(SetAgentState.op.subject, body, bearer(admin_token))
        )

    assert (await write_elsewhere(1)).ok  # the other process has the agent and state cached
    results = await asyncio.gather(
        *(api.set_agent_state(agent_id, {"n": n}) for n in range(2, 4)),
        api.delete_agent(agent_id),
        write_elsewhere(4),
        return_exceptions=True,
    )
    deleted = results[2]
    assert isinstance(deleted, Written), results
    late = await write_elsewhere(5)
    assert late.error is not None
    assert late.error.code == "not_found", late
    for result in results:
        if isinstance(result, BaseException):
            assert isinstance(result, NotFoundError), result
        elif isinstance(result, envelope.Reply) and not result.ok:
            assert result.error is not None
            assert result.error.code == "not_found", result
    # The state subject ends with the deletion's clear, whatever was written before it.
    commits = await log.read_subject(agents.state_subject(acme[0], agent_id))
    events = [e for c in commits for e in c.events]
    assert isinstance(events[-1], AgentStateCleared), events
    assert all(isinstance(e, AgentStateSet) for e in events[:-1]), events
    assert len(events) >= 3  # the first two writes, then the clear
    with pytest.raises(NotFoundError):
        await api.get_agent_state(agent_id, after_seq=deleted.seq)


async def test_an_archive_racing_state_writes_leaves_no_state_write_after_it(
    client: Client, acme: tuple[str, Client], nc: NATS, admin_token: str
) -> None:
    """Archiving is fenced as deleting is: a second process (its own cache) that read the
    agent before the archive is refused after it, and no state write lands after the
    archive in the log, however the writes interleave. Unarchived, the state is as the last
    write before the archive left it, and its version is the state subject's."""
    _, api = acme
    agent_id = (await api.create_agent("Racing")).fields["agent_id"]
    await api.set_agent_state(agent_id, {"n": 0})
    log = EventLog(nc, keys=deployment_keys(nc))
    other_process = CommandRunner(log, AggregateCache(log))
    dispatcher = Dispatcher(
        nc,
        agent_handlers.command_router(second_process(nc, other_process)),
        Authenticator(other_process.cache),
    )

    async def write_elsewhere(n: int) -> envelope.Reply:
        body = msgspec.json.encode({"agent_id": agent_id, "state": {"n": n}})
        return envelope.decode(
            await dispatcher.handle(SetAgentState.op.subject, body, bearer(admin_token))
        )

    assert (await write_elsewhere(1)).ok  # the other process has the agent and state cached
    results = await asyncio.gather(
        *(api.set_agent_state(agent_id, {"n": n}) for n in range(2, 4)),
        api.archive_agent(agent_id),
        write_elsewhere(4),
        return_exceptions=True,
    )
    archived = results[2]
    assert isinstance(archived, Written), results
    late = await write_elsewhere(5)
    assert late.error is not None, late
    assert late.error.code == "conflict", late
    for result in results:
        if isinstance(result, BaseException):
            assert isinstance(result, ConflictError), result
        elif isinstance(result, envelope.Reply) and not result.ok:
            assert result.error is not None, result
            assert result.error.code == "conflict", result
    # Nothing on the state subject comes after the archive's fence.
    commits = await log.read_subject(agents.state_subject(acme[0], agent_id))
    assert commits[-1].seq < archived.seq, [(c.seq, c.events) for c in commits]
    assert any(isinstance(e, AgentArchived) for e in commits[-1].events), commits[-1]
    # Unarchived, writes go on from the state as it was, at the state subject's version.
    await api.unarchive_agent(agent_id)
    state = await api.get_agent_state(agent_id, after_seq=api.last_seq)
    assert state.version == commits[-1].seq
    written = await api.set_agent_state(agent_id, {"n": 6}, expected_version=state.version)
    assert written.version > state.version
