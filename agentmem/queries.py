"""The request bodies of every query, as msgspec Structs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from agentmem.commands import MAX_SEQ, Email, Id, Tag, TimeMs, ToolName
from agentmem.events import MessageRole
from agentmem.protocol import Request, query, system
from agentmem.replies import (
    Agent,
    AgentState,
    ApiKey,
    Exists,
    HealthReport,
    HistoryEntry,
    Items,
    Message,
    MessageSearchResult,
    Org,
    StatusReport,
    Tool,
    User,
)
from agentmem.replies import (
    Page as PageOf,
)

Limit = Annotated[int, msgspec.Meta(ge=1, le=500)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
# Room for a cursor of an entity.list page: it carries the last entity's normalised name,
# which NFKC may make several times longer than the 200 characters it was given.
Cursor = Annotated[str, msgspec.Meta(max_length=16_384)]
# A search's modes (memory.search, message.search) and a score in [0, 1].
SearchMode = Literal["text", "vector", "hybrid"]
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class Query(Request, frozen=True, kw_only=True):
    # Read-your-writes: wait (bounded) until the projection has applied this log sequence.
    after_seq: Seq | None = None


class Page(Query, frozen=True, kw_only=True):
    limit: Limit = 50
    cursor: Cursor | None = None


@query("org.get", need="reader", reply=Org)
class GetOrg(Query, frozen=True, kw_only=True):
    org_id: Id


@query("org.list", need="reader", reply=PageOf[Org])
class ListOrgs(Page, frozen=True, kw_only=True):
    pass


@query("user.get", need="reader", reply=User)
class GetUser(Query, frozen=True, kw_only=True):
    user_id: Id


@query("user.get_by_email", need="reader", reply=User)
class GetUserByEmail(Query, frozen=True, kw_only=True):
    email: Email


@query("user.email_exists", need="org_admin", reply=Exists)
class EmailExists(Query, frozen=True, kw_only=True):
    email: Email


@query("user.list", need="reader", reply=PageOf[User])
class ListUsers(Page, frozen=True, kw_only=True):
    # Default: the caller's organization. Only a service administrator may name another.
    org_id: Id | None = None


@query("apikey.list", need="self", reply=PageOf[ApiKey])
class ListApiKeys(Page, frozen=True, kw_only=True):
    user_id: Id | None = None  # default: the caller
    # Revoked keys are listed too, and have no bound: a page, of a size that holds every
    # live key (at most 100) when no revoked one is between them.
    limit: Limit = 100


@query("history.get", need="reader", reply=PageOf[HistoryEntry])
class GetHistory(Query, frozen=True, kw_only=True):
    aggregate: Literal["org", "user", "agent", "tool", "conversation"]
    id: Id
    # Conversations only (a session id is unique within its organization): default, the
    # caller's organization.
    org_id: Id | None = None
    limit: Limit = 100
    cursor: Cursor | None = None


SearchText = Annotated[str, msgspec.Meta(min_length=1, max_length=1_000)]


class InOrg(Query, frozen=True, kw_only=True):
    # Default: the caller's organization. Only a service administrator may name another.
    org_id: Id | None = None


@query("agent.get", need="reader", reply=Agent)
class GetAgent(Query, frozen=True, kw_only=True):
    agent_id: Id


@query("agent.list", need="reader", reply=PageOf[Agent])
class ListAgents(Page, frozen=True, kw_only=True):
    org_id: Id | None = None
    tag: Tag | None = None
    name_prefix: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    include_archived: bool = False


@query("agent.get_state", need="reader", reply=AgentState)
class GetAgentState(Query, frozen=True, kw_only=True):
    agent_id: Id


@query("message.list", need="reader", reply=PageOf[Message])
class ListMessages(Page, frozen=True, kw_only=True):
    """A conversation page by page, oldest first (``asc``) or newest first (``desc``)."""

    org_id: Id | None = None
    session_id: Id
    order: Literal["asc", "desc"] = "asc"
    since: TimeMs | None = None  # ms since the epoch, inclusive
    until: TimeMs | None = None  # exclusive
    role: MessageRole | None = None


@query("message.last", need="reader", reply=Items[Message])
class LastMessages(InOrg, frozen=True, kw_only=True):
    """The last ``n`` messages of a session, oldest first: what a prompt is built from."""

    session_id: Id
    n: Limit = 50


@query("message.search", need="reader", reply=MessageSearchResult)
class SearchMessages(InOrg, frozen=True, kw_only=True):
    """Best match first, over one agent's or one user's messages: by their words (``text``,
    the default), their meaning (``vector``) or both (``hybrid``), scored as
    ``memory.search`` scores (agentmem/ranking.py)."""

    text: SearchText
    agent_id: Id | None = None
    user_id: Id | None = None
    session_id: Id | None = None
    role: MessageRole | None = None
    limit: Limit = 20
    mode: SearchMode = "text"
    min_score: Unit | None = None  # the floor of relevance


@query("tool.get", need="reader", reply=Tool)
class GetTool(InOrg, frozen=True, kw_only=True):
    """By id, or by name within the organization: exactly one of the two."""

    tool_id: Id | None = None
    name: ToolName | None = None


@query("tool.list", need="reader", reply=PageOf[Tool])
class ListTools(Page, frozen=True, kw_only=True):
    org_id: Id | None = None
    tags_any: Annotated[list[Tag], msgspec.Meta(max_length=32)] | None = None
    tags_all: Annotated[list[Tag], msgspec.Meta(max_length=32)] | None = None


@system("sys.status", need="service_admin", reply=StatusReport)
class Status(Query, frozen=True, kw_only=True):
    """The log's position, each projection's checkpoint, lag and parked events."""


@system("sys.health", need=None, reply=HealthReport)
class Health(Query, frozen=True, kw_only=True):
    """Public, for liveness probes: whether the log, the store and the projections are up."""


@system("sys.schema", need=None, reply=dict[str, Any])
class Schema(Query, frozen=True, kw_only=True):
    """This protocol as an AsyncAPI 3.0 document (docs/asyncapi.json): every subject, with
    a JSON Schema for its request and its reply, and every event."""
