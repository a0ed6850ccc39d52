"""``python -m bench.switchcost``: what a blue-green switch costs, against the build itself.

The memories projection (its scoped full-text index included) is applied to a fresh,
migrated store two ways, ``--batches`` batches of 1,000 ``memory.added`` commits each:

- ``live``: into the live tables, as the projection's worker writes them;
- ``build``: into the tables of a build of version 2 beside them (``Store.begin_build``,
  batches with ``building=True``), then ``Store.switch``.

It prints, per store and round, the rows per second of each, and the switch's own time:
on SQLite the one write transaction that drops the old tables, renames the build's and
makes their declared indexes and FTS5 index again (the writer is held that long; readers
are not); on Postgres the transaction that moves the tables into the live schema.
``--postgres`` adds the Postgres store (``AGENTMEM_BENCH_POSTGRES``, or the local one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from agentmem.projections.memories import PROJECTION
from agentmem.projections.migrations import MIGRATIONS
from agentmem.store import ProjectionBatch, RowOp, Store, open_store
from bench.pg import postgres_store
from bench.projectionruns import PER_BATCH, batches


async def apply_all(
    store: Store, prepared: list[list[tuple[int, str, list[RowOp]]]], version: int, building: bool
) -> float:
    """Rows per second of the batches applied one after another."""
    started = time.perf_counter()
    checkpoint = 0
    for items in prepared:
        last = items[-1][0]
        batch = ProjectionBatch(
            "memories", last, items, after=checkpoint, version=version, building=building
        )
        await store.apply(batch)
        checkpoint = last
    return len(prepared) * PER_BATCH / (time.perf_counter() - started)


@contextlib.asynccontextmanager
async def fresh(kind: str) -> AsyncIterator[Store]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="agentmem-switchcost-") as tmp:
            store = await open_store(str(Path(tmp) / "store.db"))
            try:
                yield store
            finally:
                await store.close()
    else:
        async with postgres_store("switchcost") as url:
            store = await open_store(url)
            try:
                yield store
            finally:
                await store.close()


async def one_round(kind: str, count: int) -> tuple[float, float, float]:
    prepared = batches(count, before=False)
    async with fresh(kind) as store:
        await store.migrate(MIGRATIONS)
        await store.adopt("memories", 1)
        live = await apply_all(store, prepared, 1, building=False)
        await store.begin_build("memories", PROJECTION.tables, 2)
        build = await apply_all(store, prepared, 2, building=True)
        started = time.perf_counter()
        await store.switch("memories", PROJECTION.tables, 2)
        return live, build, time.perf_counter() - started


async def main(count: int, rounds: int, kinds: list[str]) -> None:
    for kind in kinds:
        switches = []
        for round_number in range(1, rounds + 1):
            live, build, switch = await one_round(kind, count)
            switches.append(switch)
            print(
                f"{kind:8} round {round_number}  live {live:8,.0f} rows/s  build "
                f"{build:8,.0f} rows/s  switch {switch * 1000:8,.0f} ms "
                f"({count * PER_BATCH:,} memories)",
                flush=True,
            )
        print(f"{kind:8} switch median {statistics.median(switches) * 1000:,.0f} ms", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.switchcost")
    p.add_argument("--batches", type=int, default=100, help="batches of 1,000 (default 100)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per store (default 3)")
    p.add_argument("--postgres", action="store_true", help="the Postgres store too")
    args = p.parse_args()
    asyncio.run(
        main(args.batches, args.rounds, ["sqlite", *(["postgres"] if args.postgres else [])])
    )
