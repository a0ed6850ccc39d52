"""The JSON Schema check of tool parameters as the command handlers run it
(``consumers/tools.py``): the bounded shape on the event loop, the schema in a thread, one at
a time, within a time limit. No NATS, no database."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from agentmem.consumers.tools import check_parameters
from agentmem.domain import tools
from agentmem.errors import InvalidError, UnavailableError


async def test_a_schema_is_checked_and_an_invalid_one_names_where() -> None:
    await check_parameters({"type": "object", "properties": {"x": {"type": "string"}}})
    with pytest.raises(InvalidError, match="not a valid JSON Schema") as refused:
        await check_parameters({"type": "object", "properties": {"x": {"type": "strange"}}})
    assert refused.value.details["path"] == "$.parameters.properties.x.type"
    assert "is not valid" in refused.value.details["schema_error"]
    with pytest.raises(InvalidError, match='"type": "object"'):
        await check_parameters({"type": "string"})


async def test_a_shape_out_of_bounds_never_reaches_the_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(parameters: Any) -> None:
        raise AssertionError("check_schema ran on a schema out of bounds")

    monkeypatch.setattr(tools, "check_schema", never)
    finding = {"type": "object", "properties": {"x": {"type": [{"": i} for i in range(6646)]}}}
    with pytest.raises(InvalidError) as refused:
        await check_parameters(finding)
    assert refused.value.details["path"] == "$.parameters.properties.x.type"


async def test_a_check_past_its_time_limit_is_invalid_and_one_queued_behind_it_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    ran: list[Any] = []

    def slow(parameters: Any) -> None:
        ran.append(parameters)
        release.wait(10)

    monkeypatch.setattr(tools, "check_schema", slow)
    first, queued, last = ({"type": "object", "title": t} for t in ("first", "queued", "last"))
    try:
        with pytest.raises(InvalidError, match="too complex to check") as refused:
            await check_parameters(first, timeout=0.3)
        assert refused.value.details == {
            "path": "$.parameters",
            "reason": "too_large",
            "timeout_s": 0.3,
        }
        # The first check still holds the one checking thread: the next waits, then gives up.
        with pytest.raises(UnavailableError, match="retry"):
            await check_parameters(queued, timeout=0.05)
    finally:
        release.set()
    await check_parameters(last, timeout=5)
    assert ran == [first, last]  # the one that gave up in the queue never ran
