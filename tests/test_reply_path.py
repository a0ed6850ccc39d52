"""How an answer leaves the service: a reply of its own (never the request's headers sent
back), and a process that gives up when its NATS connection is closed for good, rather than
stay up serving nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from nats.aio.client import Client as NATS

from agentmem import subjects
from agentmem.commands import CreateOrg
from agentmem.service import Service
from tests.conftest import settings_for
from tests.support import NatsServer

NEAR_THE_LIMIT = 1_048_576 - 400  # a header this long fits a request, not twice in a reply


async def test_a_reply_carries_none_of_the_requests_headers(
    service: Service, nc: NATS, auth_headers: dict[str, str]
) -> None:
    """nats-py's ``respond`` sent the request's headers back: the caller's token came back
    in every reply, and a request whose headers neared the payload limit made a reply over
    it, on which nats-server closed the service's connection: every later request found
    no responder."""
    reply = await nc.request("agentmem.q.org.list", b"{}", timeout=5, headers=auth_headers)
    assert msgspec.json.decode(reply.data)["ok"] is True
    assert not reply.headers, reply.headers
    padded = {"X-Pad": "p" * NEAR_THE_LIMIT}
    refused = await nc.request("agentmem.sys.health", b"", timeout=5, headers=padded)
    error = msgspec.json.decode(refused.data)["error"]
    assert (error["code"], error["details"]["reason"]) == ("invalid", "too_long")
    # The service is still connected, and answers the next request.
    again = await nc.request("agentmem.q.org.list", b"{}", timeout=5, headers=auth_headers)
    assert msgspec.json.decode(again.data)["ok"] is True
    assert service.nc is not None
    assert service.nc.is_connected


async def test_a_connection_closed_for_good_fails_the_service(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """``agentmem serve`` exits non-zero on ``failed`` (its supervisor starts it again)."""
    service = Service(settings_for(nats_server, tmp_path))
    await service.start()
    try:
        assert service.nc is not None
        await service.nc.close()  # as nats-py does after an error it does not reconnect from
        assert service.failed.is_set()
        assert "closed for good" in service.failure
    finally:
        await service.stop()
    # A stop of its own is no failure.
    calm = Service(settings_for(nats_server, tmp_path))
    await calm.start()
    await calm.stop()
    assert not calm.failed.is_set()


async def test_a_request_whose_reply_subject_is_no_inbox_is_neither_run_nor_answered(
    service: Service, nc: NATS, auth_headers: dict[str, str]
) -> None:
    """The service published its reply wherever the caller said, with its own permissions:
    an anonymous `sys.health` with an event subject as its reply appended to the log, and a
    reply could overwrite a data key in the key bucket or land in another user's outcomes."""
    js = nc.jetstream()
    before = (await js.stream_info(subjects.STREAM_NAME)).state.last_seq
    for reply in (
        "agentmem.evt.o1.memory.m1",
        "$KV.AGENTMEM_KEYS.o1.u1.=.=.memory.k_0",
        "agentmem.out.o1.u1.cmd42",
    ):
        await nc.publish("agentmem.sys.health", b"", reply=reply)
        body = msgspec.json.encode({"name": "Never made"})
        await nc.publish(CreateOrg.op.subject, body, reply=reply, headers=auth_headers)
    await asyncio.sleep(1)  # what ran would have been appended by now (a few ms)
    answered = await nc.request("agentmem.q.org.list", b"{}", timeout=5, headers=auth_headers)
    assert msgspec.json.decode(answered.data)["ok"] is True
    assert (await js.stream_info(subjects.STREAM_NAME)).state.last_seq == before
    orgs = msgspec.json.decode(answered.data)["data"]["items"]
    assert "Never made" not in [org["name"] for org in orgs]
