"""The ``agents``, ``agent_tags`` and ``agent_states`` tables.

``agents``: one row per live agent (archived ones included, flagged). ``agent_tags``: one
row per tag of an agent, so that filtering by a tag reads an index instead of every agent's
JSON. ``agent_states``: one row per agent whose state was ever set, the whole document.
Deleting an agent or its organization removes its rows from all three.
"""

from __future__ import annotations

from typing import Any

import msgspec

from agentmem import subjects
from agentmem.eventlog import StoredCommit
from agentmem.events import (
    AgentArchived,
    AgentCreated,
    AgentDeleted,
    AgentStateCleared,
    AgentStateSet,
    AgentUnarchived,
    AgentUpdated,
    DataForgotten,
    OrgDeleted,
)
from agentmem.projections.rows import forgotten_rows, json_text, tag_rows, tag_table
from agentmem.store import Column, Delete, Row, RowOp, Store, Table, Update, Upsert

AGENTS = Table(
    name="agents",
    columns=(
        Column("agent_id", "text"),
        Column("org_id", "text"),
        Column("name", "text"),
        Column("description", "text"),
        Column("persona", "text"),
        Column("model", "json"),
        Column("metadata", "json"),
        Column("tags", "json"),
        Column("archived", "integer"),
        Column("created_at", "integer"),
        Column("updated_at", "integer"),
        Column("version", "integer"),
    ),
    primary_key=("agent_id",),
    indexes=(
        ("agents_org", ("org_id", "agent_id"), False),
        ("agents_org_name", ("org_id", "name"), False),
    ),
)

AGENT_TAGS = tag_table("agent_tags", "agent_id")

AGENT_STATES = Table(
    name="agent_states",
    columns=(
        Column("agent_id", "text"),
        Column("org_id", "text"),
        Column("state", "json"),
        Column("updated_at", "integer"),
        Column("version", "integer"),  # the state subject's seq: what expected_version names
    ),
    primary_key=("agent_id",),
    indexes=(("agent_states_org", ("org_id",), False),),
)


class AgentsProjection:
    name = "agents"
    version = 1  # bumped when its rows change: docs/architecture.md, "Projection versions"
    # Org deletions too (their own subject, not every org event): they remove its agents.
    filter_subjects = [
        subjects.events_of("agent"),
        subjects.events_of("agent_state"),
        subjects.events_of("org_deletion"),
        subjects.events_of("forget"),
    ]
    tables = [AGENTS, AGENT_TAGS, AGENT_STATES]

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops: list[RowOp] = []
        at, version = commit.time_ms, commit.seq
        org_id, aggregate, _ = subjects.parse(commit.subject)
        for event in commit.events:
            match event:
                case AgentCreated():
                    row = {
                        "agent_id": event.agent_id,
                        "org_id": event.org_id,
                        "name": event.name,
                        "description": event.description,
                        "persona": event.persona,
                        "model": json_text(event.model),
                        "metadata": json_text(event.metadata),
                        "tags": json_text(list(event.tags)),
                        "archived": 0,
                        "created_at": at,
                        "updated_at": at,
                        "version": version,
                    }
                    ops.append(Upsert("agents", row))
                    ops += tag_rows(AGENT_TAGS, event.org_id, event.agent_id, event.tags)
                    # The empty document at version 0, the state subject's: an archive
                    # before any state write moves it too (``get_state`` gives the version
                    # a state write's expected_version compares).
                    state_row = {
                        "agent_id": event.agent_id,
                        "org_id": event.org_id,
                        "state": "{}",
                        "updated_at": at,
                        "version": 0,
                    }
                    ops.append(Upsert("agent_states", state_row))
                case AgentUpdated():
                    values = {
                        "name": event.name,
                        "description": event.description,
                        "persona": event.persona,
                        "model": json_text(event.model),
                        "metadata": json_text(event.metadata),
                        "tags": json_text(list(event.tags)),
                        "updated_at": at,
                        "version": version,
                    }
                    ops.append(Update("agents", {"agent_id": event.agent_id}, values))
                    ops += tag_rows(AGENT_TAGS, org_id, event.agent_id, event.tags)
                case AgentArchived(agent_id=agent_id) if aggregate == "agent_state":
                    # The archive's fence on the state subject: the document is kept, its
                    # version (what a state write's expected_version compares) moves.
                    ops.append(Update("agent_states", {"agent_id": agent_id}, {"version": version}))
                case AgentArchived(agent_id=agent_id):
                    values = {"archived": 1, "updated_at": at, "version": version}
                    ops.append(Update("agents", {"agent_id": agent_id}, values))
                case AgentUnarchived(agent_id=agent_id):
                    values = {"archived": 0, "updated_at": at, "version": version}
                    ops.append(Update("agents", {"agent_id": agent_id}, values))
                case AgentDeleted(agent_id=agent_id):
                    for table in ("agents", "agent_tags", "agent_states"):
                        ops.append(Delete(table, {"agent_id": agent_id}))
                case AgentStateSet(agent_id=agent_id, state=state):
                    row = {
                        "agent_id": agent_id,
                        "org_id": org_id,
                        "state": json_text(state),
                        "updated_at": at,
                        "version": version,
                    }
                    ops.append(Upsert("agent_states", row))
                case AgentStateCleared(agent_id=agent_id):
                    ops.append(Delete("agent_states", {"agent_id": agent_id}))
                case OrgDeleted(org_id=deleted):
                    for table in ("agents", "agent_tags", "agent_states"):
                        ops.append(Delete(table, {"org_id": deleted}))
                case DataForgotten():
                    ops += forgotten_rows(event, frozenset({"agent"}), self.tables)
        return ops


PROJECTION = AgentsProjection()


# The reads its queries need ---------------------------------------------------------------
_COLUMNS = (
    "agent_id",
    "org_id",
    "name",
    "description",
    "persona",
    "model",
    "metadata",
    "tags",
    "archived",
    "created_at",
    "updated_at",
    "version",
)
_AGENT_COLUMNS = ", ".join(_COLUMNS)
_LISTED_COLUMNS = ", ".join(f"a.{c}" for c in _COLUMNS)


def _view(row: Row) -> Row:
    return {
        **row,
        "model": msgspec.json.decode(row["model"]),
        "metadata": msgspec.json.decode(row["metadata"]),
        "tags": msgspec.json.decode(row["tags"]),
        "archived": bool(row["archived"]),
    }


def prefix_bound(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix``, in code point
    order (which is UTF-8 byte order, the order of both stores' text columns); None when
    there is none. ``name >= prefix AND name < bound`` is then a prefix match that uses an
    index and gives ``%`` and ``_`` no special meaning, as LIKE would."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates are not characters: skip past them
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


async def get_agent(store: Store, agent_id: str) -> Row | None:
    row = await store.fetch_one(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE agent_id = ?", agent_id)
    return None if row is None else _view(row)


async def get_state(store: Store, agent_id: str) -> tuple[dict[str, Any], int]:
    """The agent's state document and its version; never set: the empty one at version 0."""
    row = await store.fetch_one(
        "SELECT state, version FROM agent_states WHERE agent_id = ?", agent_id
    )
    if row is None:
        return {}, 0
    state: dict[str, Any] = msgspec.json.decode(row["state"])
    return state, int(row["version"])


async def list_agents(
    store: Store,
    org_id: str,
    *,
    after: str,
    limit: int,
    tag: str | None,
    name_prefix: str | None,
    include_archived: bool,
) -> list[Row]:
    """An organization's agents in id order after ``after``, with the list's filters."""
    if tag is None:
        source, key = "agents a", "a.agent_id"
        where, args = ["a.org_id = ?", "a.agent_id > ?"], [org_id, after]
    else:
        # Along the tag's index, in agent_id order from the cursor: a page reads about a
        # page of rows, however many agents carry the tag.
        source = "agent_tags t JOIN agents a ON a.agent_id = t.agent_id AND a.org_id = t.org_id"
        key = "t.agent_id"
        where = ["t.org_id = ?", "t.tag = ?", "t.agent_id > ?"]
        args = [org_id, tag, after]
    if not include_archived:
        where.append("a.archived = 0")
    if name_prefix is not None:
        where.append("a.name >= ?")
        args.append(name_prefix)
        bound = prefix_bound(name_prefix)
        if bound is not None:
            where.append("a.name < ?")
            args.append(bound)
    rows = await store.fetch_all(
        f"SELECT {_LISTED_COLUMNS} FROM {source} WHERE {' AND '.join(where)} "
        f"ORDER BY {key} LIMIT ?",
        *args,
        limit,
    )
    return [_view(r) for r in rows]
