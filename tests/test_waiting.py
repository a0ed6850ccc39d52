"""The pieces read-your-writes waits with: the checkpoint board and FreshCall."""

from __future__ import annotations

import asyncio

from agentmem.coalesce import FreshCall
from agentmem.projections.board import CheckpointBoard


async def test_board_wakes_exactly_the_waiters_an_advance_satisfies() -> None:
    board = CheckpointBoard()
    board.advance("users", 1)
    low = asyncio.create_task(board.reached("users", 5, timeout=5))
    high = asyncio.create_task(board.reached("users", 9, timeout=5))
    await asyncio.sleep(0)
    board.advance("users", 6)
    assert await low is True
    assert not high.done()
    board.advance("users", 9)
    assert await high is True


async def test_board_times_out_and_answers_at_once_when_already_there() -> None:
    board = CheckpointBoard()
    assert not board.has("orgs")
    board.advance("orgs", 3)
    assert board.has("orgs")
    assert await board.reached("orgs", 3, timeout=0) is True
    assert await board.reached("orgs", 4, timeout=0.01) is False
    board.advance("orgs", 4)  # a timed-out waiter left behind must not break an advance
    assert board.get("orgs") == 4


async def test_fresh_call_shares_calls_but_never_answers_with_one_started_earlier() -> None:
    started: list[int] = []
    release = asyncio.Event()

    async def lookup() -> int:
        started.append(len(started))
        await release.wait()
        return len(started)

    call = FreshCall(lookup)
    first = asyncio.create_task(call())
    await asyncio.sleep(0)
    # These ask while the first lookup runs: they must wait for a lookup that starts later.
    later = [asyncio.create_task(call()) for _ in range(5)]
    await asyncio.sleep(0)
    assert started == [0]
    release.set()
    assert await first == 1
    assert [await task for task in later] == [2, 2, 2, 2, 2]
    assert started == [0, 1]  # six callers, two lookups


async def test_fresh_call_passes_errors_to_every_waiter() -> None:
    async def broken() -> int:
        await asyncio.sleep(0)
        raise ValueError("log unreachable")

    call = FreshCall(broken)
    results = await asyncio.gather(call(), call(), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
