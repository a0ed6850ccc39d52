"""Every schema migration of the projection store, in order: the one place that says what
tables a store has. ``Service.start`` (and ``agentmem replay``) apply the ones a store has
not recorded yet; docs/architecture.md says how to add one.

A ``Table`` step names the table declared beside its projection, so that declaration stays
the only list of its columns. A migration, once released, is never edited: change a schema
with a new migration.
"""

from __future__ import annotations

from dataclasses import replace

from agentmem.projections.agents import AGENT_STATES, AGENT_TAGS, AGENTS
from agentmem.projections.blocks import BLOCK_AGENTS, BLOCKS
from agentmem.projections.graph import (
    GRAPH_ASSOCIATIONS,
    GRAPH_ENTITIES,
    GRAPH_ENTITY_HISTORY,
    GRAPH_MEMORY_SCOPES,
    GRAPH_NAME_GRAMS,
    GRAPH_NAMES,
    GRAPH_PREDICATES,
    GRAPH_RELATIONS,
    OPEN,
)
from agentmem.projections.memories import MEMORIES, MEMORY_TAGS, MEMORY_VERSIONS
from agentmem.projections.message_vectors import MESSAGE_VECTORS
from agentmem.projections.messages import MESSAGE_COMMANDS, MESSAGE_REDACTIONS, MESSAGES
from agentmem.projections.orgs import ORGS
from agentmem.projections.tools import TOOL_TAGS, TOOLS
from agentmem.projections.users import API_KEYS, USERS
from agentmem.projections.vectors import MEMORY_PAST_VECTORS, MEMORY_VECTORS
from agentmem.projections.working import WORKING_ITEMS
from agentmem.store import fulltext
from agentmem.store.port import FullText, Migration, Sql

# The messages' full-text index as migration 3 made it, without a scope (migration 4
# replaced it): that migration's statements stay what they were when it was released.
MESSAGES_INDEX_3 = replace(MESSAGES, full_text=FullText(columns=("content",), key="position"))

# The working memory table as migration 6 made it, before migration 13 added whom an item is
# about: that migration's statements stay what they were when it was released.
WORKING_ITEMS_6 = replace(
    WORKING_ITEMS,
    columns=tuple(c for c in WORKING_ITEMS.columns if c.name not in ("user_id", "agent_id")),
)

_MEMORY_SCOPES_FILL = (
    "INSERT INTO graph_memory_scopes (memory_id, org_id, user_id, agent_id, session_id) "
    "SELECT memory_id, org_id, user_id, agent_id, session_id FROM memories"
)

_HISTORY_COLUMNS = "entity_id, field, norm, from_seq, value, org_id, from_at, until_seq, until_at"
_HISTORY_FILL = (
    f"INSERT INTO graph_entity_history ({_HISTORY_COLUMNS}) "
    "SELECT e.entity_id, 'name', e.norm, e.created_seq, e.name, e.org_id, e.created_at, "
    f"{OPEN}, {OPEN} FROM graph_entities e",
    f"INSERT INTO graph_entity_history ({_HISTORY_COLUMNS}) "
    "SELECT e.entity_id, 'attributes', '', e.created_seq, e.attributes, e.org_id, "
    f"e.created_at, {OPEN}, {OPEN} FROM graph_entities e",
    f"INSERT INTO graph_entity_history ({_HISTORY_COLUMNS}) "
    "SELECT n.entity_id, 'alias', n.norm, e.created_seq, n.name, e.org_id, e.created_at, "
    f"{OPEN}, {OPEN} FROM graph_names n JOIN graph_entities e ON e.entity_id = n.entity_id "
    "WHERE n.kind = 'alias'",
    f"INSERT INTO graph_entity_history ({_HISTORY_COLUMNS}) "
    "SELECT e.entity_id, 'merged_into', '', e.version, e.canonical_id, e.org_id, "
    f"e.updated_at, {OPEN}, {OPEN} FROM graph_entities e WHERE e.canonical_id <> e.entity_id",
)

_EXPIRES_INDEX = "CREATE INDEX IF NOT EXISTS memories_expires ON memories (expires_at)"
_SUPERSEDED_BY_INDEX = (
    "CREATE INDEX IF NOT EXISTS memories_superseded_by ON memories (org_id, superseded_by)"
)

MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "orgs, users and api keys",
        (
            ORGS,
            USERS,
            API_KEYS,
            Sql(
                postgres=(
                    "COMMENT ON TABLE orgs IS 'AgentMem projection orgs: one row per live "
                    "organization'",
                    "COMMENT ON TABLE users IS 'AgentMem projection users: one row per user; "
                    "roles is a JSON array'",
                    "COMMENT ON TABLE api_keys IS 'AgentMem projection users: one row per API "
                    "key of a live user (prefix only, no secret); revoked_at set once revoked'",
                )
            ),
        ),
    ),
    Migration(
        2,
        "agents, their states and tools",
        (
            AGENTS,
            AGENT_TAGS,
            AGENT_STATES,
            TOOLS,
            TOOL_TAGS,
            Sql(
                postgres=(
                    "COMMENT ON TABLE agents IS 'AgentMem projection agents: one row per agent, "
                    "archived ones flagged; model, metadata and tags are JSON'",
                    "COMMENT ON TABLE agent_tags IS 'AgentMem projection agents: one row per tag "
                    "of an agent, for tag filters'",
                    "COMMENT ON TABLE agent_states IS 'AgentMem projection agents: the working "
                    "state document of each agent that has one; version is its expected_version'",
                    "COMMENT ON TABLE tools IS 'AgentMem projection tools: one row per tool; "
                    "parameters is its JSON Schema, tags a JSON array'",
                    "COMMENT ON TABLE tool_tags IS 'AgentMem projection tools: one row per tag "
                    "of a tool, for tag filters'",
                )
            ),
        ),
    ),
    Migration(
        3,
        "messages, their redactions and full-text index",
        (
            MESSAGES,
            MESSAGE_REDACTIONS,
            # FTS5 table and triggers (SQLite), generated tsvector and GIN index (Postgres).
            Sql(**fulltext.ddl(MESSAGES_INDEX_3)),
            Sql(
                postgres=(
                    "COMMENT ON TABLE messages IS 'AgentMem projection messages: one row per "
                    "message of a live conversation; position orders a conversation; a "
                    "redacted one has empty content and redacted_at set'",
                    "COMMENT ON TABLE message_redactions IS 'AgentMem projection messages: one "
                    "row per redacted message (who asked is in the log)'",
                )
            ),
        ),
    ),
    Migration(
        4,
        "message search scoped inside the full-text index",
        (
            # SQLite: the FTS5 index again, with the scope tokens, refilled from the
            # messages table ('rebuild'); Postgres filters by the scope's own indexes.
            Sql(**fulltext.rebuild_ddl(MESSAGES)),
        ),
    ),
    Migration(
        5,
        "memories, their tags and their scoped full-text index",
        (
            MEMORIES,
            MEMORY_TAGS,
            # FTS5 with the scope tokens (SQLite), generated tsvector and GIN index (Postgres).
            Sql(**fulltext.ddl(MEMORIES)),
            Sql(
                postgres=(
                    "COMMENT ON TABLE memories IS 'AgentMem projection memories: one row per "
                    "memory not deleted (live, archived or superseded); importance in "
                    "millionths; position orders them as the log does'",
                    "COMMENT ON TABLE memory_tags IS 'AgentMem projection memories: one row per "
                    "tag of a memory, for tag filters'",
                )
            ),
        ),
    ),
    Migration(
        6,
        "core memory blocks and working memory",
        (
            BLOCKS,
            BLOCK_AGENTS,
            WORKING_ITEMS_6,
            Sql(
                postgres=(
                    "COMMENT ON TABLE blocks IS 'AgentMem projection blocks: one row per core "
                    "memory block not deleted; attached_agent_ids is a JSON array'",
                    "COMMENT ON TABLE block_agents IS 'AgentMem projection blocks: one row per "
                    "agent that sees a block (its owner or an attached agent), with the label'",
                    "COMMENT ON TABLE working_items IS 'AgentMem projection working: one row "
                    "per working memory item not removed or cleared; expires_at is the put''s "
                    "recorded time plus ttl_ms; priority in millionths'",
                )
            ),
        ),
    ),
    Migration(
        7,
        "earlier memory versions (what was known when), their full-text index, expiry look-up",
        (
            MEMORY_VERSIONS,
            Sql(**fulltext.ddl(MEMORY_VERSIONS)),
            # The sweep's look-up, for a store whose memories table migration 5 made before
            # the index was declared.
            Sql(sqlite=(_EXPIRES_INDEX,), postgres=(_EXPIRES_INDEX,)),
            Sql(
                postgres=(
                    "COMMENT ON TABLE memory_versions IS 'AgentMem projection memories: every "
                    "earlier version of each memory not deleted (the current one is its "
                    "memories row), a whole copy of the row, current from recorded_seq until "
                    "recorded_until_seq'",
                )
            ),
        ),
    ),
    Migration(
        8,
        "indexes for message.list by time range and by role; the command ids of appends",
        (
            MESSAGES,  # creates what is missing: here, its two new indexes
            MESSAGE_COMMANDS,
            Sql(
                postgres=(
                    "COMMENT ON TABLE message_commands IS 'AgentMem projection messages: the "
                    "command id (its key in the log) of every append, by conversation; a "
                    "retried append is recognised by it'",
                )
            ),
        ),
    ),
    Migration(
        9,
        "the knowledge graph: entities, their names, relations and memory associations",
        (
            GRAPH_ENTITIES,
            GRAPH_NAMES,
            GRAPH_NAME_GRAMS,
            GRAPH_RELATIONS,
            GRAPH_ASSOCIATIONS,
            Sql(
                postgres=(
                    "COMMENT ON TABLE graph_entities IS 'AgentMem projection graph: one row per "
                    "entity not deleted; canonical_id is the entity it answers as (itself "
                    "unless merged)'",
                    "COMMENT ON TABLE graph_names IS 'AgentMem projection graph: every "
                    "normalised name and alias of every entity, with the entity it resolves to'",
                    "COMMENT ON TABLE graph_name_grams IS 'AgentMem projection graph: the first "
                    "three characters of each word of each name, for similar-name candidates'",
                    "COMMENT ON TABLE graph_relations IS 'AgentMem projection graph: two rows "
                    "per relation (direction 0 subject to object, 1 back); open times hold "
                    "2^62; confidence in millionths'",
                    "COMMENT ON TABLE graph_associations IS 'AgentMem projection graph: one row "
                    "per typed link between two memories; strength in millionths'",
                )
            ),
        ),
    ),
    Migration(
        10,
        "memory vectors (embeddings), one row per memory and model",
        (
            MEMORY_VECTORS,
            Sql(
                postgres=(
                    "COMMENT ON TABLE memory_vectors IS 'AgentMem projection vectors-*: one "
                    "embedding per memory and model (float32 bytes), with the columns a search "
                    "filters by; a deleted memory keeps a tombstone without vector'",
                )
            ),
        ),
    ),
    Migration(
        11,
        "the knowledge graph's single-valued predicates per organization; a covering walk index",
        (
            GRAPH_PREDICATES,
            GRAPH_RELATIONS,  # creates what is missing: graph_relations_cover
            Sql(
                sqlite=("DROP INDEX IF EXISTS graph_relations_walk",),
                postgres=("DROP INDEX IF EXISTS graph_relations_walk",),
            ),
            Sql(
                postgres=(
                    "COMMENT ON TABLE graph_predicates IS 'AgentMem projection graph: one row "
                    "per predicate an organization declared (predicate.declare); single_valued "
                    "1 or 0'",
                )
            ),
        ),
    ),
    Migration(
        12,
        "message vectors, one row per message and model; memory vectors of replaced contents",
        (
            MESSAGE_VECTORS,
            MEMORY_PAST_VECTORS,
            Sql(
                postgres=(
                    "COMMENT ON TABLE message_vectors IS 'AgentMem projection "
                    "message-vectors-*: one embedding per message with words and model "
                    "(float32 bytes), with the columns message.search scopes by; removed "
                    "with its message'",
                    "COMMENT ON TABLE memory_past_vectors IS 'AgentMem projection vectors-*: "
                    "the vector of a memory content an update replaced, for known_at'",
                )
            ),
        ),
    ),
    Migration(
        13,
        "whom a working memory item is about, so that their forget takes it",
        (
            Sql(
                sqlite=(
                    "ALTER TABLE working_items ADD COLUMN user_id TEXT",
                    "ALTER TABLE working_items ADD COLUMN agent_id TEXT",
                ),
                postgres=(
                    'ALTER TABLE working_items ADD COLUMN user_id TEXT COLLATE "C"',
                    'ALTER TABLE working_items ADD COLUMN agent_id TEXT COLLATE "C"',
                ),
            ),
            WORKING_ITEMS,  # its shape now (the columns above; nothing else is missing)
        ),
    ),
    Migration(
        14,
        "whose each memory is, in the graph, so that a forget takes its memories' associations",
        (
            GRAPH_MEMORY_SCOPES,
            # The memories known before: their scopes from the memories' own rows (a replay
            # writes the same rows from the memories' events).
            Sql(
                sqlite=(_MEMORY_SCOPES_FILL,),
                postgres=(
                    _MEMORY_SCOPES_FILL,
                    "COMMENT ON TABLE graph_memory_scopes IS 'AgentMem projection graph: the "
                    "scope of every memory not deleted, by which a forget finds its "
                    "associations'",
                ),
            ),
        ),
    ),
    Migration(
        15,
        "what the service knew of each entity when: spans of its names, aliases, attributes",
        (
            GRAPH_ENTITY_HISTORY,
            # The entities known before: their values now, from their creation on (a store
            # kept no history of them; a replay writes the true spans from the events).
            Sql(sqlite=_HISTORY_FILL, postgres=_HISTORY_FILL),
            Sql(
                postgres=(
                    "COMMENT ON TABLE graph_entity_history IS 'AgentMem projection graph: "
                    "spans of log sequences and times during which an entity had a name, an "
                    "alias, attributes or was merged into another (until 2^62: still)'",
                )
            ),
        ),
    ),
    Migration(
        16,
        "a look-up of the memories each memory superseded, for its history",
        (Sql(sqlite=(_SUPERSEDED_BY_INDEX,), postgres=(_SUPERSEDED_BY_INDEX,)),),
    ),
    Migration(
        17,
        "Postgres full-text words split at punctuation, as SQLite's are",
        (
            Sql(
                postgres=(
                    *fulltext.postgres_rebuild(MESSAGES),
                    *fulltext.postgres_rebuild(MEMORIES),
                    *fulltext.postgres_rebuild(MEMORY_VERSIONS),
                )
            ),
        ),
    ),
]
