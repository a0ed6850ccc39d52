"""Published commands survive the service (issue 18's "Done when"), on each store:

- 10,000 messages and memories published with plain NATS publish (no acknowledgement) while
  the service is stopped are each stored exactly once, in publish order per conversation
  and per memory scope, once it starts (the bar of the issue);
- the service SIGKILLed five times while it ingests 20,000 published commands: nothing is
  lost, nothing doubled, order kept;
- the nats-server SIGKILLed twice under the running service while it ingests 10,000: the
  same, and the service process lives on (its partitions' subscribers start over).

The nats-server outlives the service here, as it does in a deployment with ``--nats``
(docs/deploy.md, Ingestion). Fast by design: publishes are bulk (one flush, or JetStream
publishes gathered in windows), the checks read the log once at the end, the waits poll
the stream's backlog.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, ingestion, subjects
from agentmem.auth import tokens
from agentmem.eventlog import H_COMMAND_ID
from agentmem.natsflush import flushed
from tests.realparts import bearer, eventually, read_log
from tests.support import NatsServer, ServiceProcess

pytestmark = pytest.mark.slow
STORES = ("sqlite", "postgres")

CONVERSATIONS = 20
SCOPES = 20


@pytest.fixture
async def fast_nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    connection = await nats.connect(
        nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1
    )
    yield connection
    await connection.close()


@pytest.fixture
def service_process(
    nats_server: NatsServer, tmp_path: Path, store_url: str
) -> Iterator[ServiceProcess]:
    (tmp_path / "svc").mkdir()
    env = {"AGENTMEM_STORE": store_url, "AGENTMEM_LOG_LEVEL": "warning"}
    process = ServiceProcess(
        nats_server.url, tmp_path / "svc" / "agentmem.db", tmp_path / "svc.log", env
    )
    yield process
    process.kill()


def publishes(org: str, agent: str, total: int) -> list[tuple[str, bytes, str]]:
    """(subject, body, message id): half appends over the conversations, half memory adds
    over the scopes, interleaved; the id says which conversation or scope and the rank."""
    out = []
    for n in range(total):
        if n % 2 == 0:
            k = (n // 2) % CONVERSATIONS
            body = {
                "session_id": f"c{k}",
                "agent_id": agent,
                "message": {"role": "user", "content": f"message {n} of c{k}"},
            }
            out.append((f"agentmem.in.{org}.message.append", body, f"c{k}-{n:06d}"))
        else:
            k = (n // 2) % SCOPES
            body = {"content": f"fact {n} of scope m{k}", "session_id": f"m{k}"}
            out.append((f"agentmem.in.{org}.memory.add", body, f"m{k}-{n:06d}"))
    return [(s, json.dumps(b).encode(), i) for s, b, i in out]


async def prepare(service: ServiceProcess, nc: NATS) -> tuple[str, str, str]:
    """Started once (it creates the streams), an agent to speak; (token, org, agent)."""
    service.start()
    await service.wait_ready(nc)
    token = service.admin_key()
    parsed = tokens.parse(f"Bearer {token}")
    assert parsed is not None
    agent = (await Client(nc, token).create_agent("Publisher")).fields["agent_id"]
    return token, parsed.org_id, str(agent)


async def backlog(nc: NATS) -> int:
    report = await ingestion.report(nc)
    assert report is not None
    return int(report["backlog"])


async def drained(nc: NATS, timeout: float) -> None:
    async def empty() -> bool:
        return await backlog(nc) == 0

    await eventually(empty, timeout, 0.1, "an empty ingestion backlog")


async def check_stored_once_in_order(nc: NATS, sent: list[tuple[str, bytes, str]]) -> None:
    """Every published command is in the log exactly once; per conversation and per memory
    scope, in publish order."""
    expected = {message_id for _, _, message_id in sent}
    seqs: dict[str, list[int]] = defaultdict(list)
    for message in await read_log(nc):
        key = message.headers.get(H_COMMAND_ID, "")
        command_id = key.rsplit(".", 1)[-1]
        if command_id in expected:
            seqs[command_id].append(message.seq)
    missing = expected - set(seqs)
    assert not missing, f"{len(missing)} lost, e.g. {sorted(missing)[:5]}"
    doubled = {c: s for c, s in seqs.items() if len(s) != 1}
    assert not doubled, f"{len(doubled)} stored more than once, e.g. {list(doubled.items())[:5]}"
    by_group: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for command_id, (seq,) in seqs.items():
        group, rank = command_id.split("-")
        by_group[group].append((seq, int(rank)))
    for group, stored in by_group.items():
        ranks = [rank for _, rank in sorted(stored)]
        assert ranks == sorted(ranks), f"{group} out of publish order"
    assert len(by_group) == CONVERSATIONS + SCOPES


async def test_published_while_the_service_is_down_are_stored_once_in_order(
    fast_nc: NATS, service_process: ServiceProcess
) -> None:
    nc = fast_nc
    token, org, agent = await prepare(service_process, nc)
    assert service_process.terminate() == 0
    sent = publishes(org, agent, 10_000)
    for subject, body, message_id in sent:  # plain NATS publish: fire and forget
        await nc.publish(subject, body, headers={**bearer(token), "Nats-Msg-Id": message_id})
    await flushed(nc)

    async def all_kept() -> bool:  # the server stores them a moment after the flush
        return await backlog(nc) == 10_000

    await eventually(all_kept, 20, 0.05, "10,000 in the ingestion stream")
    service_process.start()
    await service_process.wait_ready(nc)
    await drained(nc, 120)
    await check_stored_once_in_order(nc, sent)
    # Outcomes: the last of a conversation stored, with its commit's sequence.
    reply = await nc.request(
        f"{subjects.QUERY_PREFIX}.ingest.status",
        json.dumps({"command_id": sent[-2][2]}).encode(),
        headers=bearer(token),
        timeout=5,
    )
    outcome = json.loads(reply.data)["data"]
    assert outcome["status"] == "stored"
    assert outcome["seq"] > 0


async def test_sigkill_five_times_while_ingesting(
    fast_nc: NATS, service_process: ServiceProcess
) -> None:
    nc = fast_nc
    token, org, agent = await prepare(service_process, nc)
    sent = publishes(org, agent, 20_000)
    js = nc.jetstream()
    for start in range(0, len(sent), 500):  # JetStream publishes, acknowledged in windows
        window = sent[start : start + 500]
        acks = await asyncio.gather(
            *(js.publish(s, b, headers={**bearer(token), "Nats-Msg-Id": i}) for s, b, i in window)
        )
        assert not any(a.duplicate for a in acks)
    kills = 0
    total = len(sent)
    while kills < 5:
        left = await backlog(nc)
        assert left > 0, f"drained after {kills} kills: the kills must land during ingestion"
        if left <= total * (1 - (kills + 1) / 7):
            service_process.kill()
            assert service_process.process is not None
            assert service_process.process.returncode == -signal.SIGKILL
            kills += 1
            service_process.start()
            await service_process.wait_ready(nc)
        else:
            await asyncio.sleep(0.02)
    await drained(nc, 120)
    await check_stored_once_in_order(nc, sent)


async def test_the_nats_server_killed_twice_while_ingesting(
    nats_server: NatsServer, fast_nc: NATS, service_process: ServiceProcess
) -> None:
    nc = fast_nc
    token, org, agent = await prepare(service_process, nc)
    sent = publishes(org, agent, 10_000)
    js = nc.jetstream()
    for start in range(0, len(sent), 500):
        window = sent[start : start + 500]
        await asyncio.gather(
            *(js.publish(s, b, headers={**bearer(token), "Nats-Msg-Id": i}) for s, b, i in window)
        )
    total = len(sent)
    for kills in range(2):

        async def far_enough(bound: float = total * (1 - (kills + 1) / 3)) -> bool:
            return await backlog(nc) <= bound

        await eventually(far_enough, 120, 0.02, f"ingestion under way before kill {kills + 1}")
        assert await backlog(nc) > 0, "drained: the kills must land during ingestion"
        nats_server.kill()
        await asyncio.sleep(0.5)
        nats_server.start()
        await service_process.wait_ready(nc)
    await drained(nc, 180)
    await check_stored_once_in_order(nc, sent)
    assert service_process.process is not None
    assert service_process.process.poll() is None, "the service survived the outages"
