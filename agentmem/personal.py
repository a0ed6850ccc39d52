"""What is personal in an event, and whose it is: the declaration crypto-shredding reads.

A field is personal when its type says so, in the event's own declaration::

    class MessageAppended(Event, tag="message.appended", frozen=True):
        message_id: str
        content: Personal[str]

``Personal[T]`` is ``T`` with a msgspec ``Meta(extra={"personal": True})``: it changes
nothing of how the event is built, validated or documented; ``agentmem.sealing`` writes
every personal field of an event to the log encrypted, under the data key of the event's
*data subject*, and nothing else.

The data subject is named from the event's subject and its ids, the same way for every
aggregate (``key_name``)::

    <org>.<user>.<agent>.<session>.<aggregate>.<aggregate id>

``user``, ``agent`` and ``session`` are the event's ``user_id``, ``agent_id`` and
``session_id`` fields (``=`` when it has none: no id holds ``=``), and ``org`` is its
``org_id`` field or else its subject's organization. So one key covers one aggregate of one
scope, and a forget finds every key it must delete with one wildcard over these names
(``agentmem.domain.forget``): a user's keys are ``<org>.<user>.>``, an agent's
``<org>.*.<agent>.>``, a conversation's ``<org>.*.*.<session>.>``. An event with personal
fields must therefore carry the ids of whom it is about, even when its aggregate knows them
already (``memory.updated`` repeats the memory's scope).

What is derived from one memory is sealed with that memory's key instead, named
``<org>.<user>.<agent>.<session>.memory.<memory id>`` (an event's ``sealed_with_memory``):
an extraction of a memory (``graph.extracted``) and a relation whose source names that
memory alone (``relation.asserted``). So ``memory.forget``'s wildcard,
``<org>.*.*.*.memory.<id>``, shreds them with the memory.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, TypeVar

import msgspec

from agentmem import subjects

T = TypeVar("T")

PERSONAL = msgspec.Meta(extra={"personal": True})
Personal = Annotated[T, PERSONAL]

# Stands for "no id" in a key name: ids are [A-Za-z0-9_-], so none is "=".
NO_ID = "="
SCOPE_IDS = ("user_id", "agent_id", "session_id")


def _is_personal(annotation: Any) -> bool:
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, msgspec.Meta) and (meta.extra or {}).get("personal"):
            return True
    return False


def personal_fields(cls: type[msgspec.Struct]) -> tuple[str, ...]:
    """The names of ``cls``'s personal fields, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple(name for name in cls.__struct_fields__ if _is_personal(hints.get(name)))


def key_name(subject: str, event: msgspec.Struct) -> str:
    """The name of the data key that seals ``event``'s personal fields on ``subject``."""
    ref = subjects.parse(subject)
    org = getattr(event, "org_id", None) or ref.org_id
    scope = [getattr(event, name, None) or NO_ID for name in SCOPE_IDS]
    memory_id = getattr(event, "sealed_with_memory", None)
    if memory_id:  # derived from one memory: its key, so that forgetting it forgets this
        return ".".join([org, *scope, "memory", memory_id])
    return ".".join([org, *scope, ref.aggregate, ref.aggregate_id])


def user_of(name: str) -> str | None:
    """The user of a data key's name, if its scope has one (its second token)."""
    tokens = name.split(".")
    return tokens[1] if len(tokens) > 1 and tokens[1] != NO_ID else None


def key_filter(
    org_id: str,
    *,
    user_id: str | None = None,
    agent_id: str | None = None,
    session_id: str | None = None,
    aggregate: str | None = None,
    aggregate_id: str | None = None,
) -> str:
    """A wildcard over key names: every key of ``org_id`` whose scope has each id given."""
    parts = [org_id, user_id or "*", agent_id or "*", session_id or "*"]
    if aggregate is None:
        return ".".join([*parts, ">"])
    return ".".join([*parts, aggregate, aggregate_id or "*"])
