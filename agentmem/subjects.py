"""Every NATS subject AgentMem uses, in one place.

Commands and queries live under ``agentmem.cmd`` and ``agentmem.q``; events under
``agentmem.evt``. The two trees never overlap, because a request on a subject that the event
stream captures would be answered by the stream's PubAck instead of by a handler.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

PREFIX = "agentmem"
COMMAND_PREFIX = f"{PREFIX}.cmd"
QUERY_PREFIX = f"{PREFIX}.q"
SYSTEM_PREFIX = f"{PREFIX}.sys"
EVENT_PREFIX = f"{PREFIX}.evt"

STREAM_NAME = "AGENTMEM_EVENTS"
STREAM_SUBJECTS = [f"{EVENT_PREFIX}.>"]

# Data that belongs to no organization (email reservations) lives under this org token.
# It starts with an underscore, which no generated id does.
GLOBAL_ORG = "_global"

QUEUE_GROUP = "agentmem"

# Commands published to be executed later (issue 18): exactly an organization, an aggregate
# and a verb after the prefix. The ingestion stream stores them with a partition token
# appended (agentmem/ingestion.py).
INGEST_PREFIX = f"{PREFIX}.in"
INGEST_SUBJECTS = f"{INGEST_PREFIX}.*.*.*"
# Where a published command's outcome is recorded: <it>.<org>.<user>.<command id>.
INGEST_OUTCOME_PREFIX = f"{PREFIX}.outcome"
# Where the outcome of a published command may be sent (its ``AgentMem-Outcome-To``):
# ``agentmem.out.<org_id>.<user_id>.<anything>``, the tree of the user it ran as. On a closed
# deployment the service's account exports this tree as a stream and a connection may
# subscribe to its own user's subtree only, so nobody receives another user's outcomes.
OUTCOME_TO_PREFIX = f"{PREFIX}.out"

# Where a query that waits for a projection run by another process tells its worker to
# apply what it holds now (``PullFeed.hurry``): between the service's own processes.
HURRY_PREFIX = f"{PREFIX}.hurry"


def hurry(projection: str) -> str:
    return f"{HURRY_PREFIX}.{projection}"


def outcome_tree(org_id: str, user_id: str) -> str:
    """The subtree a user's outcomes may be sent to (subscribe to ``<it>.>``)."""
    return f"{OUTCOME_TO_PREFIX}.{org_id}.{user_id}"


def command(aggregate: str, verb: str) -> str:
    return f"{COMMAND_PREFIX}.{aggregate}.{verb}"


def query(aggregate: str, verb: str) -> str:
    return f"{QUERY_PREFIX}.{aggregate}.{verb}"


def system(verb: str) -> str:
    return f"{SYSTEM_PREFIX}.{verb}"


def event(org_id: str, aggregate: str, aggregate_id: str) -> str:
    """The one subject that holds an aggregate's whole history."""
    return f"{EVENT_PREFIX}.{org_id}.{aggregate}.{aggregate_id}"


class EventRef(NamedTuple):
    """What an event subject names: ``agentmem.evt.<org_id>.<aggregate>.<aggregate_id>``."""

    org_id: str
    aggregate: str
    aggregate_id: str


def parse(subject: str) -> EventRef:
    """The one place an event subject is taken apart; anything else is a ValueError."""
    prefix, _, rest = subject.rpartition(".")  # aggregate_id
    head, _, aggregate = prefix.rpartition(".")
    root, _, org_id = head.rpartition(".")
    if root != EVENT_PREFIX or not (org_id and aggregate and rest):
        raise ValueError(f"not an event subject: {subject!r}")
    return EventRef(org_id, aggregate, rest)


def email_reservation(email: str) -> str:
    """The subject whose last event says who holds an email address.

    An email is not a valid NATS token (it has dots), so the subject carries its hash.
    """
    digest = hashlib.sha256(email.encode()).hexdigest()
    return event(GLOBAL_ORG, "email", digest)


def org_deletion(org_id: str) -> str:
    """Where an organization's deletion is written a second time, in the same atomic batch:
    the projections of an organization's content read this instead of every org event."""
    return event(org_id, "org_deletion", org_id)


def bootstrap() -> str:
    """Written once, with expected sequence 0, by the first start of a deployment."""
    return event(GLOBAL_ORG, "service", "bootstrap")


def tool_name_reservation(org_id: str, name: str) -> str:
    """The subject whose last event says which tool holds a name in an organization."""
    return event(org_id, "tool_name", hashlib.sha256(name.encode()).hexdigest())


def events_of(aggregate: str) -> str:
    """Filter matching every event subject of one aggregate type, in every org."""
    return f"{EVENT_PREFIX}.*.{aggregate}.*"


class IngestRef(NamedTuple):
    """What a published subject names: ``agentmem.in.<org_id>.<aggregate>.<verb>``."""

    org_id: str
    operation: str  # "message.append"


def parse_ingest(subject: str) -> IngestRef | None:
    """A published subject, as published or as stored (with its partition token); None
    for anything else."""
    parts = subject.split(".")
    if len(parts) not in (5, 6) or ".".join(parts[:2]) != INGEST_PREFIX:
        return None
    return IngestRef(parts[2], f"{parts[3]}.{parts[4]}")


def outcome_user(subject: str) -> str | None:
    """The user a recorded outcome's subject names (the one the command ran as, or
    ``anonymous``); None for anything else."""
    parts = subject.split(".")
    if len(parts) != 5 or ".".join(parts[:2]) != INGEST_OUTCOME_PREFIX:
        return None
    return parts[3]


def as_published(stored: str) -> str:
    """A stored ingestion subject without the partition token JetStream appended."""
    return stored.rsplit(".", 1)[0] if len(stored.split(".")) == 6 else stored
