"""Read-your-writes is the client's default (issue 15, item 9): a query sends
``after_seq=client.last_seq`` unless the caller passes one; ``after_seq=0`` opts out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client
from agentmem.projections import worker as worker_module
from agentmem.queries import GetAgent, Health
from agentmem.service import Service
from tests.conftest import admin_key, answering, settings_for
from tests.support import NatsServer


async def test_a_query_right_after_a_command_sees_it(service: Service, client: Client) -> None:
    for n in range(50):
        agent_id = (await client.create_agent(f"Fresh {n}")).fields["agent_id"]
        assert (await client.get_agent(agent_id)).name == f"Fresh {n}"
    # Another client on the connection starts from what this one wrote.
    assert (await client.with_token(client.token).get_agent(agent_id)).name == "Fresh 49"


class Spy:
    """Passes requests on and keeps the bodies sent."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def request(self, subject: str, payload: bytes = b"", **kwargs: Any) -> Any:
        self.sent.append((subject, msgspec.json.decode(payload) if payload else {}))
        return await self.nc.request(subject, payload, **kwargs)


async def test_after_seq_is_sent_unless_given_and_zero_opts_out(
    service: Service, nc: NATS, admin_token: str
) -> None:
    spy = Spy(nc)
    client = Client(spy, admin_token)  # type: ignore[arg-type]
    agent_id = (await client.create_agent("Spied")).fields["agent_id"]
    last = client.last_seq
    assert last > 0
    await client.get_agent(agent_id)
    await client.get_agent(agent_id, after_seq=1)
    await client.get_agent(agent_id, after_seq=0)
    await client.health()
    reads = [(s, body.get("after_seq")) for s, body in spy.sent[1:]]
    assert reads == [
        (GetAgent.op.subject, last),
        (GetAgent.op.subject, 1),
        (GetAgent.op.subject, 0),
        (Health.op.subject, None),
    ]


async def test_a_read_waiting_for_a_paced_projection_hurries_it(
    nats_server: NatsServer,
    tmp_path: Path,
    store_url: str,
    nc: NATS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A projection under a steady trickle applies one batch per pace; a read that waits
    for a write (``after_seq``) has it applied at once, not when the pace is up."""
    # Nor cut short by the pull's end (the pace never outlasts the open pull).
    monkeypatch.setattr(worker_module, "IDLE_WAIT_S", 30.0)
    settings = settings_for(nats_server, tmp_path, store_url)
    settings.projection_pace_ms = 30_000
    service = Service(settings)
    await service.start()
    try:
        await answering(nats_server.url)
        client = Client(nc, admin_key(tmp_path))
        for n in range(5):  # each add within the pace of the one before: held back
            memory_id = (await client.add_memory(f"fact {n}", user_id="u")).fields["memory_id"]
            # Else it would wait until its 5 s are up, and answer `unavailable`.
            assert (await client.get_memory(str(memory_id))).content == f"fact {n}"
    finally:
        await service.stop()
