"""The ``memories`` and ``memory_tags`` tables, and the named reads of the memory queries.

``memories``: one row per memory that was not deleted, whatever its state (live, archived,
superseded; an expired one keeps its row and is filtered at read). A deleted memory, or
every memory of a deleted organization, leaves both tables and the full-text index. Claims
(``memory.content_claimed``) are the log's own bookkeeping for deduplication: no row.

``position`` is ``seq * 1000 + the memory's index in its commit`` (a batch holds at most
1,000): unique, in log order, the full-text index's key and the order of "created".
``importance`` is kept in millionths (an integer column, exact on both stores).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from agentmem import subjects
from agentmem.domain.memories import MAX_BATCH
from agentmem.eventlog import StoredCommit
from agentmem.events import (
    MemoryAdded,
    MemoryArchived,
    MemoryDeleted,
    MemoryRestored,
    MemorySuperseded,
    MemoryUpdated,
    OrgDeleted,
)
from agentmem.projections.rows import json_text, tag_rows, tag_table
from agentmem.store import Column, Delete, FullText, RowOp, Store, Table, Update, Upsert

PER_COMMIT = MAX_BATCH
IMPORTANCE_SCALE = 1_000_000
SCOPE = ("org_id", "user_id", "agent_id", "session_id", "memory_type", "state")

MEMORIES = Table(
    name="memories",
    columns=(
        Column("memory_id", "text"),
        Column("org_id", "text"),
        Column("memory_type", "text"),
        Column("user_id", "text", nullable=True),
        Column("agent_id", "text", nullable=True),
        Column("session_id", "text", nullable=True),
        Column("content", "text"),
        Column("metadata", "json"),
        Column("tags", "json"),
        Column("importance", "integer"),  # millionths
        Column("valid_from", "integer"),
        Column("valid_to", "integer", nullable=True),
        Column("expires_at", "integer", nullable=True),
        Column("state", "text"),  # live, archived, superseded
        Column("superseded_by", "text", nullable=True),
        Column("supersedes", "text", nullable=True),
        Column("source", "json"),
        Column("uri", "text", nullable=True),
        Column("mime_type", "text", nullable=True),
        Column("position", "integer"),
        Column("created_at", "integer"),
        Column("updated_at", "integer"),
        Column("version", "integer"),
    ),
    primary_key=("memory_id",),
    indexes=(
        ("memories_org", ("org_id", "position"), False),
        ("memories_user", ("org_id", "user_id", "position"), False),
        ("memories_agent", ("org_id", "agent_id", "position"), False),
        ("memories_session", ("org_id", "session_id", "position"), False),
        ("memories_valid", ("org_id", "valid_from", "position"), False),
    ),
    # A search filters by the scope inside the full-text index (agentmem/store/fulltext.py).
    full_text=FullText(columns=("content",), key="position", scope=SCOPE),
    scrub=True,
)

MEMORY_TAGS = tag_table("memory_tags", "memory_id")

COLUMNS = ", ".join(MEMORIES.column_names)
_M_COLUMNS = ", ".join(f"m.{c}" for c in MEMORIES.column_names)


def position(seq: int, index: int) -> int:
    if not 0 <= index < PER_COMMIT:
        raise ValueError(f"a commit holds at most {PER_COMMIT} memories, not {index + 1}")
    return seq * PER_COMMIT + index


def millionths(importance: float) -> int:
    return round(importance * IMPORTANCE_SCALE)


class MemoriesProjection:
    name = "memories"
    # Org deletions too (their own subject): they remove the organization's memories.
    filter_subjects = [subjects.events_of("memory"), subjects.events_of("org_deletion")]
    tables = [MEMORIES, MEMORY_TAGS]

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops: list[RowOp] = []
        at, seq = commit.time_ms, commit.seq
        for index, event in enumerate(commit.events):
            match event:
                case MemoryAdded():
                    row = {
                        "memory_id": event.memory_id,
                        "org_id": event.org_id,
                        "memory_type": event.memory_type,
                        "user_id": event.user_id,
                        "agent_id": event.agent_id,
                        "session_id": event.session_id,
                        "content": event.content,
                        "metadata": json_text(event.metadata),
                        "tags": json_text(list(event.tags)),
                        "importance": millionths(event.importance),
                        "valid_from": event.valid_from,
                        "valid_to": event.valid_to,
                        "expires_at": event.expires_at,
                        "state": "live",
                        "superseded_by": None,
                        "supersedes": event.supersedes,
                        "source": json_text(event.source),
                        "uri": event.uri,
                        "mime_type": event.mime_type,
                        "position": position(seq, index),
                        "created_at": at,
                        "updated_at": at,
                        "version": seq,
                    }
                    ops.append(Upsert("memories", row))
                    ops += tag_rows(MEMORY_TAGS, event.org_id, event.memory_id, event.tags)
                case MemoryUpdated():
                    values = {
                        "content": event.content,
                        "metadata": json_text(event.metadata),
                        "tags": json_text(list(event.tags)),
                        "importance": millionths(event.importance),
                        "valid_from": event.valid_from,
                        "valid_to": event.valid_to,
                        "expires_at": event.expires_at,
                        "updated_at": at,
                        "version": seq,
                    }
                    ops.append(Update("memories", {"memory_id": event.memory_id}, values))
                    org_id = subjects.parse(commit.subject).org_id
                    ops += tag_rows(MEMORY_TAGS, org_id, event.memory_id, event.tags)
                case MemorySuperseded():
                    values = {
                        "state": "superseded",
                        "superseded_by": event.superseded_by,
                        "valid_to": event.valid_to,
                        "updated_at": at,
                        "version": seq,
                    }
                    ops.append(Update("memories", {"memory_id": event.memory_id}, values))
                case MemoryArchived(memory_id=memory_id):
                    values = {"state": "archived", "updated_at": at, "version": seq}
                    ops.append(Update("memories", {"memory_id": memory_id}, values))
                case MemoryRestored(memory_id=memory_id):
                    values = {"state": "live", "updated_at": at, "version": seq}
                    ops.append(Update("memories", {"memory_id": memory_id}, values))
                case MemoryDeleted(memory_id=memory_id):
                    ops.append(Delete("memories", {"memory_id": memory_id}))
                    ops.append(Delete("memory_tags", {"memory_id": memory_id}))
                case OrgDeleted(org_id=deleted):
                    ops.append(Delete("memories", {"org_id": deleted}))
                    ops.append(Delete("memory_tags", {"org_id": deleted}))
        return ops


PROJECTION = MemoriesProjection()


# Reads -------------------------------------------------------------------------------------
_json = msgspec.json.Decoder()


def memory_view(row: dict[str, Any], now: int) -> dict[str, Any]:
    """A row as the queries answer it."""
    view = {c: row[c] for c in MEMORIES.column_names if c != "position"}
    view["metadata"] = _json.decode(row["metadata"])
    view["tags"] = _json.decode(row["tags"])
    view["source"] = _json.decode(row["source"])
    view["importance"] = row["importance"] / IMPORTANCE_SCALE
    view["expired"] = row["expires_at"] is not None and row["expires_at"] <= now
    if "rank" in row:
        view["rank"] = row["rank"]
    return view


async def get_memory(store: Store, memory_id: str) -> dict[str, Any] | None:
    return await store.fetch_one(f"SELECT {COLUMNS} FROM memories WHERE memory_id = ?", memory_id)


SCOPE_FIELDS = ("user_id", "agent_id", "session_id")


async def scope_memory_ids(
    store: Store, org_id: str, scope: dict[str, str], after: str, limit: int
) -> list[str]:
    """Ids of the memories of a scope (every field of ``scope`` equal), in id order after
    ``after``: what memory.delete_scope deletes, a page at a time."""
    where = ["org_id = ?", "memory_id > ?"]
    args: list[Any] = [org_id, after]
    for column in SCOPE_FIELDS:
        if column in scope:
            where.append(f"{column} = ?")
            args.append(scope[column])
    rows = await store.fetch_all(
        f"SELECT memory_id FROM memories WHERE {' AND '.join(where)} ORDER BY memory_id LIMIT ?",
        *args,
        limit,
    )
    return [row["memory_id"] for row in rows]


def _state_sql(states: Sequence[str], now: int, args: list[Any]) -> str:
    """One condition for the states asked: live and archived ones that have expired count
    as expired only."""
    parts = []
    not_expired = "(m.expires_at IS NULL OR m.expires_at > ?)"
    for state in dict.fromkeys(states):
        if state == "expired":
            parts.append("(m.state <> 'superseded' AND m.expires_at <= ?)")
        elif state == "superseded":
            parts.append("m.state = 'superseded'")
            continue
        else:
            parts.append(f"(m.state = ? AND {not_expired})")
            args.append(state)
        args.append(now)
    return "(" + " OR ".join(parts) + ")"


async def list_memories(
    store: Store,
    org_id: str,
    *,
    now: int,
    scope: dict[str, str],
    memory_type: str | None,
    states: Sequence[str],
    tags_any: Sequence[str] | None,
    min_importance: float | None,
    max_importance: float | None,
    created_after: int | None,
    created_before: int | None,
    valid_from_after: int | None,
    valid_from_before: int | None,
    as_of: int | None,
    order_by: str,
    descending: bool,
    after: tuple[int, int] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """One page, along the (org, scope column, position) or (org, valid_from, position)
    index. ``after``: the (order key, position) of the last row of the previous page. Rows
    come with ``order_key``, the value the page is ordered by."""
    key = "m.position" if order_by == "created" else "m.valid_from"
    source = "memories m"
    where = ["m.org_id = ?"]
    args: list[Any] = [org_id]
    if tags_any:
        marks = ", ".join("?" for _ in tags_any)
        where.append(
            f"m.memory_id IN (SELECT t.memory_id FROM memory_tags t WHERE t.org_id = ? "
            f"AND t.tag IN ({marks}))"
        )
        args += [org_id, *tags_any]
    for column, value in scope.items():
        where.append(f"m.{column} = ?")
        args.append(value)
    if memory_type is not None:
        where.append("m.memory_type = ?")
        args.append(memory_type)
    where.append(_state_sql(states, now, args))
    if min_importance is not None:
        where.append("m.importance >= ?")
        args.append(millionths(min_importance))
    if max_importance is not None:
        where.append("m.importance <= ?")
        args.append(millionths(max_importance))
    for sql, bound in (
        ("m.created_at >= ?", created_after),
        ("m.created_at < ?", created_before),
        ("m.valid_from >= ?", valid_from_after),
        ("m.valid_from < ?", valid_from_before),
    ):
        if bound is not None:
            where.append(sql)
            args.append(bound)
    if as_of is not None:
        where.append("m.valid_from <= ? AND (m.valid_to IS NULL OR m.valid_to > ?)")
        args += [as_of, as_of]
    if after is not None:
        sign = "<" if descending else ">"
        if order_by == "created":
            where.append(f"m.position {sign} ?")
            args.append(after[1])
        else:
            where.append(f"(m.valid_from {sign} ? OR (m.valid_from = ? AND m.position {sign} ?))")
            args += [after[0], after[0], after[1]]
    direction = "DESC" if descending else "ASC"
    sql = (
        f"SELECT {_M_COLUMNS}, {key} AS order_key FROM {source} WHERE {' AND '.join(where)} "
        f"ORDER BY {key} {direction}, m.position {direction} LIMIT ?"
    )
    return await store.fetch_all(sql, *args, limit)


async def search_memories(
    store: Store, text: str, where: dict[str, Any], limit: int
) -> list[dict[str, Any]]:
    """Full-text search with the scope inside the index's match (``Store.search``)."""
    return await store.search(MEMORIES, text, where, limit)
