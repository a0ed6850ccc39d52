"""Memories over NATS: the command handlers (plans for ``CommandRunner``) and the queries.

A memory is named by its id alone; the log finds its subject, and so its organization
(``CommandRunner.subject_of``). Another organization's memory is answered exactly as a
missing one, on every subject. Writes need ``member``, ``memory.delete_scope`` ``org_admin``,
reads ``reader``. How a duplicate is found in the log: ``agentmem.domain.memories``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from agentmem import subjects
from agentmem.consumers.aggregates import Loader, advance
from agentmem.consumers.auth import authorize
from agentmem.consumers.commands import CommandRunner, Earlier, missing_org
from agentmem.consumers.extraction import extract_added_memory
from agentmem.consumers.graph_scope import delete_entities_of_scope
from agentmem.consumers.history import commits_page, entry
from agentmem.consumers.queries import (
    cursor_number,
    decode_cursor,
    encode_cursor,
    encoded_page,
    fitted,
)
from agentmem.consumers.recall import recall_of
from agentmem.consumers.router import Request, Result, Router
from agentmem.domain import memories, orgs
from agentmem.domain.aggregate import Loaded, Write
from agentmem.domain.memories import (
    MAX_CHAIN,
    MAX_GENERATIONS,
    AddMemories,
    AddMemory,
    ArchiveMemory,
    DeleteMemory,
    DeleteMemoryScope,
    GetMemory,
    ListMemories,
    Memory,
    MemoryHistory,
    MemoryStats,
    Probe,
    RestoreMemory,
    SearchMemories,
    Slot,
    SupersedeMemory,
    UpdateMemory,
)
from agentmem.domain.memory_filter import MemoryFilter
from agentmem.errors import ConflictError, NotFoundError
from agentmem.events import MemoryAdded
from agentmem.projections import memories as reads
from agentmem.validation import invalid

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

PROJECTION = "memories"
SCOPE_PAGE = 500  # memory.delete_scope deletes this many memories at a time


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Duplicate(Exception):
    """A plan found nothing to append: the content is held already."""


def _scope(body: Any) -> dict[str, str]:
    return {f: getattr(body, f) for f in memories.SCOPE_FIELDS if getattr(body, f) is not None}


async def probe(loader: Loader, org_id: str, key: str, now: int, blind: bool = False) -> Probe:
    """Walk the slots of a content (``agentmem.domain.memories``) from generation 0 to the
    one that holds it, or to the first empty one. ``blind``: assume generation 0 is empty
    without reading it, as a command's first attempt does (most content is new): if it is
    not, the write at expected sequence 0 fails and the next attempt walks for real."""
    if blind:
        return Probe(None, Loaded(memories.subject(org_id, memories.slot_id(key, 0)), None, 0))

    async def load(subject: str) -> Loaded[Slot]:
        return await loader.load(subject, memories.evolve)

    async def current(subject: str) -> Loaded[Slot]:
        return await loader.current(subject, memories.evolve)

    holder, free = await walk_slots(load, org_id, key, now, current)
    if holder is None:
        return Probe(None, free)
    assert isinstance(holder.state, Memory)
    return Probe(holder.state, None, holder.version, dict(holder.commands))


async def walk_slots(
    load: Callable[[str], Awaitable[Loaded[Slot]]],
    org_id: str,
    key: str,
    now: int,
    current: Callable[[str], Awaitable[Loaded[Slot]]] | None = None,
) -> tuple[Loaded[Slot] | None, Loaded[Slot] | None]:
    """(the subject of the memory holding content ``key``, None), or (None, the first empty
    slot), each subject read by ``load``: the cache's now (``probe``), or the log as it
    stood at a point (``holder_then``). ``current``: how to read a slot's memory again from
    the log before deciding that it no longer holds the content: its version is checked by
    no append (a claim on a later slot is), so a stale cache would let a second memory take
    content that another process had just given to the first."""
    for generation in range(MAX_GENERATIONS):
        slot = await load(memories.subject(org_id, memories.slot_id(key, generation)))
        if slot.version == 0:
            return None, slot
        holder = slot
        if isinstance(slot.state, memories.Claim):
            holder = await load(memories.subject(org_id, slot.state.memory_id))
        if current is not None and not _holds(holder, key, now):
            holder = await current(holder.subject)
        if _holds(holder, key, now):
            return holder, None
    raise ConflictError(
        f"this content was added and removed {MAX_GENERATIONS} times in this scope",
        {"generations": MAX_GENERATIONS},
    )


def _holds(holder: Loaded[Slot], key: str, now: int) -> bool:
    memory = holder.state
    return isinstance(memory, Memory) and memories.holds(memory, memory, key, now)


async def first_outcome(
    runner: CommandRunner, org_id: str, keys: list[str], command_id: str, version: int
) -> tuple[list[str], list[bool]]:
    """A batch's first reply, rebuilt from the log up to ``version``, its last commit: each
    content's holder then, and which of them its commits added (a content twice in the
    batch: added once, then deduplicated, as the first attempt decided)."""
    commits = await runner.log.read_command(version, command_id)
    added = {e.memory_id for c in commits for e in c.events if isinstance(e, MemoryAdded)}
    then = max((c.time_ms for c in commits), default=now_ms())
    distinct = list(dict.fromkeys(keys))
    found = await asyncio.gather(*(holder_then(runner, org_id, k, version, then) for k in distinct))
    holders = dict(zip(distinct, found, strict=True))
    memory_ids, duplicates, seen = [], [], set()
    for key in keys:
        memory_id = holders[key]
        memory_ids.append(memory_id)
        duplicates.append(memory_id not in added or memory_id in seen)
        seen.add(memory_id)
    return memory_ids, duplicates


async def holder_then(runner: CommandRunner, org_id: str, key: str, upto: int, now: int) -> str:
    """The id of the memory that held content ``key`` once the log was at ``upto`` (``probe``
    as of then); "" when none did."""

    async def until(subject: str) -> Loaded[Slot]:
        commits = [c for c in await runner.log.read_subject(subject, leader=True) if c.seq <= upto]
        return advance(Loaded(subject, None, 0), memories.evolve, commits)

    holder, _ = await walk_slots(until, org_id, key, now)
    return holder.state.memory_id if holder is not None and isinstance(holder.state, Memory) else ""


def reused_command_id(request: Request[Any]) -> ConflictError:
    """A command id whose first commit was an add of other memories than this request's."""
    client_id = request.body.command_id
    return ConflictError(
        f"command id {client_id} was already used for another {request.operation.name}; a new "
        "command needs a new id",
        {"command_id": client_id, "operation": request.operation.name},
    )


def check_same_memory(request: Request[Any], first: dict[str, Any]) -> None:
    """A retry answered with the first outcome of its command id: ``conflict`` when that
    one changed another memory (found through a content slot the first command wrote,
    not through the memory this request names)."""
    if first.get("memory_id") not in (None, request.body.memory_id):
        raise reused_command_id(request)


async def load_memory(
    runner: CommandRunner, loader: Loader, request: Request[Any], memory_id: str
) -> tuple[Loaded[Slot], str]:
    """A memory of a live organization that the caller may change (with the operation's
    need), and its organization; else not_found (another organization's too)."""
    missing = memories.missing(memory_id)
    loaded, org_id = await runner.load_in_live_org(
        loader, "memory", memory_id, memories.evolve, missing
    )
    memories.require_memory(loaded, memory_id)
    authorize(request.caller, request.need, org_id, missing)
    return loaded, org_id


def command_router(parts: Parts) -> Router:
    router = Router()
    runner, store, freshness = parts.runner, parts.store, parts.freshness

    def writable_org(request: Request[Any], org_id: str | None) -> str:
        target = org_id or request.caller.org_id
        authorize(request.caller, request.need, target, missing_org(target))
        return target

    async def live_org(loader: Loader, org_id: str) -> None:
        orgs.require_live(await loader.load(orgs.subject(org_id), orgs.evolve), org_id)

    @router.handle(AddMemory)
    async def add_memory(request: Request[AddMemory]) -> Result:
        command = request.body
        org_id = writable_org(request, command.org_id)
        item = command.item()
        memories.check_new(item, "$")
        key, now = memories.key_of_new(org_id, item), now_ms()
        found: list[Probe] = []

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            await live_org(loader, org_id)
            # The first attempt writes blind (CommandRunner.run refreshes on the next ones).
            found[:] = [await probe(loader, org_id, key, now, blind=not loader.refresh)]
            writes = memories.add(org_id, item, found[0], now)
            if not writes:
                raise _Duplicate
            return writes

        try:
            data, seq = await runner.run(request, plan)
        except _Duplicate:
            holder = found[0]
            assert holder.holder is not None
            return memories.view(holder.holder, holder.holder_version), holder.holder_version
        memory_id = data.get("memory_id")
        if memory_id is None:  # a retry whose first outcome was forgotten since (shredded)
            return data, seq
        if not memories.is_slot_of(str(memory_id), key):
            # The command id's first commit added other content or scope: another command.
            raise reused_command_id(request)
        if parts.extract_on_add:
            extracted = await extract_added_memory(parts, request, str(memory_id))
            seq = max(seq or 0, extracted) or None
        return {**data, "deduplicated": False}, seq

    @router.handle(AddMemories)
    async def add_memories(request: Request[AddMemories]) -> Result:
        command = request.body
        org_id = writable_org(request, command.org_id)
        items = command.memories
        for n, item in enumerate(items):
            memories.check_new(item, f"$.memories[{n}]")
        keys = [memories.key_of_new(org_id, item) for item in items]
        now = now_ms()
        outcome: list[tuple[list[str], list[bool]]] = []
        used: list[str] = []
        planned = [False]  # the last attempt decided writes (else: a retried command)

        def answered_earlier() -> None:
            # The writes it decided were this command's already: the first attempt's
            # outcome is read from the log below, not this attempt's decision.
            planned[0] = False

        async def decide(loader: Loader, blind: bool) -> tuple[list[Write], dict[str, Probe]]:
            distinct = list(dict.fromkeys(keys))
            probes = dict(
                zip(
                    distinct,
                    await asyncio.gather(*(probe(loader, org_id, k, now, blind) for k in distinct)),
                    strict=True,
                )
            )
            writes: list[Write] = []
            memory_ids: list[str] = []
            duplicates: list[bool] = []
            written: dict[str, str] = {}
            for item, key in zip(items, keys, strict=True):
                found = probes[key]
                if found.holder is not None:
                    memory_ids.append(found.holder.memory_id)
                    duplicates.append(True)
                elif key in written:  # twice in this batch
                    memory_ids.append(written[key])
                    duplicates.append(True)
                else:
                    write = memories.add(org_id, item, found, now)[0]
                    written[key] = subjects.parse(write.subject).aggregate_id
                    writes.append(write)
                    memory_ids.append(written[key])
                    duplicates.append(False)
            outcome[:] = [(memory_ids, duplicates)]
            return writes, probes

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            used[:], planned[0] = [command_id], False
            await live_org(loader, org_id)
            writes, _ = await decide(loader, blind=not loader.refresh)
            if not writes:
                raise _Duplicate
            planned[0] = True
            return writes

        try:
            data, seq = await runner.run(request, plan, on_earlier=answered_earlier)
            version = data["version"]
            memory_ids, duplicates = outcome[0] if planned[0] else ([], [])
            if not planned[0]:
                # A retried command, answered with its first commit: its reply as it was,
                # from the log as it stood then (the memories may have been edited since).
                memory_ids, duplicates = await first_outcome(runner, org_id, keys, used[0], version)
                if "" in memory_ids:  # content that the first batch neither added nor found
                    raise reused_command_id(request)
        except _Duplicate:
            memory_ids, duplicates = outcome[0]
            version, seq = 0, None
        added = list(dict.fromkeys(m for m, d in zip(memory_ids, duplicates, strict=True) if not d))
        if parts.extract_on_add:
            # One extraction per memory added, after the batch (a retried batch finishes them).
            for memory_id in added:
                extracted = await extract_added_memory(parts, request, memory_id)
                seq = max(seq or 0, extracted) or None
        reply = {
            "event": "memory.added",
            "version": version,
            "memory_ids": memory_ids,
            "deduplicated": duplicates,
            "added": len(added),
        }
        return reply, seq

    @router.handle(UpdateMemory)
    async def update_memory(request: Request[UpdateMemory]) -> Result:
        command, now = request.body, now_ms()

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            loaded, org_id = await load_memory(runner, loader, request, command.memory_id)
            memory = memories.require_memory(loaded, command.memory_id)
            found = None
            key = (
                memory.key if command.content is None else memories.key_of(memory, command.content)
            )
            # A new key, or an expired memory brought back (another may hold its content
            # since: it stopped counting as a duplicate when it expired).
            if key != memory.key or memories.revives(memory, command, now):
                found = await probe(loader, org_id, key, now)
            return memories.update(loaded, command, found, now)

        earlier = Earlier()
        data, seq = await runner.run(request, plan, on_earlier=earlier)
        if earlier.answered:
            check_same_memory(request, data)
        return data, seq

    @router.handle(SupersedeMemory)
    async def supersede_memory(request: Request[SupersedeMemory]) -> Result:
        command, now = request.body, now_ms()
        held: list[bool] = [False]
        used: list[str] = []

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            used[:] = [command_id]
            loaded, org_id = await load_memory(runner, loader, request, command.memory_id)
            old = memories.require_memory(loaded, command.memory_id)
            found = await probe(loader, org_id, memories.key_of(old, command.content), now)
            writes, holder = memories.supersede(loaded, command, found, now)
            held[0] = holder is not None
            return writes

        earlier = Earlier()
        data, seq = await runner.run(request, plan, on_earlier=earlier)
        if earlier.answered and seq is not None and "memory_id" in data:  # not forgotten since
            check_same_memory(request, data)
            # The first attempt's: deduplicated when it added no memory.
            commits = await runner.log.read_command(seq, used[0])
            held[0] = not any(isinstance(e, MemoryAdded) for c in commits for e in c.events)
        return {**data, "deduplicated": held[0]}, seq

    def on_one_memory(
        decide: Callable[[Loaded[memories.Slot], Any], list[Write]],
    ) -> Callable[[Request[Any]], Awaitable[Result]]:
        """The handler of a command that decides on the one memory it names."""

        async def handle(request: Request[Any]) -> Result:
            async def plan(loader: Loader, command_id: str) -> list[Write]:
                loaded, _ = await load_memory(runner, loader, request, request.body.memory_id)
                return decide(loaded, request.body)

            return await runner.run(request, plan)

        return handle

    router.handle(ArchiveMemory)(on_one_memory(memories.archive))
    router.handle(RestoreMemory)(on_one_memory(memories.restore))
    router.handle(DeleteMemory)(on_one_memory(memories.delete))

    @router.handle(DeleteMemoryScope)
    async def delete_scope(request: Request[DeleteMemoryScope]) -> Result:
        """Every memory the scope holds when the command starts: found in the projection
        once it has applied the whole log, then deleted one commit each (not atomically: a
        command cut short is finished by sending it again, with the same command_id)."""
        command = request.body
        org_id = writable_org(request, command.org_id)
        memories.check_scope(command.user_id, command.agent_id, command.session_id, "$")
        scope = _scope(command)
        await freshness.wait(PROJECTION, await runner.log.last_seq())

        def plan_for(memory_id: str) -> Any:
            async def plan(loader: Loader, command_id: str) -> list[Write]:
                loaded = await loader.load(memories.subject(org_id, memory_id), memories.evolve)
                return memories.delete_in_scope(loaded, memory_id)

            return plan

        deleted, version = await runner.run_pages(
            request,
            lambda after: reads.scope_memory_ids(store, org_id, scope, after, SCOPE_PAGE),
            plan_for,
        )
        # The scope's entities and relations go too (a session's scope holds none).
        graph_deleted = 0
        if command.session_id is None:
            graph_deleted, graph_version = await delete_entities_of_scope(
                parts, request, org_id, command.user_id, command.agent_id
            )
            version = max(version, graph_version)
        reply = {"event": "memory.deleted", "version": version, "deleted": deleted}
        return {**reply, "org_id": org_id, **scope, "entities": graph_deleted}, (version or None)

    return router


# Queries -----------------------------------------------------------------------------------
def _shape(query: ListMemories) -> str:
    """A short digest of what a page of ``memory.list`` depends on besides its cursor: the
    filters, ``order_by`` and ``order``. A cursor carries it, so that one taken to another
    query is refused rather than answered with a page of something else."""
    fields = msgspec.structs.asdict(query)
    for free in ("cursor", "limit", "after_seq", "org_id"):
        fields.pop(free)
    return hashlib.blake2b(msgspec.json.encode(fields), digest_size=6).hexdigest()


def _cursor(query: ListMemories, shape: str) -> tuple[float, int, int | None] | None:
    """(order key, position, the time importance was decayed to) of a page's last row, from
    a cursor of this query's ``shape``."""
    key = decode_cursor(query.cursor)
    if not key:
        return None
    *parts, given = key.split(":")
    try:
        if given == shape:
            if query.order_by == "importance" and len(parts) == 3:
                value = float(parts[0])
                if math.isfinite(value):
                    return value, int(parts[1]), int(parts[2])
            elif query.order_by != "importance" and len(parts) == 2:
                return int(parts[0]), int(parts[1]), None
    except ValueError:
        pass
    raise invalid(
        "cursor is not one this subject returned for these filters and this order",
        "$.cursor",
        "invalid_value",
        cursor=query.cursor,
    )


async def search(parts: Parts, query: SearchMemories, memory_filter: MemoryFilter) -> Result:
    """``memory.search``'s answer to an authorized query: the one search that its handler
    and ``context.assemble`` both call, so the two rank memories alike."""
    return await recall_of(parts).search(query, memory_filter)


def query_router(parts: Parts) -> Router:
    router = Router()
    store, freshness, log, runner = parts.store, parts.freshness, parts.log, parts.runner

    def readable_org(request: Request[Any], org_id: str | None) -> str:
        target = org_id or request.caller.org_id
        authorize(request.caller, request.need, target, missing_org(target))
        return target

    @router.handle(GetMemory)
    async def get_memory(request: Request[GetMemory]) -> Result:
        authorize(request.caller, request.need, None)
        seq = await freshness.wait(PROJECTION, request.body.after_seq)
        memory_id = request.body.memory_id
        row = await reads.get_memory(store, memory_id)
        missing = memories.missing(memory_id)
        if row is None:
            raise missing
        authorize(request.caller, request.need, row["org_id"], missing)
        return reads.memory_view(row, now_ms()), seq

    @router.handle(ListMemories)
    async def list_memories(request: Request[ListMemories]) -> Result:
        query = request.body
        org_id = readable_org(request, query.org_id)
        memory_filter = memories.filter_of(query, org_id)
        shape = _shape(query)
        after, now = _cursor(query, shape), now_ms()
        if after is not None and after[2] is not None:
            now = after[2]  # the later pages of an order by decayed importance: its time
        seq = await freshness.wait(PROJECTION, query.after_seq)
        rows = await reads.list_memories(
            store,
            memory_filter,
            now=now,
            order_by=query.order_by,
            descending=query.order == "desc",
            after=None if after is None else (after[0], after[1]),
            limit=query.limit + 1,
        )
        at = f":{now}" if query.order_by == "importance" else ""

        def cursor(index: int) -> str:
            row = rows[index]
            return f"{row['order_key']!r}:{row['position']}{at}:{shape}"

        return encoded_page(reads.memory_views(rows, now), query.limit, cursor), seq

    @router.handle(SearchMemories)
    async def search_memories(request: Request[SearchMemories]) -> Result:
        """Text, vector or hybrid search (``agentmem.consumers.recall``)."""
        query = request.body
        org_id = readable_org(request, query.org_id)
        reply, seq = await search(parts, query, memories.filter_of(query, org_id))
        # Up to 500 memories of 10,000 characters: the best that fit in one reply.
        reply["items"] = fitted(reply["items"])
        return reply, seq

    @router.handle(MemoryStats)
    async def memory_stats(request: Request[MemoryStats]) -> Result:
        query = request.body
        org_id = readable_org(request, query.org_id)
        scope = _scope(query)
        memory_filter = MemoryFilter(org_id, (), scope, query.memory_type)
        seq = await freshness.wait(PROJECTION, query.after_seq)
        counts = await reads.memory_stats(store, memory_filter, now_ms())
        total = sum(counts["by_state"].values())
        # What was asked for, each field there (null when not asked), as documented.
        asked = {f: getattr(query, f) for f in (*memories.SCOPE_FIELDS, "memory_type")}
        return {"org_id": org_id, "total": total, **counts, **asked}, seq

    async def load(org_id: str, memory_id: str) -> Memory | None:
        loaded = await runner.cache.load(
            memories.subject(org_id, memory_id), memories.evolve, refresh=True
        )
        return loaded.state if isinstance(loaded.state, Memory) else None

    async def chain(org_id: str, memory: Memory) -> list[Memory]:
        """A memory's supersede chain, deleted ones not: itself, those that
        superseded it, one after the other, and those it superseded, and theirs: each
        memory superseded by one of them (a deduplicated supersede leaves no ``supersedes``
        on the memory that already held the content: the projection finds it)."""
        found = {memory.memory_id: memory}
        current: Memory | None = memory
        for _ in range(MAX_CHAIN):
            if current is None or current.superseded_by is None:
                break
            current = await load(org_id, current.superseded_by)
            if current is not None:
                found[current.memory_id] = current
        earlier = [memory]
        for _ in range(MAX_CHAIN):
            ids = await reads.superseded_ids(store, org_id, [m.memory_id for m in earlier])
            ids += [m.supersedes for m in earlier if m.supersedes is not None]
            loaded = [await load(org_id, i) for i in dict.fromkeys(ids) if i not in found]
            room = max(0, 4 * MAX_CHAIN - len(found))  # a tree: bounded in all, not per step
            earlier = [m for m in loaded if m is not None][:room]
            if not earlier:
                break
            found.update((m.memory_id, m) for m in earlier)
        return [m for m in found.values() if m.state != "deleted"]

    @router.handle(MemoryHistory)
    async def memory_history(request: Request[MemoryHistory]) -> Result:
        query = request.body
        missing = memories.missing(query.memory_id)
        try:
            subject = await runner.subject_of("memory", query.memory_id)
        except NotFoundError:
            raise missing from None
        org_id = subjects.parse(subject).org_id
        authorize(request.caller, request.need, org_id, missing)
        loaded = await runner.cache.load(subject, memories.evolve, refresh=True)
        memory = memories.require_memory(loaded, query.memory_id)
        # The log answers, the projection finds what a memory superseded; ``after_seq`` is
        # checked (and waited for) as on every query.
        await freshness.wait(PROJECTION, query.after_seq)
        linked = await chain(org_id, memory)
        names = [memories.subject(org_id, m.memory_id) for m in linked]
        # An expired memory's content left the tables: its history must not bring it back.
        now = now_ms()
        hidden = frozenset(m.memory_id for m in linked if m.is_expired(now))
        after = cursor_number(query.cursor) or 0
        commits, more = await commits_page(log, names, after, query.limit)
        items = [entry(commit, hidden) for commit in commits]
        next_cursor = encode_cursor(str(items[-1]["seq"])) if more and items else None
        return {"items": items, "next_cursor": next_cursor}, (items[-1]["seq"] if items else None)

    return router
