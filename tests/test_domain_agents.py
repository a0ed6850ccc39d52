"""Unit tests of the pure parts of agents: JSON merge patch, evolve, every decide function,
and the agents projection. Nothing here touches NATS or a database."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from agentmem import subjects
from agentmem.commands import (
    ArchiveAgent,
    CreateAgent,
    DeleteAgent,
    PatchAgentState,
    SetAgentState,
    UnarchiveAgent,
    UpdateAgent,
)
from agentmem.domain import agents
from agentmem.domain.aggregate import Loaded, Write, fold
from agentmem.domain.jsondoc import MAX_DEPTH, check_bounds, depth, merge_patch
from agentmem.errors import ConflictError, InvalidError, NotFoundError
from agentmem.eventlog import H_TIME, StoredCommit
from agentmem.events import (
    AgentArchived,
    AgentCreated,
    AgentDeleted,
    AgentStateCleared,
    AgentStateSet,
    AgentUnarchived,
    AgentUpdated,
    AnyEvent,
    OrgDeleted,
    ToolDeleted,
)
from agentmem.projections.agents import AgentsProjection
from agentmem.store import Delete, Update, Upsert

ORG = "org-1"
AGENT = "agent-1"
CREATED = AgentCreated(
    agent_id=AGENT,
    org_id=ORG,
    name="Helper",
    description="helps",
    persona="You are helpful.",
    model={"provider": "acme", "temperature": 0.2},
    metadata={"team": "a"},
    tags=("support", "beta"),
)


def loaded_agent(*events: AnyEvent, version: int = 5) -> Loaded[agents.Agent]:
    state = fold(agents.evolve, None, list(events))
    return Loaded(agents.subject(ORG, AGENT), state, version if events else 0)


def loaded_state(
    document: dict[str, Any] | None = None, version: int = 0
) -> Loaded[agents.StateDocument]:
    state = agents.StateDocument(AGENT, document) if document is not None else None
    return Loaded(agents.state_subject(ORG, AGENT), state, version)


def only(writes: list[Write]) -> Write:
    assert len(writes) == 1
    return writes[0]


# JSON merge patch: RFC 7396 --------------------------------------------------------------
# Appendix A of RFC 7396, every row: (original, patch, result).
RFC_7396_APPENDIX_A = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("original", "patch", "result"), RFC_7396_APPENDIX_A)
def test_merge_patch_rfc_7396_appendix_a(original: Any, patch: Any, result: Any) -> None:
    before = msgspec.json.encode(original)
    assert merge_patch(original, patch) == result
    assert msgspec.json.encode(original) == before, "the target was changed in place"


def test_merge_patch_rfc_7396_section_3_example() -> None:
    target = {
        "title": "Goodbye!",
        "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"],
        "content": "This will be unchanged",
    }
    patch = {
        "title": "Hello!",
        "phoneNumber": "+01-123-456-7890",
        "author": {"familyName": None},
        "tags": ["example"],
    }
    assert merge_patch(target, patch) == {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "content": "This will be unchanged",
        "phoneNumber": "+01-123-456-7890",
    }
    assert target["author"] == {"givenName": "John", "familyName": "Doe"}


def test_merge_patch_leaves_the_patch_alone() -> None:
    patch = {"a": {"b": None, "c": {"d": 1}}}
    merge_patch({"a": {"b": 1}}, patch)
    assert patch == {"a": {"b": None, "c": {"d": 1}}}


def test_depth_and_bounds() -> None:
    assert depth(1) == depth("x") == depth(None) == 0
    assert depth({}) == depth([]) == 1
    assert depth({"a": [{"b": 1}]}) == 3
    deep: Any = 1
    for _ in range(5000):  # far past Python's recursion limit: measured, not crashed on
        deep = [deep]
    assert depth(deep) == 5000
    with pytest.raises(InvalidError, match="nests 5000 levels") as nested:
        check_bounds(deep, "doc", 10**9, path="$.doc")
    assert nested.value.details == {
        "path": "$.doc",
        "reason": "too_deep",
        "depth": 5000,
        "max_depth": MAX_DEPTH,
    }
    with pytest.raises(InvalidError, match="is 13 bytes as JSON; at most 12") as big:
        check_bounds({"a": "12345"}, "doc", 12, path="$.doc")
    assert big.value.details == {
        "path": "$.doc",
        "reason": "too_large",
        "size": 13,
        "max_bytes": 12,
    }
    check_bounds({"a": "12345"}, "doc", 13, path="$.doc")


# Evolve ----------------------------------------------------------------------------------
def test_evolve_through_a_whole_life() -> None:
    state = agents.evolve(None, CREATED)
    assert state == agents.Agent(
        agent_id=AGENT,
        org_id=ORG,
        name="Helper",
        description="helps",
        persona="You are helpful.",
        model={"provider": "acme", "temperature": 0.2},
        metadata={"team": "a"},
        tags=("support", "beta"),
    )
    updated = AgentUpdated(
        agent_id=AGENT,
        name="Helper 2",
        description="",
        persona="p",
        model={},
        metadata={"x": 1},
        tags=("t",),
    )
    state = agents.evolve(state, updated)
    assert state is not None
    assert (state.name, state.description, state.persona, state.tags) == (
        "Helper 2",
        "",
        "p",
        ("t",),
    )
    assert (state.model, state.metadata) == ({}, {"x": 1})
    state = agents.evolve(state, AgentArchived(agent_id=AGENT))
    assert state is not None
    assert state.archived
    state = agents.evolve(state, AgentUnarchived(agent_id=AGENT))
    assert state is not None
    assert not state.archived
    state = agents.evolve(state, AgentDeleted(agent_id=AGENT))
    assert state is not None
    assert state.deleted
    # Other events leave it alone; events without a created agent create nothing.
    assert agents.evolve(state, ToolDeleted(tool_id="t")) is state
    assert agents.evolve(None, AgentArchived(agent_id=AGENT)) is None
    assert agents.evolve(None, updated) is None


def test_evolve_state() -> None:
    state = agents.evolve_state(None, AgentStateSet(agent_id=AGENT, state={"a": 1}))
    assert state == agents.StateDocument(AGENT, {"a": 1})
    state = agents.evolve_state(state, AgentStateSet(agent_id=AGENT, state={"b": 2}, patched=True))
    assert state == agents.StateDocument(AGENT, {"b": 2})
    state = agents.evolve_state(state, AgentStateCleared(agent_id=AGENT))
    assert state == agents.StateDocument(AGENT, {}, cleared=True)
    assert agents.evolve_state(state, CREATED) is state


# Create and update -----------------------------------------------------------------------
def test_create_on_a_fresh_subject() -> None:
    command = CreateAgent(
        name="Helper",
        description="helps",
        persona="You are helpful.",
        model={"provider": "acme", "temperature": 0.2},
        metadata={"team": "a"},
        tags=["support", "beta", "support"],
    )
    write = only(agents.create(loaded_agent(), command, ORG, AGENT))
    assert write.subject == subjects.event(ORG, "agent", AGENT)
    assert write.expected == 0
    assert write.events == [CREATED]  # the duplicate tag dropped, order kept


def test_create_on_a_taken_id_is_a_conflict() -> None:
    with pytest.raises(ConflictError, match="already exists"):
        agents.create(loaded_agent(CREATED), CreateAgent(name="x"), ORG, AGENT)


def test_update_keeps_what_it_leaves_out() -> None:
    loaded = loaded_agent(CREATED)
    write = only(agents.update(loaded, UpdateAgent(agent_id=AGENT, description="")))
    assert (write.subject, write.expected) == (loaded.subject, 5)
    assert write.events == [
        AgentUpdated(
            agent_id=AGENT,
            name="Helper",
            description="",  # an empty string is a value, not "left out"
            persona="You are helpful.",
            model={"provider": "acme", "temperature": 0.2},
            metadata={"team": "a"},
            tags=("support", "beta"),
        )
    ]


def test_update_replaces_model_metadata_and_tags_whole() -> None:
    command = UpdateAgent(
        agent_id=AGENT, name="N", model={"name": "m"}, metadata={}, tags=["x", "x", "y"]
    )
    (event,) = only(agents.update(loaded_agent(CREATED), command)).events
    assert isinstance(event, AgentUpdated)
    assert (event.name, event.model, event.metadata, event.tags) == (
        "N",
        {"name": "m"},
        {},
        ("x", "y"),
    )


def test_update_of_an_archived_agent_is_allowed() -> None:
    loaded = loaded_agent(CREATED, AgentArchived(agent_id=AGENT))
    assert agents.update(loaded, UpdateAgent(agent_id=AGENT, name="Still editable"))


@pytest.mark.parametrize(
    "command",
    [
        UpdateAgent(agent_id=AGENT, name="x"),
        ArchiveAgent(agent_id=AGENT),
        UnarchiveAgent(agent_id=AGENT),
    ],
)
def test_writes_to_a_missing_or_deleted_agent_are_not_found(command: Any) -> None:
    def archive(loaded: Loaded[agents.Agent], command: ArchiveAgent) -> list[Write]:
        return agents.archive(loaded, loaded_state(), command)

    decide = {UpdateAgent: agents.update, ArchiveAgent: archive}.get(
        type(command), agents.unarchive
    )
    for loaded in (loaded_agent(), loaded_agent(CREATED, AgentDeleted(agent_id=AGENT))):
        with pytest.raises(NotFoundError, match=f"agent {AGENT} does not exist"):
            decide(loaded, command)


def test_a_stale_expected_version_is_a_conflict_with_the_current_one() -> None:
    loaded = loaded_agent(CREATED, version=9)
    with pytest.raises(ConflictError) as stale:
        agents.update(loaded, UpdateAgent(agent_id=AGENT, name="x", expected_version=8))
    assert stale.value.details == {"expected_version": 8, "current_version": 9}
    assert agents.update(loaded, UpdateAgent(agent_id=AGENT, name="x", expected_version=9))


# Archive ---------------------------------------------------------------------------------
def test_archive_and_unarchive() -> None:
    loaded = loaded_agent(CREATED)
    assert agents.archive(loaded, loaded_state({"a": 1}, 12), ArchiveAgent(agent_id=AGENT)) == [
        # The fence: a state write decided before the archive fails on the state subject.
        Write(agents.state_subject(ORG, AGENT), 12, [AgentArchived(agent_id=AGENT)]),
        Write(agents.subject(ORG, AGENT), 5, [AgentArchived(agent_id=AGENT)]),
    ]
    with pytest.raises(ConflictError, match="is not archived"):
        agents.unarchive(loaded, UnarchiveAgent(agent_id=AGENT))
    archived = loaded_agent(CREATED, AgentArchived(agent_id=AGENT))
    with pytest.raises(ConflictError, match="already archived"):
        agents.archive(archived, loaded_state(), ArchiveAgent(agent_id=AGENT))
    assert only(agents.unarchive(archived, UnarchiveAgent(agent_id=AGENT))).events == [
        AgentUnarchived(agent_id=AGENT)
    ]


def test_require_active() -> None:
    assert agents.require_active(loaded_agent(CREATED), AGENT).name == "Helper"
    archived = loaded_agent(CREATED, AgentArchived(agent_id=AGENT))
    with pytest.raises(ConflictError, match="is archived") as refused:
        agents.require_active(archived, AGENT)
    assert refused.value.details == {"agent_id": AGENT, "archived": True}
    with pytest.raises(NotFoundError):
        agents.require_active(loaded_agent(), AGENT)


# Delete ----------------------------------------------------------------------------------
def test_delete_clears_the_state_at_its_version_in_the_same_batch() -> None:
    writes = agents.delete(
        loaded_agent(CREATED), loaded_state({"a": 1}, 12), DeleteAgent(agent_id=AGENT)
    )
    assert writes == [
        Write(agents.state_subject(ORG, AGENT), 12, [AgentStateCleared(agent_id=AGENT)]),
        Write(agents.subject(ORG, AGENT), 5, [AgentDeleted(agent_id=AGENT)]),
    ]
    # Never set: the state subject is expected empty (version 0), which still fences it.
    writes = agents.delete(loaded_agent(CREATED), loaded_state(), DeleteAgent(agent_id=AGENT))
    assert writes[0].expected == 0


def test_delete_checks_the_profile_version_and_liveness() -> None:
    with pytest.raises(ConflictError):
        agents.delete(
            loaded_agent(CREATED), loaded_state(), DeleteAgent(agent_id=AGENT, expected_version=4)
        )
    with pytest.raises(NotFoundError):
        agents.delete(loaded_agent(), loaded_state(), DeleteAgent(agent_id=AGENT))
    archived = loaded_agent(CREATED, AgentArchived(agent_id=AGENT))
    assert len(agents.delete(archived, loaded_state(), DeleteAgent(agent_id=AGENT))) == 2


# State -----------------------------------------------------------------------------------
def test_set_state_replaces_the_document_at_the_state_version() -> None:
    command = SetAgentState(agent_id=AGENT, state={"plan": ["a"]})
    write = only(agents.set_state(loaded_agent(CREATED), loaded_state({"old": 1}, 30), command))
    assert (write.subject, write.expected) == (agents.state_subject(ORG, AGENT), 30)
    assert write.events == [AgentStateSet(agent_id=AGENT, state={"plan": ["a"]}, patched=False)]


def test_set_state_without_expected_version_still_writes_at_the_version_read() -> None:
    """What fences a state write against a concurrent deletion."""
    write = only(
        agents.set_state(
            loaded_agent(CREATED), loaded_state(), SetAgentState(agent_id=AGENT, state={})
        )
    )
    assert write.expected == 0


def test_state_expected_version_is_the_state_subjects() -> None:
    agent, state = loaded_agent(CREATED, version=5), loaded_state({"a": 1}, 30)
    # The profile's version is no good for it ...
    with pytest.raises(ConflictError) as stale:
        agents.set_state(agent, state, SetAgentState(agent_id=AGENT, state={}, expected_version=5))
    assert stale.value.details == {"expected_version": 5, "current_version": 30}
    with pytest.raises(ConflictError) as stale:
        agents.patch_state(
            agent, state, PatchAgentState(agent_id=AGENT, patch={}, expected_version=29)
        )
    assert stale.value.details == {"expected_version": 29, "current_version": 30}
    # ... the state's own is; 0 means "never set".
    assert agents.set_state(
        agent, state, SetAgentState(agent_id=AGENT, state={}, expected_version=30)
    )
    assert agents.set_state(
        agent, loaded_state(), SetAgentState(agent_id=AGENT, state={}, expected_version=0)
    )


def test_patch_state_stores_the_whole_merged_document() -> None:
    current = {"plan": {"step": 1, "done": False}, "notes": ["a"], "drop": True}
    patch = {"plan": {"step": 2}, "drop": None, "new": {"x": None, "y": 1}}
    command = PatchAgentState(agent_id=AGENT, patch=patch)
    write = only(agents.patch_state(loaded_agent(CREATED), loaded_state(current, 7), command))
    assert write.expected == 7
    assert write.events == [
        AgentStateSet(
            agent_id=AGENT,
            state={"plan": {"step": 2, "done": False}, "notes": ["a"], "new": {"y": 1}},
            patched=True,
        )
    ]
    assert current == {"plan": {"step": 1, "done": False}, "notes": ["a"], "drop": True}


def test_patch_of_a_never_set_state_patches_the_empty_document() -> None:
    command = PatchAgentState(agent_id=AGENT, patch={"a": 1, "b": None})
    (event,) = only(agents.patch_state(loaded_agent(CREATED), loaded_state(), command)).events
    assert event == AgentStateSet(agent_id=AGENT, state={"a": 1}, patched=True)


@pytest.mark.parametrize("patched", [False, True])
def test_state_writes_to_an_archived_or_missing_agent(patched: bool) -> None:
    def write(agent: Loaded[agents.Agent]) -> list[Write]:
        if patched:
            return agents.patch_state(
                agent, loaded_state(), PatchAgentState(agent_id=AGENT, patch={})
            )
        return agents.set_state(agent, loaded_state(), SetAgentState(agent_id=AGENT, state={}))

    with pytest.raises(ConflictError, match="archived"):
        write(loaded_agent(CREATED, AgentArchived(agent_id=AGENT)))
    with pytest.raises(NotFoundError):
        write(loaded_agent(CREATED, AgentDeleted(agent_id=AGENT)))
    with pytest.raises(NotFoundError):
        write(loaded_agent())


def test_the_state_document_is_capped() -> None:
    agent = loaded_agent(CREATED)
    fits = {"k": "x" * (agents.MAX_STATE_BYTES - 10)}  # {"k":"..."} is 8 bytes more
    assert agents.set_state(agent, loaded_state(), SetAgentState(agent_id=AGENT, state=fits))
    too_big = {"k": "x" * (agents.MAX_STATE_BYTES - 7)}
    with pytest.raises(InvalidError, match="the state document is") as refused:
        agents.set_state(agent, loaded_state(), SetAgentState(agent_id=AGENT, state=too_big))
    assert refused.value.details["max_bytes"] == agents.MAX_STATE_BYTES
    # A patch that is small itself but makes the document too big is refused too.
    with pytest.raises(InvalidError, match="the state document is"):
        agents.patch_state(
            agent, loaded_state(fits, 3), PatchAgentState(agent_id=AGENT, patch={"more": "y" * 10})
        )


def test_a_state_or_patch_nested_too_deeply_is_invalid() -> None:
    deep: dict[str, Any] = {}
    for _ in range(MAX_DEPTH):
        deep = {"a": deep}
    agent = loaded_agent(CREATED)
    with pytest.raises(InvalidError, match="nests 65 levels"):
        agents.set_state(agent, loaded_state(), SetAgentState(agent_id=AGENT, state=deep))
    with pytest.raises(InvalidError, match="the patch nests 65 levels"):
        agents.patch_state(agent, loaded_state(), PatchAgentState(agent_id=AGENT, patch=deep))


# The projection --------------------------------------------------------------------------
def commit(seq: int, subject: str, *events: AnyEvent, at: int = 1_000) -> StoredCommit:
    return StoredCommit(seq, subject, {H_TIME: str(at)}, list(events))


def test_projection_rows_through_a_whole_life() -> None:
    projection = AgentsProjection()
    profile, state_subject = agents.subject(ORG, AGENT), agents.state_subject(ORG, AGENT)
    ops = projection.project(commit(3, profile, CREATED))
    assert ops == [
        Upsert(
            "agents",
            {
                "agent_id": AGENT,
                "org_id": ORG,
                "name": "Helper",
                "description": "helps",
                "persona": "You are helpful.",
                "model": '{"provider":"acme","temperature":0.2}',
                "metadata": '{"team":"a"}',
                "tags": '["support","beta"]',
                "archived": 0,
                "created_at": 1_000,
                "updated_at": 1_000,
                "version": 3,
            },
        ),
        Delete("agent_tags", {"agent_id": AGENT}),
        Upsert("agent_tags", {"agent_id": AGENT, "tag": "support", "org_id": ORG}),
        Upsert("agent_tags", {"agent_id": AGENT, "tag": "beta", "org_id": ORG}),
        # Its state: the empty document at the state subject's version, 0.
        Upsert(
            "agent_states",
            {"agent_id": AGENT, "org_id": ORG, "state": "{}", "updated_at": 1_000, "version": 0},
        ),
    ]
    updated = AgentUpdated(
        agent_id=AGENT, name="N", description="", persona="", model={}, metadata={}, tags=("z",)
    )
    ops = projection.project(commit(4, profile, updated, at=2_000))
    assert ops[0] == Update(
        "agents",
        {"agent_id": AGENT},
        {
            "name": "N",
            "description": "",
            "persona": "",
            "model": "{}",
            "metadata": "{}",
            "tags": '["z"]',
            "updated_at": 2_000,
            "version": 4,
        },
    )
    assert ops[1:] == [
        Delete("agent_tags", {"agent_id": AGENT}),
        Upsert("agent_tags", {"agent_id": AGENT, "tag": "z", "org_id": ORG}),
    ]
    assert projection.project(commit(5, profile, AgentArchived(agent_id=AGENT))) == [
        Update("agents", {"agent_id": AGENT}, {"archived": 1, "updated_at": 1_000, "version": 5})
    ]
    # The archive's fence on the state subject moves the state's version only.
    assert projection.project(commit(5, state_subject, AgentArchived(agent_id=AGENT))) == [
        Update("agent_states", {"agent_id": AGENT}, {"version": 5})
    ]
    assert projection.project(commit(6, profile, AgentUnarchived(agent_id=AGENT))) == [
        Update("agents", {"agent_id": AGENT}, {"archived": 0, "updated_at": 1_000, "version": 6})
    ]
    # A state write moves the state's version, never the profile's.
    set_ = AgentStateSet(agent_id=AGENT, state={"a": [1]})
    assert projection.project(commit(7, state_subject, set_)) == [
        Upsert(
            "agent_states",
            {
                "agent_id": AGENT,
                "org_id": ORG,
                "state": '{"a":[1]}',
                "updated_at": 1_000,
                "version": 7,
            },
        )
    ]
    assert projection.project(commit(8, state_subject, AgentStateCleared(agent_id=AGENT))) == [
        Delete("agent_states", {"agent_id": AGENT})
    ]
    assert projection.project(commit(9, profile, AgentDeleted(agent_id=AGENT))) == [
        Delete("agents", {"agent_id": AGENT}),
        Delete("agent_tags", {"agent_id": AGENT}),
        Delete("agent_states", {"agent_id": AGENT}),
    ]


def test_projection_of_an_org_deletion_removes_its_rows() -> None:
    deleted = commit(10, subjects.event(ORG, "org", ORG), OrgDeleted(org_id=ORG))
    assert AgentsProjection().project(deleted) == [
        Delete("agents", {"org_id": ORG}),
        Delete("agent_tags", {"org_id": ORG}),
        Delete("agent_states", {"org_id": ORG}),
    ]


def test_projection_reads_the_agent_state_org_deletion_and_forget_subjects_only() -> None:
    assert sorted(AgentsProjection().filter_subjects) == sorted(
        [
            "agentmem.evt.*.agent.*",
            "agentmem.evt.*.agent_state.*",
            "agentmem.evt.*.org_deletion.*",
            "agentmem.evt.*.forget.*",
        ]
    )
