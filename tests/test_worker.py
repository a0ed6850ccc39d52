"""Projection worker semantics, on a real nats-server and each store (``STORES``).

The chosen behaviour for an event a projection cannot apply: it is **parked and skipped**.

- A message whose body is not a commit, or whose event type this code does not know, is
  parked by the worker (``parked_events``: projection, seq, subject, error) before it reaches
  the store.
- A commit whose row operations the database refuses (a unique index, say) is parked by the
  store: the batch is retried one item at a time, each in a savepoint, and only the refused
  item is left out; the rest of the batch commits with the checkpoint.
- Either way the checkpoint moves past it, so it never stalls that projection (nor any
  other), and it is not retried on its own: the message stays in the log, and the parked row
  names it for an operator, who fixes the code or the data and replays.
- ``agentmem status`` and ``agentmem.sys.status`` show the parked count per projection and the
  parked events themselves.

And the exactly-once half: a worker skips every message at or below its checkpoint, however
its consumer came to deliver it.
"""

from __future__ import annotations

import asyncio
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentmem import Client, UnavailableError, ids, subjects
from agentmem.consumers.freshness import Freshness
from agentmem.consumers.system import collect_status
from agentmem.domain.aggregate import Write
from agentmem.eventlog import CommitMeta, EventLog
from agentmem.events import OrgCreated, OrgRenamed, UserRegistered, UserRolesSet, encode_commit
from agentmem.keys import KeyRing, MasterKeys
from agentmem.projections import ALL
from agentmem.projections import leader as leader_module
from agentmem.projections.board import CheckpointBoard
from agentmem.projections.leader import ProjectionLeader
from agentmem.projections.migrations import MIGRATIONS
from agentmem.projections.orgs import ORGS, OrgsProjection
from agentmem.projections.users import USERS, UsersProjection
from agentmem.projections.worker import ProjectionWorker, durable_name
from agentmem.service import Service
from agentmem.store import Parked, ProjectionBatch, Store, open_store
from agentmem.store.leases import OwnedStore
from tests.realparts import (
    TEST_MASTER_KEY,
    bootstrap_batch,
    eventually,
    keys_of,
    read_log,
    rows,
    wait_caught_up,
)
from tests.support import NatsServer

STORES = ("sqlite", "postgres")

# The start of the error a store parks a row with when the unique index on users.email
# refuses it: the driver's own exception and message, so each store words it its own way.
EMAIL_TAKEN = {
    "sqlite": "IntegrityError: UNIQUE constraint failed: users.email",
    "postgres": "UniqueViolationError: duplicate key value violates unique constraint"
    ' "users_email"',
}


@pytest.fixture
async def log(nc: NATS) -> EventLog:
    event_log = EventLog(nc)
    await event_log.ensure_stream()
    return event_log


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    await opened.migrate(MIGRATIONS)
    yield opened
    await opened.close()


class RewoundWorker(ProjectionWorker):
    """A worker whose consumer starts at sequence 1 whatever the checkpoint: what a consumer
    that redelivers already-applied messages looks like (an ack lost in a crash between
    the commit and the ack, or a consumer created before the checkpoint moved)."""

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        checkpoint, self.checkpoint = self.checkpoint, 0
        try:
            return await super()._subscribe()
        finally:
            self.checkpoint = checkpoint


async def create_orgs(log: EventLog, count: int) -> list[int]:
    seqs = []
    for n in range(count):
        org_id = f"org{n}"
        write = Write(subjects.event(org_id, "org", org_id), 0, [OrgCreated(org_id, f"n{n}")])
        seqs += (await log.append([write], CommitMeta(f"create-{n}", "org.create"))).seqs
    return seqs


async def run_worker(worker: ProjectionWorker) -> None:
    await asyncio.wait_for(worker.run(until_caught_up=True), 30)


async def test_messages_at_or_below_the_checkpoint_are_skipped(
    nc: NATS, log: EventLog, store: Store
) -> None:
    seqs = await create_orgs(log, 6)
    # The checkpoint says 1..3 were applied, though their rows are not there: if the worker
    # applied anything at or below it, those rows would appear.
    await store.apply(ProjectionBatch(projection="orgs", checkpoint=seqs[2]))

    worker = ProjectionWorker(nc, store, OrgsProjection(), consumer="test-orgs")
    await run_worker(worker)
    assert [row[0] for row in await store.dump(ORGS)] == ["org3", "org4", "org5"]
    assert worker.applied == 3
    assert await store.checkpoint("orgs") == seqs[-1]


async def test_a_consumer_that_redelivers_applied_messages_changes_nothing(
    nc: NATS, log: EventLog, store: Store
) -> None:
    seqs = await create_orgs(log, 6)
    await store.apply(ProjectionBatch(projection="orgs", checkpoint=seqs[2]))

    # The consumer delivers 1..6; the worker must skip 1..3 itself.
    rewound = RewoundWorker(nc, store, OrgsProjection(), consumer="test-orgs-rewound")
    await run_worker(rewound)
    assert [row[0] for row in await store.dump(ORGS)] == ["org3", "org4", "org5"]
    assert rewound.applied == 3

    # Everything applied, then the whole log delivered again: nothing is applied twice.
    rename = Write(subjects.event("org4", "org", "org4"), seqs[4], [OrgRenamed("org4", "renamed")])
    renamed_at = (await log.append([rename], CommitMeta("rename", "org.rename"))).last_seq
    worker = ProjectionWorker(nc, store, OrgsProjection(), consumer="test-orgs")
    await run_worker(worker)
    assert worker.applied == 1
    before = await store.dump(ORGS)
    org4 = next(row for row in before if row[0] == "org4")
    assert (org4[1], org4[4]) == ("renamed", renamed_at)

    again = RewoundWorker(nc, store, OrgsProjection(), consumer="test-orgs-again")
    await run_worker(again)
    assert again.applied == 0
    assert await store.dump(ORGS) == before
    assert await store.checkpoint("orgs") == renamed_at


async def test_undecodable_events_are_parked_and_skipped_visible_in_status(
    service: Service, client: Client, nc: NATS, admin_token: str
) -> None:
    assert service.store is not None
    org = (await client.create_org("Acme")).fields["org_id"]
    ann = await client.register_user(org, "Ann", "ann@example.com", "password-1")
    ann_id = ann.fields["user_id"]

    js = nc.jetstream()
    not_a_commit = subjects.event(org, "user", ids.new_id())
    unknown_type = subjects.event(org, "user", ids.new_id())
    bad_org = ids.new_id()
    not_an_org_commit = subjects.event(bad_org, "org", bad_org)
    bad1 = (await js.publish(not_a_commit, b"\x00 this is not a commit {")).seq
    body = {"events": [{"type": "user.teleported", "user_id": "x", "to": "Mars"}]}
    bad2 = (await js.publish(unknown_type, msgspec.json.encode(body))).seq
    bad3 = (await js.publish(not_an_org_commit, b'{"events": [{"type": "org.created"}]}')).seq

    # Valid commits after them, on both projections.
    bob = await client.register_user(org, "Bob", "bob@example.com", "password-2")
    await client.set_roles(ann_id, ["admin"])
    renamed = await client.rename_org(org, "Acme 2")
    report = await wait_caught_up(nc, admin_token)

    assert (await client.get_user(bob.fields["user_id"])).name == "Bob"
    assert (await client.get_user(ann_id)).roles == ["admin"]
    assert (await client.get_org(org)).version == renamed.seq

    # Parked, with why, and the checkpoints went past them.
    parked = await service.store.parked()
    # Every projection that reads org events parks the bad org commit (the users projection,
    # say: an org's deletion removes its users).
    org_readers = [p.name for p in ALL if subjects.events_of("org") in p.filter_subjects]
    assert {"orgs", "users"} <= set(org_readers)
    assert [(p.projection, p.seq, p.subject) for p in parked] == sorted(
        [
            ("users", bad1, not_a_commit),
            ("users", bad2, unknown_type),
            *((name, bad3, not_an_org_commit) for name in org_readers),
        ]
    )
    errors = {(p.projection, p.seq): p.error for p in parked}
    assert "DecodeError" in errors["users", bad1]
    assert "user.teleported" in errors["users", bad2]
    assert report["projections"]["users"]["checkpoint"] > bad2
    assert report["projections"]["orgs"]["checkpoint"] > bad3
    assert report["projections"]["users"]["parked"] == 3
    assert report["projections"]["orgs"]["parked"] == 1
    assert {(p["projection"], p["seq"], p["subject"]) for p in report["parked"]} == {
        (p.projection, p.seq, p.subject) for p in parked
    }
    assert all(p["error"] for p in report["parked"])

    # Not dropped: the messages are still in the log, byte for byte.
    assert (await js.get_msg(subjects.STREAM_NAME, bad1)).data == b"\x00 this is not a commit {"
    assert {m.seq for m in await read_log(nc)} >= {bad1, bad2, bad3}

    # And not applied: the tables hold no trace of them (beside the two users, only the
    # service administrator that the first start registered).
    messages = await read_log(nc)
    admin_user = {
        subjects.parse(m.subject).aggregate_id
        for m in bootstrap_batch(messages)
        if m.aggregate == "user"
    }
    assert len(admin_user) == 1
    users = await service.store.fetch_all("SELECT user_id FROM users")
    assert {r["user_id"] for r in users} == {ann_id, bob.fields["user_id"], *admin_user}


def registered(seq_user: str, email: str, org: str = "o1") -> Write:
    event = UserRegistered(
        user_id=seq_user, org_id=org, name=seq_user, email=email, password_hash="x"
    )
    return Write(subjects.event(org, "user", seq_user), 0, [event])


async def test_a_row_the_database_refuses_is_parked_and_the_rest_of_its_batch_commits(
    nc: NATS, log: EventLog, store: Store, store_kind: str
) -> None:
    async def append(write: Write, command_id: str) -> int:
        return (await log.append([write], CommitMeta(command_id, "user.register"))).last_seq

    # The command side would never let u3 take u1's email; written raw, it is in the log.
    u1 = await append(registered("u1", "dup@example.com"), "c1")
    await append(registered("u2", "two@example.com"), "c2")
    u3 = await append(registered("u3", "dup@example.com"), "c3")
    await append(registered("u4", "four@example.com"), "c4")
    roles = Write(subjects.event("o1", "user", "u2"), u1 + 1, [UserRolesSet("u2", ("admin",))])
    last = await append(roles, "c5")

    progress: list[tuple[int, int]] = []
    worker = ProjectionWorker(nc, store, UsersProjection(), consumer="test-users")
    await asyncio.wait_for(
        worker.run(until_caught_up=True, on_progress=lambda d, p: progress.append((d, p))), 30
    )
    assert progress == [(4, 0)], "all five commits came in one batch"

    users = rows({USERS.name: await store.dump(USERS)}, USERS)
    assert sorted(users) == ["u1", "u2", "u4"]
    assert users["u1"]["email"] == "dup@example.com"
    assert users["u2"]["roles"] == '["admin"]'
    assert users["u2"]["version"] == last
    parked = await store.parked("users")
    assert [(p.seq, p.subject) for p in parked] == [(u3, subjects.event("o1", "user", "u3"))]
    assert parked[0].error.startswith(EMAIL_TAKEN[store_kind])
    assert await store.checkpoint("users") == last

    report = await collect_status(nc, store)
    assert report["projections"]["users"]["parked"] == 1
    assert [p["seq"] for p in report["parked"]] == [u3]

    # A later worker does not retry it: the checkpoint is past it.
    again = ProjectionWorker(nc, store, UsersProjection(), consumer="test-users")
    await run_worker(again)
    assert again.applied == 0
    assert len(await store.parked("users")) == 1


async def test_status_counts_as_lag_what_a_reset_under_the_consumer_took_back(
    nc: NATS, log: EventLog, store: Store
) -> None:
    """A replay killed midway (or a restored store) leaves the tables behind the consumer's
    acks: status said lag 0, "up to date", though the tables held part of the log."""
    seqs = await create_orgs(log, 5)
    await run_worker(ProjectionWorker(nc, store, OrgsProjection()))
    report = await collect_status(nc, store)
    assert report["projections"]["orgs"]["checkpoint"] == seqs[-1]
    assert report["projections"]["orgs"]["lag"] == 0
    await store.reset("orgs", OrgsProjection().tables)  # the replay's first step
    await store.apply(ProjectionBatch(projection="orgs", checkpoint=seqs[1]))  # then 2 of 5
    report = await collect_status(nc, store)
    assert report["projections"]["orgs"]["checkpoint"] == seqs[1]
    assert report["projections"]["orgs"]["lag"] == seqs[-1] - seqs[1]
    # The next worker starts again at the checkpoint, and the lag is gone once it is done.
    await run_worker(ProjectionWorker(nc, store, OrgsProjection()))
    assert (await collect_status(nc, store))["projections"]["orgs"]["lag"] == 0


class KeysThatTimeOutOnce(KeyRing):
    """The deployment's data keys, whose bucket does not answer the first read (a node
    down, a leader being elected)."""

    timed_out = False

    async def resolve(self, wanted: list[tuple[str, str]]) -> None:
        if not self.timed_out:
            self.timed_out = True
            raise UnavailableError("JetStream did not answer STREAM.MSG.GET.KV_AGENTMEM_KEYS")
        await super().resolve(wanted)


async def test_a_key_bucket_that_does_not_answer_fails_the_batch_and_parks_nothing(
    nc: NATS, store: Store
) -> None:
    """A sealed commit whose key could not be read for a moment is applied once the bucket
    answers, not parked (a fault storm found acknowledged memories missing from reads)."""
    writer = await keys_of(nc)  # makes the bucket, as a service's start does
    sealed_log = EventLog(nc, keys=writer)
    await sealed_log.ensure_stream()
    try:
        written = [registered("u1", "one@example.com")]
        last = (await sealed_log.append(written, CommitMeta("c1", "user.register"))).last_seq
    finally:
        await writer.stop()
    keys = KeysThatTimeOutOnce(nc, MasterKeys.parse(TEST_MASTER_KEY))
    worker = ProjectionWorker(nc, store, UsersProjection(), consumer="test-users", keys=keys)
    with pytest.raises(UnavailableError):
        await run_worker(worker)
    assert await store.checkpoint("users") == 0
    again = ProjectionWorker(nc, store, UsersProjection(), consumer="test-users", keys=keys)
    await run_worker(again)
    users = rows({USERS.name: await store.dump(USERS)}, USERS)
    assert users["u1"]["email"] == "one@example.com"
    assert await store.parked("users") == []
    assert await store.checkpoint("users") == last


async def test_a_parked_event_does_not_stall_the_live_worker(
    service: Service, client: Client, nc: NATS, admin_token: str, store_kind: str
) -> None:
    """The same refusal through the running service: later commands still take effect."""
    assert service.store is not None
    org = (await client.create_org("Acme")).fields["org_id"]
    ann = await client.register_user(org, "Ann", "ann@example.com", "password-1")
    await wait_caught_up(nc, admin_token)

    intruder = ids.new_id()
    event = UserRegistered(
        user_id=intruder, org_id=org, name="Eve", email="ann@example.com", password_hash="x"
    )
    subject = subjects.event(org, "user", intruder)
    bad = (await nc.jetstream().publish(subject, encode_commit([event]))).seq
    later = await client.register_user(org, "Cy", "cy@example.com", "password-3")

    async def cy_is_there() -> bool:
        return (await client.get_user(later.fields["user_id"])).name == "Cy"

    await eventually(cy_is_there, what="the user registered after the refused one")
    report = await wait_caught_up(nc, admin_token)
    assert report["projections"]["users"]["parked"] == 1
    assert [(p["seq"], p["subject"]) for p in report["parked"]] == [(bad, subject)]
    assert report["parked"][0]["error"].startswith(EMAIL_TAKEN[store_kind])
    assert (await client.get_user(ann.fields["user_id"])).name == "Ann"


async def test_a_query_waits_for_a_worker_that_has_not_subscribed_yet(
    nc: NATS, log: EventLog, store: Store
) -> None:
    """Right after a start (or while a worker starts again) its consumer does not exist: a
    read-your-writes wait keeps waiting for the checkpoint instead of failing on that."""
    (seq,) = await create_orgs(log, 1)
    freshness = Freshness(nc, store, CheckpointBoard(), max_wait=5)
    waiting = asyncio.create_task(freshness.wait("orgs", seq))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await store.apply(ProjectionBatch(projection="orgs", checkpoint=seq))
    assert await asyncio.wait_for(waiting, 5) == seq


async def test_a_late_ack_from_an_old_holder_does_not_end_a_wait_early(
    nc: NATS, log: EventLog, store: Store
) -> None:
    """Another process's worker (an old lease holder that has not noticed it lost the lease,
    or the new holder before its commit) acked everything on the projection's durable
    consumer, but the store's checkpoint has not moved: a read-your-writes wait must go on
    waiting for the checkpoint, not count the projection as caught up (the consumer's
    state is not the tables')."""
    seqs = await create_orgs(log, 3)
    js = nc.jetstream()
    config = ConsumerConfig(
        durable_name=durable_name("orgs"),
        filter_subjects=OrgsProjection().filter_subjects,
        ack_policy=AckPolicy.ALL,
        deliver_policy=DeliverPolicy.ALL,
    )
    await js.add_consumer(subjects.STREAM_NAME, config)
    old_holder = await js.pull_subscribe_bind(durable_name("orgs"), subjects.STREAM_NAME)
    delivered = await old_holder.fetch(len(seqs), timeout=5)
    assert [m.metadata.sequence.stream for m in delivered] == seqs
    await delivered[-1].ack_sync()  # AckPolicy.ALL: the whole batch, as a worker acks
    info = await js.consumer_info(subjects.STREAM_NAME, durable_name("orgs"))
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    assert await store.checkpoint("orgs") == 0

    freshness = Freshness(nc, store, CheckpointBoard(), max_wait=1)
    with pytest.raises(UnavailableError, match="has not reached"):
        await freshness.wait("orgs", seqs[-1])
    # Once the store has it, the same wait ends at once.
    await store.apply(ProjectionBatch(projection="orgs", checkpoint=seqs[-1]))
    assert await freshness.wait("orgs", seqs[-1]) == seqs[-1]
    # An event the projection does not read, after its last one, needs nothing more.
    user = registered("u1", "u1@example.com", org="org0")
    after = (await log.append([user], CommitMeta("u1", "user.register"))).last_seq
    assert await freshness.wait("orgs", after) == after


class CountedFreshness(Freshness):
    """A freshness check that tells when it has asked the log (its consumer and the stream)
    twice: by then it has looked at the consumer after the batch was delivered."""

    def __init__(self, nc: NATS, store: Store, board: CheckpointBoard) -> None:
        super().__init__(nc, store, board, max_wait=10)
        self.asked = 0
        self.asked_twice = asyncio.Event()

    async def _log_position(self, projection: str) -> tuple[int | None, int]:
        position = await super()._log_position(projection)
        self.asked += 1
        if self.asked >= 2:
            self.asked_twice.set()
        return position


@pytest.mark.parametrize(
    "asker",
    [
        "a process without the worker, after an event of the projection",
        "the worker's process, after an event the projection does not read",
    ],
)
async def test_a_wait_for_a_batch_does_not_end_before_the_batch_is_committed(
    nc: NATS, log: EventLog, store: Store, monkeypatch: pytest.MonkeyPatch, asker: str
) -> None:
    """The batch is acked only after the store committed it, so while ``apply`` is held
    the consumer still has the batch awaiting its ack, and nothing tells a waiting query
    that the projection has caught up: not the checkpoint, not the consumer."""
    entered, gate = asyncio.Event(), asyncio.Event()
    apply = store.apply

    async def held_apply(batch: ProjectionBatch) -> list[Parked]:
        entered.set()
        await gate.wait()
        return await apply(batch)

    monkeypatch.setattr(store, "apply", held_apply)
    board = CheckpointBoard()
    worker = ProjectionWorker(nc, store, OrgsProjection(), board=board)
    running = asyncio.create_task(worker.run())
    try:
        (org_seq,) = await create_orgs(log, 1)
        await asyncio.wait_for(entered.wait(), 10)
        if asker.startswith("the worker's process"):
            freshness = CountedFreshness(nc, store, board)
            user = registered("u1", "u1@example.com", org="org0")
            after = (await log.append([user], CommitMeta("u1", "user.register"))).last_seq
        else:
            freshness = CountedFreshness(nc, store, CheckpointBoard())
            after = org_seq
        waiting = asyncio.create_task(freshness.wait("orgs", after))
        asked_twice = asyncio.create_task(freshness.asked_twice.wait())
        await asyncio.wait([waiting, asked_twice], timeout=10, return_when=FIRST_COMPLETED)
        asked_twice.cancel()  # done by now, or no longer waited for
        assert not waiting.done(), f"the wait ended with the batch not committed: {waiting}"
        assert asked_twice.done(), "the wait did not ask the log twice within 10 s"
        assert await store.checkpoint("orgs") == 0

        gate.set()
        assert await asyncio.wait_for(waiting, 10) == after
        assert [r[0] for r in await store.dump(ORGS)] == ["org0"]
        assert await store.checkpoint("orgs") == org_seq
    finally:
        gate.set()
        worker.stop()
        await asyncio.wait_for(running, 10)


class _ShortLived:
    """A leased worker that runs ``lasts`` seconds, then fails: one stuck on one bad input
    after doing the rest of its work each time (an ingestion partition's)."""

    def __init__(self, lasts: float) -> None:
        self.lasts = lasts
        self.last_error: str | None = None

    async def run(self) -> None:
        await asyncio.sleep(self.lasts)
        raise RuntimeError("stuck on one command")

    def stop(self) -> None:
        pass


@pytest.mark.parametrize(("lasts", "reported"), [(0.2, True), (1.0, False)])
async def test_failing_is_failures_with_no_steady_run_between(
    monkeypatch: pytest.MonkeyPatch, lasts: float, reported: bool
) -> None:
    """Work done between failures does not make a worker well: runs shorter than
    ``STEADY_S`` that keep ending in a failure are reported; runs longer than it are not."""
    monkeypatch.setattr(leader_module, "RETRY_S", 0.05)
    monkeypatch.setattr(leader_module, "STEADY_S", 0.6)
    leader = ProjectionLeader(
        "stuck", lambda: _ShortLived(lasts), OwnedStore(), CheckpointBoard(), poll=0.05, total=1
    )
    running = asyncio.create_task(leader.run())
    seen: set[bool] = set()
    try:
        for _ in range(int(6 * lasts / 0.05) + 40):  # several runs' worth of looks
            seen.add(leader.failing is not None)
            await asyncio.sleep(0.05)
    finally:
        leader.stop()
        await asyncio.wait_for(running, 15)
    assert (True in seen) is reported, (leader.failures, seen)


async def test_a_worker_that_keeps_failing_is_reported_until_it_runs_steadily(
    nc: NATS, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its leader restarts it all the same; ``failing`` (which status and health report)
    names the last error after ``FAILING_AFTER`` failures in a row, and clears once the
    worker has kept running for ``STEADY_S``. Here it fails for real: its stream does not
    exist yet."""
    monkeypatch.setattr(leader_module, "RETRY_S", 0.05)
    monkeypatch.setattr(leader_module, "STEADY_S", 0.5)
    board = CheckpointBoard()

    def make_worker() -> ProjectionWorker:
        return ProjectionWorker(nc, store, OrgsProjection(), board, consumer="test-failing")

    leader = ProjectionLeader("orgs", make_worker, OwnedStore(), board, poll=0.05, total=1)
    running = asyncio.create_task(leader.run())
    try:

        async def failing() -> str | None:
            return leader.failing

        error = await eventually(failing, 15, 0.05, "the leader reporting its failing worker")
        assert error == "NotFoundError()"  # nats-py's, for the stream
        assert leader.failures >= leader_module.FAILING_AFTER
        log = EventLog(nc)
        await log.ensure_stream()
        await create_orgs(log, 1)

        async def working() -> bool:
            return leader.failing is None and await store.checkpoint("orgs") > 0

        await eventually(working, 15, 0.05, "the worker applying, no longer reported")
        assert leader.failures == 0
    finally:
        leader.stop()
        await asyncio.wait_for(running, 15)


class _LateBatch:
    """A leased worker whose batch in hand commits after it was told to stop, moving the
    board on (as ``ProjectionWorker._apply`` does) before it returns."""

    def __init__(self, board: CheckpointBoard) -> None:
        self.board = board
        self.last_error: str | None = None
        self._stop = asyncio.Event()

    async def run(self) -> None:
        self.board.advance("late", 10)
        await self._stop.wait()
        await asyncio.sleep(0.05)  # the batch's commit
        self.board.advance("late", 11)

    def stop(self) -> None:
        self._stop.set()


async def test_a_stopped_worker_leaves_no_checkpoint_on_the_board() -> None:
    """Once this process runs a projection no more, its reads go to the store's checkpoint:
    a batch that finished after the stop put the projection back on the board, and every
    read here with a later `after_seq` answered `unavailable` for good (the fault storm)."""
    board = CheckpointBoard()
    leader = ProjectionLeader("late", lambda: _LateBatch(board), OwnedStore(), board, poll=0.05)
    running = asyncio.create_task(leader.run())
    await asyncio.wait_for(leader.first_look.wait(), 5)
    await asyncio.sleep(0.05)
    assert board.has("late")
    leader.stop()
    await asyncio.wait_for(running, 5)
    assert not board.has("late")


async def test_a_consumer_a_crash_left_half_on_disk_does_not_skip_commits(
    tmp_path: Path,
) -> None:
    """A kill -9 of nats-server while a worker remade its consumer left the consumer's
    directory without meta.sum: nats-server skipped it at recovery but kept it on disk, so
    the worker's delete found nothing and its new consumer (to start at checkpoint + 1)
    took the old one's delivered sequence: the commits between were skipped, and acked
    away by the first ack, nothing parked (a fault storm lost 211 memories from the graph
    projection so). The worker now makes such a consumer again."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    store = await open_store(str(tmp_path / "agentmem.db"))
    await store.migrate(MIGRATIONS)
    try:
        nc = await nats.connect(server.url)
        await EventLog(nc).ensure_stream()
        seqs = await create_orgs(EventLog(nc), 10)
        await store.apply(ProjectionBatch(projection="orgs", checkpoint=seqs[2]))
        # Delivered the rest from its checkpoint, then its process died before applying.
        crashed = ProjectionWorker(nc, store, OrgsProjection())
        crashed.checkpoint = seqs[2]
        assert len(await (await crashed._subscribe()).next_batch()) == 7
        await asyncio.sleep(0.3)
        await nc.close()
        server.kill()
        consumers = tmp_path / "nats" / "jetstream" / "$G" / "streams" / subjects.STREAM_NAME
        (consumers / "obs" / durable_name("orgs") / "meta.sum").unlink()
        server.start()

        nc = await nats.connect(server.url)
        late = Write(subjects.event("late", "org", "late"), 0, [OrgCreated("late", "late")])
        last = (await EventLog(nc).append([late], CommitMeta("create-late", "org.create"))).last_seq
        await run_worker(ProjectionWorker(nc, store, OrgsProjection()))
        await nc.close()
        assert await store.checkpoint("orgs") == last
        names = sorted(row[0] for row in await store.dump(ORGS))
        assert names == sorted([f"org{n}" for n in range(3, 10)] + ["late"])
    finally:
        await store.close()
        server.stop()
