"""Ingestion: what an agent may publish (instead of request), and the pure rules of its path.

An agent publishes a command's body on ``agentmem.in.<org_id>.<aggregate>.<verb>``; JetStream
keeps it in the stream ``AGENTMEM_INGEST`` until a service process has executed it through
the same command path as a request (``consumers/ingest.py``). What is here decides, from
the published message alone: which command it is, its command id, the order key it queues
behind, and what an outcome means (stored, refused for good, or worth another try).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from agentmem import subjects
from agentmem.commands import Id
from agentmem.protocol import query
from agentmem.queries import Query
from agentmem.replies import IngestOutcome

# Exactly three tokens after the prefix: a publish on any other shape is not captured (a
# JetStream publish gets "no responders"), rather than kept where no consumer reads it.
INGEST_PREFIX = subjects.INGEST_PREFIX
INGEST_SUBJECTS = subjects.INGEST_SUBJECTS

# The commands that may be published, by operation name: appends and adds, the writes an
# agent makes in the middle of a conversation. Anything that needs its answer (a create
# whose id the caller needs, a login) stays a request.
PUBLISHABLE = frozenset(
    {
        "message.append",
        "message.append_batch",
        "memory.add",
        "memory.add_batch",
        "working.put",
        "agent.patch_state",
        "agent.set_state",
    }
)

# Headers a publisher may set (docs/protocol.md, Ingestion).
H_MSG_ID = "Nats-Msg-Id"
# Where the service publishes the outcome as well, when the publisher names a subject.
H_OUTCOME_TO = "AgentMem-Outcome-To"
# Set by the service on a parked command put back by `agentmem ingest retry`: the command id
# it was first executed under (its Nats-Msg-Id would be dropped as a duplicate by the stream).
H_INGEST_ID = "AgentMem-Ingest-Id"

_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}\Z")

Status = Literal["pending", "stored", "refused", "parked", "dropped"]
# Error codes that no retry can change: the command is refused for good.
FINAL_ERRORS = frozenset({"invalid", "not_found", "conflict", "unauthenticated", "forbidden"})


class Target(msgspec.Struct, frozen=True):
    """A published subject taken apart: the organization and the command's subject."""

    org_id: str
    operation: str  # "message.append"

    @property
    def command_subject(self) -> str:
        aggregate, verb = self.operation.split(".", 1)
        return subjects.command(aggregate, verb)


def target(subject: str) -> Target | None:
    """``agentmem.in.<org>.<aggregate>.<verb>`` (as published, or as stored with its
    partition token after it); None for anything else."""
    found = subjects.parse_ingest(subject)
    return Target(found.org_id, found.operation) if found is not None else None


def command_id(headers: dict[str, str], body_id: str | None, stream_id: str) -> str:
    """The id a published command runs under: the id the body names (as a request's
    ``command_id``), else the service's own id of a command put back after parking, else
    the message's ``Nats-Msg-Id``, else its place in the stream (``stream_id``): the same on
    every redelivery, so that a command is stored once however often it is delivered."""
    for candidate in (body_id, headers.get(H_INGEST_ID), headers.get(H_MSG_ID)):
        if candidate:
            return candidate
    return stream_id


_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{1,64}\Z")
MAX_OUTCOME_TO = 255


def outcome_to_refusal(outcome_to: str, org_id: str | None, user_id: str | None) -> str | None:
    """Why the outcome may not be published on ``outcome_to`` (None: it may): only under
    ``agentmem.out.<org_id>.<user_id>.`` of the user the command ran as, concrete tokens
    only. Anything else would let a publisher make the service send on a subject of its
    choosing (a request subject, another user's tree)."""
    if org_id is None or user_id is None:
        return "the command ran as nobody (refused before its caller was known)"
    tree = subjects.outcome_tree(org_id, user_id)
    rest = outcome_to.removeprefix(tree + ".")
    if (
        len(outcome_to) > MAX_OUTCOME_TO
        or rest == outcome_to
        or not all(_SUBJECT_TOKEN.match(token) for token in rest.split("."))
    ):
        return (
            f"AgentMem-Outcome-To must be {tree}.<one or more tokens of letters, digits, "
            f"'_' or '-'> (the tree of the user the command ran as), at most "
            f"{MAX_OUTCOME_TO} characters"
        )
    return None


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


# What a forget reaches among the commands it finds parked: the aggregates of the
# operations that may hold the target's data.
FORGET_REACHES: dict[str, frozenset[str]] = {
    "user": frozenset({"message", "memory", "working", "agent"}),
    "agent": frozenset({"message", "memory", "working", "agent"}),
    "conversation": frozenset({"message", "memory", "working"}),
    "memory": frozenset({"memory"}),
    "memory_scope": frozenset({"memory"}),
}


def names_forgotten(
    target: str, ids: dict[str, str], operation: str, data: bytes, ran_as: str | None
) -> bool:
    """Whether a parked command holds data of a forgotten target: one of the operations the
    target reaches, whose body names every id of the target (as a string anywhere in it: a
    batch's items too), or, for a user, that ran as that user."""
    if operation.split(".", 1)[0] not in FORGET_REACHES.get(target, frozenset()):
        return False
    if target == "user" and ran_as is not None and ran_as == ids.get("user_id"):
        return True
    wanted = {v for v in ids.values() if v}
    return bool(wanted) and wanted <= _strings_in(data)


def _strings_in(data: bytes) -> set[str]:
    try:
        document = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return set()
    found: set[str] = set()
    waiting = [document]
    while waiting:
        value = waiting.pop()
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, dict):
            waiting.extend(value.values())
        elif isinstance(value, list):
            waiting.extend(value)
    return found


class Keys(msgspec.Struct, frozen=True):
    """The fields of a published body that name the aggregate it writes to; every other
    field is skipped unread."""

    command_id: Any = None
    session_id: Any = None
    agent_id: Any = None
    user_id: Any = None


_keys_decoder = msgspec.json.Decoder(Keys)


def read_keys(data: bytes) -> Keys | None:
    """The ordering keys of a published body; None for one that does not decode, which the
    command path refuses with its reason. RecursionError too: a body nested thousands deep
    raised it here, outside any handler, and stalled every command pulled with it."""
    try:
        return _keys_decoder.decode(data or b"{}")
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None


def order_key(org_id: str, operation: str, keys: Keys | None) -> tuple[str, ...]:
    """What a command queues behind: publishes with one key run one at a time, in stream
    order; other keys run beside them. A conversation's appends share its session; working
    memory its session; an agent's state its agent; memories their scope. A body that does
    not decode gets no key of its own worth waiting for (it is refused at once)."""
    aggregate = operation.split(".", 1)[0]
    if keys is None:
        return (org_id, aggregate, "?")
    scope = (keys.session_id, keys.agent_id, keys.user_id)
    if aggregate in ("message", "working"):
        scope = (keys.session_id, None, None)
    elif aggregate == "agent":
        scope = (None, keys.agent_id, None)
    return (org_id, aggregate, *(str(s) if isinstance(s, str) else "" for s in scope))


def classify(reply: dict[str, Any]) -> Literal["stored", "refused", "retry"]:
    """What a command path's envelope means for a published command."""
    if reply.get("ok"):
        return "stored"
    code = (reply.get("error") or {}).get("code")
    return "refused" if code in FINAL_ERRORS else "retry"


def backoff_s(attempt: int, base: float = 0.05, cap: float = 2.0) -> float:
    """The pause before retry ``attempt`` (1, 2, ...) of a transient failure."""
    return float(min(cap, base * 2 ** (attempt - 1)))


@query("ingest.status", need="self", reply=IngestOutcome)
class IngestStatus(Query, frozen=True, kw_only=True):
    """The outcome of a published command, by its command id: ``pending`` (no outcome
    recorded yet: still in the stream, or never received), ``stored`` with the sequence of
    its commit, ``refused`` with the error, ``parked`` after transient failures (an
    operator retries or drops it), ``dropped`` by an operator."""

    command_id: Id
    # Another user's command (an org admin of the organization, or a service administrator):
    # the need ``self``, as for a user's own keys and sessions.
    user_id: Id | None = None
    # Another organization's command (a service administrator only).
    org_id: Id | None = None
