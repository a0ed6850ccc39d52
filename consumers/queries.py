"""Query handlers: they read projection tables only, never the log."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from agentmem.commands import MAX_SEQ, normalize_email
from agentmem.consumers.auth import authorize
from agentmem.consumers.commands import missing_org, missing_user
from agentmem.consumers.router import Request, Result, Router
from agentmem.errors import ForbiddenError, NotFoundError
from agentmem.projections import orgs, users
from agentmem.queries import (
    EmailExists,
    GetOrg,
    GetUser,
    GetUserByEmail,
    ListApiKeys,
    ListOrgs,
    ListUsers,
)
from agentmem.store import Row
from agentmem.validation import invalid

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

_CURSOR_MARK = "k:"  # a cursor decodes to this mark and the last key of the page


def encode_cursor(last_key: str) -> str:
    raw = (_CURSOR_MARK + last_key).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, fields: int = 1) -> str:
    """The key a cursor holds ("" for none). ``fields``: how many NUL-separated fields the
    keys of its subject hold. A key with any other NUL is none this service made, and
    Postgres text cannot hold one (a forged cursor with a NUL was `internal` there)."""
    if not cursor:
        return ""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if not raw.startswith(_CURSOR_MARK) or raw.count("\x00") != fields - 1:
        raise invalid(
            "cursor is not one this service returned", "$.cursor", "invalid_value", cursor=cursor
        )
    return raw.removeprefix(_CURSOR_MARK)


# Items of one page, as JSON: far enough below NATS's 1 MiB message limit that a page of
# large rows (an agent's persona, a tool's schema) is cut short instead of never answering.
MAX_PAGE_BYTES = 512 * 1024
_item_encoder = msgspec.json.Encoder()
_FIT_CHUNK = 16


def cursor_number(cursor: str | None) -> int | None:
    """The number a cursor of a subject paged by a number (a log sequence, a position)
    holds; None for no cursor."""
    key = decode_cursor(cursor)
    if not key:
        return None
    # Bounded as every sequence is (a longer one is no position: the log refused the read).
    if not (key.isascii() and key.isdigit()) or len(key) > 19 or int(key) > MAX_SEQ:
        raise invalid(
            "cursor is not one this subject returned", "$.cursor", "invalid_value", cursor=cursor
        )
    return int(key)


def item_size(item: Any) -> int:
    """An item's size in a reply: its JSON's length."""
    return len(_item_encoder.encode(item))


def fitting(items: list[dict[str, Any]], max_bytes: int = MAX_PAGE_BYTES) -> int:
    """How many of ``items``, from the first, fit in ``max_bytes`` of JSON (at least one):
    500 messages of 100,000 characters would not fit in one NATS message.

    The sizes are summed a chunk at a time, from one encoding of the chunk (a list's JSON
    is its items' joined by commas, in brackets), and item by item only within the chunk
    that crosses the limit: a usual page takes a few encodings instead of one per item,
    and a page of huge items is never encoded much past the limit."""
    total = 0
    for start in range(0, len(items), _FIT_CHUNK):
        chunk = items[start : start + _FIT_CHUNK]
        size = len(_item_encoder.encode(chunk)) - len(chunk) - 1
        if total + size <= max_bytes:
            total += size
            continue
        for n, item in enumerate(chunk, start):
            total += item_size(item)
            if total > max_bytes and n > 0:
                return n
    return len(items)


def page(
    rows: list[dict[str, Any]],
    limit: int,
    key: str | Callable[[int], str],
    max_bytes: int | None = None,
) -> dict[str, Any]:
    """Keyset pagination: fetch limit+1 rows; the extra one says a next page exists.

    ``key``: the field of an item that the cursor holds, or, when the cursor is not a field
    of the item, a function of the page's last index that makes it (made once, for the last
    item only, instead of for every row).

    With ``max_bytes``, the page also ends before the item that would take its items past
    that many bytes of JSON (it always holds at least one), and the cursor goes on from there.
    """
    items = rows[:limit]
    more = len(rows) > limit
    if max_bytes is not None:
        fit = fitting(items, max_bytes)
        items, more = items[:fit], more or fit < len(items)
    if not more:
        return {"items": items, "next_cursor": None}
    last = key(len(items) - 1) if callable(key) else items[-1][key]
    return {"items": items, "next_cursor": encode_cursor(last)}


def fitted(items: list[dict[str, Any]], max_bytes: int = MAX_PAGE_BYTES) -> Any:
    """The items of an answer without pages (a search's, best first) that fit in
    ``max_bytes`` of JSON: when all do, encoded once, and the reply carries that JSON
    (``msgspec.Raw``) instead of sizing them and encoding them again; else the first that
    fit (``fitting``)."""
    encoded = _item_encoder.encode(items)
    if len(encoded) <= max_bytes:
        return msgspec.Raw(encoded)
    return items[: fitting(items, max_bytes)]


def encoded_page(
    rows: list[dict[str, Any]],
    limit: int,
    key: str | Callable[[int], str],
    max_bytes: int = MAX_PAGE_BYTES,
) -> dict[str, Any]:
    """``page`` with its size checked, for a reply that sends its items as they are: they
    are encoded once, and the reply carries that JSON (``msgspec.Raw``), so the encoding
    that sizes the page is the one sent, not a second one (a page of 50 memories sized and
    encoded: 73 -> 36 µs). A page past ``max_bytes`` in one piece is cut as ``page`` cuts
    it. Not for a handler that changes the items after paging them."""
    encoded = _item_encoder.encode(rows[:limit])
    if len(encoded) > max_bytes:
        return page(rows, limit, key, max_bytes)
    result = page(rows, limit, key)
    result["items"] = msgspec.Raw(encoded)
    return result


def readable(request: Request[Any], row: Row | None, missing: NotFoundError) -> Row:
    """``row``, if the caller may read it; another organization's row is answered exactly
    as a missing one (``missing``, which names what was asked for in its details)."""
    if row is None:
        raise missing
    authorize(request.caller, request.need, row["org_id"], missing)
    return row


def query_router(parts: Parts) -> Router:
    router = Router()
    store, freshness = parts.store, parts.freshness

    @router.handle(GetOrg)
    async def get_org(request: Request[GetOrg]) -> Result:
        missing = missing_org(request.body.org_id)
        authorize(request.caller, request.need, request.body.org_id, missing)
        seq = await freshness.wait("orgs", request.body.after_seq)
        row = await orgs.get_org(store, request.body.org_id)
        if row is None:
            raise missing
        return row, seq

    @router.handle(ListOrgs)
    async def list_orgs(request: Request[ListOrgs]) -> Result:
        query, caller = request.body, request.caller
        authorize(caller, request.need, None)
        seq = await freshness.wait("orgs", query.after_seq)
        # Everyone but a service administrator sees only their own organization.
        only = None if caller.service_admin else caller.org_id
        rows = await orgs.list_orgs(store, decode_cursor(query.cursor), query.limit + 1, only)
        return page(rows, query.limit, "org_id"), seq

    @router.handle(GetUser)
    async def get_user(request: Request[GetUser]) -> Result:
        authorize(request.caller, request.need, None)
        seq = await freshness.wait("users", request.body.after_seq)
        row = await users.get_user(store, request.body.user_id)
        return readable(request, row, missing_user(request.body.user_id)), seq

    @router.handle(GetUserByEmail)
    async def get_user_by_email(request: Request[GetUserByEmail]) -> Result:
        authorize(request.caller, request.need, None)
        seq = await freshness.wait("users", request.body.after_seq)
        email = normalize_email(request.body.email)
        row = await users.get_user_by_email(store, email)
        missing = NotFoundError(f"no user has the email {email}", {"email": email})
        return readable(request, row, missing), seq

    @router.handle(EmailExists)
    async def email_exists(request: Request[EmailExists]) -> Result:
        # Emails are unique across the service, so the answer spans organizations: only
        # those who register users may ask.
        authorize(request.caller, request.need, None)
        seq = await freshness.wait("users", request.body.after_seq)
        email = normalize_email(request.body.email)
        return {"email": email, "exists": await users.email_taken(store, email)}, seq

    @router.handle(ListUsers)
    async def list_users(request: Request[ListUsers]) -> Result:
        query = request.body
        org_id = query.org_id or request.caller.org_id
        authorize(request.caller, request.need, org_id, missing_org(org_id))
        seq = await freshness.wait("users", query.after_seq)
        rows = await users.list_users(store, org_id, decode_cursor(query.cursor), query.limit + 1)
        return page(rows, query.limit, "user_id"), seq

    @router.handle(ListApiKeys)
    async def list_api_keys(request: Request[ListApiKeys]) -> Result:
        user_id = request.body.user_id or request.caller.user_id
        seq = await freshness.wait("users", request.body.after_seq)
        owner = await users.key_owner(store, user_id)
        missing = missing_user(user_id)
        if owner is None:
            raise missing
        caller = request.caller
        authorize(caller, request.need, owner["org_id"], missing, user_id)
        if owner["service_admin"] and not caller.service_admin and caller.user_id != user_id:
            # As for every other operation on the administrator (``check_user``).
            raise ForbiddenError("only a service administrator may act on a service administrator")
        query = request.body
        rows = await users.api_keys(store, user_id, decode_cursor(query.cursor), query.limit + 1)
        return page(rows, query.limit, "key_id"), seq

    return router
