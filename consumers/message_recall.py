"""``message.search`` in its three modes, as ``memory.search`` has them (consumers/recall.py):

- ``text`` (the default): the store's full-text search, scoped inside the index;
- ``vector``: the query embedded with the configured model and scored against the vectors
  of the messages in the search's scope (``message_vectors``, made by the
  ``message-vectors`` projection);
- ``hybrid``: both, each asked for a pool larger than ``limit``, fused by
  ``agentmem.ranking`` with the weights, floor and confident bar of ``memory.search``.

The vector side scores the query against this process's copy of the scope's vectors (an
agent's or a user's messages, ``consumers/message_vector_cache.py``), caught up from the
store before each search, with one matrix product. Every hit is read back from
``messages`` through the same scope, not redacted, because the two projections may stand
at different points of the log and the copy learns of a removal only then.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from agentmem import ranking
from agentmem.consumers.freshness import Freshness
from agentmem.consumers.message_vector_cache import MessageVectorCache, ScopeVectors
from agentmem.embedding import Embedder, Vectors
from agentmem.projections import message_vectors
from agentmem.projections import messages as messages_read
from agentmem.queries import SearchMessages
from agentmem.store import Store, fulltext

MESSAGES = "messages"
POOL_FACTOR = 4  # each side is asked for this many candidates per result asked
MIN_POOL = 40


class MessageRecall:
    def __init__(self, store: Store, freshness: Freshness) -> None:
        self.store = store
        self.freshness = freshness
        self._warm = False  # the model has embedded once in this process
        self._cache: MessageVectorCache | None = None

    async def search(
        self, query: SearchMessages, where: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        seq = await self.freshness.wait(MESSAGES, query.after_seq)
        mode = query.mode
        pool = max(query.limit * POOL_FACTOR, MIN_POOL)
        text_side = (
            messages_read.search_messages(self.store, query.text, where, pool)
            if mode != "vector"
            else _nothing()
        )
        vector_side = self._nearest(query, where, pool) if mode != "text" else _no_vectors()
        found, (cosine, near, copy) = await asyncio.gather(text_side, vector_side)
        rows = {row["message_id"]: row for row in found}
        words = max(len(fulltext.words(query.text)), 1)
        text_share = {m: min(row["rank"] / words, 1.0) for m, row in rows.items()}
        nearest = near[:pool]
        missing = [m for m in nearest if m not in rows]
        for row in await messages_read.messages_among(self.store, where, missing):
            rows[row["message_id"]] = row
        if copy is not None:  # redacted or deleted since the copy read them
            copy.drop([m for m in missing if m not in rows], seq)
        candidates = [
            ranking.Candidate(
                memory_id=message_id,
                text=text_share.get(message_id, 0.0 if mode == "hybrid" else None),
                vector=cosine.get(message_id) if mode != "text" else None,
                created_at=row["created_at"],
                importance=0.0,
            )
            for message_id, row in rows.items()
        ]
        now = int(time.time() * 1000)
        scored = ranking.score(mode, candidates, ranking.Boosts(), now)
        scored = ranking.floor(mode, scored, query.min_score)[: query.limit]
        items = []
        for result in scored:
            item = dict(rows[result.memory_id])
            item.setdefault("rank", None)
            item["score"] = result.score
            item["scores"] = {
                "relevance": result.components["relevance"],
                "text": result.components["text"],
                "vector": result.components["vector"],
            }
            items.append(item)
        reply = {
            "items": items,
            "mode": mode,
            "confident": ranking.confident(mode, scored),
            "model": message_vectors.PROJECTION.model if mode != "text" else None,
        }
        return reply, seq

    async def _nearest(
        self, query: SearchMessages, where: dict[str, Any], pool: int
    ) -> tuple[dict[str, float], list[str], ScopeVectors | None]:
        """The cosine of the query with every message of the scope that has a vector (the
        full-text side's finds get theirs from it), the ``pool`` nearest, best first, and
        the scope's copy they came from."""
        projection = message_vectors.PROJECTION
        checkpoint = await self.freshness.wait(projection.name, query.after_seq)
        asked = await self._embed(projection.embedder, query.text)
        if self._cache is None:
            self._cache = MessageVectorCache(projection.model, projection.embedder.dim)
        copy = await self._cache.fresh(self.store, where, checkpoint)
        ids, scores = copy.scores(asked, where)
        if not ids:
            return {}, [], copy
        best = np.arange(len(ids))
        if len(ids) > pool:
            best = np.argpartition(-scores, pool - 1)[:pool]
        best = best[np.argsort(-scores[best], kind="stable")]
        return dict(zip(ids, scores.tolist(), strict=True)), [ids[int(i)] for i in best], copy

    async def _embed(self, embedder: Embedder, text: str) -> Vectors:
        if embedder.blocking or not self._warm:
            # The first call loads the model (about 0.1-0.7 s): never on the event loop.
            vectors = await asyncio.to_thread(embedder.embed, [text])
            self._warm = True
        else:
            vectors = embedder.embed([text])
        vector: Vectors = vectors[0]
        return vector


async def _nothing() -> list[dict[str, Any]]:
    return []


async def _no_vectors() -> tuple[dict[str, float], list[str], ScopeVectors | None]:
    return {}, [], None
