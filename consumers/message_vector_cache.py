"""A query process's copies of message vectors, one per searched scope (an agent's or a
user's messages in an organization), caught up from ``message_vectors`` before each search.

Why a copy: reading a scope's vectors from the store on every search cost about 100 ms for
10,000 messages on the loaded 2-core machine (docs/performance.md); the copy reads only the
rows written since the last search (one indexed range read, usually empty) and scores with
one matrix product.

- **Removals.** Rows of ``message_vectors`` are deleted outright (a redaction, a deleted
  conversation, agent or organization, a forget): no tombstone reaches the copy. A search
  reads every hit back from ``messages`` through its scope (``message_recall``); a hit that
  is not there is marked dead in the copy (``drop``) and never scored again. A copy with
  more than half its rows dead is loaded afresh.
- **Bounded.** At most ``AGENTMEM_MESSAGE_VECTOR_ROWS`` rows together (default 500,000,
  about 550 MB) and a copy not searched for ``AGENTMEM_VECTOR_INDEX_IDLE_S`` seconds is
  dropped, least recently searched first, never the one just searched; the next search of
  its scope loads it again.
- **Reset.** When the projection's checkpoint goes back (a replay), every copy is dropped.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agentmem.projections import message_vectors as reads
from agentmem.projections.vectors import VECTOR_DTYPE
from agentmem.store import Store

PAGE = 20_000
DEFAULT_MAX_ROWS = 500_000
DEFAULT_IDLE_SECONDS = 900.0
FILTERS = ("session_id", "agent_id", "user_id", "role")
Key = tuple[str, str, str]  # organization, scope column (agent_id or user_id), its value


def _setting(name: str, default: float) -> float:
    value = os.environ.get(f"AGENTMEM_{name}")
    return float(value) if value else default


class ScopeVectors:
    """One scope's message vectors: a float32 matrix, ids, and integer codes of the
    columns a message search filters by."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.dead = 0
        self.ids: list[str] = []
        self.seqs: list[int] = []  # the commit of each message
        self.row_of: dict[str, int] = {}
        self.after: tuple[int, str] = (0, "")
        self.checkpoint = 0
        self.matrix = np.zeros((256, dim), dtype=np.float32)
        self.alive = np.zeros(256, dtype=np.bool_)
        self.codes: dict[str, dict[str | None, int]] = {c: {} for c in FILTERS}
        self.columns: dict[str, npt.NDArray[np.int32]] = {
            c: np.zeros(256, dtype=np.int32) for c in FILTERS
        }

    def _grow(self, capacity: int) -> None:
        matrix = np.zeros((capacity, self.dim), dtype=np.float32)
        matrix[: self.n] = self.matrix[: self.n]
        self.matrix = matrix
        alive = np.zeros(capacity, dtype=np.bool_)
        alive[: self.n] = self.alive[: self.n]
        self.alive = alive
        for name, column in self.columns.items():
            grown = np.zeros(capacity, dtype=np.int32)
            grown[: self.n] = column[: self.n]
            self.columns[name] = grown

    def apply(self, rows: Sequence[dict[str, Any]]) -> None:
        fresh = [row for row in rows if row["message_id"] not in self.row_of]
        if rows:
            self.after = (int(rows[-1]["seq"]), str(rows[-1]["message_id"]))
        if not fresh:
            return
        start, end = self.n, self.n + len(fresh)
        if end > self.matrix.shape[0]:
            self._grow(max(end, 2 * self.matrix.shape[0]))
        joined = b"".join(bytes(row["vector"]) for row in fresh)
        self.matrix[start:end] = np.frombuffer(joined, dtype=VECTOR_DTYPE).reshape(-1, self.dim)
        self.alive[start:end] = True
        for name in FILTERS:
            codes = self.codes[name]
            values = [codes.setdefault(row[name], len(codes)) for row in fresh]
            self.columns[name][start:end] = values
        for offset, row in enumerate(fresh):
            self.row_of[row["message_id"]] = start + offset
            self.ids.append(row["message_id"])
            self.seqs.append(int(row["seq"]))
        self.n = end

    def drop(self, message_ids: Sequence[str], shown_until: int) -> None:
        """These messages were read back and are missing from ``messages``, whose
        checkpoint is ``shown_until``: those it has reached are gone (redacted, deleted),
        never scored again; a newer one is only not there yet."""
        for message_id in message_ids:
            slot = self.row_of.get(message_id)
            if slot is not None and self.alive[slot] and self.seqs[slot] <= shown_until:
                self.alive[slot] = False
                self.dead += 1

    def scores(
        self, query: npt.NDArray[np.float32], where: dict[str, Any]
    ) -> tuple[list[str], npt.NDArray[np.float32]]:
        """The ids and cosines of the live messages ``where`` allows (its agent, user,
        conversation and role)."""
        n = self.n
        mask = self.alive[:n].copy()
        for name in FILTERS:
            value = where.get(name)
            if value is None:
                continue
            code = self.codes[name].get(value)
            if code is None:
                return [], np.zeros(0, dtype=np.float32)
            mask &= self.columns[name][:n] == code
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return [], np.zeros(0, dtype=np.float32)
        found: npt.NDArray[np.float32] = self.matrix[rows] @ query
        return [self.ids[int(i)] for i in rows], found


class MessageVectorCache:
    def __init__(self, model: str, dim: int, max_rows: int | None = None) -> None:
        self.model = model
        self.dim = dim
        self.max_rows = max_rows or int(_setting("MESSAGE_VECTOR_ROWS", DEFAULT_MAX_ROWS))
        self.idle_seconds = _setting("VECTOR_INDEX_IDLE_S", DEFAULT_IDLE_SECONDS)
        self.evicted = 0
        self._copies: OrderedDict[Key, ScopeVectors] = OrderedDict()
        self._used: dict[Key, float] = {}
        self._locks: dict[Key, asyncio.Lock] = {}

    async def fresh(self, store: Store, where: dict[str, Any], checkpoint: int) -> ScopeVectors:
        """The copy of the scope ``where`` names (its agent's, else its user's messages),
        caught up with the store."""
        column = "agent_id" if where.get("agent_id") is not None else "user_id"
        key: Key = (where["org_id"], column, where[column])
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            copy = self._copies.get(key)
            if copy is None or checkpoint < copy.checkpoint or copy.dead * 2 > max(copy.n, 1):
                copy = self._copies[key] = ScopeVectors(self.dim)
            while True:
                rows = await reads.scope_rows_since(
                    store, self.model, key[0], column, key[2], copy.after, PAGE
                )
                copy.apply(rows)
                if len(rows) < PAGE:
                    break
            copy.checkpoint = max(copy.checkpoint, checkpoint)
            if self._copies.get(key) is copy:
                self._copies.move_to_end(key)
                self._used[key] = time.monotonic()
                self._evict(key)
            return copy

    def _evict(self, keep: Key) -> None:
        now = time.monotonic()
        total = sum(copy.matrix.shape[0] for copy in self._copies.values())
        for key in list(self._copies):
            idle = now - self._used.get(key, now) > self.idle_seconds
            if key == keep or not (idle or total > self.max_rows):
                continue
            total -= self._copies.pop(key).matrix.shape[0]
            self._used.pop(key, None)
            lock = self._locks.get(key)
            if lock is not None and not lock.locked():
                del self._locks[key]
            self.evicted += 1
