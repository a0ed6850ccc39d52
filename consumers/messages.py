"""Conversations over NATS: append (one message or a batch), redact, delete; list, last N and
full-text search.

A conversation is named by its session id within an organization: the caller's, or the
``org_id`` a service administrator names. Writes need ``member``, reads ``reader``. A query
about another organization's conversation answers as one about an empty conversation.

Appends check that the agent (and the user, when named) may speak here, on the process's
access view (``consumers/access_view.py``): the agent, its organization and the user as of
every commit on their subjects, without a read of the log per append. Archiving or deleting
an agent is acknowledged only once every view has it, so an agent archived a moment ago in
another process takes no more messages; a refusal is checked again on a fresh read of the
log (an agent unarchived a moment ago speaks at once). The conversation's own subject is
never folded: an append with the client's own ``command_id`` reads one commit of it (the
first one the messages projection has not applied) and one row of the projection's index
of command ids, so that a retry is recognised for as long as the conversation exists
(``earlier_append``); other appends read nothing of it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from agentmem import ids, subjects
from agentmem.commands import AppendMessage, AppendMessages, DeleteConversation, RedactMessage
from agentmem.consumers.access_view import AccessView, load_all
from agentmem.consumers.aggregates import AlreadyApplied, FreshReads, Loader
from agentmem.consumers.auth import authorize
from agentmem.consumers.commands import event_view, missing_org
from agentmem.consumers.message_recall import MessageRecall
from agentmem.consumers.queries import (
    cursor_number,
    encode_cursor,
    fitted,
    fitting,
)
from agentmem.consumers.router import Request, Result, Router
from agentmem.domain import agents, messages, orgs, users
from agentmem.domain.aggregate import Loaded, Write
from agentmem.errors import AgentMemError, NotFoundError
from agentmem.eventlog import EventLog
from agentmem.events import ConversationDeleted, MessageAppended
from agentmem.projections import message_vectors
from agentmem.projections import messages as messages_read
from agentmem.queries import LastMessages, ListMessages, SearchMessages
from agentmem.validation import invalid

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

PROJECTION = "messages"
# A commit younger than the stream's duplicate window less this margin (clocks may differ)
# is surely still in that window: a retry of it is recognised by the log itself.
WINDOW_MARGIN_MS = 60_000
# The least that counts, should the window be as short as the service accepts (60 s).
MIN_TRUSTED_WINDOW_MS = 30_000


async def trusted_window_ms(log: EventLog) -> int:
    """How old a commit may be and still surely be in the log's duplicate window."""
    config = (await log.info())["config"]
    window_ms = int(config.get("duplicate_window", 0)) // 1_000_000
    return max(MIN_TRUSTED_WINDOW_MS, window_ms - WINDOW_MARGIN_MS)


def search_filters(query: SearchMessages, org_id: str) -> dict[str, Any]:
    """Whose messages a search looks at: never a redacted one."""
    if query.agent_id is None and query.user_id is None:
        raise invalid(
            "a search needs agent_id or user_id (or both): it looks at one agent's or one "
            "user's messages",
            "$",
            "missing_field",
            fields=["agent_id", "user_id"],
        )
    where: dict[str, Any] = {"org_id": org_id, "redacted_at": None}
    for column in ("agent_id", "user_id", "session_id", "role"):
        value = getattr(query, column)
        if value is not None:
            where[column] = value
    return where


def command_router(parts: Parts) -> Router:
    """``store`` and ``freshness``: a redaction finds its message in the messages table.
    Without an access view (a test's stand-in for a process), speakers are read from the
    log."""
    router = Router()
    runner, store, freshness, view = parts.runner, parts.store, parts.freshness, parts.access
    fresh = FreshReads(runner.cache)

    def writable_org(request: Request[Any], org_id: str | None) -> str:
        target = org_id or request.caller.org_id
        authorize(request.caller, request.need, target, missing_org(target))
        return target

    async def check_speakers(org_id: str, agent_id: str, user_id: str | None) -> None:
        if view is not None and view.trusted:
            try:
                return await check_speakers_on(view, org_id, agent_id, user_id)
            except AgentMemError:
                pass  # a refusal is only ever decided on the log
        await check_speakers_on(fresh, org_id, agent_id, user_id)

    async def check_speakers_on(
        reads: AccessView | FreshReads, org_id: str, agent_id: str, user_id: str | None
    ) -> None:
        try:
            agent_subject = await runner.subject_of("agent", agent_id)
        except NotFoundError:
            raise agents.missing(agent_id) from None
        if subjects.parse(agent_subject).org_id != org_id:
            raise agents.missing(agent_id)
        user_subject = await runner.user_subject(user_id) if user_id is not None else None
        wanted: list[tuple[str, Any]] = [
            (orgs.subject(org_id), orgs.evolve),
            (agent_subject, agents.evolve),
        ]
        if user_subject is not None:
            wanted.append((user_subject, users.evolve))
        org, agent, *user = await load_all(reads, wanted)
        orgs.require_live(org, org_id)
        person: Loaded[users.User] | None = user[0] if user else None
        messages.check_speakers(org_id, agent, agent_id, person, user_id)

    trusted: list[int] = []  # the duplicate window less a margin, read once

    async def earlier_append(org_id: str, session_id: str, command_id: str) -> int | None:
        """The sequence of this command's append to the conversation, if it was stored
        before. The log's duplicate window recognises a retry for 10 minutes; past it, the
        messages projection's index of command ids does (one read by key, whatever the
        conversation's length). Together they miss nothing as long as the projection has
        applied every commit of this conversation older than the window (less a margin,
        ``trusted_window_ms``: 9 minutes with the service's 10-minute window). That holds
        when this process's own appends show every commit after the projection's checkpoint
        to be younger than that (``HeadMarks``, no read); else one read of the log (the
        conversation's first commit after the checkpoint) says, and in the rare case it
        does not hold, the append waits for the projection (bounded, as a query's
        ``after_seq``: ``unavailable`` after 5 s)."""
        subject = messages.subject(org_id, session_id)

        async def caught_up() -> None:
            last = await runner.log.last_on(subject)
            await freshness.wait(PROJECTION, last.seq if last is not None else None)

        checkpoint = await freshness.checkpoint(PROJECTION)
        if not trusted:
            trusted.append(await trusted_window_ms(runner.log))  # once: the stream's setting
        vouched = runner.log.marks.all_after_younger_than(checkpoint, trusted[0] / 1000)
        # Else the conversation's first commit the projection has not applied: its time.
        pending = None if vouched else await runner.log.next_head(subject, checkpoint)
        if pending is not None and pending.time_ms < time.time() * 1000 - trusted[0]:
            await caught_up()
        seq = await messages_read.appended_by(store, org_id, session_id, command_id)
        if seq is not None and vouched:
            pending = await runner.log.next_head(subject, checkpoint)  # not read above
        if seq is not None and pending is not None:
            # Found, but the conversation may have been deleted since (a deletion the
            # projection has not applied yet): only a retry pays for this wait.
            await caught_up()
            seq = await messages_read.appended_by(store, org_id, session_id, command_id)
        return seq

    async def append(
        request: Request[Any],
        org_id: str,
        command: AppendMessage | AppendMessages,
        batch: list[Any],
    ) -> tuple[list[str], Result]:
        message_ids = [ids.new_id() for _ in batch]  # once: the same on every attempt

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            if command.command_id is not None:
                # A client's own id may be a retry, even one long after the first attempt
                # (the first attempt's outcome stands, even if the agent may no longer speak).
                seq = await earlier_append(org_id, command.session_id, command_id)
                if seq is not None:
                    raise AlreadyApplied(seq)
            await check_speakers(org_id, command.agent_id, command.user_id)
            return messages.append(
                org_id,
                command.session_id,
                command.agent_id,
                command.user_id,
                batch,
                message_ids,
                single=isinstance(command, AppendMessage),
            )

        data, seq = await runner.run(request, plan)
        if data.get("message_id") != message_ids[-1]:
            # A retried command: the log holds the first attempt's messages, with its ids.
            stored = await runner.log.get(data["version"])
            if stored is not None:
                message_ids = [
                    e.message_id for e in stored.events if isinstance(e, MessageAppended)
                ]
        return message_ids, (data, seq)

    @router.handle(AppendMessage)
    async def append_message(request: Request[AppendMessage]) -> Result:
        command = request.body
        org_id = writable_org(request, command.org_id)
        message_ids, (data, seq) = await append(request, org_id, command, [command.message])
        return {**data, "message_ids": message_ids}, seq

    @router.handle(AppendMessages)
    async def append_messages(request: Request[AppendMessages]) -> Result:
        command = request.body
        org_id = writable_org(request, command.org_id)
        message_ids, (data, seq) = await append(request, org_id, command, command.messages)
        view = {
            "event": data["event"],
            "version": data["version"],
            "session_id": command.session_id,
            "agent_id": command.agent_id,
            "user_id": command.user_id,
            "message_ids": message_ids,
            "count": len(message_ids),
        }
        return view, seq

    async def find_message(org_id: str, session_id: str, message_id: str) -> dict[str, Any]:
        """The message's row, once the projection has caught up with the conversation,
        confirmed by the commit the row says holds it; else not_found."""
        missing = messages.missing_message(message_id, session_id)
        subject = messages.subject(org_id, session_id)
        last = await runner.log.last_on(subject)
        if last is None:
            raise missing
        await freshness.wait(PROJECTION, last.seq)
        row = await messages_read.redaction_of(store, org_id, session_id, message_id)
        if row is None:
            raise missing
        commit = await runner.log.get(row["seq"])
        if commit is None or commit.subject != subject:
            raise missing
        if not any(
            isinstance(e, MessageAppended) and e.message_id == message_id for e in commit.events
        ):
            raise missing
        return row

    @router.handle(RedactMessage)
    async def redact_message(request: Request[RedactMessage]) -> Result:
        command = request.body
        org_id = writable_org(request, command.org_id)
        row = await find_message(org_id, command.session_id, command.message_id)
        if row["redacted_at"] is not None and row["redaction_seq"] is not None:
            # Redacting twice changes nothing: the answer is the first redaction's.
            seq = int(row["redaction_seq"])
            view = {
                "message_id": command.message_id,
                "session_id": command.session_id,
                "reason": row["reason"],
                "event": "message.redacted",
                "version": seq,
                "already_redacted": True,
            }
            return view, seq

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            return messages.redact(org_id, command.session_id, command.message_id, command.reason)

        return await runner.run(request, plan)

    @router.handle(DeleteConversation)
    async def delete_conversation(request: Request[DeleteConversation]) -> Result:
        command = request.body
        org_id = writable_org(request, command.org_id)
        last = await runner.log.last_on(messages.subject(org_id, command.session_id))
        if last is None:
            raise messages.missing_conversation(command.session_id)
        if isinstance(last.events[-1], ConversationDeleted):
            # Nothing appended since the last deletion: it is the answer.
            return {**event_view(last.events[-1], last.seq), "already_deleted": True}, last.seq

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            return messages.delete(org_id, command.session_id)

        return await runner.run(request, plan)

    return router


def query_router(parts: Parts) -> Router:
    router = Router()
    store, freshness = parts.store, parts.freshness
    recall = MessageRecall(store, freshness)

    def readable_org(request: Request[Any], org_id: str | None) -> str | None:
        """The organization to read in; None for another organization's (answered empty,
        as a conversation that has no messages)."""
        caller = request.caller
        target = org_id or caller.org_id
        if target != caller.org_id and not caller.service_admin:
            return None
        authorize(caller, request.need, target)
        return target

    @router.handle(ListMessages)
    async def list_messages(request: Request[ListMessages]) -> Result:
        query = request.body
        org_id = readable_org(request, query.org_id)
        after = cursor_number(query.cursor)
        seq = await freshness.wait(PROJECTION, query.after_seq)
        if org_id is None:
            return {"items": [], "next_cursor": None}, seq
        rows = await messages_read.list_messages(
            store,
            org_id,
            query.session_id,
            after=after,
            order=query.order,
            since=query.since,
            until=query.until,
            role=query.role,
            limit=query.limit + 1,
        )
        items = rows[: query.limit]
        more = len(rows) > query.limit
        fit = fitting(items)
        items, more = items[:fit], more or fit < len(items)
        next_cursor = encode_cursor(str(items[-1]["position"])) if more else None
        return {"items": items, "next_cursor": next_cursor}, seq

    @router.handle(LastMessages)
    async def last_messages(request: Request[LastMessages]) -> Result:
        query = request.body
        org_id = readable_org(request, query.org_id)
        seq = await freshness.wait(PROJECTION, query.after_seq)
        if org_id is None:
            return {"items": []}, seq
        items = await messages_read.last_messages(store, org_id, query.session_id, query.n)
        # Newest first while they fit: the newest are the ones a prompt needs most.
        return {"items": items[: fitting(items)][::-1]}, seq

    @router.handle(SearchMessages)
    async def search_messages(request: Request[SearchMessages]) -> Result:
        query = request.body
        org_id = readable_org(request, query.org_id)
        where = search_filters(query, org_id or "")
        if org_id is None:
            seq = await freshness.wait(PROJECTION, query.after_seq)
            # The reply's shape whatever the organization: another's says nothing more.
            model = message_vectors.PROJECTION.model if query.mode != "text" else None
            return {"items": [], "mode": query.mode, "confident": False, "model": model}, seq
        reply, seq = await recall.search(query, where)
        reply["items"] = fitted(reply["items"])
        return reply, seq

    return router
