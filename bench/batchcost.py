"""``python -m bench.batchcost``: what an atomic batch costs inside nats-server.

``user.register`` writes the email reservation and the user in one atomic batch, so that
the log, not a table, decides that an email is unique. This times, one call at a time on a
fresh embedded nats-server, ``EventLog.append`` of one write (one JetStream publish with an
expected sequence) against atomic batches of two and three writes, and, for a batch of two,
each of its two round trips: the first message (a request the server answers with an
empty reply) and the commit. With ``--no-sync-always`` the server runs its lazy fsync, to
tell the server's batch handling from the disk.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from agentmem import ids
from agentmem.domain.aggregate import Write
from agentmem.embedded import EmbeddedNats
from agentmem.eventlog import CommitMeta, EventLog
from agentmem.events import OrgRenamed
from bench.env import free_port

ROUNDS = 5
PER_ROUND = 200
EVENTS = [OrgRenamed(org_id="bench", name="a name")]


def _fresh_subject() -> str:
    return f"agentmem.evt.bench.org.{ids.new_id()}"


async def _append(log: EventLog, writes: int) -> float:
    batch = [Write(_fresh_subject(), 0, EVENTS) for _ in range(writes)]
    started = time.perf_counter()
    await log.append(batch, CommitMeta(command_id=ids.new_id(), commit_type="bench"))
    return time.perf_counter() - started


async def _two_steps(nc: NATS) -> tuple[float, float]:
    """(first message's round trip, commit's round trip) of a batch of two."""
    batch_id = ids.new_id()
    first = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": "1"}
    commit = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": "2", "Nats-Batch-Commit": "1"}
    started = time.perf_counter()
    await nc.request(_fresh_subject(), b"{}", timeout=5, headers=first)
    between = time.perf_counter()
    await nc.request(_fresh_subject(), b"{}", timeout=5, headers=commit)
    return between - started, time.perf_counter() - between


async def measure(sync_always: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="agentmem-batchcost-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats", "127.0.0.1", free_port(), sync_always=sync_always)
        await server.start()
        nc = await nats.connect(server.url)
        try:
            log = EventLog(nc)
            await log.ensure_stream()
            times: dict[str, list[float]] = {"one write": [], "batch of 2": [], "batch of 3": []}
            firsts: list[float] = []
            commits: list[float] = []
            for _ in range(ROUNDS):  # interleaved, so that drift falls on every way alike
                for _ in range(PER_ROUND):
                    times["one write"].append(await _append(log, 1))
                    times["batch of 2"].append(await _append(log, 2))
                    times["batch of 3"].append(await _append(log, 3))
                    first, commit = await _two_steps(nc)
                    firsts.append(first)
                    commits.append(commit)
            times["batch of 2: first message"] = firsts
            times["batch of 2: commit"] = commits
            return {name: statistics.median(values) * 1e6 for name, values in times.items()}
        finally:
            await nc.close()
            await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batchcost", description=__doc__)
    parser.add_argument("--no-sync-always", dest="sync_always", action="store_false", default=True)
    args = parser.parse_args()
    results = asyncio.run(measure(args.sync_always))
    fsync = "always" if args.sync_always else "lazy (server default)"
    print(f"p50 of {ROUNDS * PER_ROUND} calls each, one at a time, fsync {fsync}:")
    for name, p50 in results.items():
        print(f"  {name:<28} {p50:>8,.0f} µs   {p50 / results['one write']:.2f}x one write")


if __name__ == "__main__":
    main()
