"""Core memory blocks: labelled text that an agent keeps in its context (Letta's core memory).

A block lives on its own subject, ``agentmem.evt.<org>.block.<block_id>``. It is owned by an
agent of its organization (``agent_id``) or by a user (``user_id``, a scope id as for
memories), has a character limit that every write keeps (create, set, append, replace),
and may be attached to other agents of its organization, which then see it too.

Labels: an agent sees at most one block per label, whether it owns the block or has it
attached, and a user owns at most one per label. The log decides it, as for tool names: the
label as one agent (or user) sees it has a reservation subject,
``agentmem.evt.<org>.block_label.<sha256 of owner and label>``, written in the same atomic
batch as the creation or the attachment, at the reservation's version; deletion and
detachment release it. So of two commands racing for one label, one is stored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Annotated, Literal

import msgspec

from agentmem import subjects
from agentmem.commands import Id, NewId, Targeted
from agentmem.commands import InOrg as CommandInOrg
from agentmem.domain.aggregate import Loaded, Write, check_version
from agentmem.errors import ConflictError, InvalidOnState, NotFoundError
from agentmem.events import (
    AnyEvent,
    BlockAttached,
    BlockCreated,
    BlockDeleted,
    BlockDetached,
    BlockLabelReleased,
    BlockLabelReserved,
    BlockUpdated,
)
from agentmem.protocol import command, query
from agentmem.queries import Cursor, Limit, Query
from agentmem.queries import InOrg as QueryInOrg
from agentmem.replies import Block as BlockReply
from agentmem.replies import HistoryEntry, Page
from agentmem.validation import invalid

# A block is read whole into an agent's context on every turn: Letta's default limit, and a
# ceiling that keeps a block far below a request's 256 KiB.
DEFAULT_CHAR_LIMIT = 5_000
MAX_CHAR_LIMIT = 50_000
MAX_ATTACHED = 100  # agents a block is attached to: its deletion releases every label

Text = Annotated[str, msgspec.Meta(max_length=MAX_CHAR_LIMIT)]
OldText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CHAR_LIMIT)]
CharLimit = Annotated[int, msgspec.Meta(ge=1, le=MAX_CHAR_LIMIT)]
Label = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_\-.: ]{1,100}$(?!\n)")]
Description = Annotated[str, msgspec.Meta(max_length=1_000)]
Separator = Annotated[str, msgspec.Meta(max_length=16)]
OwnerKind = Literal["agent", "user"]


# Requests ----------------------------------------------------------------------------------
@command("block.create", need="member", reply=BlockCreated)
class CreateBlock(CommandInOrg, frozen=True, kw_only=True):
    """A new block, owned by one agent of the organization or one user (exactly one of
    ``agent_id`` and ``user_id``); its label must be free for that owner."""

    label: Label
    content: Text = ""
    char_limit: CharLimit = DEFAULT_CHAR_LIMIT
    description: Description = ""
    agent_id: Id | None = None
    user_id: Id | None = None
    block_id: NewId | None = None  # optional, as agent_id in agent.create


@command("block.set", need="member", reply=BlockUpdated)
class SetBlock(Targeted, frozen=True, kw_only=True):
    """Replace the block's content (and, when given, its limit or description)."""

    block_id: Id
    content: Text
    char_limit: CharLimit | None = None
    description: Description | None = None


@command("block.append", need="member", reply=BlockUpdated)
class AppendToBlock(Targeted, frozen=True, kw_only=True):
    """Add text at the end, after ``separator`` (none when the block is empty)."""

    block_id: Id
    content: OldText
    separator: Separator = "\n"


@command("block.replace", need="member", reply=BlockUpdated)
class ReplaceInBlock(Targeted, frozen=True, kw_only=True):
    """Replace every occurrence of ``old_text`` with ``new_text`` (empty: remove it);
    ``conflict`` when ``old_text`` is not in the block."""

    block_id: Id
    old_text: OldText
    new_text: Text


@command("block.attach", need="member", reply=BlockAttached)
class AttachBlock(Targeted, frozen=True, kw_only=True):
    """Share the block with another agent of its organization."""

    block_id: Id
    agent_id: Id


@command("block.detach", need="member", reply=BlockDetached)
class DetachBlock(Targeted, frozen=True, kw_only=True):
    block_id: Id
    agent_id: Id


@command("block.delete", need="member", reply=BlockDeleted)
class DeleteBlock(Targeted, frozen=True, kw_only=True):
    """The block leaves every table, and its labels are free again; the log keeps that it
    existed and who deleted it."""

    block_id: Id


@query("block.get", need="reader", reply=BlockReply)
class GetBlock(Query, frozen=True, kw_only=True):
    block_id: Id


@query("block.list", need="reader", reply=Page[BlockReply])
class ListBlocks(QueryInOrg, frozen=True, kw_only=True):
    """An agent's blocks (its own and those attached to it) or a user's, by label."""

    agent_id: Id | None = None
    user_id: Id | None = None
    limit: Limit = 100
    cursor: Cursor | None = None


@query("block.history", need="reader", reply=Page[HistoryEntry])
class BlockHistory(Query, frozen=True, kw_only=True):
    """Every version of a block, oldest first, with who and when."""

    block_id: Id
    limit: Limit = 100
    cursor: Cursor | None = None


# State -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    block_id: str
    org_id: str
    label: str
    content: str
    char_limit: int
    description: str = ""
    agent_id: str | None = None
    user_id: str | None = None
    attached: tuple[str, ...] = ()
    deleted: bool = False

    def seen_by(self) -> list[tuple[OwnerKind, str]]:
        """Every owner of a label reservation this block holds: its owner, then the agents
        it is attached to."""
        owner: tuple[OwnerKind, str] = (
            ("agent", self.agent_id) if self.agent_id is not None else ("user", self.user_id or "")
        )
        return [owner, *(("agent", agent_id) for agent_id in self.attached)]


@dataclass(frozen=True)
class LabelHold:
    """Which block holds a label for one agent or user."""

    label: str
    block_id: str


def subject(org_id: str, block_id: str) -> str:
    return subjects.event(org_id, "block", block_id)


def label_subject(org_id: str, kind: OwnerKind, owner_id: str, label: str) -> str:
    """The reservation of ``label`` as the agent or user ``owner_id`` sees it (a label is
    not a valid NATS token, so the subject carries a hash)."""
    digest = hashlib.sha256(msgspec.json.encode([kind, owner_id, label])).hexdigest()
    return subjects.event(org_id, "block_label", digest)


def evolve(state: Block | None, event: AnyEvent) -> Block | None:
    match event:
        case BlockCreated():
            return Block(
                block_id=event.block_id,
                org_id=event.org_id,
                label=event.label,
                content=event.content,
                char_limit=event.char_limit,
                description=event.description,
                agent_id=event.agent_id,
                user_id=event.user_id,
            )
        case BlockUpdated() if state is not None:
            return replace(
                state,
                content=event.content,
                char_limit=event.char_limit,
                description=event.description,
            )
        case BlockAttached() | BlockDetached() if state is not None:
            return replace(state, attached=tuple(event.agent_ids))
        case BlockDeleted() if state is not None:
            return replace(state, deleted=True)
    return state


def evolve_label(state: LabelHold | None, event: AnyEvent) -> LabelHold | None:
    match event:
        case BlockLabelReserved(label=label, block_id=block_id):
            return LabelHold(label, block_id)
        case BlockLabelReleased():
            return None
    return state


# Decisions ---------------------------------------------------------------------------------
def missing(block_id: str) -> NotFoundError:
    return NotFoundError(f"block {block_id} does not exist", {"block_id": block_id})


def require_live(loaded: Loaded[Block], block_id: str) -> Block:
    if loaded.state is None or loaded.state.deleted:
        raise missing(block_id)
    return loaded.state


def check_owner(agent_id: str | None, user_id: str | None) -> None:
    if (agent_id is None) == (user_id is None):
        raise invalid(
            "a block is owned by exactly one agent or one user: give agent_id or user_id",
            "$",
            "missing_field" if agent_id is None else "invalid_value",
            fields=["agent_id", "user_id"],
        )


def check_fits(content: str, char_limit: int, path: str) -> None:
    """Refuse a block content over its limit: on every path that writes one."""
    if len(content) > char_limit:
        message = f"the block would hold {len(content)} characters, over its limit of {char_limit}"
        details = {"path": path, "reason": "too_long", "length": len(content)}
        raise InvalidOnState(message, {**details, "char_limit": char_limit})


def _reserve(hold: Loaded[LabelHold], label: str, block_id: str, **owner: str) -> Write:
    if hold.state is not None:
        who = " ".join(f"{kind.removesuffix('_id')} {value}" for kind, value in owner.items())
        raise ConflictError(
            f"{who} already has a block labelled {label!r}",
            {"label": label, "block_id": hold.state.block_id, **owner},
        )
    reserved = BlockLabelReserved(label=label, block_id=block_id, **owner)
    return Write(hold.subject, hold.version, [reserved])


def _release(hold: Loaded[LabelHold], block: Block) -> list[Write]:
    """Free a label this block holds (a release never takes a label from another block)."""
    if hold.state is None or hold.state.block_id != block.block_id:
        return []
    released = BlockLabelReleased(label=block.label, block_id=block.block_id)
    return [Write(hold.subject, hold.version, [released])]


def create(
    loaded: Loaded[Block],
    request: CreateBlock,
    *,
    org_id: str,
    block_id: str,
    hold: Loaded[LabelHold],
) -> list[Write]:
    """The caller has checked that the organization is live, and that the owning agent, if
    any, is a live agent of it."""
    check_owner(request.agent_id, request.user_id)
    if loaded.version != 0:
        raise ConflictError(f"block {block_id} already exists", {"block_id": block_id})
    check_fits(request.content, request.char_limit, "$.content")
    owner = (
        {"agent_id": request.agent_id}
        if request.agent_id is not None
        else {"user_id": request.user_id or ""}
    )
    created = BlockCreated(
        block_id=block_id,
        org_id=org_id,
        label=request.label,
        content=request.content,
        char_limit=request.char_limit,
        description=request.description,
        **owner,
    )
    return [_reserve(hold, request.label, block_id, **owner), Write(loaded.subject, 0, [created])]


def _updated(
    loaded: Loaded[Block],
    block: Block,
    content: str,
    change: Literal["set", "append", "replace"],
    path: str,
    char_limit: int | None = None,
    description: str | None = None,
) -> list[Write]:
    limit = block.char_limit if char_limit is None else char_limit
    check_fits(content, limit, path)
    event = BlockUpdated(
        block_id=block.block_id,
        content=content,
        char_limit=limit,
        description=block.description if description is None else description,
        change=change,
        agent_id=block.agent_id,
        user_id=block.user_id,
    )
    return [Write(loaded.subject, loaded.version, [event])]


def set_content(loaded: Loaded[Block], request: SetBlock) -> list[Write]:
    block = require_live(loaded, request.block_id)
    check_version(loaded, request.expected_version)
    return _updated(
        loaded,
        block,
        request.content,
        "set",
        "$.content",
        request.char_limit,
        request.description,
    )


def append(loaded: Loaded[Block], request: AppendToBlock) -> list[Write]:
    block = require_live(loaded, request.block_id)
    check_version(loaded, request.expected_version)
    joined = block.content + request.separator if block.content else ""
    return _updated(loaded, block, joined + request.content, "append", "$.content")


def replace_text(loaded: Loaded[Block], request: ReplaceInBlock) -> list[Write]:
    block = require_live(loaded, request.block_id)
    check_version(loaded, request.expected_version)
    if request.old_text not in block.content:
        raise ConflictError(
            f"block {block.block_id} does not hold the old text",
            {"block_id": block.block_id, "version": loaded.version},
        )
    content = block.content.replace(request.old_text, request.new_text)
    return _updated(loaded, block, content, "replace", "$.new_text")


def attach(loaded: Loaded[Block], request: AttachBlock, hold: Loaded[LabelHold]) -> list[Write]:
    """The caller has checked that the agent is a live agent of the block's organization."""
    block = require_live(loaded, request.block_id)
    check_version(loaded, request.expected_version)
    agent_id = request.agent_id
    if agent_id == block.agent_id or agent_id in block.attached:
        raise ConflictError(
            f"agent {agent_id} already has block {block.block_id}",
            {"block_id": block.block_id, "agent_id": agent_id},
        )
    if len(block.attached) >= MAX_ATTACHED:
        raise ConflictError(
            f"block {block.block_id} is attached to {MAX_ATTACHED} agents, the most it may be",
            {"block_id": block.block_id, "max_attached": MAX_ATTACHED},
        )
    event = BlockAttached(
        block_id=block.block_id,
        agent_id=agent_id,
        label=block.label,
        agent_ids=(*block.attached, agent_id),
    )
    return [
        _reserve(hold, block.label, block.block_id, agent_id=agent_id),
        Write(loaded.subject, loaded.version, [event]),
    ]


def detach(loaded: Loaded[Block], request: DetachBlock, hold: Loaded[LabelHold]) -> list[Write]:
    block = require_live(loaded, request.block_id)
    check_version(loaded, request.expected_version)
    agent_id = request.agent_id
    if agent_id not in block.attached:
        raise NotFoundError(
            f"block {block.block_id} is not attached to agent {agent_id}",
            {"block_id": block.block_id, "agent_id": agent_id},
        )
    rest = tuple(a for a in block.attached if a != agent_id)
    event = BlockDetached(
        block_id=block.block_id, agent_id=agent_id, label=block.label, agent_ids=rest
    )
    return [*_release(hold, block), Write(loaded.subject, loaded.version, [event])]


def delete(
    loaded: Loaded[Block], request: DeleteBlock, holds: list[Loaded[LabelHold]]
) -> list[Write]:
    """``holds``: the label reservations of ``Block.seen_by``, loaded by the caller."""
    block = require_live(loaded, request.block_id)
    check_version(loaded, request.expected_version)
    released = [write for hold in holds for write in _release(hold, block)]
    deleted = BlockDeleted(block_id=block.block_id)
    return [*released, Write(loaded.subject, loaded.version, [deleted])]


__all__ = [
    "AppendToBlock",
    "AttachBlock",
    "Block",
    "BlockHistory",
    "CreateBlock",
    "DeleteBlock",
    "DetachBlock",
    "GetBlock",
    "LabelHold",
    "ListBlocks",
    "ReplaceInBlock",
    "SetBlock",
]
