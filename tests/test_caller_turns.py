"""One caller's flood does not hold up the others (consumers/router.py, ``CallerTurns``).

An outside attacker with a readonly key sent 3,000 `memory.list` requests of about 100 KB
answers each at once: every request of everyone, the health check's JetStream questions
and the projections' pulls waited behind them, health for 7.5-11.7 s. Now one credential
has at most ``PER_CALLER_IN_FLIGHT`` requests running, and at most
``LARGE_REPLIES_PER_CALLER`` large answers on their way out of the process. Checked on a
real nats-server with the real dispatcher; the handlers are the test's own (two public
routes), so that what runs when is in the test's hands.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from agentmem.auth import tokens
from agentmem.commands import Login
from agentmem.consumers.router import (
    LARGE_REPLIES_PER_CALLER,
    LARGE_REPLY_BYTES,
    Dispatcher,
    Request,
    Result,
    Router,
)
from agentmem.domain.access import Principal
from agentmem.natsflush import flushed
from agentmem.queries import Health, ListOrgs, Schema, Status
from tests.support import NatsServer

PER_CALLER = 5


async def nobody(headers: dict[str, str]) -> Principal:
    raise AssertionError("public routes authenticate no one")


async def by_shape(headers: dict[str, str]) -> Principal:
    """The token's user, as its text says (the real check is not what is tested here)."""
    token = tokens.parse(headers.get("Authorization"))
    assert token is not None
    return Principal(token.user_id, token.org_id, ("member",))


def key(user: str, n: int = 0) -> str:
    """A well-formed API key of ``user`` (its ``n``-th)."""
    return f"amk_org1_{user}_key{n}_{'0' * 64}"


class Held:
    """Handlers that wait until the test lets them go, counting who is inside."""

    def __init__(self) -> None:
        self.inside: dict[str, int] = {}
        self.go = asyncio.Event()

    async def login(self, request: Request[Login]) -> Result:
        return await self.hold("public")

    async def status(self, request: Request[Status]) -> Result:
        return await self.hold(request.caller.user_id)

    async def hold(self, who: str) -> Result:
        self.inside[who] = self.inside.get(who, 0) + 1
        await self.go.wait()
        return {"held": who}, None

    async def health(self, request: Request[Health]) -> Result:
        return {"live": True}, None

    async def schema(self, request: Request[Schema]) -> Result:
        return {"blob": "x" * LARGE_REPLY_BYTES}, None  # a large answer, at once

    async def orgs(self, request: Request[ListOrgs]) -> Result:
        return {"blob": "x" * LARGE_REPLY_BYTES}, None  # a large answer, at once


@pytest.fixture
async def service_nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    connection = await nats.connect(nats_server.url)
    yield connection
    await connection.close()


async def dispatcher(service_nc: NATS, held: Held) -> Dispatcher:
    router = Router()
    router.handle(Login)(held.login)
    router.handle(Status)(held.status)
    router.handle(Health)(held.health)
    router.handle(Schema)(held.schema)
    router.handle(ListOrgs)(held.orgs)
    running = Dispatcher(service_nc, router, by_shape, per_caller=PER_CALLER)
    await running.start(["agentmem.sys", "agentmem.cmd", "agentmem.q"])
    return running


LOGIN = json.dumps({"email": "ann@example.org", "password": "long-enough-password"}).encode()


def ask(nc: NATS, subject: str, authorization: str | None) -> asyncio.Task[Any]:
    """A request with this Authorization header (as given), or none."""
    headers = {"Authorization": authorization} if authorization else {}
    body = LOGIN if subject == Login.op.subject else b"{}"
    return asyncio.ensure_future(nc.request(subject, body, timeout=10, headers=headers))


async def settled(held: Held, expected: dict[str, int]) -> None:
    for _ in range(1000):  # up to 10 s: a loaded machine (CI beside other work) is slow
        if held.inside == expected:
            return
        await asyncio.sleep(0.01)
    assert held.inside == expected


async def test_a_callers_requests_past_its_turns_wait_and_others_go_on(
    nc: NATS, service_nc: NATS
) -> None:
    held = Held()
    running = await dispatcher(service_nc, held)
    # However the flooder spells its token, and whichever of its keys it uses: one line.
    spellings = [f"Bearer {key('flooder')}", f"Bearer   {key('flooder')}", key("flooder"),
                 f"bearer {key('flooder', 1)}"]  # fmt: skip
    flood = [
        ask(nc, Status.op.subject, spellings[n % len(spellings)]) for n in range(PER_CALLER + 20)
    ]
    await settled(held, {"flooder": PER_CALLER})  # the rest wait their turn
    other = ask(nc, Status.op.subject, f"Bearer {key('someone-else')}")
    await settled(held, {"flooder": PER_CALLER, "someone-else": 1})
    held.go.set()
    replies = await asyncio.gather(*flood, other)
    assert all(json.loads(r.data)["ok"] for r in replies)  # every one answered
    assert held.inside["flooder"] == PER_CALLER + 20
    await running.stop()


async def test_public_requests_share_one_line_whatever_their_header(
    nc: NATS, service_nc: NATS
) -> None:
    """A public subject reads no credential: a made-up header of each request's own must
    not give it a line of its own (an attacker's ``sys.schema`` flood did so)."""
    held = Held()
    running = await dispatcher(service_nc, held)
    flood = [ask(nc, Login.op.subject, f"made-up-{n}") for n in range(PER_CALLER + 20)]
    await settled(held, {"public": PER_CALLER})
    held.go.set()
    await asyncio.gather(*flood)
    await running.stop()


async def test_health_waits_in_no_callers_line(nc: NATS, service_nc: NATS) -> None:
    """Anonymous callers share one line: a flood of them (logins) must not hold up a
    supervisor's health probe, anonymous too."""
    held = Held()
    running = await dispatcher(service_nc, held)
    flood = [ask(nc, Login.op.subject, None) for _ in range(PER_CALLER + 20)]
    await settled(held, {"public": PER_CALLER})
    probe = await ask(nc, Health.op.subject, None)
    assert json.loads(probe.data)["data"] == {"live": True}
    held.go.set()
    await asyncio.gather(*flood)
    await running.stop()


async def test_a_callers_large_answers_leave_a_few_at_a_time(
    nc: NATS, service_nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large answer holds one of its caller's few large-reply turns until it has left the
    process (a flush); another caller's large answers do not wait for them."""
    held = Held()
    running = await dispatcher(service_nc, held)
    flushing: list[asyncio.Event] = []
    real_flush = service_nc.flush

    async def slow_flush(timeout: int = 10) -> None:
        gate = asyncio.Event()
        flushing.append(gate)
        await gate.wait()
        await real_flush(timeout)

    monkeypatch.setattr(service_nc, "flush", slow_flush)
    flood = [ask(nc, ListOrgs.op.subject, f"Bearer {key('flooder')}") for _ in range(PER_CALLER)]
    for _ in range(200):
        if len(flushing) >= LARGE_REPLIES_PER_CALLER:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert len(flushing) == LARGE_REPLIES_PER_CALLER  # the fifth waits for a turn
    other = ask(nc, ListOrgs.op.subject, f"Bearer {key('someone-else')}")
    for _ in range(200):
        if len(flushing) > LARGE_REPLIES_PER_CALLER:
            break
        await asyncio.sleep(0.01)
    assert len(flushing) == LARGE_REPLIES_PER_CALLER + 1  # not behind the flooder's

    async def release() -> None:
        while True:
            for gate in flushing:
                gate.set()
            await asyncio.sleep(0.01)

    releasing = asyncio.ensure_future(release())
    replies = await asyncio.gather(*flood, other)
    assert all(json.loads(r.data)["ok"] for r in replies)
    await running.stop()
    releasing.cancel()


async def test_a_handler_nats_did_not_answer_is_unavailable(nc: NATS, service_nc: NATS) -> None:
    """A JetStream or key bucket request that times out in a handler (a full disk made
    `memory.forget`'s key bucket write time out) answers `unavailable`, not `internal`."""

    async def times_out(request: Request[Health]) -> Result:
        raise nats.errors.TimeoutError

    router = Router()
    router.handle(Health)(times_out)
    running = Dispatcher(service_nc, router, nobody)
    await running.start(["agentmem.sys"])
    reply = json.loads((await nc.request(Health.op.subject, b"{}", timeout=5)).data)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "unavailable", reply
    await running.stop()


async def test_a_stop_answers_the_requests_already_delivered(
    nc: NATS, service_nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests delivered to the connection but not yet taken by the callback (it takes one
    at a time; here each is slow to take) are answered by a stop, not dropped with the
    subscription: a helper's request sent just before a SIGTERM was never answered."""
    held = Held()
    held.go.set()
    running = await dispatcher(service_nc, held)
    take = running._on_message

    async def slow_take(msg: Any) -> None:
        await asyncio.sleep(0.02)
        await take(msg)

    monkeypatch.setattr(running, "_on_message", slow_take)
    for subscription in running._subscriptions:
        subscription._cb = slow_take
    asked = [ask(nc, Health.op.subject, None) for _ in range(20)]
    await flushed(nc)
    await asyncio.sleep(0.05)  # delivered; the callback has taken two or three
    await running.stop()
    replies = await asyncio.gather(*asked, return_exceptions=True)
    assert [r for r in replies if isinstance(r, BaseException)] == []
