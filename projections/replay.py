"""Rebuild projections from sequence 1 of the log."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from agentmem import subjects
from agentmem.projections.base import Projection
from agentmem.projections.migrations import MIGRATIONS
from agentmem.projections.worker import ProjectionWorker
from agentmem.store import Store


@dataclass(frozen=True)
class ReplayResult:
    projection: str
    events: int
    seconds: float
    checkpoint: int

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def progress_bar(label: str, out: object = sys.stderr) -> Callable[[int, int], None]:
    started = time.perf_counter()

    def show(done: int, pending: int) -> None:
        total = max(done + pending, 1)
        filled = int(30 * done / total)
        rate = done / max(time.perf_counter() - started, 1e-9)
        bar = "#" * filled + "." * (30 - filled)
        line = f"\r{label:>8} [{bar}] {done:,}/{total:,} {rate:,.0f} ev/s"
        print(line, end="" if pending else "\n", file=out, flush=True)  # type: ignore[call-overload]

    return show


async def replay(
    nc: NATS,
    store: Store,
    projection: Projection,
    stream: str = subjects.STREAM_NAME,
    on_progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Empty the projection's tables and apply the whole log again, through the same code
    path as the live worker, on a consumer of its own (the live one is left alone)."""
    await store.migrate(MIGRATIONS)
    await store.reset(projection.name, projection.tables)
    worker = ProjectionWorker(
        nc, store, projection, stream=stream, consumer=f"agentmem-replay-{projection.name}"
    )
    started = time.perf_counter()
    await worker.run(until_caught_up=True, on_progress=on_progress)
    return ReplayResult(
        projection.name, worker.applied, time.perf_counter() - started, worker.checkpoint
    )
