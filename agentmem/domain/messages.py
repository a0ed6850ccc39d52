"""Conversations: the messages of a session, a stream of facts on one subject per session.

A conversation has no state that a decision reads: any order of concurrent appends is a
valid one, so appends carry no expected version and the subject is never folded (a session
may hold millions of messages). What an append needs to know (the agent exists and takes
messages, the user is of the same organization) lives on other subjects, loaded by the
caller and checked here. A redaction or a deletion names its target, which the caller
has found (in the messages table, confirmed by the log).
"""

from __future__ import annotations

from agentmem import subjects
from agentmem.commands import NewMessage
from agentmem.domain import agents, users
from agentmem.domain.aggregate import Loaded, Write
from agentmem.domain.jsondoc import check_bounds
from agentmem.errors import NotFoundError
from agentmem.events import ConversationDeleted, MessageAppended, MessageRedacted

# A message's tool calls and metadata, each, as JSON: well within a request's size.
MAX_JSON_BYTES = 64 * 1024


def subject(org_id: str, session_id: str) -> str:
    return subjects.event(org_id, "conversation", session_id)


def missing_message(message_id: str, session_id: str) -> NotFoundError:
    return NotFoundError(
        f"message {message_id} is not in conversation {session_id}",
        {"message_id": message_id, "session_id": session_id},
    )


def missing_conversation(session_id: str) -> NotFoundError:
    return NotFoundError(f"conversation {session_id} has no messages", {"session_id": session_id})


def check_speakers(
    org_id: str,
    agent: Loaded[agents.Agent],
    agent_id: str,
    user: Loaded[users.User] | None,
    user_id: str | None,
) -> None:
    """The agent is of ``org_id``, live and not archived; the user, when named, is a live
    user of ``org_id``. Another organization's agent or user is answered as a missing one."""
    state = agents.require_active(agent, agent_id)
    if state.org_id != org_id:
        raise agents.missing(agent_id)
    if user_id is not None:
        if user is None:
            raise ValueError("a named user must be loaded")
        person = users.require_live(user, user_id)
        if person.org_id != org_id:
            raise NotFoundError(f"user {user_id} does not exist", {"user_id": user_id})


def append(
    org_id: str,
    session_id: str,
    agent_id: str,
    user_id: str | None,
    messages: list[NewMessage],
    message_ids: list[str],
    *,
    single: bool = False,
) -> list[Write]:
    """One commit of every message, in order, written whatever the conversation's version.
    The caller has checked the speakers (``check_speakers``). ``single``: the one message
    of ``message.append`` (``$.message``), not those of a batch (``$.messages[n]``)."""
    if len(message_ids) != len(messages):
        raise ValueError("one id per message")
    events: list[MessageAppended] = []
    for n, (message, message_id) in enumerate(zip(messages, message_ids, strict=True)):
        which = f"message {n}" if len(messages) > 1 else "the message"
        at = "$.message" if single else f"$.messages[{n}]"
        check_bounds(
            message.tool_calls, f"{which}'s tool_calls", MAX_JSON_BYTES, path=f"{at}.tool_calls"
        )
        check_bounds(message.metadata, f"{which}'s metadata", MAX_JSON_BYTES, path=f"{at}.metadata")
        events.append(
            MessageAppended(
                message_id=message_id,
                session_id=session_id,
                agent_id=agent_id,
                role=message.role,
                content=message.content,
                user_id=user_id,
                tool_calls=tuple(message.tool_calls),
                tool_call_id=message.tool_call_id,
                metadata=message.metadata,
            )
        )
    return [Write(subject(org_id, session_id), None, list(events))]


def redact(org_id: str, session_id: str, message_id: str, reason: str) -> list[Write]:
    """The caller has confirmed that the message is in this conversation."""
    event = MessageRedacted(message_id=message_id, session_id=session_id, reason=reason)
    return [Write(subject(org_id, session_id), None, [event])]


def delete(org_id: str, session_id: str) -> list[Write]:
    """Later appends to the same session id start a fresh history."""
    return [Write(subject(org_id, session_id), None, [ConversationDeleted(session_id=session_id)])]
