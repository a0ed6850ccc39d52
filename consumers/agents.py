"""Agents over NATS: the command handlers (plans for ``CommandRunner``) and the queries.

Commands name an agent by id only; the log finds its subject, and so its organization, from
the id (``CommandRunner.subject_of``). Another organization's agent is answered exactly as a
missing one. Writes need the ``member`` role, deletion ``org_admin``, reads ``reader``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

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
from agentmem.domain import agents, orgs
from agentmem.domain.access import Need
from agentmem.domain.aggregate import Loaded, Write
from agentmem.errors import NotFoundError
from agentmem.queries import GetAgent, GetAgentState, ListAgents
from consumers.aggregates import Loader
from consumers.auth import authorize
from consumers.commands import CommandRunner, missing_org
from consumers.queries import MAX_PAGE_BYTES, _hide_other_org, decode_cursor, page
from consumers.router import Request, Result, Router

if TYPE_CHECKING:
    from consumers.parts import Parts

PROJECTION = "agents"

_COLUMNS = (
    "agent_id",
    "org_id",
    "name",
    "description",
    "persona",
    "model",
    "metadata",
    "tags",
    "archived",
    "created_at",
    "updated_at",
    "version",
)
_AGENT_COLUMNS = ", ".join(_COLUMNS)
_LISTED_COLUMNS = ", ".join(f"a.{c}" for c in _COLUMNS)


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
            return agents.archive(agent, request.body)

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
def agent_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        "model": msgspec.json.decode(row["model"]),
        "metadata": msgspec.json.decode(row["metadata"]),
        "tags": msgspec.json.decode(row["tags"]),
        "archived": bool(row["archived"]),
    }


def prefix_bound(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix``, in code point
    order (which is UTF-8 byte order, the order of both stores' text columns); None when
    there is none. ``name >= prefix AND name < bound`` is then a prefix match that uses an
    index and gives ``%`` and ``_`` no special meaning, as LIKE would."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates are not characters: skip past them
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


def query_router(parts: Parts) -> Router:
    router = Router()
    store, freshness = parts.store, parts.freshness

    async def agent_row(request: Request[Any], agent_id: str) -> dict[str, Any]:
        row = await store.fetch_one(
            f"SELECT {_AGENT_COLUMNS} FROM agents WHERE agent_id = ?", agent_id
        )
        _hide_other_org(request, row, f"agent {agent_id} does not exist")
        assert row is not None
        return row

    @router.handle(GetAgent)
    async def get_agent(request: Request[GetAgent]) -> Result:
        authorize(request.caller, request.need, None)
        seq = await freshness.wait(PROJECTION, request.body.after_seq)
        return agent_view(await agent_row(request, request.body.agent_id)), seq

    @router.handle(GetAgentState)
    async def get_state(request: Request[GetAgentState]) -> Result:
        authorize(request.caller, request.need, None)
        seq = await freshness.wait(PROJECTION, request.body.after_seq)
        agent_id = request.body.agent_id
        await agent_row(request, agent_id)
        row = await store.fetch_one(
            "SELECT state, version FROM agent_states WHERE agent_id = ?", agent_id
        )
        if row is None:  # never set: the empty document at version 0
            return {"agent_id": agent_id, "state": {}, "version": 0}, seq
        state = msgspec.json.decode(row["state"])
        return {"agent_id": agent_id, "state": state, "version": row["version"]}, seq

    @router.handle(ListAgents)
    async def list_agents(request: Request[ListAgents]) -> Result:
        query = request.body
        org_id = query.org_id or request.caller.org_id
        authorize(
            request.caller,
            request.need,
            org_id,
            NotFoundError(f"organization {org_id} does not exist"),
        )
        seq = await freshness.wait(PROJECTION, query.after_seq)
        cursor = decode_cursor(query.cursor)
        if query.tag is None:
            source, key = "agents a", "a.agent_id"
            where, args = ["a.org_id = ?", "a.agent_id > ?"], [org_id, cursor]
        else:
            # Along the tag's index, in agent_id order from the cursor: a page reads about
            # a page of rows, however many agents carry the tag.
            source = "agent_tags t JOIN agents a ON a.agent_id = t.agent_id AND a.org_id = t.org_id"
            key = "t.agent_id"
            where = ["t.org_id = ?", "t.tag = ?", "t.agent_id > ?"]
            args = [org_id, query.tag, cursor]
        if not query.include_archived:
            where.append("a.archived = 0")
        if query.name_prefix is not None:
            where.append("a.name >= ?")
            args.append(query.name_prefix)
            bound = prefix_bound(query.name_prefix)
            if bound is not None:
                where.append("a.name < ?")
                args.append(bound)
        rows = await store.fetch_all(
            f"SELECT {_LISTED_COLUMNS} FROM {source} WHERE {' AND '.join(where)} "
            f"ORDER BY {key} LIMIT ?",
            *args,
            query.limit + 1,
        )
        return page([agent_view(r) for r in rows], query.limit, "agent_id", MAX_PAGE_BYTES), seq

    return router
