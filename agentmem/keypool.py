"""Data keys made ahead, so that a new memory does not wait for its key to be stored.

A memory is its own data subject (``agentmem.personal``): each new one needs a key, and
storing a key is a write to the key bucket, fsynced like the event's own write. Made on
the request path, it was one more durable write in series before the event's append: it
took ``memory.add`` from 1.8x to 4.2x the raw command (docs/performance.md, "Memories").
Written concurrently with the event instead, an event could be stored sealed with a key that
never is (the key's write failing, or the process dying in between), and two processes
racing to make one memory's key could each seal with their own: an unreadable memory.

So a process keeps, per scope that it adds memories to again and again, a few keys made
ahead, off the request path, each *already stored* before any event names it; a refill is
stored in one atomic batch (``KeyRing.create_many``), so that a busy scope's keys cost one
durable write per 64 memories, not one each:

    <org>.<user>.<agent>.<session>.memory.k_<16 hex>

A new memory takes one (``take``): its first event is sealed under it, and the event's
sealed part names it (``Sealed.k``), as it names every key. Each key seals one memory only
and is under the scope's prefix, so:

- forgetting a user, an agent, a session or a memory scope finds it by the same wildcard
  as before (``agentmem.domain.forget.keys_of``);
- forgetting one memory deletes, besides that wildcard, every key its events name
  (``EventLog.sealed_keys``): this one, and no other memory's.

A process's later events on that memory are sealed with the same key (``name_for``); another
process's, which never saw it made, with the memory's usual key (``<scope>.memory.<id>``),
which its events name too. Keys made ahead and never used (the process stopped, or the
scope went quiet and its pool was dropped) seal nothing: they stay in the bucket, at most
``POOL_SIZE`` per scope per such event, and go with the scope's forget.

A forget in an organization (``KeyRing.on_forget``) empties that organization's pools: a
key it erased must never seal a new memory; a refill, or a batch's keys, under way in that
organization when it came is thrown away when it ends. Another organization's pools and
batches are left alone: its forgets made every batch of new memories everywhere answer
``unavailable`` (half of them, with forgets going on in one organization).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

import structlog

from agentmem.errors import UnavailableError
from agentmem.keys import MAX_ATOMIC, DataKey, KeyRing

log = structlog.get_logger(__name__)

# Keys made ahead per scope. A pool is refilled when half of it is used, all at once and in
# one atomic batch (``KeyRing.create_many``): one durable write for up to 64 keys, where a
# key each was a second durable write per new memory, which with many clients halved the
# rate of adds (the disk's fsyncs were shared by keys and events).
POOL_SIZE = 64
FIRST_TARGET = 2
# Scopes with a pool; the least recently used one's pool is dropped past this.
MAX_POOLS = 1024
# Scopes seen once (a pool starts at a scope's second new memory: one-off scopes get none).
MAX_SEEN = 16_384
# Subjects whose key this process chose (``name_for``).
MAX_NAMED = 100_000
POOL_TOKEN = "k_"


def prefix_of(name: str) -> str:
    """A key name without its last token: ``<org>.<user>.<agent>.<session>.<aggregate>``."""
    return name.rsplit(".", 1)[0]


def org_of(name: str) -> str:
    """The organization of a key name or a wildcard over them (its first token)."""
    return name.partition(".")[0]


# A forget's wildcard whose first token is one of these spans every organization.
_EVERY_ORG = ("*", ">")


@dataclass
class _Pool:
    """One scope's keys made ahead. ``target`` starts at 2 and doubles with each refill up
    to the pool's size: a scope written twice gets two keys ahead, not sixteen, and only a
    scope that keeps adding memories keeps many."""

    keys: list[DataKey] = field(default_factory=list)
    target: int = FIRST_TARGET


class KeyPool:
    def __init__(self, ring: KeyRing, size: int = POOL_SIZE) -> None:
        self.ring = ring
        self.size = size
        self._pools: OrderedDict[str, _Pool] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._named: OrderedDict[str, str] = OrderedDict()  # subject -> key name
        self._refills: dict[str, asyncio.Task[None]] = {}
        # Bumped by every forget in an organization (or in all of them): a refill or a
        # batch that began before it keeps nothing it made.
        self._generation = 0
        self._org_generations: dict[str, int] = {}
        ring.on_forget(self.clear)

    async def take(self, subject: str, name: str, ahead: bool = True) -> DataKey:
        """A stored key, never used, for the new aggregate on ``subject`` whose usual key
        is ``name``: one made ahead when the scope has some, else one made now. ``ahead``
        false (an atomic batch of new memories, which may span a thousand scopes once):
        take one made ahead if there is one, but start or refill no pool."""
        prefix = prefix_of(name)
        pool = self._pools.get(prefix)
        key: DataKey | None = None
        if pool is not None and pool.keys:
            self._pools.move_to_end(prefix)
            key = pool.keys.pop()
        elif pool is None and ahead and prefix in self._seen:
            pool = self._pools[prefix] = _Pool()
            while len(self._pools) > MAX_POOLS:
                self._pools.popitem(last=False)
        elif pool is None and ahead:
            self._seen[prefix] = None
            while len(self._seen) > MAX_SEEN:
                self._seen.popitem(last=False)
        if ahead and pool is not None and len(pool.keys) <= pool.target // 2:
            self._refill(prefix)
        if key is None:
            key = await self.ring.create(self._new_name(prefix))
        self._name(subject, key.name)
        return key

    async def take_many(self, wanted: dict[str, str]) -> dict[str, DataKey]:
        """``take`` without ``ahead`` for many new aggregates at once (an atomic batch of new
        memories), by usual key name (``wanted``: name -> subject): keys made ahead where a
        scope has some, the rest stored together in atomic batches, not one write each."""
        chosen: dict[str, DataKey] = {}
        missing: list[str] = []
        for name in wanted:
            pool = self._pools.get(prefix_of(name))
            if pool is not None and pool.keys:
                chosen[name] = pool.keys.pop()
            else:
                missing.append(name)
        before = {org: self._era(org) for org in {org_of(name) for name in wanted}}
        for start in range(0, len(missing), MAX_ATOMIC):
            part = missing[start : start + MAX_ATOMIC]
            made = await self.ring.create_many([self._new_name(prefix_of(n)) for n in part])
            chosen.update(zip(part, made, strict=True))
        if any(self._era(org) != era for org, era in before.items()):
            # A forget came meanwhile, and may have erased some of them (``_fill`` too).
            raise UnavailableError("data keys were forgotten while this batch's were made; retry")
        for name, key in chosen.items():
            self._name(wanted[name], key.name)
        return chosen

    def name_for(self, subject: str, name: str) -> str:
        """The key this process sealed ``subject``'s first event with, when it chose one
        under the same prefix as ``name`` (the usual key); else ``name``."""
        chosen = self._named.get(subject)
        if chosen is not None and prefix_of(chosen) == prefix_of(name):
            return chosen
        return name

    def clear(self, pattern: str) -> None:
        """Drop the keys made ahead, and the keys chosen, of the organization a forget's
        wildcard is in (of every one, for a wildcard over all)."""
        org = org_of(pattern)
        if org in _EVERY_ORG:
            self._generation += 1
            self._pools.clear()
            self._named.clear()
            return
        self._org_generations[org] = self._org_generations.get(org, 0) + 1
        for prefix in [p for p in self._pools if org_of(p) == org]:
            del self._pools[prefix]
        for subject in [s for s, name in self._named.items() if org_of(name) == org]:
            del self._named[subject]

    def _era(self, org: str) -> tuple[int, int]:
        """What a forget changes for ``org``: a refill or a batch that sees it change keeps
        nothing it made."""
        return self._generation, self._org_generations.get(org, 0)

    async def stop(self) -> None:
        tasks = list(self._refills.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def _name(self, subject: str, name: str) -> None:
        self._named[subject] = name
        self._named.move_to_end(subject)
        while len(self._named) > MAX_NAMED:
            self._named.popitem(last=False)

    @staticmethod
    def _new_name(prefix: str) -> str:
        return f"{prefix}.{POOL_TOKEN}{secrets.token_hex(8)}"

    def _refill(self, prefix: str) -> None:
        if prefix in self._refills:
            return
        task = asyncio.ensure_future(self._fill(prefix, self._era(org_of(prefix))))
        self._refills[prefix] = task
        task.add_done_callback(lambda _: self._refills.pop(prefix, None))

    async def _fill(self, prefix: str, era: tuple[int, int]) -> None:
        pool = self._pools.get(prefix)
        if pool is None:
            return
        missing = pool.target - len(pool.keys)
        pool.target = min(self.size, pool.target * 2)
        if missing <= 0:
            return
        try:
            made = await self.ring.create_many([self._new_name(prefix) for _ in range(missing)])
        except Exception as exc:  # the adds take keys made on the spot; the next one retries
            log.warning("could not make data keys ahead", prefix=prefix, error=repr(exc))
            return
        if era != self._era(org_of(prefix)):
            return  # a forget came meanwhile: these keys may be erased already
        current = self._pools.get(prefix)
        if current is not None:
            current.keys.extend(made)
