"""Command handlers: load the aggregates, decide, append one commit, answer.

Each handler is a *plan*: it loads what it needs through a ``Loader`` and returns the writes
that the pure ``decide`` functions produced. ``CommandRunner`` owns everything around it:
the command id, retries after a concurrent write, and recognising a retried command.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from agentmem import ids, subjects, validation
from agentmem.bootstrap import find_admin
from agentmem.commands import (
    ChangePassword,
    Command,
    CreateOrg,
    DeleteOrg,
    DeleteUser,
    RegisterUser,
    RenameOrg,
    SetRoles,
    UpdateProfile,
    normalize_email,
)
from agentmem.consumers.aggregates import AggregateCache, AlreadyApplied, Loader, SubjectLocks
from agentmem.consumers.auth import authorize
from agentmem.consumers.graph_scope import delete_entities_of_scope
from agentmem.consumers.router import Request, Result, Router
from agentmem.domain import orgs, users
from agentmem.domain.access import Need, Principal, narrows_access
from agentmem.domain.aggregate import Evolve, Loaded, Write
from agentmem.domain.passwords import hash_password, verify_password
from agentmem.errors import (
    AgentMemError,
    ConflictError,
    ForbiddenError,
    InvalidOnState,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
)
from agentmem.eventlog import (
    H_CAUSATION_ID,
    H_CORRELATION_ID,
    CommitMeta,
    DuplicateCommand,
    EventLog,
    StaleVersion,
    StoredCommit,
)
from agentmem.events import AnyEvent
from agentmem.headers import header
from agentmem.metrics import Metrics

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

Plan = Callable[[Loader, str], Awaitable[list[Write]]]
# Waits until every process has applied the commit at a sequence (``confirm_everywhere``).
Confirm = Callable[[int], Awaitable[None]]
# Closes the NATS connections of the credentials some events ended (``nats_gate.Disconnector``).
Disconnect = Callable[[list[AnyEvent]], Coroutine[Any, Any, int]]

S = TypeVar("S")

MAX_ATTEMPTS = 8
# A retry after another process's write waits a random time up to this, doubled each try.
RETRY_PAUSE_S = 0.002
SECRET_FIELDS = frozenset({"password_hash", "password", "digest"})


def trace_header(headers: dict[str, str] | None, name: str) -> str | None:
    """The request's ``name`` header, stored on every commit the command writes: refused
    with ``invalid`` unless every character of it is printable (``str.isprintable``: the
    space, but no control, format or other separator character), since a terminal or a
    log line that shows the audit trail would act on an escape sequence in it."""
    value = header(headers, name)
    if value is not None and not value.isprintable():
        raise validation.invalid(
            f"header {name!r} may hold only printable characters (no control characters)",
            validation.BODY,
            "invalid_value",
            header=name,
        )
    return value


def decided_on_state(refusal: Exception) -> bool:
    """Whether a plan's refusal may come from a stale aggregate: a version or a state
    (``conflict``), one not found, what it holds (``InvalidOnState``: a block's content
    over its limit), or a plan's own "nothing to write" (a deduplicated add). Not one of
    the caller's own (a wrong password, a role, bad input): decided again, a wrong password
    was counted twice against its throttle."""
    return isinstance(refusal, ConflictError | NotFoundError | InvalidOnState) or not isinstance(
        refusal, AgentMemError
    )


class Earlier:
    """``CommandRunner.run``'s ``on_earlier``, remembered: ``answered`` once the answer is
    an earlier attempt's outcome, read from the log (not what this attempt decided)."""

    answered = False

    def __call__(self) -> None:
        self.answered = True


class _NothingToWrite(Exception):
    """A plan of ``run_each`` that found nothing to do."""


def event_view(event: AnyEvent, seq: int) -> dict[str, Any]:
    """What a command answers: its main event's public fields and the new version."""
    fields = msgspec.to_builtins(event)
    view = {k: v for k, v in fields.items() if k not in SECRET_FIELDS and k != "type"}
    view["event"] = fields["type"]
    view["version"] = seq
    return view


def log_command_id(owner: str, command_id: str) -> str:
    """The id a command is stored and recognised under in the log: the client's id within
    the space of whoever sent it. JetStream's duplicate window, the retry checks on loaded
    subjects and the outcome of a retry all compare this key, so one organization's (or
    user's) command id can never match, read or pre-empt another's."""
    return f"{owner}.{command_id}"


def owner_of(principal: Principal | None) -> str:
    """Whose command-id space a request's command belongs to: its organization and user."""
    return f"{principal.org_id}.{principal.user_id}" if principal else "anonymous"


def owner_of_user(user: users.User) -> str:
    """``owner_of`` for a user that is not (yet) a request's principal."""
    return f"{user.org_id}.{user.user_id}"


def client_command_id(key: str) -> str:
    """The id the client sent, from the key the log holds (ids hold no dots)."""
    return key.rsplit(".", 1)[-1]


def narrowing_seq(commits: list[tuple[list[AnyEvent], int]]) -> int | None:
    """The last sequence, among ``(events, seq)`` commits, whose events take access away."""
    seqs = [seq for events, seq in commits if any(narrows_access(e) for e in events)]
    return max(seqs, default=None)


class CommandRunner:
    def __init__(
        self,
        log: EventLog,
        cache: AggregateCache,
        confirm: Confirm | None = None,
        disconnect: Disconnect | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.log = log
        self.cache = cache
        self.metrics = metrics or Metrics()
        # Without it (a test's stand-in for a process), nothing waits for access views.
        self.confirm = confirm
        # Without it (NATS without AgentMem's auth callout), no connection is closed.
        self.disconnect = disconnect
        self._disconnects: set[asyncio.Task[int]] = set()
        self._subjects: dict[str, str] = {}
        self.locks = SubjectLocks()

    async def subject_of(self, aggregate: str, aggregate_id: str) -> str:
        """An aggregate's subject names its org, which a command on it does not carry: the
        log finds it from the id alone (ids are unique, so one subject matches), once."""
        key = f"{aggregate}.{aggregate_id}"
        subject = self._subjects.get(key)
        if subject is None:
            pattern = subjects.event("*", aggregate, aggregate_id)
            # Not found by a replica: asked of the leader, which holds every acknowledged
            # commit (an aggregate created a moment ago is not missing).
            found = await self.log.first_subject(pattern) or await self.log.first_subject(
                pattern, leader=True
            )
            if found is None:
                raise NotFoundError(
                    f"{aggregate} {aggregate_id} does not exist", {f"{aggregate}_id": aggregate_id}
                )
            if len(self._subjects) > 100_000:
                self._subjects.clear()
            subject = self._subjects[key] = found
        return subject

    async def user_subject(self, user_id: str) -> str:
        return await self.subject_of("user", user_id)

    async def load_user(self, loader: Loader, user_id: str) -> Loaded[users.User]:
        """A live user of a live organization, or not_found."""
        user = await loader.load(await self.user_subject(user_id), users.evolve)
        if user.state is not None:
            # The users of a deleted organization are gone with it.
            org = await loader.load(orgs.subject(user.state.org_id), orgs.evolve)
            orgs.require_live(org, user.state.org_id)
        users.require_live(user, user_id)
        return user

    async def load_reservation(self, loader: Loader, email: str) -> Loaded[users.Reservation]:
        """An address's reservation, as a new reservation of it must see it. One whose holder
        is gone (the user deleted, or the user's organization) is free: deleting an
        organization releases its users' addresses without a write per address. Taking a
        free address writes over the reservation at its version, decided in the log as
        the first reservation was, so of two registrations racing for it one wins."""
        reservation = await loader.load(subjects.email_reservation(email), users.evolve_reservation)
        if reservation.state is not None and await self._holder_gone(reservation.state.user_id):
            return replace(reservation, state=None)
        return reservation

    async def _holder_gone(self, user_id: str) -> bool:
        """Whether a reservation's holder is deleted, or its organization is. A holder that
        looks live is read again from the log before the address is refused (another
        process may have deleted it); one that is gone stays gone, so a stale read of that
        is safe."""
        try:
            subject = await self.user_subject(user_id)
        except NotFoundError:
            return False  # no holder to judge (never happens: both are one batch): keep it
        for refresh in (False, True):
            user = await self.cache.load(subject, users.evolve, refresh=refresh)
            if user.state is not None and user.state.deleted:
                return True
            org_id = subjects.parse(subject).org_id
            org = await self.cache.load(orgs.subject(org_id), orgs.evolve, refresh=refresh)
            if org.state is not None and org.state.deleted:
                return True
        return False

    async def load_in_live_org(
        self,
        loader: Loader,
        aggregate: str,
        aggregate_id: str,
        evolve: Evolve[S],
        missing: NotFoundError,
        current: bool = False,
    ) -> tuple[Loaded[S], str]:
        """An aggregate found by its id, with its organization's id. A deleted
        organization's aggregates are gone with it: ``missing``, as for an unknown id.
        ``current``: read from the log's leader (``Loader.current``), for an aggregate the
        command only reads."""
        subject = await self.subject_of(aggregate, aggregate_id)
        org_id = subjects.parse(subject).org_id
        loaded = await (loader.current if current else loader.load)(subject, evolve)
        org = await loader.load(orgs.subject(org_id), orgs.evolve)
        if org.state is None or org.state.deleted:
            raise missing
        return loaded, org_id

    async def new_subject(
        self,
        loader: Loader,
        aggregate: str,
        aggregate_id: str,
        subject: str,
        evolve: Evolve[S],
        chosen: bool,
    ) -> Loaded[S]:
        """The empty subject a create writes, for an id the service made (``chosen`` false:
        nothing to read) or one the client chose. A chosen id already in the log is this
        very command retried (``AlreadyApplied``, answered with its first outcome), or
        taken, in any organization (``conflict``). A retry is recognised even by a process
        whose cache read the subject before the first attempt's commit: it reads the
        subject again before it calls the id taken."""
        if not chosen:
            return Loaded(subject, None, 0)
        loader.choose(subject)
        existing = await self.log.first_subject(subjects.event("*", aggregate, aggregate_id))
        if existing is None:
            return await loader.load(subject, evolve)
        await loader.load(existing, evolve)  # a retry: AlreadyApplied
        fresh = Loader(self.cache, loader.command_id, refresh=True)
        taken = await fresh.load(existing, evolve)  # a retry this cache had not seen
        if taken.version == 0:
            # The log has the subject, but this read did not see its commit (a replica
            # behind the stream leader): a retry settles it.
            raise UnavailableError(f"{aggregate} {aggregate_id} is not readable yet; retry")
        # Taken, live, deleted or forgotten (commits that no longer fold into anything: its
        # keys are gone) alike: ids are never used twice, and the answer does not tell which,
        # since the id may be another organization's.
        raise ConflictError(
            f"{aggregate} {aggregate_id} already exists", {f"{aggregate}_id": aggregate_id}
        )

    async def run(
        self,
        request: Request[Any],
        plan: Plan,
        owner: str | None = None,
        on_earlier: Callable[[], None] | None = None,
    ) -> Result:
        """Decide and append ``plan``'s writes once, as a commit of the request's operation
        (its commit type is the operation's name). ``owner`` is whose command-id space
        the command belongs to: by default the caller's (``owner_of``); only a command
        without a caller (login) names it, once it knows who is acting. ``on_earlier`` is
        called when the answer is an earlier attempt's outcome, read from the log: what the
        last plan decided was not applied (its writes were this command's already)."""
        command: Command = request.body
        command_id = log_command_id(
            owner or owner_of(request.principal), command.command_id or ids.new_id()
        )
        return await self._run(request, plan, command_id, on_earlier)

    async def run_each(
        self, request: Request[Any], plans: list[tuple[str, Plan]], concurrency: int = 64
    ) -> list[Result | None]:
        """Several commits of one command, each decided and appended on its own (not
        atomically), at most ``concurrency`` at a time: for a command over many aggregates
        that need not change together (``memory.delete_scope``). Each is stored under the
        command id ``<command id>:<key>``, so a retried command writes none of them twice. A
        plan that returns no writes appends nothing: its result is None."""
        command: Command = request.body
        base = log_command_id(owner_of(request.principal), command.command_id or ids.new_id())
        slots = asyncio.Semaphore(concurrency)

        async def one(key: str, plan: Plan) -> Result | None:
            async with slots:
                try:
                    return await self._run(request, plan, f"{base}:{key}")
                except _NothingToWrite:
                    return None

        return list(await asyncio.gather(*(one(key, plan) for key, plan in plans)))

    async def run_pages(
        self,
        request: Request[Any],
        page: Callable[[str], Awaitable[list[str]]],
        plan_for: Callable[[str], Plan],
    ) -> tuple[int, int]:
        """``run_each`` over every id that ``page(after)`` finds, page after page (ids in
        order, each page after the last id of the one before) until a page is empty: how
        many plans wrote, and the log sequence of the last of their commits (0: none wrote)."""
        written, version, after = 0, 0, ""
        while found := await page(after):
            for result in await self.run_each(request, [(i, plan_for(i)) for i in found]):
                if result is not None:
                    written += 1
                    version = max(version, result[1] or 0)
            after = found[-1]
        return written, version

    async def _run(
        self,
        request: Request[Any],
        plan: Plan,
        command_id: str,
        on_earlier: Callable[[], None] | None = None,
    ) -> Result:
        meta = CommitMeta(
            command_id=command_id,
            commit_type=request.operation.name,
            correlation_id=trace_header(request.headers, H_CORRELATION_ID),
            causation_id=trace_header(request.headers, H_CAUSATION_ID),
            principal=request.principal.audit_name() if request.principal else "anonymous",
            time_ms=time.time_ns() // 1_000_000,
        )
        # The aggregate this command writes to, once known: its queue is held from then on
        # until the append, so that this process's writers to it take turns.
        held: str | None = None
        try:
            attempt, refresh = 0, False
            while True:
                loader = Loader(self.cache, command_id, refresh=refresh)
                # A forget while this attempt decides (its keys deleted, this process's
                # cache cleared) may have made the state it decides on unreadable: its
                # append is refused before it is sent, and the command decided again on
                # the log, where it finds what was forgotten gone (a memory scope's forget
                # writes nothing on the entities it forgets that a version would catch).
                epoch = self.cache.epoch
                try:
                    writes = await plan(loader, command_id)
                    if not writes:
                        raise _NothingToWrite
                except AlreadyApplied as applied:
                    return await self._outcome(
                        applied.seq, command_id, meta.commit_type, None, on_earlier, loader.chosen
                    )
                except Exception as refused:
                    if refresh or not decided_on_state(refused):
                        raise
                    # Decided on this process's cache, which another process may have moved
                    # on: a refusal (a version, a state, a retry not seen yet) or nothing to
                    # write is decided again on the log before it is answered.
                    refresh = True
                    continue
                if held is None and (key := queue_key(writes)) is not None:
                    held = key
                    if await self.locks.acquire(key):
                        # Another writer of this process went first: decide again from
                        # what it wrote (its append is in the cache), not counted as a try.
                        refresh = False
                        continue
                try:
                    appended = await self.log.append(
                        writes, meta, functools.partial(self._undisturbed, epoch)
                    )
                except StaleVersion:
                    # Another process wrote first: reload (incrementally) and decide again,
                    # after a pause with jitter, so that two processes do not meet again. A
                    # command that named an expected_version fails then with `conflict`.
                    attempt += 1
                    self.metrics.command_retries.inc()
                    if attempt >= MAX_ATTEMPTS:
                        raise ConflictError(
                            "the aggregate kept changing under this command; retry it",
                            {"attempts": MAX_ATTEMPTS},
                        ) from None
                    await asyncio.sleep(random.uniform(0, RETRY_PAUSE_S * 2**attempt))
                    refresh = True
                    continue
                except DuplicateCommand:
                    return await self._outcome_of_batch(
                        writes, command_id, meta.commit_type, on_earlier, loader.chosen
                    )
                if appended.duplicate:
                    return await self._outcome(
                        appended.last_seq,
                        command_id,
                        meta.commit_type,
                        writes,
                        on_earlier,
                        chosen=loader.chosen,
                    )
                self.cache.record(writes, appended, command_id)
                break
        finally:
            if held is not None:
                self.locks.release(held)
        # The queue is left before the wait for access views: it is for deciding only.
        written = [(w.events, seq) for w, seq in zip(writes, appended.seqs, strict=True)]
        await self._confirm(written)
        return event_view(writes[-1].events[-1], appended.seqs[-1]), appended.last_seq

    def _undisturbed(self, epoch: int) -> bool:
        """No forget cleared the cache since ``epoch``."""
        return self.cache.epoch == epoch

    async def _outcome(
        self,
        seq: int,
        command_id: str,
        operation: str,
        writes: list[Write] | None = None,
        on_earlier: Callable[[], None] | None = None,
        chosen: set[str] | None = None,
    ) -> Result:
        """The first outcome of the command ``command_id`` that was applied at ``seq``;
        ``conflict`` when that id was used for another operation (not a retry of this one,
        whose reply would be of another shape), or for the same operation on another
        aggregate than this attempt's ``writes``: an existing one (a delete of another
        conversation under the same id must not answer as if it had deleted this one), or
        a new one whose id the request ``chosen`` (an agent created under another id)."""
        found = await self.log.read_command(seq, command_id)
        if not found:
            raise UnavailableError(
                f"command {client_command_id(command_id)} was applied at {seq} but is unreadable"
            )
        commits = [c for c in found if c.commit_type == operation]
        client_id = client_command_id(command_id)
        if not commits:
            used_for = found[0].commit_type
            raise ConflictError(
                f"command id {client_id} was already used for {used_for}; a new command "
                "needs a new id",
                {"command_id": client_id, "operation": used_for},
            )
        # A create's subject is new on each attempt when the service made its id: only the
        # aggregates that existed before, and those of chosen ids, must be the first's.
        stable = {w.subject for w in writes or [] if w.expected != 0} | (chosen or set())
        if stable - {c.subject for c in commits}:
            raise ConflictError(
                f"command id {client_id} was already used for another {operation}; a new "
                "command needs a new id",
                {"command_id": client_id, "operation": operation},
            )
        # A retry waits as the first attempt did: it may be retrying because that wait failed.
        await self._confirm([(c.events, c.seq) for c in commits])
        if on_earlier is not None:
            on_earlier()
        return self._view(commits)

    async def _confirm(self, commits: list[tuple[list[AnyEvent], int]]) -> None:
        """A commit that takes access away is answered once every process has applied it."""
        seq = narrowing_seq(commits)
        if seq is not None and self.confirm is not None:
            await self.confirm(seq)
        if seq is not None and self.disconnect is not None:
            # Once no process accepts the credential any more (a connection closed now
            # cannot come back in with it), and in the background: the connection that sent
            # this command (a logout) must still get its reply, which goes out at once,
            # while finding the connections takes a round to every server first.
            events = [e for events, _ in commits for e in events]
            self._disconnects = {t for t in self._disconnects if not t.done()}
            self._disconnects.add(asyncio.create_task(self.disconnect(events)))

    async def _outcome_of_batch(
        self,
        writes: list[Write],
        command_id: str,
        operation: str,
        on_earlier: Callable[[], None] | None = None,
        chosen: set[str] | None = None,
    ) -> Result:
        for write in writes:
            for commit in await self.log.read_subject(write.subject, leader=True):
                if commit.command_id == command_id:
                    return await self._outcome(
                        commit.seq, command_id, operation, writes, on_earlier, chosen
                    )
        client_id = client_command_id(command_id)
        raise ConflictError(
            f"command id {client_id} was already used for another command; a new command "
            "needs a new id",
            {"command_id": client_id},
        )

    @staticmethod
    def _view(commits: list[StoredCommit]) -> Result:
        last = max(commits, key=lambda c: c.seq)
        return event_view(last.events[-1], last.seq), last.seq


def queue_key(writes: list[Write]) -> str | None:
    """The subject whose writers queue: the first one written at an expected version. Writes
    at no expected version (a conversation's messages) never conflict, and need no queue."""
    return next((w.subject for w in writes if w.expected is not None), None)


def missing_org(org_id: str) -> NotFoundError:
    return NotFoundError(f"organization {org_id} does not exist", {"org_id": org_id})


def missing_user(user_id: str) -> NotFoundError:
    return NotFoundError(f"user {user_id} does not exist", {"user_id": user_id})


def check_user(request: Request[Any], need: Need, user: Loaded[users.User]) -> users.User:
    """The loaded user, if the caller may act on it with ``need``."""
    state = users.require_live(user, subjects.parse(user.subject).aggregate_id)
    caller = request.caller
    authorize(caller, need, state.org_id, missing_user(state.user_id), target_user=state.user_id)
    check_service_admin(caller, state)
    return state


def check_service_admin(caller: Principal, user: users.User) -> None:
    """A service administrator answers only to itself or another service administrator,
    whatever role someone holds in the organization it belongs to."""
    if user.service_admin and not caller.service_admin and caller.user_id != user.user_id:
        raise ForbiddenError("only a service administrator may act on a service administrator")


def keep_service_admin(user: users.User) -> None:
    """The service administrator is never deleted or forgotten, not even by itself: nobody
    could make another, and ``agentmem admin create-key`` needs its user."""
    if user.service_admin:
        raise ForbiddenError(
            "the service administrator cannot be deleted or forgotten: the deployment needs it",
            {"user_id": user.user_id},
        )


def command_router(parts: Parts) -> Router:
    router = Router()
    runner, throttle, work, password_cost = (
        parts.runner,
        parts.throttle,
        parts.work,
        parts.password_cost,
    )

    async def hash_in_thread(password: str) -> str:
        return await work.run(hash_password, password, password_cost)

    @router.handle(CreateOrg)
    async def create_org(request: Request[CreateOrg]) -> Result:
        authorize(request.caller, request.need, None)
        org_id = request.body.org_id or ids.new_id()

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            if request.body.org_id is not None:
                loader.choose(orgs.subject(org_id))
            org = await loader.load(orgs.subject(org_id), orgs.evolve)
            return orgs.create(org, request.body, org_id)

        return await runner.run(request, plan)

    @router.handle(RenameOrg)
    async def rename_org(request: Request[RenameOrg]) -> Result:
        org_id = request.body.org_id
        authorize(request.caller, request.need, org_id, hidden=missing_org(org_id))

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            org = await loader.load(orgs.subject(request.body.org_id), orgs.evolve)
            return orgs.rename(org, request.body)

        return await runner.run(request, plan)

    @router.handle(DeleteOrg)
    async def delete_org(request: Request[DeleteOrg]) -> Result:
        org_id = request.body.org_id
        authorize(request.caller, request.need, org_id, hidden=missing_org(org_id))
        admin = await find_admin(runner.log)
        if admin is not None and admin.org_id == org_id:
            # Its deletion would lock everyone out: the administrator's credentials die with it.
            raise ForbiddenError("the service's own organization cannot be deleted")

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            org = await loader.load(orgs.subject(request.body.org_id), orgs.evolve)
            return orgs.delete(org, request.body)

        return await runner.run(request, plan)

    @router.handle(RegisterUser)
    async def register_user(request: Request[RegisterUser]) -> Result:
        command = request.body
        authorize(request.caller, request.need, command.org_id, hidden=missing_org(command.org_id))
        email = normalize_email(command.email)
        user_id = command.user_id or ids.new_id()
        password_hash: list[str] = []  # hashed once, however many attempts

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            org = await loader.load(orgs.subject(command.org_id), orgs.evolve)
            orgs.require_live(org, command.org_id)
            await runner.new_subject(
                loader,
                "user",
                user_id,
                users.subject(command.org_id, user_id),
                users.evolve,
                chosen=command.user_id is not None,
            )
            reservation = await runner.load_reservation(loader, email)
            if reservation.state is not None:  # fail before spending a hash on it
                raise ConflictError(f"email {email} is already registered", {"email": email})
            if not password_hash:
                password_hash.append(await hash_in_thread(command.password))
            return users.register(
                command,
                email=email,
                reservation=reservation,
                user_id=user_id,
                password_hash=password_hash[0],
                command_id=command_id,
            )

        return await runner.run(request, plan)

    @router.handle(UpdateProfile)
    async def update_profile(request: Request[UpdateProfile]) -> Result:
        command = request.body
        new_email = normalize_email(command.email) if command.email else None

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            user = await runner.load_user(loader, command.user_id)
            check_user(request, request.need, user)
            new_reservation = old_reservation = None
            if user.state and new_email and new_email != user.state.email:
                new_reservation = await runner.load_reservation(loader, new_email)
                old_reservation = await loader.load(
                    subjects.email_reservation(user.state.email), users.evolve_reservation
                )
            return users.update_profile(
                user,
                command,
                new_email=new_email,
                new_reservation=new_reservation,
                old_reservation=old_reservation,
                command_id=command_id,
            )

        return await runner.run(request, plan)

    @router.handle(ChangePassword)
    async def change_password(request: Request[ChangePassword]) -> Result:
        command = request.body
        new_hash: list[str] = []
        checked: list[str] = []  # the hash the old password was checked against, once

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            user = await runner.load_user(loader, command.user_id)
            state = check_user(request, request.need, user)
            if not checked:
                # Guesses at the old password are throttled like logins: a stolen key
                # must not recover the password behind it.
                throttle.attempt(f"user:{state.user_id}", "wrong old passwords for this user")
                matches = await work.run(verify_password, command.old_password, state.password_hash)
                if not matches:
                    raise UnauthenticatedError("the old password is not right")
                throttle.succeeded(f"user:{state.user_id}")
                checked.append(state.password_hash)
            elif checked[0] != state.password_hash:
                raise ConflictError("the password changed while this command ran; retry it")
            if not new_hash:
                new_hash.append(await hash_in_thread(command.new_password))
            return users.change_password(user, command.expected_version, new_hash[0])

        return await runner.run(request, plan)

    @router.handle(SetRoles)
    async def set_roles(request: Request[SetRoles]) -> Result:
        async def plan(loader: Loader, command_id: str) -> list[Write]:
            user = await runner.load_user(loader, request.body.user_id)
            check_user(request, request.need, user)
            return users.set_roles(user, request.body)

        return await runner.run(request, plan)

    @router.handle(DeleteUser)
    async def delete_user(request: Request[DeleteUser]) -> Result:
        async def plan(loader: Loader, command_id: str) -> list[Write]:
            user = await runner.load_user(loader, request.body.user_id)
            state = check_user(request, request.need, user)
            keep_service_admin(state)
            reservation = await loader.load(
                subjects.email_reservation(state.email), users.evolve_reservation
            )
            return users.delete(user, request.body, reservation)

        result = await runner.run(request, plan)
        # The user's entities and relations go after them (``graph_scope``): sent again with
        # its command_id, a deletion cut short here finishes.
        subject = await runner.subject_of("user", request.body.user_id)
        org_id = subjects.parse(subject).org_id
        await delete_entities_of_scope(parts, request, org_id, request.body.user_id, None)
        return result

    return router
