"""``context.assemble`` over NATS: the candidates of each section read from the projections,
then ``agentmem.domain.context.fit`` keeps what the budget holds.

Every read is scoped to the organization asked for (the caller's by default), and within it
to the agent, user and session given: the agent must be one of that organization (another
organization's is answered not_found, as a missing one), and the blocks, working memory,
memories and messages are read by organization and id, so another organization's session or
user of the same id contributes nothing. The memories come from ``memory.search``'s own
search (``agentmem.consumers.memories.search``), asked for live memories only: superseded,
archived and expired ones never reach a prompt.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from agentmem.consumers.auth import authorize
from agentmem.consumers.commands import missing_org
from agentmem.consumers.memories import search as search_memories
from agentmem.consumers.router import Request, Result, Router
from agentmem.domain import agents, memories
from agentmem.domain.context import AssembleContext, fit, named_in
from agentmem.domain.memories import SearchMemories
from agentmem.projections import agents as agent_reads
from agentmem.projections import blocks as block_reads
from agentmem.projections import graph as graph_reads
from agentmem.projections import messages as message_reads
from agentmem.projections import working as working_reads
from agentmem.replies import ContextItem
from agentmem.tokens import TokenCounter, counter

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

PROJECTIONS = ("agents", "blocks", "working", "memories", "graph", "messages")
MAX_NAMED = 200  # the query's word runs looked up as names (a long query's first ones)
MAX_BLOCKS = 500  # an agent's blocks and a user's, each: far more than any prompt holds


def query_router(parts: Parts) -> Router:
    router = Router()
    store, freshness = parts.store, parts.freshness

    @router.handle(AssembleContext)
    async def assemble(request: Request[AssembleContext]) -> Result:
        query = request.body
        org_id = query.org_id or request.caller.org_id
        authorize(request.caller, request.need, org_id, missing_org(org_id))
        tokens = counter(query.counter)
        # The answer is read at the least of the checkpoints: every part covers it.
        seq = min([await freshness.wait(name, query.after_seq) for name in PROJECTIONS])
        agent = await agent_reads.get_agent(store, query.agent_id)
        if agent is None or agent["org_id"] != org_id:
            raise agents.missing(query.agent_id)
        asked = memory_query(query, org_id)
        found, search_seq = await search_memories(parts, asked, memories.filter_of(asked, org_id))
        sections = [
            persona(agent, tokens),
            await core_blocks(parts, query, org_id, tokens),
            await working_items(parts, query, org_id, tokens),
            [memory_item(view, tokens) for view in found["items"]],
            await facts(parts, query, org_id, tokens),
            await tail(parts, query, org_id, tokens),
        ]
        kept, left_out = fit(sections, query.max_tokens)
        reply = {
            "items": kept,
            "left_out": left_out,
            "tokens": sum(kept_item.tokens for kept_item in kept),
            "max_tokens": query.max_tokens,
            "counter": tokens.name,
            "memory_search": {k: v for k, v in found.items() if k != "items"},
        }
        return reply, min(seq, search_seq if search_seq is not None else seq)

    return router


def memory_query(query: AssembleContext, org_id: str) -> SearchMemories:
    """The ``memory.search`` that finds the memories: the user's when a user is given, else
    the agent's; live ones only (so never superseded, archived or expired)."""
    return SearchMemories(
        org_id=org_id,
        text=query.query,
        limit=query.memories,
        states=["live"],
        mode=query.mode,
        min_score=query.min_score,
        after_seq=query.after_seq,
        user_id=query.user_id,
        agent_id=query.agent_id if query.user_id is None else None,
    )


def item(tokens: TokenCounter, **fields: Any) -> ContextItem:
    """An item whose ``tokens`` is the counter's count of its ``text``: the one place an
    item's cost is counted."""
    return ContextItem(**fields, tokens=tokens.count(fields["text"]))


def persona(agent: dict[str, Any], tokens: TokenCounter) -> list[ContextItem]:
    text = agent["persona"]
    if not text:
        return []
    return [
        item(
            tokens,
            section="persona",
            id=agent["agent_id"],
            type="persona",
            text=text,
            created_at=agent["created_at"],
            updated_at=agent["updated_at"],
        )
    ]


async def core_blocks(
    parts: Parts, query: AssembleContext, org_id: str, tokens: TokenCounter
) -> list[ContextItem]:
    """The agent's blocks (its own and those attached to it), then the user's, by label;
    a user's block attached to the agent is the agent's, and comes once."""
    rows = await block_reads.agent_blocks(parts.store, org_id, query.agent_id, "", MAX_BLOCKS)
    if query.user_id is not None:
        seen = {row["block_id"] for row in rows}
        users = await block_reads.user_blocks(parts.store, org_id, query.user_id, "", MAX_BLOCKS)
        rows += [row for row in users if row["block_id"] not in seen]
    return [
        item(
            tokens,
            section="block",
            id=row["block_id"],
            type="core",
            label=row["label"],
            text=row["content"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )
        for row in rows
        if row["content"]
    ]


async def working_items(
    parts: Parts, query: AssembleContext, org_id: str, tokens: TokenCounter
) -> list[ContextItem]:
    if query.session_id is None:
        return []
    now = time.time_ns() // 1_000_000  # the service's clock, as working.get
    rows = await working_reads.live_items(
        parts.store, org_id, query.session_id, now, None, query.working_items
    )
    return [
        item(
            tokens,
            section="working",
            id=row["item_key"],
            type="working",
            text=row["content"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
        )
        for row in rows
    ]


def memory_item(view: dict[str, Any], tokens: TokenCounter) -> ContextItem:
    return item(
        tokens,
        section="memory",
        id=view["memory_id"],
        type=view["memory_type"],
        text=view["content"],
        created_at=view["created_at"],
        updated_at=view["updated_at"],
        valid_from=view["valid_from"],
        valid_to=view["valid_to"],
        expires_at=view["expires_at"],
        score=view.get("score", view.get("rank")),
    )


async def facts(
    parts: Parts, query: AssembleContext, org_id: str, tokens: TokenCounter
) -> list[ContextItem]:
    """The valid facts (now) about the entities the query names, by a name or an alias, in
    the scope asked: entities and relations of the organization's own scope, and of the
    user's and the agent's, never another's. Each relation once, at most ``query.facts``."""
    names = named_in(query.query)[:MAX_NAMED]
    named = await graph_reads.entities_named(
        parts.store, org_id, names, query.user_id, query.agent_id
    )
    at = graph_reads.At(time.time_ns() // 1_000_000)
    items: dict[str, ContextItem] = {}
    for entity_id in named:
        rows = await graph_reads.facts_about(
            parts.store, entity_id, at, org_id, query.facts, (query.user_id, query.agent_id)
        )
        for row in rows:
            if len(items) >= query.facts:
                break
            items.setdefault(
                row["relation_id"],
                item(
                    tokens,
                    section="fact",
                    id=row["relation_id"],
                    type=row["predicate"],
                    text=row["fact"],
                    created_at=row["recorded_at"],
                    valid_from=row["valid_from"],
                    valid_to=None if row["valid_to"] == graph_reads.OPEN else row["valid_to"],
                    score=row["confidence"] / graph_reads.SCALE,
                ),
            )
    return list(items.values())


async def tail(
    parts: Parts, query: AssembleContext, org_id: str, tokens: TokenCounter
) -> list[ContextItem]:
    """The conversation's last messages, newest first (``fit`` takes them in that order);
    redacted ones have nothing to say and are skipped."""
    if query.session_id is None:
        return []
    rows = await message_reads.last_messages(parts.store, org_id, query.session_id, query.messages)
    return [
        item(
            tokens,
            section="message",
            id=row["message_id"],
            type=row["role"],
            text=row["content"],
            created_at=row["created_at"],
            position=row["position"],
        )
        for row in rows
        if not row["redacted"] and row["content"]
    ]
