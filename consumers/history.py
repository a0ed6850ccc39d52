"""``agentmem.q.history.get``: who did what to an aggregate, and when, straight from the log."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import msgspec

from agentmem import subjects
from agentmem.consumers.auth import authorize
from agentmem.consumers.commands import SECRET_FIELDS, client_command_id
from agentmem.consumers.queries import (
    MAX_PAGE_BYTES,
    cursor_number,
    encode_cursor,
    fitting,
    item_size,
)
from agentmem.consumers.router import Request, Result, Router
from agentmem.domain import agents, orgs
from agentmem.errors import NotFoundError
from agentmem.eventlog import (
    H_COMMIT_TYPE,
    H_CORRELATION_ID,
    H_PRINCIPAL,
    EventLog,
    StoredCommit,
)
from agentmem.events import AnyEvent, MemoryAdded, MemoryUpdated, MessageAppended, Shredded
from agentmem.projections import messages as messages_read
from agentmem.queries import GetHistory
from agentmem.sealing import PERSONAL

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts


def _hidden_id(event: AnyEvent) -> str | None:
    """The id by which an event's content may be hidden: a message's, or a memory's."""
    match event:
        case MessageAppended():
            return event.message_id
        case MemoryAdded() | MemoryUpdated():
            return event.memory_id
    return None


def entry(commit: StoredCommit, hidden: frozenset[str] = frozenset()) -> dict[str, Any]:
    """One commit as history shows it. ``hidden``: the messages and memories whose content
    the tables dropped (redacted, deleted, expired): their personal fields are emptied."""
    events = []
    for event in commit.events:
        if isinstance(event, Shredded):
            # Forgotten: that something was here, and what kind of thing, never what.
            events.append({"type": event.of, "forgotten": True})
            continue
        fields = msgspec.to_builtins(event)
        view = {k: v for k, v in fields.items() if k not in SECRET_FIELDS}
        if _hidden_id(event) in hidden:
            # History must not bring back what the tables dropped.
            for name in PERSONAL.get(type(event), ()):
                view[name] = type(view[name])() if view[name] is not None else None
            view["hidden"] = True
        events.append(view)
    return {
        "seq": commit.seq,
        "time": commit.time_ms,
        "commit_type": commit.headers.get(H_COMMIT_TYPE, ""),
        "principal": commit.headers.get(H_PRINCIPAL, ""),
        "command_id": client_command_id(commit.command_id),
        "correlation_id": commit.headers.get(H_CORRELATION_ID, ""),
        "events": events,
    }


async def in_log_order(
    log: EventLog, names: Sequence[str], after: int
) -> AsyncGenerator[StoredCommit, None]:
    """The commits of exactly the subjects ``names`` after sequence ``after``, oldest first:
    each subject read on its own (never a wildcard, which could match another aggregate's
    subject), merged by sequence."""
    readers = [log.iter_subject(name, after=after) for name in names]
    heads = [await anext(reader, None) for reader in readers]
    while True:
        waiting = [(head.seq, n) for n, head in enumerate(heads) if head is not None]
        if not waiting:
            return
        _, n = min(waiting)
        commit = heads[n]
        assert commit is not None
        yield commit
        heads[n] = await anext(readers[n], None)


async def commits_page(
    log: EventLog, names: Sequence[str], after: int, limit: int
) -> tuple[list[StoredCommit], bool]:
    """The commits of the subjects ``names`` after ``after``, in log order, up to ``limit``
    or ``MAX_PAGE_BYTES`` of entries, whichever comes first, so the reply fits in one NATS
    message; the log is read no further than that. And whether more follow.

    A single commit larger than the budget still comes, alone, and still fits: it was one
    NATS message in the log, and its entry is about that size (the same events' JSON, its
    header values under shorter keys; a hidden message loses its content)."""
    page: list[StoredCommit] = []
    budget = MAX_PAGE_BYTES
    async with aclosing(in_log_order(log, names, after)) as commits:
        async for commit in commits:
            if len(page) == limit:
                return page, True
            budget -= item_size(entry(commit))
            if page and budget < 0:
                return page, True
            page.append(commit)
    return page, False


# The projection of each aggregate ``history.get`` reads, whose ``after_seq`` it waits for.
PROJECTION_OF = {
    "org": "orgs",
    "user": "users",
    "agent": "agents",
    "tool": "tools",
    "conversation": "messages",
}


def query_router(parts: Parts) -> Router:
    router = Router()
    log, runner, store, freshness = parts.log, parts.runner, parts.store, parts.freshness

    async def subjects_of(request: Request[GetHistory], missing: NotFoundError) -> list[str]:
        """Exactly the subjects of the named aggregate: one, or an agent's two."""
        query = request.body
        match query.aggregate:
            case "org":
                return [orgs.subject(query.id)]
            case "conversation":
                # A session id is unique only within its organization.
                org_id = query.org_id or request.caller.org_id
                return [subjects.event(org_id, "conversation", query.id)]
            case aggregate:
                try:
                    subject = await runner.subject_of(aggregate, query.id)
                except NotFoundError:
                    raise missing from None
                if aggregate == "agent":
                    # Its profile and its state document. Named, not matched: a pattern such as
                    # evt.<org>.*.<id> also matches a conversation, a user or a tool of the
                    # same id (ids of different kinds are chosen independently).
                    org_id = subjects.parse(subject).org_id
                    return [subject, agents.state_subject(org_id, query.id)]
                return [subject]

    async def hidden_among(commits: list[StoredCommit]) -> frozenset[str]:
        """The messages of ``commits`` whose content the projections no longer hold: redacted,
        or gone with their conversation, agent or organization. Once the messages projection
        has caught up with the conversation, a message without a row is a deleted one.

        Whatever the aggregate asked for: wherever a message appears, it is masked."""
        conversations = sorted(
            {c.subject for c in commits if any(isinstance(e, MessageAppended) for e in c.events)}
        )
        if not conversations:
            return frozenset()
        message_ids = [
            e.message_id for c in commits for e in c.events if isinstance(e, MessageAppended)
        ]
        lasts = [await log.last_on(subject) for subject in conversations]
        await freshness.wait("messages", max((last.seq for last in lasts if last), default=None))
        return await messages_read.hidden_messages(store, message_ids)

    @router.handle(GetHistory)
    async def get_history(request: Request[GetHistory]) -> Result:
        query = request.body
        named = "session_id" if query.aggregate == "conversation" else f"{query.aggregate}_id"
        missing = NotFoundError(f"{query.aggregate} {query.id} does not exist", {named: query.id})
        names = await subjects_of(request, missing)
        org_id = subjects.parse(names[0]).org_id
        authorize(request.caller, request.need, org_id, missing)
        after = cursor_number(query.cursor) or 0
        # The log answers; ``after_seq`` is checked (and waited for, by the aggregate's
        # projection) as on every query.
        await freshness.wait(PROJECTION_OF[query.aggregate], query.after_seq)
        page, more = await commits_page(log, names, after, query.limit)
        if not page and after == 0:
            raise missing
        hidden = await hidden_among(page)
        items = [entry(c, hidden) for c in page]
        if hidden:
            # A hidden message can be a few bytes longer ("hidden": true): measure again.
            fit = fitting(items)
            items, more = items[:fit], more or fit < len(items)
        next_cursor = encode_cursor(str(items[-1]["seq"])) if more else None
        return {"items": items, "next_cursor": next_cursor}, (items[-1]["seq"] if items else None)

    return router
