"""Password hashing with scrypt, a memory-hard KDF from the standard library.

The hash string is self-describing (``scrypt$n$r$p$salt$hash``), so the cost can be raised
later without breaking old hashes. Hashing takes tens of milliseconds by design: callers run
it in a thread (hashlib releases the GIL) so the event loop keeps serving.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

# OWASP's guidance for scrypt (N=2^17, r=8, p=1): 128 MiB and ~0.36 s per hash on the
# reference machine. Hashes run in a bounded pool (consumers/passwords.py), so the memory
# and the cores they take are bounded too.
DEFAULT_COST = 2**17
_R, _P = 8, 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + 2**20, dklen=32
    )


def hash_password(password: str, cost: int = DEFAULT_COST) -> str:
    salt = os.urandom(16)
    digest = _derive(password, salt, cost, _R, _P)
    return f"scrypt${cost}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def cost_of(encoded: str) -> int:
    """The scrypt cost (N) a stored hash was made with; 0 for one that does not parse."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not parts[1].isdigit():
        return 0
    return int(parts[1])


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        actual = _derive(password, _unb64(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, _unb64(digest))
