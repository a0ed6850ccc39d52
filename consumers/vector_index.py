"""The query side's vector index: each organization's vectors in one numpy matrix, kept in
the query process and caught up from the store before each search.

Where it lives and why: the store holds the vectors (``memory_vectors``, made by the
``vectors-*`` projection) and is the only truth; each query process holds a copy of the
organizations it searched, as a float32 matrix and one numpy array per filter column. A
search filters those arrays (scope, type, state, expiry, valid time) and scores the rows
left with one matrix product: exact, so its recall is that of the model (about 6 ms for
100,000 vectors of 256 dimensions on 2 cores; a scope of 1,000 well under 1 ms).

- **Catching up.** Every row carries the sequence of the commit that last changed it. Before
  a search the index reads the organization's rows changed after the last one it holds
  (one indexed range read, usually empty), so a process sees other processes' writes, and
  a deletion arrives as a tombstone row that removes the vector from the matrix.
- **Restart.** Nothing is saved: the first search of an organization loads its rows
  (100,000 in about a second) and later ones only the changes.
- **Replay.** A replay into another store is another process's business; a projection
  reset under this process (checkpoint moved back) drops every copy, which then reloads.
- **Tenants.** One copy per organization and model: a search never scores another
  organization's vectors, and its cost is that of its own organization.
- **Bounded.** The copies of one process hold at most ``max_rows`` rows together
  (``AGENTMEM_VECTOR_INDEX_ROWS``, default 1,000,000: about 1.1 GB) and a copy not searched
  for ``idle_seconds`` (``AGENTMEM_VECTOR_INDEX_IDLE_S``, default 900) is dropped: after a
  search the least recently searched copies go until the rest fit, never the one just
  searched. A dropped copy is loaded again from the store by the next search of its
  organization, as after a restart: eviction costs time, never an answer.
- **Forgotten.** A forget deletes its rows outright (no tombstone), so catching up cannot
  tell the copy. The key ring's notice does (``forget``, in every process, as it arrives):
  the vectors its wildcard names (by each row's data key name) leave the copy at once and
  are kept out of later catch-ups until the vector projection has passed the log's last
  sequence at the notice (the forget's own event comes after it); then the copy is loaded
  afresh from the store, which no longer holds them. So no vector of forgotten data stays
  in a process's memory, and a memory written again after the forget comes back.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agentmem.keys import matches
from agentmem.personal import NO_ID
from agentmem.projections import vectors as reads
from agentmem.store import Store

PAGE = 20_000  # rows read per statement while catching up
NEVER = np.iinfo(np.int64).max  # a NULL valid_to or expires_at
STATES = {"live": 0, "archived": 1, "superseded": 2, "deleted": 3, "expired": 4}
# Every state a read may ask for: a filter that leaves the states to ``allowed``.
ANY_STATE = ("live", "archived", "superseded", "expired")
SCOPE_COLUMNS = ("user_id", "agent_id", "session_id", "memory_type")
# Dead rows (deleted since loaded) past this share of the copy: it is loaded afresh.
COMPACT_SHARE = 0.5
TIMES = ("importance", "valid_from", "valid_to", "expires_at", "created_at")  # int64

# The bounds of a process's copies (see "Bounded" above), from the environment.
DEFAULT_MAX_ROWS = 1_000_000
DEFAULT_IDLE_SECONDS = 900.0

Floats = npt.NDArray[np.float32]


def _setting(name: str, default: float) -> float:
    value = os.environ.get(f"AGENTMEM_{name}")
    return float(value) if value else default


def key_name(org_id: str, row: dict[str, Any]) -> str:
    """The name of the data key that sealed the memory of ``row`` (``personal.key_name``)."""
    scope = [row["user_id"] or NO_ID, row["agent_id"] or NO_ID, row["session_id"] or NO_ID]
    return ".".join([org_id, *scope, "memory", row["memory_id"]])


@dataclass
class Forgotten:
    """A forget heard of: its wildcard over key names, and the log's last sequence when it
    was heard (None until read); every row it forgets was last changed at or before it."""

    pattern: str
    bound: int | None = None


@dataclass(frozen=True)
class VectorFilter:
    """What ``memory.search`` filters by, as the index can: scope columns equal, the states
    asked (as ``memory.list`` counts them: a live or archived memory whose ``expires_at``
    has passed is expired only), valid at ``as_of`` when given, and among ``allowed`` ids
    when the store computed them (filters the index does not hold: tags, metadata...)."""

    scope: dict[str, str]
    states: tuple[str, ...]
    now: int
    as_of: int | None = None
    allowed: frozenset[str] | None = None


class OrgVectors:
    """One organization's vectors under one model."""

    def __init__(self, dim: int, org_id: str = "") -> None:
        self.dim = dim
        self.org_id = org_id
        self.n = 0
        self.dead = 0
        self.ids: list[str] = []
        self.names: list[str] = []  # each row's data key name (``key_name``)
        self.row_of: dict[str, int] = {}
        self.after: tuple[int, str] = (0, "")
        self.checkpoint = 0
        self.codes: dict[str, dict[str | None, int]] = {c: {} for c in SCOPE_COLUMNS}
        self.matrix = np.zeros((0, dim), dtype=np.float32)
        self.columns: dict[str, npt.NDArray[Any]] = {}
        self._grow(1024)

    def _grow(self, capacity: int) -> None:
        old = self.matrix.shape[0]
        matrix = np.zeros((capacity, self.dim), dtype=np.float32)
        matrix[:old] = self.matrix
        self.matrix = matrix
        kinds = {**{c: np.int32 for c in SCOPE_COLUMNS}, "state": np.int8, "alive": np.bool_}
        for name in (*kinds, *TIMES):
            column: npt.NDArray[Any] = np.zeros(capacity, dtype=kinds.get(name, np.int64))
            if name in self.columns:
                column[:old] = self.columns[name]
            self.columns[name] = column

    def _code(self, column: str, value: str | None) -> int:
        codes = self.codes[column]
        code = codes.get(value)
        if code is None:
            code = codes[value] = len(codes)
        return code

    def apply(self, rows: Sequence[dict[str, Any]], hidden: Sequence[str] = ()) -> None:
        """Rows of ``memory_vectors`` changed since the last call, in (seq, id) order; a
        row whose key name a wildcard of ``hidden`` matches (forgotten) is left out."""
        if not rows:
            return
        slots: list[int] = []
        kept: list[dict[str, Any]] = []
        for row in rows:
            memory_id = row["memory_id"]
            slot = self.row_of.get(memory_id)
            gone = not row["vector"]  # a tombstone: deleted, or expired and emptied
            name = key_name(self.org_id, row)
            if hidden and any(matches(pattern, name) for pattern in hidden):
                if slot is not None:
                    self._evict(slot)
                continue
            if slot is None:
                if gone:
                    continue  # gone before this copy saw it
                slot = self.row_of[memory_id] = self.n
                self.ids.append(memory_id)
                self.names.append(name)
                self.n += 1
            elif gone and self.columns["alive"][slot]:
                self.dead += 1
            slots.append(slot)
            kept.append(row)
        last = rows[-1]
        self.after = (int(last["seq"]), str(last["memory_id"]))
        if not kept:
            return
        for slot, row in zip(slots, kept, strict=True):
            self.names[slot] = key_name(self.org_id, row)
        if self.n > self.matrix.shape[0]:
            self._grow(max(self.n, 2 * self.matrix.shape[0]))
        at = np.array(slots, dtype=np.int64)
        alive = np.array([bool(r["vector"]) for r in kept], dtype=np.bool_)
        vectors = np.zeros((len(kept), self.dim), dtype=np.float32)
        for i, row in enumerate(kept):
            if alive[i]:
                vectors[i] = np.frombuffer(row["vector"], dtype=reads.VECTOR_DTYPE)
        self.matrix[at] = vectors
        columns = self.columns
        columns["alive"][at] = alive
        for name in SCOPE_COLUMNS:
            columns[name][at] = [self._code(name, r[name]) for r in kept]
        columns["state"][at] = [STATES[r["state"]] for r in kept]
        for name in ("importance", "valid_from", "created_at"):
            columns[name][at] = [r[name] for r in kept]
        for name in ("valid_to", "expires_at"):
            columns[name][at] = [NEVER if r[name] is None else r[name] for r in kept]

    def _evict(self, slot: int) -> None:
        """The row leaves the copy: its vector overwritten, never a search's hit again."""
        if self.columns["alive"][slot]:
            self.dead += 1
        self.columns["alive"][slot] = False
        self.matrix[slot] = 0.0

    def forget(self, pattern: str) -> int:
        """Evict every row whose key name ``pattern`` matches; how many it held."""
        evicted = 0
        for slot in range(self.n):
            if self.columns["alive"][slot] and matches(pattern, self.names[slot]):
                self._evict(slot)
                evicted += 1
        return evicted

    def mask(self, where: VectorFilter) -> npt.NDArray[np.bool_] | None:
        """The rows a search may return; None when none can (an unknown scope value)."""
        n, columns = self.n, self.columns
        mask = columns["alive"][:n].copy()
        for name, value in where.scope.items():
            code = self.codes[name].get(value)
            if code is None:
                return None
            mask &= columns[name][:n] == code
        state = columns["state"][:n]
        expired = columns["expires_at"][:n] <= where.now
        wanted = np.zeros(n, dtype=np.bool_)
        for name in where.states:
            if name == "expired":  # before the sweep's memory.expired as after
                wanted |= (state == STATES["expired"]) | ((state != STATES["deleted"]) & expired)
            else:
                wanted |= (state == STATES[name]) & ~expired
        mask &= wanted
        if where.allowed is not None:
            allowed = np.zeros(n, dtype=np.bool_)
            slots = [self.row_of[m] for m in where.allowed if m in self.row_of]
            allowed[np.array(slots, dtype=np.int64)] = True
            mask &= allowed
        if where.as_of is not None:
            mask &= columns["valid_from"][:n] <= where.as_of
            mask &= columns["valid_to"][:n] > where.as_of
        return mask

    def search(self, query: Floats, where: VectorFilter, k: int) -> list[tuple[str, float]]:
        """The ``k`` rows nearest ``query`` (cosine, exact) among those ``where`` allows."""
        mask = self.mask(where) if self.n else None
        if mask is None:
            return []
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return []
        if rows.size * 4 < self.n:  # a small scope: gather its rows
            scores = self.matrix[rows] @ query
        else:  # most of the organization: one product over the whole matrix
            scores = (self.matrix[: self.n] @ query)[rows]
        best = np.argpartition(-scores, k - 1)[:k] if rows.size > k else np.arange(rows.size)
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(self.ids[int(rows[i])], float(scores[i])) for i in best]

    def vectors(self, memory_ids: Sequence[str]) -> dict[str, Floats]:
        """The vectors of these memories that this copy holds (alive)."""
        found: dict[str, Floats] = {}
        alive = self.columns["alive"]
        for memory_id in memory_ids:
            slot = self.row_of.get(memory_id)
            if slot is not None and alive[slot]:
                found[memory_id] = self.matrix[slot]
        return found


class VectorIndex:
    """Every organization's copy in this process, for one model, least recently searched
    first, within ``max_rows`` rows and ``idle_seconds`` of idleness."""

    def __init__(
        self,
        model: str,
        dim: int,
        max_rows: int | None = None,
        idle_seconds: float | None = None,
        last_seq: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.model = model
        self.dim = dim
        self.max_rows = max_rows or int(_setting("VECTOR_INDEX_ROWS", DEFAULT_MAX_ROWS))
        self.idle_seconds = idle_seconds or _setting("VECTOR_INDEX_IDLE_S", DEFAULT_IDLE_SECONDS)
        self.evicted = 0  # copies dropped since start (a figure for tests and operators)
        self._orgs: OrderedDict[str, OrgVectors] = OrderedDict()
        self._used: dict[str, float] = {}  # org -> monotonic time of its last search
        self._locks: dict[str, asyncio.Lock] = {}
        # The log's last sequence (``EventLog.last_seq``): where a forget heard now ends.
        self._last_seq = last_seq
        self._forgotten: dict[str, list[Forgotten]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def holds(self, org_id: str, memory_id: str) -> bool:
        """Does this process's copy of ``org_id`` hold a live vector of ``memory_id``?"""
        copy = self._orgs.get(org_id)
        slot = copy.row_of.get(memory_id) if copy is not None else None
        return slot is not None and copy is not None and bool(copy.columns["alive"][slot])

    def forget(self, pattern: str) -> None:
        """A forget's notice (``KeyRing.on_forget``): the vectors ``pattern`` names leave
        this process's copy now and stay out until the store has dropped them too."""
        org_id = pattern.split(".", 1)[0]
        if org_id in ("*", ">"):
            self._orgs.clear()  # no forget names every organization; be safe if one did
            return
        copy = self._orgs.get(org_id)
        if copy is not None:
            copy.forget(pattern)
        # Kept even when no copy is loaded: a first load may read a store that lags.
        heard = Forgotten(pattern)
        self._forgotten.setdefault(org_id, []).append(heard)
        if self._last_seq is not None:
            task = asyncio.get_running_loop().create_task(self._bound(heard))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _bound(self, heard: Forgotten) -> None:
        assert self._last_seq is not None
        try:
            heard.bound = await self._last_seq()
        except Exception:  # the next search reads it again
            heard.bound = None

    def _settled(self, org_id: str, checkpoint: int) -> bool:
        """Have the forgets heard for ``org_id`` all reached the store (the copy may be
        loaded afresh)? Drops them when they have."""
        heard = self._forgotten.get(org_id)
        if not heard:
            return False
        if any(h.bound is None or checkpoint < h.bound for h in heard):
            return False
        del self._forgotten[org_id]
        return True

    def held(self) -> dict[str, int]:
        """The organizations this process holds a copy of, with their rows."""
        return {org_id: copy.n for org_id, copy in self._orgs.items()}

    async def fresh(self, store: Store, org_id: str, checkpoint: int) -> OrgVectors:
        """The organization's copy, caught up with the store. ``checkpoint``: the vector
        projection's, as the query read it (lower than before: the table was rebuilt)."""
        lock = self._locks.setdefault(org_id, asyncio.Lock())
        async with lock:
            copy = self._orgs.get(org_id)
            heard = self._forgotten.get(org_id, [])
            if heard and self._last_seq is not None:
                for forgotten in heard:
                    if forgotten.bound is None:  # its read failed or has not ended: again
                        await self._bound(forgotten)
            stale = copy is not None and (
                checkpoint < copy.checkpoint
                or (copy.dead > 1_000 and copy.dead > COMPACT_SHARE * copy.n)
                or self._settled(org_id, checkpoint)
            )
            if copy is None or stale:
                copy = self._orgs[org_id] = OrgVectors(self.dim, org_id)
            hidden = [h.pattern for h in self._forgotten.get(org_id, [])]
            while True:
                rows = await reads.changed_since(store, org_id, self.model, copy.after, PAGE)
                copy.apply(rows, hidden)
                if len(rows) < PAGE:
                    break
            copy.checkpoint = max(copy.checkpoint, checkpoint)
            if self._orgs.get(org_id) is copy:  # not dropped by another search meanwhile
                self._orgs.move_to_end(org_id)
                self._used[org_id] = time.monotonic()
                self._evict(keep=org_id)
            return copy

    def _evict(self, keep: str) -> None:
        """Drop the least recently searched copies past the bounds (never ``keep``). A
        search that holds a dropped copy finishes with it; the next one reloads."""
        now = time.monotonic()
        total = sum(copy.matrix.shape[0] for copy in self._orgs.values())
        for org_id in list(self._orgs):
            idle = now - self._used.get(org_id, now) > self.idle_seconds
            if org_id == keep or not (idle or total > self.max_rows):
                continue
            total -= self._orgs.pop(org_id).matrix.shape[0]
            self._used.pop(org_id, None)
            lock = self._locks.get(org_id)
            if lock is not None and not lock.locked():
                del self._locks[org_id]
            self.evicted += 1
