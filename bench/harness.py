"""Timing, repeats, medians and spreads, and the table and JSON that every run prints.

A workload is an async context manager (its setup and teardown) that yields one function:
``run(warmup)`` measures once and returns ``{metric key: value}``. The harness calls it once
as a warm-up, then ``repeats`` times, and reports the median and the min-max spread of each
metric, with its ratio to the baseline metrics it names (measured in the same run).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    seq_requests: int  # one client, one request at a time
    conc_requests: int  # spread over `clients` tasks on `connections` NATS connections
    kdf_seq_requests: int  # the same, for commands that hash a password at full cost
    kdf_conc_requests: int
    seconds: float  # every loop also stops after this long
    query_rows: int
    replay_events: int
    peer_aggregates: int
    lag_rate: float  # commands per second
    lag_seconds: float
    clients: int = 64
    connections: int = 8
    warmup_fraction: float = 0.2
    conversation: int = 100_000  # messages in the conversation of the messages workloads
    last_conversation: int = 2_000  # messages in the conversation of last-50 and raw-last50
    search: int = 100_000  # matching messages in the searched scope, and in another org
    memories: int = 100_000  # memories per add_batch run, and in the list and search store
    memory_scopes: int = 1_000  # the users those memories belong to
    ingest: int = 20_000  # published message appends per run of the ingest workloads


NORMAL = Sizes(
    seq_requests=2_000,
    conc_requests=20_000,
    kdf_seq_requests=60,
    kdf_conc_requests=300,
    seconds=10.0,
    query_rows=10_000,
    replay_events=100_000,
    peer_aggregates=10_000,
    lag_rate=1_000.0,
    lag_seconds=5.0,
)
QUICK = Sizes(
    seq_requests=20,
    conc_requests=128,
    kdf_seq_requests=2,
    kdf_conc_requests=8,
    seconds=2.0,
    query_rows=200,
    replay_events=500,
    peer_aggregates=100,
    lag_rate=200.0,
    lag_seconds=0.5,
    warmup_fraction=0.5,
    conversation=2_000,
    last_conversation=200,
    search=2_000,
    memories=2_000,
    memory_scopes=20,
    ingest=1_000,
)


@dataclass
class Config:
    tmp: Path
    sizes: Sizes
    sync_always: bool
    loop: str
    repeats: int
    stack: AsyncExitStack
    notes: list[str] = field(default_factory=list)
    _shared: dict[str, Any] = field(default_factory=dict)

    def count(self, n: int, warmup: bool) -> int:
        return max(1, int(n * self.sizes.warmup_fraction)) if warmup else n

    async def shared(self, key: str, make: Callable[[], AbstractAsyncContextManager[T]]) -> T:
        """A resource several workloads use (a seeded log), made once and kept for the run."""
        if key not in self._shared:
            self._shared[key] = await self.stack.enter_async_context(make())
        value: T = self._shared[key]
        return value

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            print(f"  note: {text}", file=sys.stderr)


Run = Callable[[bool], Awaitable[dict[str, float]]]
Session = Callable[[Config], AbstractAsyncContextManager[Run]]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    # "workload-id:key" of the figures this one is compared with, in the same run.
    baselines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Workload:
    id: str
    title: str
    metrics: tuple[Metric, ...]
    session: Session
    group: str = ""

    def needs(self) -> set[str]:
        return {ref.split(":")[0] for m in self.metrics for ref in m.baselines}


# Load loops -----------------------------------------------------------------------------
Call = Callable[[int, int], Awaitable[object]]  # (worker, request number)


@dataclass
class Loop:
    latencies: list[float]  # seconds, of the calls that succeeded
    completed: int
    errors: int
    seconds: float
    first_error: str | None = None

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    def us(self, q: float) -> float:
        return percentile(self.latencies, q) * 1e6


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


async def sequential(call: Call, count: int, seconds: float) -> Loop:
    """One client, one request at a time: at most ``count`` calls, for at most ``seconds``."""
    latencies: list[float] = []
    errors, first_error = 0, None
    clock = time.perf_counter
    started = clock()
    deadline = started + seconds
    for i in range(count):
        before = clock()
        if before > deadline:
            break
        try:
            await call(0, i)
        except Exception as exc:
            errors += 1
            first_error = first_error or repr(exc)
            continue
        latencies.append(clock() - before)
    return Loop(latencies, len(latencies), errors, clock() - started, first_error)


async def concurrent(call: Call, workers: int, count: int, seconds: float) -> Loop:
    """``workers`` tasks, each calling in a loop, sharing ``count`` calls and a deadline."""
    latencies: list[float] = []
    issued = 0
    errors = 0
    first_error: list[str] = []
    clock = time.perf_counter
    started = clock()
    deadline = started + seconds

    async def worker(w: int) -> None:
        nonlocal issued, errors
        while issued < count and clock() < deadline:
            i = issued
            issued += 1
            before = clock()
            try:
                await call(w, i)
            except Exception as exc:
                errors += 1
                if not first_error:
                    first_error.append(repr(exc))
                continue
            latencies.append(clock() - before)

    await asyncio.gather(*(worker(w) for w in range(workers)))
    elapsed = clock() - started
    return Loop(latencies, len(latencies), errors, elapsed, first_error[0] if first_error else None)


def check(cfg: Config, name: str, loop: Loop) -> None:
    """Failed calls under load are noted; a loop in which no call succeeded is broken, and
    fails the workload (so a smoke run catches it)."""
    if loop.errors and not loop.completed:
        raise RuntimeError(f"{name}: all {loop.errors} calls failed, first: {loop.first_error}")
    if loop.errors:
        cfg.note(
            f"{name}: {loop.errors} of {loop.errors + loop.completed} calls failed, first: "
            f"{loop.first_error}"
        )


async def two_ways(
    cfg: Config, name: str, call: Call, warmup: bool, kdf: bool = False
) -> dict[str, float]:
    """The request-reply figures every command and query workload reports."""
    s = cfg.sizes
    seq_n = s.kdf_seq_requests if kdf else s.seq_requests
    conc_n = s.kdf_conc_requests if kdf else s.conc_requests
    if warmup:
        name = f"{name} (warm-up)"
    one = await sequential(call, cfg.count(seq_n, warmup), s.seconds)
    check(cfg, f"{name}, one client", one)
    many = await concurrent(call, s.clients, cfg.count(conc_n, warmup), s.seconds)
    check(cfg, f"{name}, {s.clients} clients", many)
    return {
        "seq_p50": one.us(0.50),
        "seq_p99": one.us(0.99),
        "seq_rate": one.rate,
        "conc_rate": many.rate,
        "conc_p50": many.us(0.50),
    }


def request_metrics(unit: str, baseline: str | None, peer: str | None = None) -> tuple[Metric, ...]:
    """The metrics of ``two_ways``, compared key by key with ``baseline``'s."""

    def refs(key: str, *extra: str | None) -> tuple[str, ...]:
        found = [f"{baseline}:{key}" if baseline else None, *extra]
        return tuple(r for r in found if r)

    return (
        Metric("seq_p50", "1 client p50", "µs", refs("seq_p50")),
        Metric("seq_p99", "1 client p99", "µs", refs("seq_p99")),
        Metric("seq_rate", "1 client", unit, refs("seq_rate")),
        Metric("conc_rate", "64 clients", unit, refs("conc_rate", peer)),
        Metric("conc_p50", "64 clients p50", "µs", refs("conc_p50")),
    )


# Running --------------------------------------------------------------------------------
@dataclass
class Measured:
    workload: Workload
    values: dict[str, list[float]]
    seconds: float
    error: str | None = None


async def measure(workload: Workload, cfg: Config) -> Measured:
    started = time.perf_counter()
    values: dict[str, list[float]] = {m.key: [] for m in workload.metrics}
    print(f"[{workload.id}] {workload.title}", file=sys.stderr, flush=True)
    try:
        async with workload.session(cfg) as run:
            await run(True)
            for repeat in range(1, cfg.repeats + 1):
                result = await run(False)
                for key, value in result.items():
                    values.setdefault(key, []).append(value)
                shown = ", ".join(f"{k}={fmt(v)}" for k, v in result.items())
                print(f"  repeat {repeat}/{cfg.repeats}: {shown}", file=sys.stderr, flush=True)
    except Exception as exc:
        cfg.note(f"{workload.id} failed: {exc!r}")
        return Measured(workload, values, time.perf_counter() - started, repr(exc))
    return Measured(workload, values, time.perf_counter() - started)


@dataclass(frozen=True)
class Row:
    workload: str
    metric: str
    unit: str
    median: float | None
    low: float | None
    high: float | None
    values: list[float]
    baseline: str | None = None
    baseline_median: float | None = None
    ratio: float | None = None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def rows(measured: list[Measured]) -> list[Row]:
    by_id = {m.workload.id: m for m in measured}

    def label(ref: str) -> str:
        wid, key = ref.split(":")
        found = by_id.get(wid)
        if found is None:
            return ref
        metric = next((m for m in found.workload.metrics if m.key == key), None)
        return f"{wid} {metric.label if metric else key}"

    out: list[Row] = []
    for m in measured:
        for metric in m.workload.metrics:
            values = m.values.get(metric.key, [])
            median = _median(values)
            common = Row(
                workload=m.workload.title,
                metric=metric.label,
                unit=metric.unit,
                median=median,
                low=min(values) if values else None,
                high=max(values) if values else None,
                values=values,
            )
            if not metric.baselines:
                out.append(common)
                continue
            for ref in metric.baselines:
                wid, key = ref.split(":")
                base = by_id.get(wid)
                base_median = _median(base.values.get(key, [])) if base else None
                ratio = median / base_median if median is not None and base_median else None
                out.append(
                    replace(common, baseline=label(ref), baseline_median=base_median, ratio=ratio)
                )
    return out


def fmt(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(result_rows: list[Row]) -> str:
    header = ("workload", "metric", "median", "spread (min-max)", "unit", "baseline", "ratio")
    lines = [header]
    for r in result_rows:
        spread = f"{fmt(r.low)}-{fmt(r.high)}" if r.low is not None else "-"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        lines.append(
            (r.workload, r.metric, fmt(r.median), spread, r.unit, r.baseline or "-", ratio)
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {2, 3, 6}

    def render(line: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])


def write_json(path: Path, meta: dict[str, Any], result_rows: list[Row], notes: list[str]) -> None:
    document = {"meta": meta, "rows": [asdict(r) for r in result_rows], "notes": notes}
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
