"""Aggregate state for command handlers: folded from the log, kept in a bounded cache.

The cache is only a shortcut. Every append carries the version the decision was made from,
so a stale entry costs one rejected append (err_code 10071), an incremental read and a
retry, never a wrong write.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from agentmem.coalesce import FreshCall
from agentmem.consumers.lru import LRU, json_size
from agentmem.domain.aggregate import Evolve, Loaded, Write
from agentmem.eventlog import Appended, EventLog, StoredCommit

log = structlog.get_logger(__name__)

S = TypeVar("S")

RECENT_COMMANDS = 64
# Aggregates kept per process, by an estimate of their bytes (consumers/lru.py).
MAX_CACHE_BYTES = 256 * 1024 * 1024
MAX_SHARED_READS = 10_000


class AlreadyApplied(Exception):
    """The command id was already committed: answer with that commit's outcome."""

    def __init__(self, seq: int) -> None:
        super().__init__(seq)
        self.seq = seq


@dataclass
class Entry:
    """An aggregate as folded from the log, and how to fold more commits into it."""

    loaded: Loaded[Any]
    evolve: Evolve[Any]


def advance(entry_loaded: Loaded[S], evolve: Evolve[S], commits: list[StoredCommit]) -> Loaded[S]:
    state, version = entry_loaded.state, entry_loaded.version
    commands = dict(entry_loaded.commands)
    for commit in commits:
        for event in commit.events:
            try:
                state = evolve(state, event)
            except Exception as exc:
                # An event this aggregate cannot take (written on its subject by hand, or
                # by another version): skipped and logged; the others decide the state.
                log.warning(
                    "skipped a commit this version cannot read",
                    subject=commit.subject,
                    seq=commit.seq,
                    reason=f"{event.__class__.__name__}: {exc!r}",
                )
        version = commit.seq
        if commit.command_id:
            commands[commit.command_id] = commit.seq
    while len(commands) > RECENT_COMMANDS:
        commands.pop(next(iter(commands)))
    return Loaded(entry_loaded.subject, state, version, commands)


def weigh_entry(entry: Entry) -> int:
    """An entry's state and its recent command ids, as bytes."""
    return json_size(entry.loaded.state) + 64 * len(entry.loaded.commands)


class AggregateCache:
    def __init__(
        self, log: EventLog, max_entries: int = 100_000, max_bytes: int = MAX_CACHE_BYTES
    ) -> None:
        self.log = log
        self._entries: LRU[Entry] = LRU(weigh_entry, max_entries, max_bytes)
        # How many times the cache was cleared (a forget): what was read or decided before
        # a clear must not be put back after it (``load``, ``CommandRunner``).
        self.epoch = 0

    async def load(self, subject: str, evolve: Evolve[S], refresh: bool = False) -> Loaded[S]:
        entry = self._entries.get(subject, touch=not refresh)
        if entry is not None and not refresh:
            loaded: Loaded[S] = entry.loaded
            return loaded
        base: Loaded[S] = entry.loaded if entry is not None else Loaded(subject, None, 0)
        epoch = self.epoch
        # A refresh reads what the stream's leader holds: a replica may not have applied
        # the last acknowledged commits yet, and a decision made again on its state (after
        # a refusal, or a write refused as stale) was as stale as the first.
        commits = await self.log.read_subject(subject, after=base.version, leader=refresh)
        loaded = advance(base, evolve, commits)
        if self.epoch == epoch:  # else folded in part with keys a forget has deleted since
            self._store(subject, loaded, evolve)
        return loaded

    def record(self, writes: list[Write], appended: Appended, command_id: str) -> None:
        """Fold what was just appended into the entries that were current when decided."""
        for write, seq in zip(writes, appended.seqs, strict=True):
            entry = self._entries.get(write.subject)
            if entry is None:
                continue
            if entry.loaded.version != write.expected:
                self._entries.pop(write.subject)
                continue
            commit = StoredCommit(
                seq, write.subject, {"AgentMem-Command-Id": command_id}, write.events
            )
            self._store(write.subject, advance(entry.loaded, entry.evolve, [commit]), entry.evolve)

    def version(self, subject: str) -> int | None:
        """The version this cache holds for ``subject``, if it holds it."""
        entry = self._entries.get(subject, touch=False)
        return entry.loaded.version if entry is not None else None

    def forget(self, subject: str) -> None:
        self._entries.pop(subject)

    def clear(self) -> None:
        """Drop every entry: a data key was deleted, and what was folded from the events it
        opened must not outlive it here (forgets are rare; the cache refills from the log)."""
        self._entries.clear()
        self.epoch += 1

    def _store(self, subject: str, loaded: Loaded[Any], evolve: Evolve[Any]) -> None:
        self._entries.put(subject, Entry(loaded, evolve))


class SubjectLocks:
    """One queue per aggregate subject: within a process, the commands that write to one
    aggregate decide and append one at a time, instead of racing to a conflict."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    async def acquire(self, subject: str) -> bool:
        """Wait for ``subject``'s turn; True when another writer held it (had to wait)."""
        lock = self._locks.get(subject)
        if lock is None:
            lock = self._locks[subject] = asyncio.Lock()
        users = self._users.get(subject, 0)
        self._users[subject] = users + 1
        waited = users > 0  # someone holds it or waits for it: this waits its turn
        try:
            await lock.acquire()
        except BaseException:
            self._leave(subject)
            raise
        return waited

    def release(self, subject: str) -> None:
        self._locks[subject].release()
        self._leave(subject)

    def _leave(self, subject: str) -> None:
        users = self._users[subject] - 1
        if users:
            self._users[subject] = users
        else:  # nobody holds or waits: forget it, so that the table stays small
            del self._users[subject]
            del self._locks[subject]

    def __len__(self) -> int:
        return len(self._locks)


class Loader:
    """Loads aggregates for one attempt at one command, and spots a retried command."""

    def __init__(self, cache: AggregateCache, command_id: str, refresh: bool) -> None:
        self.cache = cache
        self.command_id = command_id
        self.refresh = refresh
        # The subjects of new aggregates whose ids the request chose (not the service): a
        # genuine retry writes these same subjects, so an earlier commit of this command id
        # on others is another command's (``CommandRunner._outcome``).
        self.chosen: set[str] = set()

    def choose(self, subject: str) -> None:
        self.chosen.add(subject)

    async def load(self, subject: str, evolve: Evolve[S]) -> Loaded[S]:
        return self._checked(await self.cache.load(subject, evolve, refresh=self.refresh))

    async def current(self, subject: str, evolve: Evolve[S]) -> Loaded[S]:
        """``load``, read from the log's leader whatever the cache holds: for an aggregate
        the command decides on but does not write, whose version no append checks (another
        process may have changed it since this one cached it)."""
        return self._checked(await self.cache.load(subject, evolve, refresh=True))

    def _checked(self, loaded: Loaded[S]) -> Loaded[S]:
        seq = loaded.commands.get(self.command_id)
        if seq is not None:
            raise AlreadyApplied(seq)
        return loaded


class FreshReads:
    """Up-to-date aggregates from the log, one shared read per subject at a time: each
    answer is at least as fresh as the question (``FreshCall``)."""

    def __init__(self, cache: AggregateCache) -> None:
        self.cache = cache
        self._calls: dict[str, FreshCall[Loaded[Any]]] = {}

    async def load(self, subject: str, evolve: Evolve[S]) -> Loaded[S]:
        if len(self._calls) > MAX_SHARED_READS:
            self._calls.clear()
        call = self._calls.get(subject)
        if call is None:
            call = self._calls[subject] = FreshCall(
                lambda: self.cache.load(subject, evolve, refresh=True)
            )
        loaded: Loaded[S] = await call()
        return loaded
