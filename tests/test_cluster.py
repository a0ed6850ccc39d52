"""A real three-node NATS cluster: the event stream with three replicas survives the loss of a
node while AgentMem writes through it.

Three nats-server processes with JetStream on loopback form one cluster. The service creates
its stream with ``replicas=3`` and keeps a connection that lists all three nodes. A few
writers send commands continuously (create an org, register users, rename the org), each
with a client-chosen command id, retried with that same id whenever its outcome is unknown
(a timeout, ``unavailable``, no responders). Meanwhile one node is killed with SIGKILL: the
stream's leader in one variant, the node the service is connected to in the other. Writes
go on with two of three nodes (the quorum), the node is restarted and catches up. In the
end every acknowledged command is in the log exactly once, the tables hold its effect and
equal a fresh replay of the log, and the restarted node holds the whole stream again.

Two more: with two of three nodes down (no quorum) a command is refused as ``unavailable``
and stored nowhere, and its retry is stored once when a node returns; and a service asking
for another replica count than the stream has refuses to start and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, UnavailableError, Written, ids, subjects
from agentmem.config import Settings, StartupError
from agentmem.domain.aggregate import Write
from agentmem.embedded import server_binary
from agentmem.eventlog import CommitMeta, EventLog
from agentmem.events import OrgCreated, OrgRenamed
from agentmem.projections.orgs import ORGS
from agentmem.projections.users import USERS
from agentmem.service import Service
from tests.conftest import admin_key
from tests.realparts import (
    LogMessage,
    after_bootstrap,
    dump_store,
    eventually,
    read_log,
    replay_into,
    rows,
    wait_caught_up,
)
from tests.support import TEST_MASTER_KEY, TEST_PASSWORD_COST, free_port

pytestmark = pytest.mark.cluster

T = TypeVar("T")

WRITERS = 3
ACKED_BEFORE_KILL = 20
ACKED_WHILE_DOWN = 20  # acknowledged with one node of three down: the quorum carries on
ACKED_AFTER_RESTART = 10
REQUEST_TIMEOUT = 3.0
RETRY_DEADLINE = 40.0  # one command may be retried for this long at most
# Messages one command appends: a registration is the user and its email reservation.
MESSAGES_PER_COMMAND = {"create_org": 1, "register": 2, "rename": 1}


def free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


@dataclass
class Node:
    name: str
    port: int
    cluster_port: int
    http_port: int
    store_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class NatsCluster:
    """Three nats-servers with JetStream forming one cluster on loopback, each with its own
    config file and store dir; a test may kill and restart any node."""

    def __init__(self, root: Path, size: int = 3) -> None:
        ports = free_ports(3 * size)
        self.nodes = [
            Node(f"n{i + 1}", ports[3 * i], ports[3 * i + 1], ports[3 * i + 2], root / f"n{i + 1}")
            for i in range(size)
        ]
        routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes)
        for node in self.nodes:
            node.store_dir.mkdir(parents=True)
            # The default lazy fsync is fine here: SIGKILL kills a process, not the machine,
            # so the kernel still writes what the server had written. Power loss is what
            # sync_interval: always is for (docs/deploy.md).
            (node.store_dir / "nats.conf").write_text(
                f"server_name: {node.name}\n"
                f"listen: 127.0.0.1:{node.port}\n"
                f"http: 127.0.0.1:{node.http_port}\n"
                f'jetstream {{ store_dir: "{node.store_dir / "js"}" }}\n'
                "cluster {\n"
                "  name: agentmem-test\n"
                f"  listen: 127.0.0.1:{node.cluster_port}\n"
                f"  routes: [{routes}]\n"
                "}\n"
            )

    @property
    def urls(self) -> str:
        """Every node, the way ``--nats`` / ``AGENTMEM_NATS`` take them."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> Node:
        (found,) = [n for n in self.nodes if n.name == name]
        return found

    def node_at(self, port: int) -> Node:
        (found,) = [n for n in self.nodes if n.port == port]
        return found

    def start(self, node: Node) -> None:
        with open(node.store_dir / "server.log", "ab") as log:
            node.process = subprocess.Popen(
                [server_binary(), "-c", str(node.store_dir / "nats.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", node.port), 0.2),
            ):
                return
            if not node.running:
                break
            time.sleep(0.02)
        raise RuntimeError(f"nats-server {node.name} did not start: see {node.store_dir}")

    def kill(self, node: Node) -> None:
        assert node.process is not None
        assert node.running
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.running:
                assert node.process is not None
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait(10)

    def _jsz(self, node: Node, query: str = "") -> dict[str, Any]:
        url = f"http://127.0.0.1:{node.http_port}/jsz{query}"
        with urllib.request.urlopen(url, timeout=2) as reply:
            report: dict[str, Any] = json.load(reply)
        return report

    async def wait_meta_leader(self, timeout: float = 30.0) -> str:
        """Every running node knows the same JetStream meta leader (the cluster can create
        streams and place replicas)."""

        async def agreed() -> str | None:
            leaders = set()
            for node in self.nodes:
                if node.running:
                    meta = (await asyncio.to_thread(self._jsz, node)).get("meta_cluster") or {}
                    leaders.add(meta.get("leader") or "")
            return leaders.pop() if len(leaders) == 1 and "" not in leaders else None

        return await eventually(agreed, timeout, 0.1, "a JetStream meta leader")

    async def stored_on(self, node: Node) -> dict[str, Any] | None:
        """The event stream's state as ``node`` itself stores it (its own replica)."""
        report = await asyncio.to_thread(self._jsz, node, "?streams=true")
        for account in report.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                if stream["name"] == subjects.STREAM_NAME:
                    state: dict[str, Any] = stream["state"]
                    return state
        return None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nats_cluster = NatsCluster(tmp_path / "cluster")
    try:
        for node in nats_cluster.nodes:
            nats_cluster.start(node)
        yield nats_cluster
    finally:
        nats_cluster.stop_all()


async def quiet(exc: Exception) -> None:
    pass


async def connect(cluster: NatsCluster) -> NATS:
    """A client connection that lists every node, so it reconnects to a live one."""
    return await nats.connect(
        [node.url for node in cluster.nodes],
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        error_cb=quiet,
    )


async def stream_info(nc: NATS) -> dict[str, Any]:
    reply = await nc.request(f"$JS.API.STREAM.INFO.{subjects.STREAM_NAME}", b"", timeout=2)
    info: dict[str, Any] = json.loads(reply.data)
    assert "error" not in info, info
    return info


def settings_for(cluster: NatsCluster, data_dir: Path, store: str, replicas: int) -> Settings:
    settings = Settings()
    settings.nats_url = cluster.urls
    settings.data_dir = data_dir
    settings.store = store
    settings.replicas = replicas
    settings.password_cost = TEST_PASSWORD_COST
    settings.master_key = TEST_MASTER_KEY  # so that the test's replay opens what it seals
    return settings


@dataclass
class Sent:
    command_id: str
    kind: str  # create_org | register | rename
    org_id: str
    entity_id: str  # the org or the user the command is about
    value: str  # the org's name, or the user's email
    phase: str = ""  # when it was acknowledged: up, down (one node killed), restarted
    failures: int = 0
    written: Written | None = None


@dataclass
class Journal:
    sent: list[Sent] = field(default_factory=list)
    phase: str = "up"
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def acked(self, phase: str | None = None) -> int:
        return sum(1 for s in self.sent if s.written and (phase is None or s.phase == phase))

    async def send(self, sent: Sent, call: Callable[[], Awaitable[Written]]) -> Written:
        """Send until acknowledged, retrying with the same command id; bounded."""
        self.sent.append(sent)
        deadline = time.monotonic() + RETRY_DEADLINE
        while time.monotonic() < deadline:
            try:
                written = await call()
            except (UnavailableError, nats.errors.Error):
                sent.failures += 1
                await asyncio.sleep(0.1)
                continue
            sent.written, sent.phase = written, self.phase
            return written
        raise AssertionError(f"command {sent.command_id} never acknowledged: {sent}")


async def write(n: int, client: Client, journal: Journal) -> None:
    """One writer: its own org, then users registered into it and renames of it, one
    command at a time, until told to stop."""
    org_id = ids.new_id()
    await journal.send(
        Sent(f"w{n}-0", "create_org", org_id, org_id, f"org {n}"),
        partial(client.create_org, f"org {n}", org_id=org_id, command_id=f"w{n}-0"),
    )
    k = 0
    while not journal.stop.is_set():
        k += 1
        command_id = f"w{n}-{k}"
        if k % 3:
            user_id, email = ids.new_id(), f"w{n}-u{k}@example.com"
            call = partial(
                client.register_user,
                org_id,
                f"user {k}",
                email,
                "pass-123",
                user_id=user_id,
                command_id=command_id,
            )
            await journal.send(Sent(command_id, "register", org_id, user_id, email), call)
        else:
            name = f"org {n} v{k}"
            call = partial(client.rename_org, org_id, name, command_id=command_id)
            await journal.send(Sent(command_id, "rename", org_id, org_id, name), call)


async def wait_acked(journal: Journal, count: int, tasks: list[asyncio.Task[None]]) -> None:
    async def enough() -> bool:
        for task in tasks:
            if task.done():
                task.result()  # a writer that failed fails the test now
        return journal.acked() >= count

    # Generous: a lost leader is replaced after an election timeout of several seconds.
    await eventually(enough, 45, 0.02, f"{count} commands acknowledged")


async def settled(call: Callable[[], Awaitable[T]], what: str) -> T:
    """For a few seconds after a node rejoins, JetStream's API may time out or answer 503
    while the consumers' and the meta group's leaders settle: retry, bounded."""
    return await eventually(call, 30, 0.5, what)


async def caught_up(cluster: NatsCluster, node: Node, nc: NATS) -> bool:
    """``node`` stores the whole stream again, and the leader counts it as current."""
    info = await stream_info(nc)
    followers = info["cluster"].get("replicas") or []
    if len(followers) != 2 or not all(r.get("current") and not r.get("lag") for r in followers):
        return False
    own = await cluster.stored_on(node)
    state = info["state"]
    return own is not None and (own["last_seq"], own["messages"]) == (
        state["last_seq"],
        state["messages"],
    )


async def check_every_acked_command_once(journal: Journal, nc: NATS, service: Service) -> None:
    assert service.store is not None
    assert all(s.written for s in journal.sent), "every command acknowledged in the end"
    messages = after_bootstrap(await settled(partial(read_log, nc), "the whole log read"))
    per_command = Counter(m.command_id for m in messages)
    by_seq = {m.seq: m for m in messages}
    for sent in journal.sent:
        assert sent.written is not None
        assert per_command[sent.command_id] == MESSAGES_PER_COMMAND[sent.kind], sent
        assert by_seq[sent.written.seq].command_id == sent.command_id, sent
    assert len(per_command) == len(journal.sent), "nothing in the log that no writer sent"

    # The tables hold every acknowledged effect: each org has the name and version of the
    # last command on it, each user the email it was registered with.
    await wait_caught_up(nc, admin_key(service.settings.data_dir), timeout=45)
    live = await dump_store(service.store)
    orgs, users = rows(live, ORGS), rows(live, USERS)
    last_on: dict[str, Sent] = {}
    for sent in journal.sent:
        last_on[sent.entity_id] = sent
    for entity_id, sent in last_on.items():
        assert sent.written is not None
        if sent.kind == "register":
            row = users[entity_id]
            assert (row["org_id"], row["email"]) == (sent.org_id, sent.value), sent
        else:
            row = orgs[entity_id]
            assert (row["name"], row["version"]) == (sent.value, sent.written.version), sent
    registered = {s.entity_id for s in journal.sent if s.kind == "register"}
    assert registered <= users.keys()
    assert len(users) == len(registered) + 1, "the writers' users and the administrator"
    assert live["parked_events"] == []
    # Nothing applied twice or out of order: the tables equal a fresh replay of the log.
    attempts = itertools.count()

    async def replayed() -> dict[str, Any]:
        into = service.settings.data_dir / f"replayed-{next(attempts)}.db"
        return await replay_into(nc, into)

    assert await settled(replayed, "a replay of the log") == live


async def test_the_leaders_reads_hold_every_acknowledged_commit(cluster: NatsCluster) -> None:
    """Right after its acknowledgement a commit is in what the stream's leader reads, by
    subject and by sequence: what a decision made again, a projection's freshness and a
    retry's first outcome read (a replica's direct get may not have applied it yet)."""
    await cluster.wait_meta_leader()
    nc = await connect(cluster)
    try:
        log = EventLog(nc)
        await log.ensure_stream(replicas=3)
        subject = subjects.event("o1", "org", "o1")
        at, missed_by_direct = 0, 0
        for n in range(200):
            event = OrgCreated("o1", "n0") if n == 0 else OrgRenamed("o1", f"n{n}")
            at = (
                await log.append([Write(subject, at, [event])], CommitMeta(f"c{n}", "t"))
            ).last_seq
            read = await log.read_subject(subject, after=at - 1, leader=True)
            assert [c.seq for c in read] == [at], n
            head = await log.next_head(subject, at - 1, leader=True)
            assert head is not None, n
            assert head.seq == at, n
            got = await log.get(at, leader=True)
            assert got is not None, n
            assert got.command_id == f"c{n}", n
            missed_by_direct += await log.next_head(subject, at - 1) is None
        print(f"\ndirect gets that missed a commit just acknowledged: {missed_by_direct} of 200")
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("victim", "store_kind"),
    [("stream_leader", "postgres"), ("service_node", "sqlite")],
    indirect=["store_kind"],
)
async def test_writes_survive_killing_and_restarting_a_node(
    cluster: NatsCluster, tmp_path: Path, store_url: str, victim: str
) -> None:
    await cluster.wait_meta_leader()
    service = Service(settings_for(cluster, tmp_path, store_url, replicas=3))
    await service.start()
    nc = await connect(cluster)
    try:
        info = await stream_info(nc)
        assert info["config"]["num_replicas"] == 3
        assert len(info["cluster"]["replicas"]) == 2, "a leader and two followers"

        client = Client(nc, admin_key(tmp_path), timeout=REQUEST_TIMEOUT)
        journal = Journal()
        tasks = [asyncio.create_task(write(n, client, journal)) for n in range(WRITERS)]
        try:
            await wait_acked(journal, ACKED_BEFORE_KILL, tasks)
            if victim == "stream_leader":
                node = cluster.node((await stream_info(nc))["cluster"]["leader"])
            else:
                assert service.nc is not None
                assert service.nc.connected_url is not None
                port = service.nc.connected_url.port
                assert port is not None
                node = cluster.node_at(port)
            cluster.kill(node)
            journal.phase = "down"
            await wait_acked(journal, journal.acked() + ACKED_WHILE_DOWN, tasks)

            cluster.start(node)
            journal.phase = "restarted"
            await wait_acked(journal, journal.acked() + ACKED_AFTER_RESTART, tasks)
        finally:
            journal.stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), RETRY_DEADLINE + 15)

        # Commands in flight when the node died were retried with their command id (how
        # many depends on timing: a client that was not connected to the dead node may only
        # have waited); writes went on while it was down.
        assert journal.acked("down") >= ACKED_WHILE_DOWN
        # The restarted node caught up: all three replicas hold the whole stream again.
        await eventually(partial(caught_up, cluster, node, nc), 30, 0.2, f"{node.name} caught up")
        await check_every_acked_command_once(journal, nc, service)

        # Read-your-writes through the cluster: the last registration, with after_seq.
        last = next(s for s in reversed(journal.sent) if s.kind == "register")
        got = await client.get_user(last.entity_id, after_seq=client.last_seq)
        assert got.email == last.value
    finally:
        await nc.close()
        await service.stop()


async def test_a_service_asking_for_another_replica_count_refuses_to_start(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    await cluster.wait_meta_leader()
    first = Service(settings_for(cluster, tmp_path, str(tmp_path / "a.db"), replicas=3))
    await first.start()
    await first.stop()

    second = Service(settings_for(cluster, tmp_path, str(tmp_path / "b.db"), replicas=1))
    with pytest.raises(StartupError, match="num_replicas is 3, AgentMem needs 1"):
        await second.start()
    await second.stop()

    nc = await connect(cluster)
    try:
        assert (await stream_info(nc))["config"]["num_replicas"] == 3, "left as it was"
    finally:
        await nc.close()


async def test_without_a_quorum_commands_answer_unavailable_and_a_retry_is_stored_once(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    await cluster.wait_meta_leader()
    service = Service(settings_for(cluster, tmp_path, str(tmp_path / "a.db"), replicas=3))
    await service.start()
    nc = await connect(cluster)
    try:
        client = Client(nc, admin_key(tmp_path), timeout=REQUEST_TIMEOUT * 3)
        org_id = ids.new_id()
        await client.create_org("before", org_id=org_id, command_id="before")
        # Two of three nodes down (not the one the service uses): no quorum, no stream
        # leader. Commands are refused as unavailable, and the service stays up.
        assert service.nc is not None
        assert service.nc.connected_url is not None
        others = [n for n in cluster.nodes if n.port != service.nc.connected_url.port]
        for node in others:
            cluster.kill(node)
        new_org = ids.new_id()
        for _ in range(2):
            with pytest.raises(UnavailableError):
                await client.create_org("during", org_id=new_org, command_id="during")

        # One node back is a quorum again: the same command, retried, is stored once.
        cluster.start(others[0])

        async def acknowledged() -> Written:
            return await client.create_org("during", org_id=new_org, command_id="during")

        written = await eventually(acknowledged, 30, 0.2, "the retried command acknowledged")
        cluster.start(others[1])
        messages = await settled(partial(read_log, nc), "the whole log read")
        assert [m.command_id for m in messages].count("during") == 1
        assert by_seq_command(messages, written.seq) == "during"
        got = await settled(
            partial(client.get_org, new_org, after_seq=written.seq), "the org in the table"
        )
        assert (got.name, got.version) == ("during", written.version)
    finally:
        await nc.close()
        await service.stop()


def by_seq_command(messages: list[LogMessage], seq: int) -> str:
    (message,) = [m for m in messages if m.seq == seq]
    return message.command_id
