"""The ingestion streams: where published commands wait, their outcomes, the parked ones.

- ``AGENTMEM_INGEST`` captures ``agentmem.in.<org>.<aggregate>.<verb>``: a work queue (a
  command is removed once a service process has acknowledged it, after its outcome is in
  the log), file storage, bounded (``discard: new``: a full stream refuses a JetStream
  publish, so the publisher knows), replicated like the log. JetStream adds a partition
  token to every stored subject (a hash of the organization), so that each partition is
  read by one process at a time, in stream order.
- ``AGENTMEM_INGEST_OUTCOMES``: one message per command id (``ingest.status`` reads the
  last one of its subject), kept for ``OUTCOME_AGE_S``.
- ``AGENTMEM_INGEST_PARKED``: commands that failed for a transient reason more than
  ``MAX_ATTEMPTS`` times, as published, for ``agentmem ingest retry|drop``.

The ingestion stream is separate from the event log, which holds only decided events.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from agentmem import jetstream, subjects
from agentmem.domain.ingest import H_INGEST_ID, INGEST_PREFIX, INGEST_SUBJECTS, names_forgotten
from agentmem.errors import UnavailableError
from agentmem.replies import IngestOutcome

STREAM = "AGENTMEM_INGEST"
# How long the stream drops a publish that repeats a Nats-Msg-Id: the least nats-server
# takes. The id is the publisher's own, but the stream's window is one for every tenant:
# a long one let anyone who guessed another tenant's next id (``chat-42-turn-7``) publish
# it first, and the victim's publish was acked as a duplicate and never run. A repeat past
# it is stored and executed again, and the command path answers it with the first outcome
# (its command key, scoped to the publisher, is in the log: ``CommandRunner``).
DUPLICATE_WINDOW_NS = 100_000_000
OUTCOMES = "AGENTMEM_INGEST_OUTCOMES"
PARKED = "AGENTMEM_INGEST_PARKED"
OUTCOME_PREFIX = subjects.INGEST_OUTCOME_PREFIX
PARKED_PREFIX = f"{subjects.PREFIX}.parked"

# Fixed when the stream is created: the stored subjects carry the partition.
PARTITIONS = 8
# The defaults of the stream's bounds (settings: AGENTMEM_INGEST_MAX_MSGS, _MAX_BYTES).
MAX_MSGS = 1_000_000
MAX_BYTES = 1024**3
OUTCOME_AGE_S = 7 * 24 * 3600
PARKED_MAX_BYTES = 1024**3
# Outcomes stored in one atomic batch at most (nats-server takes up to 1,000).
MAX_OUTCOMES_AT_ONCE = 256

# Headers the service sets on a parked command.
H_PARKED_SUBJECT = "AgentMem-Ingest-Subject"
H_PARKED_ERROR = "AgentMem-Ingest-Error"
H_PARKED_OUTCOME = "AgentMem-Ingest-Outcome"  # where its outcome is recorded


def ingest_config(
    replicas: int = 1, max_msgs: int = MAX_MSGS, max_bytes: int = MAX_BYTES
) -> dict[str, Any]:
    return {
        "name": STREAM,
        "subjects": [INGEST_SUBJECTS],
        "retention": "workqueue",
        "storage": "file",
        "discard": "new",
        "max_msgs": max_msgs,
        "max_bytes": max_bytes,
        "max_age": 0,
        "max_msgs_per_subject": -1,
        "num_replicas": replicas,
        "duplicate_window": DUPLICATE_WINDOW_NS,
        "allow_direct": True,
        "subject_transform": {
            "src": INGEST_SUBJECTS,
            "dest": f"{INGEST_PREFIX}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}."
            f"{{{{wildcard(3)}}}}.{{{{partition({PARTITIONS},1)}}}}",
        },
    }


def outcomes_config(replicas: int = 1) -> dict[str, Any]:
    return {
        "name": OUTCOMES,
        "subjects": [f"{OUTCOME_PREFIX}.>"],
        "retention": "limits",
        "storage": "file",
        "discard": "old",
        "max_msgs_per_subject": 1,
        "max_age": OUTCOME_AGE_S * 1_000_000_000,
        "num_replicas": replicas,
        "allow_direct": True,
        # Outcomes are recorded many at once (``OutcomeRecorder``).
        "allow_atomic": True,
    }


def parked_config(replicas: int = 1, max_bytes: int = PARKED_MAX_BYTES) -> dict[str, Any]:
    return {
        "name": PARKED,
        "subjects": [f"{PARKED_PREFIX}.>"],
        "retention": "limits",
        "storage": "file",
        "discard": "new",
        "max_bytes": max_bytes,
        "num_replicas": replicas,
        "allow_direct": True,
    }


# What must match on an existing stream for this code to be right; the bounds may be tuned.
_CHECKED = ("subjects", "retention", "storage", "subject_transform")


async def ensure(nc: NATS, config: dict[str, Any]) -> dict[str, Any]:
    return await jetstream.ensure_stream(nc, config, _CHECKED)


async def ensure_all(
    nc: NATS, replicas: int = 1, max_msgs: int = MAX_MSGS, max_bytes: int = MAX_BYTES
) -> None:
    ingest = await ensure(nc, ingest_config(replicas, max_msgs, max_bytes))
    # A stream made by an earlier build kept repeats for 10 minutes (DUPLICATE_WINDOW_NS).
    await jetstream.update_settings(nc, ingest["config"], {"duplicate_window": DUPLICATE_WINDOW_NS})
    outcomes = await ensure(nc, outcomes_config(replicas))
    await jetstream.allow_atomic(nc, outcomes["config"])
    # Bounded as the ingestion stream is: JetStream reserves both on the disk at creation.
    await ensure(nc, parked_config(replicas, max_bytes))


def consumer_name(partition: int) -> str:
    return f"agentmem-ingest-{partition}"


def partition_filter(partition: int) -> str:
    return f"{INGEST_PREFIX}.*.*.*.{partition}"


def partition_of(org_id: str) -> int:
    """The partition JetStream stores an organization's publishes in: nats-server's
    ``partition()`` transform is FNV-1a (32 bits) of the token, modulo the partitions."""
    digest = 0x811C9DC5
    for byte in org_id.encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return digest % PARTITIONS


# Outcomes --------------------------------------------------------------------------------
def outcome_subject(org_id: str, user: str, command_id: str) -> str:
    """Whose command it was is part of its key: a command id is unique only within the
    space of whoever sent it (``CommandRunner``'s rule), and a caller reads only its own."""
    return f"{OUTCOME_PREFIX}.{org_id}.{user}.{command_id}"


# The user token of a command refused before it had a caller: with ``_``, which no user id
# holds (tokens.parse splits on it), so no user's own outcomes ever share its subjects.
ANONYMOUS = "_anonymous"

_outcome_encoder = msgspec.json.Encoder()
_outcome_decoder = msgspec.json.Decoder(IngestOutcome)


def encode_outcome(outcome: IngestOutcome) -> bytes:
    return _outcome_encoder.encode(outcome)


class OutcomeRecorder:
    """Outcomes stored many at once, as a database commits a group: those waiting when a
    write starts go in it, one atomic batch (``jetstream.publish_atomic``), and those that
    come while it is under way go together in the next. Each write is durable (fsynced):
    one per command was a third per published command (its publish, its event, its
    outcome), where the disk's fsyncs are what ingestion runs short of. ``record`` returns
    once its outcome is stored, so that the command's message is acked only then."""

    def __init__(self, nc: NATS, timeout: float = 10.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self._waiting: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._writing: asyncio.Task[None] | None = None

    async def record(self, subject: str, outcome: bytes) -> None:
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((subject, outcome, stored))
        if self._writing is None:
            self._writing = asyncio.ensure_future(self._write())
        await stored

    async def _write(self) -> None:
        try:
            while self._waiting:
                group = self._waiting[:MAX_OUTCOMES_AT_ONCE]
                del self._waiting[:MAX_OUTCOMES_AT_ONCE]
                try:
                    await self._store([(subject, outcome) for subject, outcome, _ in group])
                except BaseException as exc:  # every command of the group fails: redelivered
                    failed = exc if isinstance(exc, Exception) else UnavailableError("stopping")
                    for *_, stored in group:
                        if not stored.done():
                            stored.set_exception(failed)
                    if not isinstance(exc, Exception):
                        raise  # cancelled: the process is stopping
                else:
                    for *_, stored in group:
                        if not stored.done():
                            stored.set_result(None)
        finally:
            self._writing = None

    async def _store(self, group: list[tuple[str, bytes]]) -> None:
        messages: list[tuple[str, bytes, dict[str, str]]] = [(s, o, {}) for s, o in group]
        try:
            reply = await jetstream.publish_atomic(self.nc, messages, self.timeout)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            raise UnavailableError(f"the outcomes stream did not answer: {exc!r}") from exc
        if b'"error"' in reply:
            raise UnavailableError(f"outcomes not recorded: {reply[:200]!r}")


async def read_outcome(nc: NATS, subject: str) -> IngestOutcome | None:
    """The last outcome recorded on ``subject`` (direct get), or None."""
    found = await jetstream.direct_get(nc, OUTCOMES, {"last_by_subj": subject})
    return None if found is None else _outcome_decoder.decode(found[1])


# Status ----------------------------------------------------------------------------------
async def report(nc: NATS) -> dict[str, Any] | None:
    """The backlog and the parked count; None when there is no ingestion stream."""
    info = await jetstream.api(nc, f"STREAM.INFO.{STREAM}")
    if info.get("error"):
        return None
    parked = await jetstream.api(nc, f"STREAM.INFO.{PARKED}")
    return {
        "backlog": int(info["state"]["messages"]),
        "bytes": int(info["state"]["bytes"]),
        "parked": 0 if parked.get("error") else int(parked["state"]["messages"]),
        "max_msgs": int(info["config"].get("max_msgs", -1)),
        "max_bytes": int(info["config"].get("max_bytes", -1)),
    }


# Parked commands -------------------------------------------------------------------------
@dataclass(frozen=True)
class Parked:
    seq: int  # in the parked stream
    subject: str  # as published
    headers: dict[str, str]
    data: bytes
    command_id: str
    error: dict[str, Any]
    outcome_subject: str
    time: str = ""


async def parked_in(nc: NATS, tree: str = f"{PARKED_PREFIX}.>") -> AsyncIterator[Parked]:
    """The parked commands on ``tree`` (every one, or an organization's), oldest first."""
    seq = 1
    while True:
        # The first at or after seq: a retried or dropped one leaves a gap.
        message = await jetstream.direct_get(nc, PARKED, {"seq": seq, "next_by_subj": tree})
        if message is None:
            return
        headers, data = message
        parked = _parked(int(headers["Nats-Sequence"]), headers, data)
        yield parked
        seq = parked.seq + 1


async def list_parked(nc: NATS, limit: int = 1000) -> list[Parked]:
    """Up to ``limit`` parked commands, oldest first."""
    found: list[Parked] = []
    async for parked in parked_in(nc):
        if len(found) >= limit:
            break
        found.append(parked)
    return found


def _parked(seq: int, headers: dict[str, str], data: bytes) -> Parked:
    own = {k: v for k, v in headers.items() if not k.startswith("Nats-") or k == "Nats-Msg-Id"}
    try:
        error = json.loads(headers.get(H_PARKED_ERROR, "{}"))
    except ValueError:
        error = {}
    return Parked(
        seq,
        headers.get(H_PARKED_SUBJECT, ""),
        own,
        data,
        headers.get(H_INGEST_ID, ""),
        error,
        headers.get(H_PARKED_OUTCOME, ""),
        headers.get("Nats-Time-Stamp", ""),
    )


async def delete_parked(nc: NATS, seq: int) -> bool:
    answer = await jetstream.api(nc, f"STREAM.MSG.DELETE.{PARKED}", {"seq": seq})
    return bool(answer.get("success"))


async def retry_parked(nc: NATS, parked: Parked) -> int:
    """Put a parked command back on its subject, under the command id it first ran under
    (without its Nats-Msg-Id, which the stream would drop as a duplicate), then remove it
    from the parked stream. Returns its new sequence in the ingestion stream."""
    headers = {
        k: v
        for k, v in parked.headers.items()
        if k not in ("Nats-Msg-Id", H_PARKED_SUBJECT, H_PARKED_ERROR, H_PARKED_OUTCOME)
    }
    headers[H_INGEST_ID] = parked.command_id
    reply = await nc.request(parked.subject, parked.data, timeout=5.0, headers=headers)
    ack = json.loads(reply.data)
    if "error" in ack:
        raise UnavailableError(f"could not put it back: {ack['error'].get('description')}")
    await delete_parked(nc, parked.seq)
    return int(ack["seq"])


async def drop_parked(nc: NATS, parked: Parked, error: dict[str, Any] | None = None) -> None:
    """Record the command as dropped (``ingest.status``, with ``error``, else the one it was
    parked with), then remove it."""
    outcome = IngestOutcome(
        command_id=parked.command_id,
        status="dropped",
        error=error or parked.error or None,
        at=time.time_ns() // 1_000_000,
    )
    if parked.outcome_subject:
        await nc.request(parked.outcome_subject, encode_outcome(outcome), timeout=5.0)
    await delete_parked(nc, parked.seq)


async def forget_parked(nc: NATS, org_id: str, target: str, ids: dict[str, str]) -> int:
    """Drop the organization's parked commands that hold data of a forgotten target
    (``domain.ingest.names_forgotten``): each recorded as dropped, then deleted from the
    parked stream, which overwrites it on disk. How many were dropped."""
    dropped = 0
    error = {
        "code": "not_found",
        "message": f"dropped while parked: the {target.replace('_', ' ')} it names was forgotten",
        "details": ids,
    }
    async for parked in parked_in(nc, f"{PARKED_PREFIX}.{org_id}.>"):
        found = subjects.parse_ingest(parked.subject)
        ran_as = subjects.outcome_user(parked.outcome_subject)
        if found is not None and names_forgotten(target, ids, found.operation, parked.data, ran_as):
            await drop_parked(nc, parked, error)
            dropped += 1
    return dropped
