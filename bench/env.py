"""The parts a workload runs on: its own nats-server, the service and the raw responders each
in a process of its own, connections and clients, a log seeded with user registrations, and
child processes for replays (for a clean peak RSS).

Only the clients run in the bench process, so the service and the raw baselines are
measured the same way: each is one Python process with one NATS connection, and neither
shares its CPU time or its event loop with the load it answers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NATS

from agentmem import Client, ids, natsauth, subjects
from agentmem.embedded import EmbeddedNats, server_binary
from agentmem.eventlog import CommitMeta, EventLog
from agentmem.events import AnyEvent, UserRegistered
from agentmem.keys import KeyRing, MasterKeys
from agentmem.queries import Health
from agentmem.sealing import seal
from bench.harness import Config, Run

PUBLISH_WINDOW = 256
# The shape of a real scrypt hash string, so a commit has the size of a real one.
FAKE_HASH = "scrypt$16384$8$1$" + "s" * 22 + "$" + "h" * 43


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_version() -> str:
    out = subprocess.run(
        [server_binary(), "--version"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or out.stderr.strip()


@contextlib.asynccontextmanager
async def nats_server(cfg: Config, name: str) -> AsyncIterator[str]:
    """A fresh nats-server (JetStream, config file in a temp dir); yields its URL."""
    server = EmbeddedNats(
        cfg.tmp / name / "nats", "127.0.0.1", free_port(), sync_always=cfg.sync_always
    )
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def connections(url: str, n: int) -> AsyncIterator[list[NATS]]:
    conns = [await nats.connect(url, name=f"bench-{i}") for i in range(n)]
    try:
        yield conns
    finally:
        for nc in conns:
            with contextlib.suppress(Exception):
                await nc.close()


@contextlib.asynccontextmanager
async def client_connections(url: str, n: int, token: str) -> AsyncIterator[list[NATS]]:
    """``n`` connections as an agent makes them: with ``token`` as its NATS credential,
    through the service's auth callout, into the clients' account (docs/security.md, The
    NATS layer), not as the service principal that ``url`` names."""
    parts = urlsplit(url)
    plain = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))
    options = natsauth.connection_options(token)
    conns = [await nats.connect(plain, name=f"bench-client-{i}", **options) for i in range(n)]
    try:
        yield conns
    finally:
        for nc in conns:
            with contextlib.suppress(Exception):
                await nc.close()


def client(nc: NATS, token: str | None, timeout: float = 10.0) -> Client:
    """Every ``agentmem.Client`` the bench makes is made here (with the client's default
    timeout unless told)."""
    return Client(nc, token, timeout)


class Child:
    """A child process whose output goes to files (a full pipe would stall it)."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        logs.mkdir(parents=True, exist_ok=True)
        self.out_path = logs / f"{name}.out"
        self.err_path = logs / f"{name}.err"
        self._files: list[IO[bytes]] = []
        self.process: asyncio.subprocess.Process | None = None

    def _open_logs(self) -> tuple[IO[bytes], IO[bytes]]:
        out, err = open(self.out_path, "wb"), open(self.err_path, "wb")  # noqa: SIM115
        self._files = [out, err]
        return out, err

    async def start(self) -> None:
        out, err = self._open_logs()
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self.env
        )

    def output(self) -> str:
        text = self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")
        return text[-3000:]

    def check_alive(self) -> None:
        if self.process is None or self.process.returncode is not None:
            code = self.process.returncode if self.process else None
            raise RuntimeError(f"{self.name} exited ({code}): {self.output()}")

    async def stop(self, timeout: float = 20.0) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
        for f in self._files:
            f.close()


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


@dataclass(frozen=True)
class ServiceProcess:
    url: str
    data_dir: Path
    token: str  # the service administrator's API key, saved by its first start


async def _wait_healthy(child: Child, url: str, seconds: float = 60.0) -> None:
    """Until ``agentmem.sys.health`` (public) answers ``live``."""
    deadline = time.monotonic() + seconds
    async with connections(url, 1) as (nc,):
        while True:
            child.check_alive()
            with contextlib.suppress(nats.errors.NoRespondersError, nats.errors.TimeoutError):
                reply = _reply.decode((await nc.request(Health.op.subject, b"{}", 2)).data)
                if reply.ok and reply.data and reply.data.get("live"):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} not healthy after {seconds:g}s: {child.output()}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def service(
    cfg: Config,
    url: str,
    name: str,
    password_cost: int,
    store: str | None = None,
    extra: dict[str, str] | None = None,
) -> AsyncIterator[ServiceProcess]:
    """``python -m agentmem serve`` on ``url``, with a fresh SQLite file (or the store
    ``store``), in a process of its own; yields once ``agentmem.sys.health`` says it is
    live. ``extra``: more environment (``AGENTMEM_ROLES``...). Its token is the admin key
    it saved, or "" when the deployment was bootstrapped by another process."""
    data = cfg.tmp / name / "service"
    # The server's NATS secrets (nats_server's EmbeddedNats made them): with them the service
    # connects as its principal and decides the clients' connections, as `agentmem serve`.
    secrets = cfg.tmp / name / natsauth.SECRETS_FILE
    if secrets.exists():
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copy(secrets, data / natsauth.SECRETS_FILE)
    child = Child(
        f"{name}-service",
        [sys.executable, "-m", "agentmem", "serve"],
        _child_env(
            {
                "AGENTMEM_NATS": url,
                "AGENTMEM_DATA_DIR": str(data),
                "AGENTMEM_STORE": store or str(data / "agentmem.db"),
                "AGENTMEM_PASSWORD_COST": str(password_cost),
                "AGENTMEM_LOG_LEVEL": "warning",
                "AGENTMEM_LOG_FORMAT": "json",
                **(extra or {}),
            }
        ),
        cfg.tmp / "logs",
    )
    await child.start()
    try:
        await _wait_healthy(child, url)
        key = data / "admin.key"
        token = key.read_text().strip() if key.exists() else ""
        yield ServiceProcess(url, data, token)
        child.check_alive()  # it did not die under the load
    finally:
        await child.stop()


async def projections_settled(client: Client, seconds: float = 600.0) -> dict[str, Any]:
    """Until every projection of the service has applied the whole log (a seed's events
    included), so that what is timed next does not share the service with their work; the
    last ``status`` reply."""
    deadline = time.monotonic() + seconds
    while True:
        status = await client.status()
        if all(p["lag"] == 0 for p in status["projections"].values()):
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(f"projections still behind after {seconds:.0f} s: {status}")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def responder(cfg: Config, kind: str, url: str, *extra: str) -> AsyncIterator[None]:
    """``python -m bench.responder KIND``: a raw baseline's responder in a process of its
    own; yields once it says it is subscribed."""
    child = Child(
        f"{kind}-responder",
        [sys.executable, "-m", "bench.responder", kind, "--nats", url, *extra],
        _child_env({}),
        cfg.tmp / "logs",
    )
    await child.start()
    try:
        deadline = time.monotonic() + 60
        while "ready" not in child.out_path.read_text(errors="replace"):
            child.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} not ready after 60s: {child.output()}")
            await asyncio.sleep(0.05)
        yield
        child.check_alive()
    finally:
        await child.stop()


async def ensure_stream(url: str) -> None:
    async with connections(url, 1) as (nc,):
        await EventLog(nc).ensure_stream()


# Seeded logs ----------------------------------------------------------------------------
class _Ack(msgspec.Struct):
    seq: int = 0
    error: dict[str, object] | None = None


class _Reply(msgspec.Struct):
    ok: bool
    data: dict[str, object] | None = None


_ack = msgspec.json.Decoder(_Ack)
_reply = msgspec.json.Decoder(_Reply)


# One commit as the service writes it: (subject, its one event, the command's commit type).
Commit = tuple[str, AnyEvent, str]
# Publishes ``n`` commits on a connection; returns the last sequence.
Seed = Callable[[NATS, int], Awaitable[int]]


async def seed_commits(nc: NATS, n: int, make: Callable[[int], Commit]) -> int:
    """Publish ``make(0)`` ... ``make(n - 1)`` as the service writes commits (same body and
    headers, expected sequence 0 on a fresh subject), in gathered windows. Returns the last
    sequence."""
    last = 0
    keys = KeyRing(nc, master_keys())
    await keys.start()

    async def publish(i: int) -> int:
        subject, event, commit_type = make(i)
        command_id = ids.new_id()
        headers = {
            **CommitMeta(command_id=command_id, commit_type=commit_type).headers(),
            "Nats-Msg-Id": command_id,
            "Nats-Expected-Last-Subject-Sequence": "0",
        }
        # Sealed as the service seals it: personal fields under their data subject's key.
        body = await seal(subject, [event], keys)
        reply = await nc.request(subject, body, timeout=30, headers=headers)
        ack = _ack.decode(reply.data)
        if ack.error is not None:
            raise RuntimeError(f"seeding the log failed: {ack.error}")
        return ack.seq

    for start in range(0, n, PUBLISH_WINDOW):
        window = range(start, min(start + PUBLISH_WINDOW, n))
        seqs = await asyncio.gather(*(publish(i) for i in window))
        last = max(last, *seqs)
    await keys.stop()
    return last


async def seed_users(nc: NATS, n: int, keep_ids: bool = False) -> tuple[int, list[str]]:
    """Publish ``n`` user-registration commits (``seed_commits``). Returns the last sequence
    and, with ``keep_ids``, the user ids."""
    org_id = ids.new_id()
    user_ids = [ids.new_id() for _ in range(n)]

    def registration(i: int) -> Commit:
        event = UserRegistered(
            user_id=user_ids[i],
            org_id=org_id,
            name=f"User {i}",
            email=f"user{i}@bench.example",
            password_hash=FAKE_HASH,
        )
        return subjects.event(org_id, "user", user_ids[i]), event, "user.register"

    last = await seed_commits(nc, n, registration)
    return last, user_ids if keep_ids else []


async def _seed_users(nc: NATS, n: int) -> int:
    return (await seed_users(nc, n))[0]


def master_keys() -> MasterKeys:
    """The master key of every log and service of this run (``AGENTMEM_MASTER_KEY``, set
    once here and inherited by the children: the seeded log's keys open in the replay)."""
    if not os.environ.get("AGENTMEM_MASTER_KEY"):
        os.environ["AGENTMEM_MASTER_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()
    return MasterKeys.parse(os.environ["AGENTMEM_MASTER_KEY"])


@dataclass(frozen=True)
class SeededLog:
    url: str
    events: int
    last_seq: int


@contextlib.asynccontextmanager
async def seeded_log(
    cfg: Config, n: int, kind: str = "user", seed: Seed = _seed_users
) -> AsyncIterator[SeededLog]:
    """A nats-server holding ``n`` commits of ``kind`` (user registrations unless told),
    shared by the replay workloads."""
    async with nats_server(cfg, f"log-{n}" if kind == "user" else f"{kind}-log-{n}") as url:
        await ensure_stream(url)
        started = time.perf_counter()
        async with connections(url, 1) as (nc,):
            last = await seed(nc, n)
        elapsed = time.perf_counter() - started
        cfg.note(
            f"seeded {n:,} {kind} commits in {elapsed:.1f}s ({n / elapsed:,.0f} msg/s, "
            f"JetStream publish in gathered windows of {PUBLISH_WINDOW})"
        )
        yield SeededLog(url, n, last)


# Child processes ----------------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: that one carries the
    parent's peak across fork and exec, so a child of a big parent starts out "big"."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def run_child(
    cfg: Config, kind: str, url: str, store: Path | str, events: int
) -> dict[str, float]:
    """``python -m bench --child KIND``: one measurement in a fresh process, whose last
    stdout line is its result as JSON."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench",
        "--child",
        kind,
        "--child-nats",
        url,
        "--child-store",
        str(store),
        "--child-events",
        str(events),
        "--loop",
        cfg.loop,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=1800)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"child {kind} exited {process.returncode}: {err.decode()[-2000:]}")
    result: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    return result


@contextlib.asynccontextmanager
async def replay_in_child(
    cfg: Config,
    child: str,
    fresh_store: Callable[[str], contextlib.AbstractAsyncContextManager[str]] | None = None,
    kind: str = "user",
    seed: Seed = _seed_users,
) -> AsyncIterator[Run]:
    """Each run: a child process ``child`` applies the shared seeded log of ``kind`` into a
    fresh store (an SQLite file, or what ``fresh_store`` makes); its rate and peak RSS are
    the result."""
    n = cfg.sizes.replay_events
    log = await cfg.shared(f"{kind}-log-{n}", lambda: seeded_log(cfg, n, kind, seed))
    runs = itertools.count()

    @contextlib.asynccontextmanager
    async def sqlite_file(name: str) -> AsyncIterator[str]:
        yield str(cfg.tmp / f"{name}.db")

    async def run(warmup: bool) -> dict[str, float]:
        async with (fresh_store or sqlite_file)(f"{child}-{next(runs)}") as store:
            result = await run_child(cfg, child, log.url, store, log.events)
        if result["events"] != log.events:
            cfg.note(f"{child} applied {result['events']:.0f} of {log.events} events")
        return {
            "rate": result["events"] / result["seconds"],
            "rss": result["rss"],
            "rss_growth": result["rss"] - result["rss_start"],
        }

    yield run


# CPU time of the processes of a run --------------------------------------------------
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) so far of this process and of each kind of child."""
    used = {"client": sum(os.times()[:2])}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) != os.getpid():
            continue
        kind = (
            "service"
            if "agentmem serve" in argv
            else "responder"
            if "bench.responder" in argv
            else "nats-server"
            if "nats-server" in argv
            else "other"
        )
        used[kind] = used.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return used


def cpu_ms_per_call(before: dict[str, float], kind: str, calls: int) -> float:
    """CPU milliseconds per call that ``kind`` (``cpu_seconds``) spent since ``before``:
    on a noisy machine steadier than a latency, which grows with the CPU others take."""
    spent = cpu_seconds().get(kind, 0.0) - before.get(kind, 0.0)
    return spent / calls * 1000 if calls else float("nan")
