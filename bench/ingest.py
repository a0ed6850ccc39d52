"""Published commands (issue 18): messages per second from the first publish until every
one is visible to queries, on SQLite, against the request path and a raw JetStream
consume-and-publish pipeline, all measured in the same run.

- ``ingest-sqlite``: ``sizes.ingest`` ``message.append`` commands published with JetStream
  publishes (gathered in windows of ``WINDOW``, each with its ``Nats-Msg-Id``) over
  ``CONVERSATIONS`` conversations on the ingestion subject, executed by the service
  (``python -m agentmem serve``, its own process); timed until the last message of every
  conversation is read back by ``message.last`` (the ingest outcome gives its sequence).
  ``request_rate``: the same appends sent as requests (``IN_FLIGHT`` at a time, one per
  conversation), until the same reads see them.
- ``raw-ingest``: the least a consumer of a work queue can do for the same messages: a
  process of its own (``python -m bench.responder raw-ingest``) pulls them from a work-queue
  stream in batches, publishes each to a second stream (the "log", awaited, gathered per
  batch, with its message id) and acks it; timed from the first publish until the second
  stream holds them all.
- ``faststream-ingest``: the same raw pipeline with FastStream's own JetStream batch pull
  subscriber (its pull loop, not the service's ``PullFeed``), for the paired measurement of
  issue 18 point 6 (docs/performance.md, Ingestion).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator

from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from agentmem import Client, ingestion
from agentmem.auth import tokens
from agentmem.errors import UnavailableError
from bench import env
from bench.harness import Config, Metric, Run, Session, Workload
from bench.responder import RAW_INGEST_IN, RAW_LOG_STREAM

CONVERSATIONS = 64
WINDOW = 256  # JetStream publishes in flight at a time
IN_FLIGHT = 64  # requests at a time on the request path
TEXT = "message {n}: could you check whether the order placed on Tuesday has shipped?"


def _body(session: str, agent: str, n: int) -> bytes:
    return json.dumps(
        {
            "session_id": session,
            "agent_id": agent,
            "message": {"role": "user", "content": TEXT.format(n=n)},
        }
    ).encode()


async def _publish(conns: list[NATS], items: list[tuple[str, bytes, dict[str, str]]]) -> None:
    """JetStream publishes, ``WINDOW`` awaited at a time, spread over the connections."""
    for start in range(0, len(items), WINDOW):
        window = items[start : start + WINDOW]
        acks = await asyncio.gather(
            *(
                conns[i % len(conns)].request(s, b, timeout=30, headers=h)
                for i, (s, b, h) in enumerate(window)
            )
        )
        for ack in acks:
            if b'"error"' in ack.data:
                raise RuntimeError(f"publish refused: {ack.data[:200]!r}")


async def _visible(client: Client, session: str, seq: int, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            await client.last_messages(session, 1, after_seq=seq)
            return
        except UnavailableError:
            if time.monotonic() > deadline:
                raise


async def _drained(js: JetStreamContext, seconds: float = 600) -> None:
    """Until the ingestion stream is empty: every command executed, its outcome recorded
    and acked (read by the service principal, as an operator's `agentmem status` would)."""
    deadline = time.monotonic() + seconds
    while (await js.stream_info(ingestion.STREAM)).state.messages:
        if time.monotonic() > deadline:
            raise RuntimeError("the ingestion backlog did not drain")
        await asyncio.sleep(0.005)


async def _stored_seq(client: Client, command_id: str) -> int:
    outcome = await client.ingest_status(command_id)
    if outcome["status"] != "stored":
        raise RuntimeError(f"published command {command_id}: {outcome}")
    return int(outcome["seq"])


@contextlib.asynccontextmanager
async def service_session(cfg: Config) -> AsyncIterator[Run]:
    name = "ingest-sqlite"
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(env.nats_server(cfg, name))
        svc = await stack.enter_async_context(env.service(cfg, url, name, 2))
        conns = await stack.enter_async_context(
            env.client_connections(url, cfg.sizes.connections, svc.token)
        )
        clients = [env.client(nc, svc.token) for nc in conns]
        (service_nc,) = await stack.enter_async_context(env.connections(url, 1))
        operator = service_nc.jetstream()
        agent = str((await clients[0].create_agent("bench agent")).fields["agent_id"])
        parsed = tokens.parse(f"Bearer {svc.token}")
        assert parsed is not None
        subject = f"agentmem.in.{parsed.org_id}.message.append"
        auth = {tokens.HEADER: f"Bearer {svc.token}"}
        runs = itertools.count()

        async def run(warmup: bool) -> dict[str, float]:
            r = next(runs)
            total = cfg.count(cfg.sizes.ingest, warmup)
            sessions = [f"p{r}-{c}" for c in range(CONVERSATIONS)]
            items = [
                (
                    subject,
                    _body(sessions[n % CONVERSATIONS], agent, n),
                    {**auth, "Nats-Msg-Id": f"b{r}-{n}"},
                )
                for n in range(total)
            ]
            last = {n % CONVERSATIONS: n for n in range(total)}
            started = time.perf_counter()
            await _publish(conns, items)
            published = time.perf_counter() - started
            await _drained(operator)
            seqs = await asyncio.gather(
                *(_stored_seq(clients[c % len(clients)], f"b{r}-{n}") for c, n in last.items())
            )
            await asyncio.gather(
                *(_visible(clients[0], sessions[c], seq) for c, seq in zip(last, seqs, strict=True))
            )
            ingested = time.perf_counter() - started

            # The request path: the same appends as requests, one conversation per task.
            req_sessions = [f"q{r}-{c}" for c in range(CONVERSATIONS)]
            queue = list(range(total))
            req_seqs: dict[int, int] = {}

            async def worker(w: int) -> None:
                client = clients[w % len(clients)]
                while queue:
                    n = queue.pop(0)
                    c = n % CONVERSATIONS
                    written = await client.append_message(
                        req_sessions[c], agent, "user", TEXT.format(n=n)
                    )
                    req_seqs[c] = max(req_seqs.get(c, 0), written.seq)

            started = time.perf_counter()
            await asyncio.gather(*(worker(w) for w in range(IN_FLIGHT)))
            await asyncio.gather(
                *(_visible(clients[0], req_sessions[c], s) for c, s in req_seqs.items())
            )
            requested = time.perf_counter() - started
            return {
                "published_rate": total / published,
                "ingest_rate": total / ingested,
                "request_rate": total / requested,
            }

        yield run


def _raw(kind: str) -> Session:
    @contextlib.asynccontextmanager
    async def session(cfg: Config) -> AsyncIterator[Run]:
        name = kind
        async with contextlib.AsyncExitStack() as stack:
            url = await stack.enter_async_context(env.nats_server(cfg, name))
            await stack.enter_async_context(env.responder(cfg, kind, url))
            conns = await stack.enter_async_context(env.connections(url, cfg.sizes.connections))
            js = conns[0].jetstream()
            runs = itertools.count()

            async def stored() -> int:
                return int((await js.stream_info(RAW_LOG_STREAM)).state.messages)

            async def run(warmup: bool) -> dict[str, float]:
                r = next(runs)
                total = cfg.count(cfg.sizes.ingest, warmup)
                before = await stored()
                items = [
                    (
                        f"{RAW_INGEST_IN}.c{n % CONVERSATIONS}",
                        _body(f"c{n % CONVERSATIONS}", "agent", n),
                        {"Nats-Msg-Id": f"b{r}-{n}"},
                    )
                    for n in range(total)
                ]
                started = time.perf_counter()
                await _publish(conns, items)
                deadline = time.monotonic() + 600
                while await stored() < before + total:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{kind}: not all consumed in 600 s")
                    await asyncio.sleep(0.005)
                return {"ingest_rate": total / (time.perf_counter() - started)}

            yield run

    return session


def workloads() -> list[Workload]:
    return [
        Workload(
            "raw-ingest",
            "raw: work-queue consume, publish to a second stream, ack",
            (Metric("ingest_rate", "consume-and-publish, published until stored", "msg/s"),),
            _raw("raw-ingest"),
            group="ingest",
        ),
        Workload(
            "ingest-sqlite",
            "published message appends (sqlite), until visible to queries",
            (
                Metric("published_rate", "JetStream publish, acknowledged", "msg/s"),
                Metric(
                    "ingest_rate",
                    "published until visible to queries",
                    "msg/s",
                    ("raw-ingest:ingest_rate",),
                ),
                Metric(
                    "request_rate",
                    f"the same as requests ({IN_FLIGHT} in flight), until visible",
                    "msg/s",
                    ("ingest-sqlite:ingest_rate",),
                ),
            ),
            service_session,
            group="ingest",
        ),
        Workload(
            "faststream-ingest",
            "raw pipeline with FastStream's own JetStream pull subscriber",
            (
                Metric(
                    "ingest_rate",
                    "consume-and-publish, published until stored",
                    "msg/s",
                    ("raw-ingest:ingest_rate",),
                ),
            ),
            _raw("faststream-ingest"),
            group="ingest",
        ),
    ]


WORKLOADS = workloads()
