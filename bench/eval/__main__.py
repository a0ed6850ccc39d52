"""``python -m bench.eval``: the retrieval evaluation against a real service."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from agentmem.logging import configure
from bench.__main__ import git_commit
from bench.eval import dataset, report
from bench.eval.run import MODES, evaluate, service_client


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.eval",
        description="Load the retrieval set (bench/eval/retrieval.json) into a fresh service "
        "and print Recall@1, Recall@5, MRR and nDCG@10 per category for each search mode "
        "the service accepts, with cross-scope leaks counted.",
    )
    p.add_argument(
        "--split",
        choices=["dev", "test", "all"],
        default="all",
        help="the queries asked: dev (for tuning), test (for reporting) or all (default)",
    )
    p.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"the modes to try, comma-separated (default {','.join(MODES)})",
    )
    p.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--data", type=Path, default=dataset.PATH, help="the set (default: ours)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    return p


async def main_async(args: argparse.Namespace) -> int:
    data = dataset.load(args.data)
    if args.split != "all":
        data = data.split([args.split])
    wanted = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(wanted) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown mode(s): {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    async with service_client(args.store) as client:
        evaluation = await evaluate(client, data, wanted)
    meta: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "bench.eval", *sys.argv[1:]]),
        "commit": git_commit(),
        "store": args.store,
        "split": args.split,
        "memories": len(data.memories),
        "queries": len(data.queries),
        "load_seconds": evaluation.load_seconds,
        "seconds": time.perf_counter() - started,
    }
    print(
        f"{meta['memories']} memories, {meta['queries']} queries (split {args.split}), "
        f"store {args.store}, commit {meta['commit']}; loaded in "
        f"{evaluation.load_seconds:.1f}s\n"
    )
    print(report.text(evaluation))
    if args.json:
        report.write_json(args.json, meta, evaluation)
        print(f"\nwritten to {args.json}")
    unavailable = all(run.unavailable for run in evaluation.runs)
    return 1 if unavailable else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure("warning", "console")
    code: int = asyncio.run(main_async(args))
    return code


if __name__ == "__main__":
    sys.exit(main())
