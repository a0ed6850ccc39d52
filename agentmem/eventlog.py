"""The event log: one JetStream stream, the only source of truth.

Appends use optimistic concurrency on the aggregate's subject
(``Nats-Expected-Last-Subject-Sequence``) and a ``Nats-Msg-Id`` from the command id. A command
that writes to one subject is one JetStream message; one that writes to several (a user and
the reservation of its email) is one atomic batch: all stored, or none.

Everything here speaks the JetStream wire API through plain NATS requests, parsed with
msgspec: fewer layers on the hot path, and full control of the stream config we check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS

from agentmem import jetstream, subjects
from agentmem.domain.aggregate import Write
from agentmem.errors import UnavailableError
from agentmem.events import COMMIT_SCHEMA, AnyEvent
from agentmem.headmarks import HeadMarks
from agentmem.keys import KeyRing
from agentmem.sealing import new_keys, read_events, seal, sealed_key_names

log = structlog.get_logger(__name__)

# Headers every commit carries ---------------------------------------------------------
H_COMMIT_TYPE = "AgentMem-Commit-Type"
H_SCHEMA = "AgentMem-Schema"
H_COMMAND_ID = "AgentMem-Command-Id"
H_CORRELATION_ID = "AgentMem-Correlation-Id"
H_CAUSATION_ID = "AgentMem-Causation-Id"
H_PRINCIPAL = "AgentMem-Principal"
H_TIME = "AgentMem-Time"  # milliseconds since the Unix epoch, as decided

WRONG_LAST_SEQUENCE = 10071
BATCH_DUPLICATE_MSG_ID = 10201

# Stay under the server's limit from this process; a rare refusal (other processes) is retried.
MAX_BATCHES_IN_FLIGHT = 32
BATCH_RETRIES = 20

DUPLICATE_WINDOW_S = 600  # a retried command within 10 minutes is stored once
# How far around one of its sequences ``read_command`` looks for a command's other commits.
MAX_WRITES_PER_COMMAND = 8
# The most subjects one command may write: nats-server's limit of one atomic batch (a
# batch of 1,001 is refused with err_code 10199). Only memory.add_batch comes near it.
MAX_BATCH_WRITES = 1000
# ``read_command`` reads at most this many sequences at once.
READ_WINDOW_MAX = 128
# How many of an atomic batch's commits are sealed at once (each may store a new data key;
# the key ring bounds the keys stored at once across batches).
SEALS_IN_FLIGHT = 16


class StaleVersion(Exception):
    """A subject moved on since the state the decision was made from (err_code 10071)."""


Current = Callable[[], bool]


def _always() -> bool:
    return True


def _check_current(still_current: Current) -> None:
    if not still_current():
        raise StaleVersion("a forget came between the decision and its append")


class DuplicateCommand(Exception):
    """An atomic batch carried a message id the stream has already stored."""


class TooManyBatches(Exception):
    """The server had too many atomic batches in flight on the stream; nothing was stored."""


@dataclass(frozen=True)
class CommitMeta:
    command_id: str
    commit_type: str
    principal: str = "anonymous"
    correlation_id: str | None = None
    causation_id: str | None = None
    time_ms: int = 0

    def headers(self) -> dict[str, str]:
        headers = {
            H_COMMIT_TYPE: self.commit_type,
            H_SCHEMA: str(COMMIT_SCHEMA),
            H_COMMAND_ID: self.command_id,
            H_PRINCIPAL: self.principal,
            H_TIME: str(self.time_ms or time.time_ns() // 1_000_000),
            H_CORRELATION_ID: self.correlation_id or self.command_id,
        }
        if self.causation_id:
            headers[H_CAUSATION_ID] = self.causation_id
        return headers


@dataclass(frozen=True)
class CommitHead:
    """Where a commit is, and its headers: what can be read without opening its events."""

    seq: int
    subject: str
    headers: dict[str, str]

    @property
    def command_id(self) -> str:
        return self.headers.get(H_COMMAND_ID, "")

    @property
    def commit_type(self) -> str:
        return self.headers.get(H_COMMIT_TYPE, "")

    @property
    def time_ms(self) -> int:
        return int(self.headers.get(H_TIME, "0"))


@dataclass(frozen=True)
class StoredCommit(CommitHead):
    events: list[AnyEvent]
    # Why some or all of this commit's events were left out: it was no commit, or held an
    # event type this version does not know. ``None``: every event was read.
    skipped: str | None = None


async def stored_commit(
    seq: int, subject: str, headers: dict[str, str], data: bytes, keys: KeyRing | None
) -> StoredCommit:
    """A commit as the command and authentication paths read it: tolerantly, its personal
    fields opened with ``keys`` (``agentmem.sealing``). What this version cannot read is
    left out and logged (as the projections park it); the commit still counts, so the
    aggregate's version stays the subject's last sequence and state is decided from the
    events that were understood."""
    events, skipped = await read_events(data, keys)
    if skipped is not None:
        log.warning(
            "skipped a commit this version cannot read", subject=subject, seq=seq, reason=skipped
        )
    return StoredCommit(seq, subject, headers, events, skipped)


@dataclass(frozen=True)
class Appended:
    """Where each write landed. ``duplicate`` means the log already held this command."""

    seqs: list[int]
    duplicate: bool = False

    @property
    def last_seq(self) -> int:
        return self.seqs[-1]


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    count: int = 0
    error: dict[str, Any] | None = None


_ack_decoder = msgspec.json.Decoder(_PubAck)
_json = msgspec.json.Encoder()


def _expect(write: Write) -> dict[str, str]:
    """The optimistic-concurrency header of a write, if it has one."""
    if write.expected is None:
        return {}
    return {"Nats-Expected-Last-Subject-Sequence": str(write.expected)}


def stream_config(name: str = subjects.STREAM_NAME, replicas: int = 1) -> dict[str, Any]:
    """The config the log must have. Limits retention with no limits: kept forever."""
    return {
        "name": name,
        "subjects": subjects.STREAM_SUBJECTS,
        "retention": "limits",
        "storage": "file",
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msgs_per_subject": -1,
        "discard": "old",
        "num_replicas": replicas,
        "duplicate_window": DUPLICATE_WINDOW_S * 1_000_000_000,
        "allow_direct": True,
        "allow_atomic": True,
        "deny_delete": True,
        "deny_purge": True,
    }


# Settings that must match exactly for AgentMem to be correct on an existing stream.
_CHECKED = (
    "subjects",
    "retention",
    "storage",
    "max_msgs",
    "max_bytes",
    "max_age",
    "allow_direct",
    "allow_atomic",
)


class EventLog:
    def __init__(
        self,
        nc: NATS,
        stream: str = subjects.STREAM_NAME,
        timeout: float = 5.0,
        keys: KeyRing | None = None,
    ) -> None:
        self.nc = nc
        # Seals personal fields on append and opens them on read; without it (a test's log,
        # a tool that reads no personal data) appends are plaintext and sealed events unread.
        self.keys = keys
        self.stream = stream
        self.timeout = timeout
        self._direct_get = f"$JS.API.DIRECT.GET.{stream}"
        self._batch_slots = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT)
        self.skipped = 0  # commits read with events left out (see ``StoredCommit.skipped``)
        self.marks = HeadMarks()  # what this process's own appends say of the log's growth

    # Stream management ------------------------------------------------------------------
    async def _api(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await jetstream.api(self.nc, subject, body, self.timeout)

    async def info(self) -> dict[str, Any]:
        reply = await self._api(f"STREAM.INFO.{self.stream}")
        if "error" in reply:
            raise UnavailableError(f"stream {self.stream}: {reply['error'].get('description')}")
        return reply

    async def last_seq(self) -> int:
        state: dict[str, Any] = (await self.info())["state"]
        return int(state["last_seq"])

    async def ensure_stream(self, replicas: int = 1) -> dict[str, Any]:
        """Create the stream when missing; when present, check it and never rewrite it."""

        def also(actual: dict[str, Any]) -> dict[str, Any]:
            wrong: dict[str, Any] = {}
            if actual.get("duplicate_window", 0) < 60 * 1_000_000_000:
                wrong["duplicate_window"] = {
                    "expected": ">= 60s",
                    "actual": actual.get("duplicate_window"),
                }
            # Asking for another replica count than the stream has is a deployment mistake
            # (a service pointed at the wrong cluster, or a flag left out): say so, change
            # nothing. JetStream can change it in place, by hand:
            # `nats stream edit <stream> --replicas N`.
            if actual.get("num_replicas", 1) != replicas:
                wrong["num_replicas"] = {
                    "expected": replicas,
                    "actual": actual.get("num_replicas", 1),
                }
            return wrong

        return await jetstream.ensure_stream(
            self.nc, stream_config(self.stream, replicas), _CHECKED, also, self.timeout
        )

    # Appending --------------------------------------------------------------------------
    async def append(
        self, writes: list[Write], meta: CommitMeta, still_current: Current = _always
    ) -> Appended:
        """Append ``writes`` as one commit. ``still_current`` is asked once they are sealed,
        just before they are sent: False (a forget since the decision, whose keys the
        sealing may have made again) raises ``StaleVersion``, so the command decides again."""
        if not writes:
            raise ValueError("nothing to append")
        if len(writes) > MAX_BATCH_WRITES:
            raise ValueError(f"a command may write at most {MAX_BATCH_WRITES} subjects")
        headers = meta.headers()
        try:
            if len(writes) == 1:
                return await self._publish_one(writes[0], headers, meta.command_id, still_current)
            for attempt in range(BATCH_RETRIES):
                try:
                    async with self._batch_slots:
                        return await self._publish_batch(
                            writes, headers, meta.command_id, still_current
                        )
                except TooManyBatches:
                    await asyncio.sleep(0.002 * (attempt + 1))
            raise UnavailableError("the event log is too busy with atomic writes; retry")
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            raise UnavailableError(f"the event log did not acknowledge the write: {exc!r}") from exc

    async def _publish_one(
        self, write: Write, headers: dict[str, str], command_id: str, still_current: Current
    ) -> Appended:
        headers = {**headers, "Nats-Msg-Id": command_id, **_expect(write)}
        payload = await seal(write.subject, write.events, self.keys, fresh=write.expected == 0)
        _check_current(still_current)
        sent_at = self.marks.sent()
        reply = await self.nc.request(write.subject, payload, timeout=self.timeout, headers=headers)
        ack = self._check_ack(reply.data)
        if not ack.duplicate:  # a duplicate's sequence is an earlier commit's
            self.marks.stored(ack.seq, sent_at)
        return Appended(seqs=[ack.seq], duplicate=ack.duplicate)

    async def _publish_batch(
        self, writes: list[Write], headers: dict[str, str], command_id: str, still_current: Current
    ) -> Appended:
        # One atomic batch (``jetstream.publish_atomic``): every write stored, or none.
        count = len(writes)
        # Sealed first: a key made for this batch is stored before any of its messages. A
        # batch of new memories needs a key each: stored together (``new_keys``).
        made = await new_keys(self.keys, [(w.subject, w.events) for w in writes if w.expected == 0])
        slots = asyncio.Semaphore(SEALS_IN_FLIGHT)

        async def sealed(write: Write) -> bytes:
            async with slots:
                fresh = write.expected == 0
                return await seal(write.subject, write.events, self.keys, fresh, False, made)

        payloads = await asyncio.gather(*(sealed(w) for w in writes))
        _check_current(still_current)
        # The first message's id is the command key, as a single commit's: a command id
        # used before (for another operation too) is then a duplicate within the window,
        # whichever of the two wrote a batch.
        messages = [
            (
                write.subject,
                payload,
                {
                    **headers,
                    "Nats-Msg-Id": command_id if index == 1 else f"{command_id}:{index}",
                    **_expect(write),
                },
            )
            for index, (write, payload) in enumerate(zip(writes, payloads, strict=True), start=1)
        ]
        ack = self._check_ack(await jetstream.publish_atomic(self.nc, messages, self.timeout))
        first = ack.seq - count + 1
        return Appended(seqs=list(range(first, ack.seq + 1)))

    @staticmethod
    def _check_ack(data: bytes) -> _PubAck:
        ack = _ack_decoder.decode(data)
        if ack.error is not None:
            code = ack.error.get("err_code")
            if code == WRONG_LAST_SEQUENCE:
                raise StaleVersion(ack.error.get("description", ""))
            if code == BATCH_DUPLICATE_MSG_ID:
                raise DuplicateCommand(ack.error.get("description", ""))
            if code == jetstream.TOO_MANY_BATCHES:
                raise TooManyBatches(ack.error.get("description", ""))
            raise UnavailableError(
                f"the event log refused the write: {ack.error.get('description')}",
                {"err_code": code},
            )
        return ack

    # Reading ----------------------------------------------------------------------------
    async def _direct(self, request: dict[str, Any]) -> tuple[dict[str, str], bytes] | None:
        return await jetstream.direct_get(self.nc, self.stream, request, self.timeout)

    async def _read(
        self, request: dict[str, Any], leader: bool
    ) -> tuple[dict[str, str], bytes] | None:
        """A direct get, or with ``leader`` the leader's get (``jetstream.leader_get``)."""
        if leader:
            return await jetstream.leader_get(self.nc, self.stream, request, self.timeout)
        return await self._direct(request)

    async def _get(self, request: dict[str, Any], leader: bool = False) -> StoredCommit | None:
        found = await self._read(request, leader)
        if found is None:
            return None
        headers, data = found
        commit = await self.open(
            int(headers["Nats-Sequence"]), headers["Nats-Subject"], headers, data
        )
        if commit.skipped is not None:
            self.skipped += 1
        return commit

    async def next_head(
        self, subject: str, after: int = 0, leader: bool = False
    ) -> CommitHead | None:
        """The first commit on ``subject`` (a wildcard too) after sequence ``after``, None
        when there is none, without opening its events: no key is asked for. ``leader``:
        asked of the stream's leader, which holds every acknowledged write (a replica may
        not yet: ``jetstream.leader_get``)."""
        request = {"seq": after + 1, "next_by_subj": subject}
        found = await self._read(request, leader)
        if found is None:
            return None
        headers = found[0]
        return CommitHead(int(headers["Nats-Sequence"]), headers["Nats-Subject"], headers)

    async def last_head(self, subject: str, leader: bool = False) -> CommitHead | None:
        """The last commit on ``subject`` (a wildcard too), None when there is none, without
        opening its events. ``leader`` as in ``next_head``."""
        found = await self._read({"last_by_subj": subject}, leader)
        if found is None:
            return None
        headers = found[0]
        return CommitHead(int(headers["Nats-Sequence"]), headers["Nats-Subject"], headers)

    async def open(
        self, seq: int, subject: str, headers: dict[str, str], data: bytes
    ) -> StoredCommit:
        """A message of the stream read tolerantly, personal fields opened (``stored_commit``)."""
        return await stored_commit(seq, subject, headers, data, self.keys)

    async def sealed_keys(self, subject: str) -> set[str]:
        """The names of every data key that the commits on ``subject`` were sealed with
        (read from their sealed parts, which stay readable when the keys are gone)."""
        names: set[str] = set()
        next_seq = 1
        while found := await self._direct({"seq": next_seq, "next_by_subj": subject}):
            headers, data = found
            names |= sealed_key_names(data)
            next_seq = int(headers["Nats-Sequence"]) + 1
        return names

    async def get(self, seq: int, leader: bool = False) -> StoredCommit | None:
        return await self._get({"seq": seq}, leader)

    async def read_subject(
        self, subject: str, after: int = 0, leader: bool = False
    ) -> list[StoredCommit]:
        """Every commit on one subject after sequence ``after``, oldest first; with
        ``leader``, every acknowledged one (``jetstream.leader_get``)."""
        return [commit async for commit in self.iter_subject(subject, after, leader)]

    async def iter_subject(
        self, subject: str, after: int = 0, leader: bool = False
    ) -> AsyncIterator[StoredCommit]:
        next_seq = after + 1
        while True:
            commit = await self._get({"seq": next_seq, "next_by_subj": subject}, leader)
            if commit is None:
                return
            yield commit
            next_seq = commit.seq + 1

    async def last_on(self, subject: str) -> StoredCommit | None:
        """The last commit on ``subject``: its ``seq`` is the subject's version."""
        return await self._get({"last_by_subj": subject})

    async def first_subject(self, pattern: str, leader: bool = False) -> str | None:
        """The concrete subject of the first commit matching a wildcard ``pattern``."""
        head = await self.next_head(pattern, leader=leader)
        return head.subject if head else None

    async def read_command(self, seq: int, command_id: str) -> list[StoredCommit]:
        """The commits one command produced, found from any one of their sequences.

        An atomic batch is stored contiguously (up to ``MAX_BATCH_WRITES`` commits): read
        in windows around ``seq``, each way for as long as the window's far end is still
        the command's. Only windows of 8 read a two-commit supersede in one round; a batch
        of a thousand memories takes a few more (a retry only: it answered ``conflict``
        when it read 8 each way, as if the batch were another command).
        """

        # From the leader: a replica may not yet hold the last commits of the batch, and a
        # retry answered from part of a batch said what its first commit did (a supersede
        # answered with the memory it added), not what the command did.
        async def window(first: int, last: int) -> list[StoredCommit | None]:
            return list(
                await asyncio.gather(
                    *(self._get({"seq": s}, leader=True) for s in range(first, last + 1))
                )
            )

        def ours(commit: StoredCommit | None) -> bool:
            return commit is not None and commit.command_id == command_id

        low, high = max(1, seq - MAX_WRITES_PER_COMMAND + 1), seq + MAX_WRITES_PER_COMMAND - 1
        found = await window(low, high)
        size = MAX_WRITES_PER_COMMAND
        while ours(found[0]) and low > 1 and seq - low < MAX_BATCH_WRITES:
            size = min(size * 2, READ_WINDOW_MAX)
            first = max(1, low - size)
            found = [*await window(first, low - 1), *found]
            low = first
        while ours(found[-1]) and high - seq < MAX_BATCH_WRITES:
            size = min(size * 2, READ_WINDOW_MAX)
            found += await window(high + 1, high + size)
            high += size
        return [c for c in found if c is not None and c.command_id == command_id]
