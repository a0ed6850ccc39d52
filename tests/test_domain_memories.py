"""Unit tests of the pure parts of memories: normalisation and content keys, evolve, every
decide function, and the memories projection. Nothing here touches NATS or a database."""

from __future__ import annotations

import pytest

from agentmem import subjects
from agentmem.domain import memories, memory_filter
from agentmem.domain.aggregate import Loaded, fold
from agentmem.domain.memories import (
    ArchiveMemory,
    Claim,
    DeleteMemory,
    Memory,
    NewMemory,
    Probe,
    RestoreMemory,
    Slot,
    SupersedeMemory,
    UpdateMemory,
)
from agentmem.errors import ConflictError, InvalidError, NotFoundError
from agentmem.eventlog import H_TIME, StoredCommit
from agentmem.events import (
    AnyEvent,
    MemoryAdded,
    MemoryArchived,
    MemoryContentClaimed,
    MemoryDeleted,
    MemoryExpired,
    MemoryRestored,
    MemorySuperseded,
    MemoryUpdated,
    OrgDeleted,
)
from agentmem.projections.memories import (
    EMPTIED,
    MEMORY_VERSIONS,
    MemoriesProjection,
    millionths,
    position,
)
from agentmem.store import Copy, Delete, Update, Upsert

ORG = "org-1"
NOW = 1_700_000_000_000


def key(content: str, **scope: str) -> str:
    return memories.content_key(
        ORG,
        "semantic",
        scope.get("user_id", "ann"),
        scope.get("agent_id"),
        scope.get("session_id"),
        content,
    )


def added(
    content: str = "Ann lives in Paris", generation: int = 0, **fields: object
) -> MemoryAdded:
    memory_id = memories.slot_id(key(content), generation)
    values: dict[str, object] = {
        "memory_id": memory_id,
        "org_id": ORG,
        "memory_type": "semantic",
        "content": content,
        "valid_from": NOW,
        "user_id": "ann",
        **fields,
    }
    return MemoryAdded(**values)  # type: ignore[arg-type]


def loaded(*events: AnyEvent, version: int = 7, memory_id: str | None = None) -> Loaded[Slot]:
    state = fold(memories.evolve, None, list(events))
    first = events[0] if events else None
    name = memory_id or (first.memory_id if isinstance(first, MemoryAdded) else "m")
    return Loaded(memories.subject(ORG, name), state, version if events else 0)


def memory_of(slot: Loaded[Slot]) -> Memory:
    assert isinstance(slot.state, Memory)
    return slot.state


# Keys ------------------------------------------------------------------------------------
def test_normalise_folds_case_forms_and_whitespace() -> None:
    assert memories.normalise("  Ann\tLIVES in\n\nPARİS ") == memories.normalise(
        "ann lives in parİs"
    )
    assert memories.normalise("ﬁne  café") == "fine café"  # NFKC: the ligature is two letters


def test_the_key_names_org_type_scope_and_content() -> None:
    base = key("Ann lives in Paris")
    assert key(" ann lives IN paris") == base
    assert key("Ann lives in Lyon") != base
    assert key("Ann lives in Paris", agent_id="a1") != base
    assert key("Ann lives in Paris", user_id="bob") != base
    assert (
        memories.content_key("org-2", "semantic", "ann", None, None, "Ann lives in Paris") != base
    )
    assert memories.content_key(ORG, "episodic", "ann", None, None, "Ann lives in Paris") != base
    # No field can bleed into the next: the parts are a JSON array.
    assert memories.content_key(ORG, "semantic", "a", "b", None, "c") != memories.content_key(
        ORG, "semantic", "a", None, "b", "c"
    )
    slot = memories.slot_id(base, 12)
    assert slot.endswith("-12")
    assert len(slot) <= 64
    assert subjects.parse(memories.subject(ORG, slot)).aggregate_id == slot


# Evolve ------------------------------------------------------------------------------------
def test_evolve_follows_a_memory_through_its_life() -> None:
    event = added(tags=("a", "b"), importance=0.3)
    memory = memory_of(loaded(event))
    assert (memory.state, memory.key, memory.tags) == (
        "live",
        key("Ann lives in Paris"),
        ("a", "b"),
    )
    changed = MemoryUpdated(
        memory_id=event.memory_id,
        content="Ann lives in Lyon",
        metadata={"k": 1},
        tags=("c",),
        importance=0.9,
        valid_from=NOW,
    )
    memory = memory_of(loaded(event, changed))
    assert (memory.content, memory.key, memory.importance) == (
        "Ann lives in Lyon",
        key("Ann lives in Lyon"),
        0.9,
    )
    archived = memory_of(loaded(event, MemoryArchived(memory_id=event.memory_id)))
    assert archived.state == "archived"
    assert archived.alive(NOW)
    restored = loaded(
        event, MemoryArchived(memory_id=event.memory_id), MemoryRestored(memory_id=event.memory_id)
    )
    assert memory_of(restored).state == "live"
    superseded = memory_of(
        loaded(
            event, MemorySuperseded(memory_id=event.memory_id, superseded_by="n", valid_to=NOW + 1)
        )
    )
    assert (superseded.state, superseded.superseded_by, superseded.valid_to) == (
        "superseded",
        "n",
        NOW + 1,
    )
    assert not superseded.alive(NOW)
    deleted = memory_of(loaded(event, MemoryDeleted(memory_id=event.memory_id)))
    assert deleted.state == "deleted"
    assert not deleted.alive(NOW)
    expiring = memory_of(loaded(added(expires_at=NOW)))
    assert expiring.alive(NOW - 1)
    assert not expiring.alive(NOW)


def test_a_claim_is_a_slot_but_no_memory() -> None:
    claim = MemoryContentClaimed(slot_id="k-1", memory_id="m-0")
    slot = loaded(claim, memory_id="k-1")
    assert slot.state == Claim("k-1", "m-0")
    with pytest.raises(NotFoundError):
        memories.require_memory(slot, "k-1")
    # Other events leave a claim as it is.
    assert memories.evolve(slot.state, MemoryArchived(memory_id="k-1")) == slot.state


def test_holds() -> None:
    memory = memory_of(loaded(added()))
    assert memories.holds(memory, memory, key("Ann lives in Paris"), NOW)
    assert not memories.holds(memory, memory, key("Ann lives in Lyon"), NOW)
    claim = Claim("k-0", memory.memory_id)
    assert memories.holds(claim, memory, key("Ann lives in Paris"), NOW)
    assert not memories.holds(claim, None, key("Ann lives in Paris"), NOW)


# Decisions ---------------------------------------------------------------------------------
def test_add_writes_the_free_slot_at_expected_zero_or_nothing() -> None:
    item = NewMemory(content="Ann lives in Paris", user_id="ann", tags=["x", "x"])
    free = loaded(memory_id=memories.slot_id(key("Ann lives in Paris"), 2))
    [write] = memories.add(ORG, item, Probe(None, free), NOW)
    assert (write.subject, write.expected) == (free.subject, 0)
    [event] = write.events
    assert isinstance(event, MemoryAdded)
    assert (event.memory_id, event.valid_from, event.tags) == (
        memories.slot_id(key("Ann lives in Paris"), 2),
        NOW,
        ("x",),
    )
    holder = memory_of(loaded(added()))
    assert memories.add(ORG, item, Probe(holder, None, 7), NOW) == []


def test_check_new() -> None:
    with pytest.raises(InvalidError, match="scope"):
        memories.check_new(NewMemory(content="x"), "$")
    with pytest.raises(InvalidError, match="uri"):
        memories.check_new(NewMemory(content="x", user_id="u", memory_type="resource"), "$")
    with pytest.raises(InvalidError, match="resource memories only"):
        memories.check_new(NewMemory(content="x", user_id="u", mime_type="text/plain"), "$")
    with pytest.raises(InvalidError, match="valid_to"):
        memories.check_new(NewMemory(content="x", user_id="u", valid_from=5, valid_to=4), "$")
    memories.check_new(
        NewMemory(content="x", user_id="u", memory_type="resource", uri="file:///a"), "$"
    )


def test_update_keeps_fields_left_out_and_claims_new_content() -> None:
    slot = loaded(added(tags=("a",), importance=0.4))
    memory = memory_of(slot)
    [write] = memories.update(
        slot, UpdateMemory(memory_id=memory.memory_id, importance=0.6), None, NOW
    )
    [event] = write.events
    assert isinstance(event, MemoryUpdated)
    assert (event.content, event.tags, event.importance, write.expected) == (
        memory.content,
        ("a",),
        0.6,
        7,
    )
    free = loaded(memory_id=memories.slot_id(key("Ann lives in Lyon"), 0))
    command = UpdateMemory(memory_id=memory.memory_id, content="Ann lives in Lyon")
    claim, update = memories.update(slot, command, Probe(None, free), NOW)
    assert (claim.subject, claim.expected) == (free.subject, 0)
    assert claim.events == [
        MemoryContentClaimed(
            slot_id=memories.slot_id(key("Ann lives in Lyon"), 0), memory_id=memory.memory_id
        )
    ]
    assert update.subject == slot.subject
    other = memory_of(loaded(added("Ann lives in Lyon")))
    with pytest.raises(ConflictError, match="already holds") as refused:
        memories.update(slot, command, Probe(other, None, 3), NOW)
    assert refused.value.details["duplicate_of"] == other.memory_id
    with pytest.raises(ConflictError, match="expected version"):
        memories.update(
            slot, UpdateMemory(memory_id=memory.memory_id, expected_version=6), None, NOW
        )
    with pytest.raises(InvalidError, match="valid_to"):
        memories.update(slot, UpdateMemory(memory_id=memory.memory_id, valid_to=NOW), None, NOW)


def test_update_clears_an_expiry_or_an_end_of_valid_time_named_in_clear() -> None:
    """Null keeps a field, so removing an optional time is said by name."""
    slot = loaded(added(valid_to=NOW + 10, expires_at=NOW + 20))
    memory_id = memory_of(slot).memory_id

    def updated(command: UpdateMemory) -> MemoryUpdated:
        [write] = memories.update(slot, command, None, NOW)
        [event] = write.events
        assert isinstance(event, MemoryUpdated)
        return event

    kept = updated(UpdateMemory(memory_id=memory_id, importance=0.9))
    assert (kept.valid_to, kept.expires_at) == (NOW + 10, NOW + 20)
    cleared = updated(UpdateMemory(memory_id=memory_id, clear=["expires_at"]))
    assert (cleared.valid_to, cleared.expires_at) == (NOW + 10, None)
    both = updated(UpdateMemory(memory_id=memory_id, clear=["valid_to", "expires_at"]))
    assert (both.valid_to, both.expires_at) == (None, None)
    # A later start with the end cleared is no longer checked against the old end.
    later = updated(UpdateMemory(memory_id=memory_id, valid_from=NOW + 50, clear=["valid_to"]))
    assert (later.valid_from, later.valid_to) == (NOW + 50, None)
    with pytest.raises(InvalidError, match="both given and cleared") as refused:
        updated(UpdateMemory(memory_id=memory_id, expires_at=NOW + 30, clear=["expires_at"]))
    assert refused.value.details["path"] == "$.expires_at"


def test_supersede() -> None:
    slot = loaded(added(valid_from=NOW - 100))
    old = memory_of(slot)
    free = loaded(memory_id=memories.slot_id(key("Ann lives in Lyon"), 0))
    command = SupersedeMemory(memory_id=old.memory_id, content="Ann lives in Lyon", valid_from=NOW)
    writes, holder = memories.supersede(slot, command, Probe(None, free), NOW)
    assert holder is None
    new, ended = writes
    [created] = new.events
    assert isinstance(created, MemoryAdded)
    assert (created.supersedes, created.user_id, created.valid_from, new.expected) == (
        old.memory_id,
        "ann",
        NOW,
        0,
    )
    assert ended.events == [
        MemorySuperseded(memory_id=old.memory_id, superseded_by=created.memory_id, valid_to=NOW)
    ]
    # The new content already a live memory's: the old one is superseded by that one.
    other = memory_of(loaded(added("Ann lives in Lyon")))
    writes, holder = memories.supersede(slot, command, Probe(other, None, 3), NOW)
    assert holder == other
    assert len(writes) == 1
    # An archived memory holding it: refused, as the fact would leave every default read.
    shelved = memory_of(loaded(added("Ann lives in Lyon"), MemoryArchived(memory_id="m")))
    with pytest.raises(ConflictError, match="is archived") as refused:
        memories.supersede(slot, command, Probe(shelved, None, 4), NOW)
    assert refused.value.details == {
        "memory_id": old.memory_id,
        "duplicate_of": shelved.memory_id,
        "state": "archived",
    }
    with pytest.raises(InvalidError, match="old memory's own"):
        memories.supersede(slot, command, Probe(old, None, 7), NOW)
    early = SupersedeMemory(memory_id=old.memory_id, content="x", valid_from=NOW - 200)
    with pytest.raises(InvalidError, match="before the old one's"):
        memories.supersede(slot, early, Probe(None, free), NOW)
    gone = loaded(
        added(), MemorySuperseded(memory_id=old.memory_id, superseded_by="n", valid_to=NOW)
    )
    with pytest.raises(ConflictError, match="superseded"):
        memories.supersede(gone, command, Probe(None, free), NOW)


def test_a_correction_never_lengthens_the_fact_and_keeps_its_expiry() -> None:
    """The old memory had ended at NOW + 10 and was to expire at NOW + 50: a correction from
    NOW + 20 made it true until NOW + 20, and the correction never expired. Past its expiry
    it could be superseded until the sweep emptied it, and not after."""
    slot = loaded(added(valid_from=NOW - 100, valid_to=NOW + 10, expires_at=NOW + 50))
    old = memory_of(slot)
    free = loaded(memory_id=memories.slot_id(key("Ann lives in Lyon"), 0))

    def superseded(valid_from: int, now: int = NOW) -> tuple[MemoryAdded, MemorySuperseded]:
        command = SupersedeMemory(
            memory_id=old.memory_id, content="Ann lives in Lyon", valid_from=valid_from
        )
        new, ended = memories.supersede(slot, command, Probe(None, free), now)[0]
        [created], [end] = new.events, ended.events
        assert isinstance(created, MemoryAdded)
        assert isinstance(end, MemorySuperseded)
        return created, end

    created, end = superseded(NOW + 20)
    assert (end.valid_to, created.valid_from, created.expires_at) == (NOW + 10, NOW + 20, NOW + 50)
    created, end = superseded(NOW + 5)  # within its valid time: ended there
    assert end.valid_to == NOW + 5
    created, end = superseded(NOW - 100)  # from its own start: it was never true
    assert end.valid_to == NOW - 100
    with pytest.raises(ConflictError, match="is expired") as refused:  # swept or not
        superseded(NOW + 20, now=NOW + 60)
    assert refused.value.details["state"] == "expired"


def test_archive_restore_delete() -> None:
    slot = loaded(added())
    memory_id = memory_of(slot).memory_id
    [write] = memories.archive(slot, ArchiveMemory(memory_id=memory_id))
    assert write.events == [MemoryArchived(memory_id=memory_id)]
    with pytest.raises(ConflictError, match="not archived"):
        memories.restore(slot, RestoreMemory(memory_id=memory_id))
    archived = loaded(added(), MemoryArchived(memory_id=memory_id))
    with pytest.raises(ConflictError, match="archived"):
        memories.archive(archived, ArchiveMemory(memory_id=memory_id))
    assert memories.restore(archived, RestoreMemory(memory_id=memory_id))[0].events == [
        MemoryRestored(memory_id=memory_id)
    ]
    [write] = memories.delete(archived, DeleteMemory(memory_id=memory_id))
    assert write.events == [MemoryDeleted(memory_id=memory_id)]
    deleted = loaded(added(), MemoryDeleted(memory_id=memory_id))
    with pytest.raises(NotFoundError):
        memories.delete(deleted, DeleteMemory(memory_id=memory_id))
    assert memories.delete_in_scope(deleted, memory_id) == []
    [write] = memories.delete_in_scope(slot, memory_id)
    assert write.events == [MemoryDeleted(memory_id=memory_id, scope_deletion=True)]


# The projection -----------------------------------------------------------------------------
def commit(seq: int, *events: AnyEvent, subject: str | None = None) -> StoredCommit:
    return StoredCommit(seq, subject or memories.subject(ORG, "m"), {H_TIME: "1234"}, list(events))


def test_the_projection() -> None:
    projection = MemoriesProjection()
    event = added(tags=("a",), importance=0.7)
    # An add writes no version: its row is its current one. A new memory has no tag rows
    # to clear: its row and its tags only.
    [row, tag] = projection.project(commit(3, event))
    assert isinstance(row, Upsert)
    assert row.row["position"] == position(3, 0) == 3000
    assert (row.row["importance"], row.row["state"], row.row["created_at"]) == (
        700_000,
        "live",
        1234,
    )
    assert tag == Upsert("memory_tags", {"memory_id": event.memory_id, "tag": "a", "org_id": ORG})
    assert millionths(0.1 + 0.2) == 300_000
    values = {
        "state": "superseded",
        "superseded_by": "n",
        "valid_to": 9,
        "updated_at": 1234,
        "version": 4,
    }
    # A change keeps the row as it was (recorded from its last change until this one),
    # then changes it.
    kept = Copy(
        "memory_versions",
        "memories",
        {"memory_id": "m"},
        MEMORY_VERSIONS.column_names,
        {"recorded_until_seq": 4, "recorded_until_at": 1234, "version_key": 4000},
        (("recorded_seq", "version"), ("recorded_at", "updated_at")),
    )
    assert projection.project(
        commit(4, MemorySuperseded(memory_id="m", superseded_by="n", valid_to=9))
    ) == [kept, Update("memories", {"memory_id": "m"}, values)]
    expired = projection.project(commit(5, MemoryExpired(memory_id="m", expires_at=10)))
    changed = {"state": "expired", **EMPTIED, "updated_at": 1234, "version": 5}
    assert expired[1] == Update("memories", {"memory_id": "m"}, changed)
    # Every version of an expired memory loses its content, and its tags go.
    assert expired[2:] == [
        Update("memory_versions", {"memory_id": "m"}, EMPTIED),
        Delete("memory_tags", {"memory_id": "m"}),
    ]
    assert projection.project(commit(6, MemoryDeleted(memory_id="m"))) == [
        Delete("memories", {"memory_id": "m"}),
        Delete("memory_tags", {"memory_id": "m"}),
        Delete("memory_versions", {"memory_id": "m"}),
    ]
    assert projection.project(commit(6, MemoryContentClaimed(slot_id="k", memory_id="m"))) == []
    assert projection.project(commit(7, OrgDeleted(org_id=ORG))) == [
        Delete("memories", {"org_id": ORG}),
        Delete("memory_tags", {"org_id": ORG}),
        Delete("memory_versions", {"org_id": ORG}),
    ]


# Lifecycle ---------------------------------------------------------------------------------
def test_the_sweep_expires_a_memory_once_its_time_has_passed() -> None:
    memory_id = added().memory_id
    slot = loaded(added(expires_at=100))
    assert memories.expire(slot, 99) == []
    [write] = memories.expire(slot, 100)
    # At the version read: a second sweeper that read the same version fails its write.
    assert (write.subject, write.expected) == (slot.subject, slot.version)
    assert write.events == [MemoryExpired(memory_id=memory_id, expires_at=100)]
    gone = loaded(added(expires_at=100), MemoryExpired(memory_id=memory_id, expires_at=100))
    assert memories.expire(gone, 200) == []
    assert memories.expire(loaded(added()), 10**15) == []  # no expires_at: never
    with pytest.raises(ConflictError):
        memories.update(gone, UpdateMemory(memory_id=memory_id, importance=0.9), None, 200)
    # An expired memory no longer holds its content: a new add of the text is a new memory.
    assert not memories.holds(gone.state, None, "k", 200)


def test_importance_halves_every_half_life_of_its_type() -> None:
    day = memory_filter.DAY_MS
    for memory_type, days in memory_filter.HALF_LIFE_DAYS.items():
        at = int(days * day)
        assert memory_filter.decayed(0.8, memory_type, 0, at) == pytest.approx(0.4)
        assert memory_filter.decayed(0.8, memory_type, 0, 2 * at) == pytest.approx(0.2)
        assert memory_filter.decayed(0.8, memory_type, 1_000, 10) == 0.8  # never raised
    assert memory_filter.HALF_LIFE_DAYS["episodic"] < memory_filter.HALF_LIFE_DAYS["semantic"]
