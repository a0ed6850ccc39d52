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


class PasswordThrottle:
    """At most ``limit`` attempts per key within ``window_s``; a success clears the key.

    Per process: several processes each keep their own count. Bounded at ``max_keys`` keys:
    when full, keys with nothing recent go first, then the oldest keys that are not locked.
    A key that is locked stays locked, so a spray of other keys cannot clear it.
    """

    def __init__(self, limit: int = 5, window_s: float = 300.0, max_keys: int = MAX_KEYS) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()

    def attempt(self, key: str, what: str = "failed logins for this email") -> None:
        """Count one attempt at ``key``, or refuse it when too many are recent."""
        now = time.monotonic()
        attempts = self._recent(key, now)
        if len(attempts) >= self.limit:
            retry_after = int(attempts[0] + self.window_s - now) + 1
            raise UnauthenticatedError(
                f"too many {what}; retry in {retry_after} s", {"retry_after_s": retry_after}
            )
        attempts.append(now)
        if len(self._attempts) > self.max_keys:
            self._make_room(now)

    def succeeded(self, key: str) -> None:
        self._attempts.pop(key, None)

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
        unlocked = [k for k, a in self._attempts.items() if len(a) < self.limit]
        for key in unlocked[: len(self._attempts) - target]:
            del self._attempts[key]


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
