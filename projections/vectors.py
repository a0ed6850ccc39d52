"""The ``memory_vectors`` table: one embedding per memory and model, made from the log.

Embeddings are derived data: no event holds one. This projection reads the memory events
(and organization deletions), embeds each memory's content with the configured embedder
(``agentmem.embedding.configured()``), and keeps beside each vector the columns a search
filters by (scope, type, state, importance, valid and expiry times), so that the query
side's index (``agentmem.consumers.vector_index``) filters and scores without a join.

- **Its model is its variant.** The projection ``vectors`` declares the model id as its
  ``variant``: a process configured with another model than the one the live rows were
  made by builds the new model's rows beside them from sequence 1 (a blue-green rebuild,
  as for a version bump) while the old ones keep serving, then switches in one step.
  docs/architecture.md ("Projection versions", "Semantic search") says how.
- **Embedded once.** ``prepare`` runs before a batch is projected: it finds the batch's
  contents whose ``(model, content hash)`` the table already holds and reuses those vectors
  (an update that leaves the content alone, the same text in two scopes, a restart), and
  embeds the rest in one call, in a thread. ``project`` stays a function of the commit and
  those vectors, which are a function of the content: a replay writes the same rows.
- **Gone when the memory goes.** A deleted memory, or every memory of a deleted
  organization, keeps only a *tombstone* (no vector, no content hash, state ``deleted``),
  for every model, and so does a memory whose content the expiry sweep emptied
  (``memory.expired``, state ``expired``): the query side's index learns of it by the row's
  ``seq`` and drops it. Archived and superseded memories, and expired ones the sweep has not
  reached, keep their vectors (``memory.search`` can ask for those states, and ``as_of`` for
  superseded facts) and are filtered at read.
- **Forgotten, gone.** A forget (``data.forgotten``) of a memory, or of its user, agent,
  conversation or scope, deletes the rows outright and erases them from the files, as
  the memories projection does; the memory's events then read as ``shredded`` and a
  replay embeds nothing of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from agentmem import embedding, subjects
from agentmem.domain.memories import millionths
from agentmem.embedding import Embedder
from agentmem.eventlog import StoredCommit
from agentmem.events import (
    DataForgotten,
    MemoryAdded,
    MemoryArchived,
    MemoryDeleted,
    MemoryExpired,
    MemoryRestored,
    MemorySuperseded,
    MemoryUpdated,
    OrgDeleted,
)
from agentmem.projections import memories
from agentmem.projections.memories import FORGETS, position
from agentmem.projections.rows import forgotten_rows
from agentmem.store import Column, Copy, Delete, RowOp, Store, Table, Update, Upsert

MEMORY_VECTORS = Table(
    name="memory_vectors",
    columns=(
        Column("model", "text"),
        Column("memory_id", "text"),
        Column("org_id", "text"),
        Column("user_id", "text", nullable=True),
        Column("agent_id", "text", nullable=True),
        Column("session_id", "text", nullable=True),
        Column("memory_type", "text"),
        Column("state", "text"),  # live, archived, superseded; expired, deleted (tombstones)
        Column("importance", "integer"),  # millionths, as in memories
        Column("valid_from", "integer"),
        Column("valid_to", "integer", nullable=True),
        Column("expires_at", "integer", nullable=True),
        Column("created_at", "integer"),
        Column("position", "integer"),
        Column("content_hash", "text"),  # "" on a tombstone
        Column("vector", "blob"),  # float32 little-endian, unit length; empty on a tombstone
        Column("seq", "integer"),  # the commit that last changed the row
    ),
    primary_key=("model", "memory_id"),
    indexes=(
        ("memory_vectors_changes", ("org_id", "model", "seq", "memory_id"), False),
        ("memory_vectors_content", ("model", "content_hash"), False),
        ("memory_vectors_memory", ("memory_id",), False),
    ),
    scrub=True,
)

# The vectors a memory's content had before an update replaced it, for ``known_at``: the
# version known at a point is scored with its own vector (the earliest row replaced after
# that point; none: the current content was known then). Kept with its scope columns, so that
# a deletion, an organization's deletion and a forget reach it as they reach the memory.
MEMORY_PAST_VECTORS = Table(
    name="memory_past_vectors",
    columns=(
        Column("model", "text"),
        Column("memory_id", "text"),
        Column("seq", "integer"),  # the commit that replaced this content
        Column("replaced_at", "integer"),  # and its time (ms)
        Column("org_id", "text"),
        Column("user_id", "text", nullable=True),
        Column("agent_id", "text", nullable=True),
        Column("session_id", "text", nullable=True),
        Column("content_hash", "text"),
        Column("vector", "blob"),
    ),
    primary_key=("model", "memory_id", "seq"),
    indexes=(
        ("memory_past_vectors_changes", ("org_id", "model", "seq"), False),
        ("memory_past_vectors_time", ("org_id", "model", "replaced_at"), False),
        ("memory_past_vectors_memory", ("memory_id",), False),
    ),
    scrub=True,
)

VECTOR_DTYPE = np.dtype("<f4")
# Contents looked up per statement when ``prepare`` asks the store for cached vectors.
LOOKUP_CHUNK = 500
_TOMBSTONE = {"state": "deleted", "content_hash": "", "vector": b""}


def vector_bytes(vector: np.ndarray[Any, Any]) -> bytes:
    return np.asarray(vector, dtype=VECTOR_DTYPE).tobytes()


class VectorsProjection:
    # Org deletions and forgets too (their own subjects): they remove vectors.
    filter_subjects = [
        subjects.events_of("memory"),
        subjects.events_of("org_deletion"),
        subjects.events_of("forget"),
    ]
    tables = [MEMORY_VECTORS, MEMORY_PAST_VECTORS]
    version = 1  # bumped when its rows change: docs/architecture.md, "Projection versions"

    def __init__(self, embedder: Embedder | None = None) -> None:
        # The model is loaded on the first embedding, not here: naming it is cheap.
        self.embedder = embedder or embedding.configured()
        self.model = self.embedder.model_id
        self.name = "vectors"
        # The rows are a function of the log and this model: another model is a rebuild.
        self.variant = self.model
        self._prepared: dict[str, bytes] = {}  # content hash -> vector, for one batch
        self.embedded = 0  # texts this process sent to the model (the cache's misses)

    async def prepare(self, store: Store, commits: Sequence[StoredCommit]) -> None:
        """The vectors of every content in ``commits``: from the table when it holds that
        (model, content hash), else embedded now, in a thread, in one call."""
        texts: dict[str, str] = {}
        for commit in commits:
            for event in commit.events:
                if isinstance(event, MemoryAdded | MemoryUpdated):
                    texts.setdefault(embedding.content_hash(event.content), event.content)
        found = await cached_vectors(store, self.model, list(texts))
        missing = [h for h in texts if h not in found]
        if missing:
            vectors = await asyncio.to_thread(self.embedder.embed, [texts[h] for h in missing])
            self.embedded += len(missing)
            found.update(zip(missing, (vector_bytes(v) for v in vectors), strict=True))
        self._prepared = found

    def _vector(self, content: str) -> tuple[str, bytes]:
        digest = embedding.content_hash(content)
        vector = self._prepared.get(digest)
        if vector is None:  # a batch that was not prepared (a bug, not a state): park it
            raise LookupError(f"no vector prepared for content {digest}")
        return digest, vector

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops: list[RowOp] = []
        model, seq = self.model, commit.seq
        for index, event in enumerate(commit.events):
            match event:
                case MemoryAdded():
                    digest, vector = self._vector(event.content)
                    row = {
                        "model": model,
                        "memory_id": event.memory_id,
                        "org_id": event.org_id,
                        "user_id": event.user_id,
                        "agent_id": event.agent_id,
                        "session_id": event.session_id,
                        "memory_type": event.memory_type,
                        "state": "live",
                        "importance": millionths(event.importance),
                        "valid_from": event.valid_from,
                        "valid_to": event.valid_to,
                        "expires_at": event.expires_at,
                        "created_at": commit.time_ms,
                        "position": position(seq, index),
                        "content_hash": digest,
                        "vector": vector,
                        "seq": seq,
                    }
                    ops.append(Upsert(MEMORY_VECTORS.name, row))
                case MemoryUpdated():
                    digest, vector = self._vector(event.content)
                    values = {
                        "content_hash": digest,
                        "vector": vector,
                        "importance": millionths(event.importance),
                        "valid_from": event.valid_from,
                        "valid_to": event.valid_to,
                        "expires_at": event.expires_at,
                        "seq": seq,
                    }
                    # The content known until now keeps its vector, for ``known_at``.
                    key = {"model": model, "memory_id": event.memory_id}
                    kept = {"seq": seq, "replaced_at": commit.time_ms}
                    past = MEMORY_PAST_VECTORS.name
                    columns = MEMORY_PAST_VECTORS.column_names
                    ops.append(Copy(past, MEMORY_VECTORS.name, key, columns, kept))
                    ops.append(self._update(event.memory_id, values))
                case MemorySuperseded():
                    values = {"state": "superseded", "valid_to": event.valid_to, "seq": seq}
                    ops.append(self._update(event.memory_id, values))
                case MemoryArchived(memory_id=memory_id):
                    ops.append(self._update(memory_id, {"state": "archived", "seq": seq}))
                case MemoryRestored(memory_id=memory_id):
                    ops.append(self._update(memory_id, {"state": "live", "seq": seq}))
                case MemoryExpired(memory_id=memory_id):
                    # The sweep empties an expired memory's content: its vectors go too.
                    key = {"memory_id": memory_id}
                    values = {**_TOMBSTONE, "state": "expired", "seq": seq}
                    ops.append(Update(MEMORY_VECTORS.name, key, values))
                    ops.append(Delete(MEMORY_PAST_VECTORS.name, key))
                case MemoryDeleted(memory_id=memory_id):
                    # Every model's row: an old model's vectors of it must go too.
                    key = {"memory_id": memory_id}
                    ops.append(Update(MEMORY_VECTORS.name, key, {**_TOMBSTONE, "seq": seq}))
                    ops.append(Delete(MEMORY_PAST_VECTORS.name, key))
                case OrgDeleted(org_id=deleted):
                    key = {"org_id": deleted}
                    ops.append(Update(MEMORY_VECTORS.name, key, {**_TOMBSTONE, "seq": seq}))
                    ops.append(Delete(MEMORY_PAST_VECTORS.name, key))
                case DataForgotten():
                    # Gone, rows and all (every model's, erased from the files), as from
                    # the memories tables: a tombstone would keep who and when. The query
                    # side's copy is not told; ``memory.search`` drops a vector hit whose
                    # memory has no row (docs/security.md, "Forgetting").
                    ops += forgotten_rows(event, FORGETS, [MEMORY_VECTORS, MEMORY_PAST_VECTORS])
        return ops

    def _update(self, memory_id: str, values: dict[str, Any]) -> Update:
        return Update(MEMORY_VECTORS.name, {"model": self.model, "memory_id": memory_id}, values)


PROJECTION = VectorsProjection()


# Reads -------------------------------------------------------------------------------------
async def cached_vectors(
    store: Store, model: str, hashes: list[str], table: str = MEMORY_VECTORS.name
) -> dict[str, bytes]:
    """The stored vectors of these content hashes under ``model`` (in ``table``, which
    has the columns ``model``, ``content_hash`` and ``vector``)."""
    found: dict[str, bytes] = {}
    for start in range(0, len(hashes), LOOKUP_CHUNK):
        chunk = hashes[start : start + LOOKUP_CHUNK]
        marks = ", ".join("?" for _ in chunk)
        rows = await store.fetch_all(
            f"SELECT content_hash, vector FROM {table} WHERE model = ? "
            f"AND content_hash IN ({marks})",
            model,
            *chunk,
        )
        for row in rows:
            if row["vector"]:
                found[row["content_hash"]] = bytes(row["vector"])
    return found


INDEX_COLUMNS = (
    "memory_id",
    "user_id",
    "agent_id",
    "session_id",
    "memory_type",
    "state",
    "importance",
    "valid_from",
    "valid_to",
    "expires_at",
    "created_at",
    "vector",
    "seq",
)


async def changed_since(
    store: Store, org_id: str, model: str, after: tuple[int, str], limit: int
) -> list[dict[str, Any]]:
    """The rows of one organization and model changed after ``after`` (a (seq, memory_id)
    keyset), in that order: how the query side's index catches up."""
    seq, memory_id = after
    return await store.fetch_all(
        f"SELECT {', '.join(INDEX_COLUMNS)} FROM memory_vectors WHERE org_id = ? AND model = ? "
        # A row value, so that both engines seek the index instead of scanning the org.
        "AND (seq, memory_id) > (?, ?) ORDER BY seq, memory_id LIMIT ?",
        org_id,
        model,
        seq,
        memory_id,
        limit,
    )


async def memory_rows(store: Store, org_id: str, memory_ids: list[str]) -> list[dict[str, Any]]:
    """The ``memories`` rows of the memories the vector side found, in one organization."""
    if not memory_ids:
        return []
    marks = ", ".join("?" for _ in memory_ids)
    # By primary key alone: with ``org_id = ?`` too, SQLite chose the (org, position) index
    # and walked the whole organization (10 ms at 20,000 memories instead of 0.2).
    rows = await store.fetch_all(
        f"SELECT {memories.COLUMNS} FROM memories WHERE memory_id IN ({marks})", *memory_ids
    )
    return [row for row in rows if row["org_id"] == org_id]


async def past_vectors(
    store: Store, org_id: str, model: str, known_at_seq: int | None, known_at: int | None
) -> dict[str, bytes]:
    """For ``known_at``/``known_at_seq``: each memory of the organization whose content an
    update replaced after that point, with the vector of the content known then (the
    earliest one replaced after it). Usually few: the memories changed since."""
    by_seq = known_at_seq is not None
    column = "seq" if by_seq else "replaced_at"
    rows = await store.fetch_all(
        f"SELECT memory_id, vector FROM memory_past_vectors WHERE org_id = ? AND model = ? "
        f"AND {column} > ? ORDER BY memory_id, seq",
        org_id,
        model,
        known_at_seq if by_seq else known_at,
    )
    found: dict[str, bytes] = {}
    for row in rows:
        found.setdefault(row["memory_id"], bytes(row["vector"]))
    return found
