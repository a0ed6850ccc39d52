"""What every decision works with: an aggregate as loaded from the log, and the writes to it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from agentmem.errors import ConflictError
from agentmem.events import AnyEvent

S = TypeVar("S")

Evolve = Callable[[S | None, AnyEvent], S | None]


@dataclass(frozen=True)
class Loaded(Generic[S]):
    """An aggregate's state folded from its subject; ``version`` is that subject's last seq."""

    subject: str
    state: S | None
    version: int
    # command id -> seq of the commit it produced, for the most recent commits: a retried
    # command is recognised here and answered with its first outcome.
    commands: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Write:
    """Events for one subject, appended only if that subject is still at ``expected``.

    ``expected=None`` appends whatever the subject's version: for streams of facts such as
    a conversation's messages, where any order of concurrent appends is a valid one and no
    decision depends on the subject's earlier events.
    """

    subject: str
    expected: int | None
    events: list[AnyEvent]


def check_version(loaded: Loaded[S], expected_version: int | None) -> None:
    if expected_version is not None and expected_version != loaded.version:
        raise ConflictError(
            f"expected version {expected_version}, but it is at version {loaded.version}",
            {"expected_version": expected_version, "current_version": loaded.version},
        )


def fold(evolve: Evolve[S], state: S | None, events: list[AnyEvent]) -> S | None:
    for event in events:
        state = evolve(state, event)
    return state
