"""Helpers for the end-to-end tests: reading the whole log, dumping every projection table,
waiting (bounded) for the projections to catch up, and running the CLI as a child process.

Everything here works on real parts: the nats-server, the SQLite files, the processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agentmem import subjects
from agentmem.auth import tokens
from agentmem.client import deliver
from agentmem.consumers.aggregates import AggregateCache
from agentmem.consumers.commands import CommandRunner, client_command_id
from agentmem.consumers.parts import Parts
from agentmem.eventlog import H_COMMAND_ID, H_COMMIT_TYPE, H_PRINCIPAL, EventLog
from agentmem.keys import KeyRing, MasterKeys
from agentmem.projections import ALL
from agentmem.projections.migrations import MIGRATIONS
from agentmem.projections.replay import replay
from agentmem.queries import Status
from agentmem.store import Store, Table, open_store
from tests.support import TEST_MASTER_KEY, TEST_PASSWORD_COST

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T | None]],
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``check`` until it returns something truthy, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    for _ in range(int(timeout / interval) + 2):
        try:
            result = await check()
        except Exception as exc:  # a check may fail while a part restarts
            last_error = exc
            result = None
        if result:
            return result
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last error: {last_error!r})")


@dataclass(frozen=True)
class LogMessage:
    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes

    @property
    def command_key(self) -> str:
        """The command id as the log scopes it: ``<org_id>.<user_id>.<command_id>``."""
        return self.headers.get(H_COMMAND_ID, "")

    @property
    def command_id(self) -> str:
        """The id the client sent."""
        return client_command_id(self.command_key)

    @property
    def commit_type(self) -> str:
        return self.headers.get(H_COMMIT_TYPE, "")

    @property
    def principal(self) -> str:
        return self.headers.get(H_PRINCIPAL, "")

    @property
    def aggregate(self) -> str:
        return subjects.parse(self.subject).aggregate


async def read_log(nc: NATS, stream: str = subjects.STREAM_NAME) -> list[LogMessage]:
    """Every message of the stream, in order, through an ephemeral consumer of our own."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    total = info.state.messages
    subscription = await js.pull_subscribe(
        f"{subjects.EVENT_PREFIX}.>",
        stream=stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=30.0,
        ),
    )
    messages: list[LogMessage] = []
    deadline = time.monotonic() + 30
    try:
        while len(messages) < total and time.monotonic() < deadline:
            try:
                batch = await subscription.fetch(min(1000, total - len(messages)), timeout=2)
            except nats.errors.TimeoutError:
                continue
            for message in batch:
                messages.append(
                    LogMessage(
                        message.metadata.sequence.stream,
                        message.subject,
                        dict(message.headers or {}),
                        message.data,
                    )
                )
    finally:
        await subscription.unsubscribe()
    assert len(messages) == total, f"read {len(messages)} of {total} messages"
    assert [m.seq for m in messages] == sorted(m.seq for m in messages)
    return messages


def bootstrap_batch(messages: list[LogMessage]) -> list[LogMessage]:
    """The atomic batch the first start of the deployment wrote: the bootstrap marker and
    every message committed with it, found in the log (whatever it holds) and checked."""
    markers = [m for m in messages if m.subject == subjects.bootstrap()]
    assert len(markers) == 1, f"one bootstrap marker, not {len(markers)}"
    batch = [m for m in messages if m.command_id == markers[0].command_id]
    assert {m.commit_type for m in batch} == {"service.bootstrap"}, batch
    first = batch[0].seq
    assert [m.seq for m in batch] == list(range(first, first + len(batch))), "contiguous"
    return batch


def after_bootstrap(messages: list[LogMessage]) -> list[LogMessage]:
    """Every message but the bootstrap batch: what the test itself caused."""
    batch = {m.seq for m in bootstrap_batch(messages)}
    return [m for m in messages if m.seq not in batch]


def last_seq_per_projection(messages: list[LogMessage]) -> dict[str, int]:
    """What each projection's checkpoint must reach: the last seq among its subjects."""
    aggregates = {p.name: {f.split(".")[3] for f in p.filter_subjects} for p in ALL}
    return {
        name: max((m.seq for m in messages if m.aggregate in read), default=0)
        for name, read in aggregates.items()
    }


async def dump_store(store: Store) -> dict[str, Any]:
    """Every row of every projection table, the checkpoints and the parked events."""
    dumped: dict[str, Any] = {}
    for projection in ALL:
        for table in projection.tables:
            dumped[table.name] = await store.dump(table)
    dumped["checkpoints"] = sorted((await store.checkpoints()).items())
    dumped["parked_events"] = [
        (p.projection, p.seq, p.subject, p.error) for p in await store.parked()
    ]
    return dumped


def rows(dumped: dict[str, Any], table: Table) -> dict[Any, dict[str, Any]]:
    """A dumped table as {first primary key column: {column: value}}."""
    by_key: dict[Any, dict[str, Any]] = {}
    for row in dumped[table.name]:
        named = dict(zip(table.column_names, row, strict=True))
        by_key[named[table.primary_key[0]]] = named
    return by_key


async def dump_file(path: Path | str) -> dict[str, Any]:
    """The dump of the store at ``path``: an SQLite file or a Postgres URL."""
    store = await open_store(str(path))
    try:
        await store.migrate(MIGRATIONS)
        return await dump_store(store)
    finally:
        await store.close()


def deployment_keys(nc: NATS) -> KeyRing:
    """The data keys of a deployment a test started (``TEST_MASTER_KEY``), as another
    process holds them: its own cache. Not started: no delete reaches its cache."""
    return KeyRing(nc, MasterKeys.parse(TEST_MASTER_KEY))


async def keys_of(nc: NATS) -> KeyRing:
    """``deployment_keys``, started: deletes reach its cache as they reach a process's."""
    keys = deployment_keys(nc)
    await keys.start()
    return keys


async def replay_into(nc: NATS, path: Path) -> dict[str, Any]:
    """Rebuild every projection from sequence 1 into a fresh SQLite file; dump it."""
    assert not await asyncio.to_thread(path.exists)
    keys = await keys_of(nc)
    store = await open_store(str(path))
    try:
        for projection in ALL:
            await asyncio.wait_for(replay(nc, store, projection, keys=keys), 60)
        return await dump_store(store)
    finally:
        await keys.stop()
        await store.close()


def bearer(token: str) -> dict[str, str]:
    """Headers that authenticate a raw nats-py request with ``token``."""
    return {tokens.HEADER: f"Bearer {token}"}


async def status(nc: NATS, token: str, timeout: float = 2.0) -> dict[str, Any]:
    """``agentmem.sys.status``, asked as ``token`` (a service administrator's), sent again
    after "no responders" as the client sends (``agentmem.client.deliver``): a service just
    started may not be visible to this connection yet."""
    message = await deliver(nc, Status.op.subject, b"{}", timeout, bearer(token))
    reply = json.loads(message.data)
    assert reply["ok"], reply
    report: dict[str, Any] = reply["data"]
    return report


async def wait_caught_up(nc: NATS, token: str, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until the running service reports lag 0 and every checkpoint at the last seq of
    its projection's subjects in the log (read independently of the service). ``token``: a
    service administrator's, which agentmem.sys.status needs."""

    async def caught_up() -> dict[str, Any] | None:
        report = await status(nc, token)
        expected = last_seq_per_projection(await read_log(nc))
        for name, projection in report["projections"].items():
            if projection["lag"] != 0 or projection["checkpoint"] != expected[name]:
                return None
        return report

    return await eventually(caught_up, timeout, 0.1, "projections caught up (lag 0)")


# The CLI as a child process -------------------------------------------------------------
def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any AGENTMEM_* setting of the caller's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMEM_")}
    env["AGENTMEM_PASSWORD_COST"] = str(TEST_PASSWORD_COST)
    env["AGENTMEM_LOG_FORMAT"] = "json"
    env.update(extra)
    return env


def agentmem_command() -> list[str]:
    """The installed ``agentmem`` entry point next to this Python, else ``python -m``."""
    script = Path(sys.executable).parent / "agentmem"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "agentmem"]


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 30.0
) -> Ran:
    process = await asyncio.create_subprocess_exec(
        *agentmem_command(),
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"agentmem {' '.join(args)} did not finish in {timeout}s") from None
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


def child_pids(pid: int) -> list[int]:
    """The direct children of a process, from /proc."""
    children: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    if not task_dir.exists():
        return children
    for task in task_dir.iterdir():
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def second_process(nc: NATS, runner: CommandRunner | None = None) -> Parts:
    """The command side of another service process on the same log: its own, empty caches
    (or ``runner``'s). It has no store: only command handlers are built from it."""
    log = EventLog(nc, keys=deployment_keys(nc))
    return Parts(
        nc=nc,
        log=log,
        runner=runner or CommandRunner(log, AggregateCache(log)),
        store=cast(Any, None),
        freshness=cast(Any, None),
        password_cost=TEST_PASSWORD_COST,
    )
