"""The ``orgs`` table: one row per live organization."""

from __future__ import annotations

from agentmem import subjects
from agentmem.eventlog import StoredCommit
from agentmem.events import OrgCreated, OrgDeleted, OrgRenamed
from agentmem.store import Column, Delete, Row, RowOp, Store, Table, Update, Upsert

ORGS = Table(
    name="orgs",
    columns=(
        Column("org_id", "text"),
        Column("name", "text"),
        Column("created_at", "integer"),
        Column("updated_at", "integer"),
        Column("version", "integer"),
    ),
    primary_key=("org_id",),
)


class OrgsProjection:
    name = "orgs"
    version = 1  # bumped when its rows change: docs/architecture.md, "Projection versions"
    filter_subjects = [subjects.events_of("org")]
    tables = [ORGS]

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops: list[RowOp] = []
        at, version = commit.time_ms, commit.seq
        for event in commit.events:
            match event:
                case OrgCreated(org_id=org_id, name=name):
                    row = {
                        "org_id": org_id,
                        "name": name,
                        "created_at": at,
                        "updated_at": at,
                        "version": version,
                    }
                    ops.append(Upsert("orgs", row))
                case OrgRenamed(org_id=org_id, name=name):
                    values = {"name": name, "updated_at": at, "version": version}
                    ops.append(Update("orgs", {"org_id": org_id}, values))
                case OrgDeleted(org_id=org_id):
                    ops.append(Delete("orgs", {"org_id": org_id}))
        return ops


PROJECTION = OrgsProjection()


# The reads its queries need ---------------------------------------------------------------
_COLUMNS = "org_id, name, created_at, updated_at, version"


async def get_org(store: Store, org_id: str) -> Row | None:
    return await store.fetch_one(f"SELECT {_COLUMNS} FROM orgs WHERE org_id = ?", org_id)


async def list_orgs(store: Store, after: str, limit: int, only: str | None = None) -> list[Row]:
    """Organizations after ``after`` in id order; with ``only``, that one at most."""
    scope, args = ("", ()) if only is None else ("AND org_id = ? ", (only,))
    return await store.fetch_all(
        f"SELECT {_COLUMNS} FROM orgs WHERE org_id > ? {scope}ORDER BY org_id LIMIT ?",
        after,
        *args,
        limit,
    )
