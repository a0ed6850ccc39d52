"""A blue-green rebuild: a projection's new version built beside its live tables, then
switched to in one step (docs/architecture.md, "Projection versions").

A process whose code declares a newer ``version`` of a projection than the store's live one
runs, while it holds the build's lease (``build_key``: ``<name>@v<version>``), a
``Build``: it makes the build's tables (``Store.begin_build``; a build already under way is
resumed from its checkpoint), applies the log to them from sequence 1 with the ordinary
worker (``ProjectionWorker(building=True)``: the same batches, checkpoint and fencing, on a
consumer of its own), and once nothing is pending switches (``Store.switch``: one
transaction). Meanwhile the live tables keep answering queries; a process that still runs
the old version's code keeps them moving until the switch, after which the store refuses its
batches (``VersionMismatch``) and its leader stands aside. The new code keeps them moving
itself when they still have every column it declares (``Service._lead``: ``keeps_old``).
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client as NATS

from agentmem.keys import KeyRing
from agentmem.metrics import Metrics
from agentmem.projections.base import Projection
from agentmem.projections.board import CheckpointBoard
from agentmem.projections.worker import ProjectionWorker
from agentmem.store import Store
from agentmem.store.versions import variant_of

log = structlog.get_logger(__name__)


class Build:
    """One run of a projection's build (what a ``ProjectionLeader`` runs for it)."""

    def __init__(
        self,
        nc: NATS,
        store: Store,
        projection: Projection,
        board: CheckpointBoard,
        metrics: Metrics | None = None,
        keys: KeyRing | None = None,
    ) -> None:
        self.store = store
        self.projection = projection
        self.version = projection.version
        self.board = board
        self.worker = ProjectionWorker(
            nc,
            store,
            projection,
            board,
            metrics=metrics,
            keys=keys,
            version=projection.version,
            building=True,
        )
        self.last_error: str | None = None
        self.switched_at: int | None = None  # the checkpoint the new live tables started at
        self._stopping = asyncio.Event()

    @property
    def name(self) -> str:
        return self.worker.key

    @property
    def applied(self) -> int:
        return self.worker.applied

    def stop(self) -> None:
        self._stopping.set()
        self.worker.stop()

    async def run(self) -> None:
        projection = self.projection
        variant = variant_of(projection)
        await self.store.begin_build(projection.name, projection.tables, self.version, variant)
        log.info(
            "projection build started",
            projection=projection.name,
            version=self.version,
            variant=variant,
        )
        await self.worker.run(until_caught_up=True)
        if self._stopping.is_set():
            return  # resumed from its checkpoint by whoever holds the build's lease next
        checkpoint = await self.store.switch(projection.name, projection.tables, self.version)
        self.switched_at = checkpoint
        self.board.forget(self.worker.key)
        log.info(
            "projection switched to its new version",
            projection=projection.name,
            version=self.version,
            checkpoint=checkpoint,
        )
