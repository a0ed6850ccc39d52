"""Working memory over NATS: put, remove and clear a session's items, and read them.

A session's working memory is one subject of its organization (``agentmem.domain.working``):
the organization comes from the request (the caller's by default), never from the session
id, so another organization's session of the same id is another session. Writes need
``member``, reads ``reader``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agentmem.consumers.aggregates import Loader
from agentmem.consumers.auth import authorize
from agentmem.consumers.commands import missing_org
from agentmem.consumers.router import Request, Result, Router
from agentmem.domain import orgs, working
from agentmem.domain.aggregate import Loaded, Write
from agentmem.domain.working import (
    ClearWorkingMemory,
    GetWorkingMemory,
    PutWorkingItem,
    RemoveWorkingItem,
)
from agentmem.projections import working as reads

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

PROJECTION = "working"


def org_of(request: Request[Any]) -> str:
    """The organization a request acts in, if the caller may (another's: not_found)."""
    org_id = request.body.org_id or request.caller.org_id
    authorize(request.caller, request.need, org_id, missing_org(org_id))
    return str(org_id)


def command_router(parts: Parts) -> Router:
    router = Router()
    runner = parts.runner

    def on_session(
        decide: Callable[[Loaded[working.Session], Any], list[Write]],
    ) -> Callable[[Request[Any]], Awaitable[Result]]:
        """The handler of a command on one session's working memory."""

        async def handle(request: Request[Any]) -> Result:
            org_id = org_of(request)
            subject = working.subject(org_id, request.body.session_id)

            async def plan(loader: Loader, command_id: str) -> list[Write]:
                orgs.require_live(await loader.load(orgs.subject(org_id), orgs.evolve), org_id)
                return decide(await loader.load(subject, working.evolve), request.body)

            return await runner.run(request, plan)

        return handle

    router.handle(PutWorkingItem)(on_session(working.put))
    router.handle(RemoveWorkingItem)(on_session(working.remove))
    router.handle(ClearWorkingMemory)(on_session(working.clear))
    return router


def query_router(parts: Parts) -> Router:
    router = Router()
    store, freshness = parts.store, parts.freshness

    @router.handle(GetWorkingMemory)
    async def get_working(request: Request[GetWorkingMemory]) -> Result:
        query = request.body
        org_id = org_of(request)
        seq = await freshness.wait(PROJECTION, query.after_seq)
        # The service's clock against the log's recorded times: the caller's has no say.
        now = time.time_ns() // 1_000_000
        rows = await reads.live_items(
            store, org_id, query.session_id, now, query.min_priority, query.limit
        )
        return {"items": [reads.item_view(row) for row in rows]}, seq

    return router
