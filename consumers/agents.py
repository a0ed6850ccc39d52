"""Agents over NATS: the command handlers (plans for ``CommandRunner``) and the queries.

Commands name an agent by id only; the log finds its subject, and so its organization, from
the id (``CommandRunner.subject_of``). Another organization's agent is answered exactly as a
missing one. Writes need the ``member`` role, deletion ``org_admin``, reads ``reader``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentmem import ids, subjects
from agentmem.commands import (
    ArchiveAgent,
    CreateAgent,
    DeleteAgent,
    PatchAgentState,
    SetAgentState,
    UnarchiveAgent,
    UpdateAgent,
)
from agentmem.consumers.aggregates import Loader
from agentmem.consumers.auth import authorize
from agentmem.consumers.commands import CommandRunner, missing_org
from agentmem.consumers.queries import decode_cursor, encoded_page, readable
from agentmem.consumers.router import Request, Result, Router
from agentmem.domain import agents, orgs
from agentmem.domain.access import Need
from agentmem.domain.aggregate import Loaded, Write
from agentmem.projections import agents as agents_read
from agentmem.queries import GetAgent, GetAgentState, ListAgents
from agentmem.store import Row

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

PROJECTION = "agents"


# Commands ----------------------------------------------------------------------------------
async def load_agent(
    runner: CommandRunner, loader: Loader, request: Request[Any], agent_id: str, need: Need
) -> Loaded[agents.Agent]:
    """A live agent of a live organization that the caller may act on with ``need``; else
    not_found (for another organization's agent too) or forbidden."""
    agent, org_id = await runner.load_in_live_org(
        loader, "agent", agent_id, agents.evolve, agents.missing(agent_id)
    )
    agents.require_live(agent, agent_id)
    authorize(request.caller, need, org_id, agents.missing(agent_id))
    return agent


def command_router(parts: Parts) -> Router:
    router = Router()
    runner = parts.runner

    @router.handle(CreateAgent)
    async def create_agent(request: Request[CreateAgent]) -> Result:
        command = request.body
        org_id = command.org_id or request.caller.org_id
        authorize(request.caller, request.need, org_id, missing_org(org_id))
        agent_id = command.agent_id or ids.new_id()
        subject = agents.subject(org_id, agent_id)

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            org = await loader.load(orgs.subject(org_id), orgs.evolve)
            orgs.require_live(org, org_id)
            loaded = await runner.new_subject(
                loader,
                "agent",
                agent_id,
                subject,
                agents.evolve,
                chosen=command.agent_id is not None,
            )
            return agents.create(loaded, command, org_id, agent_id)

        return await runner.run(request, plan)

    @router.handle(UpdateAgent)
    async def update_agent(request: Request[UpdateAgent]) -> Result:
        async def plan(loader: Loader, command_id: str) -> list[Write]:
            agent = await load_agent(runner, loader, request, request.body.agent_id, request.need)
            return agents.update(agent, request.body)

        return await runner.run(request, plan)

    @router.handle(ArchiveAgent)
    async def archive_agent(request: Request[ArchiveAgent]) -> Result:
        async def plan(loader: Loader, command_id: str) -> list[Write]:
            agent = await load_agent(runner, loader, request, request.body.agent_id, request.need)
            return agents.archive(agent, await load_state(loader, agent), request.body)

        return await runner.run(request, plan)

    @router.handle(UnarchiveAgent)
    async def unarchive_agent(request: Request[UnarchiveAgent]) -> Result:
        async def plan(loader: Loader, command_id: str) -> list[Write]:
            agent = await load_agent(runner, loader, request, request.body.agent_id, request.need)
            return agents.unarchive(agent, request.body)

        return await runner.run(request, plan)

    async def load_state(
        loader: Loader, agent: Loaded[agents.Agent]
    ) -> Loaded[agents.StateDocument]:
        org_id, _, agent_id = subjects.parse(agent.subject)
        return await loader.load(agents.state_subject(org_id, agent_id), agents.evolve_state)

    @router.handle(DeleteAgent)
    async def delete_agent(request: Request[DeleteAgent]) -> Result:
        async def plan(loader: Loader, command_id: str) -> list[Write]:
            agent = await load_agent(runner, loader, request, request.body.agent_id, request.need)
            return agents.delete(agent, await load_state(loader, agent), request.body)

        return await runner.run(request, plan)

    @router.handle(SetAgentState)
    async def set_state(request: Request[SetAgentState]) -> Result:
        async def plan(loader: Loader, command_id: str) -> list[Write]:
            agent = await load_agent(runner, loader, request, request.body.agent_id, request.need)
            return agents.set_state(agent, await load_state(loader, agent), request.body)

        return await runner.run(request, plan)

    @router.handle(PatchAgentState)
    async def patch_state(request: Request[PatchAgentState]) -> Result:
        async def plan(loader: Loader, command_id: str) -> list[Write]:
            agent = await load_agent(runner, loader, request, request.body.agent_id, request.need)
            return agents.patch_state(agent, await load_state(loader, agent), request.body)

        return await runner.run(request, plan)

    return router


# Queries -----------------------------------------------------------------------------------
def query_router(parts: Parts) -> Router:
    router = Router()
    store, freshness = parts.store, parts.freshness

    async def agent_row(request: Request[Any], agent_id: str) -> Row:
        row = await agents_read.get_agent(store, agent_id)
        return readable(request, row, agents.missing(agent_id))

    @router.handle(GetAgent)
    async def get_agent(request: Request[GetAgent]) -> Result:
        authorize(request.caller, request.need, None)
        seq = await freshness.wait(PROJECTION, request.body.after_seq)
        return await agent_row(request, request.body.agent_id), seq

    @router.handle(GetAgentState)
    async def get_state(request: Request[GetAgentState]) -> Result:
        authorize(request.caller, request.need, None)
        seq = await freshness.wait(PROJECTION, request.body.after_seq)
        agent_id = request.body.agent_id
        await agent_row(request, agent_id)
        state, version = await agents_read.get_state(store, agent_id)
        return {"agent_id": agent_id, "state": state, "version": version}, seq

    @router.handle(ListAgents)
    async def list_agents(request: Request[ListAgents]) -> Result:
        query = request.body
        org_id = query.org_id or request.caller.org_id
        authorize(
            request.caller,
            request.need,
            org_id,
            missing_org(org_id),
        )
        seq = await freshness.wait(PROJECTION, query.after_seq)
        rows = await agents_read.list_agents(
            store,
            org_id,
            after=decode_cursor(query.cursor),
            limit=query.limit + 1,
            tag=query.tag,
            name_prefix=query.name_prefix,
            include_archived=query.include_archived,
        )
        return encoded_page(rows, query.limit, "agent_id"), seq

    return router
