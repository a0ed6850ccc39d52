"""The ``blocks`` and ``block_agents`` tables, and the named reads of the block queries.

``blocks``: one row per block that was not deleted, with its content and the agents it is
attached to (JSON). ``block_agents``: one row per agent that sees a block, its owner
included, with the block's label, so that "the blocks of agent X, by label" walks one
index. A deleted block, or every block of a deleted organization, leaves both. Label
reservations are the log's own bookkeeping: no rows.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import msgspec

from agentmem import subjects
from agentmem.eventlog import StoredCommit
from agentmem.events import (
    BlockAttached,
    BlockCreated,
    BlockDeleted,
    BlockDetached,
    BlockUpdated,
    DataForgotten,
    OrgDeleted,
)
from agentmem.projections.rows import json_text
from agentmem.store import Column, Copy, Delete, RowOp, Store, Table, Update, Upsert

BLOCKS = Table(
    name="blocks",
    columns=(
        Column("block_id", "text"),
        Column("org_id", "text"),
        Column("label", "text"),
        Column("content", "text"),
        Column("char_limit", "integer"),
        Column("description", "text"),
        Column("agent_id", "text", nullable=True),
        Column("user_id", "text", nullable=True),
        Column("attached_agent_ids", "json"),
        Column("created_at", "integer"),
        Column("updated_at", "integer"),
        Column("version", "integer"),
    ),
    primary_key=("block_id",),
    indexes=(("blocks_user", ("org_id", "user_id", "label"), False),),
    scrub=True,
)

BLOCK_AGENTS = Table(
    name="block_agents",
    columns=(
        Column("agent_id", "text"),
        Column("label", "text"),
        Column("block_id", "text"),
        Column("org_id", "text"),
    ),
    primary_key=("agent_id", "label", "block_id"),
    indexes=(("block_agents_block", ("block_id",), False),),
)

COLUMNS = ", ".join(BLOCKS.column_names)
_B_COLUMNS = ", ".join(f"b.{c}" for c in BLOCKS.column_names)


class BlocksProjection:
    name = "blocks"
    version = 1  # bumped when its rows change: docs/architecture.md, "Projection versions"
    # Org deletions too (their own subject): they remove the organization's blocks; and
    # forgets, which remove a forgotten user's or agent's blocks.
    filter_subjects = [
        subjects.events_of("block"),
        subjects.events_of("org_deletion"),
        subjects.events_of("forget"),
    ]
    tables = [BLOCKS, BLOCK_AGENTS]

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops: list[RowOp] = []
        at, seq = commit.time_ms, commit.seq
        for event in commit.events:
            match event:
                case BlockCreated():
                    row = {
                        "block_id": event.block_id,
                        "org_id": event.org_id,
                        "label": event.label,
                        "content": event.content,
                        "char_limit": event.char_limit,
                        "description": event.description,
                        "agent_id": event.agent_id,
                        "user_id": event.user_id,
                        "attached_agent_ids": json_text([]),
                        "created_at": at,
                        "updated_at": at,
                        "version": seq,
                    }
                    ops.append(Upsert("blocks", row))
                    if event.agent_id is not None:
                        ops.append(_seen(event.agent_id, event.label, event.block_id, event.org_id))
                case BlockUpdated():
                    values = {
                        "content": event.content,
                        "char_limit": event.char_limit,
                        "description": event.description,
                        "updated_at": at,
                        "version": seq,
                    }
                    ops.append(Update("blocks", {"block_id": event.block_id}, values))
                case BlockAttached() | BlockDetached():
                    values = {
                        "attached_agent_ids": json_text(list(event.agent_ids)),
                        "updated_at": at,
                        "version": seq,
                    }
                    ops.append(Update("blocks", {"block_id": event.block_id}, values))
                    if isinstance(event, BlockAttached):
                        ops += _attached(event.agent_id, event.block_id)
                    else:
                        key = {"agent_id": event.agent_id, "block_id": event.block_id}
                        ops.append(Delete("block_agents", key))
                case BlockDeleted(block_id=block_id):
                    ops.append(Delete("blocks", {"block_id": block_id}))
                    ops.append(Delete("block_agents", {"block_id": block_id}))
                case OrgDeleted(org_id=deleted):
                    ops.append(Delete("blocks", {"org_id": deleted}))
                    ops.append(Delete("block_agents", {"org_id": deleted}))
                case DataForgotten(target="user" | "agent"):
                    ops += forgotten_blocks(event)
        return ops


def forgotten_blocks(event: DataForgotten) -> list[RowOp]:
    """A forgotten user's or agent's blocks leave both tables, erased from the files (their
    keys are gone: the log's copies read as forgotten); a forgotten agent also stops
    seeing the blocks attached to it."""
    owner = {"user_id": event.user_id} if event.target == "user" else {"agent_id": event.agent_id}
    key = {"org_id": event.org_id, **owner}
    ops: list[RowOp] = [
        Delete("block_agents", key, through="blocks", owner="block_id", erase=True),
        Delete("blocks", key, erase=True),
    ]
    if event.target == "agent":
        ops.append(Delete("block_agents", key, erase=True))
    return ops


def _attached(agent_id: str, block_id: str) -> list[RowOp]:
    """An agent sees an attached block: its row made from the block's own, so that nothing
    is seen of a block whose row is gone (a replay after its owner was forgotten: its
    creation reads as forgotten, its attachment, which holds no personal field, does not)."""
    key = {"agent_id": agent_id, "block_id": block_id}
    columns = ("agent_id", "label", "block_id", "org_id")
    return [
        Delete("block_agents", key),  # an attach again: the same row, made again
        Copy("block_agents", "blocks", {"block_id": block_id}, columns, {"agent_id": agent_id}),
    ]


def _seen(agent_id: str, label: str, block_id: str, org_id: str) -> Upsert:
    row = {"agent_id": agent_id, "label": label, "block_id": block_id, "org_id": org_id}
    return Upsert("block_agents", row)


PROJECTION = BlocksProjection()


# Reads -------------------------------------------------------------------------------------
_json = msgspec.json.Decoder()


def block_view(row: dict[str, Any], seeing: Collection[str]) -> dict[str, Any]:
    """A block as the queries answer it; ``seeing``: the agents that still see it (its
    ``block_agents`` rows), of which its attached ones are named."""
    view = {c: row[c] for c in BLOCKS.column_names}
    attached = _json.decode(row["attached_agent_ids"])
    view["attached_agent_ids"] = [a for a in attached if a in seeing]
    return view


async def block_views(store: Store, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``block_view`` of each row, in one read of who sees them: the attached ids come from
    the attach and detach events, and a forgotten agent (whose ``block_agents`` rows a
    forget deletes, with no event on the blocks it was attached to) is left out."""
    if not rows:
        return []
    ids = [row["block_id"] for row in rows]
    marks = ", ".join("?" for _ in ids)
    sql = f"SELECT block_id, agent_id FROM block_agents WHERE block_id IN ({marks})"
    seen = await store.fetch_all(sql, *ids)
    seeing: dict[str, set[str]] = {}
    for pair in seen:
        seeing.setdefault(pair["block_id"], set()).add(pair["agent_id"])
    return [block_view(row, seeing.get(row["block_id"], set())) for row in rows]


async def get_block(store: Store, block_id: str) -> dict[str, Any] | None:
    return await store.fetch_one(f"SELECT {COLUMNS} FROM blocks WHERE block_id = ?", block_id)


async def agent_blocks(
    store: Store, org_id: str, agent_id: str, after: str, limit: int
) -> list[dict[str, Any]]:
    """An agent's blocks, its own and those attached to it, by label after ``after``."""
    sql = (
        f"SELECT {_B_COLUMNS} FROM block_agents a JOIN blocks b ON b.block_id = a.block_id "
        "WHERE a.agent_id = ? AND a.org_id = ? AND a.label > ? ORDER BY a.label LIMIT ?"
    )
    return await store.fetch_all(sql, agent_id, org_id, after, limit)


async def user_blocks(
    store: Store, org_id: str, user_id: str, after: str, limit: int
) -> list[dict[str, Any]]:
    """A user's blocks, by label after ``after``."""
    sql = (
        f"SELECT {COLUMNS} FROM blocks WHERE org_id = ? AND user_id = ? AND label > ? "
        "ORDER BY label LIMIT ?"
    )
    return await store.fetch_all(sql, org_id, user_id, after, limit)
