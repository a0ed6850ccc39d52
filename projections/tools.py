"""The ``tools`` and ``tool_tags`` tables.

``tools``: one row per live tool, its JSON Schema as text. Names are unique within an
organization: the log decides that (tool-name reservations), and the unique index here only
states it. ``tool_tags``: one row per tag of a tool, so that tag filters read an index.
"""

from __future__ import annotations

from agentmem import subjects
from agentmem.eventlog import StoredCommit
from agentmem.events import OrgDeleted, ToolDeleted, ToolRegistered, ToolUpdated
from agentmem.store import Column, Delete, RowOp, Table, Update, Upsert
from projections.rows import json_text, tag_rows, tag_table

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
