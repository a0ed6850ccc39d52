"""Crashes under load: SIGKILL the service, or the nats-server, while commands are in flight
and projections are applying; then nothing acknowledged is lost, nothing is applied twice,
and every command is in the log exactly once.

A few concurrent clients, each on its own NATS connection, send a steady stream of commands
(register users, rename their org, set roles) on entities only they touch, one at a time.
Each command has a client-chosen id; when its outcome is unknown (no answer, no responders)
the client retries it with the same id until it is acknowledged, as a real client should.
The journal records every command, when it was acknowledged (before or after the crash) and
what the acknowledgement said.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, UnavailableError, Written, subjects
from agentmem.auth import tokens
from agentmem.projections.orgs import ORGS
from agentmem.projections.users import USERS
from tests.realparts import (
    after_bootstrap,
    bootstrap_batch,
    dump_file,
    eventually,
    read_log,
    replay_into,
    rows,
    wait_caught_up,
)
from tests.support import NatsServer, ServiceProcess

pytestmark = pytest.mark.slow
STORES = ("sqlite", "postgres")

CLIENTS = 4
ACKED_BEFORE_CRASH = 120  # commands acknowledged before the crash
ACKED_AFTER_RESTART = 40  # and after it, before the clients stop
REQUEST_TIMEOUT = 2.0
RETRY_DEADLINE = 45.0  # one command may be retried for this long at most
MAX_COMMANDS_PER_CLIENT = 2000
ROLES = [["member"], ["admin"], ["readonly"], ["admin", "member"]]
# Messages one command appends: a registration is the user and its email reservation.
MESSAGES_PER_COMMAND = {"create_org": 1, "register": 2, "rename": 1, "set_roles": 1}


async def quiet(exc: Exception) -> None:
    pass


async def connect(url: str) -> NATS:
    return await nats.connect(
        url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, error_cb=quiet
    )


@dataclass
class Sent:
    client: int
    command_id: str
    kind: str
    target: str  # the client's own name for the org or user the command is about
    value: Any
    failures: int = 0
    written: Written | None = None
    acked_after_crash: bool = False


@dataclass
class Journal:
    sent: list[Sent] = field(default_factory=list)
    crashed: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def acked(self) -> int:
        return sum(1 for s in self.sent if s.written is not None)

    @property
    def failures_after_crash(self) -> int:
        return sum(s.failures for s in self.sent if s.acked_after_crash or s.written is None)

    async def send(self, sent: Sent, call: Callable[[], Awaitable[Written]]) -> Written:
        """Send until acknowledged, retrying with the same command id; bounded."""
        self.sent.append(sent)
        deadline = time.monotonic() + RETRY_DEADLINE
        for _ in range(5000):
            try:
                written = await call()
            except (UnavailableError, nats.errors.Error):
                sent.failures += 1
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
                continue
            sent.written = written
            sent.acked_after_crash = self.crashed
            return written
        raise AssertionError(f"command {sent.command_id} never acknowledged")


async def drive(n: int, url: str, token: str, journal: Journal) -> None:
    """One client: its own org and users, one command at a time, until told to stop."""
    nc = await connect(url)
    client = Client(nc, token, timeout=REQUEST_TIMEOUT)
    try:
        cid = f"c{n}-org"
        created = await journal.send(
            Sent(n, cid, "create_org", "org", f"org {n}"),
            partial(client.create_org, f"org {n}", command_id=cid),
        )
        org_id = created.fields["org_id"]
        users: list[tuple[str, str]] = []  # (the client's name for it, user_id)
        for k in range(1, MAX_COMMANDS_PER_CLIENT):
            if journal.stop.is_set():
                return
            cid = f"c{n}-{k}"
            if k % 3 == 1 or not users:
                email = f"c{n}-u{k}@example.com"
                written = await journal.send(
                    Sent(n, cid, "register", f"u{k}", email),
                    partial(
                        client.register_user, org_id, f"user {k}", email, "pass-123", command_id=cid
                    ),
                )
                users.append((f"u{k}", written.fields["user_id"]))
            elif k % 3 == 2:
                name = f"org {n} v{k}"
                await journal.send(
                    Sent(n, cid, "rename", "org", name),
                    partial(client.rename_org, org_id, name, command_id=cid),
                )
            else:
                target, user_id = users[k % len(users)]
                roles = ROLES[k % len(ROLES)]
                await journal.send(
                    Sent(n, cid, "set_roles", target, roles),
                    partial(client.set_roles, user_id, roles, command_id=cid),  # type: ignore[arg-type]
                )
    finally:
        await nc.close()


async def wait_acked(journal: Journal, count: int, tasks: list[asyncio.Task[None]]) -> None:
    async def enough() -> bool:
        for task in tasks:
            if task.done():
                task.result()  # a client that failed fails the test now
        return journal.acked >= count

    await eventually(enough, 30, 0.01, f"{count} commands acknowledged")


async def wait_failed_after_crash(journal: Journal) -> None:
    """The crash hit the stream: some command went unanswered after it."""

    async def hit() -> bool:
        return journal.failures_after_crash > 0

    await eventually(hit, 10, 0.01, "a command unanswered after the crash")


async def resend_the_first_of_each_kind(journal: Journal, nc: NATS, token: str) -> None:
    """A retry of a command acknowledged long ago (before the crash, its entity changed many
    times since) is answered with its first outcome and changes nothing."""
    client = Client(nc, token, timeout=REQUEST_TIMEOUT)

    async def resend(sent: Sent, fields: dict[str, Any]) -> Written:
        if sent.kind == "rename":
            return await client.rename_org(fields["org_id"], sent.value, command_id=sent.command_id)
        if sent.kind == "register":
            return await client.register_user(
                fields["org_id"], "x", sent.value, "pass-123", command_id=sent.command_id
            )
        return await client.set_roles(fields["user_id"], sent.value, command_id=sent.command_id)

    for n in range(CLIENTS):
        for kind in ("rename", "register", "set_roles"):
            first = next(s for s in journal.sent if s.client == n and s.kind == kind)
            assert first.written is not None
            assert not first.acked_after_crash
            again = await resend(first, first.written.fields)
            assert (again.seq, again.fields) == (first.written.seq, first.written.fields)


async def check_invariants(
    journal: Journal, nc: NATS, store: str, tmp_path: Path, service: ServiceProcess
) -> None:
    token = service.admin_key()
    await resend_the_first_of_each_kind(journal, nc, token)
    # Lag 0: every event in the log is applied. Then stop the service cleanly.
    await wait_caught_up(nc, token, timeout=30)
    assert service.terminate() == 0
    acked_before = [s for s in journal.sent if s.written and not s.acked_after_crash]
    assert len(acked_before) >= ACKED_BEFORE_CRASH
    assert all(s.written for s in journal.sent), "every command acknowledged in the end"

    # Each command is in the log exactly once, at the sequence its acknowledgement gave.
    # Beside them, the log holds only the first start's bootstrap batch, written once
    # (the restarts found it and wrote nothing): take it out of the count.
    everything = await read_log(nc)
    batch = bootstrap_batch(everything)
    assert batch[0].seq == 1
    (org_message,) = [m for m in batch if m.aggregate == "org"]
    (user_message,) = [m for m in batch if m.aggregate == "user"]
    admin_org, admin_user = (
        subjects.parse(org_message.subject).aggregate_id,
        subjects.parse(user_message.subject).aggregate_id,
    )
    messages = after_bootstrap(everything)
    per_subject = Counter((m.subject, m.command_id) for m in messages)
    assert [k for k, count in per_subject.items() if count > 1] == []
    per_command = Counter(m.command_id for m in messages)
    by_seq = {m.seq: m for m in messages}
    for sent in journal.sent:
        assert sent.written is not None
        assert per_command[sent.command_id] == MESSAGES_PER_COMMAND[sent.kind], sent
        assert by_seq[sent.written.seq].command_id == sent.command_id, sent
    assert len(per_command) == len(journal.sent), "nothing in the log that no client sent"
    # And the log says who sent each: the administrator, with the key the clients used.
    key = tokens.parse(token)
    assert key is not None
    assert {m.principal for m in messages} == {f"user:{admin_user} via key:{key.credential_id}"}

    # Every acknowledged command's effect is in the tables: each entity holds the value and
    # the version of the last command sent to it (clients send one at a time per entity).
    live = await dump_file(store)
    orgs, users = rows(live, ORGS), rows(live, USERS)
    # The administrator's org and user, from the first start, are not the clients'.
    assert orgs.pop(admin_org)["version"] == org_message.seq
    assert users.pop(admin_user)["version"] == user_message.seq
    last: dict[tuple[int, str], Sent] = {}
    user_ids: dict[tuple[int, str], str] = {}
    org_ids: dict[int, str] = {}
    for sent in journal.sent:
        assert sent.written is not None
        last[(sent.client, sent.target)] = sent
        if sent.kind == "register":
            user_ids[(sent.client, sent.target)] = sent.written.fields["user_id"]
        if sent.kind == "create_org":
            org_ids[sent.client] = sent.written.fields["org_id"]
    registered = [s for s in journal.sent if s.kind == "register"]
    assert len(orgs) == CLIENTS
    assert len(users) == len(registered)
    for sent in registered:
        row = users[user_ids[(sent.client, sent.target)]]
        assert (row["org_id"], row["email"]) == (org_ids[sent.client], sent.value)
    for (n, target), sent in last.items():
        assert sent.written is not None
        if target == "org":
            row = orgs[org_ids[n]]
            assert (row["name"], row["version"]) == (sent.value, sent.written.seq), sent
        else:
            row = users[user_ids[(n, target)]]
            roles = sent.value if sent.kind == "set_roles" else ["member"]
            assert (row["roles"], row["version"]) == (
                json.dumps(roles, separators=(",", ":")),
                sent.written.seq,
            )

    # Nothing applied twice or out of order: the tables equal a fresh replay of the log.
    replayed = await replay_into(nc, tmp_path / "replayed.db")
    assert replayed == live
    assert live["parked_events"] == []


@pytest.fixture
async def fast_nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    connection = await connect(nats_server.url)
    yield connection
    await connection.close()


@pytest.fixture
def service_process(
    nats_server: NatsServer, tmp_path: Path, store_url: str
) -> Iterator[ServiceProcess]:
    (tmp_path / "svc").mkdir()
    # The data dir holds the admin key; the store is an SQLite file in it, or Postgres.
    data_file = tmp_path / "svc" / "agentmem.db"
    env = {"AGENTMEM_STORE": store_url}
    process = ServiceProcess(nats_server.url, data_file, tmp_path / "svc.log", env)
    yield process
    process.kill()


async def test_sigkill_the_service_mid_stream(
    nats_server: NatsServer, fast_nc: NATS, service_process: ServiceProcess, tmp_path: Path
) -> None:
    service = service_process
    service.start()
    await service.wait_ready(fast_nc)
    token = service.admin_key()
    journal = Journal()
    tasks = [asyncio.create_task(drive(n, nats_server.url, token, journal)) for n in range(CLIENTS)]
    try:
        await wait_acked(journal, ACKED_BEFORE_CRASH, tasks)
        service.kill()  # SIGKILL, with commands in flight and batches being applied
        journal.crashed = True
        assert service.process is not None
        assert service.process.returncode == -signal.SIGKILL
        await wait_failed_after_crash(journal)

        service.start()
        await service.wait_ready(fast_nc)
        await wait_acked(journal, journal.acked + ACKED_AFTER_RESTART, tasks)
    finally:
        journal.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), RETRY_DEADLINE + 15)

    await check_invariants(journal, fast_nc, service.env["AGENTMEM_STORE"], tmp_path, service)


async def test_kill_the_nats_server_while_the_service_runs(
    nats_server: NatsServer, fast_nc: NATS, service_process: ServiceProcess, tmp_path: Path
) -> None:
    service = service_process
    service.start()
    await service.wait_ready(fast_nc)
    token = service.admin_key()
    journal = Journal()
    tasks = [asyncio.create_task(drive(n, nats_server.url, token, journal)) for n in range(CLIENTS)]
    try:
        await wait_acked(journal, ACKED_BEFORE_CRASH, tasks)
        nats_server.kill()
        journal.crashed = True
        await wait_failed_after_crash(journal)
        nats_server.restart()

        # The same service process reconnects and answers again.
        await service.wait_ready(fast_nc)
        await wait_acked(journal, journal.acked + ACKED_AFTER_RESTART, tasks)
    finally:
        journal.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), RETRY_DEADLINE + 15)

    assert service.process is not None
    assert service.process.poll() is None, "the service survived the outage"
    await check_invariants(journal, fast_nc, service.env["AGENTMEM_STORE"], tmp_path, service)
