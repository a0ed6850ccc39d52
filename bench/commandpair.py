"""``python -m bench.commandpair``: is ``memory.add`` slower than the other commands?

``python -m bench`` measures each workload in turn, so on a machine whose load changes
from one minute to the next, ``memory-add`` and ``rename-org`` may be measured under
different loads. This runs them on one service (``python -m agentmem serve`` in its own
process, a fresh embedded nats-server with ``sync_interval: always``), one client, one
request at a time, in alternating blocks of ``--block`` requests: the raw command
(``bench/responder.py``, in its own process, on the same nats-server), ``memory.add`` of a
new sentence, ``org.rename`` of one org, ``message.append`` of one message. The first
round is a warm-up. Each line gives the p50 and p90 of one command over the other rounds,
and its p50 over the raw command's, then the CPU time per request (user and system, from
``/proc``) of each process that took part: the service, the raw responder, nats-server and
this client. On a machine shared with other work the CPU a request costs is steadier than
its latency, and it is what the latency grows by when the cores are busy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from bench import env
from bench.harness import NORMAL, Config
from bench.memories import drink, text
from bench.messages import TEXT
from bench.responder import RAW_COMMAND


async def main(rounds: int, block: int) -> None:
    with tempfile.TemporaryDirectory(prefix="agentmem-commandpair-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            cfg = Config(Path(tmp), NORMAL, True, "asyncio", 1, stack)
            url = await stack.enter_async_context(env.nats_server(cfg, "commandpair"))
            svc = await stack.enter_async_context(env.service(cfg, url, "commandpair", 2))
            (nc,) = await stack.enter_async_context(env.connections(url, 1))
            (agent,) = await stack.enter_async_context(env.client_connections(url, 1, svc.token))
            client = env.client(agent, svc.token)
            await stack.enter_async_context(env.responder(cfg, "raw-command", url))
            org_id = str((await client.create_org("bench")).fields["org_id"])
            agent_id = str((await client.create_agent("bench agent")).fields["agent_id"])
            numbers = iter(range(10**9))

            async def add() -> object:
                n = next(numbers)
                return await client.add_memory(text(n, drink(n, 1)), user_id="bench-user")

            async def rename() -> object:
                return await client.rename_org(org_id, f"name {next(numbers)}")

            async def append() -> object:
                return await client.append_message(
                    "bench", agent_id, "user", TEXT.format(n=next(numbers))
                )

            async def raw() -> object:
                body = msgspec.json.encode({"org_id": org_id, "name": f"name {next(numbers)}"})
                reply = msgspec.json.decode((await nc.request(RAW_COMMAND, body, 10)).data)
                if not reply["ok"]:
                    raise RuntimeError(f"raw command answered {reply}")
                return reply

            commands: dict[str, Callable[[], Awaitable[object]]] = {
                "raw command": raw,
                "memory.add": add,
                "org.rename": rename,
                "message.append": append,
            }
            latencies: dict[str, list[float]] = {name: [] for name in commands}
            cpu: dict[str, dict[str, float]] = {name: {} for name in commands}
            for round_number in range(rounds + 1):
                for name, call in commands.items():
                    cpu_before = env.cpu_seconds()
                    for _ in range(block):
                        before = time.perf_counter()
                        await call()
                        if round_number:  # the first round warms up
                            latencies[name].append(time.perf_counter() - before)
                    if round_number:
                        for kind, seconds in env.cpu_seconds().items():
                            spent = seconds - cpu_before.get(kind, 0.0)
                            cpu[name][kind] = cpu[name].get(kind, 0.0) + spent
            raw_p50 = statistics.median(latencies["raw command"])
            for name, values in latencies.items():
                values.sort()
                p50 = statistics.median(values)
                p90 = values[int(len(values) * 0.9)]
                print(
                    f"{name:15} n={len(values):,}  p50 {p50 * 1e6:7,.0f} µs  "
                    f"p90 {p90 * 1e6:7,.0f} µs  p50 / raw {p50 / raw_p50:.2f}x"
                )
                per_request = "  ".join(
                    f"{kind} {seconds / len(values) * 1e3:.2f}"
                    for kind, seconds in sorted(cpu[name].items())
                    if kind != "other"
                )
                print(f"{'':15} CPU ms per request: {per_request}")
            print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.commandpair")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    p.add_argument("--block", type=int, default=200, help="requests per command per round")
    args = p.parse_args()
    asyncio.run(main(args.rounds, args.block))
