"""The parts a workload runs on: its own nats-server, the service in-process, connections,
a log seeded with user registrations, and child processes (for a clean peak RSS)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
from nats.aio.client import Client as NATS

from agentmem import ids, subjects
from agentmem.config import Settings
from agentmem.embedded import EmbeddedNats, server_binary
from agentmem.eventlog import CommitMeta, EventLog
from agentmem.events import UserRegistered, encode_commit
from agentmem.service import Service
from bench.harness import Config

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
async def service(cfg: Config, url: str, name: str, password_cost: int) -> AsyncIterator[Service]:
    """``agentmem.service.Service`` in this process, with a fresh SQLite file."""
    data = cfg.tmp / name
    settings = Settings(
        nats_url=url, store=str(data / "agentmem.db"), data_dir=data, password_cost=password_cost
    )
    svc = Service(settings)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def ensure_stream(url: str) -> None:
    async with connections(url, 1) as (nc,):
        await EventLog(nc).ensure_stream()


# A log of user registrations ----------------------------------------------------------
class _Ack(msgspec.Struct):
    seq: int = 0
    error: dict[str, object] | None = None


_ack = msgspec.json.Decoder(_Ack)


async def seed_users(nc: NATS, n: int, keep_ids: bool = False) -> tuple[int, list[str]]:
    """Publish ``n`` user-registration commits as the service writes them (same body and
    headers, expected sequence 0 on a fresh subject), in gathered windows. Returns the last
    sequence and, with ``keep_ids``, the user ids."""
    org_id = ids.new_id()
    kept: list[str] = []
    last = 0

    async def publish(i: int) -> int:
        user_id = ids.new_id()
        if keep_ids:
            kept.append(user_id)
        event = UserRegistered(
            user_id=user_id,
            org_id=org_id,
            name=f"User {i}",
            email=f"user{i}@bench.example",
            password_hash=FAKE_HASH,
        )
        command_id = ids.new_id()
        headers = {
            **CommitMeta(command_id=command_id, commit_type="user.register").headers(),
            "Nats-Msg-Id": command_id,
            "Nats-Expected-Last-Subject-Sequence": "0",
        }
        subject = subjects.event(org_id, "user", user_id)
        reply = await nc.request(subject, encode_commit([event]), timeout=30, headers=headers)
        ack = _ack.decode(reply.data)
        if ack.error is not None:
            raise RuntimeError(f"seeding the log failed: {ack.error}")
        return ack.seq

    for start in range(0, n, PUBLISH_WINDOW):
        window = range(start, min(start + PUBLISH_WINDOW, n))
        seqs = await asyncio.gather(*(publish(i) for i in window))
        last = max(last, *seqs)
    return last, kept


@dataclass(frozen=True)
class SeededLog:
    url: str
    events: int
    last_seq: int


@contextlib.asynccontextmanager
async def seeded_log(cfg: Config, n: int) -> AsyncIterator[SeededLog]:
    """A nats-server holding ``n`` user registrations, shared by the replay workloads."""
    async with nats_server(cfg, f"log-{n}") as url:
        await ensure_stream(url)
        started = time.perf_counter()
        async with connections(url, 1) as (nc,):
            last, _ = await seed_users(nc, n)
        elapsed = time.perf_counter() - started
        cfg.note(
            f"seeded {n:,} user commits in {elapsed:.1f}s ({n / elapsed:,.0f} msg/s, "
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


async def run_child(cfg: Config, kind: str, url: str, store: Path, events: int) -> dict[str, float]:
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
