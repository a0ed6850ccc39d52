"""``agentmem.sys.*``: status (log position, checkpoints, lag, parked events) and health."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS

from agentmem import asyncapi, ingestion, subjects
from agentmem.coalesce import FreshCall
from agentmem.consumers.auth import authorize
from agentmem.consumers.router import Request, Result, Router
from agentmem.errors import UnavailableError
from agentmem.eventlog import EventLog
from agentmem.keys import plaintext_until
from agentmem.projections import ALL
from agentmem.projections.worker import build_consumer, durable_name
from agentmem.queries import Health, Schema, Status
from agentmem.store import Store
from agentmem.store.versions import build_key

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

log = structlog.get_logger(__name__)


async def collect_status(
    nc: NATS, store: Store, stream: str = subjects.STREAM_NAME
) -> dict[str, Any]:
    info = await EventLog(nc, stream).info()
    state = info["state"]
    checkpoints = await store.checkpoints()
    parked = await store.parked()
    versions = await store.versions()
    js = nc.jetstream()

    async def lag_of(consumer_name: str, checkpoint: int) -> int | None:
        try:
            consumer = await js.consumer_info(stream, consumer_name)
        except nats.js.errors.NotFoundError:
            return None  # no worker has run since the consumer was removed
        except nats.errors.Error as exc:  # a node down, a leader being elected
            raise UnavailableError(f"the event log did not answer: {exc!r}") from exc
        # A worker acks only what it has committed, so its consumer's ack floor is never past
        # its checkpoint, unless the tables were set back under it (a replay killed midway,
        # a store restored from a backup): the next worker starts again at the checkpoint,
        # and what lies between is behind too (counted by sequence: an upper bound).
        floor = consumer.ack_floor.stream_seq if consumer.ack_floor is not None else 0
        set_back = max(0, int(floor or 0) - checkpoint)
        return int(consumer.num_pending + consumer.num_ack_pending) + set_back

    projections: dict[str, Any] = {}
    for projection in ALL:
        name = projection.name
        recorded = versions.get(name)
        checkpoint = checkpoints.get(name, 0)
        projections[name] = {
            "checkpoint": checkpoint,
            "lag": await lag_of(durable_name(name), checkpoint),
            "parked": sum(1 for p in parked if p.projection == name),
            # The version of the live tables (what queries read).
            "version": recorded.live if recorded else None,
            # What else its rows depend on ("" for most; the model id for vectors).
            "variant": recorded.live_variant if recorded else None,
        }
        if recorded is not None and recorded.building is not None:
            key = build_key(name, recorded.building)
            built = checkpoints.get(key, 0)
            projections[name]["build"] = {
                "version": recorded.building,
                "variant": recorded.building_variant,
                "checkpoint": built,
                # None while no process runs the build (between two of its runs).
                "lag": await lag_of(build_consumer(name, recorded.building), built),
                "parked": sum(1 for p in parked if p.projection == key),
                "started_at": recorded.build_started_at,
                # How far it is, as its checkpoint over the live one's (both count the log's
                # sequences of the projection's events).
                "progress": round(min(1.0, built / checkpoint), 4) if checkpoint else 1.0,
            }
    return {
        "stream": {
            "name": stream,
            "last_seq": state["last_seq"],
            "messages": state["messages"],
            "bytes": state["bytes"],
            # Up to this seq, earlier versions may have written personal data in plaintext,
            # which no forget can erase (docs/security.md, "Forgetting"); null: none.
            "plaintext_until": await plaintext_until(nc),
        },
        "projections": projections,
        "ingest": await ingestion.report(nc),
        "parked": [
            {"projection": p.projection, "seq": p.seq, "subject": p.subject, "error": p.error}
            for p in parked[:50]
        ],
    }


def readiness(report: dict[str, Any], ready_lag: int) -> list[str]:
    """Why a process with this status report is not ready ([] when it is): a projection
    far behind the log, or (with the report's ``process``) one whose worker here keeps
    failing, which a lag alone may not show (few events behind it)."""
    reasons = []
    for name, projection in sorted(report["projections"].items()):
        lag = projection["lag"]
        if lag is None:
            reasons.append(f"projection {name} has no consumer (no worker has run)")
        elif lag > ready_lag:
            reasons.append(f"projection {name} is {lag} events behind (limit {ready_lag})")
    failing = report.get("process", {}).get("failing", {})
    reasons += [f"projection {name} keeps failing: {why}" for name, why in failing.items()]
    return reasons


def system_router(parts: Parts) -> Router:
    """Several processes share these subjects, so the status report says which one
    answered (``parts.this_process``)."""
    router = Router()
    nc, store, stream, this_process = parts.nc, parts.store, parts.stream, parts.this_process
    workers_alive = parts.workers_alive
    metrics = parts.metrics
    ready_lag = parts.ready_lag

    @router.handle(Status)
    async def status(request: Request[Status]) -> Result:
        authorize(request.caller, request.need, None)
        report = await collect_status(nc, store, stream)
        if this_process is not None:
            report["process"] = this_process()
        metrics.observe_status(report)
        report["metrics"] = metrics.snapshot()
        return report, report["stream"]["last_seq"]

    # Public, for liveness probes: it says only whether the parts are up. The probes asking
    # at once share one round of checks (each answer still started after its question), so
    # a flood of probes costs about what one does (docs/security.md, "One client's flood").
    @router.handle(Health)
    async def health(request: Request[Health]) -> Result:
        return await checked(), None

    async def check_health() -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            await EventLog(nc, stream).info()
            checks["log"] = True
        except Exception as exc:
            log.warning("health: log unreachable", error=repr(exc))
            checks["log"] = False
        try:
            await store.checkpoints()
            checks["store"] = True
        except Exception as exc:
            log.warning("health: store unreachable", error=repr(exc))
            checks["store"] = False
        checks["projections"] = workers_alive()
        live = checks["log"] and checks["store"] and all(checks["projections"].values())
        reasons = ["not live"] if not live else []
        if live:
            try:
                report = await collect_status(nc, store, stream)
                if this_process is not None:
                    report["process"] = this_process()
                reasons = readiness(report, ready_lag)
            except Exception as exc:
                reasons = [f"the log or the store does not answer: {type(exc).__name__}"]
        return {"live": live, "checks": checks, "ready": not reasons, "reasons": reasons}

    checked = FreshCall(check_health)

    # Public, like health: what a client in any language needs to talk to the service.
    @router.handle(Schema)
    async def schema(request: Request[Schema]) -> Result:
        return asyncapi.document(), None

    return router
