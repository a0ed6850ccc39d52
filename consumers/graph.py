"""The knowledge graph over NATS: entity, relation and association commands, and the graph
queries (resolve, neighbors, path, facts, stats, associations).

An entity, a relation and a memory are named by id alone; the log finds their subject, and
so their organization. Another organization's entity, relation or memory is answered
exactly as a missing one, on every subject. Writes need ``member``
(``entity.delete_scope`` ``org_admin``), reads ``reader``. The decisions are pure, in
``agentmem.domain.entities``, ``relations`` and ``associations``; the reads are the graph
projection's (``agentmem.projections.graph``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agentmem import subjects
from agentmem.consumers.aggregates import Loader
from agentmem.consumers.auth import authorize
from agentmem.consumers.commands import CommandRunner, Earlier, missing_org
from agentmem.consumers.graph_scope import delete_entities_of_scope
from agentmem.consumers.queries import MAX_PAGE_BYTES, decode_cursor, page
from agentmem.consumers.router import Request, Result, Router
from agentmem.domain import associations, entities, memories, orgs, predicates, relations
from agentmem.domain.aggregate import Loaded, Write
from agentmem.domain.associations import (
    AssociateMemories,
    DissociateMemories,
    MemoryAssociations,
)
from agentmem.domain.entities import (
    AddEntityAlias,
    CreateEntity,
    DeleteEntity,
    DeleteEntityScope,
    Entity,
    GetEntity,
    ListEntities,
    MergeEntity,
    RemoveEntityAlias,
    RenameEntity,
    ResolveEntity,
    SetEntityAttributes,
    UnmergeEntity,
)
from agentmem.domain.predicates import DeclarePredicate, ListPredicates
from agentmem.domain.relations import (
    AssertRelation,
    AtTime,
    FindGraphPath,
    GraphFacts,
    GraphNeighbors,
    GraphStatsQuery,
    InvalidateRelation,
    RetractRelation,
    Walk,
)
from agentmem.errors import ConflictError, NotFoundError
from agentmem.events import RelationInvalidated
from agentmem.projections import graph as reads
from agentmem.validation import invalid

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

PROJECTION = "graph"
MAX_MERGE_HOPS = 16  # a chain of merges followed to the entity that answers


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Found(Exception):
    """A create or an assertion found what it would have made: nothing to append."""


async def load_entity(
    runner: CommandRunner,
    loader: Loader,
    request: Request[Any],
    entity_id: str,
    current: bool = False,
) -> tuple[Loaded[Entity], str]:
    """An entity (not deleted) of a live organization that the caller may change, and its
    organization; else not_found (another organization's too). ``current``: read from the
    log's leader, for an entity the command only names (no append checks its version)."""
    missing = entities.missing(entity_id)
    try:
        loaded, org_id = await runner.load_in_live_org(
            loader, "entity", entity_id, entities.evolve, missing, current
        )
    except NotFoundError:
        raise missing from None
    entity = entities.require_entity(loaded, entity_id)
    if await merged_into_deleted(loader, org_id, entity):
        raise missing  # its members went with the entity it was merged into
    authorize(request.caller, request.need, org_id, missing)
    return loaded, org_id


async def merged_into_deleted(loader: Loader, org_id: str, entity: Entity) -> bool:
    """Whether ``entity`` was merged into an entity (or a chain of them) that was deleted
    since: it left every table with it, and answers as a deleted one."""
    for _ in range(MAX_MERGE_HOPS):
        if entity.state != "merged" or entity.merged_into is None:
            return False
        into = await loader.load(entities.subject(org_id, entity.merged_into), entities.evolve)
        if into.state is None or into.state.state == "deleted":
            return True
        entity = into.state
    return False


async def gone(loader: Loader, org_id: str, entity_id: str) -> bool:
    """Whether an entity was deleted (or forgotten), itself or what it was merged into."""
    loaded = await loader.load(entities.subject(org_id, entity_id), entities.evolve)
    entity = loaded.state
    if entity is None or entity.state == "deleted":
        return True
    return await merged_into_deleted(loader, org_id, entity)


async def without_gone_objects(
    loader: Loader, org_id: str, facts: Loaded[relations.Facts], predicate: str
) -> Loaded[relations.Facts]:
    """``facts`` without its relations of ``predicate`` whose object was deleted: they left
    every table with it, and must not end, date or deduplicate a new one."""
    if facts.state is None:
        return facts
    kept = dict(facts.state.relations)
    objects = {r.object_id for r in kept.values() if r.predicate == predicate}
    for object_id in objects:
        if await gone(loader, org_id, object_id):
            kept = {k: r for k, r in kept.items() if r.object_id != object_id}
    return replace(facts, state=replace(facts.state, relations=kept))


async def answering(
    runner: CommandRunner,
    loader: Loader,
    request: Request[Any],
    entity_id: str,
    current: bool = False,
) -> tuple[Loaded[Entity], str]:
    """The live entity ``entity_id`` answers as: itself, or what it was merged into."""
    loaded, org_id = await load_entity(runner, loader, request, entity_id, current)
    for _ in range(MAX_MERGE_HOPS):
        state = entities.require_entity(loaded, entity_id)
        if state.state == "live" or state.merged_into is None:
            return loaded, org_id
        loaded = await loader.load(entities.subject(org_id, state.merged_into), entities.evolve)
    raise ConflictError(
        f"entity {entity_id} was merged more than {MAX_MERGE_HOPS} times over",
        {"entity_id": entity_id},
    )


async def decide_assertion(
    runner: CommandRunner,
    loader: Loader,
    request: Request[Any],
    command: AssertRelation,
    now: int,
    session_id: str | None = None,
    extracted: bool = False,
) -> tuple[relations.Asserted, Loaded[relations.Facts]]:
    """Decide ``command`` against the live entities its ids answer as (both in one
    organization) and the subject's facts, under the organization's declared predicates.
    ``session_id``, ``extracted``: an extraction's (``relations.assert_relation``)."""
    # Both read from the log's leader: an assertion writes neither entity, so a deletion
    # another process made a moment ago would not stop it on a stale cache.
    subject, org_id = await answering(runner, loader, request, command.subject_id, True)
    target, object_org = await answering(runner, loader, request, command.object_id, True)
    if object_org != org_id:
        raise entities.missing(command.object_id)
    subject_entity = entities.require_live(subject, command.subject_id)
    object_entity = entities.require_live(target, command.object_id)
    facts = await loader.load(relations.subject(org_id, subject_entity.entity_id), relations.evolve)
    facts = await without_gone_objects(loader, org_id, facts, command.predicate)
    declared = await loader.load(predicates.subject(org_id), predicates.evolve)
    single = predicates.is_single(declared.state, command.predicate)
    decided = relations.assert_relation(
        facts, command, subject_entity, object_entity, now, single, session_id, extracted
    )
    return decided, facts


async def names_caught_up(parts: Parts, org_id: str) -> None:
    """Wait until the graph projection has applied every entity event of ``org_id`` that
    the log holds, so that ``names_matching`` sees the names and aliases of every create,
    rename, alias, merge and deletion before this command (a command cannot send
    ``after_seq``). The last one is asked of the stream's leader, which holds every
    acknowledged write (one get, on the organization's entity subjects only); when the
    projection is there already, as it usually is, nothing is waited for, else
    ``Freshness.wait`` hurries its worker."""
    head = await parts.runner.log.last_head(subjects.event(org_id, "entity", "*"), leader=True)
    if head is not None:
        await parts.freshness.wait(PROJECTION, head.seq)


async def probe(loader: Loader, org_id: str, key: str) -> tuple[Loaded[Entity], bool]:
    """Walk a name's subjects from generation 0: the entity that holds the name (True), or
    the first empty subject (False), where a new entity goes."""
    for generation in range(entities.MAX_GENERATIONS):
        slot = await loader.load(
            entities.subject(org_id, entities.slot_id(key, generation)), entities.evolve
        )
        if slot.version == 0:
            return slot, False
        if entities.holds(slot.state, key):
            return slot, True
    raise ConflictError(
        f"this name was created and removed {entities.MAX_GENERATIONS} times in this scope",
        {"generations": entities.MAX_GENERATIONS},
    )


def command_router(parts: Parts) -> Router:
    router = Router()
    runner, store, freshness = parts.runner, parts.store, parts.freshness

    def writable_org(request: Request[Any], org_id: str | None) -> str:
        target = org_id or request.caller.org_id
        authorize(request.caller, request.need, target, missing_org(target))
        return target

    @router.handle(CreateEntity)
    async def create_entity(request: Request[CreateEntity]) -> Result:
        command = request.body
        org_id = writable_org(request, command.org_id)
        entities.check_names(command.name, command.aliases, "$")
        entities.check_attributes(command.attributes, "$.attributes")
        # Layer 1 and 2 as the tables know them, once they hold every entity event of the
        # organization in the log: a live entity of this type and scope with this name or
        # alias (a rename or an alias is known here, not on a name's subject).
        await names_caught_up(parts, org_id)
        known = await reads.names_matching(
            store,
            org_id,
            entities.normalise(command.name),
            command.entity_type,
            command.user_id,
            command.agent_id,
            exact_scope=True,
        )
        # Layer 1 as the log decides it: the name's own subject, first writer wins.
        key = entities.name_key(
            org_id, command.entity_type, command.user_id, command.agent_id, command.name
        )
        found: list[tuple[Loaded[Entity], str]] = []

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            orgs.require_live(await loader.load(orgs.subject(org_id), orgs.evolve), org_id)
            # Read through the loader: a retry of this very command, whose entity the
            # tables now hold, is recognised there and answered with its first outcome
            # (created), not as a match of the name it created.
            for row in known:
                loaded = await loader.load(
                    entities.subject(org_id, row["entity_id"]), entities.evolve
                )
                if loaded.state is not None and loaded.state.state == "live":
                    found[:] = [(loaded, row["kind"])]
                    raise _Found
            slot, held = await probe(loader, org_id, key)
            if held:
                found[:] = [(slot, "name")]
                raise _Found
            return entities.create(org_id, command, slot)

        try:
            data, seq = await runner.run(request, plan)
        except _Found:
            holder, matched_by = found[0]
            assert holder.state is not None
            view = entities.view(holder.state, holder.version)
            return {**view, "deduplicated": True, "matched_by": matched_by}, holder.version
        return {**data, "deduplicated": False, "matched_by": "created"}, seq

    def on_one_entity(decide: Any) -> Any:
        async def handle(request: Request[Any]) -> Result:
            async def plan(loader: Loader, command_id: str) -> list[Write]:
                loaded, _ = await load_entity(runner, loader, request, request.body.entity_id)
                writes: list[Write] = decide(loaded, request.body)
                return writes

            return await runner.run(request, plan)

        return handle

    router.handle(RenameEntity)(on_one_entity(entities.rename))
    router.handle(AddEntityAlias)(on_one_entity(entities.add_alias))
    router.handle(RemoveEntityAlias)(on_one_entity(entities.remove_alias))
    router.handle(SetEntityAttributes)(on_one_entity(entities.set_attributes))
    router.handle(DeleteEntity)(on_one_entity(entities.delete))

    @router.handle(MergeEntity)
    async def merge_entity(request: Request[MergeEntity]) -> Result:
        command = request.body

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            source, org_id = await load_entity(runner, loader, request, command.entity_id)
            target, target_org = await load_entity(runner, loader, request, command.into)
            if target_org != org_id:
                raise entities.missing(command.into)
            return entities.merge(source, target, command)

        return await runner.run(request, plan)

    @router.handle(UnmergeEntity)
    async def unmerge_entity(request: Request[UnmergeEntity]) -> Result:
        command = request.body

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            source, org_id = await load_entity(runner, loader, request, command.entity_id)
            merged = entities.require_entity(source, command.entity_id)
            into = merged.merged_into or merged.entity_id
            target = await loader.load(entities.subject(org_id, into), entities.evolve)
            return entities.unmerge(source, target, command)

        return await runner.run(request, plan)

    @router.handle(DeleteEntityScope)
    async def delete_scope(request: Request[DeleteEntityScope]) -> Result:
        """Every entity the scope holds when the command starts (``graph_scope``)."""
        command = request.body
        org_id = writable_org(request, command.org_id)
        deleted, version = await delete_entities_of_scope(
            parts, request, org_id, command.user_id, command.agent_id
        )
        scope = {"user_id": command.user_id, "agent_id": command.agent_id}
        reply = {"event": "entity.deleted", "version": version, "deleted": deleted}
        return {**reply, "org_id": org_id, **scope}, (version or None)

    @router.handle(AssertRelation)
    async def assert_relation(request: Request[AssertRelation]) -> Result:
        command, now = request.body, now_ms()
        outcome: list[relations.Asserted] = []
        where: list[Loaded[relations.Facts]] = []

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            decided, facts = await decide_assertion(runner, loader, request, command, now)
            outcome[:], where[:] = [decided], [facts]
            if decided.existing is not None:
                raise _Found
            return decided.writes

        earlier = Earlier()
        try:
            data, seq = await runner.run(request, plan, on_earlier=earlier)
        except _Found:
            existing = outcome[0].existing
            assert existing is not None
            await freshness.wait(PROJECTION, where[0].version)
            row = await reads.get_relation(store, existing)
            if row is None:
                raise relations.missing(existing) from None
            view = reads.relation_view(row)
            view = {k: view[k] for k in _ASSERTED_FIELDS}
            reply = {**view, "event": "relation.asserted", "version": where[0].version}
            return {**reply, "deduplicated": True, "invalidated": []}, where[0].version
        if earlier.answered:
            # A retry answered with the first attempt's commit: what that one ended, not
            # what this attempt decided (or did not get to decide).
            commit = await runner.log.get(seq, leader=True) if seq else None
            events = commit.events if commit is not None else []
            invalidated = [e.relation_id for e in events if isinstance(e, RelationInvalidated)]
        else:
            invalidated = list(outcome[0].invalidated) if outcome else []
        return {**data, "deduplicated": False, "invalidated": invalidated}, seq

    def on_one_relation(decide: Any) -> Any:
        async def handle(request: Request[Any]) -> Result:
            relation_id = request.body.relation_id
            now = now_ms()

            async def plan(loader: Loader, command_id: str) -> list[Write]:
                entity_id = relations.subject_entity_of(relation_id)
                missing = relations.missing(relation_id)
                try:
                    loaded, org_id = await load_entity(runner, loader, request, entity_id)
                except NotFoundError:
                    raise missing from None
                entity = entities.require_entity(loaded, entity_id)
                facts = await loader.load(relations.subject(org_id, entity_id), relations.evolve)
                relation = facts.state.relations.get(relation_id) if facts.state else None
                if relation is not None and await gone(loader, org_id, relation.object_id):
                    raise missing  # it left every table with its object
                writes: list[Write] = decide(facts, request.body, now, entity)
                return writes

            return await runner.run(request, plan)

        return handle

    @router.handle(DeclarePredicate)
    async def declare_predicate(request: Request[DeclarePredicate]) -> Result:
        org_id = writable_org(request, request.body.org_id)

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            orgs.require_live(await loader.load(orgs.subject(org_id), orgs.evolve), org_id)
            loaded = await loader.load(predicates.subject(org_id), predicates.evolve)
            return predicates.declare(loaded, org_id, request.body)

        return await runner.run(request, plan)

    router.handle(InvalidateRelation)(
        on_one_relation(lambda facts, command, now, _: relations.invalidate(facts, command, now))
    )
    router.handle(RetractRelation)(
        on_one_relation(
            lambda facts, command, now, entity: relations.retract(facts, command, entity)
        )
    )

    async def live_memory(loader: Loader, request: Request[Any], memory_id: str) -> str:
        missing = memories.missing(memory_id)
        try:
            loaded, org_id = await runner.load_in_live_org(
                loader, "memory", memory_id, memories.evolve, missing
            )
        except NotFoundError:
            raise missing from None
        memories.require_memory(loaded, memory_id)
        authorize(request.caller, request.need, org_id, missing)
        return org_id

    @router.handle(AssociateMemories)
    async def associate(request: Request[AssociateMemories]) -> Result:
        command = request.body

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            org_id = await live_memory(loader, request, command.from_memory_id)
            if await live_memory(loader, request, command.to_memory_id) != org_id:
                raise memories.missing(command.to_memory_id)
            links = await loader.load(
                associations.subject(org_id, command.from_memory_id), associations.evolve
            )
            return associations.associate(links, org_id, command)

        return await runner.run(request, plan)

    @router.handle(DissociateMemories)
    async def dissociate(request: Request[DissociateMemories]) -> Result:
        command = request.body

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            org_id = await live_memory(loader, request, command.from_memory_id)
            links = await loader.load(
                associations.subject(org_id, command.from_memory_id), associations.evolve
            )
            return associations.dissociate(links, command)

        return await runner.run(request, plan)

    return router


_ASSERTED_FIELDS = (
    "relation_id",
    "org_id",
    "subject_id",
    "predicate",
    "object_id",
    "fact",
    "confidence",
    "valid_from",
    "valid_to",
    "source",
    "user_id",
    "agent_id",
)


# Queries -----------------------------------------------------------------------------------
def _at(query: AtTime) -> reads.At:
    relations.check_known(query)
    as_of = query.as_of if query.as_of is not None else now_ms()
    return reads.At(as_of, query.known_at_seq, query.known_at)


def _filter(query: Walk, org_id: str) -> reads.EdgeFilter:
    return reads.EdgeFilter(
        org_id=org_id,
        at=_at(query),
        user_id=query.user_id,
        agent_id=query.agent_id,
        predicates=tuple(query.predicates or ()),
        entity_types=tuple(query.entity_types or ()),
        min_confidence=reads.millionths(query.min_confidence),
    )


def _status(row: dict[str, Any], at: reads.At) -> str:
    view = reads.relation_view(row, at)
    point = at.point
    if row["retracted_seq"] != reads.OPEN and (
        point is None or row[f"retracted_{point[0]}"] <= point[1]
    ):
        return "retracted"
    valid_to = view["valid_to"]
    return "valid" if valid_to is None or valid_to > at.as_of else "invalidated"


def _cursor(cursor: str | None) -> tuple[str, str] | None:
    key = decode_cursor(cursor, fields=2)  # the last entity's name and id
    if not key:
        return None
    norm, _, entity_id = key.partition("\x00")
    return norm, entity_id


def query_router(parts: Parts) -> Router:
    router = Router()
    store, freshness, runner = parts.store, parts.freshness, parts.runner

    def readable_org(request: Request[Any], org_id: str | None) -> str:
        target = org_id or request.caller.org_id
        authorize(request.caller, request.need, target, missing_org(target))
        return target

    async def entity_row(request: Request[Any], entity_id: str) -> dict[str, Any]:
        """The entity (as it answers now: its ``entity_id`` and ``org_id``) the caller may
        read; else not_found."""
        row = await reads.answering_as(store, entity_id)
        missing = entities.missing(entity_id)
        if row is None:
            raise missing
        authorize(request.caller, request.need, row["org_id"], missing)
        return row

    @router.handle(GetEntity)
    async def get_entity(request: Request[GetEntity]) -> Result:
        query = request.body
        authorize(request.caller, request.need, None)
        entities.check_known(query)
        seq = await freshness.wait(PROJECTION, query.after_seq)
        row = await reads.get_entity(store, query.entity_id, query.known_at_seq, query.known_at)
        missing = entities.missing(query.entity_id)
        if row is None:
            raise missing  # or not known yet then
        authorize(request.caller, request.need, row["org_id"], missing)
        return row, seq

    @router.handle(ListEntities)
    async def list_entities(request: Request[ListEntities]) -> Result:
        query = request.body
        org_id = readable_org(request, query.org_id)
        entities.check_known(query)
        after = _cursor(query.cursor)
        seq = await freshness.wait(PROJECTION, query.after_seq)
        rows = await reads.list_entities(
            store,
            org_id,
            entity_type=query.entity_type,
            name_prefix=query.name_prefix,
            user_id=query.user_id,
            agent_id=query.agent_id,
            known_seq=query.known_at_seq,
            after=after,
            limit=query.limit + 1,
            known_at=query.known_at,
        )
        point = reads.point_of(query.known_at_seq, query.known_at)
        listed = [r["entity_id"] for r in rows]
        if point is None:
            aliases = await reads.aliases_of(store, listed)
        else:  # the aliases then
            then = await reads.known_then(store, listed, point)
            aliases = {e: then[e].aliases for e in listed}
        items = [reads.entity_view(r, aliases[r["entity_id"]], []) for r in rows]

        def cursor(index: int) -> str:
            return f"{rows[index]['norm']}\x00{rows[index]['entity_id']}"

        result = page(items, query.limit, cursor, MAX_PAGE_BYTES)
        shown = [i["entity_id"] for i in result["items"]]
        if point is None:
            members = await reads.members_of(store, org_id, shown)
        else:
            members = {e: await reads.members_then(store, e, point) for e in shown}
        for item in result["items"]:
            item["members"] = members.get(item["entity_id"], [])
        return result, seq

    @router.handle(ResolveEntity)
    async def resolve_entity(request: Request[ResolveEntity]) -> Result:
        query = request.body
        org_id = readable_org(request, query.org_id)
        entities.check_known(query)
        seq = await freshness.wait(PROJECTION, query.after_seq)
        norm = entities.normalise(query.name)
        if not norm:
            raise invalid("`$.name` must hold more than white space", "$.name", "invalid_value")
        scope = (query.entity_type, query.user_id, query.agent_id)
        known_seq, known_at = query.known_at_seq, query.known_at
        exact = await reads.names_matching(store, org_id, norm, *scope, False, known_seq, known_at)
        candidates: dict[str, dict[str, Any]] = {}
        for row in exact:
            layer = "name" if row["kind"] == "name" else "alias"
            candidates.setdefault(row["entity_id"], _candidate(row, layer, 1.0))
        similar = await reads.names_like(
            store, org_id, norm, *scope, known_seq=known_seq, known_at=known_at
        )
        for row in similar:
            score = reads.similarity(norm, row["norm"])
            if score >= query.min_score and row["entity_id"] not in candidates:
                candidates[row["entity_id"]] = _candidate(row, "similar", score)
            elif (
                row["entity_id"] in candidates
                and candidates[row["entity_id"]]["layer"] == "similar"
            ):
                best = candidates[row["entity_id"]]
                if score > best["score"]:
                    candidates[row["entity_id"]] = _candidate(row, "similar", score)
        ranked = sorted(
            candidates.values(),
            key=lambda c: (_LAYERS.index(c["layer"]), -c["score"], c["entity_id"]),
        )[: query.limit]
        return _resolution(query.name, ranked), seq

    @router.handle(GraphNeighbors)
    async def neighbors(request: Request[GraphNeighbors]) -> Result:
        query = request.body
        seq = await freshness.wait(PROJECTION, query.after_seq)
        start = await entity_row(request, query.entity_id)
        f = _filter(query, start["org_id"])
        nodes, edges = await reads.neighbors(
            store, start["entity_id"], query.depth, query.limit + 1, f
        )
        truncated = len(nodes) > query.limit
        nodes = nodes[: query.limit]
        kept = {n["entity_id"] for n in nodes}
        reply = {
            "entity_id": start["entity_id"],
            "nodes": [
                {k: n[k] for k in ("entity_id", "name", "entity_type")} | {"depth": int(n["depth"])}
                for n in nodes
            ],
            "edges": [
                reads.edge_view(e, f.at)
                for e in edges
                if e["from_node"] in kept and e["to_node"] in kept
            ],
            "truncated": truncated,
        }
        return reply, seq

    @router.handle(FindGraphPath)
    async def find_path(request: Request[FindGraphPath]) -> Result:
        query = request.body
        seq = await freshness.wait(PROJECTION, query.after_seq)
        start = await entity_row(request, query.from_id)
        end = await entity_row(request, query.to_id)
        if end["org_id"] != start["org_id"]:
            raise entities.missing(query.to_id)
        f = _filter(query, start["org_id"])
        found = await reads.path(store, start["entity_id"], end["entity_id"], query.max_depth, f)
        if found is None:
            return {"found": False, "entity_ids": [], "edges": []}, seq
        nodes, hops = found
        rows = {r["relation_id"]: r for r in await reads.relations_by_id(store, hops)}
        edges = [reads.edge_view(rows[h], f.at) for h in hops if h in rows]
        return {"found": True, "entity_ids": nodes, "edges": edges}, seq

    @router.handle(GraphFacts)
    async def facts(request: Request[GraphFacts]) -> Result:
        query = request.body
        seq = await freshness.wait(PROJECTION, query.after_seq)
        entity = await entity_row(request, query.entity_id)
        at = _at(query)
        rows = await reads.facts_about(
            store, entity["entity_id"], at, entity["org_id"], query.limit
        )
        items = []
        for row in rows:
            forward = row["direction"] == 0
            names = (
                (row["from_name"], row["to_name"])
                if forward
                else (row["to_name"], row["from_name"])
            )
            view = reads.relation_view(row, at)
            items.append(
                {
                    **view,
                    "status": _status(row, at),
                    "subject_name": names[0],
                    "object_name": names[1],
                }
            )
        text = "\n".join(f"- {item['fact']}" for item in items)
        return {"entity_id": entity["entity_id"], "items": items, "text": text}, seq

    @router.handle(GraphStatsQuery)
    async def graph_stats(request: Request[GraphStatsQuery]) -> Result:
        org_id = readable_org(request, request.body.org_id)
        seq = await freshness.wait(PROJECTION, request.body.after_seq)
        return await reads.stats(store, org_id, now_ms()), seq

    @router.handle(ListPredicates)
    async def list_predicates(request: Request[ListPredicates]) -> Result:
        org_id = readable_org(request, request.body.org_id)
        seq = await freshness.wait(PROJECTION, request.body.after_seq)
        declared = {row["predicate"]: row for row in await reads.predicates(store, org_id)}
        names = sorted({*declared, *relations.SINGLE_VALUED})
        items = [
            {
                "predicate": name,
                "single_valued": bool(declared[name]["single_valued"])
                if name in declared
                else True,
                "declared": name in declared,
                "version": declared[name]["version"] if name in declared else None,
            }
            for name in names
        ]
        return {"items": items}, seq

    @router.handle(MemoryAssociations)
    async def memory_associations(request: Request[MemoryAssociations]) -> Result:
        query = request.body
        missing = memories.missing(query.memory_id)
        try:
            subject = await runner.subject_of("memory", query.memory_id)
        except NotFoundError:
            raise missing from None
        authorize(request.caller, request.need, subjects.parse(subject).org_id, missing)
        seq = await freshness.wait(PROJECTION, query.after_seq)
        rows = await reads.associations(
            store,
            query.memory_id,
            query.direction,
            query.association_type,
            query.min_strength,
            query.limit,
        )
        return {"items": rows}, seq

    return router


_LAYERS = ("name", "alias", "similar")


def _candidate(row: dict[str, Any], layer: str, score: float) -> dict[str, Any]:
    return {
        "entity_id": row["entity_id"],
        "name": row["name"],
        "entity_type": row["entity_type"],
        "matched": row["matched"],
        "layer": layer,
        "score": score,
    }


def _resolution(name: str, ranked: list[dict[str, Any]]) -> dict[str, Any]:
    """Which layer decided, in words: an exact name or alias resolves (when one entity
    holds it); similar names are only proposed."""
    decided = [c for c in ranked if c["layer"] != "similar"]
    if len({c["entity_id"] for c in decided}) == 1:
        best = decided[0]
        how = "its name" if best["layer"] == "name" else f"its alias {best['matched']!r}"
        explanation = f"{name!r} is entity {best['entity_id']} by {how}, normalised"
        return {
            "entity_id": best["entity_id"],
            "layer": best["layer"],
            "explanation": explanation,
            "candidates": ranked,
        }
    if decided:
        explanation = f"{name!r} names {len(decided)} entities exactly: choose one"
    elif ranked:
        explanation = (
            f"no entity is named {name!r}; {len(ranked)} similar names are proposed "
            "(character similarity), none is merged on its own"
        )
    else:
        explanation = f"no entity is named {name!r}, and none has a similar name"
    return {"entity_id": None, "layer": None, "explanation": explanation, "candidates": ranked}
