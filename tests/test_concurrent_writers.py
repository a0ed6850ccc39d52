"""Concurrent writers on one aggregate, none naming an expected version (issue 15, item 4).

Without ``expected_version`` a command has asked for no version: a concurrent write to its
aggregate is no conflict of its. Writes to one aggregate within a process queue instead of
racing, and a retry against another process backs off with jitter.
"""

from __future__ import annotations

import asyncio

from agentmem import Client, ConflictError
from agentmem.service import Service

WRITERS = 32


async def test_32_concurrent_updates_of_one_agent_without_a_version_never_conflict(
    service: Service, client: Client
) -> None:
    agent_id = (await client.create_agent("Busy")).fields["agent_id"]

    async def update(n: int) -> int | str:
        try:
            return (await client.update_agent(agent_id, description=f"writer {n}")).version
        except ConflictError as exc:
            return str(exc)

    for _ in range(3):
        outcomes = await asyncio.gather(*(update(n) for n in range(WRITERS)))
        conflicts = [o for o in outcomes if isinstance(o, str)]
        assert conflicts == [], f"{len(conflicts)} of {WRITERS} conflicted: {conflicts[0]}"
        # Each got a version of its own: every update was applied once.
        assert len(set(outcomes)) == WRITERS


async def test_an_expected_version_still_conflicts(service: Service, client: Client) -> None:
    agent_id = (await client.create_agent("Strict")).fields["agent_id"]
    version = (await client.update_agent(agent_id, description="one")).version

    async def update(n: int) -> bool:
        try:
            await client.update_agent(agent_id, description=f"{n}", expected_version=version)
        except ConflictError:
            return False
        return True

    outcomes = await asyncio.gather(*(update(n) for n in range(8)))
    assert outcomes.count(True) == 1
