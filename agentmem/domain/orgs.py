"""Organizations: the tenants everything else belongs to."""

from __future__ import annotations

from dataclasses import dataclass

from agentmem import subjects
from agentmem.commands import CreateOrg, DeleteOrg, RenameOrg
from agentmem.domain.aggregate import Loaded, Write, check_version
from agentmem.errors import ConflictError, NotFoundError
from agentmem.events import AnyEvent, OrgCreated, OrgDeleted, OrgRenamed


@dataclass(frozen=True)
class Org:
    org_id: str
    name: str
    deleted: bool = False


def subject(org_id: str) -> str:
    return subjects.event(org_id, "org", org_id)


def evolve(state: Org | None, event: AnyEvent) -> Org | None:
    match event:
        case OrgCreated(org_id=org_id, name=name):
            return Org(org_id=org_id, name=name)
        case OrgRenamed(name=name) if state is not None:
            return Org(org_id=state.org_id, name=name, deleted=state.deleted)
        case OrgDeleted() if state is not None:
            return Org(org_id=state.org_id, name=state.name, deleted=True)
    return state


def require_live(loaded: Loaded[Org], org_id: str) -> Org:
    if loaded.state is None or loaded.state.deleted:
        raise NotFoundError(f"organization {org_id} does not exist", {"org_id": org_id})
    return loaded.state


def create(loaded: Loaded[Org], command: CreateOrg, org_id: str) -> list[Write]:
    if loaded.version != 0:
        raise ConflictError(f"organization {org_id} already exists", {"org_id": org_id})
    return [Write(loaded.subject, 0, [OrgCreated(org_id=org_id, name=command.name)])]


def rename(loaded: Loaded[Org], command: RenameOrg) -> list[Write]:
    require_live(loaded, command.org_id)
    check_version(loaded, command.expected_version)
    event = OrgRenamed(org_id=command.org_id, name=command.name)
    return [Write(loaded.subject, loaded.version, [event])]


def delete(loaded: Loaded[Org], command: DeleteOrg) -> list[Write]:
    """One atomic batch: the deletion on its own subject (written once: a deleted org cannot
    come back), then on the org's. Projections of agents, tools and messages read only the
    first, so org renames do not reach them."""
    require_live(loaded, command.org_id)
    check_version(loaded, command.expected_version)
    deleted = OrgDeleted(org_id=command.org_id)
    return [
        Write(subjects.org_deletion(command.org_id), 0, [deleted]),
        Write(loaded.subject, loaded.version, [deleted]),
    ]
