"""The ``messages`` table: every message of every live conversation, and the record of each
redaction (``message_redactions``).

A message's ``position`` is ``seq * 1000 + its index in the commit`` (a commit holds at most
1000 messages): it orders a conversation the way the log does, and a page cursor is one.

A redaction empties the message's content, tool calls and metadata and sets ``redacted_at``;
the row stays, because the message did happen. The table is ``scrub``: the store then
removes what is left of the old content on disk (see ``agentmem.store.sqlite``). Deleting a
conversation, an agent or an organization deletes their messages (an agent's: the ones it
took part in as the agent).
"""

from __future__ import annotations

from agentmem import subjects
from agentmem.commands import MAX_MESSAGES_PER_BATCH
from agentmem.eventlog import StoredCommit
from agentmem.events import (
    AgentDeleted,
    ConversationDeleted,
    MessageAppended,
    MessageRedacted,
    OrgDeleted,
)
from agentmem.store import Column, Delete, FullText, RowOp, Table, Update, Upsert
from projections.rows import json_text

PER_COMMIT = MAX_MESSAGES_PER_BATCH  # positions per commit

MESSAGES = Table(
    name="messages",
    columns=(
        Column("message_id", "text"),
        Column("org_id", "text"),
        Column("session_id", "text"),
        Column("agent_id", "text"),
        Column("user_id", "text", nullable=True),
        Column("role", "text"),
        Column("content", "text"),
        Column("tool_calls", "json"),
        Column("tool_call_id", "text", nullable=True),
        Column("metadata", "json"),
        Column("seq", "integer"),
        Column("position", "integer"),
        Column("created_at", "integer"),
        Column("redacted_at", "integer", nullable=True),
    ),
    primary_key=("message_id",),
    indexes=(
        ("messages_session", ("org_id", "session_id", "position"), False),
        ("messages_agent", ("agent_id", "position"), False),
        ("messages_user", ("user_id", "position"), False),
    ),
    # A search filters by these inside the full-text index (agentmem/store/fulltext.py).
    full_text=FullText(
        columns=("content",),
        key="position",
        scope=("org_id", "agent_id", "user_id", "session_id", "role", "redacted_at"),
    ),
    scrub=True,
)

MESSAGE_REDACTIONS = Table(
    name="message_redactions",
    columns=(
        Column("message_id", "text"),
        Column("org_id", "text"),
        Column("session_id", "text"),
        Column("seq", "integer"),
        Column("reason", "text"),
        Column("redacted_at", "integer"),
    ),
    primary_key=("message_id",),
    indexes=(("message_redactions_session", ("org_id", "session_id"), False),),
)

EMPTY_LIST = "[]"
EMPTY_OBJECT = "{}"


def position(seq: int, index: int) -> int:
    if not 0 <= index < PER_COMMIT:
        raise ValueError(f"a commit holds at most {PER_COMMIT} messages, not {index + 1}")
    return seq * PER_COMMIT + index


class MessagesProjection:
    name = "messages"
    # Agent events and org deletions too: deleting either deletes their messages.
    filter_subjects = [
        subjects.events_of("conversation"),
        subjects.events_of("agent"),
        subjects.events_of("org_deletion"),
    ]
    tables = [MESSAGES, MESSAGE_REDACTIONS]

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops: list[RowOp] = []
        at, seq = commit.time_ms, commit.seq
        org_id = subjects.parse(commit.subject).org_id
        for index, event in enumerate(commit.events):
            match event:
                case MessageAppended():
                    row = {
                        "message_id": event.message_id,
                        "org_id": org_id,
                        "session_id": event.session_id,
                        "agent_id": event.agent_id,
                        "user_id": event.user_id,
                        "role": event.role,
                        "content": event.content,
                        "tool_calls": json_text(list(event.tool_calls)),
                        "tool_call_id": event.tool_call_id,
                        "metadata": json_text(event.metadata),
                        "seq": seq,
                        "position": position(seq, index),
                        "created_at": at,
                        "redacted_at": None,
                    }
                    ops.append(Upsert("messages", row))
                case MessageRedacted(message_id=message_id, session_id=session_id):
                    # Keyed by its conversation too: a redaction reaches no other one.
                    key = {"message_id": message_id, "org_id": org_id, "session_id": session_id}
                    erased = {
                        "content": "",
                        "tool_calls": EMPTY_LIST,
                        "metadata": EMPTY_OBJECT,
                        "redacted_at": at,
                    }
                    ops.append(Update("messages", key, erased))
                    record = {
                        "message_id": message_id,
                        "org_id": org_id,
                        "session_id": session_id,
                        "seq": seq,
                        "reason": event.reason,
                        "redacted_at": at,
                    }
                    ops.append(Upsert("message_redactions", record))
                case ConversationDeleted(session_id=session_id):
                    key = {"org_id": org_id, "session_id": session_id}
                    ops.append(Delete("messages", key))
                    ops.append(Delete("message_redactions", key))
                case AgentDeleted(agent_id=agent_id):
                    # Agent ids are unique across organizations: the agent index alone.
                    ops.append(Delete("messages", {"agent_id": agent_id}))
                case OrgDeleted(org_id=deleted):
                    ops.append(Delete("messages", {"org_id": deleted}))
                    ops.append(Delete("message_redactions", {"org_id": deleted}))
        return ops
