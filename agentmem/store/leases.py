"""Leases: which process runs a projection's worker, so that each has one active at a time.

On Postgres a lease is a session advisory lock (``pg_try_advisory_lock``) held on one
connection of its own, apart from the store's pool. The lock lives exactly as long as that
session: when the holding process dies, the server sees its socket close and frees the lock,
and a process that asks next gets it. Every holder confirms its connection about once a
second (``hold``); when it fails, the holder drops the connection (so the server frees the
locks even if the process lives on) and stops its workers. A late write of a holder that has
not noticed yet is refused by the store itself (``port.fence``), so a lease is what makes a
second worker rare and the fence is what makes it harmless.

The lock key is derived from the projection's name and the store's schema: two deployments
in one database (or two test runs in their own schemas) do not share a lease.

With SQLite there is nothing to elect: one process owns the file (``service.lock_store``), so
it holds every lease for as long as it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from typing import Protocol

import asyncpg  # type: ignore[import-untyped]
import structlog

log = structlog.get_logger(__name__)

# How long one call on the lease connection may take before the lease counts as lost.
CALL_TIMEOUT_S = 5.0


class Leases(Protocol):
    async def hold(self, name: str, within: int | None = None) -> bool:
        """Take the lease on ``name``, or confirm this process still holds it: True while
        it does. Cheap enough to call about once a second per lease. ``within``: take it
        only while this process holds fewer leases than that (checked and taken as one
        step, so that a process's leaders do not all take one at once)."""

    async def release(self, name: str) -> None: ...

    async def close(self) -> None:
        """Give up every lease this process holds."""

    @property
    def held(self) -> frozenset[str]:
        """The leases this process holds."""

    async def members(self) -> int | None:
        """How many processes share the leases (this one included; on Postgres, those that
        asked within ``MEMBER_IDLE_S``), or None when one process holds them all by nature
        (SQLite): what a fair share is counted from."""

    async def taken(self, name: str) -> bool:
        """Whether any process holds the lease on ``name``."""


def fair_share(leases: int, members: int | None) -> int | None:
    """The most leases one of ``members`` processes should hold: the leases over the
    members, rounded up (8 over 3 is 3, so they settle as 3, 3 and 2; a share is a ceiling,
    not a quota: 7 over 3 may settle as 3, 3 and 1). None: no limit."""
    if members is None:
        return None
    return -(-leases // max(members, 1))


class OwnedStore:
    """SQLite: the process that owns the store's file holds every lease."""

    async def hold(self, name: str, within: int | None = None) -> bool:
        return True

    async def release(self, name: str) -> None:
        pass

    async def close(self) -> None:
        pass

    @property
    def held(self) -> frozenset[str]:
        return frozenset()

    async def members(self) -> int | None:
        return None

    async def taken(self, name: str) -> bool:
        return True


def holder_name() -> str:
    """Who holds a lease, as Postgres shows it (``pg_stat_activity.application_name``)."""
    return f"agentmem lease {socket.gethostname()} pid {os.getpid()}"[:63]


def lock_key(schema: str, name: str) -> int:
    """A stable signed 64-bit advisory lock key for one projection of one schema."""
    digest = hashlib.sha256(f"agentmem.projection:{schema}.{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# Every process that competes for the leases of a schema holds this key in shared mode, on
# its lease connection: the count of its holders is how many processes share the work.
MEMBERS = "members of the projection leases"
# How long a count of the members is reused (every leader of the process asks each round).
MEMBERS_TTL_S = 0.5
# A member counts only while it competes: its lease connection has been used within this
# long (every leader of a live process asks, or confirms, once a round, about a second). A
# process that holds the members lock and asks nothing (SIGSTOPped, its event loop stuck, an
# ``agentmem replay``, every projection standing aside) is no member: counted, it lowered
# everyone's share below what the live ones must cover, so a lease nobody could take within
# a share was taken as an orphan and handed over again, round after round (flapping).
MEMBER_IDLE_S = 5.0
# Holders of one advisory key (pg_locks splits a bigint key into classid and objid), in
# this database: pg_locks shows every database's, and an advisory lock is one database's
# own, so a deployment in another database of the server is no member of this one (counted,
# it made each process here take a smaller share, and some projections ran nowhere).
_HOLDERS = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
    "AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND mode = $3 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


# The members that compete: holders of the members key whose session is at work or was
# within ``MEMBER_IDLE_S`` (``state_change`` is NULL for another role's sessions without
# pg_read_all_stats: those count, as before).
_MEMBERS = (
    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid AND l.mode = 'ShareLock' "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND (a.state = 'active' OR a.state_change IS NULL "
    "OR a.state_change > clock_timestamp() - make_interval(secs => $3))"
)


def _key_parts(key: int) -> tuple[int, int]:
    unsigned = key & (2**64 - 1)
    return unsigned >> 32, unsigned & 0xFFFFFFFF


class PostgresLeases:
    def __init__(self, dsn: str, holder: str | None = None, group: str = "projection") -> None:
        """``group``: leases shared apart from the others, with members of their own (the
        ingestion partitions are one: only processes with the commands role compete)."""
        self.dsn = dsn
        self.holder = holder or holder_name()
        self._members_name = MEMBERS if group == "projection" else f"members of the {group} leases"
        self._conn: asyncpg.Connection | None = None
        self._schema = "public"
        self._held: set[str] = set()
        self._members, self._members_at = 1, -MEMBERS_TTL_S
        # One connection, one call at a time (asyncpg refuses concurrent calls on it).
        self._lock = asyncio.Lock()

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._held.clear()  # a new session holds nothing
            conn = await asyncpg.connect(
                self.dsn,
                timeout=CALL_TIMEOUT_S,
                server_settings={"application_name": self.holder},
            )
            try:
                self._schema = await conn.fetchval(
                    "SELECT current_schema()", timeout=CALL_TIMEOUT_S
                )
                await conn.fetchval(
                    "SELECT pg_try_advisory_lock_shared($1)",
                    self.key(self._members_name),
                    timeout=CALL_TIMEOUT_S,
                )
            except BaseException:
                conn.terminate()
                raise
            self._conn = conn
        return self._conn

    def key(self, name: str) -> int:
        return lock_key(self._schema, name)

    async def _count(self, query: str, name: str, arg: object) -> int:
        """``query`` (``_HOLDERS`` or ``_MEMBERS``) of the advisory key of ``name``."""
        async with self._lock:
            conn = await self._connection()
            classid, objid = _key_parts(self.key(name))
            count = await conn.fetchval(query, classid, objid, arg, timeout=CALL_TIMEOUT_S)
            return int(count)

    async def members(self) -> int | None:
        now = time.monotonic()
        if now - self._members_at > MEMBERS_TTL_S:
            try:
                count = await self._count(_MEMBERS, self._members_name, MEMBER_IDLE_S)
                self._members = max(1, count)
            except Exception as exc:  # the next hold() drops the connection and says so
                log.warning("could not count the lease members", error=repr(exc))
            self._members_at = now
        return self._members

    async def taken(self, name: str) -> bool:
        try:
            return await self._count(_HOLDERS, name, "ExclusiveLock") > 0
        except Exception:
            return True  # unknown: do not take more than a fair share on it

    async def hold(self, name: str, within: int | None = None) -> bool:
        async with self._lock:
            if name not in self._held and within is not None and len(self._held) >= within:
                return False
            if name in self._held and (self._conn is None or self._conn.is_closed()):
                # The session that held it is gone, so the lease went with it, even if a new
                # session could take it again at once: the holder must hear it lost.
                self._drop(ConnectionError("the lease connection closed"))
                return False
            try:
                conn = await self._connection()
                if name in self._held:
                    # A session lock lasts as long as its session: a live connection holds it.
                    await conn.fetchval("SELECT 1", timeout=CALL_TIMEOUT_S)
                    return True
                # Taken at most once per session: the lock is re-entrant, and a second take
                # would need a second unlock.
                got = await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1)", self.key(name), timeout=CALL_TIMEOUT_S
                )
            except Exception as exc:  # any failure of the lease connection: the lease is lost
                self._drop(exc)
                return False
            if got:
                self._held.add(name)
            return bool(got)

    def _drop(self, exc: BaseException) -> None:
        """The lease connection failed: close it, so that the server frees whatever it still
        holds for it, and count every lease as lost."""
        if self._held:
            log.warning("lease connection lost", leases=sorted(self._held), error=repr(exc))
        self._held.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def release(self, name: str) -> None:
        async with self._lock:
            if name not in self._held or self._conn is None:
                return
            self._held.discard(name)
            try:
                await self._conn.fetchval(
                    "SELECT pg_advisory_unlock($1)", self.key(name), timeout=CALL_TIMEOUT_S
                )
            except Exception as exc:
                self._drop(exc)

    async def close(self) -> None:
        async with self._lock:
            self._held.clear()
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), CALL_TIMEOUT_S)
                if not conn.is_closed():
                    conn.terminate()


def open_leases(store_url: str, group: str = "projection") -> Leases:
    if store_url.startswith(("postgres://", "postgresql://")):
        return PostgresLeases(store_url, group=group)
    return OwnedStore()
