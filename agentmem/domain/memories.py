"""Memories: typed, scoped facts with a valid time, deduplicated in the log.

A memory lives on one subject of the log, ``agentmem.evt.<org>.memory.<memory_id>``. Its id
is not random: it is derived from what makes two memories the same (the organization, the
scope, the type and the normalised content) and a *generation*:

    memory_id = <base32 of sha256(org, type, user, agent, session, normalised content, uri)>-<g>

so the memory's own subject is the reservation of its content, and a new memory is written
with expected sequence 0: of ten concurrent identical adds one writes, and the nine others
find it when they decide again. No add costs an atomic batch.

The subjects ``<key>-0``, ``<key>-1``, ... of one content are its *slots*. A slot is empty
(nothing written yet), or holds a memory created there, or a claim (``memory.content_claimed``)
that points at a memory which an update gave this content. A slot *holds* the content while
that memory is live or archived, not expired, and still has this content. An add walks the
slots from generation 0: the first that holds the content is the duplicate; else the first
empty one is where the new memory goes. So a deleted or superseded memory, or one whose
content an update changed, leaves its slot dead and does not block its text: the next add
takes the next generation. An update that gives a memory new content writes a claim on the
first empty slot of that content in the same atomic batch as the update, so an add and an
update racing to the same content meet on the same subject and one of them decides again.
docs/architecture.md ("Memory deduplication") has the reasons.
"""

from __future__ import annotations

import base64
import hashlib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import msgspec

from agentmem import subjects
from agentmem.commands import Id, JsonObject, Tags, Targeted, TimeMs
from agentmem.commands import InOrg as CommandInOrg
from agentmem.domain import metadata_filter
from agentmem.domain.aggregate import Loaded, Write, check_version
from agentmem.domain.memory_filter import MemoryFilter
from agentmem.errors import ConflictError, NotFoundError
from agentmem.events import (
    AnyEvent,
    MemoryAdded,
    MemoryArchived,
    MemoryContentClaimed,
    MemoryDeleted,
    MemoryExpired,
    MemoryRestored,
    MemorySuperseded,
    MemoryType,
    MemoryUpdated,
)
from agentmem.protocol import command, query
from agentmem.queries import Cursor, Limit, Query, SearchMode, SearchText, Seq, Unit
from agentmem.queries import InOrg as QueryInOrg
from agentmem.replies import (
    Deduplicated,
    HistoryEntry,
    MemoriesAdded,
    MemoryCounts,
    MemorySearchResult,
    Page,
    ScopeDeleted,
)
from agentmem.replies import (
    Memory as MemoryReply,
)
from agentmem.validation import invalid

# The bound of a memory's content: a fact, an event, a how-to or a note on a resource, not a
# document (a resource memory points at the document by ``uri``).
MAX_CONTENT_CHARS = 10_000
MAX_BATCH = 1_000  # memory.add_batch: the log's limit of one atomic batch
# How many generations of one content an add walks: each is a read of the log (cached).
MAX_GENERATIONS = 1_000
# A supersede chain is followed this far by memory.history.
MAX_CHAIN = 32
SCOPE_FIELDS = ("user_id", "agent_id", "session_id")
IMPORTANCE_SCALE = 1_000_000

Content = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CONTENT_CHARS)]
Importance = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
HalfLife = Annotated[float, msgspec.Meta(gt=0.0, le=36_500.0)]
Uri = Annotated[str, msgspec.Meta(min_length=1, max_length=2_048)]
MimeType = Annotated[
    str, msgspec.Meta(max_length=255, pattern=r"^[A-Za-z0-9][\w.+\-]*/[\w.+\-]+$(?!\n)")
]
Producer = Annotated[str, msgspec.Meta(max_length=200)]
State = Literal["live", "archived", "superseded", "expired"]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


# Requests ----------------------------------------------------------------------------------
class Source(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where a memory came from: a conversation, its messages, and what produced it."""

    session_id: Id | None = None
    message_ids: Annotated[list[Id], msgspec.Meta(max_length=100)] = msgspec.field(
        default_factory=list
    )
    producer: Producer = ""


class NewMemory(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One memory of ``memory.add_batch``: the fields of ``memory.add`` but ``org_id``."""

    content: Content
    memory_type: MemoryType = "semantic"
    user_id: Id | None = None
    agent_id: Id | None = None
    session_id: Id | None = None
    metadata: JsonObject = msgspec.field(default_factory=dict)
    tags: Tags = msgspec.field(default_factory=list)
    importance: Importance = 0.5
    valid_from: TimeMs | None = None
    valid_to: TimeMs | None = None
    expires_at: TimeMs | None = None
    source: Source | None = None
    uri: Uri | None = None
    mime_type: MimeType | None = None


@command("memory.add", need="member", reply=MemoryAdded, extra=Deduplicated)
class AddMemory(CommandInOrg, frozen=True, kw_only=True):
    """Remember one fact, event, how-to or resource, in a scope (at least one of
    ``user_id``, ``agent_id``, ``session_id``). The same content in the same type and scope
    is stored once: the answer is then the existing memory, ``deduplicated: true``."""

    content: Content
    memory_type: MemoryType = "semantic"
    user_id: Id | None = None
    agent_id: Id | None = None
    session_id: Id | None = None
    metadata: JsonObject = msgspec.field(default_factory=dict)
    tags: Tags = msgspec.field(default_factory=list)
    importance: Importance = 0.5
    valid_from: TimeMs | None = None
    valid_to: TimeMs | None = None
    expires_at: TimeMs | None = None
    source: Source | None = None
    uri: Uri | None = None
    mime_type: MimeType | None = None

    def item(self) -> NewMemory:
        fields = {f: getattr(self, f) for f in NewMemory.__struct_fields__}
        return NewMemory(**fields)


@command("memory.add_batch", need="member", reply=MemoriesAdded)
class AddMemories(CommandInOrg, frozen=True, kw_only=True):
    """Up to 1,000 memories in one atomic write: all stored, or none."""

    memories: Annotated[list[NewMemory], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


# What ``memory.update`` can remove: null means "keep", so clearing is said by name.
Clearable = Literal["valid_to", "expires_at"]


@command("memory.update", need="member", reply=MemoryUpdated)
class UpdateMemory(Targeted, frozen=True, kw_only=True):
    """Fields left out (or null) keep their value; ``metadata`` and ``tags`` are replaced
    whole; ``clear`` names the optional times to remove (a memory that no longer expires, a
    fact true again with no end). The old version stays in the log (``memory.history``)."""

    memory_id: Id
    content: Content | None = None
    metadata: JsonObject | None = None
    tags: Tags | None = None
    importance: Importance | None = None
    valid_from: TimeMs | None = None
    valid_to: TimeMs | None = None
    expires_at: TimeMs | None = None
    clear: Annotated[list[Clearable], msgspec.Meta(max_length=2)] = []


@command("memory.supersede", need="member", reply=MemorySuperseded, extra=Deduplicated)
class SupersedeMemory(Targeted, frozen=True, kw_only=True):
    """A new memory (same type and scope) replaces ``memory_id``: the old one's valid time
    ends where the new one's starts, and default reads stop returning it."""

    memory_id: Id
    content: Content
    metadata: JsonObject | None = None
    tags: Tags | None = None
    importance: Importance | None = None
    valid_from: TimeMs | None = None
    source: Source | None = None


@command("memory.archive", need="member", reply=MemoryArchived)
class ArchiveMemory(Targeted, frozen=True, kw_only=True):
    memory_id: Id


@command("memory.restore", need="member", reply=MemoryRestored)
class RestoreMemory(Targeted, frozen=True, kw_only=True):
    memory_id: Id


@command("memory.delete", need="member", reply=MemoryDeleted)
class DeleteMemory(Targeted, frozen=True, kw_only=True):
    """The memory leaves every table and index; the log keeps that it existed and who
    deleted it."""

    memory_id: Id


@command("memory.delete_scope", need="org_admin", reply=ScopeDeleted)
class DeleteMemoryScope(CommandInOrg, frozen=True, kw_only=True):
    """Every memory of one user, agent or session of an organization (all that match every
    field given), and nothing else."""

    user_id: Id | None = None
    agent_id: Id | None = None
    session_id: Id | None = None


@query("memory.get", need="reader", reply=MemoryReply)
class GetMemory(Query, frozen=True, kw_only=True):
    memory_id: Id


class ScopeFilter(QueryInOrg, frozen=True, kw_only=True):
    user_id: Id | None = None
    agent_id: Id | None = None
    session_id: Id | None = None
    memory_type: MemoryType | None = None


class MemoryFilters(ScopeFilter, frozen=True, kw_only=True):
    """The filters of every memory read that returns memories (list, search)."""

    # Default: live; with ``as_of``, live and superseded (what was true then includes the
    # facts corrected since).
    states: Annotated[list[State], msgspec.Meta(min_length=1, max_length=4)] | None = None
    tags_any: Annotated[list[Tag], msgspec.Meta(max_length=32)] | None = None
    min_importance: Importance | None = None
    max_importance: Importance | None = None
    created_after: TimeMs | None = None  # inclusive, ms since the epoch
    created_before: TimeMs | None = None  # exclusive
    valid_from_after: TimeMs | None = None  # inclusive
    valid_from_before: TimeMs | None = None  # exclusive
    as_of: TimeMs | None = None  # what was true in the world at this time (valid time)
    # The metadata filter language (agentmem.domain.metadata_filter): checked by ``filter_of``.
    metadata_filter: JsonObject | None = None
    # What the service knew (system time): at this log sequence, or at this time (ms).
    known_at_seq: Seq | None = None
    known_at: TimeMs | None = None


@query("memory.list", need="reader", reply=Page[MemoryReply])
class ListMemories(MemoryFilters, frozen=True, kw_only=True):
    """Memories of an organization, filtered, newest first by default, page by page.
    ``order_by: "importance"`` orders by importance decayed to the query's time."""

    order_by: Literal["created", "valid_from", "importance"] = "created"
    order: Literal["asc", "desc"] = "desc"
    limit: Limit = 50
    cursor: Cursor | None = None


@query("memory.search", need="reader", reply=MemorySearchResult)
class SearchMemories(MemoryFilters, frozen=True, kw_only=True):
    """Memories that match ``text``, best first, with every filter of ``memory.list``: by
    its words (``text``), its meaning (``vector``) or both (``hybrid``); see
    agentmem/ranking.py for the score."""

    text: SearchText
    limit: Limit = 20
    mode: SearchMode = "hybrid"
    min_score: Unit | None = None  # the floor of relevance (before boosts)
    recency_weight: Unit = 0.0
    importance_weight: Unit = 0.0
    half_life_days: HalfLife = 30.0
    mmr: Unit | None = None  # λ of maximal marginal relevance (1: relevance only)


@query("memory.stats", need="reader", reply=MemoryCounts)
class MemoryStats(ScopeFilter, frozen=True, kw_only=True):
    """How many memories an organization (or one scope of it, or one type) holds: by type,
    by state and by scope kind."""


@query("memory.history", need="reader", reply=Page[HistoryEntry])
class MemoryHistory(Query, frozen=True, kw_only=True):
    """Every version of a memory, oldest first, with who and when: its own commits and
    those of the memories it superseded or that superseded it."""

    memory_id: Id
    limit: Limit = 100
    cursor: Cursor | None = None


# State -------------------------------------------------------------------------------------
class Slot:
    """What a memory subject holds: a ``Memory``, or a ``Claim`` of its content."""


@dataclass(frozen=True)
class Memory(Slot):
    memory_id: str
    org_id: str
    memory_type: MemoryType
    content: str
    valid_from: int
    key: str  # what makes two memories the same (``content_key``)
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    importance: float = 0.5
    valid_to: int | None = None
    expires_at: int | None = None
    source: Mapping[str, Any] = field(default_factory=dict)
    uri: str | None = None
    mime_type: str | None = None
    supersedes: str | None = None
    state: Literal["live", "archived", "superseded", "expired", "deleted"] = "live"
    superseded_by: str | None = None

    def is_expired(self, now: int) -> bool:
        """Expired: by the sweep, or past its ``expires_at`` before the sweep came."""
        return self.state == "expired" or (self.expires_at is not None and self.expires_at <= now)

    def alive(self, now: int) -> bool:
        """Counts as a duplicate: live or archived, not expired."""
        return self.state in ("live", "archived") and not self.is_expired(now)


@dataclass(frozen=True)
class Claim(Slot):
    """A slot that an update gave to a memory created elsewhere."""

    slot_id: str
    memory_id: str


def subject(org_id: str, memory_id: str) -> str:
    return subjects.event(org_id, "memory", memory_id)


def normalise(content: str) -> str:
    """What deduplication compares: NFKC, case folded, whitespace runs as one space (none at
    either end)."""
    return " ".join(unicodedata.normalize("NFKC", content).casefold().split())


def content_key(
    org_id: str,
    memory_type: str,
    user_id: str | None,
    agent_id: str | None,
    session_id: str | None,
    content: str,
    uri: str | None = None,
) -> str:
    parts = [org_id, memory_type, user_id, agent_id, session_id, normalise(content), uri]
    digest = hashlib.sha256(msgspec.json.encode(parts)).digest()[:20]
    return base64.b32encode(digest).decode().lower()  # 32 characters of [a-z2-7]


def slot_id(key: str, generation: int) -> str:
    return f"{key}-{generation}"


def is_slot_of(memory_id: str, key: str) -> bool:
    """Was ``memory_id`` made for content ``key`` (in any generation)?"""
    return memory_id.rsplit("-", 1)[0] == key


def key_of(memory: Memory, content: str | None = None) -> str:
    return content_key(
        memory.org_id,
        memory.memory_type,
        memory.user_id,
        memory.agent_id,
        memory.session_id,
        memory.content if content is None else content,
        memory.uri,
    )


def evolve(state: Slot | None, event: AnyEvent) -> Slot | None:
    match event:
        case MemoryAdded():
            memory = Memory(
                memory_id=event.memory_id,
                org_id=event.org_id,
                memory_type=event.memory_type,
                content=event.content,
                valid_from=event.valid_from,
                key="",
                user_id=event.user_id,
                agent_id=event.agent_id,
                session_id=event.session_id,
                metadata=event.metadata,
                tags=tuple(event.tags),
                importance=event.importance,
                valid_to=event.valid_to,
                expires_at=event.expires_at,
                source=event.source,
                uri=event.uri,
                mime_type=event.mime_type,
                supersedes=event.supersedes,
            )
            return replace(memory, key=key_of(memory))
        case MemoryContentClaimed():
            return Claim(event.slot_id, event.memory_id)
    if not isinstance(state, Memory):
        return state
    match event:
        case MemoryUpdated():
            updated = replace(
                state,
                content=event.content,
                metadata=event.metadata,
                tags=tuple(event.tags),
                importance=event.importance,
                valid_from=event.valid_from,
                valid_to=event.valid_to,
                expires_at=event.expires_at,
            )
            return replace(updated, key=key_of(updated))
        case MemorySuperseded():
            return replace(
                state,
                state="superseded",
                superseded_by=event.superseded_by,
                valid_to=event.valid_to,
            )
        case MemoryArchived():
            return replace(state, state="archived")
        case MemoryRestored():
            return replace(state, state="live")
        case MemoryExpired():
            return replace(state, state="expired")
        case MemoryDeleted():
            return replace(state, state="deleted")
    return state


# Decisions ---------------------------------------------------------------------------------
def missing(memory_id: str) -> NotFoundError:
    return NotFoundError(f"memory {memory_id} does not exist", {"memory_id": memory_id})


def require_memory(loaded: Loaded[Slot], memory_id: str) -> Memory:
    """A memory that was not deleted (a claim's slot is no memory)."""
    state = loaded.state
    if not isinstance(state, Memory) or state.state == "deleted":
        raise missing(memory_id)
    return state


def holds(slot: Slot | None, target: Memory | None, key: str, now: int) -> bool:
    """Does a slot hold the content ``key``? ``target``: the memory its claim points at."""
    memory = slot if isinstance(slot, Memory) else target
    return memory is not None and memory.alive(now) and memory.key == key


@dataclass(frozen=True)
class Probe:
    """What a walk along a content's slots found: the memory holding the content, or the
    first empty slot (version 0), where a new memory or a claim goes."""

    holder: Memory | None
    free: Loaded[Slot] | None
    holder_version: int = 0  # the holder's own subject's version
    # The recent command ids on the holder's subject (``Loaded.commands``).
    holder_commands: Mapping[str, int] = field(default_factory=dict)


def check_scope(
    user_id: str | None, agent_id: str | None, session_id: str | None, path: str
) -> None:
    if user_id is None and agent_id is None and session_id is None:
        raise invalid(
            "a memory needs a scope: at least one of user_id, agent_id and session_id",
            path,
            "missing_field",
            fields=["user_id", "agent_id", "session_id"],
        )


def check_times(valid_from: int, valid_to: int | None, path: str) -> None:
    if valid_to is not None and valid_to <= valid_from:
        raise invalid(
            f"valid_to ({valid_to}) must be after valid_from ({valid_from})",
            f"{path}.valid_to",
            "invalid_value",
        )


def check_new(item: NewMemory, path: str) -> None:
    """What a memory's fields must be together, beyond their types."""
    check_scope(item.user_id, item.agent_id, item.session_id, path)
    if item.memory_type == "resource" and item.uri is None:
        raise invalid("a resource memory needs a uri", f"{path}.uri", "missing_field")
    if item.memory_type != "resource" and (item.uri is not None or item.mime_type is not None):
        raise invalid(
            "uri and mime_type belong to resource memories only",
            f"{path}.uri" if item.uri is not None else f"{path}.mime_type",
            "invalid_value",
        )
    if item.valid_from is not None:
        check_times(item.valid_from, item.valid_to, path)


def key_of_new(org_id: str, item: NewMemory) -> str:
    return content_key(
        org_id,
        item.memory_type,
        item.user_id,
        item.agent_id,
        item.session_id,
        item.content,
        item.uri,
    )


def added(
    org_id: str,
    memory_id: str,
    item: NewMemory,
    now: int,
    supersedes: str | None = None,
) -> MemoryAdded:
    valid_from = item.valid_from if item.valid_from is not None else now
    check_times(valid_from, item.valid_to, "$")
    return MemoryAdded(
        memory_id=memory_id,
        org_id=org_id,
        memory_type=item.memory_type,
        content=item.content,
        valid_from=valid_from,
        user_id=item.user_id,
        agent_id=item.agent_id,
        session_id=item.session_id,
        metadata=item.metadata,
        tags=_tags(item.tags),
        importance=item.importance,
        valid_to=item.valid_to,
        expires_at=item.expires_at,
        source=msgspec.to_builtins(item.source) if item.source is not None else {},
        uri=item.uri,
        mime_type=item.mime_type,
        supersedes=supersedes,
    )


def _tags(tags: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(tags))  # duplicates dropped, first order kept


def add(org_id: str, item: NewMemory, probe: Probe, now: int) -> list[Write]:
    """[] when a memory already holds the content (the caller answers with it)."""
    if probe.holder is not None:
        return []
    assert probe.free is not None
    memory_id = subjects.parse(probe.free.subject).aggregate_id
    return [Write(probe.free.subject, 0, [added(org_id, memory_id, item, now)])]


def revives(memory: Memory, command: UpdateMemory, now: int) -> bool:
    """Whether an update brings back a memory past its ``expires_at`` (before the sweep):
    it clears it, or moves it later than now."""
    if not memory.is_expired(now):
        return False
    return "expires_at" in command.clear or (
        command.expires_at is not None and command.expires_at > now
    )


def update(
    loaded: Loaded[Slot], command: UpdateMemory, probe: Probe | None, now: int
) -> list[Write]:
    """``probe``: the slots of the new content, when the update changes what a duplicate
    is (its key) or brings an expired memory back (``revives``); None otherwise."""
    memory = require_memory(loaded, command.memory_id)
    check_version(loaded, command.expected_version)
    if memory.state == "superseded":
        raise ConflictError(
            f"memory {memory.memory_id} was superseded by {memory.superseded_by}: change that one",
            {"memory_id": memory.memory_id, "superseded_by": memory.superseded_by},
        )
    if memory.state == "expired":
        raise ConflictError(
            f"memory {memory.memory_id} expired: its content is gone",
            {"memory_id": memory.memory_id, "state": memory.state},
        )

    def pick(new: Any, old: Any) -> Any:
        return old if new is None else new

    for name in command.clear:
        if getattr(command, name) is not None:
            raise invalid(
                f"{name} is both given and cleared", f"$.{name}", "invalid_value", clear=name
            )
    valid_from = pick(command.valid_from, memory.valid_from)
    valid_to = None if "valid_to" in command.clear else pick(command.valid_to, memory.valid_to)
    expires_at = (
        None if "expires_at" in command.clear else pick(command.expires_at, memory.expires_at)
    )
    check_times(valid_from, valid_to, "$")
    event = MemoryUpdated(
        memory_id=memory.memory_id,
        content=pick(command.content, memory.content),
        metadata=dict(pick(command.metadata, memory.metadata)),
        tags=memory.tags if command.tags is None else _tags(command.tags),
        importance=pick(command.importance, memory.importance),
        valid_from=valid_from,
        valid_to=valid_to,
        expires_at=expires_at,
        user_id=memory.user_id,
        agent_id=memory.agent_id,
        session_id=memory.session_id,
    )
    writes = [Write(loaded.subject, loaded.version, [event])]
    if probe is None:
        return writes
    if probe.holder is not None:
        if probe.holder.memory_id == memory.memory_id:
            return writes  # its own slot still holds the content
        raise ConflictError(
            f"memory {probe.holder.memory_id} already holds this content in this scope",
            {"memory_id": memory.memory_id, "duplicate_of": probe.holder.memory_id},
        )
    if command.content is None or key_of(memory, command.content) == memory.key:
        return writes  # brought back in its own slot, which nobody else took meanwhile
    assert probe.free is not None
    slot = subjects.parse(probe.free.subject).aggregate_id
    claim = MemoryContentClaimed(slot_id=slot, memory_id=memory.memory_id)
    return [Write(probe.free.subject, 0, [claim]), *writes]


def supersede(
    loaded: Loaded[Slot], command: SupersedeMemory, probe: Probe, now: int
) -> tuple[list[Write], Memory | None]:
    """The writes, and the live memory that already held the new content (then the old one
    is superseded by it, and no memory is added)."""
    old = require_memory(loaded, command.memory_id)
    check_version(loaded, command.expected_version)
    # Past its expiry it is expired, swept yet or not (the sweep only empties it later).
    state = "expired" if old.is_expired(now) else old.state
    if state != "live":
        raise ConflictError(
            f"memory {old.memory_id} is {state}: only a live memory can be superseded",
            {"memory_id": old.memory_id, "state": state},
        )
    valid_from = command.valid_from if command.valid_from is not None else now
    if valid_from < old.valid_from:
        raise invalid(
            f"the new memory's valid_from ({valid_from}) is before the old one's "
            f"({old.valid_from})",
            "$.valid_from",
            "invalid_value",
        )
    holder = probe.holder
    if holder is not None and holder.memory_id == old.memory_id:
        raise invalid(
            "the new content is the old memory's own: use memory.update to change its fields",
            "$.content",
            "invalid_value",
        )
    if holder is not None and holder.state != "live":
        # Superseded by an archived memory, the old one would leave every default read
        # and its correction would not come back either: the fact would be gone.
        raise ConflictError(
            f"memory {holder.memory_id} holds the new content and is {holder.state}: restore "
            "it first, or supersede with other content",
            {"memory_id": old.memory_id, "duplicate_of": holder.memory_id, "state": holder.state},
        )
    writes: list[Write] = []
    if holder is None:
        assert probe.free is not None
        new_id = subjects.parse(probe.free.subject).aggregate_id
        item = NewMemory(
            content=command.content,
            memory_type=old.memory_type,
            user_id=old.user_id,
            agent_id=old.agent_id,
            session_id=old.session_id,
            metadata=dict(old.metadata if command.metadata is None else command.metadata),
            tags=list(old.tags if command.tags is None else command.tags),
            importance=old.importance if command.importance is None else command.importance,
            valid_from=valid_from,
            expires_at=old.expires_at,  # forgotten when the fact it corrects was to be
            source=command.source,
            uri=old.uri,
            mime_type=old.mime_type,
        )
        new = added(old.org_id, new_id, item, now, supersedes=old.memory_id)
        writes.append(Write(probe.free.subject, 0, [new]))
    else:
        new_id = holder.memory_id
    # It stops being true where its correction starts, or earlier if it had ended already: a
    # correction never makes the old fact true for longer. From the old one's own start, it
    # was never true (valid_to = valid_from: no as_of finds it; known_at still does).
    ends = valid_from if old.valid_to is None else min(old.valid_to, valid_from)
    ended = MemorySuperseded(memory_id=old.memory_id, superseded_by=new_id, valid_to=ends)
    writes.append(Write(loaded.subject, loaded.version, [ended]))
    return writes, holder


def archive(loaded: Loaded[Slot], command: ArchiveMemory) -> list[Write]:
    memory = require_memory(loaded, command.memory_id)
    check_version(loaded, command.expected_version)
    if memory.state != "live":
        raise ConflictError(
            f"memory {memory.memory_id} is {memory.state}: only a live memory can be archived",
            {"memory_id": memory.memory_id, "state": memory.state},
        )
    return [Write(loaded.subject, loaded.version, [MemoryArchived(memory_id=memory.memory_id)])]


def restore(loaded: Loaded[Slot], command: RestoreMemory) -> list[Write]:
    memory = require_memory(loaded, command.memory_id)
    check_version(loaded, command.expected_version)
    if memory.state != "archived":
        raise ConflictError(
            f"memory {memory.memory_id} is {memory.state}, not archived",
            {"memory_id": memory.memory_id, "state": memory.state},
        )
    return [Write(loaded.subject, loaded.version, [MemoryRestored(memory_id=memory.memory_id)])]


def delete(loaded: Loaded[Slot], command: DeleteMemory) -> list[Write]:
    memory = require_memory(loaded, command.memory_id)
    check_version(loaded, command.expected_version)
    return [Write(loaded.subject, loaded.version, [MemoryDeleted(memory_id=memory.memory_id)])]


def delete_in_scope(loaded: Loaded[Slot], memory_id: str) -> list[Write]:
    """One memory of a scope being deleted; [] when it is gone already."""
    state = loaded.state
    if not isinstance(state, Memory) or state.state == "deleted":
        return []
    event = MemoryDeleted(memory_id=memory_id, scope_deletion=True)
    return [Write(loaded.subject, loaded.version, [event])]


def expire(loaded: Loaded[Slot], now: int) -> list[Write]:
    """The sweep's decision on one memory: ``memory.expired`` once its ``expires_at`` has
    passed, at the version read (a second sweeper, or a change made meanwhile, fails the
    write and the memory is looked at again on the next sweep); [] when there is nothing to
    expire (gone, expired already, or given a later ``expires_at`` since)."""
    memory = loaded.state
    if not isinstance(memory, Memory) or memory.state in ("expired", "deleted"):
        return []
    if memory.expires_at is None or memory.expires_at > now:
        return []
    event = MemoryExpired(memory_id=memory.memory_id, expires_at=memory.expires_at)
    return [Write(loaded.subject, loaded.version, [event])]


def filter_of(query: MemoryFilters, org_id: str) -> MemoryFilter:
    """The filters of a list or search, checked (the metadata filter's grammar and bounds)
    and with the default states."""
    default = ["live", "superseded"] if query.as_of is not None else ["live"]
    scope = {f: getattr(query, f) for f in SCOPE_FIELDS if getattr(query, f) is not None}
    document = query.metadata_filter
    if query.known_at_seq is not None and query.known_at is not None:
        raise invalid(
            "known_at_seq and known_at are two ways to name one point: give one",
            "$.known_at",
            "invalid_value",
        )
    return MemoryFilter(
        org_id=org_id,
        states=tuple(dict.fromkeys(query.states or default)),
        scope=scope,
        memory_type=query.memory_type,
        tags_any=tuple(query.tags_any or ()),
        min_importance=None if query.min_importance is None else millionths(query.min_importance),
        max_importance=None if query.max_importance is None else millionths(query.max_importance),
        created_after=query.created_after,
        created_before=query.created_before,
        valid_from_after=query.valid_from_after,
        valid_from_before=query.valid_from_before,
        as_of=query.as_of,
        metadata=None if document is None else metadata_filter.parse(document),
        known_at_seq=query.known_at_seq,
        known_at=query.known_at,
    )


def millionths(importance: float) -> int:
    """Importance as stored: an integer of millionths, exact on every store."""
    return round(importance * IMPORTANCE_SCALE)


def view(memory: Memory, version: int) -> dict[str, Any]:
    """A memory as ``memory.add`` answers a duplicate: the fields of its ``memory.added``."""
    return {
        "memory_id": memory.memory_id,
        "org_id": memory.org_id,
        "memory_type": memory.memory_type,
        "content": memory.content,
        "valid_from": memory.valid_from,
        "user_id": memory.user_id,
        "agent_id": memory.agent_id,
        "session_id": memory.session_id,
        "metadata": dict(memory.metadata),
        "tags": list(memory.tags),
        "importance": memory.importance,
        "valid_to": memory.valid_to,
        "expires_at": memory.expires_at,
        "source": dict(memory.source),
        "uri": memory.uri,
        "mime_type": memory.mime_type,
        "supersedes": memory.supersedes,
        "event": "memory.added",
        "version": version,
        "deduplicated": True,
    }


__all__ = [
    "AddMemories",
    "AddMemory",
    "ArchiveMemory",
    "Claim",
    "DeleteMemory",
    "DeleteMemoryScope",
    "GetMemory",
    "ListMemories",
    "Memory",
    "MemoryFilters",
    "MemoryHistory",
    "MemoryStats",
    "NewMemory",
    "Probe",
    "RestoreMemory",
    "SearchMemories",
    "Slot",
    "Source",
    "SupersedeMemory",
    "UpdateMemory",
]
