"""What one service process is doing, as numbers (Prometheus metrics).

Every process records them from its start: requests by subject and outcome, command retries
and conflicts, projection batches, store reads, NATS reconnects. ``agentmem.sys.status``
reports them (``snapshot``), and ``agentmem serve --metrics HOST:PORT`` also serves them as
Prometheus text (``agentmem.metrics_http``). The figures that live in the log and the store
(checkpoints, lag, parked events, the log's last sequence) are read when asked for, like the
status report reads them (``observe_status``): a process without the projections role still
says how far behind they are.

Each ``Metrics`` has a registry of its own, so that several services in one process (tests)
count apart. Recording is a dictionary look-up and a few additions under a lock: the cost on
the request path is measured in docs/performance.md.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from agentmem import subjects

# Seconds: from a cached point query (under a millisecond) to a password hash (most of a second)
# and a read stopped at the store's time limit.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
READ_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000)
# A request to a subject no route has is counted under this one label: the subject is the
# caller's text, and each label value is a time series the scraper must keep.
UNKNOWN_SUBJECT = "unknown"


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        # Each request's pair of series by (subject, outcome), found once: ``labels`` takes a
        # lock and checks its arguments on every call.
        self._per_request: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.requests = Counter(
            "agentmem_requests",
            "Requests answered, by subject and outcome (ok or the error code)",
            ["subject", "outcome"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "agentmem_request_seconds",
            "Time from a request's arrival to its reply, by subject and outcome",
            ["subject", "outcome"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.command_conflicts = Counter(
            "agentmem_command_conflicts",
            "Commands answered with conflict (an expected version, a taken email, a command "
            "id already applied, an aggregate that kept changing)",
            ["subject"],
            registry=registry,
        )
        self.command_retries = Counter(
            "agentmem_command_retries",
            "Commands decided again because another process appended to the aggregate first",
            registry=registry,
        )
        self.batch_events = Histogram(
            "agentmem_projection_batch_events",
            "Events in each batch a projection worker of this process applied",
            ["projection"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "agentmem_projection_batch_seconds",
            "Time to apply one batch (rows and checkpoint, one transaction)",
            ["projection"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.events_parked = Counter(
            "agentmem_projection_events_parked",
            "Events a projection worker of this process parked",
            ["projection"],
            registry=registry,
        )
        self.store_read_seconds = Histogram(
            "agentmem_store_read_seconds",
            "Time of each read of the projection store made for a query",
            buckets=READ_BUCKETS,
            registry=registry,
        )
        self.nats_reconnects = Counter(
            "agentmem_nats_reconnects",
            "Times this process's NATS connection came back after a loss",
            registry=registry,
        )
        # Read from the log and the store when asked for (``observe_status``).
        self.log_last_seq = Gauge(
            "agentmem_log_last_seq", "The event log's last sequence", registry=registry
        )
        self.checkpoint = Gauge(
            "agentmem_projection_checkpoint",
            "The last log sequence each projection has applied",
            ["projection"],
            registry=registry,
        )
        self.lag = Gauge(
            "agentmem_projection_lag",
            "Events of each projection in the log that it has not applied yet (-1: no "
            "worker has run since its consumer was removed)",
            ["projection"],
            registry=registry,
        )
        self.parked = Gauge(
            "agentmem_projection_parked",
            "Parked events in the store, by projection",
            ["projection"],
            registry=registry,
        )
        self.version = Gauge(
            "agentmem_projection_version",
            "The projection version of each projection's live tables (what queries read)",
            ["projection"],
            registry=registry,
        )
        self.building = Gauge(
            "agentmem_projection_building",
            "The projection version being built beside the live tables (0: none)",
            ["projection"],
            registry=registry,
        )
        self.build_lag = Gauge(
            "agentmem_projection_build_lag",
            "Events a build still has to apply before it switches (-1: no build, or no "
            "process runs it now)",
            ["projection"],
            registry=registry,
        )

        self.ingest_executed = Counter(
            "agentmem_ingest_executed",
            "Published commands this process executed and acknowledged, whatever their outcome",
            registry=registry,
        )
        self.ingest_backlog = Gauge(
            "agentmem_ingest_backlog",
            "Published commands waiting in the ingestion stream (-1: no ingestion stream)",
            registry=registry,
        )
        self.ingest_parked = Gauge(
            "agentmem_ingest_parked",
            "Published commands parked after transient failures, for an operator",
            registry=registry,
        )

    def request(self, subject: str, outcome: str, seconds: float) -> None:
        series = self._per_request.get((subject, outcome))
        if series is None:
            series = self._per_request[subject, outcome] = (
                self.requests.labels(subject, outcome),
                self.request_seconds.labels(subject, outcome),
            )
        series[0].inc()
        series[1].observe(seconds)
        if outcome == "conflict" and subject.startswith(subjects.COMMAND_PREFIX):
            self.command_conflicts.labels(subject).inc()

    def ingested(self, commands: int) -> None:
        self.ingest_executed.inc(commands)

    def batch(self, projection: str, events: int, parked: int, seconds: float) -> None:
        self.batch_events.labels(projection).observe(events)
        self.batch_seconds.labels(projection).observe(seconds)
        if parked:
            self.events_parked.labels(projection).inc(parked)

    def observe_status(self, report: dict[str, Any]) -> None:
        """Set the log's and the projections' figures from a status report
        (``consumers.system.collect_status``)."""
        self.log_last_seq.set(report["stream"]["last_seq"])
        for name, projection in report["projections"].items():
            self.checkpoint.labels(name).set(projection["checkpoint"])
            lag = projection["lag"]
            self.lag.labels(name).set(-1 if lag is None else lag)
            self.parked.labels(name).set(projection["parked"])
            if projection.get("version") is not None:
                self.version.labels(name).set(projection["version"])
            build = projection.get("build")
            self.building.labels(name).set(build["version"] if build else 0)
            build_lag = build["lag"] if build else None
            self.build_lag.labels(name).set(-1 if build_lag is None else build_lag)
        ingest = report.get("ingest")
        self.ingest_backlog.set(-1 if ingest is None else ingest["backlog"])
        self.ingest_parked.set(0 if ingest is None else ingest["parked"])

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """The same figures for ``agentmem.sys.status``: each metric's samples with their
        labels, the histograms as their count and sum (the buckets are for Prometheus)."""
        figures: dict[str, list[dict[str, Any]]] = {}
        for family in self.registry.collect():
            samples = [
                {"name": s.name, "labels": s.labels, "value": s.value}
                for s in family.samples
                if not s.name.endswith(("_bucket", "_created"))
            ]
            if samples:
                figures[family.name] = samples
        return figures
