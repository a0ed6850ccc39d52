"""Read-your-writes is the client's default (issue 15, item 9): a query sends
``after_seq=client.last_seq`` unless the caller passes one; ``after_seq=0`` opts out."""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from agentmem import Client
from agentmem.queries import GetAgent, Health
from agentmem.service import Service


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
