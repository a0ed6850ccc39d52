"""Bearer credentials: API keys and session tokens.

A credential names the user aggregate it belongs to, so checking it is one incremental read
of that user's subject in the log (which is always current: a revoked key fails on the very
next request, in every process). Only a SHA-256 of the secret is ever stored: the secret is
256 random bits, so a slow KDF would add nothing but latency.

    amk_<org_id>_<user_id>_<key_id>_<secret>        an API key
    ams_<org_id>_<user_id>_<session_id>_<secret>    a session token from login
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

from agentmem import ids

API_KEY_PREFIX = "amk"
SESSION_PREFIX = "ams"
HEADER = "Authorization"  # value: "Bearer <token>"

Kind = Literal["key", "session"]


@dataclass(frozen=True)
class Token:
    kind: Kind
    org_id: str
    user_id: str
    credential_id: str
    secret: str

    def __str__(self) -> str:
        prefix = API_KEY_PREFIX if self.kind == "key" else SESSION_PREFIX
        return f"{prefix}_{self.org_id}_{self.user_id}_{self.credential_id}_{self.secret}"

    @property
    def display_prefix(self) -> str:
        """What a listing may show: enough to recognise a key, not one bit of its secret."""
        prefix = API_KEY_PREFIX if self.kind == "key" else SESSION_PREFIX
        return f"{prefix}_..._{self.credential_id}_..."


def new_token(kind: Kind, org_id: str, user_id: str) -> Token:
    return Token(kind, org_id, user_id, ids.new_id(), secrets.token_hex(32))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)


def parse(value: str | None) -> Token | None:
    """A token from an ``Authorization: Bearer ...`` header value, or None if malformed."""
    if not value:
        return None
    scheme, _, raw = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raw = value.strip()  # a bare token, without "Bearer "
    parts = raw.strip().split("_")
    if len(parts) != 5 or parts[0] not in (API_KEY_PREFIX, SESSION_PREFIX):
        return None
    prefix, org_id, user_id, credential_id, secret = parts
    if not all(ids.is_token(p) for p in (org_id, user_id, credential_id)) or len(secret) != 64:
        return None
    kind: Kind = "key" if prefix == API_KEY_PREFIX else "session"
    return Token(kind, org_id, user_id, credential_id, secret)


def malformed(value: str) -> str:
    """What is wrong with a header value that :func:`parse` refused, in words that quote no
    part of it (it may hold a secret)."""
    scheme, _, raw = value.strip().partition(" ")
    if scheme.lower() == "bearer":
        if not raw.strip():
            return "there is no token after 'Bearer'"
    elif raw.strip():
        return "its scheme is not Bearer"
    return (
        "the token is not an AgentMem API key (amk_<org>_<user>_<key>_<64 hex digits>) "
        "or session token (ams_...)"
    )
