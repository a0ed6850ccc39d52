"""Decisions about credentials: API keys and login sessions of a user.

The secrets are made by the caller (``agentmem.auth.tokens``); these functions only decide
what is stored: a digest, never the secret.
"""

from __future__ import annotations

from agentmem.auth.tokens import Token, digest
from agentmem.domain.aggregate import Loaded, Write
from agentmem.domain.users import User, require_live
from agentmem.errors import InvalidError, NotFoundError
from agentmem.events import (
    ApiKeyCreated,
    ApiKeyRevoked,
    SessionEnded,
    SessionStarted,
    UserPasswordChanged,
)

MAX_LIVE_KEYS = 100


def create_key(loaded: Loaded[User], token: Token, name: str) -> list[Write]:
    user = require_live(loaded, token.user_id)
    live = sum(1 for key in user.api_keys.values() if not key.revoked)
    if live >= MAX_LIVE_KEYS:
        raise InvalidError(f"a user may hold at most {MAX_LIVE_KEYS} live API keys")
    event = ApiKeyCreated(
        user_id=user.user_id,
        key_id=token.credential_id,
        name=name,
        prefix=token.display_prefix,
        digest=digest(token.secret),
    )
    return [Write(loaded.subject, loaded.version, [event])]


def revoke_key(loaded: Loaded[User], user_id: str, key_id: str) -> list[Write]:
    user = require_live(loaded, user_id)
    key = user.api_keys.get(key_id)
    if key is None or key.revoked:
        raise NotFoundError(f"API key {key_id} does not exist or is revoked", {"key_id": key_id})
    event = ApiKeyRevoked(user_id=user.user_id, key_id=key_id)
    return [Write(loaded.subject, loaded.version, [event])]


def start_session(
    loaded: Loaded[User], token: Token, now_ms: int, ttl_s: int, rehashed: str | None = None
) -> list[Write]:
    """A new session; ``rehashed``, when given, replaces a password hash made at a cost
    below the service's (the login is the one moment the password is at hand)."""
    user = require_live(loaded, token.user_id)
    rehash = (
        []
        if rehashed is None
        else [UserPasswordChanged(user_id=user.user_id, password_hash=rehashed)]
    )
    event = SessionStarted(
        user_id=user.user_id,
        session_id=token.credential_id,
        digest=digest(token.secret),
        started_at=now_ms,
        expires_at=now_ms + ttl_s * 1000,
    )
    return [Write(loaded.subject, loaded.version, [*rehash, event])]


def end_session(loaded: Loaded[User], user_id: str, session_id: str) -> list[Write]:
    user = require_live(loaded, user_id)
    session = user.sessions.get(session_id)
    if session is None or session.ended:
        raise NotFoundError(f"session {session_id} is not open", {"session_id": session_id})
    event = SessionEnded(user_id=user.user_id, session_id=session_id)
    return [Write(loaded.subject, loaded.version, [event])]
