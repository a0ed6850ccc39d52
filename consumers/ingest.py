"""Published commands: executed through the request path, exactly once, in order per aggregate.

One ``IngestWorker`` per partition of the ingestion stream (``agentmem/ingestion.py``) runs
in the process that holds the partition's lease (``ProjectionLeader``, as projections do),
so one process at a time reads a partition, in stream order. For each batch it reads:

1. Each message gets its command id (``domain.ingest.command_id``: the body's
   ``command_id``, else ``Nats-Msg-Id``, else its place in the stream) and its order key
   (its conversation, session, agent or memory scope). Messages of one key form a chain
   across batches: each is executed once the one before it has been; keys run side by side.
2. Each runs through ``Dispatcher.execute``, the request path itself: size and header
   bounds, the credential in its headers, decoding, the handler, ``CommandRunner`` with
   that command id. A redelivered or republished command is recognised by the command path
   (the log's duplicate window, the aggregate's recent command ids, the messages
   projection's index of command ids) and answered with its first outcome.
3. A refusal that no retry changes (``invalid``, ``unauthenticated``, ``forbidden``,
   ``not_found``, ``conflict``) is the command's outcome. Another (``unavailable``,
   ``internal``) is retried with backoff, and after ``MAX_ATTEMPTS`` the command is parked
   (copied to the parked stream) for an operator.
4. The outcome is recorded (``ingest.status`` reads it) and published where the publisher
   asked (``AgentMem-Outcome-To``, only under ``agentmem.out.<org>.<user>.`` of the user it
   ran as; another target is refused, and why is in the outcome), then the message is acked,
   which removes it from the work queue. A crash anywhere before the ack redelivers the
   message; its command is then recognised as done, and the same outcome recorded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentmem import ingestion, subjects
from agentmem.consumers.auth import authorize
from agentmem.consumers.commands import missing_user
from agentmem.consumers.ingest_subscriber import ServiceBroker, subscribe
from agentmem.consumers.router import Prepare, Request, Result, Router
from agentmem.domain.access import Principal
from agentmem.domain.ingest import (
    H_INGEST_ID,
    H_OUTCOME_TO,
    PUBLISHABLE,
    IngestStatus,
    Keys,
    Target,
    backoff_s,
    classify,
    command_id,
    order_key,
    outcome_to_refusal,
    read_keys,
    target,
    valid_id,
)
from agentmem.errors import NotFoundError
from agentmem.jetstream import delivery
from agentmem.metrics import Metrics
from agentmem.projections import users
from agentmem.replies import IngestOutcome
from agentmem.validation import invalid

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

log = structlog.get_logger(__name__)

BATCH = 256
# Executions of a command that failed for a transient reason, then parked: its pauses
# (``backoff_s``, 50 ms doubling up to 2 s) add up to about 11 s, longer than a NATS
# cluster takes to elect a stream leader after a node is lost (4 to 5 s): with 5 (0.75 s)
# one routine node failure parked the commands published during it.
MAX_ATTEMPTS = 11
ACK_WAIT_S = 60
IDLE_WAIT_S = 1.0

# What executes a command as a request would be: ``Dispatcher.execute``.
Execute = Callable[
    [str, bytes, dict[str, str], Prepare | None, str],
    Awaitable[tuple[bytes, Principal | None]],
]

_reply_decoder = msgspec.json.Decoder(dict[str, Any])


def with_ingest_fields(org_id: str, cid: str) -> Prepare:
    """The decoded body as the published subject and message make it: the command id when
    the body names none, and the subject's organization (a body that names another one is
    refused: the subject is what the publisher was allowed to publish on)."""

    def prepare(body: Any) -> Any:
        changes: dict[str, Any] = {}
        if getattr(body, "command_id", "") is None:
            changes["command_id"] = cid
        if hasattr(body, "org_id"):
            if body.org_id is None:
                changes["org_id"] = org_id
            elif body.org_id != org_id:
                raise invalid(
                    f"org_id {body.org_id} is not the organization of the subject ({org_id})",
                    "$.org_id",
                    "invalid_value",
                )
        return msgspec.structs.replace(body, **changes) if changes else body

    return prepare


def _refusal(message: str, reason: str) -> dict[str, Any]:
    return {
        "ok": False,
        "error": {
            "code": "invalid",
            "message": message,
            "details": {"path": "$", "reason": reason},
        },
    }


class Done(msgspec.Struct):
    """One message's outcome, before it is recorded and acked."""

    msg: Msg
    subject: str  # where the outcome is recorded
    outcome: IngestOutcome
    park: bool = False
    outcome_to: str | None = None  # where the publisher asked for it, when allowed


class IngestWorker:
    def __init__(
        self,
        nc: NATS,
        partition: int,
        execute: Execute,
        metrics: Metrics | None = None,
        batch: int = BATCH,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.partition = partition
        self.execute = execute
        self.metrics = metrics or Metrics()
        self.batch = batch
        self.max_attempts = max_attempts
        self.last_error: str | None = None
        self._stopping = asyncio.Event()  # set to stop, or to start over after a failure
        self._stream_id = ""  # the stream's creation time, part of an id made from a seq
        self._running: set[asyncio.Task[None]] = set()
        self._finished = asyncio.Event()  # set whenever one of them ends
        self._failure: BaseException | None = None  # the first command that failed the worker
        # Per order key: the last command started, done once it has been executed.
        self._tails: dict[tuple[str, ...], asyncio.Future[None]] = {}
        self._outcomes = ingestion.OutcomeRecorder(nc)

    @property
    def consumer(self) -> str:
        return ingestion.consumer_name(self.partition)

    def stop(self) -> None:
        self._stopping.set()

    async def _create_consumer(self) -> None:
        """A fresh consumer: whatever a process that died had in hand is delivered now, not
        after its ack wait (the work queue holds every message not yet acked)."""
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.delete_consumer(ingestion.STREAM, self.consumer)
        await self.js.add_consumer(
            ingestion.STREAM,
            ConsumerConfig(
                durable_name=self.consumer,
                filter_subject=ingestion.partition_filter(self.partition),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=ACK_WAIT_S,
                max_ack_pending=self.batch * 4,
                max_waiting=16,
            ),
        )

    async def run(self) -> None:
        # A command without an id of its own runs under its place in the stream, with the
        # stream's creation time: a stream made again starts its sequences at 1 again.
        created = (await self.js.stream_info(ingestion.STREAM)).created
        self._stream_id = (
            str(int(created.timestamp()))
            if isinstance(created, datetime)
            else "".join(c for c in str(created or "") if c.isdigit())[:14]
        )
        await self._create_consumer()
        broker = ServiceBroker(self.nc)
        subscribe(
            broker,
            stream=ingestion.STREAM,
            subject=ingestion.partition_filter(self.partition),
            durable=self.consumer,
            batch=self.batch,
            idle_wait=IDLE_WAIT_S,
            handle=self._take,
            on_failure=self._fail,
        )
        await broker.start()
        log.info("ingestion partition started", partition=self.partition)
        try:
            await self._stopping.wait()
            await broker.stop()  # no more pulls; what was taken is finished or failed
            if self._failure is not None:
                raise self._failure
            await self._finish(self._running)
        finally:
            with contextlib.suppress(Exception):
                await broker.stop()
            for task in list(self._running):
                task.cancel()  # unacked: delivered again to the next holder
            log.info("ingestion partition stopped", partition=self.partition)

    async def _take(self, messages: list[Msg]) -> None:
        """One pull's messages, from FastStream's subscriber: each joins its chain; the
        next pull waits while two batches are under way. A stopping worker takes no more:
        they are delivered again to the partition's next holder."""
        if self._stopping.is_set():
            return
        try:
            for msg in messages:
                self._start(msg)
            await self._keep_in_bounds()
        except Exception as exc:  # never a silent stop: the worker starts again, and says so
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """The worker fails and starts again from the stream (the leader runs it again)."""
        self._failure = self._failure or exc
        self._stopping.set()

    def _start(self, msg: Msg) -> None:
        """Run one command as soon as the one before it with the same order key has been
        executed (a chain per key, across batches): commands of other keys, the next batch,
        and the recording of the one before need not be waited for."""
        found = target(msg.subject)
        keys = read_keys(msg.data)
        key = (
            order_key(found.org_id, found.operation, keys)
            if found is not None
            else ("?", msg.subject)
        )
        before = self._tails.get(key)
        executed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._after(before, executed, msg, found, keys))
        self._tails[key] = executed
        self._running.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._running.discard(finished)
            self._finished.set()
            if not executed.done():
                executed.cancel()
            elif not executed.cancelled():
                executed.exception()  # retrieved: a chain's failure is the task's own
            failed = None if finished.cancelled() else finished.exception()
            if failed is not None:
                self._fail(failed)  # now, not at the next pull: an idle partition has none
            if self._tails.get(key) is executed:
                del self._tails[key]

        task.add_done_callback(done)

    async def _after(
        self,
        before: asyncio.Future[None] | None,
        executed: asyncio.Future[None],
        msg: Msg,
        found: Target | None,
        keys: Keys | None,
    ) -> None:
        try:
            if before is not None:
                # A failure before it stops the chain: this one must not overtake it.
                await asyncio.shield(before)
            d = await self._run_one(msg, found, keys)
        except Exception as exc:
            executed.set_exception(exc)
            raise
        executed.set_result(None)
        await self._record(d)
        await msg.ack()
        self.metrics.ingested(1)

    async def _keep_in_bounds(self) -> None:
        """At most two batches of commands under way (the consumer's max_ack_pending is
        above it); a failed one fails the worker, which starts again from the stream."""
        if self._failure is not None:
            raise self._failure
        while len(self._running) >= self.batch * 2:
            # Woken by the next command to end (``asyncio.wait`` on the whole set instead
            # hooked and unhooked all 512 tasks each time: 6% of the service's samples).
            self._finished.clear()
            await self._finished.wait()
            if self._failure is not None:
                raise self._failure

    async def _finish(self, running: set[asyncio.Task[None]]) -> None:
        if running:
            await asyncio.wait(set(running), timeout=ACK_WAIT_S)

    async def _run_one(self, msg: Msg, found: Target | None, keys: Keys | None) -> Done:
        headers = dict(msg.headers or {})
        ingest_seq = delivery(msg).stream_seq
        org_id = found.org_id if found is not None else "_"
        body_id = keys.command_id if keys is not None and isinstance(keys.command_id, str) else None
        made = f"in{self._stream_id}-{ingest_seq}"
        cid = command_id(headers, body_id, made)
        id_ok = valid_id(cid)
        if not id_ok:
            # The outcome's key is a subject token: never one the publisher wrote badly (a
            # space in it failed the outcome's write, and so the whole partition, forever).
            cid = made
        operation = found.operation if found is not None else None
        principal: Principal | None = None
        attempts = 0
        reply: dict[str, Any]
        if found is None or found.operation not in PUBLISHABLE:
            reply = _refusal(
                f"{operation or msg.subject} cannot be published; publishable: "
                + ", ".join(sorted(PUBLISHABLE)),
                "unknown_subject",
            )
        elif not id_ok:
            reply = _refusal(
                "the command id (command_id, else Nats-Msg-Id) must be 1 to 64 letters, "
                "digits, '_' or '-'",
                "invalid_command_id",
            )
        else:
            prepare = with_ingest_fields(found.org_id, cid)
            while True:
                attempts += 1
                payload, principal = await self.execute(
                    found.command_subject, msg.data, headers, prepare, "ingest"
                )
                reply = _reply_decoder.decode(payload)
                if classify(reply) != "retry" or attempts >= self.max_attempts:
                    break
                await asyncio.sleep(backoff_s(attempts))
                with contextlib.suppress(Exception):
                    await msg.in_progress()
        verdict = classify(reply)
        status = {"stored": "stored", "refused": "refused", "retry": "parked"}[verdict]
        outcome = IngestOutcome(
            command_id=cid,
            status=status,
            seq=reply.get("seq") if verdict == "stored" else None,
            error=reply.get("error") if verdict != "stored" else None,
            operation=operation,
            ingest_seq=ingest_seq,
            attempts=attempts,
            at=time.time_ns() // 1_000_000,
        )
        outcome_to = headers.get(H_OUTCOME_TO) or None
        if outcome_to is not None:
            refused = outcome_to_refusal(
                outcome_to,
                principal.org_id if principal is not None else None,
                principal.user_id if principal is not None else None,
            )
            if refused is not None:
                outcome = msgspec.structs.replace(outcome, outcome_to_refused=refused)
                outcome_to = None
        user = principal.user_id if principal is not None else ingestion.ANONYMOUS
        if principal is not None and not principal.service_admin and principal.org_id != org_id:
            # Published into another organization (refused): kept where its publisher, who
            # may ask about its own organization only, finds it.
            org_id = principal.org_id
        subject = ingestion.outcome_subject(org_id, user, cid)
        return Done(msg, subject, outcome, park=verdict == "retry", outcome_to=outcome_to)

    async def _record(self, d: Done) -> None:
        """The outcome in the outcomes stream (and a parked command in theirs) before the
        message is acked; the outcome where the publisher asked for it, too. Outcomes of
        commands recorded at the same time are stored together (``OutcomeRecorder``)."""
        encoded = ingestion.encode_outcome(d.outcome)
        if d.park:
            await self._park(d)
        await self._outcomes.record(d.subject, encoded)
        if d.outcome_to is not None:
            with contextlib.suppress(Exception):
                await self.nc.publish(d.outcome_to, encoded)

    async def _park(self, d: Done) -> None:
        msg = d.msg
        published = subjects.as_published(msg.subject)
        headers = {k: v for k, v in (msg.headers or {}).items() if k != "Nats-Msg-Id"}
        headers[ingestion.H_PARKED_SUBJECT] = published
        headers[ingestion.H_PARKED_ERROR] = json.dumps(d.outcome.error or {})
        headers[ingestion.H_PARKED_OUTCOME] = d.subject
        headers[H_INGEST_ID] = d.outcome.command_id
        parked_subject = ingestion.PARKED_PREFIX + published.removeprefix("agentmem.in")
        ack = await self.nc.request(parked_subject, msg.data, timeout=10.0, headers=headers)
        if b'"error"' in ack.data:
            raise RuntimeError(f"could not park: {ack.data[:200]!r}")
        log.warning(
            "published command parked after transient failures",
            subject=published,
            command_id=d.outcome.command_id,
            error=(d.outcome.error or {}).get("code"),
        )


# ingest.status --------------------------------------------------------------------------
def query_router(parts: Parts) -> Router:
    router = Router()
    nc, store = parts.nc, parts.store

    @router.handle(IngestStatus)
    async def ingest_status(request: Request[IngestStatus]) -> Result:
        caller = request.caller
        query = request.body
        org_id = query.org_id or caller.org_id
        user_id = query.user_id or caller.user_id
        hidden = NotFoundError(f"organization {org_id} does not exist", {"org_id": org_id})
        # The target before the role (security.md, order of outcomes): another organization,
        # then a user who is not of it, answer not_found; only then ``self`` (the caller's
        # own commands, or an org admin's look at another user's) answers forbidden.
        in_reach = caller.service_admin or org_id == caller.org_id
        if in_reach and user_id != caller.user_id:
            row = await users.get_user(store, user_id)
            if row is None or row["org_id"] != org_id:
                raise missing_user(user_id)
        authorize(caller, request.need, org_id, hidden, user_id)
        own = await ingestion.read_outcome(
            nc, ingestion.outcome_subject(org_id, user_id, query.command_id)
        )
        if own is not None:
            return own, None
        anonymous = await ingestion.read_outcome(
            nc, ingestion.outcome_subject(org_id, ingestion.ANONYMOUS, query.command_id)
        )
        if anonymous is not None:
            return msgspec.structs.replace(anonymous, unattributed=True), None
        return IngestOutcome(command_id=query.command_id, status="pending"), None

    return router
