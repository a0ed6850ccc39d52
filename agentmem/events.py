"""Every event AgentMem stores, in one msgspec tagged union.

A commit is one JetStream message: the events one command produced, in order, on the subject
of the aggregate they belong to. Adding a field means giving it a default; changing the
meaning of one means a new tag and an upcaster, so that old commits still decode.

A field that holds personal data says so in its type, ``Personal[str]`` (``agentmem.personal``):
it is written to the log encrypted under its data subject's key, and reads as gone once that
key is forgotten (``agentmem.sealing``). Ids, types, times, roles and counts stay plain.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from agentmem.personal import Personal

Role = Literal["admin", "member", "readonly"]
MessageRole = Literal["user", "assistant", "system", "tool"]

COMMIT_SCHEMA = 1


class Event(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=False):
    pass


# Organizations --------------------------------------------------------------------------
class OrgCreated(Event, tag="org.created", frozen=True):
    org_id: str
    name: str


class OrgRenamed(Event, tag="org.renamed", frozen=True):
    org_id: str
    name: str


class OrgDeleted(Event, tag="org.deleted", frozen=True):
    org_id: str


# Users ----------------------------------------------------------------------------------
class UserRegistered(Event, tag="user.registered", frozen=True):
    user_id: str
    org_id: str
    name: Personal[str]
    email: Personal[str]
    password_hash: str
    roles: tuple[Role, ...] = ("member",)
    # Only the bootstrap of a fresh deployment registers a service administrator.
    service_admin: bool = False


class UserProfileUpdated(Event, tag="user.profile_updated", frozen=True):
    user_id: str
    name: Personal[str]
    email: Personal[str]


class UserPasswordChanged(Event, tag="user.password_changed", frozen=True):
    user_id: str
    password_hash: str


class UserRolesSet(Event, tag="user.roles_set", frozen=True):
    user_id: str
    roles: tuple[Role, ...]


class UserDeleted(Event, tag="user.deleted", frozen=True):
    user_id: str


# Credentials: part of the user aggregate, so one read of its subject checks them -------------
class ApiKeyCreated(Event, tag="user.api_key_created", frozen=True):
    user_id: str
    key_id: str
    name: Personal[str]
    prefix: str  # what a listing shows: enough to recognise the key, nothing to use it
    digest: str  # SHA-256 of the secret; the secret itself is never stored


class ApiKeyRevoked(Event, tag="user.api_key_revoked", frozen=True):
    user_id: str
    key_id: str


class SessionStarted(Event, tag="user.session_started", frozen=True):
    user_id: str
    session_id: str
    digest: str
    started_at: int  # ms since the Unix epoch
    expires_at: int


class SessionEnded(Event, tag="user.session_ended", frozen=True):
    user_id: str
    session_id: str


# The deployment's first start: written once, with expected sequence 0 ------------------------
class ServiceBootstrapped(Event, tag="service.bootstrapped", frozen=True):
    org_id: str
    admin_user_id: str


# Email reservations: the log's own unique index of emails --------------------------------
class EmailReserved(Event, tag="email.reserved", frozen=True):
    email: Personal[str]
    user_id: str
    command_id: str
    org_id: str = ""  # the user's: its data key is the user's organization's


class EmailReleased(Event, tag="email.released", frozen=True):
    email: Personal[str]
    user_id: str
    org_id: str = ""


# Agents ---------------------------------------------------------------------------------
class AgentCreated(Event, tag="agent.created", frozen=True):
    agent_id: str
    org_id: str
    name: Personal[str]
    description: Personal[str] = ""
    persona: Personal[str] = ""  # the system prompt the agent runs with
    # Model settings (provider, name, temperature, ...): free-form, so it may hold anything.
    model: Personal[dict[str, Any]] = {}
    metadata: Personal[dict[str, Any]] = {}
    tags: Personal[tuple[str, ...]] = ()


class AgentUpdated(Event, tag="agent.updated", frozen=True):
    """The agent's profile after the update: every field, so a projection needs no lookup."""

    agent_id: str
    name: Personal[str]
    description: Personal[str]
    persona: Personal[str]
    model: Personal[dict[str, Any]]
    metadata: Personal[dict[str, Any]]
    tags: Personal[tuple[str, ...]]


class AgentArchived(Event, tag="agent.archived", frozen=True):
    agent_id: str


class AgentUnarchived(Event, tag="agent.unarchived", frozen=True):
    agent_id: str


class AgentDeleted(Event, tag="agent.deleted", frozen=True):
    agent_id: str


# An agent's working state: its own subject, so that profile edits never conflict with it ---
class AgentStateSet(Event, tag="agent.state_set", frozen=True):
    """The whole document after a replace or a patch, so replay needs no merge logic."""

    agent_id: str
    state: Personal[dict[str, Any]]
    patched: bool = False  # True when a JSON merge patch produced it


class AgentStateCleared(Event, tag="agent.state_cleared", frozen=True):
    agent_id: str


# Conversations: one subject per session, written without an expected version -------------
class MessageAppended(Event, tag="message.appended", frozen=True):
    message_id: str
    session_id: str
    agent_id: str
    role: MessageRole
    content: Personal[str]
    user_id: str | None = None
    tool_calls: Personal[tuple[dict[str, Any], ...]] = ()
    tool_call_id: str | None = None  # a tool message answers this call
    metadata: Personal[dict[str, Any]] = {}


class MessageRedacted(Event, tag="message.redacted", frozen=True):
    message_id: str
    session_id: str
    reason: Personal[str] = ""


class ConversationDeleted(Event, tag="conversation.deleted", frozen=True):
    session_id: str


# Tools ----------------------------------------------------------------------------------
class ToolRegistered(Event, tag="tool.registered", frozen=True):
    tool_id: str
    org_id: str
    name: str
    description: str = ""
    parameters: dict[str, Any] = {}  # a JSON Schema
    tags: tuple[str, ...] = ()


class ToolUpdated(Event, tag="tool.updated", frozen=True):
    """Every field after the update, as for agents."""

    tool_id: str
    name: str
    description: str
    parameters: dict[str, Any]
    tags: tuple[str, ...]


class ToolDeleted(Event, tag="tool.deleted", frozen=True):
    tool_id: str


# Tool-name reservations: a tool's name is unique within its organization ---------------------
class ToolNameReserved(Event, tag="tool_name.reserved", frozen=True):
    name: str
    tool_id: str


class ToolNameReleased(Event, tag="tool_name.released", frozen=True):
    name: str
    tool_id: str


# Memories: one subject per memory, whose id is derived from its scope and content ---------
MemoryType = Literal["semantic", "episodic", "procedural", "resource"]


class MemoryAdded(Event, tag="memory.added", frozen=True):
    """A new memory. Its subject's id is derived from ``org_id``, the scope, the type and the
    normalised content (``agentmem.domain.memories``): the subject is the content's
    reservation, written with expected sequence 0."""

    memory_id: str
    org_id: str
    memory_type: MemoryType
    content: Personal[str]
    valid_from: int  # ms since the Unix epoch: since when the fact is true in the world
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    metadata: Personal[dict[str, Any]] = {}
    tags: Personal[tuple[str, ...]] = ()
    importance: float = 0.5
    valid_to: int | None = None
    expires_at: int | None = None
    source: Personal[dict[str, Any]] = {}  # session_id, message_ids, producer
    uri: Personal[str | None] = None  # resource memories: what they refer to
    mime_type: str | None = None
    supersedes: str | None = None  # the memory this one replaced (memory.supersede)


class MemoryUpdated(Event, tag="memory.updated", frozen=True):
    """Every changeable field after the update, so a projection needs no lookup."""

    memory_id: str
    content: Personal[str]
    metadata: Personal[dict[str, Any]]
    tags: Personal[tuple[str, ...]]
    importance: float
    valid_from: int
    valid_to: int | None = None
    expires_at: int | None = None
    # The memory's scope, repeated: whose data key seals the content (``agentmem.personal``).
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None


class MemoryContentClaimed(Event, tag="memory.content_claimed", frozen=True):
    """On a content's reservation subject (``slot_id``): an update gave memory ``memory_id``
    this content, so an add of it finds that memory."""

    slot_id: str
    memory_id: str


class MemorySuperseded(Event, tag="memory.superseded", frozen=True):
    memory_id: str
    superseded_by: str
    valid_to: int  # the old fact stops being true when the new one starts


class MemoryArchived(Event, tag="memory.archived", frozen=True):
    memory_id: str


class MemoryRestored(Event, tag="memory.restored", frozen=True):
    memory_id: str


class MemoryDeleted(Event, tag="memory.deleted", frozen=True):
    memory_id: str
    scope_deletion: bool = False  # written by memory.delete_scope


class MemoryExpired(Event, tag="memory.expired", frozen=True):
    """Written by the service's expiry sweep once ``expires_at`` has passed: the memory's
    content, metadata, tags and source leave the tables (its row stays, state ``expired``);
    the log keeps the event. Reads leave it out from ``expires_at`` on, before this too."""

    memory_id: str
    expires_at: int  # the memory's expires_at that the sweep found passed


# Core memory blocks: one subject per block, and one per label an agent or a user sees -------
class BlockCreated(Event, tag="block.created", frozen=True):
    """A labelled block of text owned by an agent (``agent_id``) or a user (``user_id``).
    ``content`` and ``description`` are what people wrote (personal data, sealed under the
    owner's key); the label stays readable, as the log's label reservations need it."""

    block_id: str
    org_id: str
    label: str
    content: Personal[str]
    char_limit: int  # the most characters ``content`` may ever hold
    description: Personal[str] = ""
    agent_id: str | None = None
    user_id: str | None = None


class BlockUpdated(Event, tag="block.updated", frozen=True):
    """The block after ``block.set``, ``block.append`` or ``block.replace`` (``change``):
    the whole content, so a projection needs no lookup and history shows every version."""

    block_id: str
    content: Personal[str]
    char_limit: int
    description: Personal[str]
    change: Literal["set", "append", "replace"]
    # The block's owner, repeated: whose data key seals the content (``agentmem.personal``).
    agent_id: str | None = None
    user_id: str | None = None


class BlockAttached(Event, tag="block.attached", frozen=True):
    """Another agent of the organization shares the block; ``agent_ids``: every agent it is
    attached to now (its owner not counted)."""

    block_id: str
    agent_id: str
    label: str  # the block's, so that a projection needs no lookup
    agent_ids: tuple[str, ...]


class BlockDetached(Event, tag="block.detached", frozen=True):
    block_id: str
    agent_id: str
    label: str
    agent_ids: tuple[str, ...]


class BlockDeleted(Event, tag="block.deleted", frozen=True):
    block_id: str


class BlockLabelReserved(Event, tag="block_label.reserved", frozen=True):
    """On the subject of one label as one agent or one user sees it: ``block_id`` holds
    it, so an agent never sees two blocks with one label (its own or attached)."""

    label: str
    block_id: str
    agent_id: str | None = None
    user_id: str | None = None


class BlockLabelReleased(Event, tag="block_label.released", frozen=True):
    label: str
    block_id: str


# Working memory: one subject per session ----------------------------------------------------
class WorkingItemPut(Event, tag="working.item_put", frozen=True):
    """An item of a session's working memory, new or replacing the one with its ``key``.
    It expires ``ttl_ms`` after the commit's recorded time (never the caller's clock).
    ``content`` and ``metadata`` are what people wrote (personal data, sealed under the key
    of the session and of the user and agent it is about, when given)."""

    session_id: str
    key: str
    content: Personal[str]
    priority: float
    ttl_ms: int | None = None  # None: until removed or cleared
    metadata: Personal[dict[str, Any]] = {}
    user_id: str | None = None
    agent_id: str | None = None


class WorkingItemRemoved(Event, tag="working.item_removed", frozen=True):
    session_id: str
    key: str


class WorkingCleared(Event, tag="working.cleared", frozen=True):
    session_id: str


# The knowledge graph: entities (subject ``entity.<id>``) -----------------------------------
class EntityCreated(Event, tag="entity.created", frozen=True):
    """A new entity. Its id is derived from the organization, the scope, the type and the
    normalised name (``agentmem.domain.entities``): the subject is the name's reservation."""

    entity_id: str
    org_id: str
    entity_type: str
    name: Personal[str]  # what people call it
    aliases: Personal[tuple[str, ...]] = ()
    attributes: Personal[dict[str, Any]] = {}
    user_id: str | None = None
    agent_id: str | None = None


class EntityRenamed(Event, tag="entity.renamed", frozen=True):
    entity_id: str
    name: Personal[str]
    # The entity's scope, repeated: whose data key seals the name (``agentmem.personal``).
    user_id: str | None = None
    agent_id: str | None = None


class EntityAliasAdded(Event, tag="entity.alias_added", frozen=True):
    entity_id: str
    alias: Personal[str]
    user_id: str | None = None  # the entity's scope, as on entity.renamed
    agent_id: str | None = None


class EntityAliasRemoved(Event, tag="entity.alias_removed", frozen=True):
    entity_id: str
    alias: Personal[str]
    user_id: str | None = None  # the entity's scope, as on entity.renamed
    agent_id: str | None = None


class EntityAttributesSet(Event, tag="entity.attributes_set", frozen=True):
    """Every attribute after the change, so a projection needs no lookup."""

    entity_id: str
    attributes: Personal[dict[str, Any]]
    user_id: str | None = None  # the entity's scope, as on entity.renamed
    agent_id: str | None = None


class EntityMerged(Event, tag="entity.merged", frozen=True):
    """On the merged entity's subject: it and ``members`` (itself and what it had absorbed)
    now answer as ``into``. Written in one atomic batch with ``entity.absorbed``."""

    entity_id: str
    into: str
    members: tuple[str, ...]


class EntityAbsorbed(Event, tag="entity.absorbed", frozen=True):
    """On the surviving entity's subject: ``source_id`` and ``members`` answer as it now."""

    entity_id: str
    source_id: str
    members: tuple[str, ...]


class EntityUnmerged(Event, tag="entity.unmerged", frozen=True):
    """A merge undone, on the merged entity's subject: it and ``members`` answer as
    themselves again. Written in one atomic batch with ``entity.released``."""

    entity_id: str
    from_id: str
    members: tuple[str, ...]


class EntityReleased(Event, tag="entity.released", frozen=True):
    entity_id: str
    source_id: str
    members: tuple[str, ...]


class EntityDeleted(Event, tag="entity.deleted", frozen=True):
    """The entity, what it had absorbed (``members``) and every relation that names any of
    them leave every table."""

    entity_id: str
    members: tuple[str, ...] = ()
    scope_deletion: bool = False


# The knowledge graph: relations, on their subject entity's ``facts.<entity_id>`` subject ------
class RelationAsserted(Event, tag="relation.asserted", frozen=True):
    """``subject_id`` —``predicate``→ ``object_id``, true in the world from ``valid_from``
    until ``valid_to`` (None: still). System time is the commit's."""

    relation_id: str
    org_id: str
    subject_id: str
    predicate: str
    object_id: str
    fact: Personal[str]  # the fact as text
    confidence: float
    valid_from: int
    valid_to: int | None = None
    source: Personal[dict[str, Any]] = {}  # memory_ids, message_ids, producer (free text)
    user_id: str | None = None
    agent_id: str | None = None
    # What the fact was derived from, when forgetting that must forget it too: the one memory
    # its source names (and no message), whose data key then seals the fact, and the
    # conversation of the memory or message an extraction read (``agentmem.personal``).
    memory_id: str | None = None
    session_id: str | None = None

    @property
    def sealed_with_memory(self) -> str | None:
        """The memory whose data key seals the fact (None: the subject's facts key)."""
        return self.memory_id


class RelationInvalidated(Event, tag="relation.invalidated", frozen=True):
    """The fact stopped being true at ``valid_to`` (a newer fact, ``superseded_by``, or
    the client said so). It stays queryable as of earlier times."""

    relation_id: str
    valid_to: int
    superseded_by: str | None = None


class RelationRetracted(Event, tag="relation.retracted", frozen=True):
    """The fact was wrong (not merely outdated): from now on no read returns it, but
    ``known_at`` a time before this commit still does."""

    relation_id: str
    reason: Personal[str] = ""
    # The relation's scope, repeated: whose data key seals the reason (``agentmem.personal``).
    user_id: str | None = None
    agent_id: str | None = None


class MemoryAssociated(Event, tag="memory.associated", frozen=True):
    """On ``association.<from_memory_id>``: a typed, weighted link between two memories."""

    org_id: str
    from_memory_id: str
    to_memory_id: str
    association_type: str
    strength: float


class MemoryDissociated(Event, tag="memory.dissociated", frozen=True):
    from_memory_id: str
    to_memory_id: str
    association_type: str


class PredicateDeclared(Event, tag="predicate.declared", frozen=True):
    """On ``predicates.<org_id>``: whether ``predicate`` is single-valued in the organization
    (one value per subject at a time: a new one ends the previous one)."""

    org_id: str
    predicate: str
    single_valued: bool


class GraphExtracted(Event, tag="graph.extracted", frozen=True):
    """On ``extraction.<extraction_id>``: what an extractor found in one memory or message,
    stored before it is applied, so that the same extraction again (a retry, a replay)
    never asks a model again. ``model``: the model, or the rules' version; ``prompt_sha256``:
    the SHA-256 of what it was given. ``entities`` (``name``, ``type``) and ``relations``
    (``subject``, ``predicate``, ``object``, ``fact``, ``confidence``) are the answer, as
    validated (``agentmem.domain.extraction``)."""

    extraction_id: str
    org_id: str
    extractor: Literal["rules", "model"]
    model: str
    prompt_sha256: str
    memory_id: str | None = None
    message_id: str | None = None
    # The source's scope: the extracted entities' scope, and whose key seals the answer.
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    entities: Personal[tuple[dict[str, Any], ...]] = ()
    relations: Personal[tuple[dict[str, Any], ...]] = ()

    @property
    def sealed_with_memory(self) -> str | None:
        """A memory's extraction is sealed with the memory's data key: forgotten with it."""
        return self.memory_id


# Forgetting ------------------------------------------------------------------------------
ForgetTarget = Literal["user", "agent", "conversation", "memory", "memory_scope"]


class DataForgotten(Event, tag="data.forgotten", frozen=True):
    """Someone's data was forgotten: its keys are deleted (so every event sealed with them
    reads as ``Shredded``), and the projections drop every row of it. On the subject
    ``agentmem.evt.<org>.forget.<forget_id>``: it says what was forgotten (ids only), and
    its commit says when and by whom."""

    forget_id: str
    org_id: str
    target: ForgetTarget
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    memory_id: str | None = None
    keys: int = 0  # how many data keys were deleted


class Shredded(Event, tag="shredded", frozen=True):
    """What an event reads as once its data key is forgotten: its type, nothing else.
    Never written to the log; an aggregate or a projection passes over it."""

    of: str


AnyEvent = (
    OrgCreated
    | OrgRenamed
    | OrgDeleted
    | UserRegistered
    | UserProfileUpdated
    | UserPasswordChanged
    | UserRolesSet
    | UserDeleted
    | ApiKeyCreated
    | ApiKeyRevoked
    | SessionStarted
    | SessionEnded
    | ServiceBootstrapped
    | EmailReserved
    | EmailReleased
    | AgentCreated
    | AgentUpdated
    | AgentArchived
    | AgentUnarchived
    | AgentDeleted
    | AgentStateSet
    | AgentStateCleared
    | MessageAppended
    | MessageRedacted
    | ConversationDeleted
    | ToolRegistered
    | ToolUpdated
    | ToolDeleted
    | ToolNameReserved
    | ToolNameReleased
    | MemoryAdded
    | MemoryUpdated
    | MemoryContentClaimed
    | MemorySuperseded
    | MemoryArchived
    | MemoryRestored
    | MemoryDeleted
    | MemoryExpired
    | BlockCreated
    | BlockUpdated
    | BlockAttached
    | BlockDetached
    | BlockDeleted
    | BlockLabelReserved
    | BlockLabelReleased
    | WorkingItemPut
    | WorkingItemRemoved
    | WorkingCleared
    | EntityCreated
    | EntityRenamed
    | EntityAliasAdded
    | EntityAliasRemoved
    | EntityAttributesSet
    | EntityMerged
    | EntityAbsorbed
    | EntityUnmerged
    | EntityReleased
    | EntityDeleted
    | RelationAsserted
    | RelationInvalidated
    | RelationRetracted
    | MemoryAssociated
    | MemoryDissociated
    | PredicateDeclared
    | GraphExtracted
    | DataForgotten
    | Shredded
)


class Commit(msgspec.Struct, frozen=True):
    """The body of one message in the log."""

    events: list[AnyEvent]


EVENT_TYPES: list[type[Event]] = list(AnyEvent.__args__)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Commit)


def encode_commit(events: list[AnyEvent]) -> bytes:
    return _encoder.encode(Commit(events=events))


def decode_commit(payload: bytes) -> Commit:
    return _decoder.decode(payload)


class _RawCommit(msgspec.Struct, frozen=True):
    events: list[msgspec.Raw]


_raw_decoder = msgspec.json.Decoder(_RawCommit)
_event_decoder = msgspec.json.Decoder(AnyEvent)


def read_commit(payload: bytes) -> tuple[list[AnyEvent], str | None]:
    """A tolerant reader for the command and authentication paths: the events of a commit
    that this version understands, and why anything was left out (``None`` when nothing was).

    A message that is no commit at all gives no events; a commit holding an event type this
    version does not know (a newer version's, in a rolling upgrade) gives the others.
    """
    try:
        return _decoder.decode(payload).events, None
    except (msgspec.DecodeError, RecursionError):
        pass
    try:
        raw = _raw_decoder.decode(payload).events
    except (msgspec.DecodeError, RecursionError) as exc:
        return [], f"not a commit: {exc}"
    events: list[AnyEvent] = []
    problems: list[str] = []
    for index, item in enumerate(raw):
        try:
            events.append(_event_decoder.decode(item))
        except (msgspec.DecodeError, RecursionError) as exc:
            problems.append(f"event {index}: {exc}")
    return events, "; ".join(problems)
