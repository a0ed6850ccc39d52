"""``agentmem export``: an organization's (or one user's) events, decrypted, as NDJSON.

The file is what the log holds of them, readable: one JSON object a line, in log order::

    {"format": "agentmem.export", "version": 1, "org_id": ..., "user_id": ..., ...}   header
    {"seq": 12, "subject": ..., "time_ms": ..., "commit_type": ..., "command_id": ...,
     "principal": ..., "index": 0, "event": {"type": "memory.added", ...}}             events
    {"end": {"events": 120, "forgotten": 3, "unreadable": 0}}                          trailer

It reads the log straight from JetStream with the deployment's keys (an operator's tool,
as ``replay`` is), not through the service: personal fields are opened as the projections
open them. What a forget erased is never in it: an event whose key is gone (``Shredded``)
is left out and counted, and so is every event about a forgotten user, agent,
conversation or memory (its ids stay readable in the log: a first pass finds the forgets,
the second leaves their subjects out). Secrets are left out too: password hashes and API
key digests (``SECRET_FIELDS``) never leave the log. A message redacted later is written
as the service shows it, emptied, and a memory the expiry sweep emptied is left out and
counted (first passes over the headers of the organization's conversations and memories
find them).

One user's export holds the events about them: their own subject, every event that names
them (``user_id``), and the later events of a memory or block made for them; a
conversation's messages are theirs one by one (another user's message in the same session
is not). The trailer says the export ended: a file without it was cut short.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import IO, Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentmem import subjects
from agentmem.commands import RedactMessage
from agentmem.consumers import expiry
from agentmem.eventlog import H_COMMAND_ID, H_COMMIT_TYPE, H_PRINCIPAL, H_TIME
from agentmem.events import AnyEvent, DataForgotten, MessageRedacted, Shredded
from agentmem.keys import KeyRing
from agentmem.protocol import operation_of
from agentmem.sealing import open_events

FORMAT = "agentmem.export"
VERSION = 1
BATCH = 1_000
FETCH_TIMEOUT_S = 5.0
API_TIMEOUT_S = 30.0  # an export is an operator's batch job: a slow server is waited for
# What an export never holds, whatever the event: the stored forms of passwords and keys.
SECRET_FIELDS = frozenset({"password_hash", "digest", "token_hash", "secret"})
# A message redacted later is exported as the service shows it: said, and emptied.
REDACT_COMMIT = operation_of(RedactMessage).name
REDACTED: dict[str, Any] = {"content": "", "tool_calls": [], "metadata": {}}
# The ids a forget names, as the events name them.
FORGET_IDS = ("user_id", "agent_id", "session_id", "memory_id")

_json = msgspec.json.Encoder()


class Header(msgspec.Struct, frozen=True, omit_defaults=True):
    format: str
    version: int
    org_id: str
    exported_at: str
    log_last_seq: int
    user_id: str | None = None


class Line(msgspec.Struct, frozen=True):
    """One event of the export, with its commit's metadata."""

    seq: int
    subject: str
    time_ms: int
    commit_type: str
    command_id: str
    principal: str
    index: int  # its place in its commit
    event: dict[str, Any]


@dataclass
class Counts:
    events: int = 0
    forgotten: int = 0  # left out: shredded, or about a forgotten subject
    expired: int = 0  # left out: events of a memory the expiry sweep emptied
    unreadable: int = 0  # left out: a commit this version cannot read


@dataclass
class _Forgotten:
    """What the organization's forgets named, by kind of id."""

    ids: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in FORGET_IDS})

    def add(self, event: DataForgotten) -> None:
        for kind in FORGET_IDS:
            value = getattr(event, kind, None)
            if value is not None:
                self.ids[kind].add(value)

    def names(self, body: dict[str, Any], subject: str) -> bool:
        """Does the event (or its subject's aggregate) belong to something forgotten?"""
        ref = subjects.parse(subject)
        own = {"user": "user_id", "agent": "agent_id", "memory": "memory_id"}.get(ref.aggregate)
        if own is not None and ref.aggregate_id in self.ids[own]:
            return True
        if (
            ref.aggregate in ("conversation", "working")
            and ref.aggregate_id in self.ids["session_id"]
        ):
            return True
        return any(body.get(kind) in self.ids[kind] for kind in FORGET_IDS if body.get(kind))


@dataclass
class _UserFilter:
    """Which events are about one user (see the module's docstring)."""

    user_id: str
    subjects: set[str] = field(default_factory=set)  # aggregates made for them
    messages: set[str] = field(default_factory=set)

    def wants(self, subject: str, body: dict[str, Any]) -> bool:
        ref = subjects.parse(subject)
        if ref.aggregate == "user" and ref.aggregate_id == self.user_id:
            return True
        if body.get("user_id") == self.user_id:
            if ref.aggregate in ("memory", "block"):
                self.subjects.add(subject)
            if body.get("message_id"):
                self.messages.add(str(body["message_id"]))
            return True
        if ref.aggregate == "conversation":
            return body.get("message_id") in self.messages
        return subject in self.subjects


async def _messages(
    nc: NATS, pattern: str, last_seq: int, headers_only: bool = False
) -> AsyncIterator[Msg]:
    """Every message of the event stream on ``pattern`` up to ``last_seq``, in log order
    (``headers_only``: their headers, without the events)."""
    js = nc.jetstream(timeout=API_TIMEOUT_S)
    subscription = await js.pull_subscribe(
        pattern,
        stream=subjects.STREAM_NAME,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=60.0,
            headers_only=headers_only,
        ),
    )
    try:
        # Nothing to read (often: an organization without forgets): a fetch would wait
        # its whole timeout for the first message.
        if (await subscription.consumer_info()).num_pending == 0:
            return
        while True:
            try:
                batch = await subscription.fetch(BATCH, timeout=FETCH_TIMEOUT_S)
            except nats.errors.TimeoutError:
                return
            for message in batch:
                if message.metadata.sequence.stream > last_seq:
                    return
                yield message
            if not batch or batch[-1].metadata.num_pending == 0:
                return
    finally:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()


async def _redacted_messages(nc: NATS, keys: KeyRing, org_id: str, last_seq: int) -> set[str]:
    """The ids of the organization's redacted messages: found by the commit type in the
    headers of its conversations' commits, then read from the redactions' own commits."""
    found: set[str] = set()
    conversations = f"{subjects.EVENT_PREFIX}.{org_id}.conversation.*"
    js = nc.jetstream(timeout=API_TIMEOUT_S)
    async for head in _messages(nc, conversations, last_seq, headers_only=True):
        if (head.headers or {}).get(H_COMMIT_TYPE) != REDACT_COMMIT:
            continue
        commit = await js.get_msg(subjects.STREAM_NAME, head.metadata.sequence.stream)
        for event in await open_events(commit.data or b"", keys):
            if isinstance(event, MessageRedacted):
                found.add(event.message_id)
    return found


async def _expired_memories(nc: NATS, org_id: str, last_seq: int) -> set[str]:
    """The subjects of the organization's memories that the expiry sweep emptied: their
    content left every table and every answer (``memory.history`` too), and the export
    follows them (found by the sweep's commit type, in the headers alone)."""
    memories = f"{subjects.EVENT_PREFIX}.{org_id}.memory.*"
    return {
        head.subject
        async for head in _messages(nc, memories, last_seq, headers_only=True)
        if (head.headers or {}).get(H_COMMIT_TYPE) == expiry.COMMIT_TYPE
    }


def _public(body: dict[str, Any]) -> dict[str, Any]:
    body.pop("_sealed", None)
    for name in SECRET_FIELDS & body.keys():
        del body[name]
    return body


async def export(
    nc: NATS,
    keys: KeyRing,
    out: IO[bytes],
    org_id: str,
    user_id: str | None = None,
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
) -> Counts:
    """Write the export of ``org_id`` (or of ``user_id`` in it) to ``out``."""
    info = await nc.jetstream().stream_info(subjects.STREAM_NAME)
    last_seq = int(info.state.last_seq)
    header = Header(FORMAT, VERSION, org_id, now().isoformat(), last_seq, user_id)
    out.write(_json.encode(header) + b"\n")
    counts = Counts()
    if last_seq == 0:
        out.write(_json.encode({"end": counts.__dict__}) + b"\n")
        return counts
    org_events = f"{subjects.EVENT_PREFIX}.{org_id}.>"
    forgotten = _Forgotten()
    async for message in _messages(nc, f"{subjects.EVENT_PREFIX}.{org_id}.forget.*", last_seq):
        for event in await open_events(message.data, keys):
            if isinstance(event, DataForgotten):
                forgotten.add(event)
    redacted = await _redacted_messages(nc, keys, org_id, last_seq)
    expired = await _expired_memories(nc, org_id, last_seq)
    wanted = _UserFilter(user_id) if user_id is not None else None
    async for message in _messages(nc, org_events, last_seq):
        headers = message.headers or {}
        try:
            events: list[AnyEvent] = await open_events(message.data, keys)
        except (msgspec.DecodeError, ValueError):
            counts.unreadable += 1
            continue
        for index, event in enumerate(events):
            if isinstance(event, Shredded):
                counts.forgotten += 1
                continue
            body = _public(msgspec.to_builtins(event))
            if forgotten.names(body, message.subject):
                counts.forgotten += 1
                continue
            if message.subject in expired:
                counts.expired += 1
                continue
            if wanted is not None and not wanted.wants(message.subject, body):
                continue
            if body.get("type") == "message.appended" and body["message_id"] in redacted:
                body.update(REDACTED)  # its redaction follows, as in the log
            line = Line(
                seq=message.metadata.sequence.stream,
                subject=message.subject,
                time_ms=int(headers.get(H_TIME, "0")),
                commit_type=headers.get(H_COMMIT_TYPE, ""),
                command_id=headers.get(H_COMMAND_ID, ""),
                principal=headers.get(H_PRINCIPAL, ""),
                index=index,
                event=body,
            )
            out.write(_json.encode(line) + b"\n")
            counts.events += 1
    out.write(_json.encode({"end": counts.__dict__}) + b"\n")
    return counts
