"""The request bodies of every query, as msgspec Structs."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from agentmem.commands import Email, Id, Tag, ToolName
from agentmem.events import MessageRole

Limit = Annotated[int, msgspec.Meta(ge=1, le=500)]
Seq = Annotated[int, msgspec.Meta(ge=0)]
Cursor = Annotated[str, msgspec.Meta(max_length=512)]


class Query(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Read-your-writes: wait (bounded) until the projection has applied this log sequence.
    after_seq: Seq | None = None


class Page(Query, frozen=True, kw_only=True):
    limit: Limit = 50
    cursor: Cursor | None = None


class GetOrg(Query, frozen=True, kw_only=True):
    org_id: Id


class ListOrgs(Page, frozen=True, kw_only=True):
    pass


class GetUser(Query, frozen=True, kw_only=True):
    user_id: Id


class GetUserByEmail(Query, frozen=True, kw_only=True):
    email: Email


class EmailExists(Query, frozen=True, kw_only=True):
    email: Email


class ListUsers(Page, frozen=True, kw_only=True):
    # Default: the caller's organization. Only a service administrator may name another.
    org_id: Id | None = None


class ListApiKeys(Query, frozen=True, kw_only=True):
    user_id: Id | None = None  # default: the caller


class GetHistory(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    aggregate: Literal["org", "user", "agent", "tool", "conversation"]
    id: Id
    # Conversations only (a session id is unique within its organization): default, the
    # caller's organization.
    org_id: Id | None = None
    limit: Limit = 100
    cursor: Cursor | None = None


TimeMs = Annotated[int, msgspec.Meta(ge=0)]
SearchText = Annotated[str, msgspec.Meta(min_length=1, max_length=1_000)]


class InOrg(Query, frozen=True, kw_only=True):
    # Default: the caller's organization. Only a service administrator may name another.
    org_id: Id | None = None


class GetAgent(Query, frozen=True, kw_only=True):
    agent_id: Id


class ListAgents(Page, frozen=True, kw_only=True):
    org_id: Id | None = None
    tag: Tag | None = None
    name_prefix: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    include_archived: bool = False


class GetAgentState(Query, frozen=True, kw_only=True):
    agent_id: Id


class ListMessages(Page, frozen=True, kw_only=True):
    """A conversation page by page, oldest first (``asc``) or newest first (``desc``)."""

    org_id: Id | None = None
    session_id: Id
    order: Literal["asc", "desc"] = "asc"
    since: TimeMs | None = None  # ms since the epoch, inclusive
    until: TimeMs | None = None  # exclusive
    role: MessageRole | None = None


class LastMessages(InOrg, frozen=True, kw_only=True):
    """The last ``n`` messages of a session, oldest first: what a prompt is built from."""

    session_id: Id
    n: Limit = 50


class SearchMessages(InOrg, frozen=True, kw_only=True):
    """Full-text search, best match first, over one agent's or one user's messages."""

    text: SearchText
    agent_id: Id | None = None
    user_id: Id | None = None
    session_id: Id | None = None
    role: MessageRole | None = None
    limit: Limit = 20


class GetTool(InOrg, frozen=True, kw_only=True):
    """By id, or by name within the organization: exactly one of the two."""

    tool_id: Id | None = None
    name: ToolName | None = None


class ListTools(Page, frozen=True, kw_only=True):
    org_id: Id | None = None
    tags_any: Annotated[list[Tag], msgspec.Meta(max_length=32)] | None = None
    tags_all: Annotated[list[Tag], msgspec.Meta(max_length=32)] | None = None


class Status(Query, frozen=True, kw_only=True):
    pass
