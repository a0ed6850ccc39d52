"""Time-ordered ids (UUIDv7, RFC 9562), each a valid single NATS token."""

from __future__ import annotations

import os
import re
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_counter = 0

# Ids that clients send in (command ids) must fit in one NATS token and one header value.
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{1,64}\Z")


def new_id() -> str:
    """A UUIDv7: 48 bits of milliseconds, then a counter so ids made in one ms still sort."""
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    # What str(uuid.UUID(int=value)) gives, in a third of its time (an id per message).
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_token(value: str) -> bool:
    """True when ``value`` is safe as a NATS subject token and a header value."""
    return bool(_TOKEN.match(value))
