"""The ``working_items`` table: each session's working memory, and the read of ``working.get``.

One row per item put and not removed or cleared. ``expires_at`` is the put commit's recorded
time (``AgentMem-Time``) plus its ``ttl_ms``, so a replay writes the same value; an expired
item keeps its row until it is removed, replaced or cleared, and the read leaves it out.
``priority`` is kept in millionths (an integer column, exact on both stores).
"""

from __future__ import annotations

from typing import Any

import msgspec

from agentmem import subjects
from agentmem.eventlog import StoredCommit
from agentmem.events import (
    DataForgotten,
    ForgetTarget,
    OrgDeleted,
    WorkingCleared,
    WorkingItemPut,
    WorkingItemRemoved,
)
from agentmem.projections.rows import forgotten_rows, json_text
from agentmem.store import Column, Delete, RowOp, Store, Table, Upsert

PRIORITY_SCALE = 1_000_000

WORKING_ITEMS = Table(
    name="working_items",
    columns=(
        Column("org_id", "text"),
        Column("session_id", "text"),
        Column("item_key", "text"),  # the item's key within its session
        Column("content", "text"),
        Column("priority", "integer"),  # millionths
        Column("ttl_ms", "integer", nullable=True),
        Column("expires_at", "integer", nullable=True),
        Column("metadata", "json"),
        Column("created_at", "integer"),
        Column("version", "integer"),
        # Whom the item is about (migration 13): a forget of them takes it.
        Column("user_id", "text", nullable=True),
        Column("agent_id", "text", nullable=True),
    ),
    primary_key=("org_id", "session_id", "item_key"),
    indexes=(("working_items_priority", ("org_id", "session_id", "priority", "version"), False),),
    scrub=True,
)

COLUMNS = ", ".join(WORKING_ITEMS.column_names)


def millionths(priority: float) -> int:
    return round(priority * PRIORITY_SCALE)


# The forgets whose rows this projection drops: a user's, an agent's, a conversation's.
FORGETS: frozenset[ForgetTarget] = frozenset({"user", "agent", "conversation"})


class WorkingProjection:
    name = "working"
    version = 1  # bumped when its rows change: docs/architecture.md, "Projection versions"
    # Org deletions too (their own subject): they remove the organization's items; and
    # forgets, which remove the items of a forgotten session, user or agent.
    filter_subjects = [
        subjects.events_of("working"),
        subjects.events_of("org_deletion"),
        subjects.events_of("forget"),
    ]
    tables = [WORKING_ITEMS]

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops: list[RowOp] = []
        org_id = subjects.parse(commit.subject).org_id
        at, seq = commit.time_ms, commit.seq
        for event in commit.events:
            match event:
                case WorkingItemPut():
                    row = {
                        "org_id": org_id,
                        "session_id": event.session_id,
                        "item_key": event.key,
                        "content": event.content,
                        "priority": millionths(event.priority),
                        "ttl_ms": event.ttl_ms,
                        "expires_at": None if event.ttl_ms is None else at + event.ttl_ms,
                        "metadata": json_text(event.metadata),
                        "created_at": at,
                        "version": seq,
                        "user_id": event.user_id,
                        "agent_id": event.agent_id,
                    }
                    ops.append(Upsert("working_items", row))
                case WorkingItemRemoved(session_id=session_id, key=key):
                    item = {"org_id": org_id, "session_id": session_id, "item_key": key}
                    ops.append(Delete("working_items", item))
                case WorkingCleared(session_id=session_id):
                    ops.append(
                        Delete("working_items", {"org_id": org_id, "session_id": session_id})
                    )
                case OrgDeleted(org_id=deleted):
                    ops.append(Delete("working_items", {"org_id": deleted}))
                case DataForgotten():
                    ops += forgotten_rows(event, FORGETS, self.tables)
        return ops


PROJECTION = WorkingProjection()


# Reads -------------------------------------------------------------------------------------
_json = msgspec.json.Decoder()


def item_view(row: dict[str, Any]) -> dict[str, Any]:
    view = {("key" if c == "item_key" else c): row[c] for c in WORKING_ITEMS.column_names}
    view["priority"] = row["priority"] / PRIORITY_SCALE
    view["metadata"] = _json.decode(row["metadata"])
    return view


async def live_items(
    store: Store, org_id: str, session_id: str, now: int, min_priority: float | None, limit: int
) -> list[dict[str, Any]]:
    """The session's items that have not expired at ``now`` (the service's clock), with at
    least ``min_priority``, highest priority first and, among equals, the newest first."""
    sql = (
        f"SELECT {COLUMNS} FROM working_items WHERE org_id = ? AND session_id = ? "
        "AND priority >= ? AND (expires_at IS NULL OR expires_at > ?) "
        "ORDER BY priority DESC, version DESC LIMIT ?"
    )
    floor = millionths(min_priority) if min_priority is not None else 0
    return await store.fetch_all(sql, org_id, session_id, floor, now, limit)
