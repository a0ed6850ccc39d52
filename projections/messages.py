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

from collections.abc import Sequence
from typing import Any

import msgspec

from agentmem import subjects
from agentmem.commands import MAX_MESSAGES_PER_BATCH
from agentmem.eventlog import StoredCommit
from agentmem.events import (
    AgentDeleted,
    ConversationDeleted,
    DataForgotten,
    ForgetTarget,
    MessageAppended,
    MessageRedacted,
    OrgDeleted,
    Shredded,
)
from agentmem.projections.rows import forgotten_rows, json_text
from agentmem.store import Column, Delete, FullText, Row, RowOp, Store, Table, Update, Upsert

PER_COMMIT = MAX_MESSAGES_PER_BATCH  # positions per commit
APPENDED = MessageAppended.__struct_config__.tag

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
        # message.list's filters (migration 8): a time range is found along its own index
        # and only its messages are sorted; a role's messages are walked in order.
        ("messages_session_time", ("org_id", "session_id", "created_at"), False),
        ("messages_session_role", ("org_id", "session_id", "role", "position"), False),
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

# The command id of every append, by conversation: a retried append is recognised here for
# as long as its conversation exists, long after the log's duplicate window has forgotten it
# (consumers/messages.py), by one read of this key, whatever the conversation's length.
MESSAGE_COMMANDS = Table(
    name="message_commands",
    columns=(
        Column("org_id", "text"),
        Column("session_id", "text"),
        Column("command_id", "text"),  # the command's key in the log (``log_command_id``)
        Column("seq", "integer"),
    ),
    primary_key=("org_id", "session_id", "command_id"),
)
# The forgets that drop messages: a user's, an agent's, a conversation's.
FORGETS: frozenset[ForgetTarget] = frozenset({"user", "agent", "conversation"})

EMPTY_LIST = "[]"
EMPTY_OBJECT = "{}"


def position(seq: int, index: int) -> int:
    if not 0 <= index < PER_COMMIT:
        raise ValueError(f"a commit holds at most {PER_COMMIT} messages, not {index + 1}")
    return seq * PER_COMMIT + index


class MessagesProjection:
    name = "messages"
    version = 1  # bumped when its rows change: docs/architecture.md, "Projection versions"
    # Agent events and org deletions too: deleting either deletes their messages.
    filter_subjects = [
        subjects.events_of("conversation"),
        subjects.events_of("agent"),
        subjects.events_of("org_deletion"),
        subjects.events_of("forget"),
    ]
    tables = [MESSAGES, MESSAGE_REDACTIONS, MESSAGE_COMMANDS]

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops: list[RowOp] = []
        at, seq = commit.time_ms, commit.seq
        org_id = subjects.parse(commit.subject).org_id
        # Forgotten appends too (their events read as ``Shredded``): a retry of one must
        # still be recognised, not append again, and a replay after the forget makes the
        # same row as the live tables kept.
        appended = any(
            isinstance(e, MessageAppended) or (isinstance(e, Shredded) and e.of == APPENDED)
            for e in commit.events
        )
        if appended and commit.command_id:
            key = {"org_id": org_id, "session_id": subjects.parse(commit.subject).aggregate_id}
            ops.append(
                Upsert("message_commands", {**key, "command_id": commit.command_id, "seq": seq})
            )
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
                    ops.append(Delete("message_commands", key))
                case AgentDeleted(agent_id=agent_id):
                    # Agent ids are unique across organizations: the agent index alone.
                    ops.append(Delete("messages", {"agent_id": agent_id}))
                case OrgDeleted(org_id=deleted):
                    ops.append(Delete("messages", {"org_id": deleted}))
                    ops.append(Delete("message_redactions", {"org_id": deleted}))
                    ops.append(Delete("message_commands", {"org_id": deleted}))
                case DataForgotten():
                    ops += forgotten_rows(event, FORGETS, self.tables)
        return ops


PROJECTION = MessagesProjection()


# The reads its queries need ---------------------------------------------------------------
_COLUMNS = ", ".join(MESSAGES.column_names)
_decode_json = msgspec.json.Decoder()
# Which messages of a history page are hidden is asked this many ids at a time: any number
# of ids takes statements of a bounded size (SQLite and asyncpg cap their parameters).
HIDDEN_CHUNK = 500


def message_view(row: dict[str, Any]) -> dict[str, Any]:
    """A message as the queries answer it. A redacted one keeps its place, with no content."""
    return {
        "message_id": row["message_id"],
        "org_id": row["org_id"],
        "session_id": row["session_id"],
        "agent_id": row["agent_id"],
        "user_id": row["user_id"],
        "role": row["role"],
        "content": row["content"],
        "tool_calls": _decode_json.decode(row["tool_calls"]),
        "tool_call_id": row["tool_call_id"],
        "metadata": _decode_json.decode(row["metadata"]),
        "seq": row["seq"],
        "position": row["position"],
        "created_at": row["created_at"],
        "redacted": row["redacted_at"] is not None,
        "redacted_at": row["redacted_at"],
    }


def list_sql(
    org_id: str,
    session_id: str,
    *,
    after: int | None,
    order: str,
    since: int | None,
    until: int | None,
    role: str | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """One page of a conversation: ``limit`` messages after position ``after`` in ``order``
    (``asc`` or ``desc``), read along an index whatever the filter:

    - none: the (org_id, session_id, position) index, in order;
    - a role: the (org_id, session_id, role, position) index, in order;
    - a time range (with or without a role): the (org_id, session_id, created_at) index
      finds the range, and only its messages are sorted. Every other term is written so
      that no other index can serve it (``position + 0``, ``role || ''``): both planners
      would otherwise walk the positions for a recent range (they assume the times spread
      evenly along the positions, but times grow with them, so that walk reads the whole
      conversation before the range), or walk a role's messages before a cursor.

    docs/architecture.md shows the plans; tests/test_message_filters.py checks them."""
    timed = since is not None or until is not None
    # Terms the time index must not be passed over for (see above).
    at, role_is = ("position + 0", "role || '' = ?") if timed else ("position", "role = ?")
    conditions = ["org_id = ?", "session_id = ?"]
    args: list[Any] = [org_id, session_id]
    if after is not None:
        conditions.append(f"{at} > ?" if order == "asc" else f"{at} < ?")
        args.append(after)
    if since is not None:
        conditions.append("created_at >= ?")
        args.append(since)
    if until is not None:
        conditions.append("created_at < ?")
        args.append(until)
    if role is not None:
        conditions.append(role_is)
        args.append(role)
    direction = "ASC" if order == "asc" else "DESC"
    sql = (
        f"SELECT {_COLUMNS} FROM messages WHERE {' AND '.join(conditions)} "
        f"ORDER BY {at} {direction} LIMIT ?"
    )
    return sql, [*args, limit]


async def list_messages(
    store: Store,
    org_id: str,
    session_id: str,
    *,
    after: int | None,
    order: str,
    since: int | None,
    until: int | None,
    role: str | None,
    limit: int,
) -> list[Row]:
    sql, args = list_sql(
        org_id,
        session_id,
        after=after,
        order=order,
        since=since,
        until=until,
        role=role,
        limit=limit,
    )
    return [message_view(r) for r in await store.fetch_all(sql, *args)]


async def last_messages(store: Store, org_id: str, session_id: str, n: int) -> list[Row]:
    """The last ``n`` messages of a conversation, newest first."""
    rows = await store.fetch_all(
        f"SELECT {_COLUMNS} FROM messages WHERE org_id = ? AND session_id = ? "
        "ORDER BY position DESC LIMIT ?",
        org_id,
        session_id,
        n,
    )
    return [message_view(r) for r in rows]


async def search_messages(store: Store, text: str, where: dict[str, Any], limit: int) -> list[Row]:
    """Best match first, within the scope ``where`` names (inside the full-text match)."""
    rows = await store.search(MESSAGES, text, where, limit)
    return [{**message_view(r), "rank": r["rank"]} for r in rows]


async def message_of(store: Store, org_id: str, session_id: str, message_id: str) -> Row | None:
    """One message of a conversation: its scope, content, time and whether it was redacted."""
    return await store.fetch_one(
        "SELECT agent_id, user_id, content, created_at, redacted_at FROM messages "
        "WHERE org_id = ? AND session_id = ? AND message_id = ?",
        org_id,
        session_id,
        message_id,
    )


async def messages_among(
    store: Store, where: dict[str, Any], message_ids: Sequence[str]
) -> list[Row]:
    """Of ``message_ids`` (the vector side's hits), the messages that ``where`` still
    shows (its scope, not redacted): the vector table and this one may stand at different
    points of the log."""
    found: list[Row] = []
    for start in range(0, len(message_ids), HIDDEN_CHUNK):
        chunk = message_ids[start : start + HIDDEN_CHUNK]
        marks = ", ".join("?" for _ in chunk)
        rows = await store.fetch_all(
            f"SELECT {_COLUMNS} FROM messages WHERE message_id IN ({marks})", *chunk
        )
        found += [message_view(row) for row in rows if all(row[k] == v for k, v in where.items())]
    return found


async def redaction_of(store: Store, org_id: str, session_id: str, message_id: str) -> Row | None:
    """A message's log sequence and, if it was redacted, when, at which sequence and why."""
    return await store.fetch_one(
        "SELECT m.seq, m.redacted_at, r.seq AS redaction_seq, r.reason FROM messages m "
        "LEFT JOIN message_redactions r ON r.message_id = m.message_id "
        "WHERE m.message_id = ? AND m.org_id = ? AND m.session_id = ?",
        message_id,
        org_id,
        session_id,
    )


async def hidden_messages(store: Store, message_ids: Sequence[str]) -> frozenset[str]:
    """Of ``message_ids``, those without a row that shows them: redacted, or deleted. Asked
    ``HIDDEN_CHUNK`` ids at a time, so any number of ids takes a bounded statement."""
    wanted = list(dict.fromkeys(message_ids))
    shown: set[str] = set()
    for start in range(0, len(wanted), HIDDEN_CHUNK):
        chunk = wanted[start : start + HIDDEN_CHUNK]
        marks = ", ".join("?" for _ in chunk)
        rows = await store.fetch_all(
            f"SELECT message_id FROM messages WHERE redacted_at IS NULL "
            f"AND message_id IN ({marks})",
            *chunk,
        )
        shown.update(row["message_id"] for row in rows)
    return frozenset(wanted) - shown


async def appended_by(store: Store, org_id: str, session_id: str, command_id: str) -> int | None:
    """The sequence of the append that command ``command_id`` (its key in the log) made in
    this conversation, if the projection has applied one."""
    row = await store.fetch_one(
        "SELECT seq FROM message_commands WHERE org_id = ? AND session_id = ? AND command_id = ?",
        org_id,
        session_id,
        command_id,
    )
    return None if row is None else int(row["seq"])
