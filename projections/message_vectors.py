"""The ``message_vectors`` table: one embedding per message and model, made from the log, so
that ``message.search`` can find messages by meaning (``mode`` ``vector`` or ``hybrid``).

Derived data, as memory vectors are (``projections/vectors.py``): a projection of its own,
``message-vectors``, with its own checkpoint, so that a deployment that already has messages
builds their vectors from sequence 1 without touching the messages projection. Its model is
its *variant*: another model is a blue-green rebuild, as for ``vectors``. Contents already
embedded under the model (``(model, content hash)``) are reused; the rest of a batch is
embedded in one call, in a thread.

Each row keeps the columns ``message.search`` scopes by (organization, agent, user,
conversation, role), so that the vector side reads only the scope asked for, with the same
rules as the full-text side. A message leaves the table, every model's row, when it is
redacted, when its conversation, its agent or its organization is deleted, and when it is
forgotten (a user's, an agent's or a conversation's forget, erased from the files): no
tombstone is kept: a query process's copy of a scope's vectors learns of a removal when a
hit is read back from ``messages`` and is missing (docs/architecture.md, "Semantic search
of messages"). A message
without words (an empty tool-call turn) has no row: there is nothing to find it by.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from agentmem import embedding, subjects
from agentmem.embedding import Embedder
from agentmem.eventlog import StoredCommit
from agentmem.events import (
    AgentDeleted,
    ConversationDeleted,
    DataForgotten,
    MessageAppended,
    MessageRedacted,
    OrgDeleted,
)
from agentmem.projections.messages import FORGETS, position
from agentmem.projections.rows import forgotten_rows
from agentmem.projections.vectors import cached_vectors, vector_bytes
from agentmem.store import Column, Delete, RowOp, Store, Table, Upsert

MESSAGE_VECTORS = Table(
    name="message_vectors",
    columns=(
        Column("model", "text"),
        Column("message_id", "text"),
        Column("org_id", "text"),
        Column("session_id", "text"),
        Column("agent_id", "text"),
        Column("user_id", "text", nullable=True),
        Column("role", "text"),
        Column("position", "integer"),
        Column("created_at", "integer"),
        Column("content_hash", "text"),
        Column("vector", "blob"),  # float32 little-endian, unit length
        Column("seq", "integer"),
    ),
    primary_key=("model", "message_id"),
    indexes=(
        # message.search names an agent or a user (or both): one of these two is its range,
        # read from the last sequence a query process holds (consumers/message_recall.py).
        ("message_vectors_agent", ("org_id", "agent_id", "model", "seq"), False),
        ("message_vectors_user", ("org_id", "user_id", "model", "seq"), False),
        ("message_vectors_session", ("org_id", "session_id"), False),
        ("message_vectors_content", ("model", "content_hash"), False),
        ("message_vectors_message", ("message_id",), False),
    ),
    scrub=True,
)


class MessageVectorsProjection:
    filter_subjects = [
        subjects.events_of("conversation"),
        subjects.events_of("agent"),
        subjects.events_of("org_deletion"),
        subjects.events_of("forget"),
    ]
    tables = [MESSAGE_VECTORS]
    version = 1  # bumped when its rows change: docs/architecture.md, "Projection versions"

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder = embedder or embedding.configured()
        self.model = self.embedder.model_id
        self.name = "message-vectors"
        # The rows are a function of the log and this model: another model is a rebuild.
        self.variant = self.model
        self._prepared: dict[str, bytes] = {}
        self.embedded = 0  # texts this process sent to the model (the cache's misses)

    async def prepare(self, store: Store, commits: Sequence[StoredCommit]) -> None:
        """The vectors of every message content in ``commits``: from the table when it holds
        that (model, content hash), else embedded now, in a thread, in one call."""
        texts: dict[str, str] = {}
        for commit in commits:
            for event in commit.events:
                if isinstance(event, MessageAppended) and _has_words(event.content):
                    texts.setdefault(embedding.content_hash(event.content), event.content)
        found = await cached_vectors(store, self.model, list(texts), MESSAGE_VECTORS.name)
        missing = [h for h in texts if h not in found]
        if missing:
            vectors = await asyncio.to_thread(self.embedder.embed, [texts[h] for h in missing])
            self.embedded += len(missing)
            found.update(zip(missing, (vector_bytes(v) for v in vectors), strict=True))
        self._prepared = found

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops: list[RowOp] = []
        seq = commit.seq
        org_id = subjects.parse(commit.subject).org_id
        table = MESSAGE_VECTORS.name
        for index, event in enumerate(commit.events):
            match event:
                case MessageAppended() if _has_words(event.content):
                    digest = embedding.content_hash(event.content)
                    vector = self._prepared.get(digest)
                    if vector is None:  # a batch that was not prepared (a bug): park it
                        raise LookupError(f"no vector prepared for content {digest}")
                    row: dict[str, Any] = {
                        "model": self.model,
                        "message_id": event.message_id,
                        "org_id": org_id,
                        "session_id": event.session_id,
                        "agent_id": event.agent_id,
                        "user_id": event.user_id,
                        "role": event.role,
                        "position": position(seq, index),
                        "created_at": commit.time_ms,
                        "content_hash": digest,
                        "vector": vector,
                        "seq": seq,
                    }
                    ops.append(Upsert(table, row))
                case MessageRedacted(message_id=message_id, session_id=session_id):
                    # Every model's row, and only in this conversation (as the redaction).
                    key = {"message_id": message_id, "org_id": org_id, "session_id": session_id}
                    ops.append(Delete(table, key))
                case ConversationDeleted(session_id=session_id):
                    ops.append(Delete(table, {"org_id": org_id, "session_id": session_id}))
                case AgentDeleted(agent_id=agent_id):
                    ops.append(Delete(table, {"agent_id": agent_id}))
                case OrgDeleted(org_id=deleted):
                    ops.append(Delete(table, {"org_id": deleted}))
                case DataForgotten():
                    ops += forgotten_rows(event, FORGETS, [MESSAGE_VECTORS])
        return ops


def _has_words(content: str) -> bool:
    return bool(content.strip())


PROJECTION = MessageVectorsProjection()


# Reads -------------------------------------------------------------------------------------
SCOPE_COLUMNS = ("agent_id", "user_id", "session_id", "role")
CACHED_COLUMNS = ("message_id", "session_id", "agent_id", "user_id", "role", "vector", "seq")


async def scope_rows_since(
    store: Store,
    model: str,
    org_id: str,
    column: str,
    value: str,
    after: tuple[int, str],
    limit: int,
) -> list[dict[str, Any]]:
    """The rows of one agent's or one user's messages (``column`` = ``value``) after the
    keyset ``after`` (sequence, message id), in that order: how a query process's copy
    catches up."""
    if column not in ("agent_id", "user_id"):
        raise ValueError(f"a message scope is an agent or a user, not {column}")
    return await store.fetch_all(
        f"SELECT {', '.join(CACHED_COLUMNS)} FROM message_vectors WHERE org_id = ? "
        f"AND {column} = ? AND model = ? AND (seq, message_id) > (?, ?) "
        "ORDER BY seq, message_id LIMIT ?",
        org_id,
        value,
        model,
        *after,
        limit,
    )
