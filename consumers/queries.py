"""Query handlers: they read projection tables only, never the log."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

import msgspec

from agentmem.commands import normalize_email
from agentmem.errors import ForbiddenError, NotFoundError
from agentmem.queries import (
    EmailExists,
    GetOrg,
    GetUser,
    GetUserByEmail,
    ListApiKeys,
    ListOrgs,
    ListUsers,
)
from agentmem.validation import invalid
from consumers.auth import authorize
from consumers.router import Request, Result, Router

if TYPE_CHECKING:
    from consumers.parts import Parts

_ORG_COLUMNS = "org_id, name, created_at, updated_at, version"
_USER_COLUMNS = "user_id, org_id, name, email, roles, created_at, updated_at, version"


_CURSOR_MARK = "k:"  # a cursor decodes to this mark and the last key of the page


def encode_cursor(last_key: str) -> str:
    raw = (_CURSOR_MARK + last_key).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str:
    if not cursor:
        return ""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if not raw.startswith(_CURSOR_MARK):
        raise invalid(
            "cursor is not one this service returned", "$.cursor", "invalid_value", cursor=cursor
        )
    return raw.removeprefix(_CURSOR_MARK)


# Items of one page, as JSON: far enough below NATS's 1 MiB message limit that a page of
# large rows (an agent's persona, a tool's schema) is cut short instead of never answering.
MAX_PAGE_BYTES = 512 * 1024
_item_encoder = msgspec.json.Encoder()


def page(
    rows: list[dict[str, Any]], limit: int, key: str, max_bytes: int | None = None
) -> dict[str, Any]:
    """Keyset pagination: fetch limit+1 rows; the extra one says a next page exists.

    With ``max_bytes``, the page also ends before the item that would take its items past
    that many bytes of JSON (it always holds at least one), and the cursor goes on from there.
    """
    items = rows[:limit]
    more = len(rows) > limit
    if max_bytes is not None:
        total = 0
        for n, item in enumerate(items):
            total += len(_item_encoder.encode(item))
            if total > max_bytes and n > 0:
                items, more = items[:n], True
                break
    return {"items": items, "next_cursor": encode_cursor(items[-1][key]) if more else None}


def user_view(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "roles": msgspec.json.decode(row["roles"])}


def _hide_other_org(request: Request[Any], row: dict[str, Any] | None, missing: str) -> None:
    """Another organization's row is answered exactly as a missing one."""
    if row is None:
        raise NotFoundError(missing)
    authorize(request.caller, request.need, row["org_id"], NotFoundError(missing))


def query_router(parts: Parts) -> Router:
    router = Router()
    store, freshness = parts.store, parts.freshness

    @router.handle(GetOrg)
    async def get_org(request: Request[GetOrg]) -> Result:
        missing = f"organization {request.body.org_id} does not exist"
        authorize(request.caller, request.need, request.body.org_id, NotFoundError(missing))
        seq = await freshness.wait("orgs", request.body.after_seq)
        row = await store.fetch_one(
            f"SELECT {_ORG_COLUMNS} FROM orgs WHERE org_id = ?", request.body.org_id
        )
        if row is None:
            raise NotFoundError(missing)
        return row, seq

    @router.handle(ListOrgs)
    async def list_orgs(request: Request[ListOrgs]) -> Result:
        query, caller = request.body, request.caller
        authorize(caller, request.need, None)
        seq = await freshness.wait("orgs", query.after_seq)
        # Everyone but a service administrator sees only their own organization.
        scope, args = ("", ()) if caller.service_admin else ("AND org_id = ? ", (caller.org_id,))
        rows = await store.fetch_all(
            f"SELECT {_ORG_COLUMNS} FROM orgs WHERE org_id > ? {scope}ORDER BY org_id LIMIT ?",
            decode_cursor(query.cursor),
            *args,
            query.limit + 1,
        )
        return page(rows, query.limit, "org_id"), seq

    @router.handle(GetUser)
    async def get_user(request: Request[GetUser]) -> Result:
        authorize(request.caller, request.need, None)
        seq = await freshness.wait("users", request.body.after_seq)
        row = await store.fetch_one(
            f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = ?", request.body.user_id
        )
        _hide_other_org(request, row, f"user {request.body.user_id} does not exist")
        assert row is not None
        return user_view(row), seq

    @router.handle(GetUserByEmail)
    async def get_user_by_email(request: Request[GetUserByEmail]) -> Result:
        authorize(request.caller, request.need, None)
        seq = await freshness.wait("users", request.body.after_seq)
        email = normalize_email(request.body.email)
        row = await store.fetch_one(f"SELECT {_USER_COLUMNS} FROM users WHERE email = ?", email)
        _hide_other_org(request, row, f"no user has the email {email}")
        assert row is not None
        return user_view(row), seq

    @router.handle(EmailExists)
    async def email_exists(request: Request[EmailExists]) -> Result:
        # Emails are unique across the service, so the answer spans organizations: only
        # those who register users may ask.
        authorize(request.caller, request.need, None)
        seq = await freshness.wait("users", request.body.after_seq)
        email = normalize_email(request.body.email)
        row = await store.fetch_one("SELECT 1 AS found FROM users WHERE email = ?", email)
        return {"email": email, "exists": row is not None}, seq

    @router.handle(ListUsers)
    async def list_users(request: Request[ListUsers]) -> Result:
        query = request.body
        org_id = query.org_id or request.caller.org_id
        missing = f"organization {org_id} does not exist"
        authorize(request.caller, request.need, org_id, NotFoundError(missing))
        seq = await freshness.wait("users", query.after_seq)
        rows = await store.fetch_all(
            f"SELECT {_USER_COLUMNS} FROM users WHERE org_id = ? AND user_id > ? "
            "ORDER BY user_id LIMIT ?",
            org_id,
            decode_cursor(query.cursor),
            query.limit + 1,
        )
        result = page(rows, query.limit, "user_id")
        result["items"] = [user_view(r) for r in result["items"]]
        return result, seq

    @router.handle(ListApiKeys)
    async def list_api_keys(request: Request[ListApiKeys]) -> Result:
        user_id = request.body.user_id or request.caller.user_id
        seq = await freshness.wait("users", request.body.after_seq)
        owner = await store.fetch_one(
            "SELECT org_id, service_admin FROM users WHERE user_id = ?", user_id
        )
        missing = f"user {user_id} does not exist"
        if owner is None:
            raise NotFoundError(missing)
        caller = request.caller
        authorize(caller, request.need, owner["org_id"], NotFoundError(missing), user_id)
        if owner["service_admin"] and not caller.service_admin and caller.user_id != user_id:
            # As for every other operation on the administrator (``check_user``).
            raise ForbiddenError("only a service administrator may act on a service administrator")
        rows = await store.fetch_all(
            "SELECT key_id, user_id, name, prefix, created_at, revoked_at FROM api_keys "
            "WHERE user_id = ? ORDER BY key_id",
            user_id,
        )
        return {"items": rows}, seq

    return router
