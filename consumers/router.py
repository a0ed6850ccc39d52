"""A small subject router in the manner of FastStream's, on plain nats-py.

FastStream itself cost 4-5x raw nats-py per message on this kind of machine (design notes),
so the hot path stays on nats-py; what we keep from FastStream is the shape: handlers
registered by subject with their request type, decoded once with msgspec, every outcome
answered with the one envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agentmem import envelope, protocol, subjects, validation
from agentmem.auth import tokens
from agentmem.domain.access import Need, Principal
from agentmem.domain.jsondoc import check_request_depth
from agentmem.errors import (
    AgentMemError,
    InternalError,
    InvalidError,
    UnauthenticatedError,
    UnavailableError,
)
from agentmem.headers import header
from agentmem.metrics import UNKNOWN_SUBJECT, Metrics
from agentmem.natsflush import flushed
from agentmem.protocol import Operation, operation_of
from agentmem.queries import Health

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=protocol.Request)

MAX_REQUEST_BYTES = 256 * 1024  # documented in docs/protocol.md
# One line's requests (a user's, or the public line: ``line_of``) handled at once; the rest
# wait their turn, so that a client sending thousands at once does not hold up everyone
# else (docs/security.md, "One client's flood").
PER_CALLER_IN_FLIGHT = 64
# A reply this large waits for one of its line's few large-reply turns, and holds it
# until the reply has left this process (a flush): the process's one connection sends in
# order, and the health check's and the projections' own requests must not queue behind
# hundreds of megabytes of one caller's answers.
LARGE_REPLY_BYTES = 64 * 1024
LARGE_REPLIES_PER_CALLER = 4
FLUSH_TIMEOUT_S = 10
# Requests taken and not answered yet, over all callers: past it a request is answered
# `unavailable` at once, without running (memory stays bounded, whatever comes in).
MAX_WAITING = 8192
# Headers (documented in docs/protocol.md): a token or an id is tens of bytes. A command's
# correlation and causation ids are written into its commits, and a header the log would
# refuse must be refused here, as invalid, not answered "unavailable" after a failed write.
MAX_HEADER_BYTES = 1024  # one header: its name and its value, as UTF-8
MAX_HEADERS_BYTES = 8 * 1024  # all of a request's headers together
# A JSON escape of U+0000: "\u0000" after an even number of backslashes (so not "\\u0000",
# an escaped backslash followed by the text "u0000").
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


@dataclass(frozen=True)
class Request(Generic[R]):
    body: R
    headers: dict[str, str]
    subject: str
    # Who is asking; None only on the few public subjects (login, health).
    principal: Principal | None = None

    @property
    def operation(self) -> Operation:
        return operation_of(type(self.body))

    @property
    def need(self) -> Need:
        """The least role its operation declares; a public one needs none of its own."""
        return self.operation.need or "reader"

    @property
    def caller(self) -> Principal:
        if self.principal is None:
            raise UnauthenticatedError("this subject needs credentials")
        return self.principal


Result = tuple[Any, int | None]
# Adjusts a decoded request before its handler runs (a published command's id and org).
Prepare = Callable[[Any], Any]
Handler = Callable[[Request[Any]], Awaitable[Result]]
Authenticate = Callable[[dict[str, str]], Awaitable[Principal]]


@dataclass(frozen=True)
class Route:
    subject: str
    request_type: type[protocol.Request]
    decoder: msgspec.json.Decoder[Any]
    handler: Handler
    public: bool = False


class Router:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}

    def handle(
        self, request_type: type[R]
    ) -> Callable[
        [Callable[[Request[R]], Awaitable[Result]]], Callable[[Request[R]], Awaitable[Result]]
    ]:
        """Register the handler of the operation that ``request_type`` declares: its
        subject, and whether it is public, come from that one declaration."""
        operation = operation_of(request_type)

        def register(
            handler: Callable[[Request[R]], Awaitable[Result]],
        ) -> Callable[[Request[R]], Awaitable[Result]]:
            subject = operation.subject
            if subject in self.routes:
                raise ValueError(f"two handlers for {subject}")
            decoder = msgspec.json.Decoder(request_type)
            self.routes[subject] = Route(subject, request_type, decoder, handler, operation.public)
            return handler

        return register

    def include(self, other: Router) -> None:
        for subject, route in other.routes.items():
            if subject in self.routes:
                raise ValueError(f"two handlers for {subject}")
            self.routes[subject] = route


def check_headers(headers: dict[str, str]) -> None:
    """Raise ``invalid`` when one header, or all of them together, are over their bounds."""
    # A character is at most 4 bytes of UTF-8: headers under a quarter of the bounds in
    # characters (every usual request's) are under them in bytes, without encoding each.
    chars = 0
    for name, value in headers.items():
        size = len(name) + len(value)
        if size > MAX_HEADER_BYTES // 4:
            break
        chars += size
    else:
        if chars <= MAX_HEADERS_BYTES // 4:
            return
    total = 0
    for name, value in headers.items():
        size = len(name.encode(errors="replace")) + len(value.encode(errors="replace"))
        if size > MAX_HEADER_BYTES:
            raise validation.invalid(
                f"header {name[:64]!r} is {size} bytes (name and value); at most "
                f"{MAX_HEADER_BYTES} are allowed",
                validation.BODY,
                "too_long",
                header=name[:64],
                size=size,
                limit=MAX_HEADER_BYTES,
            )
        total += size
    if total > MAX_HEADERS_BYTES:
        raise validation.invalid(
            f"the request's headers are {total} bytes together; at most {MAX_HEADERS_BYTES} "
            "are allowed",
            validation.BODY,
            "too_large",
            size=total,
            limit=MAX_HEADERS_BYTES,
        )


def answerable(reply: str) -> bool:
    """Whether a request's reply subject is an inbox, the only subjects the service answers
    on: ``_INBOX.`` (a NATS client's default), ``_INBOX_<id>.`` (the inbox a client of the
    embedded server uses, docs/security.md), or ``_R_.`` (what nats-server makes of a
    reply subject crossing a service import, as from the ``CLIENTS`` account: the server
    delivers the answer to the caller's own subject in its account, never into this one)."""
    return reply.startswith(("_INBOX.", "_INBOX_", "_R_."))


def reply_too_large(size: int, limit: int) -> InvalidError:
    """A query whose answer NATS cannot carry (its payload limit): said, not dropped (the
    caller waited for its timeout). The pages of the lists stop well before it; a query
    without pages (a context of many large messages) can reach it."""
    return validation.invalid(
        f"the answer is {size} bytes, over the {limit} a NATS message carries; ask for less "
        "(a smaller limit, max_tokens or page)",
        validation.BODY,
        "too_large",
        reply_size=size,
        limit=limit,
    )


def _describe(
    exc: msgspec.ValidationError | msgspec.DecodeError | UnicodeDecodeError, data: bytes
) -> InvalidError:
    """The ``invalid`` error for a body that does not decode: a message for a person, and
    ``details.path`` and ``details.reason`` for a program (agentmem/validation.py)."""
    return validation.decode_error(exc, data)


PUBLIC_LINE = ""  # the line of requests that name no user (public subjects, bad tokens)


def line_of(subject: str, headers: dict[str, str] | None, router: Router) -> str:
    """The line a request waits in: its token's user (however the header spells the token,
    and whichever of the user's keys and sessions it is), or the one public line for a
    public subject (which reads no credential) or a header that holds no token. A forged
    token naming a real user waits in that user's line, and is refused at once when its turn
    comes."""
    route = router.routes.get(subject)
    if route is None or route.public:
        return PUBLIC_LINE
    token = tokens.parse(header(headers, tokens.HEADER))
    return PUBLIC_LINE if token is None else f"{token.org_id}.{token.user_id}"


class CallerTurns:
    """At most ``limit`` requests of one line (``line_of``) run at once, the others wait in
    order; a line nobody holds or waits in is forgotten."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._turns: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}  # requests holding or waiting for a turn

    @contextlib.asynccontextmanager
    async def turn(self, caller: str) -> AsyncIterator[None]:
        turns = self._turns.get(caller)
        if turns is None:
            turns = self._turns[caller] = asyncio.Semaphore(self.limit)
        self._users[caller] = self._users.get(caller, 0) + 1
        try:
            async with turns:
                yield
        finally:
            self._users[caller] -= 1
            if not self._users[caller]:  # no one holds or waits: forgotten
                del self._users[caller], self._turns[caller]


class Dispatcher:
    """Subscribes a router's subject trees in the queue group and answers every request."""

    def __init__(
        self,
        nc: NATS,
        router: Router,
        authenticate: Authenticate,
        max_in_flight: int = 1024,
        metrics: Metrics | None = None,
        per_caller: int = PER_CALLER_IN_FLIGHT,
    ) -> None:
        self.nc = nc
        self.router = router
        self.authenticate = authenticate
        self.metrics = metrics or Metrics()
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._turns = CallerTurns(per_caller)
        self._large_turns = CallerTurns(LARGE_REPLIES_PER_CALLER)

    async def start(self, trees: list[str]) -> None:
        for tree in trees:
            subscription = await self.nc.subscribe(
                f"{tree}.>", queue=subjects.QUEUE_GROUP, cb=self._on_message
            )
            self._subscriptions.append(subscription)
        # Subscribed means the server knows it: a request sent on another connection right
        # after the start must find a responder.
        await flushed(self.nc)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking requests, then let the ones in flight finish and answer."""

        async def drain(subscription: Subscription) -> None:
            # Not ``unsubscribe``: it discards the requests already delivered to this
            # connection that the callback has not taken yet, which nobody then answers (a
            # helper: one request of 653 across a SIGTERM). A drain hands them on first.
            with contextlib.suppress(Exception):
                await subscription.drain()  # type: ignore[no-untyped-call]

        await asyncio.gather(*(drain(s) for s in self._subscriptions))
        self._subscriptions.clear()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)

    async def _on_message(self, msg: Msg) -> None:
        # nats-py awaits callbacks one at a time per subscription: each request gets its own
        # task, which waits for its caller's turn (never this callback: one caller's
        # requests would hold up everyone's), so a slow one (a password hash) does not hold
        # up the rest.
        if len(self._tasks) >= MAX_WAITING:
            await self._refuse(msg)
            return
        task = asyncio.create_task(self._answer_in_turn(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_in_turn(self, msg: Msg) -> None:
        if msg.subject == Health.op.subject:
            # A supervisor's probe waits in no line and for no slot: its checks are shared
            # by every probe asking at once (``consumers/system.py``), so a flood of them
            # costs little.
            await self._answer(msg, PUBLIC_LINE)
            return
        caller = line_of(msg.subject, msg.headers, self.router)
        async with self._turns.turn(caller), self._slots:
            await self._answer(msg, caller)

    async def _refuse(self, msg: Msg) -> None:
        busy = UnavailableError(f"the service holds {MAX_WAITING} requests not answered yet")
        log.warning("request refused: too many waiting", subject=msg.subject)
        if msg.reply and answerable(msg.reply):
            with contextlib.suppress(Exception):
                await self.nc.publish(msg.reply, envelope.error(busy))

    async def _answer(self, msg: Msg, caller: str) -> None:
        if msg.reply and not answerable(msg.reply):
            # Neither run nor answered: the reply would be published by the service, with
            # its permissions, wherever the caller said (an event subject, which the log's
            # stream stores; a data key of the key bucket; another user's outcome tree).
            log.warning("request dropped: its reply subject is no inbox", subject=msg.subject)
            return
        payload = await self.handle(msg.subject, msg.data, msg.headers or {})
        if msg.reply:
            with contextlib.suppress(Exception):
                # Not ``msg.respond``: nats-py's sends the request's headers back with the
                # reply (the caller's token among them), and a request whose headers were
                # near the payload limit made a reply over it, which nats-server answers by
                # closing the connection: the whole process stopped serving.
                if len(payload) < LARGE_REPLY_BYTES:
                    await self.nc.publish(msg.reply, payload)
                    return
                async with self._large_turns.turn(caller):
                    await self.nc.publish(msg.reply, payload)
                    await flushed(self.nc, FLUSH_TIMEOUT_S)

    async def handle(self, subject: str, data: bytes, headers: dict[str, str]) -> bytes:
        """Answer one request, and log one line for it at info: its subject, outcome (``ok``
        or the error code), duration and principal; never a header's value or the body."""
        payload, _ = await self.execute(subject, data, headers)
        return payload

    async def execute(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str],
        prepare: Prepare | None = None,
        kind: str = "request",
    ) -> tuple[bytes, Principal | None]:
        """``handle``, for a request or a published command (``consumers/ingest.py``): the
        same checks, handler and envelope; ``prepare`` adjusts the decoded body first. Also
        says who the caller was (None: refused before it was known)."""
        started = time.perf_counter()
        caller: list[Principal] = []
        payload, outcome = await self._handle(subject, data, headers, caller, prepare)
        seconds = time.perf_counter() - started
        log.info(
            kind,
            subject=subject,
            outcome=outcome,
            ms=round(seconds * 1000, 2),
            principal=caller[0].user_id if caller else None,
        )
        known = subject if subject in self.router.routes else UNKNOWN_SUBJECT
        self.metrics.request(known, outcome, seconds)
        return payload, caller[0] if caller else None

    async def _handle(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str],
        caller: list[Principal],
        prepare: Prepare | None = None,
    ) -> tuple[bytes, str]:
        try:
            route = self.router.routes.get(subject)
            if route is None:
                raise validation.invalid(
                    f"unknown subject {subject}; docs/protocol.md lists every subject",
                    validation.BODY,
                    "unknown_subject",
                    subject=subject,
                )
            if len(data) > MAX_REQUEST_BYTES:
                raise validation.invalid(
                    f"request of {len(data)} bytes is over the limit of {MAX_REQUEST_BYTES}",
                    validation.BODY,
                    "too_large",
                    limit=MAX_REQUEST_BYTES,
                    size=len(data),
                )
            check_headers(headers)
            # Credentials first: a caller without them learns nothing, not even what is
            # wrong with the request.
            principal = None if route.public else await self.authenticate(headers)
            if principal is not None:
                caller.append(principal)
            if b"\\u0000" in data and _ESCAPED_NUL.search(data):
                # Postgres text cannot hold U+0000: a projection would have to park the event.
                raise validation.invalid(
                    "strings may not contain the NUL character (\\u0000)",
                    validation.nul_path(data),
                    "nul_character",
                )
            # Before decoding: msgspec's decoder recurses, and so do the merge patch, a
            # JSON Schema check and the encoder; a deep document must not reach any of them.
            check_request_depth(data, route.request_type)
            try:
                body = route.decoder.decode(data or b"{}")
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                raise _describe(exc, data) from exc
            except UnicodeDecodeError as exc:  # msgspec raises it for bad bytes in a string
                raise _describe(exc, data) from exc
            if prepare is not None:
                body = prepare(body)
            result, seq = await route.handler(Request(body, headers, subject, principal))
            answer = envelope.ok(result, seq)
            if len(answer) > self.nc.max_payload:
                raise reply_too_large(len(answer), self.nc.max_payload)
            return answer, "ok"
        except InvalidError as exc:
            # Every invalid reply says where and why; a check that names no field is about
            # the request as a whole.
            exc.details.setdefault("path", validation.BODY)
            exc.details.setdefault("reason", "invalid_value")
            return envelope.error(exc), exc.code
        except AgentMemError as exc:
            return envelope.error(exc), exc.code
        except nats.errors.Error as exc:
            # NATS did not answer a handler (a JetStream or key bucket request timed out: a
            # disk full, a node restarting): the caller may retry, as for any `unavailable`.
            log.warning("handler: nats did not answer", subject=subject, error=repr(exc))
            busy = UnavailableError(f"the event log or the key bucket did not answer: {exc!r}")
            return envelope.error(busy), busy.code
        except Exception:
            log.exception("handler failed", subject=subject)
            internal = InternalError("internal error; the service log has details")
            return envelope.error(internal), internal.code
