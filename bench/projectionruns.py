"""``python -m bench.projectionruns``: the memories projection's batches in the store alone.

``SQLiteStore.apply`` of ``--batches`` batches of 1,000 ``memory.added`` commits (one
memory and one tag each, as ``memory.add`` writes them) into a fresh, migrated file, two
ways, alternately, ``--rounds`` times:

- ``now``: the projection's operations and the store's grouping as they are (a batch is
  one run of 1,000 memories and one of 1,000 tags);
- ``before``: as before they changed: each ``memory.added`` also deleted its tag rows
  first, and only consecutive equal statements shared a run (a batch was 3,000 runs of
  one row; the memories' full-text index was filled a row at a time).

Each line gives the rows per second of one way in one round.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from unittest import mock

from agentmem import ids
from agentmem.domain import memories as domain
from agentmem.eventlog import H_TIME, StoredCommit
from agentmem.projections.memories import MEMORY_TAGS, PROJECTION
from agentmem.projections.migrations import MIGRATIONS
from agentmem.store import Delete, ProjectionBatch, RowOp, sql
from agentmem.store.sqlite import SQLiteStore
from bench.memories import added

PER_BATCH = 1_000


def consecutive_only(
    ops: list[RowOp], keys: dict[str, tuple[str, ...]]
) -> list[tuple[str, list[tuple[object, ...]]]]:
    """The store's grouping before: only consecutive equal statements share a run."""
    runs: list[tuple[str, list[tuple[object, ...]]]] = []
    for op in ops:
        statement, params = sql.statement(op, keys)
        if runs and runs[-1][0] == statement:
            runs[-1][1].append(params)
        else:
            runs.append((statement, [params]))
    return runs


def batches(count: int, before: bool) -> list[list[tuple[int, str, list[RowOp]]]]:
    org_id, at = ids.new_id(), time.time_ns() // 1_000_000
    made = []
    for b in range(count):
        items = []
        for i in range(PER_BATCH):
            seq = b * PER_BATCH + i + 1
            event = added(org_id, seq, 1_000, at)
            subject = domain.subject(org_id, event.memory_id)
            ops = PROJECTION.project(StoredCommit(seq, subject, {H_TIME: str(at)}, [event]))
            if before:  # the tag rows were deleted before the memory's tags were written
                row, *tags = ops
                ops = [row, Delete(MEMORY_TAGS.name, {"memory_id": event.memory_id}), *tags]
            items.append((seq, subject, ops))
        made.append(items)
    return made


async def apply_all(count: int, before: bool) -> float:
    prepared = batches(count, before)
    with tempfile.TemporaryDirectory(prefix="agentmem-projectionruns-") as tmp:
        store = SQLiteStore(str(Path(tmp) / "memories.db"))
        await store.open()
        await store.migrate(MIGRATIONS)
        grouping = consecutive_only if before else sql.grouped
        started = time.perf_counter()
        checkpoint = 0
        with mock.patch.object(sql, "grouped", grouping):
            for items in prepared:
                last = items[-1][0]
                await store.apply(ProjectionBatch("memories", last, items, after=checkpoint))
                checkpoint = last
        seconds = time.perf_counter() - started
        await store.close()
    return count * PER_BATCH / seconds


async def main(count: int, rounds: int) -> None:
    for round_number in range(1, rounds + 1):
        for way, before in (("before", True), ("now", False)):
            rate = await apply_all(count, before)
            print(f"round {round_number}  {way:6}  {rate:8,.0f} rows/s", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.projectionruns")
    p.add_argument("--batches", type=int, default=10, help="batches of 1,000 (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="alternations (default 3)")
    args = p.parse_args()
    asyncio.run(main(args.batches, args.rounds))
