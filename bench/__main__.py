"""``python -m bench``: run the workloads, print the table, write it as JSON."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from agentmem.logging import configure
from agentmem.projections.memories import MemoriesProjection
from bench import (
    baselines,
    env,
    forget,
    graph,
    harness,
    ingest,
    longchat,
    memories,
    messages,
    pgbatch,
    search,
    spread,
    vectors,
    workloads,
)
from bench.harness import NORMAL, QUICK, Config, Workload

ALL: list[Workload] = [
    *baselines.WORKLOADS,
    *workloads.WORKLOADS,
    *messages.WORKLOADS,
    *search.WORKLOADS,
    *memories.WORKLOADS,
    *vectors.WORKLOADS,
    *ingest.WORKLOADS,
]
# Run only when named with --only: they need a Postgres server (AGENTMEM_BENCH_POSTGRES).
ON_REQUEST: list[Workload] = [
    *pgbatch.WORKLOADS,
    *messages.ON_REQUEST,
    *workloads.ON_REQUEST,
    *search.ON_REQUEST,
    *longchat.ON_REQUEST,
    *spread.ON_REQUEST,
    *memories.ON_REQUEST,
    *graph.ON_REQUEST,
    *vectors.ON_REQUEST,
    *forget.ON_REQUEST,
]
LARGE_REPLAY = 1_000_000


def parser() -> argparse.ArgumentParser:
    every = ALL + ON_REQUEST
    names = ", ".join(sorted({w.id for w in every} | {w.group for w in every if w.group}))
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark AgentMem against raw nats-py/sqlite3 baselines and the "
        "eventsourcing library, measured in the same run. The service (python -m agentmem serve) "
        "and the raw responders run in processes of their own; the clients run in this one.",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke run")
    p.add_argument("--large", action="store_true", help=f"replay {LARGE_REPLAY:,} events")
    p.add_argument(
        "--replay-events",
        type=int,
        metavar="N",
        help="replay N events (default 100,000; 500 with --quick; --large sets 1,000,000)",
    )
    p.add_argument("--only", metavar="NAME[,NAME]", help=f"run only these workloads: {names}")
    p.add_argument(
        "--no-baselines",
        action="store_true",
        help="with --only, do not add the baselines the chosen workloads are compared with",
    )
    p.add_argument("--repeats", type=int, help="measured runs after the warm-up (default 3)")
    p.add_argument("--json", type=Path, default=Path("bench-results.json"), metavar="PATH")
    p.add_argument(
        "--sync-always",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run nats-server with jetstream { sync_interval: always }, the service's durable "
        "default (default: on; --no-sync-always uses the server's lazy 2-minute fsync)",
    )
    p.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop of the clients and of the replay children (default asyncio); the "
        "service and the raw responders always run asyncio, as `agentmem serve` does",
    )
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    for flag in ("--child", "--child-nats", "--child-store", "--child-events"):
        p.add_argument(flag, help=argparse.SUPPRESS)
    return p


def select(only: str | None, with_baselines: bool) -> list[Workload]:
    if not only:
        return ALL
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    every = ALL + ON_REQUEST
    known = {w.id for w in every} | {w.group for w in every if w.group}
    unknown = wanted - known
    if unknown:
        raise SystemExit(
            f"unknown workload(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )
    chosen = {w.id for w in every if w.id in wanted or w.group in wanted}
    if with_baselines:
        chosen |= {need for w in every if w.id in chosen for need in w.needs()}
    return [w for w in every if w.id in chosen]


def git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_loop(main: Coroutine[Any, Any, Any], loop: str) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


async def bench(args: argparse.Namespace, selected: list[Workload]) -> int:
    sizes = QUICK if args.quick else NORMAL
    if args.large or args.replay_events:
        sizes = replace(sizes, replay_events=args.replay_events or LARGE_REPLAY)
    repeats = args.repeats or (1 if args.quick else 3)
    meta: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "bench", *sys.argv[1:]]),
        "commit": git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "nats-py": importlib.metadata.version("nats-py"),
        "nats-server": env.server_version(),
        "jetstream_sync_interval": "always" if args.sync_always else "default (2 min)",
        "loop": args.loop,
        "repeats": repeats,
        "sizes": asdict(sizes),
        "loadavg_start": os.getloadavg(),
    }
    sync = (
        "sync_interval: always (fsync before every ack; the service's durable default)"
        if args.sync_always
        else "default sync_interval (lazy 2-minute fsync; NOT the service's durable default)"
    )
    print(
        f"{meta['nats-server']}, JetStream {sync}; loop {args.loop}; {repeats} repeats "
        f"after a warm-up",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="agentmem-bench-") as tmp:
        async with AsyncExitStack() as stack:
            cfg = Config(Path(tmp), sizes, args.sync_always, args.loop, repeats, stack)
            if importlib.util.find_spec("eventsourcing") is None:
                cfg.note(
                    "peer skipped: the eventsourcing library is not installed "
                    "(`pip install -e '.[dev]'` or `'.[bench]'` installs it)"
                )
                selected = [w for w in selected if w.id != "peer"]
            measured = [await harness.measure(w, cfg) for w in selected]
    meta["loadavg_end"] = os.getloadavg()
    result_rows = harness.rows(measured)
    cfg.notes += [
        "ratio = median / baseline median: above 1 is better for rates, below 1 for latencies",
        "register-user (KDF minimal), rename-org and append-message are compared with raw "
        "command; the scrypt run shows what the password hash costs on top",
        "the service (python -m agentmem serve, one process, one NATS connection) and each raw "
        "responder (python -m bench.responder, likewise) run in processes of their own; the "
        "clients run in the bench process",
    ]
    print(
        f"\n{meta['nats-server']}, JetStream {sync}; loop {args.loop}; commit {meta['commit']}; "
        f"{meta['machine']}; load {meta['loadavg_start'][0]:.1f} -> {meta['loadavg_end'][0]:.1f}"
    )
    print(harness.table(result_rows))
    for note in cfg.notes:
        print(f"- {note}")
    harness.write_json(args.json, meta, result_rows, cfg.notes)
    print(f"\nwritten to {args.json}")
    return 1 if any(m.error for m in measured) else 0


def child(args: argparse.Namespace) -> int:
    kind = args.child
    # The store: an SQLite file, or a Postgres URL (which a Path would mangle).
    url, store, events = args.child_nats, args.child_store, int(args.child_events)
    if kind == "replay":
        result = run_loop(workloads.replay_child(url, store, events), args.loop)
    elif kind == "memory-replay":
        replayed = workloads.replay_child(url, store, events, MemoriesProjection())
        result = run_loop(replayed, args.loop)
    elif kind == "vectors-rebuild":
        result = run_loop(vectors.rebuild_child(url, store, events), args.loop)
    elif kind == "raw-projection":
        result = run_loop(baselines.raw_projection_child(url, Path(store), events), args.loop)
    elif kind == "raw-memory-projection":
        result = run_loop(memories.raw_projection_child(url, Path(store), events), args.loop)
    else:
        raise SystemExit(f"unknown child {kind}")
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure("warning", "console")
    if args.child:
        return child(args)
    if args.list:
        for w in ALL + ON_REQUEST:
            print(f"{w.id:24} {w.title}")
        return 0
    selected = select(args.only, not args.no_baselines)
    code: int = run_loop(bench(args, selected), args.loop)
    return code


if __name__ == "__main__":
    sys.exit(main())
