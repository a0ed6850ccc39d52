"""What a memory read filters by, and how importance decays: pure, for every store.

Importance decays at read time, never by events (the passage of time is not a fact to log):
a memory's importance is halved every half-life of its type since the memory was last
written (added, updated, archived, restored or superseded: each is a sign that someone still
cares about it). Facts (``semantic``) and how-tos (``procedural``) stay relevant for long;
events (``episodic``) fade fast; a ``resource`` is a pointer that stays useful as long as
the document does. ``memory.list`` orders by the decayed value at the query's time
(``order_by: "importance"``); each memory's reply gives ``decayed_importance`` beside the
``importance`` stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from agentmem.domain.metadata_filter import Node

HALF_LIFE_DAYS: Mapping[str, float] = {
    "semantic": 180.0,
    "episodic": 30.0,
    "procedural": 365.0,
    "resource": 365.0,
}
DAY_MS = 86_400_000


def decayed(importance: float, memory_type: str, written_at: int, at: int) -> float:
    """``importance`` decayed from ``written_at`` to ``at`` (ms), never raised."""
    days = HALF_LIFE_DAYS.get(memory_type)
    if days is None or at <= written_at:
        return importance
    return importance * math.exp(-(at - written_at) * math.log(2) / (days * DAY_MS))


@dataclass(frozen=True)
class MemoryFilter:
    """Every filter a memory read takes, checked and defaulted (states), in one value that
    each read (list, search, stats, and later kinds of search) turns into SQL the same way
    (``agentmem.projections.memory_filters``)."""

    org_id: str
    states: tuple[str, ...]
    scope: Mapping[str, str] = field(default_factory=dict)  # user_id, agent_id, session_id
    memory_type: str | None = None
    tags_any: tuple[str, ...] = ()
    min_importance: int | None = None  # millionths, as stored
    max_importance: int | None = None
    created_after: int | None = None  # inclusive, ms
    created_before: int | None = None  # exclusive
    valid_from_after: int | None = None  # inclusive
    valid_from_before: int | None = None  # exclusive
    as_of: int | None = None  # valid time
    metadata: Node | None = None
    # System time: what the service knew at this log sequence, or at this time (ms).
    known_at_seq: int | None = None
    known_at: int | None = None

    @property
    def past(self) -> bool:
        """Does it ask what the service knew at an earlier point (the versions)?"""
        return self.known_at_seq is not None or self.known_at is not None
