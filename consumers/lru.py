"""A least-recently-used map bounded by entry count and by an estimate of its bytes.

The aggregate cache and the access view keep aggregates folded from the log. An entry can
be small (an organization) or large (an agent's state document of up to 256 KiB), so a
bound by count alone lets a process's memory grow with what it was asked for; the bytes are
bounded too. The estimate is the size of the entry's state encoded as JSON, computed when
the entry is stored.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

V = TypeVar("V")

_encoder = msgspec.json.Encoder()
UNSIZED = 1024  # what a value msgspec cannot encode is taken to weigh


def json_size(value: Any) -> int:
    """About how many bytes ``value`` holds: its JSON encoding's length."""
    try:
        return len(_encoder.encode(value))
    except (TypeError, ValueError):
        return UNSIZED


class LRU(Generic[V]):
    def __init__(self, weigh: Callable[[V], int], max_entries: int, max_bytes: int) -> None:
        self.weigh = weigh
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, touch: bool = True) -> V | None:
        held = self._entries.get(key)
        if held is None:
            return None
        if touch:
            self._entries.move_to_end(key)
        return held[0]

    def put(self, key: str, value: V) -> None:
        """Store (or re-store, re-weighed) ``value``, then drop the least recently used
        entries past either bound (never the one just stored)."""
        self.pop(key)
        size = self.weigh(value)
        self._entries[key] = (value, size)
        self.bytes += size
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_entries or self.bytes > self.max_bytes
        ):
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped

    def pop(self, key: str) -> V | None:
        held = self._entries.pop(key, None)
        if held is None:
            return None
        self.bytes -= held[1]
        return held[0]

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
