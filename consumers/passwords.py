"""Password work: who may guess (the throttle), and how much of it runs at once (the pool).

A password check costs a full scrypt, tens of milliseconds of a core by design, and a login
needs no credentials. So that guesses neither succeed by volume nor slow everyone else down:

- ``PasswordThrottle`` counts an attempt *before* the password is checked, so a burst of
  concurrent guesses is refused past the limit instead of all being verified; a success
  clears the count. Login counts per email, a password change per user.
- ``PasswordWork`` runs every hash and check in a few threads (fewer than the cores). An
  anonymous login waits in a short bounded queue: past it, it is shed with ``unavailable``
  and a retry hint, so a flood of logins never holds the request slots or the cores that
  authenticated commands need. Authenticated work (register, change password) is not shed:
  it waits its turn, and while it waits logins are shed sooner.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TypeVar

from agentmem.errors import UnauthenticatedError, UnavailableError

T = TypeVar("T")

MAX_KEYS = 100_000
# Failed logins from one source address within the window, whatever the emails: a spray of
# one guess per email meets this instead of the per-email limit.
SOURCE_LIMIT = 100


class PasswordThrottle:
    """At most ``limit`` attempts per key within ``window_s``; a success clears the key.

    Per process: several processes each keep their own count. Bounded at ``max_keys`` keys,
    and never cleared to make room: when full, keys with nothing recent go first, then the
    oldest keys that are not locked. A locked key stays locked whatever else is tried, and
    when every key held is locked a new key is refused until one unlocks (the map does not
    grow), so a spray of other keys can neither clear a lock nor exhaust memory.
    """

    def __init__(self, limit: int = 5, window_s: float = 300.0, max_keys: int = MAX_KEYS) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()
        self._no_room_until = 0.0

    def __len__(self) -> int:
        return len(self._attempts)

    def attempt(self, key: str, what: str = "failed logins for this email") -> None:
        """Count one attempt at ``key``, or refuse it when too many are recent."""
        now = time.monotonic()
        if key not in self._attempts and len(self._attempts) >= self.max_keys:
            if now >= self._no_room_until:
                self._make_room(now)
                if len(self._attempts) >= self.max_keys:
                    # Full of locks: none unlocks before its oldest attempt leaves the
                    # window, so no pass over the map is made again before then.
                    oldest = min(a[0] for a in self._attempts.values() if a)
                    self._no_room_until = oldest + self.window_s
            if len(self._attempts) >= self.max_keys:
                oldest = self._no_room_until - self.window_s
                raise self._refusal("logins being tried at once", oldest, now)
        attempts = self._recent(key, now)
        if len(attempts) >= self.limit:
            raise self._refusal(what, attempts[0], now)
        attempts.append(now)

    def _refusal(self, what: str, oldest: float, now: float) -> UnauthenticatedError:
        retry_after = max(1, int(oldest + self.window_s - now) + 1)
        return UnauthenticatedError(
            f"too many {what}; retry in {retry_after} s", {"retry_after_s": retry_after}
        )

    def succeeded(self, key: str) -> None:
        self._attempts.pop(key, None)

    def refund(self, key: str) -> None:
        """Take back the last attempt at ``key`` (it turned out to be no guess)."""
        attempts = self._attempts.get(key)
        if attempts:
            attempts.pop()

    def _recent(self, key: str, now: float) -> deque[float]:
        attempts = self._attempts.get(key)
        if attempts is None:
            attempts = self._attempts[key] = deque()
        while attempts and attempts[0] <= now - self.window_s:
            attempts.popleft()
        return attempts

    def _make_room(self, now: float) -> None:
        # Amortised: one pass frees at least a tenth of the map, or every unlocked key.
        target = self.max_keys * 9 // 10
        stale = [k for k, a in self._attempts.items() if not a or a[-1] <= now - self.window_s]
        for key in stale:
            del self._attempts[key]
        if len(self._attempts) <= target:
            return
        unlocked = [k for k, a in self._attempts.items() if len(self._live(a, now)) < self.limit]
        for key in unlocked[: len(self._attempts) - target]:
            del self._attempts[key]

    def _live(self, attempts: deque[float], now: float) -> list[float]:
        return [t for t in attempts if t > now - self.window_s]


def default_threads() -> int:
    """Leave at least one core to everything else."""
    return max(1, (os.cpu_count() or 2) - 1)


class PasswordWork:
    """Runs password hashing in at most ``threads`` threads, with ``queue`` waiting."""

    def __init__(self, threads: int | None = None, queue: int = 32) -> None:
        self.threads = threads or default_threads()
        self.queue = queue
        self._running = asyncio.Semaphore(self.threads)
        self._admitted = 0

    def check_room(self) -> None:
        """Shed a request now, before any other work is spent on it, if it cannot run."""
        if self._admitted >= self.threads + self.queue:
            raise UnavailableError(
                "too many password checks in progress; retry in a second",
                {"retry_after_s": 1},
            )

    async def run(self, work: Callable[..., T], *args: object, shed: bool = False) -> T:
        """``work(*args)`` in a thread of the pool; with ``shed``, refused at once when the
        queue is full (anonymous work), else waiting for a thread however long the queue."""
        if shed:
            self.check_room()
        self._admitted += 1
        try:
            async with self._running:
                return await asyncio.to_thread(work, *args)
        finally:
            self._admitted -= 1
