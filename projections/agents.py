"""The ``agents``, ``agent_tags`` and ``agent_states`` tables.

``agents``: one row per live agent (archived ones included, flagged). ``agent_tags``: one
row per tag of an agent, so that filtering by a tag reads an index instead of every agent's
JSON. ``agent_states``: one row per agent whose state was ever set, the whole document.
Deleting an agent or its organization removes its rows from all three.
"""

from __future__ import annotations

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
    OrgDeleted,
)
from agentmem.store import Column, Delete, RowOp, Table, Update, Upsert
from projections.rows import json_text, tag_rows, tag_table

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
    # Org deletions too (their own subject, not every org event): they remove its agents.
    filter_subjects = [
        subjects.events_of("agent"),
        subjects.events_of("agent_state"),
        subjects.events_of("org_deletion"),
    ]
    tables = [AGENTS, AGENT_TAGS, AGENT_STATES]

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops: list[RowOp] = []
        at, version = commit.time_ms, commit.seq
        org_id = subjects.parse(commit.subject).org_id
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
        return ops
