"""``memory.search`` in its three modes: the full-text side, the vector side, and their fusion.

- ``text``: the store's full-text search (scoped inside the index), as before.
- ``vector``: the query embedded with the configured model, scored against the
  organization's vectors in this process's index (``agentmem.consumers.vector_index``),
  filtered there by scope, type, state, expiry and valid time.
- ``hybrid``: both sides, each asked for a pool of candidates larger than ``limit``; every
  candidate of either side gets its cosine (from the index) and its share of the query's
  words (from the full-text side; 0 when that side did not return it), then
  ``agentmem.ranking`` fuses, boosts, floors and diversifies.

Every filter of ``memory.list`` applies to both sides: the full-text side checks them inside
its query; the vector side filters scope, type, states and ``as_of`` in the index, and the
others (tags, importance and time bounds, metadata, ``known_at``) through the ids the store
selects for them (with ``known_at``, states and ``as_of`` too: the index holds today's). A
query waits for ``after_seq`` on the memories projection, and on the vector projection too
in a mode that reads vectors. A memory the vector side found is answered from its
``memories`` row (with ``known_at``: its version known then), checked there again: the two
projections may stand at different points of the log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from agentmem import ranking
from agentmem.consumers.freshness import Freshness
from agentmem.consumers.vector_index import (
    ANY_STATE,
    Floats,
    OrgVectors,
    VectorFilter,
    VectorIndex,
)
from agentmem.domain.memories import SearchMemories
from agentmem.domain.memory_filter import MemoryFilter, decayed
from agentmem.embedding import Embedder
from agentmem.projections import memories as memory_reads
from agentmem.projections import vectors as vector_reads
from agentmem.store import Store, fulltext

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts
    from agentmem.eventlog import EventLog

T = TypeVar("T")
MEMORIES = "memories"
# Each side is asked for this many candidates per result asked, at least ``MIN_POOL``.
POOL_FACTOR = 4
MIN_POOL = 40


def _now_ms() -> int:
    return int(time.time() * 1000)


def _simple(f: MemoryFilter) -> bool:
    """Whether the vector index holds every filter of ``f`` (scope, type, states, as_of);
    else the store selects the ids the other filters keep."""
    return not (
        f.tags_any
        or f.metadata is not None
        or f.past
        or any(
            bound is not None
            for bound in (
                f.min_importance,
                f.max_importance,
                f.created_after,
                f.created_before,
                f.valid_from_after,
                f.valid_from_before,
            )
        )
    )


def _keeps(row: dict[str, Any], f: MemoryFilter, now: int) -> bool:
    """A memory row still answers the index's filters (the two projections may stand at
    different points of the log), as ``memory.list`` counts states and ``as_of``."""
    if row["org_id"] != f.org_id or any(row[k] != v for k, v in f.scope.items()):
        return False
    if f.memory_type is not None and row["memory_type"] != f.memory_type:
        return False
    if f.as_of is not None and not (
        row["valid_from"] <= f.as_of and (row["valid_to"] is None or row["valid_to"] > f.as_of)
    ):
        return False
    expired = row["expires_at"] is not None and row["expires_at"] <= now
    for state in f.states:
        if state == "expired" and (row["state"] == "expired" or expired):
            return True
        if state != "expired" and row["state"] == state and not expired:
            return True
    return False


class Recall:
    def __init__(self, store: Store, freshness: Freshness, log: EventLog | None = None) -> None:
        self.store = store
        self.freshness = freshness
        self.log = log
        self._index: VectorIndex | None = None
        self._embedder: Embedder | None = None
        self._warm = False  # the model has embedded once in this process

    @property
    def index(self) -> VectorIndex | None:
        """The process's vector index, once a search made it."""
        return self._index

    def _vectors(self) -> tuple[Embedder, VectorIndex]:
        if self._index is None or self._embedder is None:
            projection = vector_reads.PROJECTION
            self._embedder = projection.embedder
            last_seq = self.log.last_seq if self.log is not None else None
            self._index = VectorIndex(projection.model, projection.embedder.dim, last_seq=last_seq)
            if self.log is not None and self.log.keys is not None:
                # A forget's vectors leave this process's copy as its notice arrives.
                self.log.keys.on_forget(self._index.forget)
        return self._embedder, self._index

    async def search(
        self, query: SearchMemories, memory_filter: MemoryFilter
    ) -> tuple[dict[str, Any], int]:
        seq = await self.freshness.wait(MEMORIES, query.after_seq)
        now, mode = _now_ms(), query.mode
        pool = max(query.limit * POOL_FACTOR, MIN_POOL)
        wants_vectors = mode != "text" or query.mmr is not None
        # The two sides at once: the full-text read usually runs on a reader thread of the
        # store while the vector side scores on this one.
        text_side = (
            memory_reads.search_memories(self.store, query.text, memory_filter, now, pool)
            if mode != "vector"
            else None
        )
        vector_side = self._vector_side(query, memory_filter, now, pool) if wants_vectors else None
        found, near = await asyncio.gather(_maybe(text_side), _maybe(vector_side))
        rows: dict[str, dict[str, Any]] = {}
        for row in found or []:  # with known_at: a version per memory, the best first
            rows.setdefault(row["memory_id"], row)
        words = max(len(fulltext.words(query.text)), 1)
        text_share = {m: min(row["rank"] / words, 1.0) for m, row in rows.items()}
        cosine: dict[str, float] = {}
        vectors: dict[str, Any] = {}
        model = None
        if near is not None:
            copy, asked, hits, past = near
            model = self._vectors()[1].model
            cosine.update(hits)
            vectors = copy.vectors(list(dict.fromkeys([*rows, *cosine])))
            vectors.update((m, v) for m, v in past.items() if m in vectors or m in rows)
            if mode != "text":
                for memory_id, vector in vectors.items():
                    cosine.setdefault(memory_id, float(vector @ asked))
            missing = [m for m in cosine if m not in rows]
            if _simple(memory_filter):
                fetched = await vector_reads.memory_rows(self.store, memory_filter.org_id, missing)
                kept = [row for row in fetched if _keeps(row, memory_filter, now)]
            else:  # every filter, in the store (with known_at: the versions known then)
                kept = await memory_reads.memories_among(self.store, memory_filter, now, missing)
            for row in kept:
                # A memory the expiry sweep emptied has no content left to match: a vector
                # the index still holds of it (its tombstone not read yet) is stale. So is
                # one of a version known then (``known_at``) that the sweep emptied since.
                if row["state"] != "expired" and row["content"]:
                    rows.setdefault(row["memory_id"], row)
        candidates = [
            ranking.Candidate(
                memory_id=memory_id,
                text=text_share.get(memory_id, 0.0 if mode == "hybrid" else None),
                vector=cosine.get(memory_id) if mode != "text" else None,
                created_at=row["created_at"],
                importance=decayed(
                    row["importance"] / memory_reads.IMPORTANCE_SCALE,
                    row["memory_type"],
                    row["updated_at"],
                    now,
                ),
            )
            for memory_id, row in rows.items()
        ]
        boosts = ranking.Boosts(query.recency_weight, query.importance_weight, query.half_life_days)
        scored = ranking.floor(mode, ranking.score(mode, candidates, boosts, now), query.min_score)
        if query.mmr is not None:
            scored = ranking.mmr(scored, vectors, query.mmr, query.limit)
        scored = scored[: query.limit]
        items = []
        for result in scored:
            view = memory_reads.memory_view(rows[result.memory_id], now)
            view["score"] = result.score
            view["scores"] = result.components
            items.append(view)
        reply = {
            "items": items,
            "mode": mode,
            "confident": ranking.confident(mode, scored),
            "model": model,
        }
        return reply, seq

    async def _vector_side(
        self, query: SearchMemories, memory_filter: MemoryFilter, now: int, pool: int
    ) -> tuple[OrgVectors, Floats, list[tuple[str, float]], dict[str, Floats]]:
        """The organization's vectors, the query's, the nearest ``pool`` (none in text
        mode, where vectors serve MMR only), and with ``known_at`` the vectors of the
        contents known then that an update has replaced since (scored instead of the
        current ones)."""
        embedder, index = self._vectors()
        projection = vector_reads.PROJECTION.name
        vector_seq = await self.freshness.wait(projection, query.after_seq)
        copy = await index.fresh(self.store, memory_filter.org_id, vector_seq)
        if embedder.blocking or not self._warm:
            # The first call loads the model (about 0.1-0.7 s): never on the event loop.
            asked = (await asyncio.to_thread(embedder.embed, [query.text]))[0]
            self._warm = True
        else:
            asked = embedder.embed([query.text])[0]
        past: dict[str, Floats] = {}
        if memory_filter.past:
            stored = await vector_reads.past_vectors(
                self.store,
                memory_filter.org_id,
                index.model,
                memory_filter.known_at_seq,
                memory_filter.known_at,
            )
            past = {m: np.frombuffer(v, dtype=vector_reads.VECTOR_DTYPE) for m, v in stored.items()}
        if query.mode == "text":
            return copy, asked, [], past
        scope = dict(memory_filter.scope)
        if memory_filter.memory_type is not None:
            scope["memory_type"] = memory_filter.memory_type
        if not _simple(memory_filter):
            allowed = frozenset(await memory_reads.memory_ids(self.store, memory_filter, now))
        else:
            allowed = None
        if memory_filter.past and allowed is not None:
            # The store chose ``allowed`` from the versions known then, by their state,
            # expiry and valid time; the index holds today's, which must not filter again
            # (a memory superseded or archived since was live then).
            then = {m: float(v @ asked) for m, v in past.items() if m in allowed}
            # The current vectors of contents replaced since are not what was known then.
            where = VectorFilter(scope, ANY_STATE, now, None, allowed - past.keys())
            hits = [*copy.search(asked, where, pool), *then.items()]
            hits.sort(key=lambda hit: -hit[1])
            return copy, asked, hits[:pool], past
        where = VectorFilter(scope, memory_filter.states, now, memory_filter.as_of, allowed)
        return copy, asked, copy.search(asked, where, pool), past


def recall_of(parts: Parts) -> Recall:
    """The process's one ``Recall`` (and so one vector index): ``memory.search`` and
    ``context.assemble`` share it."""
    if parts.recall is None:
        parts.recall = Recall(parts.store, parts.freshness, parts.log)
    return parts.recall


async def _maybe(work: Awaitable[T] | None) -> T | None:
    return None if work is None else await work
