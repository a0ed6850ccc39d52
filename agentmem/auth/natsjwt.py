"""NATS JWTs, as nats-server's auth callout reads and writes them.

nats-server sends an *authorization request* (a JWT it signed) for every client connection
it wants decided; the answer is an *authorization response* JWT holding a *user* JWT: the
permissions the connection gets. Both are signed with an account nkey whose public half the
server's config names as the callout's ``issuer``. The format is nats-io/jwt v2's: a JSON
header and claims, base64url without padding, an ed25519 signature by an nkey, and a ``jti``
that is the base32 SHA-512/256 of the claims.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

import nkeys
from nacl.signing import VerifyKey

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_account_seed() -> str:
    """A fresh account nkey seed (``SA...``): the callout's issuer."""
    seed: bytes = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_ACCOUNT)
    return seed.decode()


def _raw_public_key(public: str) -> bytes:
    """The 32 ed25519 bytes of a public nkey (base32: a prefix byte, the key, a CRC16)."""
    raw = base64.b32decode(public + "=" * (-len(public) % 8))
    if len(raw) != 35 or nkeys.crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise ValueError("not a public nkey")
    return raw[1:33]


def public_key(seed: str) -> str:
    public: bytes = nkeys.from_seed(seed.encode()).public_key
    return public.decode()


def encode(claims: dict[str, Any], seed: str) -> str:
    """``claims`` signed by ``seed``'s key, which becomes their issuer."""
    keys = nkeys.from_seed(seed.encode())
    body = {**claims, "iss": keys.public_key.decode(), "iat": int(time.time())}
    body.pop("jti", None)
    digest = hashlib.new("sha512_256", json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    signed = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signed}.{_b64(keys.sign(signed.encode()))}"


def decode(token: str) -> dict[str, Any]:
    """The claims of a JWT whose signature matches its issuer's key; ValueError otherwise."""
    try:
        header, payload, signature = token.split(".")
        claims: dict[str, Any] = json.loads(_unb64(payload))
        VerifyKey(_raw_public_key(str(claims["iss"]))).verify(
            f"{header}.{payload}".encode(), _unb64(signature)
        )
    except Exception as exc:
        raise ValueError(f"not a valid NATS JWT: {exc.__class__.__name__}") from None
    return claims


def user_jwt(
    user_nkey: str,
    account: str,
    name: str,
    publish: list[str],
    subscribe: list[str],
    seed: str,
    expires: int | None = None,
) -> str:
    """A user of ``account`` (the config's name for it) that may publish to ``publish`` and
    subscribe to ``subscribe``, nothing else; gone at ``expires`` (Unix seconds) if set."""
    claims: dict[str, Any] = {
        "sub": user_nkey,
        "aud": account,
        "name": name,
        "nats": {
            "pub": {"allow": publish},
            "sub": {"allow": subscribe},
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        },
    }
    if expires is not None:
        claims["exp"] = expires
    return encode(claims, seed)


def authorization_response(
    user_nkey: str, server_id: str, seed: str, jwt: str = "", error: str = ""
) -> str:
    """The callout's answer: ``jwt`` lets the connection in, ``error`` refuses it."""
    nats: dict[str, Any] = {"type": "authorization_response", "version": 2}
    if jwt:
        nats["jwt"] = jwt
    else:
        nats["error"] = error or "not authorized"
    return encode({"sub": user_nkey, "aud": server_id, "nats": nats}, seed)
