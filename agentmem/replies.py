"""The shapes of reply ``data``, as msgspec Structs: what the operations declare
(``agentmem.protocol``), what ``agentmem.Client`` decodes, and what docs/asyncapi.json
describes. A command answers with its event's public fields (``agentmem.protocol``); the
Structs here that end a command's name (``Issued``, ``MessageIds``...) are what some commands
add to that view.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from agentmem.events import MemoryType, MessageRole

T = TypeVar("T")


class Org(msgspec.Struct, frozen=True):
    org_id: str
    name: str
    version: int
    created_at: int = 0
    updated_at: int = 0


class User(msgspec.Struct, frozen=True):
    user_id: str
    org_id: str
    name: str
    email: str
    roles: list[str]
    version: int
    created_at: int = 0
    updated_at: int = 0


class Agent(msgspec.Struct, frozen=True):
    agent_id: str
    org_id: str
    name: str
    version: int
    description: str = ""
    persona: str = ""
    model: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    tags: list[str] = []
    archived: bool = False
    created_at: int = 0
    updated_at: int = 0


class AgentState(msgspec.Struct, frozen=True):
    agent_id: str
    state: dict[str, Any]
    version: int  # 0 until the first write; pass it as expected_version


class Message(msgspec.Struct, frozen=True):
    message_id: str
    session_id: str
    agent_id: str
    role: MessageRole
    content: str
    position: int  # the message's place in its conversation
    user_id: str | None = None
    tool_calls: list[dict[str, Any]] = []
    tool_call_id: str | None = None
    metadata: dict[str, Any] = {}
    created_at: int = 0
    redacted: bool = False
    rank: float | None = None  # search results only: higher is a better match


class Tool(msgspec.Struct, frozen=True):
    tool_id: str
    org_id: str
    name: str
    version: int
    description: str = ""
    parameters: dict[str, Any] = {}
    tags: list[str] = []
    created_at: int = 0
    updated_at: int = 0


class Memory(msgspec.Struct, frozen=True):
    memory_id: str
    org_id: str
    memory_type: MemoryType
    content: str
    state: str  # "live", "archived", "superseded" or "expired"
    valid_from: int
    version: int
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    metadata: dict[str, Any] = {}
    tags: list[str] = []
    importance: float = 0.5
    # importance halved every half-life of its type since updated_at, at the query's time
    decayed_importance: float = 0.5
    valid_to: int | None = None
    expires_at: int | None = None
    expired: bool = False  # expires_at has passed
    superseded_by: str | None = None
    supersedes: str | None = None
    source: dict[str, Any] = {}
    uri: str | None = None
    mime_type: str | None = None
    created_at: int = 0
    updated_at: int = 0
    rank: float | None = None  # search results only: higher is a better match


class Block(msgspec.Struct, frozen=True):
    block_id: str
    org_id: str
    label: str
    content: str
    char_limit: int
    version: int
    description: str = ""
    agent_id: str | None = None  # its owner: an agent, or
    user_id: str | None = None  # a user
    attached_agent_ids: list[str] = []  # other agents that share it
    created_at: int = 0
    updated_at: int = 0


class WorkingItem(msgspec.Struct, frozen=True):
    org_id: str
    session_id: str
    key: str
    content: str
    priority: float
    version: int
    ttl_ms: int | None = None
    expires_at: int | None = None  # the put's recorded time + ttl_ms
    metadata: dict[str, Any] = {}
    created_at: int = 0  # when the put that made this item was recorded
    user_id: str | None = None  # whom it is about, when the put said
    agent_id: str | None = None


class MemoryCounts(msgspec.Struct, frozen=True):
    """Counts of memories (deleted ones are not counted; an expired one is ``expired``)."""

    org_id: str
    total: int
    by_type: dict[str, int]  # every type, 0 included
    by_state: dict[str, int]  # live, archived, superseded, expired
    # How many memories name a user, an agent, a session (one memory may name several)...
    by_scope: dict[str, int]
    # ...and how many distinct users, agents and sessions they name.
    distinct: dict[str, int]
    # The scope and type asked for, when one was.
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    memory_type: str | None = None


class Scores(msgspec.Struct, frozen=True):
    """What a search result's score is made of (agentmem/ranking.py): ``relevance`` is the
    weighted mean of ``text`` and ``vector``; ``recency`` and ``importance`` are the boosts,
    before their weights (null when not asked)."""

    relevance: float
    text: float | None = None
    vector: float | None = None
    recency: float | None = None
    importance: float | None = None


class ScoredMemory(Memory, frozen=True, kw_only=True):
    score: float = 0.0
    scores: Scores | None = None


class MemorySearchResult(msgspec.Struct, frozen=True):
    items: list[ScoredMemory]
    mode: str  # text, vector or hybrid
    # Some result's relevance reached the mode's confident bar (agentmem/ranking.py); false:
    # the items, if any, are the closest there were, not good matches.
    confident: bool
    model: str | None = None  # the embedding model of the vector side (null in text mode)


class ScoredMessage(Message, frozen=True, kw_only=True):
    score: float = 0.0
    scores: Scores | None = None


class MessageSearchResult(msgspec.Struct, frozen=True):
    """``message.search``'s reply: as ``memory.search``'s, over messages (no boosts)."""

    items: list[ScoredMessage]
    mode: str = "text"  # text, vector or hybrid
    confident: bool = True  # some result reached the mode's confident bar
    model: str | None = None  # the embedding model of the vector side (null in text mode)


class Page(msgspec.Struct, Generic[T], frozen=True):
    items: list[T]
    next_cursor: str | None


class Items(msgspec.Struct, Generic[T], frozen=True):
    items: list[T]


class Exists(msgspec.Struct, frozen=True):
    exists: bool


class ApiKey(msgspec.Struct, frozen=True):
    key_id: str
    user_id: str
    name: str
    prefix: str
    created_at: int
    revoked_at: int | None = None


class HistoryEntry(msgspec.Struct, frozen=True):
    seq: int
    time: int
    commit_type: str
    principal: str
    command_id: str
    correlation_id: str
    events: list[dict[str, Any]]  # each an event of docs/events.md, secrets left out


class StreamReport(msgspec.Struct, frozen=True):
    name: str
    last_seq: int
    messages: int
    bytes: int
    # Up to this seq the log may hold plaintext personal data written by earlier versions,
    # which cannot be forgotten; null when every event was written sealed.
    plaintext_until: int | None = None


class BuildReport(msgspec.Struct, frozen=True):
    """A projection's new version, built beside its live tables until it switches."""

    version: int
    variant: str | None
    checkpoint: int
    lag: int | None  # None: no process runs the build now
    parked: int
    started_at: int | None  # ms since the epoch
    progress: float  # its checkpoint over the live one's, 0..1


class ProjectionReport(msgspec.Struct, frozen=True):
    checkpoint: int
    lag: int | None  # None: no worker has run since its consumer was removed
    parked: int
    # The projection version (and variant: the vectors' model id) of the live tables.
    version: int | None = None
    variant: str | None = None
    build: BuildReport | None = None


class ParkedEvent(msgspec.Struct, frozen=True):
    projection: str
    seq: int
    subject: str
    error: str


class IngestReport(msgspec.Struct, frozen=True):
    """The ingestion stream (docs/architecture.md, Ingestion): what waits, what is parked."""

    backlog: int  # published commands not yet executed (the ingestion stream's messages)
    bytes: int
    parked: int  # commands parked after transient failures, for an operator
    max_msgs: int
    max_bytes: int


class IngestOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What became of a published command (``ingest.status``)."""

    command_id: str
    status: str  # pending | stored | refused | parked | dropped
    seq: int | None = None  # stored: the log sequence of its commit
    error: dict[str, Any] | None = None  # refused or parked: the error envelope's error
    operation: str | None = None  # "message.append"
    ingest_seq: int | None = None  # its sequence in the ingestion stream
    attempts: int = 0  # how many times it was executed before this outcome
    at: int | None = None  # when the outcome was recorded (ms since the epoch)
    # Why the outcome was not published on the AgentMem-Outcome-To the publisher named.
    outcome_to_refused: str | None = None
    # Of a publish refused before its credential was known: anyone who may publish into
    # the organization could have sent it, so it says nothing of the caller's own command
    # of that id, which may still be pending.
    unattributed: bool = False


class StatusReport(msgspec.Struct, frozen=True):
    stream: StreamReport
    projections: dict[str, ProjectionReport]
    parked: list[ParkedEvent]
    ingest: IngestReport | None = None  # None: no ingestion stream (yet)
    process: dict[str, Any] | None = None  # which process answered: its roles and leases
    # The answering process's metrics (agentmem.metrics): each one's samples.
    metrics: dict[str, list[dict[str, Any]]] | None = None


class HealthChecks(msgspec.Struct, frozen=True):
    log: bool
    store: bool
    projections: dict[str, bool]


class HealthReport(msgspec.Struct, frozen=True):
    live: bool
    checks: HealthChecks
    # Ready: live, and every projection within the process's lag bound (AGENTMEM_READY_LAG).
    ready: bool = False
    reasons: list[str] = msgspec.field(default_factory=list)  # why it is not ready


# What some commands add to their event's view ---------------------------------------------
class Issued(msgspec.Struct, frozen=True):
    """A new secret, in the one reply that created it; ``null`` with a ``note`` when the
    reply is a retry's, since nobody can produce the secret again."""

    token: str | None
    note: str | None = None


class MessageIds(msgspec.Struct, frozen=True):
    message_ids: list[str]


class AlreadyRedacted(msgspec.Struct, frozen=True):
    already_redacted: bool = False


class AlreadyDeleted(msgspec.Struct, frozen=True):
    already_deleted: bool = False


class BatchAppended(msgspec.Struct, frozen=True):
    """``message.append_batch``: where the batch landed and its messages' ids, in order."""

    event: str
    version: int
    session_id: str
    agent_id: str
    user_id: str | None
    message_ids: list[str]
    count: int


class Deduplicated(msgspec.Struct, frozen=True):
    """``memory.add`` and ``memory.supersede``: true when a live memory already held the
    content, and nothing was appended (its fields are the answer)."""

    deduplicated: bool = False


class MemoriesAdded(msgspec.Struct, frozen=True):
    """``memory.add_batch``: each memory's id in the order sent, which of them were already
    there, and where the batch landed (``version`` 0 when nothing was appended)."""

    event: str
    version: int
    memory_ids: list[str]
    deduplicated: list[bool]
    added: int


class ScopeDeleted(msgspec.Struct, frozen=True):
    """``memory.delete_scope``: how many memories were deleted, and the scope. ``version``:
    the last deletion's log sequence (0 when the scope held no memory). ``entities``: how
    many of the scope's entities went with its memories (``memory.delete_scope``)."""

    event: str
    version: int
    deleted: int
    org_id: str
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    entities: int = 0


# The knowledge graph ----------------------------------------------------------------------
class EntityCreatedOutcome(msgspec.Struct, frozen=True):
    """``entity.create``: true when a live entity of that type and scope already had the
    name; ``matched_by`` says how it was found (``name`` or ``alias``; ``created`` when the
    entity is new)."""

    deduplicated: bool = False
    matched_by: str = "created"


class Entity(msgspec.Struct, frozen=True):
    entity_id: str
    org_id: str
    entity_type: str
    name: str
    aliases: list[str]
    attributes: dict[str, Any]
    user_id: str | None
    agent_id: str | None
    members: list[str]  # the entities merged into this one, which answer as it
    created_at: int
    updated_at: int
    version: int


class ResolutionCandidate(msgspec.Struct, frozen=True):
    entity_id: str
    name: str
    entity_type: str
    matched: str  # the name or alias that matched
    layer: str  # "name", "alias" or "similar"
    score: float  # 1.0 for an exact name or alias; the character similarity otherwise


class EntityResolution(msgspec.Struct, frozen=True):
    """``entity_id``: the entity the name resolves to, or null when only similar names
    (``candidates``, proposed, never merged) or nothing were found; ``layer`` and
    ``explanation`` say which layer decided."""

    entity_id: str | None
    layer: str | None
    explanation: str
    candidates: list[ResolutionCandidate]


class Relation(msgspec.Struct, frozen=True):
    relation_id: str
    org_id: str
    subject_id: str  # the entity it is about now (after merges)
    predicate: str
    object_id: str
    fact: str
    confidence: float
    valid_from: int
    valid_to: int | None
    status: str  # "valid", "invalidated" (valid_to set) or "retracted", at the time asked
    superseded_by: str | None
    source: dict[str, Any]
    user_id: str | None
    agent_id: str | None
    recorded_at: int
    recorded_seq: int
    subject_name: str = ""
    object_name: str = ""


class PredicateRule(msgspec.Struct, frozen=True):
    """``predicate.list``: whether a predicate is single-valued in the organization, and
    whether the organization declared it so (else it is the service's default)."""

    predicate: str
    single_valued: bool
    declared: bool
    version: int | None = None  # the declaration's log sequence


class ExtractedEntity(msgspec.Struct, frozen=True):
    """An entity an extraction found: the graph's entity it resolved to (``created`` when it
    is new)."""

    entity_id: str
    name: str
    entity_type: str
    created: bool


class ExtractedRelation(msgspec.Struct, frozen=True):
    """A relation an extraction found, as ``relation.assert`` decided it."""

    relation_id: str
    subject_id: str
    predicate: str
    object_id: str
    fact: str
    confidence: float
    deduplicated: bool
    invalidated: list[str] = msgspec.field(default_factory=list)


class Extracted(msgspec.Struct, frozen=True):
    """``graph.extract``: the stored answer (``extraction_id``; ``reused`` when it was in the
    log already, so no extractor ran) and what it did to the graph. ``version``: the last
    commit it appended (0: none, when everything was there already)."""

    event: str
    version: int
    extraction_id: str
    extractor: str
    model: str
    prompt_sha256: str
    reused: bool
    entities: list[ExtractedEntity]
    relations: list[ExtractedRelation]
    memory_id: str | None = None
    message_id: str | None = None


class RelationOutcome(msgspec.Struct, frozen=True):
    """``relation.assert``: true when the same fact was valid already (nothing appended);
    ``invalidated``: the relations this assertion ended (a single-valued predicate)."""

    deduplicated: bool = False
    invalidated: list[str] = msgspec.field(default_factory=list)


class GraphNode(msgspec.Struct, frozen=True):
    entity_id: str
    name: str
    entity_type: str
    depth: int


class GraphEdge(msgspec.Struct, frozen=True):
    relation_id: str
    subject_id: str
    predicate: str
    object_id: str
    fact: str
    confidence: float
    valid_from: int
    valid_to: int | None


class Neighbors(msgspec.Struct, frozen=True):
    """The entities within ``depth`` hops and the relations the walk followed between them;
    ``truncated`` when ``limit`` cut the answer short."""

    entity_id: str
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    truncated: bool


class GraphPath(msgspec.Struct, frozen=True):
    """A shortest path: the entities from one end to the other and the relation of each
    hop; ``found`` false (and empty lists) when none is within ``max_depth``."""

    found: bool
    entity_ids: list[str]
    edges: list[GraphEdge]


class Facts(msgspec.Struct, frozen=True):
    """The valid facts about an entity, each a relation, and all of them as lines of text
    ready for a prompt."""

    entity_id: str
    items: list[Relation]
    text: str


class GraphStats(msgspec.Struct, frozen=True):
    entities: int
    relations: int  # not retracted, valid now or not
    valid_relations: int  # valid now
    associations: int
    entity_types: dict[str, int]
    predicates: dict[str, int]


class Association(msgspec.Struct, frozen=True):
    memory_id: str  # the other memory
    direction: str  # "out": from the memory asked about; "in": to it
    association_type: str
    strength: float
    created_at: int
    version: int


class ContextItem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing to put before a model call (``context.assemble``)."""

    section: str  # persona, block, working, memory, fact or message: the order they come in
    id: str  # the agent's, block's, working item's key, memory's, relation's or message's id
    # persona; core (a block); working; the memory's type; the fact's predicate; the
    # message's role
    type: str
    text: str  # what to put in the prompt; ``tokens`` counts this
    tokens: int
    created_at: int
    updated_at: int | None = None
    label: str | None = None  # a block's
    valid_from: int | None = None  # a memory's or a fact's valid time
    valid_to: int | None = None
    expires_at: int | None = None  # a memory's or working item's, when it has one
    score: float | None = None  # a memory's search rank or score; a fact's confidence
    position: int | None = None  # a message's place in its conversation


class LeftOutItem(msgspec.Struct, frozen=True, kw_only=True):
    """An item that matched but did not fit in what was left of the budget."""

    section: str
    id: str
    type: str
    tokens: int


class AssembledContext(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ContextItem]  # persona, blocks, working, memories, messages (oldest first)
    left_out: list[LeftOutItem]  # in the order they were considered
    tokens: int  # the sum of the items' tokens: never above max_tokens
    max_tokens: int
    counter: str  # the token counter used (agentmem/tokens.py)
    # What memory.search said beside its items (its mode, whether it was confident...).
    memory_search: dict[str, Any] = {}
