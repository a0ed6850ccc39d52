"""The request bodies of every query, as msgspec Structs."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from agentmem.commands import Email, Id

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
    aggregate: Literal["org", "user"]
    id: Id
    limit: Limit = 100
    cursor: Cursor | None = None


class Status(Query, frozen=True, kw_only=True):
    pass
