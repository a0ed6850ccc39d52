"""Relations (facts) of the knowledge graph: ``subject —predicate→ object``, with a fact
text, a confidence, provenance and two times.

Every relation whose subject is entity E lives on E's facts subject,
``agentmem.evt.<org>.facts.<E>``, and a relation id names it: ``<E>_<n>``, the n-th relation
asserted there. So the decisions about a subject's facts read one aggregate and write one
commit with an expected version:

- A relation is never deleted by a newer fact. A single-valued predicate (``lives_in``,
  ``works_at``, ..., or any predicate asserted with ``single_valued: true``) ends the valid
  time of the subject's valid relations of that predicate, in the same commit as the new
  one (``relation.invalidated``), and touches nothing else: no other subject, no other
  predicate.
- A fact asserted with an earlier ``valid_from`` than the valid one it would replace is
  history: the new relation gets ``valid_to`` = that one's ``valid_from``, the other stays.
- The same fact (predicate, object) asserted again within the valid time of a relation
  that holds it (or with no ``valid_from`` while that one is valid) is answered with that
  relation (``deduplicated``), and nothing is appended: an extraction repeated later,
  dated later, must not end the fact and assert it again.
- ``relation.retract`` records that a relation was wrong: reads leave it out, but a read
  ``known_at`` a time before the retraction still returns it.

Valid time (``valid_from``, ``valid_to``) is the client's; system time is the log's (the
commit's time and sequence), which nobody sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated

import msgspec

from agentmem import subjects
from agentmem.commands import Id, Targeted, TimeMs
from agentmem.domain.aggregate import Loaded, Write, check_version
from agentmem.domain.entities import Entity, EntityType
from agentmem.errors import ConflictError, NotFoundError
from agentmem.events import (
    AnyEvent,
    RelationAsserted,
    RelationInvalidated,
    RelationRetracted,
    Shredded,
)
from agentmem.protocol import command, query
from agentmem.queries import InOrg as QueryInOrg
from agentmem.queries import Query, Seq
from agentmem.replies import Facts as FactsReply
from agentmem.replies import GraphPath, GraphStats, Neighbors, RelationOutcome
from agentmem.validation import invalid

# Predicates that hold one value per subject at a time, unless a request says otherwise.
SINGLE_VALUED = frozenset(
    {"lives_in", "works_at", "born_in", "born_on", "married_to", "located_in", "ceo_of", "age"}
)
# The relations one subject's facts subject may hold (each fold reads them all).
MAX_RELATIONS = 10_000
MAX_DEPTH = 4  # graph.neighbors
MAX_PATH_DEPTH = 6  # graph.path
MAX_NODES = 1_000

Predicate = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$(?!\n)")]
FactText = Annotated[str, msgspec.Meta(min_length=1, max_length=2_000)]
Confidence = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
RelationId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9\-]{1,52}_[0-9]{1,9}$(?!\n)")]
Producer = Annotated[str, msgspec.Meta(max_length=200)]


class Provenance(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where a fact came from: memories, messages, and what produced it."""

    memory_ids: Annotated[list[Id], msgspec.Meta(max_length=100)] = msgspec.field(
        default_factory=list
    )
    message_ids: Annotated[list[Id], msgspec.Meta(max_length=100)] = msgspec.field(
        default_factory=list
    )
    producer: Producer = ""


# Requests ----------------------------------------------------------------------------------
@command("relation.assert", need="member", reply=RelationAsserted, extra=RelationOutcome)
class AssertRelation(Targeted, frozen=True, kw_only=True):
    """A fact about ``subject_id``. ``expected_version`` is the subject's facts subject's.
    The relation's scope is its subject entity's; the object must be of that scope or of
    the whole organization."""

    subject_id: Id
    predicate: Predicate
    object_id: Id
    fact: FactText | None = None  # default: "<subject> <predicate> <object>"
    confidence: Confidence = 1.0
    valid_from: TimeMs | None = None  # default: now
    valid_to: TimeMs | None = None
    # Default: as the organization declared the predicate (predicate.declare), else whether
    # it is in SINGLE_VALUED.
    single_valued: bool | None = None
    source: Provenance | None = None


@command("relation.invalidate", need="member", reply=RelationInvalidated)
class InvalidateRelation(Targeted, frozen=True, kw_only=True):
    """The fact stopped being true at ``valid_to`` (default: now); it stays queryable as
    of earlier times."""

    relation_id: RelationId
    valid_to: TimeMs | None = None


@command("relation.retract", need="member", reply=RelationRetracted)
class RetractRelation(Targeted, frozen=True, kw_only=True):
    """The fact was wrong, not merely outdated."""

    relation_id: RelationId
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class AtTime(Query, frozen=True, kw_only=True):
    """Valid time (``as_of``: what was true in the world then; default now) and system
    time (``known_at`` in ms, or ``known_at_seq``: what the service knew then; default
    everything it knows)."""

    as_of: TimeMs | None = None
    known_at: TimeMs | None = None
    known_at_seq: Seq | None = None


class Walk(AtTime, frozen=True, kw_only=True):
    user_id: Id | None = None  # only relations of this user's scope
    agent_id: Id | None = None
    predicates: Annotated[list[Predicate], msgspec.Meta(max_length=32)] | None = None
    entity_types: Annotated[list[EntityType], msgspec.Meta(max_length=32)] | None = None
    min_confidence: Confidence = 0.0


@query("graph.neighbors", need="reader", reply=Neighbors)
class GraphNeighbors(Walk, frozen=True, kw_only=True):
    """The entities within ``depth`` hops of ``entity_id`` (either direction), walked in
    the store, and the relations it followed between them."""

    entity_id: Id
    depth: Annotated[int, msgspec.Meta(ge=1, le=MAX_DEPTH)] = 1
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_NODES)] = 100


@query("graph.path", need="reader", reply=GraphPath)
class FindGraphPath(Walk, frozen=True, kw_only=True):
    """A shortest path between two entities, either direction on each hop."""

    from_id: Id
    to_id: Id
    max_depth: Annotated[int, msgspec.Meta(ge=1, le=MAX_PATH_DEPTH)] = 4


@query("graph.facts", need="reader", reply=FactsReply)
class GraphFacts(AtTime, frozen=True, kw_only=True):
    """The valid facts about an entity (as subject or object), as text for a prompt."""

    entity_id: Id
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 100


@query("graph.stats", need="reader", reply=GraphStats)
class GraphStatsQuery(QueryInOrg, frozen=True, kw_only=True):
    """How many entities, relations and associations an organization's graph holds."""


# State -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Relation:
    relation_id: str
    predicate: str
    object_id: str
    valid_from: int
    valid_to: int | None
    retracted: bool = False

    def valid_at(self, time: int) -> bool:
        return (
            not self.retracted
            and self.valid_from <= time
            and (self.valid_to is None or self.valid_to > time)
        )


@dataclass(frozen=True)
class Facts:
    """The relations whose subject is one entity, and how many were ever asserted."""

    asserted: int = 0
    relations: Mapping[str, Relation] = field(default_factory=dict)


def subject(org_id: str, entity_id: str) -> str:
    return subjects.event(org_id, "facts", entity_id)


def relation_id(entity_id: str, n: int) -> str:
    return f"{entity_id}_{n}"


def subject_entity_of(relation: str) -> str:
    """The entity whose facts subject holds a relation, from its id."""
    return relation.rpartition("_")[0]


def evolve(state: Facts | None, event: AnyEvent) -> Facts | None:
    facts = state or Facts()
    match event:
        case RelationAsserted():
            relation = Relation(
                event.relation_id,
                event.predicate,
                event.object_id,
                event.valid_from,
                event.valid_to,
            )
            return Facts(facts.asserted + 1, {**facts.relations, event.relation_id: relation})
        case RelationInvalidated(relation_id=rid, valid_to=valid_to) if rid in facts.relations:
            changed = replace(facts.relations[rid], valid_to=valid_to)
            return replace(facts, relations={**facts.relations, rid: changed})
        case RelationRetracted(relation_id=rid) if rid in facts.relations:
            changed = replace(facts.relations[rid], retracted=True)
            return replace(facts, relations={**facts.relations, rid: changed})
        case Shredded(of="relation.asserted"):
            # Forgotten, but counted: the next relation's id stays new.
            return replace(facts, asserted=facts.asserted + 1)
    return state


# Decisions ---------------------------------------------------------------------------------
def missing(relation: str) -> NotFoundError:
    return NotFoundError(f"relation {relation} does not exist", {"relation_id": relation})


def check_scopes(subject_entity: Entity, object_entity: Entity) -> None:
    """The object is of the subject's scope, or shared by the whole organization (no
    user, no agent), so that a walk in one user's scope never reaches another's."""
    for name in ("user_id", "agent_id"):
        theirs = getattr(object_entity, name)
        if theirs is not None and theirs != getattr(subject_entity, name):
            raise invalid(
                f"the object entity belongs to another {name.removesuffix('_id')}'s scope "
                "than the subject",
                "$.object_id",
                "invalid_value",
            )


@dataclass(frozen=True)
class Asserted:
    """What an assertion decided: the writes, or the relation that already holds the fact."""

    writes: list[Write]
    existing: str | None = None
    invalidated: tuple[str, ...] = ()


def _not_held(
    same: list[Relation], valid_from: int, valid_to: int | None
) -> Relation | tuple[int, int | None]:
    """Of ``valid_from``..``valid_to``, the first span that no relation of ``same`` (the
    same fact) holds: from where the ones holding its start end, until the next one
    starts. The relation holding its start when they hold all of it."""
    holding: Relation | None = None
    start = valid_from
    moved = True
    while moved and (valid_to is None or start < valid_to):
        moved = False
        for relation in same:
            if relation.valid_from <= start and (
                relation.valid_to is None or relation.valid_to > start
            ):
                holding = holding or relation
                if relation.valid_to is None:
                    return holding
                start, moved = relation.valid_to, True
    if holding is not None and valid_to is not None and start >= valid_to:
        return holding
    later = [r.valid_from for r in same if r.valid_from > start]
    if later and (valid_to is None or min(later) < valid_to):
        valid_to = min(later)
    return start, valid_to


def assert_relation(
    loaded: Loaded[Facts],
    command: AssertRelation,
    subject_entity: Entity,
    object_entity: Entity,
    now: int,
    single_by_default: bool | None = None,
    session_id: str | None = None,
    extracted: bool = False,
) -> Asserted:
    """``subject_entity`` and ``object_entity``: live, of one organization (merges already
    followed: the ids in ``command`` may name merged entities). ``single_by_default``:
    whether the organization holds the predicate single-valued (``predicates.is_single``;
    None: the service's default), unless the command says. ``session_id``: the conversation
    of the memory or message the fact was extracted from (``derived_from``).

    ``extracted``: the fact comes from an extraction, in its source's valid time. Where
    relations hold the same fact for part of that span, it is asserted for the first part
    they do not hold (a memory dated before the one that first stated it adds the time
    between), and not at all when they hold all of it; a value of a single-valued predicate
    that another one holds from the very same instant replaces it (a correction from the
    corrected memory's own start: the value it replaces was never true), where a client's
    assertion is refused."""
    check_version(loaded, command.expected_version)
    check_scopes(subject_entity, object_entity)
    facts = loaded.state or Facts()
    valid_from = command.valid_from if command.valid_from is not None else now
    valid_to = command.valid_to
    if valid_to is not None and valid_to <= valid_from:
        raise invalid(
            f"valid_to ({valid_to}) must be after valid_from ({valid_from})",
            "$.valid_to",
            "invalid_value",
        )
    if facts.asserted >= MAX_RELATIONS:
        raise ConflictError(
            f"entity {subject_entity.entity_id} is the subject of {MAX_RELATIONS} relations, "
            "the most one entity may have",
            {"entity_id": subject_entity.entity_id, "max_relations": MAX_RELATIONS},
        )
    object_id = object_entity.entity_id
    live = [r for r in facts.relations.values() if not r.retracted]
    same = [r for r in live if (r.predicate, r.object_id) == (command.predicate, object_id)]
    if extracted:
        span = _not_held(same, valid_from, valid_to)
        if isinstance(span, Relation):
            return Asserted([], existing=span.relation_id)
        valid_from, valid_to = span
    for relation in same:
        ends_within = relation.valid_to is None or (
            valid_to is not None and valid_to <= relation.valid_to
        )
        within = relation.valid_from <= valid_from and ends_within
        again_now = command.valid_from is None and valid_to is None and relation.valid_at(now)
        if within or again_now:
            return Asserted([], existing=relation.relation_id)
    if single_by_default is None:
        single_by_default = command.predicate in SINGLE_VALUED
    single = command.single_valued if command.single_valued is not None else single_by_default
    new_id = relation_id(subject_entity.entity_id, facts.asserted + 1)
    events: list[AnyEvent] = []
    ended: list[str] = []
    if single:
        for relation in live:
            if relation.predicate != command.predicate:
                continue
            still = relation.valid_to is None or relation.valid_to > valid_from
            # An extraction's value from the very same instant is its source's correction
            # (a memory superseded from its own start): the one it replaces was never true.
            replaced = extracted and relation.valid_from == valid_from and still
            if (relation.valid_from < valid_from and still) or replaced:
                # It was true until this one became true.
                events.append(
                    RelationInvalidated(
                        relation_id=relation.relation_id, valid_to=valid_from, superseded_by=new_id
                    )
                )
                ended.append(relation.relation_id)
            elif relation.valid_from >= valid_from and (
                valid_to is None or valid_to > relation.valid_from
            ):
                # A later value is known already: this one is history, true until then.
                valid_to = relation.valid_from
    if valid_to is not None and valid_to <= valid_from:
        raise ConflictError(
            f"a {command.predicate} of entity {subject_entity.entity_id} holds from "
            f"{valid_from} already",
            {"entity_id": subject_entity.entity_id, "predicate": command.predicate},
        )
    fact = (
        command.fact
        or f"{subject_entity.name} {command.predicate.replace('_', ' ')} {object_entity.name}"
    )
    asserted = RelationAsserted(
        relation_id=new_id,
        org_id=subject_entity.org_id,
        subject_id=subject_entity.entity_id,
        predicate=command.predicate,
        object_id=object_id,
        fact=fact,
        confidence=command.confidence,
        valid_from=valid_from,
        valid_to=valid_to,
        source=msgspec.to_builtins(command.source) if command.source is not None else {},
        user_id=subject_entity.user_id,
        agent_id=subject_entity.agent_id,
        memory_id=derived_from(command.source),
        session_id=session_id,
    )
    # The ending of the old value and the new one, in one commit on one subject.
    return Asserted(
        [Write(loaded.subject, loaded.version, [*events, asserted])], invalidated=tuple(ended)
    )


def derived_from(source: Provenance | None) -> str | None:
    """The one memory a fact was derived from, when its source names that memory and
    nothing else (no other memory, no message): the fact is sealed with that memory's
    data key and forgotten with it (``memory.forget``). A fact of several sources stays
    until each of them is forgotten by a wider forget (its scope, its user)."""
    if source is None or source.message_ids or len(set(source.memory_ids)) != 1:
        return None
    return source.memory_ids[0]


def require_relation(loaded: Loaded[Facts], relation: str) -> Relation:
    facts = loaded.state
    found = facts.relations.get(relation) if facts is not None else None
    if found is None:
        raise missing(relation)
    return found


def invalidate(loaded: Loaded[Facts], command: InvalidateRelation, now: int) -> list[Write]:
    relation = require_relation(loaded, command.relation_id)
    check_version(loaded, command.expected_version)
    if relation.retracted:
        raise ConflictError(
            f"relation {relation.relation_id} was retracted", {"relation_id": relation.relation_id}
        )
    valid_to = command.valid_to if command.valid_to is not None else now
    if valid_to <= relation.valid_from:
        raise invalid(
            f"valid_to ({valid_to}) must be after the relation's valid_from "
            f"({relation.valid_from})",
            "$.valid_to",
            "invalid_value",
        )
    if relation.valid_to is not None and relation.valid_to <= valid_to:
        raise ConflictError(
            f"relation {relation.relation_id} stopped being valid at {relation.valid_to} already",
            {"relation_id": relation.relation_id, "valid_to": relation.valid_to},
        )
    event = RelationInvalidated(relation_id=relation.relation_id, valid_to=valid_to)
    return [Write(loaded.subject, loaded.version, [event])]


def retract(loaded: Loaded[Facts], command: RetractRelation, entity: Entity) -> list[Write]:
    """``entity``: the relation's subject entity, whose scope the event repeats (its reason
    is sealed under that scope's key, as the fact is)."""
    relation = require_relation(loaded, command.relation_id)
    check_version(loaded, command.expected_version)
    if relation.retracted:
        raise ConflictError(
            f"relation {relation.relation_id} was retracted already",
            {"relation_id": relation.relation_id},
        )
    event = RelationRetracted(
        relation_id=relation.relation_id,
        reason=command.reason,
        user_id=entity.user_id,
        agent_id=entity.agent_id,
    )
    return [Write(loaded.subject, loaded.version, [event])]


def check_known(query: AtTime) -> None:
    if query.known_at is not None and query.known_at_seq is not None:
        raise invalid(
            "known_at_seq and known_at are two ways to name one point: give one",
            "$.known_at",
            "invalid_value",
        )


__all__ = [
    "AssertRelation",
    "FindGraphPath",
    "GraphFacts",
    "GraphNeighbors",
    "GraphStatsQuery",
    "InvalidateRelation",
    "Provenance",
    "RetractRelation",
]
