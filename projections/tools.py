"""The ``tools`` and ``tool_tags`` tables.

``tools``: one row per live tool, its JSON Schema as text. Names are unique within an
organization: the log decides that (tool-name reservations), and the unique index here only
states it. ``tool_tags``: one row per tag of a tool, so that tag filters read an index.
"""

from __future__ import annotations

from typing import Any

import msgspec

from agentmem import subjects
from agentmem.eventlog import StoredCommit
from agentmem.events import OrgDeleted, ToolDeleted, ToolRegistered, ToolUpdated
from agentmem.projections.rows import json_text, tag_rows, tag_table
from agentmem.store import Column, Delete, Row, RowOp, Store, Table, Update, Upsert

TOOLS = Table(
    name="tools",
    columns=(
        Column("tool_id", "text"),
        Column("org_id", "text"),
        Column("name", "text"),
        Column("description", "text"),
        Column("parameters", "json"),
        Column("tags", "json"),
        Column("created_at", "integer"),
        Column("updated_at", "integer"),
        Column("version", "integer"),
    ),
    primary_key=("tool_id",),
    indexes=(
        ("tools_org", ("org_id", "tool_id"), False),
        ("tools_org_name", ("org_id", "name"), True),
    ),
)

TOOL_TAGS = tag_table("tool_tags", "tool_id")


class ToolsProjection:
    name = "tools"
    version = 1  # bumped when its rows change: docs/architecture.md, "Projection versions"
    # Org deletions too (their own subject, not every org event): they remove its tools.
    filter_subjects = [subjects.events_of("tool"), subjects.events_of("org_deletion")]
    tables = [TOOLS, TOOL_TAGS]

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops: list[RowOp] = []
        at, version = commit.time_ms, commit.seq
        org_id = subjects.parse(commit.subject).org_id
        for event in commit.events:
            match event:
                case ToolRegistered():
                    row = {
                        "tool_id": event.tool_id,
                        "org_id": event.org_id,
                        "name": event.name,
                        "description": event.description,
                        "parameters": json_text(event.parameters),
                        "tags": json_text(list(event.tags)),
                        "created_at": at,
                        "updated_at": at,
                        "version": version,
                    }
                    ops.append(Upsert("tools", row))
                    ops += tag_rows(TOOL_TAGS, event.org_id, event.tool_id, event.tags)
                case ToolUpdated():
                    values = {
                        "name": event.name,
                        "description": event.description,
                        "parameters": json_text(event.parameters),
                        "tags": json_text(list(event.tags)),
                        "updated_at": at,
                        "version": version,
                    }
                    ops.append(Update("tools", {"tool_id": event.tool_id}, values))
                    ops += tag_rows(TOOL_TAGS, org_id, event.tool_id, event.tags)
                case ToolDeleted(tool_id=tool_id):
                    ops.append(Delete("tools", {"tool_id": tool_id}))
                    ops.append(Delete("tool_tags", {"tool_id": tool_id}))
                case OrgDeleted(org_id=deleted):
                    ops.append(Delete("tools", {"org_id": deleted}))
                    ops.append(Delete("tool_tags", {"org_id": deleted}))
        return ops


PROJECTION = ToolsProjection()


# The reads its queries need ---------------------------------------------------------------
_COLUMNS = (
    "tool_id",
    "org_id",
    "name",
    "description",
    "parameters",
    "tags",
    "created_at",
    "updated_at",
    "version",
)
_TOOL_COLUMNS = ", ".join(_COLUMNS)
_LISTED_COLUMNS = ", ".join(f"o.{c}" for c in _COLUMNS)


def _view(row: Row) -> Row:
    return {
        **row,
        "parameters": msgspec.json.decode(row["parameters"]),
        "tags": msgspec.json.decode(row["tags"]),
    }


async def get_tool(store: Store, tool_id: str) -> Row | None:
    row = await store.fetch_one(f"SELECT {_TOOL_COLUMNS} FROM tools WHERE tool_id = ?", tool_id)
    return None if row is None else _view(row)


async def get_tool_by_name(store: Store, org_id: str, name: str) -> Row | None:
    row = await store.fetch_one(
        f"SELECT {_TOOL_COLUMNS} FROM tools WHERE org_id = ? AND name = ?", org_id, name
    )
    return None if row is None else _view(row)


async def list_tools(
    store: Store,
    org_id: str,
    *,
    after: str,
    limit: int,
    tags_all: list[str],
    tags_any: list[str],
) -> list[Row]:
    """An organization's tools in id order after ``after``: with every tag of ``tags_all``
    and any of ``tags_any`` (an empty list filters nothing)."""
    every = list(dict.fromkeys(tags_all))
    any_of = list(dict.fromkeys(tags_any))
    if every:
        # Along the first tag's index, in tool_id order from the cursor, checking the
        # other tags by primary key: a page reads about a page of rows.
        source = "tool_tags t JOIN tools o ON o.tool_id = t.tool_id AND o.org_id = t.org_id"
        key = "t.tool_id"
        where = ["t.org_id = ?", "t.tag = ?", "t.tool_id > ?"]
        args: list[Any] = [org_id, every[0], after]
        for tag in every[1:]:
            where.append(
                "EXISTS (SELECT 1 FROM tool_tags x WHERE x.tool_id = t.tool_id AND x.tag = ?)"
            )
            args.append(tag)
    else:
        source, key = "tools o", "o.tool_id"
        where, args = ["o.org_id = ?", "o.tool_id > ?"], [org_id, after]
    if any_of:
        # The tools of those tags after the cursor, along (org_id, tag, tool_id). Not
        # ``EXISTS (... tag IN (...))``: SQLite 3.51 turns that into a join that yields a
        # tool once per matching tag; and Postgres answers ORed EXISTS with a table scan.
        marks = ", ".join("?" for _ in any_of)
        where.append(
            "o.tool_id IN (SELECT y.tool_id FROM tool_tags y "
            f"WHERE y.org_id = ? AND y.tag IN ({marks}) AND y.tool_id > ?)"
        )
        args += [org_id, *any_of, after]
    rows = await store.fetch_all(
        f"SELECT {_LISTED_COLUMNS} FROM {source} WHERE {' AND '.join(where)} "
        f"ORDER BY {key} LIMIT ?",
        *args,
        limit,
    )
    return [_view(r) for r in rows]
