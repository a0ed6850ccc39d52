"""The ``memories``, ``memory_tags`` and ``memory_versions`` tables, and the named reads of
the memory queries.

``memories``: one row per memory that was not deleted, whatever its state (live, archived,
superseded, expired). A memory past its ``expires_at`` is left out of reads at once; its
``memory.expired`` (the expiry sweep's) empties its content, metadata, tags and source
here and in its versions. A deleted memory, or every memory of a deleted organization,
leaves every table and full-text index. Claims (``memory.content_claimed``) are the log's
own bookkeeping for deduplication: no row. ``memory_versions``: the earlier versions, for
``known_at`` (below).

``position`` is ``seq * 1000 + the memory's index in its commit`` (a batch holds at most
1,000): unique, in log order, the full-text index's key and the order of "created".
``importance`` is kept in millionths (an integer column, exact on both stores).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from agentmem import subjects
from agentmem.domain.memories import MAX_BATCH, SCOPE_FIELDS, millionths
from agentmem.domain.memory_filter import MemoryFilter, decayed
from agentmem.eventlog import StoredCommit
from agentmem.events import (
    DataForgotten,
    ForgetTarget,
    MemoryAdded,
    MemoryArchived,
    MemoryDeleted,
    MemoryExpired,
    MemoryRestored,
    MemorySuperseded,
    MemoryUpdated,
    OrgDeleted,
)
from agentmem.projections.memory_filters import condition, decayed_sql
from agentmem.projections.rows import forgotten_rows, json_text, tag_rows, tag_table
from agentmem.store import (
    Column,
    Condition,
    Copy,
    Delete,
    Dialect,
    FullText,
    RowOp,
    Store,
    Table,
    Update,
    Upsert,
)

PER_COMMIT = MAX_BATCH
IMPORTANCE_SCALE = 1_000_000
MEMORY_TYPES = ("semantic", "episodic", "procedural", "resource")
STATES = ("live", "archived", "superseded", "expired")
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
        # The expiry sweep's look-up (migration 7).
        ("memories_expires", ("expires_at",), False),
        # A history's look-up of the memories each one superseded (migration 16).
        ("memories_superseded_by", ("org_id", "superseded_by"), False),
    ),
    # A search filters by the scope inside the full-text index (agentmem/store/fulltext.py).
    full_text=FullText(columns=("content",), key="position", scope=SCOPE),
    scrub=True,
)

MEMORY_TAGS = tag_table("memory_tags", "memory_id")
FORGETS: frozenset[ForgetTarget] = frozenset(
    {"user", "agent", "conversation", "memory", "memory_scope"}
)

# What the service knew when (``known_at``): the ``memories`` row is each memory's current
# version, recorded at its ``version`` (``updated_at``); ``memory_versions`` keeps every
# earlier one of the memories not deleted, a whole copy of the row as it was, with the log
# sequences and times between which it was the current one: from ``recorded_seq``
# (``recorded_at``, the row's ``version`` and ``updated_at`` then) until
# ``recorded_until_seq`` (``recorded_until_at``), the change that replaced it. An add writes
# no version (most memories never change); every change copies the row before changing it.
# Its own full-text index (key ``version_key``: the position of the change) lets a search
# ask what was known then, with the same scope inside the match.
MEMORY_VERSIONS = Table(
    name="memory_versions",
    columns=(
        *MEMORIES.columns,
        Column("recorded_seq", "integer"),
        Column("recorded_at", "integer"),
        Column("recorded_until_seq", "integer"),
        Column("recorded_until_at", "integer"),
        Column("version_key", "integer"),
    ),
    primary_key=("memory_id", "recorded_seq"),
    indexes=(
        ("memory_versions_org", ("org_id", "position"), False),
        ("memory_versions_user", ("org_id", "user_id", "position"), False),
        ("memory_versions_agent", ("org_id", "agent_id", "position"), False),
        ("memory_versions_session", ("org_id", "session_id", "position"), False),
    ),
    full_text=FullText(columns=("content",), key="version_key", scope=SCOPE),
    scrub=True,
)
# What an expired memory keeps of what people wrote: nothing.
EMPTIED = {"content": "", "metadata": "{}", "tags": "[]", "source": "{}"}

COLUMNS = ", ".join(MEMORIES.column_names)
_T_COLUMNS = ", ".join(f"t.{c}" for c in MEMORIES.column_names)


def position(seq: int, index: int) -> int:
    if not 0 <= index < PER_COMMIT:
        raise ValueError(f"a commit holds at most {PER_COMMIT} memories, not {index + 1}")
    return seq * PER_COMMIT + index


def _changed(memory_id: str, values: dict[str, Any], seq: int, at: int, key: int) -> list[RowOp]:
    """A change of one memory: the row as it was kept as a version (recorded from its last
    change until this one), then the row changed."""
    kept = Copy(
        "memory_versions",
        "memories",
        {"memory_id": memory_id},
        MEMORY_VERSIONS.column_names,
        {"recorded_until_seq": seq, "recorded_until_at": at, "version_key": key},
        (("recorded_seq", "version"), ("recorded_at", "updated_at")),
    )
    return [kept, Update("memories", {"memory_id": memory_id}, values)]


class MemoriesProjection:
    name = "memories"
    version = 1  # bumped when its rows change: docs/architecture.md, "Projection versions"
    # Org deletions too (their own subject): they remove the organization's memories.
    # Forgets too: every forget target may hold memories (a user's, an agent's, a session's).
    filter_subjects = [
        subjects.events_of("memory"),
        subjects.events_of("org_deletion"),
        subjects.events_of("forget"),
    ]
    tables = [MEMORIES, MEMORY_TAGS, MEMORY_VERSIONS]

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops: list[RowOp] = []
        at, seq = commit.time_ms, commit.seq
        for index, event in enumerate(commit.events):
            key = position(seq, index)
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
                        "position": key,
                        "created_at": at,
                        "updated_at": at,
                        "version": seq,
                    }
                    ops.append(Upsert("memories", row))
                    # Its subject's first event (written at expected sequence 0): no tags yet.
                    ops += tag_rows(
                        MEMORY_TAGS, event.org_id, event.memory_id, event.tags, first=True
                    )
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
                    ops += _changed(event.memory_id, values, seq, at, key)
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
                    ops += _changed(event.memory_id, values, seq, at, key)
                case MemoryArchived(memory_id=memory_id):
                    values = {"state": "archived", "updated_at": at, "version": seq}
                    ops += _changed(memory_id, values, seq, at, key)
                case MemoryRestored(memory_id=memory_id):
                    values = {"state": "live", "updated_at": at, "version": seq}
                    ops += _changed(memory_id, values, seq, at, key)
                case MemoryExpired(memory_id=memory_id):
                    # Its content leaves the tables (and so the full-text indexes), every
                    # version's too: the rows say only that it existed, in which scope, and
                    # when it expired.
                    values = {"state": "expired", **EMPTIED, "updated_at": at, "version": seq}
                    ops += _changed(memory_id, values, seq, at, key)
                    ops.append(Update("memory_versions", {"memory_id": memory_id}, EMPTIED))
                    ops.append(Delete("memory_tags", {"memory_id": memory_id}))
                case MemoryDeleted(memory_id=memory_id):
                    ops.append(Delete("memories", {"memory_id": memory_id}))
                    ops.append(Delete("memory_tags", {"memory_id": memory_id}))
                    ops.append(Delete("memory_versions", {"memory_id": memory_id}))
                case OrgDeleted(org_id=deleted):
                    ops.append(Delete("memories", {"org_id": deleted}))
                    ops.append(Delete("memory_tags", {"org_id": deleted}))
                    ops.append(Delete("memory_versions", {"org_id": deleted}))
                case DataForgotten():
                    # The tags first: they are found through their memories' rows.
                    ops += forgotten_rows(
                        event,
                        FORGETS,
                        [MEMORY_TAGS, MEMORY_VERSIONS, MEMORIES],
                        {"memory_tags": MEMORIES},
                    )
        return ops


PROJECTION = MemoriesProjection()


# Reads -------------------------------------------------------------------------------------
_VIEW_COLUMNS = frozenset(MEMORIES.column_names) - {"position"}


def memory_view(row: dict[str, Any], now: int) -> dict[str, Any]:
    """A row as the queries answer it, its importance decayed to ``now``. Its JSON columns
    (metadata, tags, source) stay the JSON the projection stored (``msgspec.Raw``): the
    reply's encoder writes them as they are, instead of decoding and encoding them again."""
    return _view(row, now, row.keys() - _VIEW_COLUMNS)


def memory_views(rows: list[dict[str, Any]], now: int) -> list[dict[str, Any]]:
    """``memory_view`` of every row of one query: they share their columns, so what is not
    the view's is found once (a set difference per row was a third of a view's time)."""
    extras = rows[0].keys() - _VIEW_COLUMNS if rows else set()
    return [_view(row, now, extras) for row in rows]


def _view(row: dict[str, Any], now: int, extras: Iterable[str]) -> dict[str, Any]:
    view = row.copy()  # then without what is not the view's: a copy is C, a loop is not
    for extra in extras:
        del view[extra]
    view["metadata"] = msgspec.Raw(row["metadata"])
    view["tags"] = msgspec.Raw(row["tags"])
    view["source"] = msgspec.Raw(row["source"])
    view["importance"] = row["importance"] / IMPORTANCE_SCALE
    view["decayed_importance"] = decayed(
        view["importance"], row["memory_type"], row["updated_at"], now
    )
    view["expired"] = row["state"] == "expired" or (
        row["expires_at"] is not None and row["expires_at"] <= now
    )
    if "rank" in row:
        view["rank"] = row["rank"]
    return view


async def get_memory(store: Store, memory_id: str) -> dict[str, Any] | None:
    return await store.fetch_one(f"SELECT {COLUMNS} FROM memories WHERE memory_id = ?", memory_id)


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


async def superseded_ids(store: Store, org_id: str, memory_ids: list[str]) -> list[str]:
    """The memories that one of ``memory_ids`` superseded, by a correction or by holding
    its new content already (a deduplicated supersede, of which it keeps no trace)."""
    if not memory_ids:
        return []
    marks = ", ".join("?" for _ in memory_ids)
    rows = await store.fetch_all(
        f"SELECT memory_id FROM memories WHERE org_id = ? AND superseded_by IN ({marks}) "
        "ORDER BY memory_id",
        org_id,
        *memory_ids,
    )
    return [row["memory_id"] for row in rows]


def _rows_of(memory_filter: MemoryFilter, dialect: Dialect, now: int) -> Condition:
    """The rows a list reads, filtered, as a FROM item named ``t``: the ``memories`` rows,
    or, for what was known at an earlier point, the versions current then (``memories``
    rows not changed since, and ``memory_versions`` rows)."""
    org = memory_filter.org_id
    if not memory_filter.past:
        where = condition(memory_filter, dialect, now)
        return Condition(
            f"(SELECT {_T_COLUMNS} FROM memories t WHERE t.org_id = ? AND {where.sql}) t",
            (org, *where.args),
        )
    current = condition(memory_filter, dialect, now)
    earlier = condition(memory_filter, dialect, now, earlier=True)
    return Condition(
        f"(SELECT {_T_COLUMNS} FROM memories t WHERE t.org_id = ? AND {current.sql} "
        f"UNION ALL SELECT {_T_COLUMNS} FROM memory_versions t WHERE t.org_id = ? AND "
        f"{earlier.sql}) t",
        (org, *current.args, org, *earlier.args),
    )


async def memory_ids(store: Store, memory_filter: MemoryFilter, now: int) -> list[str]:
    """The ids of every memory ``memory_filter`` keeps: the vector side's candidates when a
    filter is not one its index holds."""
    rows = _rows_of(memory_filter, store.dialect, now)
    return [
        r["memory_id"]
        for r in await store.fetch_all(f"SELECT t.memory_id FROM {rows.sql}", *rows.args)
    ]


async def memories_among(
    store: Store, memory_filter: MemoryFilter, now: int, memory_ids: list[str]
) -> list[dict[str, Any]]:
    """The rows (versions, with ``known_at``) of ``memory_ids`` that ``memory_filter`` keeps."""
    if not memory_ids:
        return []
    rows = _rows_of(memory_filter, store.dialect, now)
    marks = ", ".join("?" for _ in memory_ids)
    sql = f"SELECT {_T_COLUMNS} FROM {rows.sql} WHERE t.memory_id IN ({marks})"
    return await store.fetch_all(sql, *rows.args, *memory_ids)


async def list_memories(
    store: Store,
    memory_filter: MemoryFilter,
    *,
    now: int,
    order_by: str,
    descending: bool,
    after: tuple[float, int] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """One page. ``after``: the (order key, position) of the last row of the previous page.
    Rows come with ``order_key``, the value the page is ordered by: the position
    (created), ``valid_from``, or the importance decayed to ``now`` (not indexed: the rows
    the other filters leave are sorted)."""
    rows = _rows_of(memory_filter, store.dialect, now)
    args: list[Any] = []
    if order_by == "importance":
        key = decayed_sql(now)
        args += key.args
    else:
        key = Condition("t.position" if order_by == "created" else "t.valid_from")
    args += rows.args
    clauses = ["TRUE"]
    if after is not None:
        sign = "<" if descending else ">"
        if order_by == "created":
            clauses.append(f"t.position {sign} ?")
            args.append(after[1])
        else:
            clauses.append(f"({key.sql} {sign} ? OR ({key.sql} = ? AND t.position {sign} ?))")
            args += [*key.args, after[0], *key.args, after[0], after[1]]
    direction = "DESC" if descending else "ASC"
    # By position alone when it is the key: "position, position" made SQLite sort every page
    # in a temporary B-tree instead of reading the index in order (a user's newest 50 of 100
    # memories: 0.86 against 0.51 ms in the store).
    tie = "" if order_by == "created" else f", t.position {direction}"
    sql = (
        f"SELECT {_T_COLUMNS}, {key.sql} AS order_key FROM {rows.sql} "
        f"WHERE {' AND '.join(clauses)} ORDER BY order_key {direction}{tie} LIMIT ?"
    )
    return await store.fetch_all(sql, *args, limit)


async def search_memories(
    store: Store, text: str, memory_filter: MemoryFilter, now: int, limit: int
) -> list[dict[str, Any]]:
    """Full-text search with the scope inside the index's match (``Store.search``) and
    every other filter checked inside the query, before its limits. What was known at an
    earlier point: the current rows not changed since, and the versions' own index, each
    searched so, the best ``limit`` of both (by rank, then newest memory first)."""
    where: dict[str, Any] = {"org_id": memory_filter.org_id, **memory_filter.scope}
    if memory_filter.memory_type is not None:
        where["memory_type"] = memory_filter.memory_type
    if memory_filter.states in (("live",), ("archived",), ("superseded",)):
        where["state"] = memory_filter.states[0]  # one state: inside the index too
    rest = condition(memory_filter, store.dialect, now, with_scope=False)
    found = await store.search(MEMORIES, text, where, limit, rest)
    if not memory_filter.past:
        return found
    then = condition(memory_filter, store.dialect, now, with_scope=False, earlier=True)
    found += await store.search(MEMORY_VERSIONS, text, where, limit, then)
    found.sort(key=lambda row: (row["rank"], row["position"]), reverse=True)
    return found[:limit]


async def memory_stats(
    store: Store, memory_filter: MemoryFilter, now: int
) -> dict[str, dict[str, int]]:
    """Counts by type, state and scope kind, and distinct scopes, of the memories of an
    organization that ``memory_filter``'s scope and type select (any state)."""
    every = MemoryFilter(
        org_id=memory_filter.org_id,
        states=STATES,
        scope=memory_filter.scope,
        memory_type=memory_filter.memory_type,
    )
    where = condition(every, store.dialect, now)
    state = "CASE WHEN t.state = 'expired' OR t.expires_at <= ? THEN 'expired' ELSE t.state END"
    sql = (
        f"SELECT t.memory_type AS memory_type, {state} AS state, count(*) AS n, "
        f"count(t.user_id) AS users, count(t.agent_id) AS agents, "
        f"count(t.session_id) AS sessions FROM memories t WHERE t.org_id = ? AND {where.sql} "
        f"GROUP BY 1, 2"
    )
    rows = await store.fetch_all(sql, now, memory_filter.org_id, *where.args)
    by_type = dict.fromkeys(MEMORY_TYPES, 0)
    by_state = dict.fromkeys(STATES, 0)
    by_scope = {"user": 0, "agent": 0, "session": 0}
    for row in rows:
        by_type[row["memory_type"]] = by_type.get(row["memory_type"], 0) + row["n"]
        by_state[row["state"]] += row["n"]
        by_scope["user"] += row["users"]
        by_scope["agent"] += row["agents"]
        by_scope["session"] += row["sessions"]
    distinct_sql = (
        f"SELECT count(DISTINCT t.user_id) AS user, count(DISTINCT t.agent_id) AS agent, "
        f"count(DISTINCT t.session_id) AS session FROM memories t "
        f"WHERE t.org_id = ? AND {where.sql}"
    )
    counted = await store.fetch_one(distinct_sql, memory_filter.org_id, *where.args)
    distinct = {k: int(counted[k]) if counted else 0 for k in ("user", "agent", "session")}
    return {"by_type": by_type, "by_state": by_state, "by_scope": by_scope, "distinct": distinct}


async def expired_memory_ids(store: Store, now: int, limit: int) -> list[tuple[str, str]]:
    """(org, memory) of memories whose ``expires_at`` has passed and that the log has not
    expired yet: what the expiry sweep looks at, the longest expired first."""
    rows = await store.fetch_all(
        "SELECT org_id, memory_id FROM memories WHERE expires_at <= ? AND state <> 'expired' "
        "ORDER BY expires_at, memory_id LIMIT ?",
        now,
        limit,
    )
    return [(row["org_id"], row["memory_id"]) for row in rows]
