"""``graph.extract`` over NATS, and extraction as every memory is added (a setting:
``memory.add`` and ``memory.add_batch`` call ``extract_added_memory``).

The answer (rules, or the configured model: ``agentmem.extraction_model``) is stored as
``graph.extracted`` first, once per source, extractor, model and prompt; an answer already
in the log is used again and no extractor runs (``agentmem.domain.extraction``). Then each
entity goes through entity resolution as ``entity.create`` does it (a live entity of the
scope with that normalised name or alias, of any type; else the name's own subject in the
log, first writer wins) and each relation through ``relation.assert``'s decision, with
the source as provenance. Each commit is stored under ``<command id>:<key>``
(``CommandRunner.run_each``): sent again with its ``command_id``, an extraction cut short
finishes and writes nothing twice.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from agentmem.consumers.aggregates import Loader
from agentmem.consumers.auth import authorize
from agentmem.consumers.commands import missing_org
from agentmem.consumers.graph import decide_assertion, names_caught_up, probe
from agentmem.consumers.router import Request, Result, Router
from agentmem.domain import (
    entities,
    extraction,
    memories,
    messages,
    orgs,
    relations,
)
from agentmem.domain.aggregate import Write
from agentmem.domain.entities import CreateEntity
from agentmem.domain.extraction import (
    RULES_VERSION,
    Answer,
    ExtractGraph,
    Extractor,
    Source,
    answer_of,
    prompt_hash,
)
from agentmem.domain.extraction_rules import extract_rules
from agentmem.domain.relations import AssertRelation, Provenance
from agentmem.errors import NotFoundError
from agentmem.events import GraphExtracted
from agentmem.extraction_model import ask
from agentmem.projections import graph as reads
from agentmem.projections import messages as message_reads
from agentmem.validation import invalid

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

log = structlog.get_logger()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def memory_source(parts: Parts, request: Request[Any], memory_id: str) -> Source:
    """A live memory the caller may change, as an extraction's source; else not_found."""
    runner = parts.runner
    missing = memories.missing(memory_id)
    try:
        loaded, org_id = await runner.load_in_live_org(
            Loader(runner.cache, "", refresh=True), "memory", memory_id, memories.evolve, missing
        )
    except NotFoundError:
        raise missing from None
    memory = memories.require_memory(loaded, memory_id)
    authorize(request.caller, request.need, org_id, missing)
    if memory.state == "superseded":  # its facts would end its correction's
        raise NotFoundError(
            f"memory {memory_id} was superseded by {memory.superseded_by}: extract that one",
            {"memory_id": memory_id, "superseded_by": memory.superseded_by},
        )
    if not memory.alive(now_ms()):
        raise missing
    return Source(
        org_id=org_id,
        text=memory.content,
        memory_id=memory_id,
        user_id=memory.user_id,
        agent_id=memory.agent_id,
        session_id=memory.session_id,
        valid_from=memory.valid_from,
        valid_to=memory.valid_to,
    )


async def message_source(
    parts: Parts, request: Request[Any], org_id: str, session_id: str, message_id: str
) -> Source:
    """A message of a conversation (not redacted), as the messages projection has it once
    it has applied the whole log; else not_found."""
    authorize(request.caller, request.need, org_id, missing_org(org_id))
    await parts.freshness.wait("messages", await parts.runner.log.last_seq())
    row = await message_reads.message_of(parts.store, org_id, session_id, message_id)
    if row is None or row["redacted_at"] is not None:
        raise messages.missing_message(message_id, session_id)
    return Source(
        org_id=org_id,
        text=str(row["content"]),
        message_id=message_id,
        user_id=row["user_id"],
        agent_id=row["agent_id"],
        session_id=session_id,
        valid_from=int(row["created_at"]),
    )


async def extract(
    parts: Parts, request: Request[Any], source: Source, extractor: Extractor
) -> dict[str, Any]:
    """Extract from ``source`` (or take the stored answer) and apply it to the graph."""
    runner = parts.runner
    endpoint = parts.extraction_model
    if extractor == "model" and endpoint is None:
        raise invalid(
            "no extraction model is configured (AGENTMEM_EXTRACTION_URL and "
            "AGENTMEM_EXTRACTION_MODEL): use the rules",
            "$.extractor",
            "invalid_value",
        )
    model = endpoint.model if extractor == "model" and endpoint is not None else RULES_VERSION
    digest = prompt_hash(extractor, model, source.text)
    extraction_id = extraction.extraction_id(source, extractor, model, digest)
    subject = extraction.subject(source.org_id, extraction_id)
    stored = await runner.cache.load(subject, extraction.evolve, refresh=True)
    if stored.version > 0 and stored.state is None:
        raise NotFoundError(
            f"extraction {extraction_id} was forgotten", {"extraction_id": extraction_id}
        )
    reused = stored.state is not None
    if stored.state is not None:
        answer = answer_of(stored.state)
    elif extractor == "model" and endpoint is not None:
        answer = await ask(endpoint, source.text)
    else:
        answer = extract_rules(source.text, speaker=source.user_id is not None)
    theirs: list[GraphExtracted] = []

    async def record(loader: Loader, command_id: str) -> list[Write]:
        loaded = await loader.load(subject, extraction.evolve)
        if loaded.state is not None:
            theirs[:] = [loaded.state]  # stored meanwhile: that answer is the one
        return extraction.record(loaded, source, extractor, model, digest, answer)

    [recorded] = await runner.run_each(request, [(f"x-{extraction_id}", record)])
    if theirs:
        answer, reused = answer_of(theirs[0]), True
    seqs = [recorded[1] or 0] if recorded is not None else []
    found = await _entities(parts, request, source, answer, extraction_id, seqs)
    facts = await _relations(parts, request, source, answer, extraction_id, model, found, seqs)
    return {
        "event": "graph.extracted",
        "version": max(seqs, default=0),
        "extraction_id": extraction_id,
        "extractor": extractor,
        "model": model,
        "prompt_sha256": digest,
        "reused": reused,
        "memory_id": source.memory_id,
        "message_id": source.message_id,
        "entities": list(found.values()),
        "relations": facts,
    }


async def _entities(
    parts: Parts,
    request: Request[Any],
    source: Source,
    answer: Answer,
    extraction_id: str,
    seqs: list[int],
) -> dict[str, dict[str, Any]]:
    """Each entity of the answer as the graph's entity (resolved or created), by normalised
    name."""
    runner, org_id = parts.runner, source.org_id
    found: dict[str, dict[str, Any]] = {}
    plans = []
    if answer.entities:
        # As entity.create does: the tables hold every entity event of the log first.
        await names_caught_up(parts, org_id)
    for n, item in enumerate(answer.entities):
        norm = entities.normalise(item.name)
        known = await reads.names_matching(
            parts.store, org_id, norm, None, source.user_id, source.agent_id, exact_scope=True
        )
        if known:
            row = known[0]
            found[norm] = _entity(row["entity_id"], row["name"], row["entity_type"], False)
            continue
        command = CreateEntity(
            entity_type=item.type, name=item.name, user_id=source.user_id, agent_id=source.agent_id
        )
        plans.append((n, norm, command, _create_plan(org_id, command, norm, found)))
        found[norm] = {}  # its place, in the answer's order
    # Keyed by the entity's place in the stored answer (the same on a retry), not by its
    # name: a command id goes into a header, and a name may hold any character.
    results = await runner.run_each(
        request, [(f"e-{extraction_id}-{n}", plan) for n, _, _, plan in plans]
    )
    for (_, norm, command, _), result in zip(plans, results, strict=True):
        if result is not None:
            seqs.append(result[1] or 0)
            found[norm] = _entity(
                str(result[0]["entity_id"]), command.name, command.entity_type, True
            )
    return {norm: entity for norm, entity in found.items() if entity}


def _entity(entity_id: str, name: str, entity_type: str, created: bool) -> dict[str, Any]:
    return {"entity_id": entity_id, "name": name, "entity_type": entity_type, "created": created}


def _create_plan(org_id: str, command: CreateEntity, norm: str, found: dict[str, Any]) -> Any:
    """``entity.create``'s decision in the log: the name's subject holds an entity (found),
    or the first empty one gets it."""
    key = entities.name_key(org_id, command.entity_type, command.user_id, command.agent_id, norm)

    async def plan(loader: Loader, command_id: str) -> list[Write]:
        orgs.require_live(await loader.load(orgs.subject(org_id), orgs.evolve), org_id)
        slot, held = await probe(loader, org_id, key)
        if held and slot.state is not None:
            state = slot.state
            found[norm] = _entity(state.entity_id, state.name, state.entity_type, False)
            return []
        return entities.create(org_id, command, slot)

    return plan


async def _relations(
    parts: Parts,
    request: Request[Any],
    source: Source,
    answer: Answer,
    extraction_id: str,
    model: str,
    found: dict[str, dict[str, Any]],
    seqs: list[int],
) -> list[dict[str, Any]]:
    """Each relation of the answer, asserted as ``relation.assert`` decides it, for the
    span its source holds in the world (``Source.valid_from``)."""
    runner, now = parts.runner, now_ms()
    provenance = Provenance(
        memory_ids=[source.memory_id] if source.memory_id else [],
        message_ids=[source.message_id] if source.message_id else [],
        producer=f"graph.extract {model}",
    )
    plans, outcomes = [], []
    for n, item in enumerate(answer.relations):
        ends = (
            found.get(entities.normalise(item.subject)),
            found.get(entities.normalise(item.object)),
        )
        if ends[0] is None or ends[1] is None:
            continue
        command = AssertRelation(
            subject_id=ends[0]["entity_id"],
            predicate=item.predicate,
            object_id=ends[1]["entity_id"],
            fact=item.fact,
            confidence=item.confidence,
            source=provenance,
            valid_from=source.valid_from,
            valid_to=source.valid_to,
        )
        outcome: list[relations.Asserted] = []
        outcomes.append((command, outcome))

        def plan_for(command: AssertRelation, outcome: list[relations.Asserted]) -> Any:
            async def plan(loader: Loader, command_id: str) -> list[Write]:
                decided, _ = await decide_assertion(
                    runner, loader, request, command, now, source.session_id, extracted=True
                )
                outcome[:] = [decided]
                return decided.writes

            return plan

        plans.append((f"r-{extraction_id}-{n}", plan_for(command, outcome)))
    results = await runner.run_each(request, plans)
    facts = []
    for (command, outcome), result in zip(outcomes, results, strict=True):
        decided = outcome[0] if outcome else None
        if result is not None:
            seqs.append(result[1] or 0)
            relation_id = str(result[0]["relation_id"])
            fact = str(result[0]["fact"])
        elif decided is not None and decided.existing is not None:
            relation_id, fact = decided.existing, command.fact or ""
        else:
            continue
        facts.append(
            {
                "relation_id": relation_id,
                "subject_id": command.subject_id,
                "predicate": command.predicate,
                "object_id": command.object_id,
                "fact": fact,
                "confidence": command.confidence,
                "deduplicated": result is None,
                "invalidated": list(decided.invalidated) if decided and result else [],
            }
        )
    return facts


async def extract_added_memory(parts: Parts, request: Request[Any], memory_id: str) -> int:
    """Extraction as a memory is added (``AGENTMEM_EXTRACT_ON_ADD``), with the rules: the
    last sequence it appended (0: none), which the add's reply ``seq`` covers, so that a
    read after it sees the graph too. The memory is stored whatever happens here: a
    failure is logged, and ``graph.extract`` does it again."""
    try:
        source = await memory_source(parts, request, memory_id)
        reply = await extract(parts, request, source, "rules")
    except Exception as exc:  # the memory's add has succeeded: never fail it now
        log.warning("extraction on add failed", memory_id=memory_id, error=repr(exc))
        return 0
    return int(reply["version"])


def command_router(parts: Parts) -> Router:
    router = Router()

    @router.handle(ExtractGraph)
    async def extract_graph(request: Request[ExtractGraph]) -> Result:
        command = request.body
        extraction.check_source(command)
        if command.memory_id is not None:
            source = await memory_source(parts, request, command.memory_id)
        else:
            assert command.session_id is not None
            assert command.message_id is not None
            org_id = command.org_id or request.caller.org_id
            source = await message_source(
                parts, request, org_id, command.session_id, command.message_id
            )
        reply = await extract(parts, request, source, command.extractor)
        return reply, (reply["version"] or None)

    return router
