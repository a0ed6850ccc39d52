"""Working memory: a session's short-lived items, each with a priority and a time to live.

One subject per session, ``agentmem.evt.<org>.working.<session_id>``: a session's items are
read together (``working.get``) and cleared together (``working.clear``, one event on one
subject, no batch), and only that session's turns write them. Items are keyed within the
session; a put with a key replaces that item. docs/architecture.md ("Working memory") has
the reasons.

Expiry is a matter of time, not of events: an item expires ``ttl_ms`` after the time the
log recorded for its put (``AgentMem-Time``, the service's clock when it appended, never
the caller's), and reads leave it out from then on. Nothing is written when it expires.
So the state a decision reads is only which keys were put and not removed or cleared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec

from agentmem import ids, subjects
from agentmem.commands import Id, JsonObject
from agentmem.commands import InOrg as CommandInOrg
from agentmem.domain.aggregate import Loaded, Write
from agentmem.domain.jsondoc import check_bounds
from agentmem.errors import NotFoundError
from agentmem.events import AnyEvent, WorkingCleared, WorkingItemPut, WorkingItemRemoved
from agentmem.protocol import command, query
from agentmem.queries import InOrg as QueryInOrg
from agentmem.queries import Limit
from agentmem.replies import Items, WorkingItem

MAX_CONTENT_CHARS = 10_000
MAX_TTL_MS = 30 * 24 * 3600 * 1000  # a month: working memory is for a session, not for ever
MAX_METADATA_BYTES = 16 * 1024

Content = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CONTENT_CHARS)]
Priority = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
TtlMs = Annotated[int, msgspec.Meta(ge=1, le=MAX_TTL_MS)]


@command("working.put", need="member", reply=WorkingItemPut)
class PutWorkingItem(CommandInOrg, frozen=True, kw_only=True):
    """Put an item into a session's working memory; an item with the same ``key`` is
    replaced (and its time to live starts again)."""

    session_id: Id
    content: Content
    key: Id | None = None  # default: a new id
    priority: Priority = 0.5
    ttl_ms: TtlMs | None = None
    metadata: JsonObject = msgspec.field(default_factory=dict)
    # Whom the item is about: a forget of this user or agent takes it too (the session's
    # forget takes every item of the session).
    user_id: Id | None = None
    agent_id: Id | None = None


@command("working.remove", need="member", reply=WorkingItemRemoved)
class RemoveWorkingItem(CommandInOrg, frozen=True, kw_only=True):
    session_id: Id
    key: Id


@command("working.clear", need="member", reply=WorkingCleared)
class ClearWorkingMemory(CommandInOrg, frozen=True, kw_only=True):
    """Remove every item of a session."""

    session_id: Id


@query("working.get", need="reader", reply=Items[WorkingItem])
class GetWorkingMemory(QueryInOrg, frozen=True, kw_only=True):
    """A session's items that have not expired, highest priority first (then the newest)."""

    session_id: Id
    min_priority: Priority | None = None
    limit: Limit = 50


@dataclass(frozen=True)
class Session:
    """The keys of a session's working memory that were put and not removed or cleared
    (expired ones included: expiry is a reader's matter)."""

    keys: frozenset[str] = frozenset()


def subject(org_id: str, session_id: str) -> str:
    return subjects.event(org_id, "working", session_id)


def evolve(state: Session | None, event: AnyEvent) -> Session | None:
    keys = state.keys if state is not None else frozenset()
    match event:
        case WorkingItemPut(key=key):
            return Session(keys | {key})
        case WorkingItemRemoved(key=key):
            return Session(keys - {key})
        case WorkingCleared():
            return Session()
    return state


def put(loaded: Loaded[Session], request: PutWorkingItem) -> list[Write]:
    check_bounds(request.metadata, "metadata", MAX_METADATA_BYTES, path="$.metadata")
    event = WorkingItemPut(
        session_id=request.session_id,
        key=request.key or ids.new_id(),
        content=request.content,
        priority=request.priority,
        ttl_ms=request.ttl_ms,
        metadata=request.metadata,
        user_id=request.user_id,
        agent_id=request.agent_id,
    )
    return [Write(loaded.subject, loaded.version, [event])]


def remove(loaded: Loaded[Session], request: RemoveWorkingItem) -> list[Write]:
    """An expired item may still be removed: it is there until removed or cleared."""
    if loaded.state is None or request.key not in loaded.state.keys:
        raise NotFoundError(
            f"session {request.session_id} has no working memory item {request.key}",
            {"session_id": request.session_id, "key": request.key},
        )
    event = WorkingItemRemoved(session_id=request.session_id, key=request.key)
    return [Write(loaded.subject, loaded.version, [event])]


def clear(loaded: Loaded[Session], request: ClearWorkingMemory) -> list[Write]:
    """Always written, even for an empty session: the log says who cleared it and when."""
    return [Write(loaded.subject, loaded.version, [WorkingCleared(session_id=request.session_id)])]


__all__ = [
    "ClearWorkingMemory",
    "GetWorkingMemory",
    "PutWorkingItem",
    "RemoveWorkingItem",
    "Session",
]
