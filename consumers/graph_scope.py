"""Deleting every entity of a scope (with its relations): what ``entity.delete_scope`` does,
and what ``memory.delete_scope`` and ``user.delete`` do to the knowledge graph after their
own deletions, so that a deleted scope or user leaves no entity, name or relation behind.

The scope's entities are found in the graph projection once it has applied the whole log,
then deleted one commit each (``entity.deleted``, ``scope_deletion``), not atomically: each
is stored under ``<command id>:<entity id>``, so the command sent again with its
``command_id`` finishes the work and writes nothing twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentmem.consumers.aggregates import Loader
from agentmem.consumers.router import Request
from agentmem.domain import entities
from agentmem.domain.aggregate import Write
from agentmem.projections import graph as reads

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

PROJECTION = "graph"
SCOPE_PAGE = 500  # entities listed and deleted at a time


async def delete_entities_of_scope(
    parts: Parts,
    request: Request[Any],
    org_id: str,
    user_id: str | None,
    agent_id: str | None,
) -> tuple[int, int]:
    """Delete the live entities of a scope (every id given equal; at least one given):
    how many were deleted, and the last deletion's log sequence (0: none)."""
    entities.check_scope(user_id, agent_id)
    runner, store = parts.runner, parts.store
    await parts.freshness.wait(PROJECTION, await runner.log.last_seq())

    def plan_for(entity_id: str) -> Any:
        async def plan(loader: Loader, command_id: str) -> list[Write]:
            loaded = await loader.load(entities.subject(org_id, entity_id), entities.evolve)
            return entities.delete_in_scope(loaded, entity_id)

        return plan

    return await runner.run_pages(
        request,
        lambda after: reads.scope_entity_ids(store, org_id, user_id, agent_id, after, SCOPE_PAGE),
        plan_for,
    )
