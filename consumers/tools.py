"""Tools over NATS: the command handlers (plans for ``CommandRunner``) and the queries.

A tool's name is unique within its organization; the log decides it through the name's
reservation subject, written in the same atomic batch as the tool (``domain/tools.py``).
Writes need the ``member`` role, deletion ``org_admin``, reads ``reader``; another
organization's tool is answered exactly as a missing one.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from agentmem import ids, subjects
from agentmem.commands import DeleteTool, RegisterTool, UpdateTool
from agentmem.consumers.aggregates import Loader
from agentmem.consumers.auth import authorize
from agentmem.consumers.commands import CommandRunner, missing_org
from agentmem.consumers.queries import decode_cursor, encoded_page, readable
from agentmem.consumers.router import Request, Result, Router
from agentmem.domain import orgs, tools
from agentmem.domain.access import Need
from agentmem.domain.aggregate import Loaded, Write
from agentmem.errors import NotFoundError, UnavailableError
from agentmem.projections import tools as tools_read
from agentmem.queries import GetTool, ListTools
from agentmem.validation import invalid

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

PROJECTION = "tools"


# The JSON Schema check of a tool's parameters ------------------------------------------
# ``tools.check_schema`` costs up to ~0.45 s of CPU for the costliest schema that the caps in
# domain/tools.py let through (~0.2 ms per subschema), so it never runs on the event loop.
# One thread per process runs these checks, one at a time, so a flood of them costs at most
# that one thread. While a check runs the loop still turns, only slower: each time it wakes
# it waits for the GIL, a switch interval (5 ms) at most. Each check has a time limit: past
# it the answer is `invalid` and the check finishes unheeded (a thread cannot be stopped; the
# caps bound it); one still queued then is dropped unrun and answered `unavailable`.
SCHEMA_CHECK_TIMEOUT_S = 2.0
_schema_checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentmem-schema-check")


async def check_parameters(
    parameters: dict[str, Any], timeout: float = SCHEMA_CHECK_TIMEOUT_S
) -> None:
    """Raise ``invalid`` unless ``parameters`` is a JSON Schema of an object, holding the event
    loop for the bounded shape check only (~1 ms at most; see domain/tools.py)."""
    tools.check_parameters_shape(parameters)
    started = threading.Event()

    def check() -> None:
        started.set()
        tools.check_schema(parameters)

    checking = asyncio.get_running_loop().run_in_executor(_schema_checker, check)
    try:
        await asyncio.wait_for(checking, timeout)
    except TimeoutError:
        if not started.is_set():
            raise UnavailableError(
                "too many tool schemas are being checked at once; retry",
                {"timeout_s": timeout},
            ) from None
        raise invalid(
            f"parameters is a schema too complex to check within {timeout} s",
            "$.parameters",
            "too_large",
            timeout_s=timeout,
        ) from None


# Commands ----------------------------------------------------------------------------------
async def load_tool(
    runner: CommandRunner, loader: Loader, request: Request[Any], tool_id: str, need: Need
) -> Loaded[tools.Tool]:
    """A live tool of a live organization that the caller may act on with ``need``; else
    not_found (for another organization's tool too) or forbidden."""
    tool, org_id = await runner.load_in_live_org(
        loader, "tool", tool_id, tools.evolve, tools.missing(tool_id)
    )
    tools.require_live(tool, tool_id)
    authorize(request.caller, need, org_id, tools.missing(tool_id))
    return tool


async def load_reservation(loader: Loader, org_id: str, name: str) -> Loaded[tools.NameReservation]:
    return await loader.load(subjects.tool_name_reservation(org_id, name), tools.evolve_reservation)


def command_router(parts: Parts) -> Router:
    router = Router()
    runner = parts.runner

    @router.handle(RegisterTool)
    async def register_tool(request: Request[RegisterTool]) -> Result:
        command = request.body
        org_id = command.org_id or request.caller.org_id
        authorize(request.caller, request.need, org_id, missing_org(org_id))
        tool_id = command.tool_id or ids.new_id()
        subject = tools.subject(org_id, tool_id)
        checked = False  # the schema, once: a plan runs again after a concurrent write

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            nonlocal checked
            org = await loader.load(orgs.subject(org_id), orgs.evolve)
            orgs.require_live(org, org_id)
            loaded = await runner.new_subject(
                loader, "tool", tool_id, subject, tools.evolve, chosen=command.tool_id is not None
            )
            reservation = await load_reservation(loader, org_id, command.name)
            if not checked:
                await check_parameters(command.parameters)
                checked = True
            return tools.register(
                loaded, command, org_id=org_id, tool_id=tool_id, reservation=reservation
            )

        return await runner.run(request, plan)

    @router.handle(UpdateTool)
    async def update_tool(request: Request[UpdateTool]) -> Result:
        command = request.body
        checked = command.parameters is None

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            nonlocal checked
            tool = await load_tool(runner, loader, request, command.tool_id, request.need)
            assert tool.state is not None
            if not checked:
                assert command.parameters is not None
                await check_parameters(command.parameters)
                checked = True
            org_id = tool.state.org_id
            new_reservation = old_reservation = None
            if command.name is not None and command.name != tool.state.name:
                new_reservation = await load_reservation(loader, org_id, command.name)
                old_reservation = await load_reservation(loader, org_id, tool.state.name)
            return tools.update(
                tool,
                command,
                new_reservation=new_reservation,
                old_reservation=old_reservation,
            )

        return await runner.run(request, plan)

    @router.handle(DeleteTool)
    async def delete_tool(request: Request[DeleteTool]) -> Result:
        command = request.body

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            tool = await load_tool(runner, loader, request, command.tool_id, request.need)
            assert tool.state is not None
            reservation = await load_reservation(loader, tool.state.org_id, tool.state.name)
            return tools.delete(tool, command, reservation)

        return await runner.run(request, plan)

    return router


# Queries -----------------------------------------------------------------------------------
def query_router(parts: Parts) -> Router:
    router = Router()
    store, freshness = parts.store, parts.freshness

    @router.handle(GetTool)
    async def get_tool(request: Request[GetTool]) -> Result:
        query = request.body
        if (query.tool_id is None) == (query.name is None):
            raise invalid(
                "name the tool by exactly one of tool_id and name",
                "$",
                "missing_field" if query.tool_id is None else "invalid_value",
                tool_id=query.tool_id,
                name=query.name,
            )
        if query.tool_id is not None:
            missing = tools.missing(query.tool_id)
            authorize(request.caller, request.need, query.org_id, missing)
            seq = await freshness.wait(PROJECTION, query.after_seq)
            row = await tools_read.get_tool(store, query.tool_id)
            if row is not None and query.org_id is not None and row["org_id"] != query.org_id:
                row = None
        else:
            org_id = query.org_id or request.caller.org_id
            missing = NotFoundError(
                f"no tool is named {query.name!r} in organization {org_id}",
                {"name": query.name, "org_id": org_id},
            )
            authorize(request.caller, request.need, org_id, missing)
            seq = await freshness.wait(PROJECTION, query.after_seq)
            assert query.name is not None
            row = await tools_read.get_tool_by_name(store, org_id, query.name)
        return readable(request, row, missing), seq

    @router.handle(ListTools)
    async def list_tools(request: Request[ListTools]) -> Result:
        query = request.body
        org_id = query.org_id or request.caller.org_id
        authorize(request.caller, request.need, org_id, missing_org(org_id))
        seq = await freshness.wait(PROJECTION, query.after_seq)
        rows = await tools_read.list_tools(
            store,
            org_id,
            after=decode_cursor(query.cursor),
            limit=query.limit + 1,
            tags_all=query.tags_all or [],
            tags_any=query.tags_any or [],
        )
        return encoded_page(rows, query.limit, "tool_id"), seq

    return router
