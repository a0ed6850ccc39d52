"""Associations between memories: typed, weighted links, queryable in both directions.

The links from one memory live on ``agentmem.evt.<org>.association.<memory_id>``; the
state is the set of (to, type) links there. Both memories must be live memories of one
organization when a link is made; deleting either one removes the link from the tables
(the graph projection reads memory deletions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal

import msgspec

from agentmem import subjects
from agentmem.commands import Id, Targeted
from agentmem.domain.aggregate import Loaded, Write, check_version
from agentmem.errors import NotFoundError
from agentmem.events import AnyEvent, MemoryAssociated, MemoryDissociated
from agentmem.protocol import command, query
from agentmem.queries import Query
from agentmem.replies import Association, Items
from agentmem.validation import invalid

KNOWN_TYPES = ("causal", "temporal", "similar", "contrast", "hierarchical", "reference")
AssociationType = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,39}$(?!\n)")]
Strength = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


@command("memory.associate", need="member", reply=MemoryAssociated)
class AssociateMemories(Targeted, frozen=True, kw_only=True):
    """Link ``from_memory_id`` to ``to_memory_id`` (one of KNOWN_TYPES or a custom lower-case
    word). Linking again with the same type sets the strength."""

    from_memory_id: Id
    to_memory_id: Id
    association_type: AssociationType = "reference"
    strength: Strength = 0.5


@command("memory.dissociate", need="member", reply=MemoryDissociated)
class DissociateMemories(Targeted, frozen=True, kw_only=True):
    from_memory_id: Id
    to_memory_id: Id
    association_type: AssociationType = "reference"


@query("memory.associations", need="reader", reply=Items[Association])
class MemoryAssociations(Query, frozen=True, kw_only=True):
    """A memory's links, both directions (or one), strongest first."""

    memory_id: Id
    direction: Literal["both", "out", "in"] = "both"
    association_type: AssociationType | None = None
    min_strength: Strength = 0.0
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 100


@dataclass(frozen=True)
class Links:
    """(to_memory_id, type) -> strength, of one memory's outgoing links."""

    links: Mapping[tuple[str, str], float] = field(default_factory=dict)


def subject(org_id: str, memory_id: str) -> str:
    return subjects.event(org_id, "association", memory_id)


def evolve(state: Links | None, event: AnyEvent) -> Links | None:
    links = dict((state or Links()).links)
    match event:
        case MemoryAssociated():
            links[(event.to_memory_id, event.association_type)] = event.strength
        case MemoryDissociated():
            links.pop((event.to_memory_id, event.association_type), None)
        case _:
            return state
    return Links(links)


def associate(loaded: Loaded[Links], org_id: str, command: AssociateMemories) -> list[Write]:
    check_version(loaded, command.expected_version)
    if command.from_memory_id == command.to_memory_id:
        raise invalid("a memory cannot be linked to itself", "$.to_memory_id", "invalid_value")
    event = MemoryAssociated(
        org_id=org_id,
        from_memory_id=command.from_memory_id,
        to_memory_id=command.to_memory_id,
        association_type=command.association_type,
        strength=command.strength,
    )
    return [Write(loaded.subject, loaded.version, [event])]


def dissociate(loaded: Loaded[Links], command: DissociateMemories) -> list[Write]:
    check_version(loaded, command.expected_version)
    key = (command.to_memory_id, command.association_type)
    if loaded.state is None or key not in loaded.state.links:
        raise NotFoundError(
            f"memory {command.from_memory_id} has no {command.association_type} link to "
            f"{command.to_memory_id}",
            {"from_memory_id": command.from_memory_id, "to_memory_id": command.to_memory_id},
        )
    event = MemoryDissociated(
        from_memory_id=command.from_memory_id,
        to_memory_id=command.to_memory_id,
        association_type=command.association_type,
    )
    return [Write(loaded.subject, loaded.version, [event])]


__all__ = ["AssociateMemories", "DissociateMemories", "MemoryAssociations"]
