"""The knowledge graph's tables, and the named reads of its queries.

- ``graph_entities``: one row per entity not deleted, merged ones too (``canonical_id``: the
  entity it answers as; itself while live).
- ``graph_names``: every name and alias of every entity, normalised, with the entity it
  resolves to (``canonical_id``); ``graph_name_grams``: the first three characters of each
  word of each name, where similar names are looked up.
- ``graph_relations``: two rows per relation, one per direction (``direction`` 0: from the
  subject to the object; 1: back), so that a walk follows one index whichever way it goes.
  ``from_id``/``to_id`` are the entities the relation named; ``from_node``/``to_node`` the
  ones they answer as (a merge moves them, an unmerge moves them back). Times that are
  open (a valid_to not set, a relation not invalidated or retracted) hold ``OPEN``, so a
  condition is one comparison on both stores.
- ``graph_associations``: one row per link between two memories; ``graph_memory_scopes``:
  whose each memory is (from its ``memory.added``), so that a forget of a scope, a user, an
  agent or a conversation finds the links of its memories (a link names ids only).

System time: ``recorded_seq``/``recorded_at`` (the assertion's commit), ``invalidated_*``
(the commit that set ``valid_to``; before it the relation's valid time was
``asserted_valid_to``), ``retracted_*``. A read ``known_at`` a point takes the valid time
known then.

Every walk runs in the store as a recursive query, with the organization and the scope in
its join condition (never filtered after), bounded in depth; cycles end there, since a
node is kept at its least depth.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from agentmem import subjects
from agentmem.domain.entities import normalise
from agentmem.eventlog import StoredCommit
from agentmem.events import (
    DataForgotten,
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
    ForgetTarget,
    MemoryAdded,
    MemoryAssociated,
    MemoryDeleted,
    MemoryDissociated,
    OrgDeleted,
    PredicateDeclared,
    RelationAsserted,
    RelationInvalidated,
    RelationRetracted,
)
from agentmem.projections.rows import forgotten_rows, json_text
from agentmem.store import Column, Copy, Delete, RowOp, Store, Table, Update, Upsert

OPEN = 2**62  # a time not reached: an open valid_to, a relation never invalidated
SCALE = 1_000_000  # confidence and strength are kept in millionths

GRAPH_ENTITIES = Table(
    name="graph_entities",
    columns=(
        Column("entity_id", "text"),
        Column("org_id", "text"),
        Column("entity_type", "text"),
        Column("name", "text"),
        Column("norm", "text"),
        Column("attributes", "json"),
        Column("user_id", "text", nullable=True),
        Column("agent_id", "text", nullable=True),
        Column("canonical_id", "text"),
        Column("created_seq", "integer"),
        Column("created_at", "integer"),
        Column("updated_at", "integer"),
        Column("version", "integer"),
    ),
    primary_key=("entity_id",),
    indexes=(
        ("graph_entities_name", ("org_id", "norm", "entity_id"), False),
        ("graph_entities_type", ("org_id", "entity_type", "norm", "entity_id"), False),
        ("graph_entities_user", ("org_id", "user_id"), False),
        ("graph_entities_agent", ("org_id", "agent_id"), False),
        ("graph_entities_canonical", ("org_id", "canonical_id"), False),
    ),
    scrub=True,
)

GRAPH_NAMES = Table(
    name="graph_names",
    columns=(
        Column("entity_id", "text"),
        Column("norm", "text"),
        Column("name", "text"),
        Column("kind", "text"),  # name, alias
        Column("org_id", "text"),
        Column("canonical_id", "text"),
    ),
    primary_key=("entity_id", "norm"),
    indexes=(
        ("graph_names_norm", ("org_id", "norm"), False),
        ("graph_names_canonical", ("org_id", "canonical_id"), False),
    ),
    scrub=True,
)

GRAPH_NAME_GRAMS = Table(
    name="graph_name_grams",
    columns=(
        Column("entity_id", "text"),
        Column("norm", "text"),
        Column("gram", "text"),
        Column("org_id", "text"),
    ),
    primary_key=("entity_id", "norm", "gram"),
    indexes=(("graph_name_grams_gram", ("org_id", "gram"), False),),
    scrub=True,
)

GRAPH_RELATIONS = Table(
    name="graph_relations",
    columns=(
        Column("relation_id", "text"),
        Column("direction", "integer"),
        Column("org_id", "text"),
        Column("user_id", "text", nullable=True),
        Column("agent_id", "text", nullable=True),
        Column("from_node", "text"),
        Column("to_node", "text"),
        Column("from_id", "text"),
        Column("to_id", "text"),
        Column("predicate", "text"),
        Column("fact", "text"),
        Column("confidence", "integer"),  # millionths
        Column("valid_from", "integer"),
        Column("valid_to", "integer"),  # OPEN while open
        Column("asserted_valid_to", "integer"),
        Column("superseded_by", "text", nullable=True),
        Column("source", "json"),
        Column("recorded_seq", "integer"),
        Column("recorded_at", "integer"),
        Column("invalidated_seq", "integer"),
        Column("invalidated_at", "integer"),
        Column("retracted_seq", "integer"),
        Column("retracted_at", "integer"),
        Column("retract_reason", "text"),
        Column("version", "integer"),
        # What it was derived from (``relation.asserted``): the one memory whose key seals
        # it, and the conversation an extraction read; a forget of either drops it.
        Column("memory_id", "text", nullable=True),
        Column("session_id", "text", nullable=True),
    ),
    primary_key=("relation_id", "direction"),
    indexes=(
        # The walk's step, answered from the index alone (no row read): the equality and
        # range terms of a walk now (``_known_sql``), then what it returns and may filter by.
        (
            "graph_relations_cover",
            (
                *("org_id", "from_node", "retracted_seq", "valid_from", "valid_to"),
                *("to_node", "relation_id", "predicate", "confidence", "user_id", "agent_id"),
            ),
            False,
        ),
        ("graph_relations_to_node", ("org_id", "to_node"), False),
        ("graph_relations_from_id", ("org_id", "from_id"), False),
        ("graph_relations_to_id", ("org_id", "to_id"), False),
    ),
    scrub=True,
)

GRAPH_ASSOCIATIONS = Table(
    name="graph_associations",
    columns=(
        Column("from_memory_id", "text"),
        Column("to_memory_id", "text"),
        Column("association_type", "text"),
        Column("org_id", "text"),
        Column("strength", "integer"),  # millionths
        Column("created_at", "integer"),
        Column("version", "integer"),
    ),
    primary_key=("from_memory_id", "to_memory_id", "association_type"),
    indexes=(
        ("graph_associations_to", ("to_memory_id", "from_memory_id"), False),
        ("graph_associations_org", ("org_id",), False),
    ),
)

# What the service knew of an entity when (``known_at``, ``known_at_seq``): one row per span
# of time during which a value was the entity's, from ``from_seq`` (``from_at``) until
# ``until_seq`` (``until_at``), ``OPEN`` while it still is. ``field``: ``name`` and ``alias``
# (``norm`` the normalised name, ``value`` the name), ``attributes`` (``value`` the JSON
# object) and ``merged_into`` (``value`` the entity it was merged into: a merged entity's
# members answer through the chain). Events name only what changed; a rename keeps the old
# name as an alias span, copied from ``graph_names`` before it changes. A deletion, a forget,
# an organization's deletion take the spans with the entity.
GRAPH_ENTITY_HISTORY = Table(
    name="graph_entity_history",
    columns=(
        Column("entity_id", "text"),
        Column("field", "text"),
        Column("norm", "text"),
        Column("from_seq", "integer"),
        Column("value", "text"),
        Column("org_id", "text"),
        Column("from_at", "integer"),
        Column("until_seq", "integer"),
        Column("until_at", "integer"),
    ),
    primary_key=("entity_id", "field", "norm", "from_seq"),
    indexes=(("graph_entity_history_norm", ("org_id", "norm", "field"), False),),
    scrub=True,
)

GRAPH_MEMORY_SCOPES = Table(
    name="graph_memory_scopes",
    columns=(
        Column("memory_id", "text"),
        Column("org_id", "text"),
        Column("user_id", "text", nullable=True),
        Column("agent_id", "text", nullable=True),
        Column("session_id", "text", nullable=True),
    ),
    primary_key=("memory_id",),
    indexes=(("graph_memory_scopes_org", ("org_id", "user_id", "agent_id", "session_id"), False),),
)

GRAPH_PREDICATES = Table(
    name="graph_predicates",
    columns=(
        Column("org_id", "text"),
        Column("predicate", "text"),
        Column("single_valued", "integer"),  # 1 or 0
        Column("declared_at", "integer"),
        Column("version", "integer"),
    ),
    primary_key=("org_id", "predicate"),
)

TABLES = [
    GRAPH_ENTITIES,
    GRAPH_NAMES,
    GRAPH_NAME_GRAMS,
    GRAPH_RELATIONS,
    GRAPH_ASSOCIATIONS,
    GRAPH_MEMORY_SCOPES,
    GRAPH_ENTITY_HISTORY,
    GRAPH_PREDICATES,
]

# The forgets that reach the graph: entities and relations are scoped by user and agent (a
# session holds no entity). A relation derived from one memory (``memory_id``) or extracted
# from a conversation's message or memory (``session_id``) is sealed with a key that the
# memory's, the conversation's or the session's memory scope's forget deletes, so those
# forgets drop it too (the ids they name are columns of ``graph_relations`` only). The
# associations of forgotten memories go through their memories' scopes
# (``_forgotten_links``), whatever the target.
FORGETS: frozenset[ForgetTarget] = frozenset(
    {"user", "agent", "conversation", "memory", "memory_scope"}
)
LINK_FORGETS: frozenset[ForgetTarget] = frozenset(
    {"user", "agent", "conversation", "memory", "memory_scope"}
)
# Names and grams have no scope of their own: they go through their entities' rows, first.
FORGOTTEN_TABLES = [
    GRAPH_NAMES,
    GRAPH_NAME_GRAMS,
    GRAPH_ENTITY_HISTORY,
    GRAPH_RELATIONS,
    GRAPH_ENTITIES,
]
FORGOTTEN_THROUGH = {
    "graph_names": GRAPH_ENTITIES,
    "graph_name_grams": GRAPH_ENTITIES,
    "graph_entity_history": GRAPH_ENTITIES,
}


def grams(norm: str) -> list[str]:
    """What a similar name must share with this one: the start of one of its words."""
    return list(dict.fromkeys(word[:3] for word in norm.split()))


def millionths(value: float) -> int:
    return round(value * SCALE)


def _name_rows(org_id: str, entity_id: str, name: str, kind: str) -> list[RowOp]:
    """A name or alias of an entity that is live (so it answers as itself)."""
    norm = normalise(name)
    row = {
        "entity_id": entity_id,
        "norm": norm,
        "name": name,
        "kind": kind,
        "org_id": org_id,
        "canonical_id": entity_id,
    }
    ops: list[RowOp] = [Upsert("graph_names", row)]
    for gram in grams(norm):
        gram_row = {"entity_id": entity_id, "norm": norm, "gram": gram, "org_id": org_id}
        ops.append(Upsert("graph_name_grams", gram_row))
    return ops


def _forget_entity(org_id: str, entity_id: str) -> list[RowOp]:
    """An entity and every relation that named it leave every table."""
    return [
        Delete("graph_entities", {"entity_id": entity_id}),
        Delete("graph_names", {"entity_id": entity_id}),
        Delete("graph_name_grams", {"entity_id": entity_id}),
        Delete("graph_entity_history", {"entity_id": entity_id}),
        Delete("graph_relations", {"org_id": org_id, "from_id": entity_id}),
        Delete("graph_relations", {"org_id": org_id, "to_id": entity_id}),
    ]


def _forgotten_links(event: DataForgotten) -> list[RowOp]:
    """The links from or to a forgotten memory, through its scope row, then the scope rows:
    ``memory.delete`` removes a memory's links, a forget must too."""
    scopes = forgotten_rows(event, LINK_FORGETS, [GRAPH_MEMORY_SCOPES])
    links: list[RowOp] = [
        Delete(
            "graph_associations",
            scope.key,
            through="graph_memory_scopes",
            erase=True,
            owner=end,
            via="memory_id",
        )
        for scope in scopes
        if isinstance(scope, Delete)
        for end in ("from_memory_id", "to_memory_id")
    ]
    return links + scopes


def _unseen_ends(link: dict[str, Any]) -> list[RowOp]:
    """A link goes again if either memory has no scope row: live, both were there (the
    command checked them); on a replay, a forgotten memory's ``memory.added`` reads as
    gone, and its links must not outlive it there either."""
    key = {name: link[name] for name in GRAPH_ASSOCIATIONS.primary_key}
    return [
        Delete(
            "graph_associations",
            key,
            through="graph_memory_scopes",
            owner=end,
            via="memory_id",
            absent=True,
        )
        for end in ("from_memory_id", "to_memory_id")
    ]


def _span(
    org_id: str, entity_id: str, field: str, norm: str, value: str, seq: int, at: int
) -> list[RowOp]:
    """A value the entity holds from this commit on; the one it held in its place ends."""
    return [
        *_ended(entity_id, field, norm, seq, at),
        Upsert(
            "graph_entity_history",
            {
                "entity_id": entity_id,
                "field": field,
                "norm": norm,
                "from_seq": seq,
                "value": value,
                "org_id": org_id,
                "from_at": at,
                "until_seq": OPEN,
                "until_at": OPEN,
            },
        ),
    ]


def _ended(entity_id: str, field: str, norm: str | None, seq: int, at: int) -> list[RowOp]:
    """The open span of ``field`` (of ``norm``, if given) ends at this commit."""
    key: dict[str, Any] = {"entity_id": entity_id, "field": field, "until_seq": OPEN}
    if norm is not None:
        key["norm"] = norm
    return [Update("graph_entity_history", key, {"until_seq": seq, "until_at": at})]


def _name_kept_as_alias(entity_id: str, seq: int, at: int) -> list[RowOp]:
    """A rename: the old name's span ends, and it goes on as an alias (copied from its
    ``graph_names`` row, since the event names only the new name)."""
    return [
        *_ended(entity_id, "name", None, seq, at),
        Copy(
            "graph_entity_history",
            "graph_names",
            {"entity_id": entity_id, "kind": "name"},
            GRAPH_ENTITY_HISTORY.column_names,
            {
                "field": "alias",
                "from_seq": seq,
                "from_at": at,
                "until_seq": OPEN,
                "until_at": OPEN,
            },
            (("value", "name"),),
        ),
    ]


def _moved(org_id: str, column: str, old: str, node: str) -> list[RowOp]:
    """Names, entity rows and relations that answered as ``old`` (by ``column``) answer as
    ``node`` now."""
    return [
        Update("graph_entities", {"org_id": org_id, column: old}, {"canonical_id": node}),
        Update("graph_names", {"org_id": org_id, column: old}, {"canonical_id": node}),
    ]


class GraphProjection:
    name = "graph"
    # bumped when its rows change: docs/architecture.md, "Projection versions" (2: the
    # relations' memory_id and session_id, which forgets of a memory or a conversation use)
    version = 2
    # Memory deletions remove their associations; org deletions every row of the org;
    # forgets a user's or an agent's entities and relations, a memory's or a
    # conversation's relations derived from it.
    filter_subjects = [
        subjects.events_of("entity"),
        subjects.events_of("facts"),
        subjects.events_of("association"),
        subjects.events_of("memory"),
        subjects.events_of("org_deletion"),
        subjects.events_of("forget"),
        subjects.events_of("predicates"),
    ]
    tables = TABLES

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops: list[RowOp] = []
        at, seq = commit.time_ms, commit.seq
        org_id = subjects.parse(commit.subject).org_id
        touched = {"updated_at": at, "version": seq}
        for event in commit.events:
            match event:
                case EntityCreated():
                    row = {
                        "entity_id": event.entity_id,
                        "org_id": event.org_id,
                        "entity_type": event.entity_type,
                        "name": event.name,
                        "norm": normalise(event.name),
                        "attributes": json_text(event.attributes),
                        "user_id": event.user_id,
                        "agent_id": event.agent_id,
                        "canonical_id": event.entity_id,
                        "created_seq": seq,
                        "created_at": at,
                        **touched,
                    }
                    ops.append(Upsert("graph_entities", row))
                    for alias in event.aliases:
                        ops += _name_rows(org_id, event.entity_id, alias, "alias")
                    ops += _name_rows(org_id, event.entity_id, event.name, "name")
                    made = (org_id, event.entity_id)
                    for alias in event.aliases:
                        ops += _span(*made, "alias", normalise(alias), alias, seq, at)
                    ops += _span(*made, "name", normalise(event.name), event.name, seq, at)
                    text = json_text(event.attributes)
                    ops += _span(*made, "attributes", "", text, seq, at)
                case EntityRenamed(entity_id=entity_id, name=name):
                    key = {"entity_id": entity_id}
                    ops += _name_kept_as_alias(entity_id, seq, at)
                    ops += _ended(entity_id, "alias", normalise(name), seq, at)
                    ops += _span(org_id, entity_id, "name", normalise(name), name, seq, at)
                    ops.append(Update("graph_names", {**key, "kind": "name"}, {"kind": "alias"}))
                    values = {"name": name, "norm": normalise(name), **touched}
                    ops.append(Update("graph_entities", key, values))
                    ops += _name_rows(org_id, entity_id, name, "name")
                case EntityAliasAdded(entity_id=entity_id, alias=alias):
                    ops += _name_rows(org_id, entity_id, alias, "alias")
                    ops += _span(org_id, entity_id, "alias", normalise(alias), alias, seq, at)
                    ops.append(Update("graph_entities", {"entity_id": entity_id}, touched))
                case EntityAliasRemoved(entity_id=entity_id, alias=alias):
                    key = {"entity_id": entity_id, "norm": normalise(alias)}
                    ops.append(Delete("graph_names", key))
                    ops.append(Delete("graph_name_grams", key))
                    ops += _ended(entity_id, "alias", normalise(alias), seq, at)
                    ops.append(Update("graph_entities", {"entity_id": entity_id}, touched))
                case EntityAttributesSet(entity_id=entity_id, attributes=attributes):
                    values = {"attributes": json_text(attributes), **touched}
                    ops.append(Update("graph_entities", {"entity_id": entity_id}, values))
                    text = str(values["attributes"])
                    ops += _span(org_id, entity_id, "attributes", "", text, seq, at)
                case EntityMerged(entity_id=entity_id, into=into):
                    ops += _span(org_id, entity_id, "merged_into", "", into, seq, at)
                    ops += _moved(org_id, "canonical_id", entity_id, into)
                    for end in ("from_node", "to_node"):
                        ops.append(
                            Update(
                                "graph_relations",
                                {"org_id": org_id, end: entity_id},
                                {end: into},
                            )
                        )
                    ops.append(Update("graph_entities", {"entity_id": entity_id}, touched))
                case EntityUnmerged(entity_id=entity_id, members=members):
                    ops += _ended(entity_id, "merged_into", None, seq, at)
                    for member in members:
                        ops += _moved(org_id, "entity_id", member, entity_id)
                        for end, named in (("from_node", "from_id"), ("to_node", "to_id")):
                            ops.append(
                                Update(
                                    "graph_relations",
                                    {"org_id": org_id, named: member},
                                    {end: entity_id},
                                )
                            )
                    ops.append(Update("graph_entities", {"entity_id": entity_id}, touched))
                case EntityAbsorbed(entity_id=entity_id) | EntityReleased(entity_id=entity_id):
                    ops.append(Update("graph_entities", {"entity_id": entity_id}, touched))
                case EntityDeleted(entity_id=entity_id, members=members):
                    for gone in (entity_id, *members):
                        ops += _forget_entity(org_id, gone)
                case RelationAsserted():
                    ops += self._asserted(event, seq, at)
                case RelationInvalidated(relation_id=rid):
                    values = {
                        "valid_to": event.valid_to,
                        "superseded_by": event.superseded_by,
                        "invalidated_seq": seq,
                        "invalidated_at": at,
                        "version": seq,
                    }
                    ops.append(Update("graph_relations", {"relation_id": rid}, values))
                case RelationRetracted(relation_id=rid, reason=reason):
                    values = {
                        "retracted_seq": seq,
                        "retracted_at": at,
                        "retract_reason": reason,
                        "version": seq,
                    }
                    ops.append(Update("graph_relations", {"relation_id": rid}, values))
                case MemoryAssociated():
                    row = {
                        "from_memory_id": event.from_memory_id,
                        "to_memory_id": event.to_memory_id,
                        "association_type": event.association_type,
                        "org_id": event.org_id,
                        "strength": millionths(event.strength),
                        "created_at": at,
                        "version": seq,
                    }
                    ops.append(Upsert("graph_associations", row))
                    ops += _unseen_ends(row)
                case MemoryDissociated():
                    key = {
                        "from_memory_id": event.from_memory_id,
                        "to_memory_id": event.to_memory_id,
                        "association_type": event.association_type,
                    }
                    ops.append(Delete("graph_associations", key))
                case MemoryAdded():
                    row = {
                        "memory_id": event.memory_id,
                        "org_id": event.org_id,
                        "user_id": event.user_id,
                        "agent_id": event.agent_id,
                        "session_id": event.session_id,
                    }
                    ops.append(Upsert("graph_memory_scopes", row))
                case MemoryDeleted(memory_id=memory_id):
                    ops.append(Delete("graph_associations", {"from_memory_id": memory_id}))
                    ops.append(Delete("graph_associations", {"to_memory_id": memory_id}))
                    ops.append(Delete("graph_memory_scopes", {"memory_id": memory_id}))
                case OrgDeleted(org_id=deleted):
                    for table in TABLES:
                        ops.append(Delete(table.name, {"org_id": deleted}))
                case DataForgotten():
                    ops += forgotten_rows(event, FORGETS, FORGOTTEN_TABLES, FORGOTTEN_THROUGH)
                    ops += _forgotten_links(event)
                case PredicateDeclared():
                    row = {
                        "org_id": event.org_id,
                        "predicate": event.predicate,
                        "single_valued": int(event.single_valued),
                        "declared_at": at,
                        "version": seq,
                    }
                    ops.append(Upsert("graph_predicates", row))
        return ops

    @staticmethod
    def _asserted(event: RelationAsserted, seq: int, at: int) -> list[RowOp]:
        valid_to = OPEN if event.valid_to is None else event.valid_to
        common = {
            "relation_id": event.relation_id,
            "org_id": event.org_id,
            "user_id": event.user_id,
            "agent_id": event.agent_id,
            "predicate": event.predicate,
            "fact": event.fact,
            "confidence": millionths(event.confidence),
            "valid_from": event.valid_from,
            "valid_to": valid_to,
            "asserted_valid_to": valid_to,
            "superseded_by": None,
            "source": json_text(event.source),
            "recorded_seq": seq,
            "recorded_at": at,
            "invalidated_seq": OPEN,
            "invalidated_at": OPEN,
            "retracted_seq": OPEN,
            "retracted_at": OPEN,
            "retract_reason": "",
            "version": seq,
            "memory_id": event.memory_id,
            "session_id": event.session_id,
        }
        forward = (event.subject_id, event.object_id)
        return [
            Upsert(
                "graph_relations",
                {
                    **common,
                    "direction": direction,
                    "from_node": ends[0],
                    "to_node": ends[1],
                    "from_id": ends[0],
                    "to_id": ends[1],
                },
            )
            for direction, ends in enumerate((forward, forward[::-1]))
        ]


PROJECTION = GraphProjection()


# Reads -------------------------------------------------------------------------------------
_json = msgspec.json.Decoder()
_E_COLUMNS = ", ".join(f"e.{c}" for c in GRAPH_ENTITIES.column_names)
_R_COLUMNS = ", ".join(f"r.{c}" for c in GRAPH_RELATIONS.column_names)
# The highest character: a name prefix's range ends below it.
_TOP = "\U0010ffff"


@dataclass(frozen=True)
class At:
    """When a read looks: ``as_of`` in valid time, and what the service knew at log
    sequence ``known_seq`` or time ``known_at`` (neither: everything it knows now)."""

    as_of: int
    known_seq: int | None = None
    known_at: int | None = None

    @property
    def point(self) -> Point | None:
        """The point of the log it looks from; None: now."""
        return point_of(self.known_seq, self.known_at)


@dataclass(frozen=True)
class EdgeFilter:
    """Which relations a walk may follow: of one organization (and scope), at one time."""

    org_id: str
    at: At
    user_id: str | None = None
    agent_id: str | None = None
    predicates: tuple[str, ...] = ()
    entity_types: tuple[str, ...] = ()
    min_confidence: int = 0  # millionths


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


def _known_sql(at: At, args: list[Any]) -> str:
    """The relation ``r`` as the service knew it, valid in the world at ``at.as_of``."""
    if at.point is None:
        args += [OPEN, at.as_of, at.as_of]
        return "r.retracted_seq = ? AND r.valid_from <= ? AND r.valid_to > ?"
    suffix, point = at.point
    args += [point, point, at.as_of, point, at.as_of]
    return (
        f"r.recorded_{suffix} <= ? AND r.retracted_{suffix} > ? AND r.valid_from <= ? AND "
        f"(CASE WHEN r.invalidated_{suffix} <= ? THEN r.valid_to ELSE r.asserted_valid_to END) > ?"
    )


def _edge_sql(f: EdgeFilter, args: list[Any]) -> str:
    where = [_known_sql(f.at, args)]
    for column, value in (("user_id", f.user_id), ("agent_id", f.agent_id)):
        if value is not None:
            where.append(f"r.{column} = ?")
            args.append(value)
    if f.predicates:
        where.append(f"r.predicate IN ({_marks(f.predicates)})")
        args += f.predicates
    if f.min_confidence > 0:
        where.append("r.confidence >= ?")
        args.append(f.min_confidence)
    return " AND ".join(where)


def _step(f: EdgeFilter, args: list[Any]) -> str:
    """The recursive step of a walk from ``w.node``: the tables after ``FROM walk w`` and
    the conditions (its ``WHERE``) on the relation ``r`` it follows, into entities of the
    types asked. ``CROSS JOIN`` keeps the walk's row the outer loop on SQLite, whose planner
    would otherwise scan the organization's relations for every node (Postgres plans it
    as the same join)."""
    tables = " CROSS JOIN graph_relations r"
    where = ["r.org_id = ?", "r.from_node = w.node"]
    args.append(f.org_id)
    if f.entity_types:
        tables += " CROSS JOIN graph_entities t"
        where.append(f"t.entity_id = r.to_node AND t.entity_type IN ({_marks(f.entity_types)})")
        args += f.entity_types
    where.append(_edge_sql(f, args))
    return f"{tables} WHERE {' AND '.join(where)}"


def _as_known(row: dict[str, Any], at: At | None) -> tuple[int, str | None]:
    """A relation's ``valid_to`` (``OPEN`` when none) and ``superseded_by`` as the service
    knew them at ``at``'s point: an invalidation (and the supersession it records) made
    after that point had not happened yet."""
    if at is None or at.point is None:
        return row["valid_to"], row["superseded_by"]
    suffix, point = at.point
    if row[f"invalidated_{suffix}"] <= point:
        return row["valid_to"], row["superseded_by"]
    return row["asserted_valid_to"], None


def relation_view(row: dict[str, Any], at: At | None = None) -> dict[str, Any]:
    """A relation row (either direction) as the queries answer it: as the service knows it
    now, or as it knew it at ``at``'s point."""
    forward = row["direction"] == 0
    valid_to, superseded_by = _as_known(row, at)
    return {
        "relation_id": row["relation_id"],
        "org_id": row["org_id"],
        "subject_id": row["from_node"] if forward else row["to_node"],
        "predicate": row["predicate"],
        "object_id": row["to_node"] if forward else row["from_node"],
        "fact": row["fact"],
        "confidence": row["confidence"] / SCALE,
        "valid_from": row["valid_from"],
        "valid_to": None if valid_to == OPEN else valid_to,
        "superseded_by": superseded_by,
        "source": _json.decode(row["source"]),
        "user_id": row["user_id"],
        "agent_id": row["agent_id"],
        "recorded_at": row["recorded_at"],
        "recorded_seq": row["recorded_seq"],
    }


def edge_view(row: dict[str, Any], at: At | None = None) -> dict[str, Any]:
    view = relation_view(row, at)
    keep = ("relation_id", "subject_id", "predicate", "object_id", "fact", "confidence")
    return {
        **{k: view[k] for k in keep},
        "valid_from": view["valid_from"],
        "valid_to": view["valid_to"],
    }


def entity_view(row: dict[str, Any], aliases: list[str], members: list[str]) -> dict[str, Any]:
    return {
        "entity_id": row["entity_id"],
        "org_id": row["org_id"],
        "entity_type": row["entity_type"],
        "name": row["name"],
        "aliases": aliases,
        "attributes": _json.decode(row["attributes"]),
        "user_id": row["user_id"],
        "agent_id": row["agent_id"],
        "members": members,
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "version": row["version"],
    }


async def get_entity(
    store: Store, entity_id: str, known_seq: int | None = None, known_at: int | None = None
) -> dict[str, Any] | None:
    """An entity as it answers now: a merged one as the entity it was merged into. With
    ``known_seq`` or ``known_at``: as the service knew it then (None unless it was created
    by then), as the entity it answered as then, with its name, aliases, attributes and
    members then."""
    point = point_of(known_seq, known_at)
    if point is None:
        row = await store.fetch_one(
            f"SELECT {_E_COLUMNS} FROM graph_entities e WHERE e.entity_id = "
            "(SELECT m.canonical_id FROM graph_entities m WHERE m.entity_id = ?)",
            entity_id,
        )
    else:
        answering = await _answering_then(store, entity_id, point)
        row = await store.fetch_one(
            f"SELECT {_E_COLUMNS} FROM graph_entities e WHERE e.entity_id = ?", answering
        )
    if row is None:
        return None
    if (known_seq is not None and row["created_seq"] > known_seq) or (
        known_at is not None and row["created_at"] > known_at
    ):
        return None
    if point is not None:
        then = (await known_then(store, [row["entity_id"]], point))[row["entity_id"]]
        members = await members_then(store, row["entity_id"], point)
        return entity_view({**row, **then.row}, then.aliases, members)
    names = await store.fetch_all(
        "SELECT name FROM graph_names WHERE entity_id = ? AND kind = 'alias' ORDER BY norm",
        row["entity_id"],
    )
    found = await store.fetch_all(
        "SELECT entity_id FROM graph_entities WHERE org_id = ? AND canonical_id = ? "
        "AND entity_id <> canonical_id ORDER BY entity_id",
        row["org_id"],
        row["entity_id"],
    )
    return entity_view(row, [n["name"] for n in names], [m["entity_id"] for m in found])


# System time on an entity: a point, in log sequences (``seq``) or in ms (``at``).
Point = tuple[str, int]
_MAX_CHAIN = 32  # merges of merges followed at most; a chain has no cycle (merge checks)


def point_of(known_seq: int | None, known_at: int | None) -> Point | None:
    if known_seq is not None:
        # A sequence past any the log can reach is now: not past OPEN, which stands for
        # "not yet" in the rows (at 2**62 and over, every open relation looked ended).
        return ("seq", min(known_seq, OPEN - 1))
    if known_at is not None:
        return ("at", known_at)
    return None


def _window(alias: str, point: Point, args: list[Any]) -> str:
    """The span ``alias`` held at the point."""
    suffix, value = point
    args += [value, value]
    return f"{alias}.from_{suffix} <= ? AND {alias}.until_{suffix} > ?"


@dataclass(frozen=True)
class Then:
    """An entity's values at a point: ``row`` the columns that differ from now."""

    row: dict[str, Any]
    aliases: list[str]


async def known_then(store: Store, entity_ids: Sequence[str], point: Point) -> dict[str, Then]:
    """The name, aliases and attributes of each entity at ``point`` (``graph_entity_history``);
    what has no span there answers as now."""
    if not entity_ids:
        return {}
    args: list[Any] = [*entity_ids]
    window = _window("h", point, args)
    rows = await store.fetch_all(
        "SELECT h.entity_id, h.field, h.norm, h.value FROM graph_entity_history h "
        f"WHERE h.entity_id IN ({_marks(entity_ids)}) AND h.field IN ('name', 'alias', "
        f"'attributes') AND {window} ORDER BY h.entity_id, h.field, h.norm",
        *args,
    )
    values: dict[str, dict[str, Any]] = {e: {} for e in entity_ids}
    aliases: dict[str, list[str]] = {e: [] for e in entity_ids}
    for row in rows:
        match row["field"]:
            case "name":
                values[row["entity_id"]].update(name=row["value"], norm=row["norm"])
            case "alias":
                aliases[row["entity_id"]].append(row["value"])
            case _:
                values[row["entity_id"]]["attributes"] = row["value"]
    return {e: Then(values[e], aliases[e]) for e in entity_ids}


async def _answering_then(store: Store, entity_id: str, point: Point) -> str:
    """The entity ``entity_id`` answered as at ``point``: along the merges open then."""
    node = entity_id
    for _ in range(_MAX_CHAIN):
        args: list[Any] = [node]
        window = _window("h", point, args)
        row = await store.fetch_one(
            "SELECT h.value FROM graph_entity_history h WHERE h.entity_id = ? "
            f"AND h.field = 'merged_into' AND {window}",
            *args,
        )
        if row is None:
            break
        node = row["value"]
    return node


async def members_then(store: Store, entity_id: str, point: Point) -> list[str]:
    """The entities that answered as ``entity_id`` at ``point``, merged into it directly
    or into one of them."""
    found: list[str] = []
    frontier = [entity_id]
    for _ in range(_MAX_CHAIN):
        if not frontier:
            break
        args: list[Any] = [*frontier]
        window = _window("h", point, args)
        rows = await store.fetch_all(
            "SELECT h.entity_id FROM graph_entity_history h WHERE h.field = 'merged_into' "
            f"AND h.value IN ({_marks(frontier)}) AND {window}",
            *args,
        )
        frontier = [r["entity_id"] for r in rows]
        found += frontier
    return sorted(found)


async def answering_as(store: Store, entity_id: str) -> dict[str, Any] | None:
    """The entity ``entity_id`` answers as (itself, or what it was merged into): its id and
    organization only, in one indexed read, for the walks (``get_entity`` reads its aliases
    and members too)."""
    return await store.fetch_one(
        "SELECT e.entity_id, e.org_id FROM graph_entities m "
        "JOIN graph_entities e ON e.entity_id = m.canonical_id WHERE m.entity_id = ?",
        entity_id,
    )


def _scope_sql(
    alias: str, user_id: str | None, agent_id: str | None, exact: bool, args: list[Any]
) -> list[str]:
    """Scope conditions on the entity ``alias``: equal where given; where not given, any
    (``exact``: none, the organization's own)."""
    where = []
    for column, value in (("user_id", user_id), ("agent_id", agent_id)):
        if value is not None:
            where.append(f"{alias}.{column} = ?")
            args.append(value)
        elif exact:
            where.append(f"{alias}.{column} IS NULL")
    return where


async def list_entities(
    store: Store,
    org_id: str,
    *,
    entity_type: str | None,
    name_prefix: str | None,
    user_id: str | None,
    agent_id: str | None,
    known_seq: int | None,
    after: tuple[str, str] | None,
    limit: int,
    known_at: int | None = None,
) -> list[dict[str, Any]]:
    """Live entities by normalised name (then id), after ``after`` (norm, id); with
    ``known_seq`` or ``known_at``, those created by then."""
    point = point_of(known_seq, known_at)
    args: list[Any] = []
    # Now: the entity's own name and whether it answers as itself. At a point: its name
    # span then, and no merge open then.
    columns, tables, norm = _E_COLUMNS, "graph_entities e", "e.norm"
    where = ["e.org_id = ?"]
    if point is None:
        where.append("e.canonical_id = e.entity_id")
    else:
        kept = [c for c in GRAPH_ENTITIES.column_names if c not in ("name", "norm")]
        columns = ", ".join([*(f"e.{c}" for c in kept), "h.value AS name", "h.norm AS norm"])
        tables += " JOIN graph_entity_history h ON h.entity_id = e.entity_id AND h.field = 'name'"
        tables += f" AND {_window('h', point, args)}"
        norm = "h.norm"
        merged: list[Any] = []
        where.append(
            "NOT EXISTS (SELECT 1 FROM graph_entity_history m WHERE m.entity_id = e.entity_id "
            f"AND m.field = 'merged_into' AND {_window('m', point, merged)})"
        )
    args.append(org_id)
    if point is not None:
        args += merged
    if entity_type is not None:
        where.append("e.entity_type = ?")
        args.append(entity_type)
    if name_prefix is not None:
        prefix = normalise(name_prefix)
        where.append(f"{norm} >= ? AND {norm} < ?")
        args += [prefix, prefix + _TOP]
    where += _scope_sql("e", user_id, agent_id, False, args)
    where += _created_sql("e", known_seq, known_at, args)
    if after is not None:
        where.append(f"({norm} > ? OR ({norm} = ? AND e.entity_id > ?))")
        args += [after[0], after[0], after[1]]
    sql = (
        f"SELECT {columns} FROM {tables} WHERE {' AND '.join(where)} "
        f"ORDER BY {norm}, e.entity_id LIMIT ?"
    )
    rows = await store.fetch_all(sql, *args, limit)
    if point is None:
        return rows
    then = await known_then(store, [r["entity_id"] for r in rows], point)
    return [{**r, **then[r["entity_id"]].row} for r in rows]


def _created_sql(
    alias: str, known_seq: int | None, known_at: int | None, args: list[Any]
) -> list[str]:
    """System time on entities: those created at or before the log sequence or time."""
    where = []
    for column, point in (("created_seq", known_seq), ("created_at", known_at)):
        if point is not None:
            where.append(f"{alias}.{column} <= ?")
            args.append(point)
    return where


async def aliases_of(store: Store, entity_ids: Sequence[str]) -> dict[str, list[str]]:
    if not entity_ids:
        return {}
    rows = await store.fetch_all(
        f"SELECT entity_id, name FROM graph_names WHERE entity_id IN ({_marks(entity_ids)}) "
        "AND kind = 'alias' ORDER BY entity_id, norm",
        *entity_ids,
    )
    found: dict[str, list[str]] = {e: [] for e in entity_ids}
    for row in rows:
        found[row["entity_id"]].append(row["name"])
    return found


async def members_of(store: Store, org_id: str, entity_ids: Sequence[str]) -> dict[str, list[str]]:
    """The entities merged into each of ``entity_ids``."""
    if not entity_ids:
        return {}
    rows = await store.fetch_all(
        "SELECT canonical_id, entity_id FROM graph_entities WHERE org_id = ? "
        f"AND canonical_id IN ({_marks(entity_ids)}) AND entity_id <> canonical_id "
        "ORDER BY canonical_id, entity_id",
        org_id,
        *entity_ids,
    )
    found: dict[str, list[str]] = {e: [] for e in entity_ids}
    for row in rows:
        found[row["canonical_id"]].append(row["entity_id"])
    return found


_NAME_COLUMNS = "n.norm, n.name AS matched, n.kind, e.entity_id, e.name, e.entity_type"


async def names_matching(
    store: Store,
    org_id: str,
    norm: str,
    entity_type: str | None,
    user_id: str | None,
    agent_id: str | None,
    exact_scope: bool,
    known_seq: int | None = None,
    known_at: int | None = None,
) -> list[dict[str, Any]]:
    """The live entities one of whose names or aliases is ``norm`` exactly, in scope (and
    created by ``known_seq`` or ``known_at``, when given)."""
    point = point_of(known_seq, known_at)
    if point is not None:
        return await _names_matching_then(
            store, org_id, norm, entity_type, user_id, agent_id, exact_scope, point
        )
    args: list[Any] = [org_id, norm]
    where = ["n.org_id = ?", "n.norm = ?"]
    if entity_type is not None:
        where.append("e.entity_type = ?")
        args.append(entity_type)
    where += _scope_sql("e", user_id, agent_id, exact_scope, args)
    sql = (
        f"SELECT {_NAME_COLUMNS} FROM graph_names n JOIN graph_entities e "
        f"ON e.entity_id = n.canonical_id WHERE {' AND '.join(where)} "
        "ORDER BY n.kind DESC, e.entity_id LIMIT 50"
    )
    return await store.fetch_all(sql, *args)


async def _names_matching_then(
    store: Store,
    org_id: str,
    norm: str,
    entity_type: str | None,
    user_id: str | None,
    agent_id: str | None,
    exact_scope: bool,
    point: Point,
) -> list[dict[str, Any]]:
    """``names_matching`` at a point: the names and aliases held then, each answering as
    the entity its holder answered as then, with that entity's name then."""
    args: list[Any] = [org_id, norm]
    window = _window("h", point, args)
    spans = await store.fetch_all(
        "SELECT h.entity_id, h.field, h.value FROM graph_entity_history h WHERE h.org_id = ? "
        f"AND h.norm = ? AND h.field IN ('name', 'alias') AND {window} "
        "ORDER BY h.field DESC, h.entity_id LIMIT 50",
        *args,
    )
    found: dict[str, dict[str, Any]] = {}
    for span in spans:
        answering = await _answering_then(store, span["entity_id"], point)
        if answering in found:
            continue
        args = [answering]
        if entity_type is not None:
            args.append(entity_type)
        where = _scope_sql("e", user_id, agent_id, exact_scope, args)
        where += _created_sql("e", *_seq_at(point), args)
        typed = " AND e.entity_type = ?" if entity_type is not None else ""
        row = await store.fetch_one(
            "SELECT e.entity_id, e.name, e.entity_type FROM graph_entities e "
            f"WHERE e.entity_id = ?{typed}{''.join(' AND ' + w for w in where)}",
            *args,
        )
        if row is None:
            continue
        name = (await known_then(store, [answering], point))[answering].row.get("name")
        kind = span["field"] if answering == span["entity_id"] else "alias"
        found[answering] = {
            "norm": norm,
            "matched": span["value"],
            "kind": kind,
            "entity_id": answering,
            "name": row["name"] if name is None else name,
            "entity_type": row["entity_type"],
        }
    return sorted(found.values(), key=lambda r: (r["kind"] != "name", r["entity_id"]))


def _seq_at(point: Point) -> tuple[int | None, int | None]:
    return (point[1], None) if point[0] == "seq" else (None, point[1])


async def names_like(
    store: Store,
    org_id: str,
    norm: str,
    entity_type: str | None,
    user_id: str | None,
    agent_id: str | None,
    limit: int = 500,
    known_seq: int | None = None,
    known_at: int | None = None,
) -> list[dict[str, Any]]:
    """Names that share the start of a word with ``norm``: the candidates a similarity
    score is computed for (a bounded set, along the gram index)."""
    found = grams(norm)
    if not found:
        return []
    args: list[Any] = [org_id, *found]
    where = ["g.org_id = ?", f"g.gram IN ({_marks(found)})"]
    if entity_type is not None:
        where.append("e.entity_type = ?")
        args.append(entity_type)
    where += _scope_sql("e", user_id, agent_id, False, args)
    where += _created_sql("e", known_seq, known_at, args)
    sql = (
        f"SELECT DISTINCT {_NAME_COLUMNS} FROM graph_name_grams g "
        "JOIN graph_names n ON n.entity_id = g.entity_id AND n.norm = g.norm "
        f"JOIN graph_entities e ON e.entity_id = n.canonical_id WHERE {' AND '.join(where)} "
        "ORDER BY e.entity_id, n.norm LIMIT ?"
    )
    return await store.fetch_all(sql, *args, limit)


def similarity(a: str, b: str) -> float:
    """How alike two normalised names are, 0 to 1 (difflib's ratio of matching characters)."""
    return round(difflib.SequenceMatcher(None, a, b).ratio(), 4)


async def scope_entity_ids(
    store: Store, org_id: str, user_id: str | None, agent_id: str | None, after: str, limit: int
) -> list[str]:
    """Live entities of a scope (every field given equal), in id order after ``after``:
    what entity.delete_scope deletes, a page at a time."""
    args: list[Any] = [org_id, after]
    where = ["org_id = ?", "entity_id > ?", "canonical_id = entity_id"]
    for column, value in (("user_id", user_id), ("agent_id", agent_id)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    rows = await store.fetch_all(
        f"SELECT entity_id FROM graph_entities WHERE {' AND '.join(where)} "
        "ORDER BY entity_id LIMIT ?",
        *args,
        limit,
    )
    return [row["entity_id"] for row in rows]


Statement = tuple[str, list[Any]]


def neighbors_statement(entity_id: str, depth: int, f: EdgeFilter) -> Statement:
    """The walk of ``neighbors``, the same SQL on both stores: one row per entity reached
    at a depth through a relation (``via``; empty for the start), with its name and type."""
    args: list[Any] = [entity_id, f.org_id]
    step = _step(f, args)
    args.append(depth)
    sql = (
        "WITH RECURSIVE walk(node, depth, via) AS ("
        " SELECT e.entity_id, 0, substr(e.entity_id, 1, 0) FROM graph_entities e"
        " WHERE e.entity_id = ? AND e.org_id = ?"
        " UNION"
        f" SELECT r.to_node, w.depth + 1, r.relation_id FROM walk w{step} AND w.depth < ?)"
        " SELECT w.node, w.depth, w.via, n.name, n.entity_type"
        " FROM walk w CROSS JOIN graph_entities n WHERE n.entity_id = w.node"
    )
    return sql, args


def path_statement(from_id: str, to_id: str, max_depth: int, f: EdgeFilter) -> Statement:
    """The walk of ``path``: it carries its trail and never re-enters an entity on it."""
    args: list[Any] = [from_id, f.org_id]
    step = _step(f, args)
    args += [max_depth, to_id, to_id]
    sql = (
        "WITH RECURSIVE walk(node, depth, trail, hops) AS ("
        " SELECT e.entity_id, 0, ',' || e.entity_id || ',', substr(e.entity_id, 1, 0)"
        " FROM graph_entities e WHERE e.entity_id = ? AND e.org_id = ?"
        " UNION ALL"
        " SELECT r.to_node, w.depth + 1, w.trail || r.to_node || ',',"
        " w.hops || r.relation_id || ','"
        f" FROM walk w{step} AND w.depth < ? AND w.node <> ?"
        " AND w.trail NOT LIKE '%,' || r.to_node || ',%')"
        " SELECT trail, hops FROM walk WHERE node = ? ORDER BY depth, trail LIMIT 1"
    )
    return sql, args


def path_found(trail: str, hops: str) -> tuple[list[str], list[str]]:
    """A path's entities and relations, from the walk's trail and hops."""
    return trail.strip(",").split(","), [h for h in hops.split(",") if h]


async def neighbors(
    store: Store, entity_id: str, depth: int, limit: int, f: EdgeFilter
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The entities within ``depth`` hops (at most ``limit``, nearest first, the start
    included at depth 0) and the relations the walk followed between them, walked in the
    store: a step is kept once per (entity, depth, relation), and the depth is bounded, so
    a cycle ends there. The relations come from the walk itself, then by primary key: a
    second look-up by node list was planned by Postgres, without statistics, as a scan of
    the organization's relations (about 1 s at 300,000)."""
    sql, args = neighbors_statement(entity_id, depth, f)
    least: dict[str, dict[str, Any]] = {}
    vias: set[str] = set()
    for row in await store.fetch_all(sql, *args):
        if row["via"]:
            vias.add(row["via"])
        seen = least.get(row["node"])
        if seen is None or row["depth"] < seen["depth"]:
            least[row["node"]] = row
    ordered = sorted(least.values(), key=lambda r: (r["depth"], r["node"]))[:limit]
    nodes = [
        {
            "entity_id": r["node"],
            "name": r["name"],
            "entity_type": r["entity_type"],
            "depth": r["depth"],
        }
        for r in ordered
    ]
    kept = {n["entity_id"] for n in nodes}
    edges = [
        r
        for r in await relations_by_id(store, sorted(vias))
        if r["from_node"] in kept and r["to_node"] in kept
    ]
    return nodes, edges


async def path(
    store: Store, from_id: str, to_id: str, max_depth: int, f: EdgeFilter
) -> tuple[list[str], list[str]] | None:
    """A shortest path: its entities and its relations, or None within ``max_depth``. The
    walk never enters an entity already on its own trail (cycles end there)."""
    sql, args = path_statement(from_id, to_id, max_depth, f)
    row = await store.fetch_one(sql, *args)
    return None if row is None else path_found(row["trail"], row["hops"])


async def relations_by_id(store: Store, relation_ids: Sequence[str]) -> list[dict[str, Any]]:
    if not relation_ids:
        return []
    return await store.fetch_all(
        f"SELECT {_R_COLUMNS} FROM graph_relations r WHERE r.direction = 0 "
        f"AND r.relation_id IN ({_marks(relation_ids)})",
        *relation_ids,
    )


async def facts_about(
    store: Store,
    entity_id: str,
    at: At,
    org_id: str,
    limit: int,
    scope: tuple[str | None, str | None] | None = None,
) -> list[dict[str, Any]]:
    """The relations of an entity, as subject or object, valid at ``at``, with both ends'
    names, the most confident first. ``scope`` (a user, an agent): only the relations of
    the organization's own scope and of these (an organization's place is named in many
    users' facts; one user's context must not show another's)."""
    args: list[Any] = [org_id, entity_id]
    edge = _known_sql(at, args)
    if scope is not None:
        for column, value in zip(("user_id", "agent_id"), scope, strict=True):
            if value is None:
                edge += f" AND r.{column} IS NULL"
            else:
                edge += f" AND (r.{column} IS NULL OR r.{column} = ?)"
                args.append(value)
    return await store.fetch_all(
        f"SELECT {_R_COLUMNS}, a.name AS from_name, "
        "b.name AS to_name FROM graph_relations r "
        "JOIN graph_entities a ON a.entity_id = r.from_node "
        "JOIN graph_entities b ON b.entity_id = r.to_node "
        f"WHERE r.org_id = ? AND r.from_node = ? AND {edge} "
        "ORDER BY r.confidence DESC, r.valid_from DESC, r.relation_id LIMIT ?",
        *args,
        limit,
    )


async def entities_named(
    store: Store,
    org_id: str,
    norms: Sequence[str],
    user_id: str | None,
    agent_id: str | None,
    limit: int = 20,
) -> list[str]:
    """The live entities one of whose names or aliases is one of ``norms``, in the order
    of ``norms``: of the organization's own scope, or of ``user_id``'s and ``agent_id``'s
    (an entity of another user or agent is never named)."""
    if not norms:
        return []
    args: list[Any] = [org_id, *norms]
    where = ["n.org_id = ?", f"n.norm IN ({_marks(norms)})"]
    for column, value in (("user_id", user_id), ("agent_id", agent_id)):
        if value is None:
            where.append(f"e.{column} IS NULL")
        else:
            where.append(f"(e.{column} IS NULL OR e.{column} = ?)")
            args.append(value)
    rows = await store.fetch_all(
        "SELECT DISTINCT n.norm, e.entity_id FROM graph_names n JOIN graph_entities e "
        f"ON e.entity_id = n.canonical_id WHERE {' AND '.join(where)}",
        *args,
    )
    order = {norm: n for n, norm in enumerate(norms)}
    ranked = sorted(rows, key=lambda r: (order[r["norm"]], r["entity_id"]))
    return list(dict.fromkeys(r["entity_id"] for r in ranked))[:limit]


async def predicates(store: Store, org_id: str) -> list[dict[str, Any]]:
    """An organization's declared predicates (``predicate.declare``), by name."""
    return await store.fetch_all(
        "SELECT predicate, single_valued, version FROM graph_predicates WHERE org_id = ? "
        "ORDER BY predicate",
        org_id,
    )


async def get_relation(store: Store, relation_id: str) -> dict[str, Any] | None:
    return await store.fetch_one(
        f"SELECT {_R_COLUMNS} FROM graph_relations r WHERE r.relation_id = ? AND r.direction = 0",
        relation_id,
    )


async def stats(store: Store, org_id: str, now: int) -> dict[str, Any]:
    types = await store.fetch_all(
        "SELECT entity_type, COUNT(*) AS n FROM graph_entities WHERE org_id = ? "
        "AND canonical_id = entity_id GROUP BY entity_type ORDER BY entity_type",
        org_id,
    )
    predicates = await store.fetch_all(
        "SELECT predicate, COUNT(*) AS n, SUM(CASE WHEN valid_from <= ? AND valid_to > ? "
        "THEN 1 ELSE 0 END) AS valid FROM graph_relations WHERE org_id = ? AND direction = 0 "
        "AND retracted_seq = ? GROUP BY predicate ORDER BY predicate",
        now,
        now,
        org_id,
        OPEN,
    )
    links = await store.fetch_one(
        "SELECT COUNT(*) AS n FROM graph_associations WHERE org_id = ?", org_id
    )
    return {
        "entities": sum(int(t["n"]) for t in types),
        "relations": sum(int(p["n"]) for p in predicates),
        "valid_relations": sum(int(p["valid"]) for p in predicates),
        "associations": int(links["n"]) if links else 0,
        "entity_types": {t["entity_type"]: int(t["n"]) for t in types},
        "predicates": {p["predicate"]: int(p["n"]) for p in predicates},
    }


async def associations(
    store: Store,
    memory_id: str,
    direction: str,
    association_type: str | None,
    min_strength: float,
    limit: int,
) -> list[dict[str, Any]]:
    """A memory's links, strongest first; ``memory_id`` in each is the other memory."""
    parts = []
    args: list[Any] = []
    ends = {"out": ("from_memory_id", "to_memory_id"), "in": ("to_memory_id", "from_memory_id")}
    for name, (mine, other) in ends.items():
        if direction not in ("both", name):
            continue
        where = [f"{mine} = ?", "strength >= ?"]
        args += [memory_id, millionths(min_strength)]
        if association_type is not None:
            where.append("association_type = ?")
            args.append(association_type)
        parts.append(
            f"SELECT {other} AS memory_id, '{name}' AS direction, association_type, strength, "
            f"created_at, version FROM graph_associations WHERE {' AND '.join(where)}"
        )
    rows = await store.fetch_all(
        f"SELECT * FROM ({' UNION ALL '.join(parts)}) x "
        "ORDER BY strength DESC, memory_id, direction LIMIT ?",
        *args,
        limit,
    )
    return [{**row, "strength": row["strength"] / SCALE} for row in rows]
