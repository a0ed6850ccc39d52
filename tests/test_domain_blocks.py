"""Unit tests of the pure parts of core memory blocks and working memory: evolve, every
decide function, and their projections. Nothing here touches NATS or a database."""

from __future__ import annotations

import pytest

from agentmem import subjects
from agentmem.domain import blocks, working
from agentmem.domain.aggregate import Loaded, fold
from agentmem.domain.blocks import (
    AppendToBlock,
    AttachBlock,
    Block,
    CreateBlock,
    DeleteBlock,
    DetachBlock,
    LabelHold,
    ReplaceInBlock,
    SetBlock,
)
from agentmem.domain.working import (
    ClearWorkingMemory,
    PutWorkingItem,
    RemoveWorkingItem,
    Session,
)
from agentmem.errors import ConflictError, InvalidError, NotFoundError
from agentmem.eventlog import H_TIME, StoredCommit
from agentmem.events import (
    AnyEvent,
    BlockAttached,
    BlockCreated,
    BlockDeleted,
    BlockDetached,
    BlockLabelReleased,
    BlockLabelReserved,
    BlockUpdated,
    OrgDeleted,
    WorkingCleared,
    WorkingItemPut,
    WorkingItemRemoved,
)
from agentmem.projections.blocks import BlocksProjection
from agentmem.projections.working import WorkingProjection
from agentmem.store import Copy, Delete, Update, Upsert

ORG = "org-1"
AT = 1_700_000_000_000


def block(content: str = "Name: Ann", char_limit: int = 20, **fields: object) -> Loaded[Block]:
    created = BlockCreated(
        block_id="b1",
        org_id=ORG,
        label="human",
        content=content,
        char_limit=char_limit,
        agent_id="a1",
    )
    events: list[AnyEvent] = [created]
    if fields.get("attached"):
        agents = tuple(str(a) for a in fields["attached"])  # type: ignore[attr-defined]
        events.append(
            BlockAttached(block_id="b1", agent_id=agents[-1], label="human", agent_ids=agents)
        )
    if fields.get("deleted"):
        events.append(BlockDeleted(block_id="b1"))
    return Loaded(blocks.subject(ORG, "b1"), fold(blocks.evolve, None, events), 7)


def free(owner: str = "a2") -> Loaded[LabelHold]:
    return Loaded(blocks.label_subject(ORG, "agent", owner, "human"), None, 0)


def held(by: str = "b9") -> Loaded[LabelHold]:
    state = blocks.evolve_label(None, BlockLabelReserved(label="human", block_id=by, agent_id="a2"))
    return Loaded(blocks.label_subject(ORG, "agent", "a2", "human"), state, 3)


def only_event(writes: list[object]) -> object:
    write = writes[-1]
    return write.events[-1]  # type: ignore[attr-defined]


# Blocks -------------------------------------------------------------------------------------
def test_evolve_follows_every_event() -> None:
    loaded = block(attached=["a2", "a3"])
    assert loaded.state is not None
    assert (loaded.state.label, loaded.state.attached) == ("human", ("a2", "a3"))
    assert loaded.state.seen_by() == [("agent", "a1"), ("agent", "a2"), ("agent", "a3")]
    updated = blocks.evolve(
        loaded.state,
        BlockUpdated(block_id="b1", content="x", char_limit=5, description="d", change="set"),
    )
    assert updated is not None
    assert (updated.content, updated.char_limit, updated.description) == ("x", 5, "d")
    detached = blocks.evolve(
        updated, BlockDetached(block_id="b1", agent_id="a2", label="human", agent_ids=("a3",))
    )
    assert detached is not None
    assert detached.attached == ("a3",)
    assert blocks.evolve(None, BlockDeleted(block_id="b1")) is None
    assert (
        blocks.evolve_label(held().state, BlockLabelReleased(label="human", block_id="b9")) is None
    )


def test_label_subjects_are_per_owner_and_label() -> None:
    names = {
        blocks.label_subject(ORG, "agent", "a1", "human"),
        blocks.label_subject(ORG, "user", "a1", "human"),
        blocks.label_subject(ORG, "agent", "a1", "persona"),
        blocks.label_subject(ORG, "agent", "a2", "human"),
    }
    assert len(names) == 4
    for name in names:
        assert subjects.parse(name).aggregate == "block_label"


def test_create_reserves_the_label_with_the_block() -> None:
    request = CreateBlock(label="human", content="Ann", user_id="ann", char_limit=10)
    empty: Loaded[Block] = Loaded(blocks.subject(ORG, "b1"), None, 0)
    hold = Loaded(blocks.label_subject(ORG, "user", "ann", "human"), None, 0)
    writes = blocks.create(empty, request, org_id=ORG, block_id="b1", hold=hold)
    assert [(w.subject, w.expected) for w in writes] == [(hold.subject, 0), (empty.subject, 0)]
    reserved, created = writes[0].events[0], writes[1].events[0]
    assert reserved == BlockLabelReserved(label="human", block_id="b1", user_id="ann")
    assert isinstance(created, BlockCreated)
    assert (created.user_id, created.agent_id, created.char_limit) == ("ann", None, 10)
    with pytest.raises(ConflictError, match="already has a block labelled 'human'"):
        blocks.create(empty, request, org_id=ORG, block_id="b1", hold=held())
    with pytest.raises(ConflictError, match="already exists"):
        blocks.create(block(), request, org_id=ORG, block_id="b1", hold=hold)
    with pytest.raises(InvalidError, match="over its limit of 2") as refused:
        blocks.create(
            empty,
            CreateBlock(label="human", content="Ann", user_id="ann", char_limit=2),
            org_id=ORG,
            block_id="b1",
            hold=hold,
        )
    assert refused.value.details == {
        "path": "$.content",
        "reason": "too_long",
        "length": 3,
        "char_limit": 2,
    }
    for owners in ({}, {"user_id": "ann", "agent_id": "a1"}):
        with pytest.raises(InvalidError, match="exactly one agent or one user"):
            blocks.create(
                empty, CreateBlock(label="x", **owners), org_id=ORG, block_id="b1", hold=hold
            )


def test_set_append_replace_keep_the_limit() -> None:
    loaded = block("Name: Ann", char_limit=20)
    set_to = only_event(blocks.set_content(loaded, SetBlock(block_id="b1", content="Ann")))
    # The owner is repeated: its data key seals the content (a forget of the agent takes it).
    assert set_to == BlockUpdated(
        block_id="b1", content="Ann", char_limit=20, description="", change="set", agent_id="a1"
    )
    appended = only_event(blocks.append(loaded, AppendToBlock(block_id="b1", content="nurse")))
    assert isinstance(appended, BlockUpdated)
    assert (appended.content, appended.change) == ("Name: Ann\nnurse", "append")
    replaced = only_event(
        blocks.replace_text(loaded, ReplaceInBlock(block_id="b1", old_text="n", new_text="N"))
    )
    assert isinstance(replaced, BlockUpdated)
    assert replaced.content == "Name: ANN"  # every occurrence
    with pytest.raises(ConflictError, match="does not hold the old text"):
        blocks.replace_text(loaded, ReplaceInBlock(block_id="b1", old_text="Bob", new_text="x"))
    with pytest.raises(ConflictError, match="expected version 3"):
        blocks.set_content(loaded, SetBlock(block_id="b1", content="x", expected_version=3))
    over = [
        (
            lambda: blocks.set_content(loaded, SetBlock(block_id="b1", content="x" * 21)),
            "$.content",
        ),
        (
            lambda: blocks.set_content(
                loaded, SetBlock(block_id="b1", content="x" * 6, char_limit=5)
            ),
            "$.content",
        ),
        (
            lambda: blocks.append(loaded, AppendToBlock(block_id="b1", content="x" * 11)),
            "$.content",
        ),
        (
            lambda: blocks.replace_text(
                loaded, ReplaceInBlock(block_id="b1", old_text="Ann", new_text="x" * 15)
            ),
            "$.new_text",
        ),
    ]
    for write, path in over:
        with pytest.raises(InvalidError, match="over its limit") as refused:
            write()
        assert refused.value.details["path"] == path
    exactly = blocks.append(loaded, AppendToBlock(block_id="b1", content="x" * 10))
    assert len(only_event(exactly).content) == 20  # type: ignore[attr-defined]


def test_attach_and_detach() -> None:
    loaded = block()
    writes = blocks.attach(loaded, AttachBlock(block_id="b1", agent_id="a2"), free())
    assert [w.expected for w in writes] == [0, 7]
    assert writes[0].events == [BlockLabelReserved(label="human", block_id="b1", agent_id="a2")]
    assert writes[1].events == [
        BlockAttached(block_id="b1", agent_id="a2", label="human", agent_ids=("a2",))
    ]
    with pytest.raises(ConflictError, match="already has a block labelled"):
        blocks.attach(loaded, AttachBlock(block_id="b1", agent_id="a2"), held())
    for agent in ("a1", "a2"):  # its owner; one it is attached to
        with pytest.raises(ConflictError, match="already has block b1"):
            blocks.attach(
                block(attached=["a2"]), AttachBlock(block_id="b1", agent_id=agent), free()
            )
    many = block(attached=[f"x{n}" for n in range(blocks.MAX_ATTACHED)])
    with pytest.raises(ConflictError, match="the most it may be"):
        blocks.attach(many, AttachBlock(block_id="b1", agent_id="a2"), free())
    shared = block(attached=["a2", "a3"])
    writes = blocks.detach(shared, DetachBlock(block_id="b1", agent_id="a2"), held(by="b1"))
    assert writes[0].events == [BlockLabelReleased(label="human", block_id="b1")]
    assert writes[1].events[0] == BlockDetached(
        block_id="b1", agent_id="a2", label="human", agent_ids=("a3",)
    )
    with pytest.raises(NotFoundError, match="not attached"):
        blocks.detach(loaded, DetachBlock(block_id="b1", agent_id="a2"), free())


def test_delete_releases_only_the_labels_it_holds() -> None:
    shared = block(attached=["a2"])
    mine = Loaded(blocks.label_subject(ORG, "agent", "a1", "human"), LabelHold("human", "b1"), 4)
    writes = blocks.delete(shared, DeleteBlock(block_id="b1"), [mine, held(by="b9")])
    assert [(w.subject, w.expected) for w in writes] == [(mine.subject, 4), (shared.subject, 7)]
    assert writes[-1].events == [BlockDeleted(block_id="b1")]
    for decide in (
        lambda b: blocks.delete(b, DeleteBlock(block_id="b1"), []),
        lambda b: blocks.set_content(b, SetBlock(block_id="b1", content="x")),
        lambda b: blocks.append(b, AppendToBlock(block_id="b1", content="x")),
        lambda b: blocks.attach(b, AttachBlock(block_id="b1", agent_id="a2"), free()),
    ):
        with pytest.raises(NotFoundError, match="block b1 does not exist"):
            decide(block(deleted=True))


def commit(seq: int, subject: str, *events: AnyEvent) -> StoredCommit:
    return StoredCommit(seq, subject, {H_TIME: str(AT + seq)}, list(events))


def test_the_blocks_projection() -> None:
    project = BlocksProjection().project
    subject = blocks.subject(ORG, "b1")
    created = BlockCreated(
        block_id="b1", org_id=ORG, label="human", content="Ann", char_limit=9, agent_id="a1"
    )
    ops = project(commit(5, subject, created))
    assert ops[0] == Upsert(
        "blocks",
        {
            "block_id": "b1",
            "org_id": ORG,
            "label": "human",
            "content": "Ann",
            "char_limit": 9,
            "description": "",
            "agent_id": "a1",
            "user_id": None,
            "attached_agent_ids": "[]",
            "created_at": AT + 5,
            "updated_at": AT + 5,
            "version": 5,
        },
    )
    seen = {"agent_id": "a1", "label": "human", "block_id": "b1", "org_id": ORG}
    assert ops[1] == Upsert("block_agents", seen)
    attached = BlockAttached(block_id="b1", agent_id="a2", label="human", agent_ids=("a2",))
    assert project(commit(6, subject, attached)) == [
        Update(
            "blocks",
            {"block_id": "b1"},
            {"attached_agent_ids": '["a2"]', "updated_at": AT + 6, "version": 6},
        ),
        # Made from the block's own row: none for a block whose creation reads as forgotten.
        Delete("block_agents", {"agent_id": "a2", "block_id": "b1"}),
        Copy(
            "block_agents",
            "blocks",
            {"block_id": "b1"},
            ("agent_id", "label", "block_id", "org_id"),
            {"agent_id": "a2"},
        ),
    ]
    detached = BlockDetached(block_id="b1", agent_id="a2", label="human", agent_ids=())
    assert project(commit(7, subject, detached))[1] == Delete(
        "block_agents", {"agent_id": "a2", "block_id": "b1"}
    )
    assert project(commit(8, subject, BlockDeleted(block_id="b1"))) == [
        Delete("blocks", {"block_id": "b1"}),
        Delete("block_agents", {"block_id": "b1"}),
    ]
    assert project(commit(9, subjects.org_deletion(ORG), OrgDeleted(org_id=ORG))) == [
        Delete("blocks", {"org_id": ORG}),
        Delete("block_agents", {"org_id": ORG}),
    ]


# Working memory ---------------------------------------------------------------------------
def session(*events: AnyEvent) -> Loaded[Session]:
    return Loaded(working.subject(ORG, "s1"), fold(working.evolve, None, list(events)), 4)


def put_event(key: str) -> WorkingItemPut:
    return WorkingItemPut(session_id="s1", key=key, content="x", priority=0.5)


def test_working_memory_keys_follow_puts_removals_and_clears() -> None:
    loaded = session(put_event("a"), put_event("b"), WorkingItemRemoved(session_id="s1", key="a"))
    assert loaded.state == Session(frozenset({"b"}))
    assert session(put_event("a"), WorkingCleared(session_id="s1")).state == Session()


def test_working_memory_decisions() -> None:
    loaded = session(put_event("a"))
    put = working.put(loaded, PutWorkingItem(session_id="s1", content="hi", key="b", ttl_ms=50))
    assert [(w.subject, w.expected) for w in put] == [(loaded.subject, 4)]
    assert put[0].events == [
        WorkingItemPut(session_id="s1", key="b", content="hi", priority=0.5, ttl_ms=50)
    ]
    generated = only_event(working.put(loaded, PutWorkingItem(session_id="s1", content="hi")))
    assert isinstance(generated, WorkingItemPut)
    assert generated.key
    removed = working.remove(loaded, RemoveWorkingItem(session_id="s1", key="a"))
    assert removed[0].events == [WorkingItemRemoved(session_id="s1", key="a")]
    for gone in (loaded, session()):
        with pytest.raises(NotFoundError, match="no working memory item z"):
            working.remove(gone, RemoveWorkingItem(session_id="s1", key="z"))
    cleared = working.clear(session(), ClearWorkingMemory(session_id="s1"))
    assert cleared[0].events == [WorkingCleared(session_id="s1")]


def test_the_working_projection_expires_from_the_recorded_time() -> None:
    project = WorkingProjection().project
    subject = working.subject(ORG, "s1")
    item = WorkingItemPut(session_id="s1", key="k", content="x", priority=0.25, ttl_ms=1_000)
    assert project(commit(3, subject, item)) == [
        Upsert(
            "working_items",
            {
                "org_id": ORG,
                "session_id": "s1",
                "item_key": "k",
                "content": "x",
                "priority": 250_000,
                "ttl_ms": 1_000,
                "expires_at": AT + 3 + 1_000,
                "metadata": "{}",
                "created_at": AT + 3,
                "version": 3,
                "user_id": None,
                "agent_id": None,
            },
        )
    ]
    lasting = project(commit(4, subject, put_event("j")))[0]
    assert isinstance(lasting, Upsert)
    assert lasting.row["expires_at"] is None
    assert project(commit(5, subject, WorkingItemRemoved(session_id="s1", key="k"))) == [
        Delete("working_items", {"org_id": ORG, "session_id": "s1", "item_key": "k"})
    ]
    assert project(commit(6, subject, WorkingCleared(session_id="s1"))) == [
        Delete("working_items", {"org_id": ORG, "session_id": "s1"})
    ]
