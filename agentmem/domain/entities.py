"""Entities of the knowledge graph: typed, named things with aliases and attributes, scoped
like memories (an organization, and optionally a user and an agent).

An entity lives on ``agentmem.evt.<org>.entity.<entity_id>``. As with memories, its id is
derived from what makes two entities the same (organization, scope, type and normalised
name) and a generation::

    entity_id = <base32 of sha256(org, type, user, agent, normalised name)>-<g>

so the first subject of a name is its reservation, written with expected sequence 0: two
concurrent creates of "Ann Lee" write the same subject, one of them wins, and the other
finds the entity when it decides again. A deleted, merged or renamed entity leaves its
subject dead for its old name, and the next create takes the next generation.

A merge is reversible: ``entity.merged`` on the merged entity and ``entity.absorbed`` on the
survivor, in one atomic batch, carry the members that move (the merged entity and what it
had absorbed). The relations in the log keep naming the ids they named; the graph
projection answers them as the survivor, and ``entity.unmerge`` gives them back.
"""

from __future__ import annotations

import base64
import hashlib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import msgspec

from agentmem import subjects
from agentmem.commands import Id, JsonObject, Targeted, TimeMs
from agentmem.commands import InOrg as CommandInOrg
from agentmem.domain.aggregate import Loaded, Write, check_version
from agentmem.domain.jsondoc import check_bounds, merge_patch
from agentmem.errors import ConflictError, NotFoundError
from agentmem.events import (
    AnyEvent,
    EntityAbsorbed,
    EntityAliasAdded,
    EntityAliasRemoved,
    EntityAttributesSet,
    EntityCreated,
    EntityDeleted,
    EntityMerged,
    EntityReleased,
    EntityRenamed,
    EntityUnmerged,
)
from agentmem.protocol import command, query
from agentmem.queries import Cursor, Limit, Query, Seq
from agentmem.queries import InOrg as QueryInOrg
from agentmem.replies import Entity as EntityReply
from agentmem.replies import EntityCreatedOutcome, EntityResolution, Page, ScopeDeleted
from agentmem.validation import invalid

# The types every deployment knows; any other lower-case word is a custom type.
KNOWN_TYPES = ("person", "organization", "place", "concept", "event", "object")
MAX_ALIASES = 32
MAX_ATTRIBUTES_BYTES = 16 * 1024
MAX_GENERATIONS = 1_000
# How many entities an entity may have absorbed, directly or through earlier merges.
MAX_MEMBERS = 256

EntityType = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,39}$(?!\n)")]
EntityName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Aliases = Annotated[list[EntityName], msgspec.Meta(max_length=MAX_ALIASES)]


# Requests ----------------------------------------------------------------------------------
class InScope(CommandInOrg, frozen=True, kw_only=True):
    user_id: Id | None = None
    agent_id: Id | None = None


@command("entity.create", need="member", reply=EntityCreated, extra=EntityCreatedOutcome)
class CreateEntity(InScope, frozen=True, kw_only=True):
    """A typed, named entity in a scope. A live entity of that type and scope already
    named so (by its name or an alias, compared normalised) is the answer instead,
    ``deduplicated: true``, and nothing is appended."""

    entity_type: EntityType
    name: EntityName
    aliases: Aliases = msgspec.field(default_factory=list)
    attributes: JsonObject = msgspec.field(default_factory=dict)


@command("entity.rename", need="member", reply=EntityRenamed)
class RenameEntity(Targeted, frozen=True, kw_only=True):
    """The old name stays an alias, so that what was said about it still resolves."""

    entity_id: Id
    name: EntityName


@command("entity.add_alias", need="member", reply=EntityAliasAdded)
class AddEntityAlias(Targeted, frozen=True, kw_only=True):
    entity_id: Id
    alias: EntityName


@command("entity.remove_alias", need="member", reply=EntityAliasRemoved)
class RemoveEntityAlias(Targeted, frozen=True, kw_only=True):
    entity_id: Id
    alias: EntityName


@command("entity.set_attributes", need="member", reply=EntityAttributesSet)
class SetEntityAttributes(Targeted, frozen=True, kw_only=True):
    """A JSON merge patch (RFC 7396) of the attributes: ``null`` removes one."""

    entity_id: Id
    attributes: JsonObject


@command("entity.merge", need="member", reply=EntityAbsorbed)
class MergeEntity(Targeted, frozen=True, kw_only=True):
    """``entity_id`` (and what it absorbed before) answers as ``into`` from now on: its
    names resolve to ``into`` and its relations are ``into``'s. ``entity.unmerge`` undoes
    it. ``expected_version`` is the merged entity's."""

    entity_id: Id
    into: Id


@command("entity.unmerge", need="member", reply=EntityUnmerged)
class UnmergeEntity(Targeted, frozen=True, kw_only=True):
    """Undo the merge of ``entity_id``: it and its relations answer as themselves again."""

    entity_id: Id


@command("entity.delete", need="member", reply=EntityDeleted)
class DeleteEntity(Targeted, frozen=True, kw_only=True):
    """The entity, the entities merged into it and every relation naming any of them leave
    every table; the log keeps that they existed and who deleted them."""

    entity_id: Id


@command("entity.delete_scope", need="org_admin", reply=ScopeDeleted)
class DeleteEntityScope(CommandInOrg, frozen=True, kw_only=True):
    """Every entity of one user or agent of an organization (all that match every field
    given), with their relations, and nothing else."""

    user_id: Id | None = None
    agent_id: Id | None = None


class KnownAt(Query, frozen=True, kw_only=True):
    """System time on an entity read: only the entities the service knew at this time
    (``known_at``, ms) or log sequence (``known_at_seq``), each as it is now (an entity's
    names and attributes are not versioned; a deleted one has left the tables)."""

    known_at: TimeMs | None = None
    known_at_seq: Seq | None = None


class KnownAtInOrg(QueryInOrg, frozen=True, kw_only=True):
    """``KnownAt``, on a read of an organization."""

    known_at: TimeMs | None = None
    known_at_seq: Seq | None = None


@query("entity.get", need="reader", reply=EntityReply)
class GetEntity(KnownAt, frozen=True, kw_only=True):
    """An entity; a merged one answers with the entity it was merged into."""

    entity_id: Id


@query("entity.list", need="reader", reply=Page[EntityReply])
class ListEntities(KnownAtInOrg, frozen=True, kw_only=True):
    """Live entities of an organization, by normalised name, page by page."""

    entity_type: EntityType | None = None
    name_prefix: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    user_id: Id | None = None
    agent_id: Id | None = None
    limit: Limit = 50
    cursor: Cursor | None = None


@query("entity.resolve", need="reader", reply=EntityResolution)
class ResolveEntity(KnownAtInOrg, frozen=True, kw_only=True):
    """Which entity is this name? In layers, each named in the answer: the exact
    normalised name, then a known alias, then similar names (proposed, never merged)."""

    name: EntityName
    entity_type: EntityType | None = None
    user_id: Id | None = None
    agent_id: Id | None = None
    min_score: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.6
    limit: Annotated[int, msgspec.Meta(ge=1, le=50)] = 10


# State -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entity:
    entity_id: str
    org_id: str
    entity_type: str
    name: str
    key: str  # the reservation key of its current name (``name_key``)
    aliases: tuple[str, ...] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict)
    user_id: str | None = None
    agent_id: str | None = None
    state: Literal["live", "merged", "deleted"] = "live"
    merged_into: str | None = None
    # The entities that answer as this one (merged into it, directly or before).
    absorbed: tuple[str, ...] = ()
    # What each direct merge brought: source id -> its members, so an unmerge gives back
    # exactly those.
    merges: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def subject(org_id: str, entity_id: str) -> str:
    return subjects.event(org_id, "entity", entity_id)


def normalise(name: str) -> str:
    """What names compare by: NFKC, case folded, whitespace runs as one space."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def name_key(
    org_id: str, entity_type: str, user_id: str | None, agent_id: str | None, name: str
) -> str:
    parts = [org_id, entity_type, user_id, agent_id, normalise(name)]
    digest = hashlib.sha256(msgspec.json.encode(parts)).digest()[:20]
    return base64.b32encode(digest).decode().lower()


def slot_id(key: str, generation: int) -> str:
    return f"{key}-{generation}"


def key_of(entity: Entity, name: str | None = None) -> str:
    return name_key(
        entity.org_id,
        entity.entity_type,
        entity.user_id,
        entity.agent_id,
        entity.name if name is None else name,
    )


def _without(names: tuple[str, ...], name: str) -> tuple[str, ...]:
    norm = normalise(name)
    return tuple(n for n in names if normalise(n) != norm)


def evolve(state: Entity | None, event: AnyEvent) -> Entity | None:
    if isinstance(event, EntityCreated):
        entity = Entity(
            entity_id=event.entity_id,
            org_id=event.org_id,
            entity_type=event.entity_type,
            name=event.name,
            key="",
            aliases=tuple(event.aliases),
            attributes=event.attributes,
            user_id=event.user_id,
            agent_id=event.agent_id,
        )
        return replace(entity, key=key_of(entity))
    if state is None:
        return None
    match event:
        case EntityRenamed(name=name):
            aliases = _without(state.aliases, name)
            if normalise(state.name) != normalise(name):
                aliases = (*aliases, state.name)
            renamed = replace(state, name=name, aliases=aliases)
            return replace(renamed, key=key_of(renamed))
        case EntityAliasAdded(alias=alias):
            return replace(state, aliases=(*_without(state.aliases, alias), alias))
        case EntityAliasRemoved(alias=alias):
            return replace(state, aliases=_without(state.aliases, alias))
        case EntityAttributesSet(attributes=attributes):
            return replace(state, attributes=attributes)
        case EntityMerged(into=into):
            return replace(state, state="merged", merged_into=into)
        case EntityAbsorbed(source_id=source_id, members=members):
            merges = {**state.merges, source_id: members}
            return replace(state, absorbed=(*state.absorbed, *members), merges=merges)
        case EntityUnmerged():
            return replace(state, state="live", merged_into=None)
        case EntityReleased(source_id=source_id, members=members):
            merges = {k: v for k, v in state.merges.items() if k != source_id}
            absorbed = tuple(m for m in state.absorbed if m not in members)
            return replace(state, absorbed=absorbed, merges=merges)
        case EntityDeleted():
            return replace(state, state="deleted")
    return state


# Decisions ---------------------------------------------------------------------------------
def missing(entity_id: str) -> NotFoundError:
    return NotFoundError(f"entity {entity_id} does not exist", {"entity_id": entity_id})


def require_entity(loaded: Loaded[Entity], entity_id: str) -> Entity:
    """An entity that was not deleted (it may be merged)."""
    state = loaded.state
    if state is None or state.state == "deleted":
        raise missing(entity_id)
    return state


def require_live(loaded: Loaded[Entity], entity_id: str) -> Entity:
    entity = require_entity(loaded, entity_id)
    if entity.state == "merged":
        raise ConflictError(
            f"entity {entity_id} was merged into {entity.merged_into}: change that one, or "
            "unmerge it first",
            {"entity_id": entity_id, "merged_into": entity.merged_into},
        )
    return entity


def holds(entity: Entity | None, key: str) -> bool:
    """Does a name's slot hold the name? Its entity is live and still has that name."""
    return entity is not None and entity.state == "live" and entity.key == key


def check_attributes(attributes: Mapping[str, Any], path: str) -> None:
    check_bounds(attributes, "attributes", MAX_ATTRIBUTES_BYTES, path=path)


def check_names(name: str, aliases: list[str] | tuple[str, ...], path: str) -> None:
    for where, value in [("name", name), *((f"aliases[{n}]", a) for n, a in enumerate(aliases))]:
        if not normalise(value):
            raise invalid(
                f"`{path}.{where}` must hold more than white space",
                f"{path}.{where}",
                "invalid_value",
            )


def create(org_id: str, command: CreateEntity, free: Loaded[Entity]) -> list[Write]:
    """A new entity on the first empty slot of its name (``free``, at version 0)."""
    check_names(command.name, command.aliases, "$")
    check_attributes(command.attributes, "$.attributes")
    entity_id = subjects.parse(free.subject).aggregate_id
    aliases = tuple(
        dict.fromkeys(a for a in command.aliases if normalise(a) != normalise(command.name))
    )
    event = EntityCreated(
        entity_id=entity_id,
        org_id=org_id,
        entity_type=command.entity_type,
        name=command.name,
        aliases=aliases,
        attributes=command.attributes,
        user_id=command.user_id,
        agent_id=command.agent_id,
    )
    return [Write(free.subject, 0, [event])]


def owner(entity: Entity) -> dict[str, str | None]:
    """The scope an event about ``entity`` repeats, so that its personal fields are sealed
    under the key of the entity's user and agent (``agentmem.personal``)."""
    return {"user_id": entity.user_id, "agent_id": entity.agent_id}


def _one(loaded: Loaded[Entity], event: AnyEvent) -> list[Write]:
    return [Write(loaded.subject, loaded.version, [event])]


def rename(loaded: Loaded[Entity], command: RenameEntity) -> list[Write]:
    entity = require_live(loaded, command.entity_id)
    check_version(loaded, command.expected_version)
    check_names(command.name, (), "$")
    return _one(
        loaded, EntityRenamed(entity_id=entity.entity_id, name=command.name, **owner(entity))
    )


def add_alias(loaded: Loaded[Entity], command: AddEntityAlias) -> list[Write]:
    entity = require_live(loaded, command.entity_id)
    check_version(loaded, command.expected_version)
    check_names(command.alias, (), "$")
    if normalise(command.alias) == normalise(entity.name):
        raise invalid("the alias is the entity's own name", "$.alias", "invalid_value")
    if len(_without(entity.aliases, command.alias)) >= MAX_ALIASES:
        raise invalid(f"an entity has at most {MAX_ALIASES} aliases", "$.alias", "too_long")
    event = EntityAliasAdded(entity_id=entity.entity_id, alias=command.alias, **owner(entity))
    return _one(loaded, event)


def remove_alias(loaded: Loaded[Entity], command: RemoveEntityAlias) -> list[Write]:
    entity = require_live(loaded, command.entity_id)
    check_version(loaded, command.expected_version)
    if _without(entity.aliases, command.alias) == entity.aliases:
        raise NotFoundError(
            f"entity {entity.entity_id} has no alias {command.alias!r}",
            {"entity_id": entity.entity_id, "alias": command.alias},
        )
    event = EntityAliasRemoved(entity_id=entity.entity_id, alias=command.alias, **owner(entity))
    return _one(loaded, event)


def set_attributes(loaded: Loaded[Entity], command: SetEntityAttributes) -> list[Write]:
    entity = require_live(loaded, command.entity_id)
    check_version(loaded, command.expected_version)
    check_attributes(command.attributes, "$.attributes")
    attributes = merge_patch(dict(entity.attributes), command.attributes)
    check_attributes(attributes, "$.attributes")
    event = EntityAttributesSet(entity_id=entity.entity_id, attributes=attributes, **owner(entity))
    return _one(loaded, event)


def merge(source: Loaded[Entity], target: Loaded[Entity], command: MergeEntity) -> list[Write]:
    """Two commits in one atomic batch: the survivor's first, then the merged one's."""
    merged = require_live(source, command.entity_id)
    check_version(source, command.expected_version)
    into = require_live(target, command.into)
    if merged.entity_id == into.entity_id:
        raise invalid("an entity cannot be merged into itself", "$.into", "invalid_value")
    if merged.org_id != into.org_id:
        raise missing(command.into)
    if (merged.user_id, merged.agent_id) != (into.user_id, into.agent_id):
        raise invalid(
            "only entities of the same scope (user and agent) can be merged",
            "$.into",
            "invalid_value",
        )
    members = (merged.entity_id, *merged.absorbed)
    if len(into.absorbed) + len(members) > MAX_MEMBERS:
        raise ConflictError(
            f"an entity answers for at most {MAX_MEMBERS} merged entities",
            {"entity_id": into.entity_id, "max_members": MAX_MEMBERS},
        )
    return [
        Write(
            source.subject,
            source.version,
            [EntityMerged(entity_id=merged.entity_id, into=into.entity_id, members=members)],
        ),
        Write(
            target.subject,
            target.version,
            [EntityAbsorbed(entity_id=into.entity_id, source_id=merged.entity_id, members=members)],
        ),
    ]


def unmerge(source: Loaded[Entity], target: Loaded[Entity], command: UnmergeEntity) -> list[Write]:
    merged = require_entity(source, command.entity_id)
    check_version(source, command.expected_version)
    if merged.state != "merged" or merged.merged_into is None:
        raise ConflictError(
            f"entity {merged.entity_id} is not merged", {"entity_id": merged.entity_id}
        )
    into = require_entity(target, merged.merged_into)
    if into.state != "live":
        raise ConflictError(
            f"entity {into.entity_id}, which {merged.entity_id} was merged into, was merged "
            "itself: unmerge that one first",
            {"entity_id": merged.entity_id, "merged_into": into.entity_id},
        )
    members = into.merges.get(merged.entity_id, (merged.entity_id,))
    released = EntityReleased(entity_id=into.entity_id, source_id=merged.entity_id, members=members)
    restored = EntityUnmerged(entity_id=merged.entity_id, from_id=into.entity_id, members=members)
    # The survivor's commit first: the reply is the restored entity's event.
    return [
        Write(target.subject, target.version, [released]),
        Write(source.subject, source.version, [restored]),
    ]


def delete(loaded: Loaded[Entity], command: DeleteEntity) -> list[Write]:
    entity = require_live(loaded, command.entity_id)
    check_version(loaded, command.expected_version)
    event = EntityDeleted(entity_id=entity.entity_id, members=entity.absorbed)
    return _one(loaded, event)


def delete_in_scope(loaded: Loaded[Entity], entity_id: str) -> list[Write]:
    """One entity of a scope being deleted; [] when it is gone already."""
    entity = loaded.state
    if entity is None or entity.state == "deleted":
        return []
    event = EntityDeleted(entity_id=entity_id, members=entity.absorbed, scope_deletion=True)
    return _one(loaded, event)


def check_known(query: KnownAt | KnownAtInOrg) -> None:
    if query.known_at is not None and query.known_at_seq is not None:
        raise invalid(
            "known_at_seq and known_at are two ways to name one point: give one",
            "$.known_at",
            "invalid_value",
        )


def check_scope(user_id: str | None, agent_id: str | None) -> None:
    if user_id is None and agent_id is None:
        raise invalid(
            "a scope deletion needs a scope: at least one of user_id and agent_id",
            "$",
            "missing_field",
            fields=["user_id", "agent_id"],
        )


def view(entity: Entity, version: int) -> dict[str, Any]:
    """An entity as ``entity.create`` answers a duplicate: the fields of its creation."""
    return {
        "entity_id": entity.entity_id,
        "org_id": entity.org_id,
        "entity_type": entity.entity_type,
        "name": entity.name,
        "aliases": list(entity.aliases),
        "attributes": dict(entity.attributes),
        "user_id": entity.user_id,
        "agent_id": entity.agent_id,
        "event": "entity.created",
        "version": version,
    }


__all__ = [
    "AddEntityAlias",
    "CreateEntity",
    "DeleteEntity",
    "DeleteEntityScope",
    "Entity",
    "GetEntity",
    "ListEntities",
    "MergeEntity",
    "RemoveEntityAlias",
    "RenameEntity",
    "ResolveEntity",
    "SetEntityAttributes",
    "UnmergeEntity",
]
