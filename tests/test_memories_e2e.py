"""Memories over NATS, against the real service and a real nats-server, on each projection
store (``STORES``): adding and deduplicating in the log, updates, supersede chains, archive,
deletion of one memory and of a scope, list filters and pages, search, history, roles and
organizations kept apart, and replay.

The complaints of memory users (issue 12) are one test each, named for what they check:
``test_deleting_one_users_scope_keeps_every_other_users_memories``,
``test_a_filter_by_agent_returns_only_that_agents_memories``,
``test_the_same_memory_added_twice_exists_once`` (and ten at once),
``test_an_update_keeps_the_old_version_in_history``,
``test_a_valid_from_range_returns_only_memories_inside_it``,
``test_a_superseded_fact_is_not_returned_with_its_correction``,
``test_another_organizations_memory_is_not_found_on_every_subject``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, ConflictError, ForbiddenError, InvalidError, NotFoundError, subjects
from agentmem.consumers.aggregates import AggregateCache
from agentmem.consumers.expiry import ExpirySweeper
from agentmem.domain import memories as memories_domain
from agentmem.domain import metadata_filter
from agentmem.domain.memories import MemoryHistory, MemoryStats
from agentmem.eventlog import EventLog
from agentmem.events import MemoryExpired
from agentmem.projections.memories import MEMORIES, MEMORY_TAGS, MEMORY_VERSIONS
from agentmem.service import Service
from tests.realparts import deployment_keys, dump_store, replay_into, wait_caught_up

STORES = ("sqlite", "postgres")

PASSWORD = "long-enough-password"
DAY = 24 * 3600 * 1000
T0 = 1_700_000_000_000  # a fixed valid time, in the past


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


def ids_of(items: list[Any]) -> list[str]:
    return [m.memory_id for m in items]


# Adding and deduplicating ----------------------------------------------------------------
async def test_add_and_get(acme: tuple[str, Client]) -> None:
    org_id, api = acme
    added = await api.add_memory(
        "Ann is allergic to peanuts",
        user_id="ann",
        agent_id="helper",
        metadata={"confidence": "high"},
        tags=["health", "food", "health"],
        importance=0.9,
        valid_from=T0,
        source={"session_id": "chat-1", "message_ids": ["m1"], "producer": "extractor"},
    )
    assert added.event == "memory.added"
    assert added.fields["deduplicated"] is False
    memory_id = added.fields["memory_id"]
    memory = await api.get_memory(memory_id, after_seq=api.last_seq)
    assert (memory.org_id, memory.content, memory.memory_type) == (
        org_id,
        "Ann is allergic to peanuts",
        "semantic",
    )
    assert (memory.user_id, memory.agent_id, memory.session_id) == ("ann", "helper", None)
    assert memory.tags == ["health", "food"]
    assert (memory.importance, memory.valid_from, memory.valid_to) == (0.9, T0, None)
    assert memory.source == {"session_id": "chat-1", "message_ids": ["m1"], "producer": "extractor"}
    assert (memory.state, memory.version, memory.expired) == ("live", added.version, False)
    assert memory.created_at > 0

    resource = await api.add_memory(
        "The onboarding guide",
        memory_type="resource",
        agent_id="helper",
        uri="https://example.com/guide.pdf",
        mime_type="application/pdf",
    )
    got = await api.get_memory(resource.fields["memory_id"], after_seq=api.last_seq)
    assert (got.uri, got.mime_type) == ("https://example.com/guide.pdf", "application/pdf")


async def test_what_an_add_refuses(acme: tuple[str, Client], nc: NATS) -> None:
    _, api = acme
    before = await last_seq(nc)
    with pytest.raises(InvalidError, match="needs a scope") as refused:
        await api.add_memory("no scope")
    assert refused.value.details["fields"] == ["user_id", "agent_id", "session_id"]
    with pytest.raises(InvalidError, match="needs a uri"):
        await api.add_memory("a file", memory_type="resource", user_id="ann")
    with pytest.raises(InvalidError, match="resource memories only"):
        await api.add_memory("a fact", user_id="ann", uri="https://example.com")
    with pytest.raises(InvalidError, match="valid_to"):
        await api.add_memory("a fact", user_id="ann", valid_from=T0, valid_to=T0)
    with pytest.raises(InvalidError):
        await api.add_memory("x" * 10_001, user_id="ann")
    with pytest.raises(InvalidError):
        await api.add_memory("a fact", user_id="ann", importance=1.5)
    assert await last_seq(nc) == before


async def test_the_same_memory_added_twice_exists_once(acme: tuple[str, Client], nc: NATS) -> None:
    _, api = acme
    first = await api.add_memory("Ann lives in  Paris", user_id="ann", tags=["home"])
    before = await last_seq(nc)
    # The same text, normalised: case, Unicode forms and runs of whitespace do not count.
    again = await api.add_memory(" ann LIVES in paris ", user_id="ann", tags=["other"])
    assert again.fields["memory_id"] == first.fields["memory_id"]
    assert again.fields["deduplicated"] is True
    assert again.fields["content"] == "Ann lives in  Paris"  # the existing memory's fields
    assert again.seq == first.seq
    assert await last_seq(nc) == before  # nothing appended
    # Another type, another scope, another organization: another memory.
    other_type = await api.add_memory("Ann lives in Paris", user_id="ann", memory_type="episodic")
    other_scope = await api.add_memory("Ann lives in Paris", user_id="ann", agent_id="a1")
    assert len({first.fields["memory_id"], other_type.fields["memory_id"]}) == 2
    assert other_scope.fields["deduplicated"] is False
    listed = await api.list_memories(user_id="ann", after_seq=api.last_seq)
    assert len(listed.items) == 3


async def test_ten_concurrent_identical_adds_give_one_memory(
    acme: tuple[str, Client], nc: NATS
) -> None:
    _, api = acme
    before = await last_seq(nc)
    results = await asyncio.gather(
        *(api.add_memory("Ann prefers tea", user_id="ann") for _ in range(10))
    )
    assert len({r.fields["memory_id"] for r in results}) == 1
    assert sorted(r.fields["deduplicated"] for r in results) == [False] + [True] * 9
    assert await last_seq(nc) == before + 1
    listed = await api.list_memories(user_id="ann", after_seq=api.last_seq)
    assert [m.content for m in listed.items] == ["Ann prefers tea"]


async def test_a_retried_add_is_answered_with_its_first_outcome(
    acme: tuple[str, Client], nc: NATS
) -> None:
    _, api = acme
    first = await api.add_memory("Ann has a cat", user_id="ann", command_id="add-1")
    again = await api.add_memory("Ann has a cat", user_id="ann", command_id="add-1")
    assert (again.seq, again.fields["memory_id"]) == (first.seq, first.fields["memory_id"])
    assert again.fields["deduplicated"] is False
    assert await last_seq(nc) == first.seq


async def test_a_retried_batch_in_a_fresh_process_is_answered_with_its_first_outcome(
    service: Service, acme: tuple[str, Client], nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry that decides anew (a process that has not seen the first attempt: its cache
    is empty) is answered with the first attempt's flags, read from the log, not with its
    own decision (which took a memory that was there before for a new one: the storm)."""
    _, api = acme
    await api.add_memory("Ann has a dog", user_id="ann")
    batch = [
        {"content": "Ann has a cat", "user_id": "ann"},
        {"content": "Ann has a dog", "user_id": "ann"},
    ]
    first = await api.add_memories(batch, command_id="batch-1")
    assert (first.deduplicated, first.added) == ([False, True], 1)
    before = await last_seq(nc)
    runner = service.parts.runner
    monkeypatch.setattr(runner, "cache", AggregateCache(runner.cache.log))
    again = await api.add_memories(batch, command_id="batch-1")
    assert again == first
    assert await last_seq(nc) == before
    # Edited since, both (the content of each changed): still the reply it had then.
    for memory_id, text in zip(
        first.memory_ids, ["Ann has two cats", "Ann has no dog"], strict=True
    ):
        await api.update_memory(memory_id, content=text)
    edited = await last_seq(nc)
    assert await api.add_memories(batch, command_id="batch-1") == first
    monkeypatch.setattr(runner, "cache", AggregateCache(runner.cache.log))
    assert await api.add_memories(batch, command_id="batch-1") == first
    assert await last_seq(nc) == edited


@pytest.mark.parametrize("size", [9, 300, 1000])
async def test_a_retried_large_batch_is_answered_with_its_first_outcome(
    service: Service, acme: tuple[str, Client], nc: NATS, size: int
) -> None:
    """The first outcome of a batch is read back from the log whatever its size: a retry
    of more than 8 memories answered ``conflict`` (it read 8 sequences each way)."""
    _, api = acme
    batch = [{"content": f"fact {n} of {size}", "user_id": "ann"} for n in range(size)]
    first = await api.add_memories(batch, command_id=f"big-{size}")
    before = await last_seq(nc)
    again = await api.add_memories(batch, command_id=f"big-{size}")
    assert again == first
    assert await last_seq(nc) == before


async def test_content_another_process_just_gave_a_memory_is_not_taken_twice(
    service: Service, acme: tuple[str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process whose cache still holds a memory's old content (another process changed
    it since) took that memory as no longer holding its new content, and let an update or
    a supersede give the same content to a second memory (a race attacker, two processes
    on Postgres). The memory a slot points at is read again from the log first."""
    org_id, api = acme
    first = await api.add_memory("Ann likes tea", user_id="ann")
    other = await api.add_memory("Ann likes jazz", user_id="ann")
    runner = service.parts.runner
    behind = AggregateCache(runner.cache.log)
    memory_id = str(first.fields["memory_id"])
    await behind.load(memories_domain.subject(org_id, memory_id), memories_domain.evolve)
    await api.update_memory(memory_id, content="Ann likes coffee")  # the service's own cache
    monkeypatch.setattr(runner, "cache", behind)
    with pytest.raises(ConflictError, match="already holds this content") as refused:
        await api.update_memory(other.fields["memory_id"], content="ANN likes coffee")
    assert refused.value.details["duplicate_of"] == memory_id
    corrected = await api.supersede_memory(other.fields["memory_id"], "Ann likes  COFFEE")
    assert (corrected.fields["deduplicated"], corrected.fields["superseded_by"]) == (
        True,
        memory_id,
    )
    live = await api.list_memories(user_id="ann", after_seq=api.last_seq)
    assert [m.content for m in live.items] == ["Ann likes coffee"]


async def test_deleted_or_superseded_memories_do_not_block_their_text(
    acme: tuple[str, Client],
) -> None:
    _, api = acme
    first = await api.add_memory("Ann works at Acme", user_id="ann")
    await api.delete_memory(first.fields["memory_id"])
    second = await api.add_memory("Ann works at Acme", user_id="ann")
    assert second.fields["deduplicated"] is False
    assert second.fields["memory_id"] != first.fields["memory_id"]
    # Superseded: the old text may come back as a new memory.
    await api.supersede_memory(second.fields["memory_id"], "Ann works at Globex")
    third = await api.add_memory("ann works at acme", user_id="ann")
    assert third.fields["deduplicated"] is False
    assert third.fields["memory_id"] not in (first.fields["memory_id"], second.fields["memory_id"])
    # An expired memory does not block its text either.
    await api.add_memory("Ann is in Rome", user_id="ann", expires_at=T0)
    back = await api.add_memory("Ann is in Rome", user_id="ann")
    assert back.fields["deduplicated"] is False
    # An archived one does: it still exists (restore it to see it again).
    await api.archive_memory(third.fields["memory_id"])
    kept = await api.add_memory("Ann works at Acme", user_id="ann")
    assert (kept.fields["memory_id"], kept.fields["deduplicated"]) == (
        third.fields["memory_id"],
        True,
    )


# Updates, history, supersede ---------------------------------------------------------------
async def test_an_update_keeps_the_old_version_in_history(acme: tuple[str, Client]) -> None:
    _, api = acme
    added = await api.add_memory("Ann lives in Paris", user_id="ann", tags=["home"])
    memory_id = added.fields["memory_id"]
    updated = await api.update_memory(
        memory_id, content="Ann lives in Lyon", importance=0.8, expected_version=added.version
    )
    assert updated.event == "memory.updated"
    with pytest.raises(ConflictError):
        await api.update_memory(memory_id, content="stale", expected_version=added.version)
    memory = await api.get_memory(memory_id, after_seq=api.last_seq)
    assert (memory.content, memory.importance, memory.tags) == ("Ann lives in Lyon", 0.8, ["home"])
    history = await api.memory_history(memory_id)
    assert [e.commit_type for e in history.items] == ["memory.add", "memory.update"]
    # after_seq is checked as on every query: past the log's end it is refused.
    with pytest.raises(InvalidError, match="after_seq"):
        await api.request(MemoryHistory.op.subject, {"memory_id": memory_id, "after_seq": 10**12})
    assert history.items[0].events[0]["content"] == "Ann lives in Paris"
    assert history.items[1].events[0]["content"] == "Ann lives in Lyon"
    assert history.items[1].principal.startswith("user:")
    # The new content is the memory's now; the old one is free.
    same = await api.add_memory("Ann lives in Lyon", user_id="ann")
    assert (same.fields["memory_id"], same.fields["deduplicated"]) == (memory_id, True)
    fresh = await api.add_memory("Ann lives in Paris", user_id="ann")
    assert fresh.fields["deduplicated"] is False
    # No update may give one memory the content another live one holds.
    with pytest.raises(ConflictError, match="already holds this content") as refused:
        await api.update_memory(memory_id, content="ANN lives in Paris")
    assert refused.value.details["duplicate_of"] == fresh.fields["memory_id"]


async def test_an_update_clears_an_expiry_and_an_end_of_valid_time(
    acme: tuple[str, Client],
) -> None:
    _, api = acme
    tomorrow = int(time.time() * 1000) + DAY
    added = await api.add_memory(
        "Ann is in Rome this week", user_id="ann", valid_to=tomorrow, expires_at=tomorrow
    )
    memory_id = added.fields["memory_id"]
    # Null keeps a field; clear removes it.
    await api.update_memory(memory_id, expires_at=None, valid_to=None, importance=0.7)
    kept = await api.get_memory(memory_id, after_seq=api.last_seq)
    assert (kept.valid_to, kept.expires_at, kept.importance) == (tomorrow, tomorrow, 0.7)
    cleared = await api.update_memory(memory_id, clear=["expires_at", "valid_to"])
    assert (cleared.fields["valid_to"], cleared.fields["expires_at"]) == (None, None)
    memory = await api.get_memory(memory_id, after_seq=api.last_seq)
    assert (memory.valid_to, memory.expires_at) == (None, None)
    # Both projections that filter by them have the change.
    later = tomorrow + 2 * DAY
    listed = await api.list_memories(user_id="ann", as_of=later)
    assert [m.memory_id for m in listed.items] == [memory_id]
    found = await api.search_memories("Rome", user_id="ann", as_of=later, mode="vector")
    assert [hit.memory_id for hit in found] == [memory_id]
    with pytest.raises(InvalidError, match="both given and cleared"):
        await api.update_memory(memory_id, expires_at=tomorrow, clear=["expires_at"])
    with pytest.raises(InvalidError) as unknown:
        await api.update_memory(memory_id, clear=["content"])
    assert unknown.value.details["path"] == "$.clear[0]"


async def test_bringing_back_an_expired_memory_keeps_its_content_once(
    acme: tuple[str, Client],
) -> None:
    """An expired memory stops counting as a duplicate, so its text may be added again; an
    update that then brings it back (clears or moves its ``expires_at``) would leave two
    live memories of one content (it did): it is refused, as new content held by another
    memory is. With nobody else holding it, it comes back in its own slot."""
    _, api = acme
    soon = int(time.time() * 1000) + 300
    first = await api.add_memory("Ann is allergic to peanuts", user_id="ann", expires_at=soon)
    alone = await api.add_memory("Ann likes tea", user_id="ann", expires_at=soon)
    await asyncio.sleep(0.5)  # past expires_at; the sweep (every 60 s) has not come
    again = await api.add_memory("Ann is allergic to peanuts", user_id="ann")
    assert again.fields["deduplicated"] is False
    for change in ({"clear": ["expires_at"]}, {"expires_at": soon + DAY}):
        with pytest.raises(ConflictError, match="already holds this content") as refused:
            await api.update_memory(first.fields["memory_id"], **change)
        assert refused.value.details["duplicate_of"] == again.fields["memory_id"]
    back = await api.update_memory(alone.fields["memory_id"], clear=["expires_at"])
    assert back.fields["expires_at"] is None
    same = await api.add_memory("Ann likes tea", user_id="ann")
    assert (same.fields["deduplicated"], same.fields["memory_id"]) == (
        True,
        alone.fields["memory_id"],
    )
    live = await api.list_memories(user_id="ann", after_seq=api.last_seq)
    assert sorted(m.content for m in live.items) == ["Ann is allergic to peanuts", "Ann likes tea"]


async def test_a_superseded_fact_is_not_returned_with_its_correction(
    acme: tuple[str, Client],
) -> None:
    _, api = acme
    old = await api.add_memory("Ann lives in Paris", user_id="ann", valid_from=T0)
    old_id = old.fields["memory_id"]
    corrected = await api.supersede_memory(old_id, "Ann lives in Berlin", valid_from=T0 + 10 * DAY)
    assert corrected.event == "memory.superseded"
    new_id = corrected.fields["superseded_by"]
    assert (corrected.fields["memory_id"], corrected.fields["valid_to"]) == (old_id, T0 + 10 * DAY)
    after = api.last_seq
    listed = await api.list_memories(user_id="ann", after_seq=after)
    assert [m.content for m in listed.items] == ["Ann lives in Berlin"]
    found = await api.search_memories("Ann lives", user_id="ann")
    assert ids_of(found) == [new_id]
    old_memory = await api.get_memory(old_id)
    assert (old_memory.state, old_memory.superseded_by) == ("superseded", new_id)
    new_memory = await api.get_memory(new_id)
    assert (new_memory.supersedes, new_memory.valid_from) == (old_id, T0 + 10 * DAY)
    # On request, and by valid time: what was true on a day is answered.
    superseded = await api.list_memories(user_id="ann", states=["superseded"])
    assert ids_of(superseded.items) == [old_id]
    assert ids_of((await api.list_memories(user_id="ann", as_of=T0 + DAY)).items) == [old_id]
    assert ids_of((await api.list_memories(user_id="ann", as_of=T0 + 11 * DAY)).items) == [new_id]
    assert (await api.list_memories(user_id="ann", as_of=T0 - DAY)).items == []
    # Search answers by valid time too, and the correction alone is found now.
    assert ids_of(await api.search_memories("Ann lives", user_id="ann", as_of=T0 + DAY)) == [old_id]
    assert ids_of(await api.search_memories("Ann lives", user_id="ann")) == [new_id]
    # The chain's history, from either end, old to new.
    for memory_id in (old_id, new_id):
        history = await api.memory_history(memory_id)
        assert [e.commit_type for e in history.items] == [
            "memory.add",
            "memory.supersede",
            "memory.supersede",
        ]
    # A chain of three, from its middle: every link's commits, in log order.
    oslo = await api.supersede_memory(new_id, "Ann lives in Oslo", valid_from=T0 + 20 * DAY)
    history = await api.memory_history(new_id)
    assert [(e.commit_type, [ev["type"] for ev in e.events]) for e in history.items] == [
        ("memory.add", ["memory.added"]),
        ("memory.supersede", ["memory.added"]),
        ("memory.supersede", ["memory.superseded"]),
        ("memory.supersede", ["memory.added"]),
        ("memory.supersede", ["memory.superseded"]),
    ]
    assert [e.seq for e in history.items] == sorted(e.seq for e in history.items)
    last = oslo.fields["superseded_by"]
    assert len((await api.memory_history(last)).items) == 5
    # Corrections that a memory already held (deduplicated supersedes, two of them onto
    # Oslo): it keeps no `supersedes` of them, and its history has them still.
    held = []
    for n, place in enumerate(("Rome", "Bonn")):
        added = await api.add_memory(f"Ann lives in {place}", user_id="ann", valid_from=T0)
        held.append(str(added.fields["memory_id"]))
        onto = await api.supersede_memory(
            held[-1], "Ann lives in Oslo", valid_from=T0 + (n + 1) * DAY
        )
        assert (onto.fields["superseded_by"], onto.fields["deduplicated"]) == (last, True)
    history = await api.memory_history(last)
    assert [e.commit_type for e in history.items] == [
        *("memory.add", "memory.supersede", "memory.supersede"),  # Paris, Berlin
        *("memory.supersede", "memory.supersede"),  # Oslo, Berlin's end
        *("memory.add", "memory.supersede", "memory.add", "memory.supersede"),  # Rome, Bonn
    ]
    # From one of them: its own commits and Oslo's, not its sibling's.
    rome = await api.memory_history(held[0])
    assert [e.commit_type for e in rome.items] == [
        "memory.supersede",  # Oslo added
        "memory.add",
        "memory.supersede",
    ]
    # A superseded memory takes no more changes.
    with pytest.raises(ConflictError, match="superseded"):
        await api.supersede_memory(old_id, "Ann lives in Rome")
    with pytest.raises(ConflictError, match="superseded"):
        await api.update_memory(old_id, importance=0.1)
    with pytest.raises(InvalidError, match="old memory's own"):
        await api.supersede_memory(last, "ann lives in oslo")


async def test_archive_restore_delete(acme: tuple[str, Client], nc: NATS) -> None:
    _, api = acme
    memory_id = (await api.add_memory("Ann likes jazz", agent_id="dj")).fields["memory_id"]
    archived = await api.archive_memory(memory_id)
    assert archived.event == "memory.archived"
    assert (await api.list_memories(agent_id="dj", after_seq=api.last_seq)).items == []
    assert ids_of((await api.list_memories(agent_id="dj", states=["archived"])).items) == [
        memory_id
    ]
    assert await api.search_memories("jazz", agent_id="dj") == []
    assert ids_of(await api.search_memories("jazz", agent_id="dj", states=["archived"])) == [
        memory_id
    ]
    with pytest.raises(ConflictError, match="archived"):
        await api.archive_memory(memory_id)
    await api.restore_memory(memory_id)
    with pytest.raises(ConflictError, match="not archived"):
        await api.restore_memory(memory_id)
    assert ids_of(await api.search_memories("jazz", agent_id="dj", after_seq=api.last_seq)) == [
        memory_id
    ]
    deleted = await api.delete_memory(memory_id)
    assert deleted.event == "memory.deleted"
    with pytest.raises(NotFoundError):
        await api.get_memory(memory_id, after_seq=api.last_seq)
    assert await api.search_memories("jazz", agent_id="dj") == []
    before = await last_seq(nc)
    for write in (
        api.delete_memory(memory_id),
        api.update_memory(memory_id, content="x"),
        api.restore_memory(memory_id),
    ):
        with pytest.raises(NotFoundError):
            await write
    with pytest.raises(NotFoundError):
        await api.memory_history(memory_id)
    assert await last_seq(nc) == before


# Batches ----------------------------------------------------------------------------------
async def test_a_batch_is_all_or_none(acme: tuple[str, Client], nc: NATS) -> None:
    _, api = acme
    existing = await api.add_memory("Ann has a dog", user_id="ann")
    batch = await api.add_memories(
        [
            {"content": "Ann has a dog", "user_id": "ann"},
            {"content": "Ann has a bike", "user_id": "ann"},
            {"content": "ANN has a bike", "user_id": "ann"},
            {"content": "Bob has a bike", "user_id": "bob", "memory_type": "episodic"},
        ]
    )
    assert batch.memory_ids[0] == existing.fields["memory_id"]
    assert batch.memory_ids[1] == batch.memory_ids[2] != batch.memory_ids[3]
    assert batch.deduplicated == [True, False, True, False]
    assert batch.added == 2
    assert batch.version == await last_seq(nc)
    listed = await api.list_memories(user_id="ann", after_seq=api.last_seq)
    assert sorted(m.content for m in listed.items) == ["Ann has a bike", "Ann has a dog"]
    # One bad item: nothing of the batch is stored.
    before = await last_seq(nc)
    with pytest.raises(InvalidError, match="needs a scope") as refused:
        await api.add_memories([{"content": "fine", "user_id": "ann"}, {"content": "no scope"}])
    assert refused.value.details["path"] == "$.memories[1]"
    assert await last_seq(nc) == before
    # Nothing new: nothing appended.
    again = await api.add_memories([{"content": "Ann has a dog", "user_id": "ann"}])
    assert (again.version, again.added, again.deduplicated) == (0, 0, [True])
    assert await last_seq(nc) == before


# Deleting a scope -----------------------------------------------------------------------
async def test_deleting_one_users_scope_keeps_every_other_users_memories(
    client: Client, acme: tuple[str, Client]
) -> None:
    org_id, api = acme
    admin = await as_user(client, org_id, "admin@acme.example", ["admin"])
    users = [f"user-{n}" for n in range(10)]
    for user in users:
        await api.add_memories(
            [
                {"content": f"fact {n} of {user}", "user_id": user, "agent_id": "shared"}
                for n in range(200)
            ]
        )
    # The same user id in another organization is another person.
    other = str((await client.create_org("Other")).fields["org_id"])
    await client.add_memory("fact 1 of user-3", user_id="user-3", org_id=other)
    with pytest.raises(ForbiddenError):
        await api.delete_memory_scope(user_id="user-3")
    deleted = await admin.delete_memory_scope(user_id="user-3", command_id="scope-3")
    assert (deleted.deleted, deleted.org_id, deleted.user_id) == (200, org_id, "user-3")
    assert deleted.version == admin.last_seq
    assert (await api.list_memories(user_id="user-3", after_seq=admin.last_seq)).items == []
    for user in users:
        if user != "user-3":
            page = await api.list_memories(user_id=user, limit=500)
            assert len(page.items) == 200, user
    shared = await api.list_memories(agent_id="shared", limit=500)
    assert len(shared.items) == 500
    assert shared.next_cursor is not None
    theirs = await client.list_memories(user_id="user-3", org_id=other)
    assert [m.content for m in theirs.items] == ["fact 1 of user-3"]
    # Sending it again, as a retry (protocol.md) or anew, finds nothing more to delete and
    # appends nothing; the scope can fill again.
    for command_id in ("scope-3", None):
        again_deleted = await admin.delete_memory_scope(user_id="user-3", command_id=command_id)
        assert (again_deleted.deleted, again_deleted.version) == (0, 0)
    assert int((await client.status())["stream"]["last_seq"]) == deleted.version
    again = await api.add_memory("fact 1 of user-3", user_id="user-3", agent_id="shared")
    assert again.fields["deduplicated"] is False
    with pytest.raises(InvalidError, match="needs a scope"):
        await admin.delete_memory_scope()


# Lists and search ---------------------------------------------------------------------------
async def test_a_filter_by_agent_returns_only_that_agents_memories(
    acme: tuple[str, Client],
) -> None:
    _, api = acme
    for agent in ("planner", "coder"):
        for n in range(3):
            await api.add_memory(f"the build uses tool {n}", agent_id=agent, user_id="ann")
    await api.add_memory("the build uses tool 0", user_id="ann")  # no agent
    listed = await api.list_memories(agent_id="planner", after_seq=api.last_seq)
    assert len(listed.items) == 3
    assert {m.agent_id for m in listed.items} == {"planner"}
    found = await api.search_memories("build tool", agent_id="coder")
    assert len(found) == 3
    assert {m.agent_id for m in found} == {"coder"}
    assert all(m.rank == 2.0 for m in found)
    assert len(await api.search_memories("build", user_id="ann", limit=50)) == 7
    assert len((await api.list_memories(user_id="ann", agent_id="coder")).items) == 3


async def test_a_valid_from_range_returns_only_memories_inside_it(
    acme: tuple[str, Client],
) -> None:
    _, api = acme
    for day in range(10):
        await api.add_memory(f"event of day {day}", user_id="ann", valid_from=T0 + day * DAY)
    page = await api.list_memories(
        user_id="ann",
        valid_from_after=T0 + 3 * DAY,
        valid_from_before=T0 + 6 * DAY,
        order_by="valid_from",
        order="asc",
        after_seq=api.last_seq,
    )
    assert [m.content for m in page.items] == [f"event of day {d}" for d in (3, 4, 5)]
    assert all(T0 + 3 * DAY <= m.valid_from < T0 + 6 * DAY for m in page.items)
    # Created time is the log's: every one of them was created just now.
    created = await api.list_memories(user_id="ann", created_before=T0)
    assert created.items == []


async def test_list_filters_and_pages(acme: tuple[str, Client]) -> None:
    _, api = acme
    for n in range(7):
        await api.add_memory(
            f"note {n}",
            session_id="s1",
            memory_type="procedural" if n % 2 else "semantic",
            tags=["even"] if n % 2 == 0 else ["odd"],
            importance=n / 10,
            valid_from=T0 + (7 - n) * DAY,
        )
    after = api.last_seq
    newest_first = await api.list_memories(session_id="s1", limit=3, after_seq=after)
    seen = [m.content for m in newest_first.items]
    cursor = newest_first.next_cursor
    while cursor is not None:
        page = await api.list_memories(session_id="s1", limit=3, cursor=cursor)
        seen += [m.content for m in page.items]
        cursor = page.next_cursor
    assert seen == [f"note {n}" for n in reversed(range(7))]
    by_valid: list[str] = []
    cursor = None
    while True:
        page = await api.list_memories(
            session_id="s1", order_by="valid_from", order="asc", limit=2, cursor=cursor
        )
        by_valid += [m.content for m in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert by_valid == [f"note {n}" for n in reversed(range(7))]
    procedural = await api.list_memories(session_id="s1", memory_type="procedural")
    assert sorted(m.content for m in procedural.items) == ["note 1", "note 3", "note 5"]
    tagged = await api.list_memories(session_id="s1", tags_any=["even"], min_importance=0.3)
    assert sorted(m.content for m in tagged.items) == ["note 4", "note 6"]
    top = await api.list_memories(session_id="s1", max_importance=0.1)
    assert sorted(m.content for m in top.items) == ["note 0", "note 1"]
    with pytest.raises(InvalidError, match="cursor"):
        await api.list_memories(session_id="s1", cursor="bogus")
    # A cursor taken to another order or other filters is refused, not read as a position
    # in them (it would answer a page of something else).
    first = newest_first.next_cursor
    assert first is not None
    for other in ({"order": "asc"}, {"memory_type": "procedural"}, {"session_id": "s2"}):
        with pytest.raises(InvalidError, match="cursor"):
            await api.list_memories(**{"session_id": "s1", "limit": 3, **other}, cursor=first)
    # The page size and read-your-writes are free to change from one page to the next.
    again = await api.list_memories(session_id="s1", limit=5, cursor=first, after_seq=after)
    assert [m.content for m in again.items] == [f"note {n}" for n in (3, 2, 1, 0)]


async def test_expired_memories_are_left_out_unless_asked(acme: tuple[str, Client]) -> None:
    _, api = acme
    gone = await api.add_memory("a passing mood", user_id="ann", expires_at=T0)
    await api.add_memory("a lasting fact", user_id="ann")
    listed = await api.list_memories(user_id="ann", after_seq=api.last_seq)
    assert [m.content for m in listed.items] == ["a lasting fact"]
    expired = await api.list_memories(user_id="ann", states=["expired"])
    assert ids_of(expired.items) == [gone.fields["memory_id"]]
    assert expired.items[0].expired is True
    assert await api.search_memories("passing mood", user_id="ann") == []


# Metadata filters, time travel, decay, stats, expiry ------------------------------------------
async def test_metadata_filters_on_list_and_search(acme: tuple[str, Client]) -> None:
    _, api = acme
    made = {
        "paris": {"city": "Paris", "stars": 5, "kinds": ["food", "art"]},
        "rome": {"city": "Rome", "stars": 3, "kinds": ["food"]},
        "oslo": {"city": "Oslo", "stars": 4},
        "none": {},
    }
    ids = {}
    for name, metadata in made.items():
        written = await api.add_memory(f"trip to {name}", user_id="ann", metadata=metadata)
        ids[written.fields["memory_id"]] = name
    await api.add_memory("trip to paris", user_id="bob", metadata={"city": "Paris"})

    async def listed(document: dict[str, Any]) -> set[str]:
        page = await api.list_memories(
            user_id="ann", metadata_filter=document, after_seq=api.last_seq
        )
        return {ids[m.memory_id] for m in page.items}

    async def searched(document: dict[str, Any]) -> set[str]:
        found = await api.search_memories("trip", user_id="ann", metadata_filter=document)
        return {ids[m.memory_id] for m in found}

    for document, expected in [
        ({"city": "Paris"}, {"paris"}),
        ({"stars": {"gte": 4}}, {"paris", "oslo"}),
        ({"kinds": {"contains": "food"}}, {"paris", "rome"}),
        ({"city": {"nin": ["Paris", "Rome"]}}, {"oslo", "none"}),
        ({"or": [{"city": "Rome"}, {"not": {"stars": {"lt": 5}}}]}, {"rome", "paris", "none"}),
        ({"AND": [{"stars": {"in": [3, 4]}}, {"city": {"ne": "Oslo"}}]}, {"rome"}),
        # The largest filter the language allows (every condition a list of the most
        # values) is answered, not stopped at the read's time limit: spelled out value by
        # value, its SQLite statement took seconds to compile, which no limit interrupts.
        (
            {
                "and": [
                    {"stars": {"in": [*range(3, 3 + metadata_filter.MAX_IN)]}}
                    for _ in range(metadata_filter.MAX_CONDITIONS)
                ]
            },
            {"paris", "rome", "oslo"},
        ),
    ]:
        assert await listed(document) == expected, document
        assert await searched(document) == expected, document
    with pytest.raises(InvalidError) as bad:
        await api.list_memories(metadata_filter={"or": [{"stars": {"gt": True}}]})
    assert bad.value.details["path"] == "$.metadata_filter.or[0].stars.gt"


async def test_what_did_we_believe_on_1_march_about_where_ann_lives(
    acme: tuple[str, Client],
) -> None:
    """System time (``known_at``) and valid time (``as_of``), on list and search."""
    _, api = acme
    paris = (await api.add_memory("Ann lives in Paris", user_id="ann", valid_from=T0)).fields
    believed_paris = api.last_seq
    first = await api.get_memory(paris["memory_id"], after_seq=believed_paris)
    await api.update_memory(paris["memory_id"], metadata={"source": "chat"})
    moved = await api.supersede_memory(
        paris["memory_id"], "Ann lives in Berlin", valid_from=T0 + 60 * DAY
    )
    berlin_id = moved.fields["superseded_by"]
    after = api.last_seq

    async def where(**at: Any) -> list[str]:
        page = await api.list_memories(user_id="ann", after_seq=after, **at)
        found = await api.search_memories("where does Ann live", user_id="ann", **at)
        assert sorted(m.content for m in found) == sorted(m.content for m in page.items), at
        return [m.content for m in page.items]

    # Now: Berlin; what was true in January (valid time): Paris.
    assert await where() == ["Ann lives in Berlin"]
    assert await where(as_of=T0 + DAY) == ["Ann lives in Paris"]
    # What the service believed before it learned of the move (system time).
    assert await where(known_at_seq=believed_paris) == ["Ann lives in Paris"]
    assert await where(known_at=first.created_at) == ["Ann lives in Paris"]
    assert await where(known_at=first.created_at - 1) == []
    assert await where(known_at_seq=after) == ["Ann lives in Berlin"]
    # As believed then, with the metadata it had then.
    old = await api.list_memories(user_id="ann", known_at_seq=believed_paris)
    assert [m.metadata for m in old.items] == [{}]
    superseded = await api.list_memories(user_id="ann", states=["superseded"], known_at_seq=after)
    assert [(m.content, m.superseded_by) for m in superseded.items] == [
        ("Ann lives in Paris", berlin_id)
    ]
    with pytest.raises(InvalidError, match="known_at"):
        await api.list_memories(known_at=1, known_at_seq=1)


async def test_order_by_decayed_importance_page_by_page(acme: tuple[str, Client]) -> None:
    _, api = acme
    for n in range(7):
        await api.add_memory(
            f"memory {n}",
            agent_id="ranker",
            importance=(n * 3 % 7) / 10,
            memory_type="episodic" if n % 2 else "semantic",
        )
    seen: list[float] = []
    cursor = None
    first = True
    while first or cursor is not None:
        page = await api.list_memories(
            agent_id="ranker",
            order_by="importance",
            limit=3,
            cursor=cursor,
            after_seq=api.last_seq,
        )
        seen += [m.decayed_importance for m in page.items]
        for m in page.items:
            assert m.decayed_importance == pytest.approx(m.importance, rel=1e-6)
        cursor, first = page.next_cursor, False
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == 7
    # A cursor of another order is refused, not misread.
    listed = await api.list_memories(agent_id="ranker", limit=3)
    with pytest.raises(InvalidError, match="cursor"):
        await api.list_memories(agent_id="ranker", order_by="importance", cursor=listed.next_cursor)


async def test_stats_count_by_type_state_and_scope(
    client: Client, acme: tuple[str, Client]
) -> None:
    org_id, api = acme
    a = (await api.add_memory("fact", user_id="ann", agent_id="bot")).fields["memory_id"]
    await api.add_memory("an event", user_id="ann", memory_type="episodic")
    b = (await api.add_memory("old", user_id="bob")).fields["memory_id"]
    await api.archive_memory(b)
    await api.supersede_memory(a, "fact, corrected")
    await api.add_memory("gone soon", session_id="s1", expires_at=T0)
    stats = await api.memory_stats(after_seq=api.last_seq)
    assert (stats.org_id, stats.total) == (org_id, 5)
    assert stats.by_type == {"semantic": 4, "episodic": 1, "procedural": 0, "resource": 0}
    assert stats.by_state == {"live": 2, "archived": 1, "superseded": 1, "expired": 1}
    assert stats.by_scope == {"user": 4, "agent": 2, "session": 1}
    assert stats.distinct == {"user": 2, "agent": 1, "session": 1}
    ann = await api.memory_stats(user_id="ann", memory_type="semantic")
    assert (ann.total, ann.user_id, ann.by_state["superseded"]) == (2, "ann", 1)
    # As the protocol shows it: every field of what was asked for, null when not asked.
    raw = await api.request(MemoryStats.op.subject, {"memory_type": "episodic"})
    assert {f: raw.data[f] for f in ("user_id", "agent_id", "session_id", "memory_type")} == {
        "user_id": None,
        "agent_id": None,
        "session_id": None,
        "memory_type": "episodic",
    }
    assert raw.data["total"] == 1
    other = str((await client.create_org("Other")).fields["org_id"])
    assert (await client.memory_stats(org_id=other)).total == 0


def _sweeper(nc: NATS, service: Service) -> ExpirySweeper:
    """A sweeper of its own (another process's, as far as the log is concerned)."""
    assert service.store is not None
    log_ = EventLog(nc, keys=deployment_keys(nc))
    return ExpirySweeper(log_, AggregateCache(log_), service.store)


async def test_the_expiry_sweep_writes_one_event_however_many_sweep(
    service: Service, acme: tuple[str, Client], nc: NATS
) -> None:
    org_id, api = acme
    gone = await api.add_memory("a secret mood", user_id="ann", tags=["mood"], expires_at=T0)
    memory_id = gone.fields["memory_id"]
    later = time.time_ns() // 1_000_000 + 365 * DAY
    kept = await api.add_memory("a lasting fact", user_id="ann", expires_at=later)
    await api.list_memories(after_seq=api.last_seq)
    # Four sweepers at once, each with its own cache: one event.
    counts = await asyncio.gather(*(_sweeper(nc, service).sweep() for _ in range(4)))
    assert sum(counts) == 1
    commits = await EventLog(nc, keys=deployment_keys(nc)).read_subject(
        subjects.event(org_id, "memory", memory_id)
    )
    expired = [e for c in commits for e in c.events if isinstance(e, MemoryExpired)]
    assert len(expired) == 1
    assert await _sweeper(nc, service).sweep() == 0
    history = await api.memory_history(memory_id)
    assert history.items[-1].principal == "agentmem:expiry-sweep"
    # Nor does its history bring the content back (it did, to any role).
    added = history.items[0].events[0]
    assert added["type"] == "memory.added"
    assert (added["content"], added["tags"], added["metadata"], added["hidden"]) == (
        "",
        [],
        {},
        True,
    )
    assert "a secret mood" not in str(history)
    kept_history = await api.memory_history(kept.fields["memory_id"])
    assert kept_history.items[0].events[0]["content"] == "a lasting fact"
    await wait_for_row(api, memory_id)
    # The content left the tables; the row says it existed and expired.
    row = await api.get_memory(memory_id)
    assert (row.state, row.content, row.tags, row.metadata) == ("expired", "", [], {})
    assert await api.search_memories("secret mood", user_id="ann", states=["expired"]) == []
    assert ids_of((await api.list_memories(states=["expired"])).items) == [memory_id]
    assert ids_of((await api.list_memories(user_id="ann")).items) == [kept.fields["memory_id"]]
    with pytest.raises(ConflictError, match="expired"):
        await api.update_memory(memory_id, importance=0.9)
    # Its text can be remembered again: a new memory.
    again = await api.add_memory("a secret mood", user_id="ann")
    assert again.fields["deduplicated"] is False
    await api.delete_memory(memory_id)


async def test_a_superseded_memory_expires_as_any_other(
    service: Service, acme: tuple[str, Client], nc: NATS
) -> None:
    """Past its expires_at a superseded memory is expired, in every read, before the
    sweep's memory.expired (which expires it too) as after it."""
    _, api = acme
    soon = time.time_ns() // 1_000_000 + 2_500  # time for the correction's update below
    old = await api.add_memory("Ann lives in Paris", user_id="ann", valid_from=T0, expires_at=soon)
    old_id = str(old.fields["memory_id"])
    new = await api.supersede_memory(old_id, "Ann lives in Rome", valid_from=T0 + 10 * DAY)
    new_id = str(new.fields["superseded_by"])
    # The correction keeps the expiry of what it corrects, unless told otherwise.
    assert (await api.get_memory(new_id, after_seq=api.last_seq)).expires_at == soon
    await api.update_memory(new_id, clear=["expires_at"])
    await asyncio.sleep(max(0.0, (soon - time.time_ns() // 1_000_000) / 1000) + 0.1)

    async def expired_everywhere() -> None:
        assert (await api.get_memory(old_id, after_seq=api.last_seq)).expired is True
        listed = await api.list_memories(user_id="ann", states=["expired"])
        assert ids_of(listed.items) == [old_id]
        assert (await api.list_memories(user_id="ann", states=["superseded"])).items == []
        assert (await api.list_memories(user_id="ann", as_of=T0 + DAY)).items == []
        for mode in ("text", "vector", "hybrid"):
            found = await api.search_memories("Paris", user_id="ann", as_of=T0 + DAY, mode=mode)
            assert found == [], mode
        stats = await api.memory_stats(user_id="ann")
        assert (stats.by_state["expired"], stats.by_state["superseded"]) == (1, 0)
        assert ids_of((await api.list_memories(user_id="ann")).items) == [new_id]

    await expired_everywhere()
    assert await _sweeper(nc, service).sweep() == 1
    await wait_for_row(api, old_id)
    await expired_everywhere()


async def wait_for_row(api: Client, memory_id: str, state: str = "expired") -> None:
    for _ in range(100):
        if (await api.get_memory(memory_id)).state == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"memory {memory_id} never became {state}")


@pytest.fixture
def fast_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMEM_EXPIRY_SWEEP_S", "1")


async def test_the_service_sweeps_on_its_own(fast_sweep: None, acme: tuple[str, Client]) -> None:
    _, api = acme
    now = time.time_ns() // 1_000_000
    memory_id = (await api.add_memory("soon gone", agent_id="a", expires_at=now + 500)).fields[
        "memory_id"
    ]
    for _ in range(100):
        if (await api.get_memory(memory_id)).content == "":
            break
        await asyncio.sleep(0.1)
    memory = await api.get_memory(memory_id)
    assert (memory.state, memory.content) == ("expired", "")


# Roles and organizations ------------------------------------------------------------------
async def test_roles(client: Client, acme: tuple[str, Client]) -> None:
    org_id, member = acme
    reader = await as_user(client, org_id, "reader@acme.example", ["readonly"])
    memory_id = (await member.add_memory("a fact", user_id="ann")).fields["memory_id"]
    assert (await reader.get_memory(memory_id, after_seq=member.last_seq)).content == "a fact"
    assert len(await reader.search_memories("fact", user_id="ann")) == 1
    assert len((await reader.memory_history(memory_id)).items) == 1
    assert (await reader.memory_stats(user_id="ann")).total == 1
    for write in (
        reader.add_memory("another", user_id="ann"),
        reader.add_memories([{"content": "another", "user_id": "ann"}]),
        reader.update_memory(memory_id, importance=0.2),
        reader.supersede_memory(memory_id, "better"),
        reader.archive_memory(memory_id),
        reader.delete_memory(memory_id),
        reader.delete_memory_scope(user_id="ann"),
    ):
        with pytest.raises(ForbiddenError):
            await write


async def test_another_organizations_memory_is_not_found_on_every_subject(
    client: Client, acme: tuple[str, Client], nc: NATS
) -> None:
    org_id, api = acme
    memory_id = (await api.add_memory("Acme's secret", user_id="ann")).fields["memory_id"]
    other_org = str((await client.create_org("Other")).fields["org_id"])
    other = await as_user(client, other_org, "admin@other.example", ["admin"])
    await other.add_memory("Other's own", user_id="ann")
    before = await last_seq(nc)
    for call in (
        other.get_memory(memory_id, after_seq=api.last_seq),
        other.memory_history(memory_id),
        other.update_memory(memory_id, content="mine now"),
        other.supersede_memory(memory_id, "mine now"),
        other.archive_memory(memory_id),
        other.restore_memory(memory_id),
        other.delete_memory(memory_id),
        other.list_memories(org_id=org_id),
        other.search_memories("secret", org_id=org_id, user_id="ann"),
        other.add_memory("planted", org_id=org_id, user_id="ann"),
        other.add_memories([{"content": "planted", "user_id": "ann"}], org_id=org_id),
        other.delete_memory_scope(org_id=org_id, user_id="ann"),
        other.memory_stats(org_id=org_id),
        other.list_memories(org_id=org_id, known_at_seq=api.last_seq),
    ):
        with pytest.raises(NotFoundError):
            await call
    assert await last_seq(nc) == before
    # Their own reads of the same scope show their own memories only.
    assert [m.content for m in (await other.list_memories(user_id="ann")).items] == ["Other's own"]
    assert await other.search_memories("secret", user_id="ann") == []
    assert (await api.get_memory(memory_id)).content == "Acme's secret"


# The short path -----------------------------------------------------------------------------
async def test_remember_and_recall(acme: tuple[str, Client]) -> None:
    _, api = acme
    first = await api.remember("I am allergic to peanuts", user_id="ann")
    assert await api.remember("i am allergic to  peanuts", user_id="ann") == first
    await api.remember("I like hiking", user_id="ann")
    await api.remember("I am allergic to cats", user_id="bob")
    found = await api.recall("allergic peanuts", user_id="ann")
    assert [m.memory_id for m in found][:1] == [first]
    assert {m.user_id for m in found} == {"ann"}


# Replay -----------------------------------------------------------------------------------
async def test_replay_equals_live(
    service: Service,
    client: Client,
    acme: tuple[str, Client],
    nc: NATS,
    tmp_path: Path,
    admin_token: str,
) -> None:
    org_id, api = acme
    a = (await api.add_memory("one", user_id="ann", tags=["x", "y"])).fields["memory_id"]
    await api.update_memory(a, content="one, changed", tags=["y"], importance=0.25)
    b = (await api.add_memory("two", agent_id="bot", valid_from=T0)).fields["memory_id"]
    await api.supersede_memory(b, "two, corrected", valid_from=T0 + DAY)
    c = (await api.add_memory("three", session_id="s")).fields["memory_id"]
    await api.archive_memory(c)
    d = (await api.add_memory("four", session_id="s")).fields["memory_id"]
    await api.delete_memory(d)
    await api.add_memories([{"content": f"batch {n}", "user_id": "bob"} for n in range(5)])
    admin = await as_user(client, org_id, "admin@acme.example", ["admin"])
    await admin.delete_memory_scope(user_id="bob")
    gone = str((await client.create_org("Gone")).fields["org_id"])
    await client.add_memory("in a deleted org", user_id="ann", org_id=gone)
    await client.delete_org(gone)
    e = (await api.add_memory("five", session_id="s", tags=["t"], expires_at=T0)).fields
    await api.list_memories(after_seq=api.last_seq)
    assert await _sweeper(nc, service).sweep() == 1
    await wait_caught_up(nc, admin_token)
    assert service.store is not None
    live = await dump_store(service.store)
    assert sorted(row[6] for row in live["memories"]) == [
        "",  # five, expired
        "one, changed",
        "three",
        "two",
        "two, corrected",
    ]
    replayed = await replay_into(nc, tmp_path / "replayed.db")
    assert {row[0] for row in live["memory_versions"]} >= {a, b, c, e["memory_id"]}
    for table in (MEMORIES, MEMORY_TAGS, MEMORY_VERSIONS):
        assert replayed[table.name] == live[table.name], table.name
    assert dict(replayed["checkpoints"])["memories"] == dict(live["checkpoints"])["memories"]
    # And the replayed index finds what the live one finds.
    assert len(await api.search_memories("corrected", agent_id="bot")) == 1
