"""Core memory blocks over NATS: the command handlers (plans for ``CommandRunner``) and the
queries.

A block is named by its id alone; the log finds its subject, and so its organization. An
agent a block is owned by or attached to must be a live agent of the block's organization:
another organization's agent is answered as a missing one, as is another organization's
block, on every subject. Writes need ``member``, reads ``reader``. How labels stay unique
for each agent and user: ``agentmem.domain.blocks``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agentmem import ids, subjects
from agentmem.consumers.aggregates import Loader
from agentmem.consumers.auth import authorize
from agentmem.consumers.commands import CommandRunner, missing_org
from agentmem.consumers.history import commits_page, entry
from agentmem.consumers.queries import (
    cursor_number,
    decode_cursor,
    encode_cursor,
    encoded_page,
    readable,
)
from agentmem.consumers.router import Request, Result, Router
from agentmem.domain import agents, blocks, orgs
from agentmem.domain.aggregate import Loaded, Write
from agentmem.domain.blocks import (
    AppendToBlock,
    AttachBlock,
    Block,
    BlockHistory,
    CreateBlock,
    DeleteBlock,
    DetachBlock,
    GetBlock,
    ListBlocks,
    OwnerKind,
    ReplaceInBlock,
    SetBlock,
)
from agentmem.errors import NotFoundError
from agentmem.projections import blocks as reads

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

PROJECTION = "blocks"


async def load_agent_in(
    runner: CommandRunner, loader: Loader, org_id: str, agent_id: str
) -> agents.Agent:
    """A live agent of ``org_id``; another organization's agent is answered as a missing
    one, so a block never reaches across organizations. Read from the log's leader: the
    block's writes do not check the agent's version, so a deletion another process made a
    moment ago would not stop them on a stale cache."""
    subject = await runner.subject_of("agent", agent_id)
    if subjects.parse(subject).org_id != org_id:
        raise agents.missing(agent_id)
    return agents.require_live(await loader.current(subject, agents.evolve), agent_id)


async def load_block(
    runner: CommandRunner, loader: Loader, request: Request[Any], block_id: str
) -> tuple[Loaded[Block], str]:
    """A live block of a live organization that the caller may change (with the
    operation's need), and its organization; else not_found (another organization's too)."""
    missing = blocks.missing(block_id)
    loaded, org_id = await runner.load_in_live_org(
        loader, "block", block_id, blocks.evolve, missing
    )
    blocks.require_live(loaded, block_id)
    authorize(request.caller, request.need, org_id, missing)
    return loaded, org_id


def command_router(parts: Parts) -> Router:
    router = Router()
    runner = parts.runner

    async def hold(
        loader: Loader, org_id: str, kind: OwnerKind, owner_id: str, label: str
    ) -> Loaded[blocks.LabelHold]:
        """A label's reservation for an agent or user. Free (no state) when the block that
        held it was forgotten: its events fold into no block any more, and nothing released
        the label (a deletion does), which stayed taken for good."""
        held = await loader.load(
            blocks.label_subject(org_id, kind, owner_id, label), blocks.evolve_label
        )
        if held.state is not None:
            holder = await loader.load(blocks.subject(org_id, held.state.block_id), blocks.evolve)
            if holder.state is None:
                return replace(held, state=None)
        return held

    @router.handle(CreateBlock)
    async def create_block(request: Request[CreateBlock]) -> Result:
        command = request.body
        org_id = command.org_id or request.caller.org_id
        authorize(request.caller, request.need, org_id, missing_org(org_id))
        blocks.check_owner(command.agent_id, command.user_id)
        block_id = command.block_id or ids.new_id()

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            orgs.require_live(await loader.load(orgs.subject(org_id), orgs.evolve), org_id)
            if command.agent_id is not None:
                # The label first: a retry is recognised there (its reservation holds the
                # command id) even after the agent was deleted.
                label = await hold(loader, org_id, "agent", command.agent_id, command.label)
                await load_agent_in(runner, loader, org_id, command.agent_id)
            else:
                label = await hold(loader, org_id, "user", command.user_id or "", command.label)
            loaded = await runner.new_subject(
                loader,
                "block",
                block_id,
                blocks.subject(org_id, block_id),
                blocks.evolve,
                chosen=command.block_id is not None,
            )
            return blocks.create(loaded, command, org_id=org_id, block_id=block_id, hold=label)

        return await runner.run(request, plan)

    def on_one_block(
        decide: Callable[[Loaded[Block], Any], list[Write]],
    ) -> Callable[[Request[Any]], Awaitable[Result]]:
        """The handler of a command that decides on the one block it names, alone."""

        async def handle(request: Request[Any]) -> Result:
            async def plan(loader: Loader, command_id: str) -> list[Write]:
                loaded, _ = await load_block(runner, loader, request, request.body.block_id)
                return decide(loaded, request.body)

            return await runner.run(request, plan)

        return handle

    router.handle(SetBlock)(on_one_block(blocks.set_content))
    router.handle(AppendToBlock)(on_one_block(blocks.append))
    router.handle(ReplaceInBlock)(on_one_block(blocks.replace_text))

    @router.handle(AttachBlock)
    async def attach_block(request: Request[AttachBlock]) -> Result:
        command = request.body

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            loaded, org_id = await load_block(runner, loader, request, command.block_id)
            block = blocks.require_live(loaded, command.block_id)
            await load_agent_in(runner, loader, org_id, command.agent_id)
            label = await hold(loader, org_id, "agent", command.agent_id, block.label)
            return blocks.attach(loaded, command, label)

        return await runner.run(request, plan)

    @router.handle(DetachBlock)
    async def detach_block(request: Request[DetachBlock]) -> Result:
        command = request.body

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            loaded, org_id = await load_block(runner, loader, request, command.block_id)
            block = blocks.require_live(loaded, command.block_id)
            # A forgotten agent is gone from the block as every read shows it (a deleted
            # one may still be detached): its attachment is not there to take back.
            agent = await loader.load(
                await runner.subject_of("agent", command.agent_id), agents.evolve
            )
            if agent.state is None:
                raise agents.missing(command.agent_id)
            label = await hold(loader, org_id, "agent", command.agent_id, block.label)
            return blocks.detach(loaded, command, label)

        return await runner.run(request, plan)

    @router.handle(DeleteBlock)
    async def delete_block(request: Request[DeleteBlock]) -> Result:
        command = request.body

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            loaded, org_id = await load_block(runner, loader, request, command.block_id)
            block = blocks.require_live(loaded, command.block_id)
            holds = [
                await hold(loader, org_id, kind, owner_id, block.label)
                for kind, owner_id in block.seen_by()
            ]
            return blocks.delete(loaded, command, holds)

        return await runner.run(request, plan)

    return router


# Queries -----------------------------------------------------------------------------------
def query_router(parts: Parts) -> Router:
    router = Router()
    store, freshness, log, runner = parts.store, parts.freshness, parts.log, parts.runner

    @router.handle(GetBlock)
    async def get_block(request: Request[GetBlock]) -> Result:
        authorize(request.caller, request.need, None)
        seq = await freshness.wait(PROJECTION, request.body.after_seq)
        block_id = request.body.block_id
        row = await reads.get_block(store, block_id)
        [view] = await reads.block_views(store, [readable(request, row, blocks.missing(block_id))])
        return view, seq

    @router.handle(ListBlocks)
    async def list_blocks(request: Request[ListBlocks]) -> Result:
        query = request.body
        org_id = query.org_id or request.caller.org_id
        authorize(request.caller, request.need, org_id, missing_org(org_id))
        blocks.check_owner(query.agent_id, query.user_id)
        after = decode_cursor(query.cursor)
        seq = await freshness.wait(PROJECTION, query.after_seq)
        if query.agent_id is not None:
            rows = await reads.agent_blocks(store, org_id, query.agent_id, after, query.limit + 1)
        else:
            user_id = query.user_id or ""
            rows = await reads.user_blocks(store, org_id, user_id, after, query.limit + 1)
        items = await reads.block_views(store, rows)
        return encoded_page(items, query.limit, "label"), seq

    @router.handle(BlockHistory)
    async def block_history(request: Request[BlockHistory]) -> Result:
        query = request.body
        missing = blocks.missing(query.block_id)
        try:
            subject = await runner.subject_of("block", query.block_id)
        except NotFoundError:
            raise missing from None
        authorize(request.caller, request.need, subjects.parse(subject).org_id, missing)
        loaded = await runner.cache.load(subject, blocks.evolve, refresh=True)
        blocks.require_live(loaded, query.block_id)
        after = cursor_number(query.cursor) or 0
        # The log answers; ``after_seq`` is checked (and waited for) as on every query.
        await freshness.wait(PROJECTION, query.after_seq)
        commits, more = await commits_page(log, [subject], after, query.limit)
        items = [entry(commit) for commit in commits]
        next_cursor = encode_cursor(str(items[-1]["seq"])) if more and items else None
        return {"items": items, "next_cursor": next_cursor}, (items[-1]["seq"] if items else None)

    return router
