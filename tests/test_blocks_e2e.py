"""Core memory blocks over NATS, against the real service and a real nats-server, on each
projection store (``STORES``): create, set with an expected version, append, replace, the
character limit on every path, labels unique for each agent and user (decided in the log),
blocks shared by agents of one organization, history, roles, organizations kept apart, and
replay.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, ConflictError, ForbiddenError, InvalidError, NotFoundError, subjects
from agentmem.consumers.aggregates import AggregateCache
from agentmem.domain import agents, blocks
from agentmem.projections.blocks import BLOCK_AGENTS, BLOCKS
from agentmem.service import Service
from tests.realparts import dump_store, replay_into, wait_caught_up

STORES = ("sqlite", "postgres")

PASSWORD = "long-enough-password"


async def last_seq(nc: NATS) -> int:
    info = await nc.jetstream().stream_info(subjects.STREAM_NAME)
    return int(info.state.last_seq)


async def as_user(admin: Client, org_id: str, email: str, roles: list[Any]) -> Client:
    user = await admin.register_user(org_id, "Someone", email, PASSWORD, roles=roles)
    key = await admin.create_api_key("test", user_id=user.fields["user_id"])
    return admin.with_token(str(key.fields["token"]))


@pytest.fixture
async def acme(client: Client) -> tuple[str, Client]:
    """A fresh organization and a client of one of its members."""
    org_id = str((await client.create_org("Acme")).fields["org_id"])
    return org_id, await as_user(client, org_id, "member@acme.example", ["member"])


async def new_agent(api: Client, name: str = "Helper") -> str:
    return str((await api.create_agent(name)).fields["agent_id"])


def labels(page: Any) -> list[str]:
    return [b.label for b in page.items]


async def test_create_read_and_list(acme: tuple[str, Client]) -> None:
    org_id, api = acme
    helper = await new_agent(api)
    persona = await api.create_block(
        "persona", "I am a patient helper.", agent_id=helper, char_limit=200, description="who"
    )
    assert persona.event == "block.created"
    assert (persona.fields["agent_id"], persona.fields["char_limit"]) == (helper, 200)
    human = await api.create_block("human", "Ann, a nurse.", user_id="ann")
    block = await api.get_block(persona.fields["block_id"], after_seq=api.last_seq)
    assert (block.org_id, block.label, block.content) == (
        org_id,
        "persona",
        "I am a patient helper.",
    )
    assert (block.description, block.version, block.attached_agent_ids) == (
        "who",
        persona.version,
        [],
    )
    assert block.created_at > 0
    assert labels(await api.list_blocks(agent_id=helper)) == ["persona"]
    ann = await api.list_blocks(user_id="ann")
    assert [b.block_id for b in ann.items] == [human.fields["block_id"]]
    assert ann.items[0].char_limit == 5_000  # the default
    with pytest.raises(InvalidError, match="exactly one agent or one user"):
        await api.create_block("x", user_id="ann", agent_id=helper)
    with pytest.raises(InvalidError, match="exactly one agent or one user"):
        await api.list_blocks()
    with pytest.raises(NotFoundError, match="agent nobody"):
        await api.create_block("persona", agent_id="nobody")


async def test_another_organizations_block_is_answered_as_a_missing_one(
    client: Client, acme: tuple[str, Client]
) -> None:
    _, api = acme
    elsewhere = str((await client.create_org("Elsewhere")).fields["org_id"])
    theirs = await client.create_block("human", "Bo, a pilot.", user_id="bo", org_id=elsewhere)
    block_id = str(theirs.fields["block_id"])
    for asked in (block_id, "no-such-block"):
        with pytest.raises(NotFoundError) as missing:
            await api.get_block(asked, after_seq=client.last_seq)
        assert (str(missing.value), missing.value.details) == (
            f"block {asked} does not exist",
            {"block_id": asked},
        )


async def test_set_append_replace(acme: tuple[str, Client], nc: NATS) -> None:
    _, api = acme
    made = await api.create_block("human", "Name: Ann", user_id="ann")
    block_id = made.fields["block_id"]
    appended = await api.append_to_block(block_id, "Job: nurse")
    assert (appended.event, appended.fields["change"]) == ("block.updated", "append")
    assert appended.fields["content"] == "Name: Ann\nJob: nurse"
    replaced = await api.replace_in_block(block_id, "nurse", "surgeon")
    assert replaced.fields["content"] == "Name: Ann\nJob: surgeon"
    before = await last_seq(nc)
    with pytest.raises(ConflictError, match="does not hold the old text"):
        await api.replace_in_block(block_id, "nurse", "doctor")
    with pytest.raises(ConflictError, match="expected version"):
        await api.set_block(block_id, "stale", expected_version=made.version)
    assert await last_seq(nc) == before
    written = await api.set_block(
        block_id, "Name: Ann", expected_version=replaced.version, description="the user"
    )
    assert (written.fields["change"], written.fields["description"]) == ("set", "the user")
    block = await api.get_block(block_id, after_seq=api.last_seq)
    assert (block.content, block.version) == ("Name: Ann", written.version)
    # An empty block takes no separator; a custom separator is used as given.
    empty = (await api.create_block("notes", user_id="ann")).fields["block_id"]
    await api.append_to_block(empty, "one")
    second = await api.append_to_block(empty, "two", separator="; ")
    assert second.fields["content"] == "one; two"


async def test_a_write_over_the_limit_is_refused_on_every_path(
    acme: tuple[str, Client], nc: NATS
) -> None:
    _, api = acme
    made = await api.create_block("persona", "x" * 8, user_id="bob", char_limit=10)
    block_id = made.fields["block_id"]
    before = await last_seq(nc)
    refusals = [
        (api.create_block("other", "y" * 11, user_id="bob", char_limit=10), "$.content"),
        (api.set_block(block_id, "y" * 11), "$.content"),
        (api.set_block(block_id, "y" * 9, char_limit=5), "$.content"),
        (api.append_to_block(block_id, "yy"), "$.content"),  # 8 + "\n" + 2 = 11
        (api.replace_in_block(block_id, "x", "yy"), "$.new_text"),
    ]
    for call, path in refusals:
        with pytest.raises(InvalidError, match="over its limit of") as refused:
            await call
        assert refused.value.details["path"] == path
        assert refused.value.details["reason"] == "too_long"
        assert refused.value.details["char_limit"] in (5, 10)
    assert await last_seq(nc) == before
    # Up to the limit is fine, and a larger limit makes room.
    await api.append_to_block(block_id, "y")
    await api.set_block(block_id, "z" * 20, char_limit=20)
    block = await api.get_block(block_id, after_seq=api.last_seq)
    assert (block.content, block.char_limit) == ("z" * 20, 20)


async def test_labels_are_unique_for_each_agent_and_user(
    acme: tuple[str, Client], nc: NATS
) -> None:
    _, api = acme
    one, two = await new_agent(api, "One"), await new_agent(api, "Two")
    first = await api.create_block("persona", "one", agent_id=one)
    before = await last_seq(nc)
    with pytest.raises(ConflictError, match="already has a block labelled 'persona'") as taken:
        await api.create_block("persona", "again", agent_id=one)
    assert taken.value.details["block_id"] == first.fields["block_id"]
    assert await last_seq(nc) == before
    await api.create_block("persona", "two", agent_id=two)  # another agent: its own label
    await api.create_block("persona", "a user's", user_id=one)  # a user's labels are apart
    # Ten at once for one label of one user: one block.
    results = await asyncio.gather(
        *(api.create_block("human", f"take {n}", user_id="zed") for n in range(10)),
        return_exceptions=True,
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    assert len(made) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, BaseException))
    assert labels(await api.list_blocks(user_id="zed", after_seq=api.last_seq)) == ["human"]
    # Deleting a block frees its label.
    await api.delete_block(first.fields["block_id"])
    again = await api.create_block("persona", "one, again", agent_id=one)
    listed = await api.list_blocks(agent_id=one, after_seq=api.last_seq)
    assert [b.block_id for b in listed.items] == [again.fields["block_id"]]


async def test_a_block_shared_by_agents_of_one_organization(
    client: Client, acme: tuple[str, Client], nc: NATS
) -> None:
    _, api = acme
    planner, coder, tester = [await new_agent(api, n) for n in ("Planner", "Coder", "Tester")]
    shared = await api.create_block("project", "Ship v2 by Friday.", agent_id=planner)
    shared_id = shared.fields["block_id"]
    await api.create_block("persona", "I write code.", agent_id=coder)
    attached = await api.attach_block(shared_id, coder)
    assert (attached.event, attached.fields["agent_ids"]) == ("block.attached", [coder])
    await api.attach_block(shared_id, tester)
    # The coder reads its own block and the shared one; a write to it is seen by all.
    await api.append_to_block(shared_id, "Tests first.")
    seen = await api.list_blocks(agent_id=coder, after_seq=api.last_seq)
    assert labels(seen) == ["persona", "project"]
    assert seen.items[1].content == "Ship v2 by Friday.\nTests first."
    assert seen.items[1].agent_id == planner
    assert sorted(seen.items[1].attached_agent_ids) == sorted([coder, tester])
    assert labels(await api.list_blocks(agent_id=planner)) == ["project"]
    before = await last_seq(nc)
    with pytest.raises(ConflictError, match="already has block"):
        await api.attach_block(shared_id, coder)
    with pytest.raises(ConflictError, match="already has block"):
        await api.attach_block(shared_id, planner)  # its owner
    # An agent sees one block per label: another "project" cannot be attached to the coder.
    other = await api.create_block("project", "Another project.", user_id="pm")
    with pytest.raises(ConflictError, match="already has a block labelled 'project'"):
        await api.attach_block(other.fields["block_id"], coder)
    # Only the user's "project" was written: its label's reservation and the block.
    assert await last_seq(nc) == before + 2
    # An agent of another organization is refused as a missing one.
    elsewhere = str((await client.create_org("Elsewhere")).fields["org_id"])
    outsider = str((await client.create_agent("Outsider", org_id=elsewhere)).fields["agent_id"])
    before = await last_seq(nc)
    with pytest.raises(NotFoundError, match=f"agent {outsider} does not exist"):
        await api.attach_block(shared_id, outsider)
    with pytest.raises(NotFoundError):
        await client.attach_block(shared_id, outsider)  # not even the service administrator
    assert await last_seq(nc) == before
    # Detach: the coder no longer sees it, and may take the label for a block of its own.
    detached = await api.detach_block(shared_id, coder)
    assert detached.fields["agent_ids"] == [tester]
    with pytest.raises(NotFoundError, match="not attached"):
        await api.detach_block(shared_id, coder)
    assert labels(await api.list_blocks(agent_id=coder, after_seq=api.last_seq)) == ["persona"]
    await api.create_block("project", "The coder's own.", agent_id=coder)
    # Deleting the shared block frees its label for every agent that saw it.
    await api.delete_block(other.fields["block_id"])
    await api.delete_block(shared_id)
    for agent in (planner, tester):
        await api.create_block("project", f"new for {agent}", agent_id=agent)


async def test_a_retried_command_is_answered_with_its_first_outcome(
    acme: tuple[str, Client], nc: NATS
) -> None:
    _, api = acme
    first = await api.create_block("human", "Ann", user_id="ann", command_id="create-1")
    again = await api.create_block("human", "Ann", user_id="ann", command_id="create-1")
    assert (again.seq, again.fields["block_id"]) == (first.seq, first.fields["block_id"])
    appended = await api.append_to_block(first.fields["block_id"], "Lee", command_id="add-1")
    before = await last_seq(nc)
    repeat = await api.append_to_block(first.fields["block_id"], "Lee", command_id="add-1")
    assert (repeat.seq, repeat.fields["content"]) == (appended.seq, "Ann\nLee")
    assert await last_seq(nc) == before


async def test_a_create_retried_after_its_agent_was_deleted_gets_its_first_outcome(
    client: Client, acme: tuple[str, Client]
) -> None:
    _, api = acme
    agent_id = await new_agent(api)
    first = await api.create_block("persona", "hi", agent_id=agent_id, command_id="made-1")
    await client.delete_agent(agent_id)
    again = await api.create_block("persona", "hi", agent_id=agent_id, command_id="made-1")
    assert (again.seq, again.fields["block_id"]) == (first.seq, first.fields["block_id"])


async def test_the_labels_of_a_forgotten_owners_blocks_are_free_again(
    client: Client, acme: tuple[str, Client]
) -> None:
    """A forget shreds its target's blocks, which release no label: the agents they were
    attached to, and the user, could never hold a block of that label again."""
    org_id, api = acme
    seer = await new_agent(api, "Seer")
    await client.register_user(org_id, "Gone", "gone@acme.example", PASSWORD, user_id="gone-u")
    human = await api.create_block("human", "Name: Gone", user_id="gone-u")
    await api.attach_block(str(human.fields["block_id"]), seer)
    owner = await new_agent(api, "Owner")
    persona = await api.create_block("persona", "Owner's", agent_id=owner)
    await api.attach_block(str(persona.fields["block_id"]), seer)
    shared = await api.create_block("notes", "", agent_id=seer)
    await api.attach_block(str(shared.fields["block_id"]), owner)
    await client.forget_user("gone-u")
    await client.forget_agent(owner)
    # The forgotten agent is gone from the block it saw, for a detach as for a read.
    with pytest.raises(NotFoundError):
        await api.detach_block(str(shared.fields["block_id"]), owner)
    assert labels(await api.list_blocks(agent_id=seer, after_seq=client.last_seq)) == ["notes"]
    for label in ("human", "persona"):
        made = await api.create_block(label, "new", agent_id=seer)
        assert made.fields["label"] == label
    assert labels(await api.list_blocks(agent_id=seer, after_seq=api.last_seq)) == [
        "human",
        "notes",
        "persona",
    ]


async def test_concurrent_writes_lose_nothing_and_races_for_a_label_have_one_winner(
    acme: tuple[str, Client],
) -> None:
    _, api = acme
    agent = await new_agent(api)
    block_id = (await api.create_block("log", "start", agent_id=agent)).fields["block_id"]
    # Twenty appends at once, without expected_version: each is decided on the content the
    # one before it wrote (no lost update), in some order.
    await asyncio.gather(*(api.append_to_block(block_id, f"line {n}") for n in range(20)))
    content = (await api.get_block(block_id, after_seq=api.last_seq)).content
    lines = content.split("\n")
    assert lines[0] == "start"
    assert sorted(lines[1:]) == sorted(f"line {n}" for n in range(20))
    # Five blocks labelled "notes" raced onto one agent: one is attached, four refused.
    candidates = [
        (await api.create_block("notes", f"notes {n}", user_id=f"u{n}")).fields["block_id"]
        for n in range(5)
    ]
    results = await asyncio.gather(
        *(api.attach_block(b, agent) for b in candidates), return_exceptions=True
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, BaseException))
    seen = await api.list_blocks(agent_id=agent, after_seq=api.last_seq)
    assert [(b.label, b.block_id) for b in seen.items] == [
        ("log", block_id),
        ("notes", won[0].fields["block_id"]),
    ]


async def test_history_keeps_every_version(acme: tuple[str, Client]) -> None:
    _, api = acme
    agent = await new_agent(api)
    made = await api.create_block("persona", "v1", agent_id=agent)
    block_id = made.fields["block_id"]
    await api.set_block(block_id, "v2")
    await api.append_to_block(block_id, "v3")
    history = await api.block_history(block_id)
    assert [e.commit_type for e in history.items] == ["block.create", "block.set", "block.append"]
    assert [e.events[0]["content"] for e in history.items] == ["v1", "v2", "v2\nv3"]
    assert history.items[1].principal.startswith("user:")
    first = await api.block_history(block_id, limit=2)
    assert len(first.items) == 2
    assert first.next_cursor is not None
    rest = await api.block_history(block_id, cursor=first.next_cursor)
    assert [e.commit_type for e in rest.items] == ["block.append"]


async def test_delete(acme: tuple[str, Client], nc: NATS) -> None:
    _, api = acme
    block_id = (await api.create_block("human", "Ann", user_id="ann")).fields["block_id"]
    deleted = await api.delete_block(block_id)
    assert deleted.event == "block.deleted"
    with pytest.raises(NotFoundError):
        await api.get_block(block_id, after_seq=api.last_seq)
    assert (await api.list_blocks(user_id="ann")).items == []
    before = await last_seq(nc)
    for call in (
        api.delete_block(block_id),
        api.set_block(block_id, "x"),
        api.append_to_block(block_id, "x"),
        api.replace_in_block(block_id, "Ann", "Bob"),
        api.block_history(block_id),
    ):
        with pytest.raises(NotFoundError, match=f"block {block_id} does not exist"):
            await call
    assert await last_seq(nc) == before


async def test_roles(client: Client, acme: tuple[str, Client]) -> None:
    org_id, member = acme
    reader = await as_user(client, org_id, "reader@acme.example", ["readonly"])
    agent = await new_agent(member)
    other = await new_agent(member, "Other")
    block_id = (await member.create_block("persona", "hi", agent_id=agent)).fields["block_id"]
    assert (await reader.get_block(block_id, after_seq=member.last_seq)).content == "hi"
    assert labels(await reader.list_blocks(agent_id=agent)) == ["persona"]
    assert len((await reader.block_history(block_id)).items) == 1
    for write in (
        reader.create_block("human", user_id="ann"),
        reader.set_block(block_id, "mine"),
        reader.append_to_block(block_id, "mine"),
        reader.replace_in_block(block_id, "hi", "mine"),
        reader.attach_block(block_id, other),
        reader.detach_block(block_id, other),
        reader.delete_block(block_id),
    ):
        with pytest.raises(ForbiddenError):
            await write


async def test_another_organizations_block_is_not_found_on_every_subject(
    client: Client, acme: tuple[str, Client], nc: NATS
) -> None:
    org_id, api = acme
    agent = await new_agent(api)
    block_id = (await api.create_block("persona", "Acme's", agent_id=agent)).fields["block_id"]
    other_org = str((await client.create_org("Other")).fields["org_id"])
    other = await as_user(client, other_org, "admin@other.example", ["admin"])
    theirs = str((await other.create_agent("Theirs")).fields["agent_id"])
    await other.create_block("persona", "Other's own", user_id="ann")
    before = await last_seq(nc)
    for call in (
        other.get_block(block_id, after_seq=api.last_seq),
        other.block_history(block_id),
        other.set_block(block_id, "mine now"),
        other.append_to_block(block_id, "mine now"),
        other.replace_in_block(block_id, "Acme's", "mine"),
        other.attach_block(block_id, theirs),
        other.detach_block(block_id, agent),
        other.delete_block(block_id),
        other.list_blocks(agent_id=agent, org_id=org_id),
        other.create_block("human", agent_id=agent),  # Acme's agent, from the other org
        other.create_block("human", user_id="ann", org_id=org_id),
    ):
        with pytest.raises(NotFoundError):
            await call
    assert await last_seq(nc) == before
    # Their own reads of the same ids show their own blocks only.
    assert (await other.list_blocks(agent_id=agent)).items == []
    assert [b.content for b in (await other.list_blocks(user_id="ann")).items] == ["Other's own"]
    assert (await api.get_block(block_id)).content == "Acme's"


async def test_replay_equals_live(
    service: Service,
    client: Client,
    acme: tuple[str, Client],
    nc: NATS,
    tmp_path: Path,
    admin_token: str,
) -> None:
    org_id, api = acme
    one, two = await new_agent(api, "One"), await new_agent(api, "Two")
    a = (await api.create_block("persona", "a", agent_id=one)).fields["block_id"]
    await api.append_to_block(a, "more")
    await api.attach_block(a, two)
    b = (await api.create_block("human", "Ann", user_id="ann")).fields["block_id"]
    await api.replace_in_block(b, "Ann", "Ann Lee")
    await api.attach_block(b, one)
    await api.detach_block(b, one)
    c = (await api.create_block("notes", "gone", agent_id=two)).fields["block_id"]
    await api.delete_block(c)
    gone = str((await client.create_org("Gone")).fields["org_id"])
    gone_agent = str((await client.create_agent("G", org_id=gone)).fields["agent_id"])
    await client.create_block("persona", "in a deleted org", agent_id=gone_agent, org_id=gone)
    await client.delete_org(gone)
    # A forgotten user's block that an agent saw: its attachment goes with it, in a replay
    # too (where the block's creation reads as forgotten and its attachment does not).
    zed = await client.register_user(org_id, "Zed", "zed@acme.example", "long-password-1")
    zed_id = str(zed.fields["user_id"])
    z = (await api.create_block("human", "Zed's", user_id=zed_id)).fields["block_id"]
    await api.attach_block(z, two)
    await client.forget_user(zed_id)
    await wait_caught_up(nc, admin_token)
    assert service.store is not None
    live = await dump_store(service.store)
    assert sorted(row[3] for row in live["blocks"]) == ["Ann Lee", "a\nmore"]
    assert len(live["block_agents"]) == 2  # one's own "persona", attached to two
    replayed = await replay_into(nc, tmp_path / "replayed.db")
    for table in (BLOCKS, BLOCK_AGENTS):
        assert replayed[table.name] == live[table.name], table.name
    assert dict(replayed["checkpoints"])["blocks"] == dict(live["checkpoints"])["blocks"]


async def test_an_append_refused_on_a_stale_cache_is_decided_again(
    service: Service, acme: tuple[str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process whose cache is behind (another process emptied the block) found an append
    over the limit: it answered `invalid` at once, the client moved on, and the append
    was applied later all the same (the fault storm). Such a refusal is decided again on
    the log, as a `conflict` is."""
    org_id, api = acme
    agent = await new_agent(api, "Stale")
    made = await api.create_block("notes", "x" * 15, agent_id=agent, char_limit=20)
    block_id = str(made.fields["block_id"])
    runner = service.parts.runner
    behind = AggregateCache(runner.cache.log)
    await behind.load(blocks.subject(org_id, block_id), blocks.evolve)  # 15 characters
    await api.set_block(block_id, "reset")  # through the service's own cache
    monkeypatch.setattr(runner, "cache", behind)
    appended = await api.append_to_block(block_id, "y" * 10)
    assert (await api.get_block(block_id, after_seq=appended.seq)).content.startswith("reset")
    with pytest.raises(InvalidError, match="over its limit"):
        await api.append_to_block(block_id, "z" * 10)


async def test_an_agent_another_process_deleted_gets_no_block(
    service: Service, client: Client, acme: tuple[str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block's writes do not check its agent's version: a process whose cache had not
    seen the agent's deletion (made by another process) created and attached blocks for
    it. The agent is read from the log."""
    org_id, api = acme
    agent = await new_agent(api, "Soon gone")
    shared = str((await api.create_block("team", "notes", user_id="ann")).fields["block_id"])
    runner = service.parts.runner
    behind = AggregateCache(runner.cache.log)
    await behind.load(agents.subject(org_id, agent), agents.evolve)
    await client.delete_agent(agent)
    monkeypatch.setattr(runner, "cache", behind)
    with pytest.raises(NotFoundError):
        await api.create_block("persona", "x", agent_id=agent)
    with pytest.raises(NotFoundError):
        await api.attach_block(shared, agent)
