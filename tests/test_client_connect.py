"""``Client.connect`` with no service (issue 15, item 8): one clear error, quickly, and no
tracebacks; once connected, a restart of the server is reconnected to quietly."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from agentmem import Client, UnavailableError
from agentmem.config import StartupError
from agentmem.service import Service
from tests.conftest import settings_for
from tests.support import NatsServer, free_port


async def test_connect_to_a_dead_port_fails_fast_with_one_clear_error(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(UnavailableError) as raised:
        await Client.connect(url)
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert url in message
    assert "is the AgentMem service running" in message
    assert raised.value.details["url"] == url
    # No traceback: not on stderr, not in the log.
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err + printed.out
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_restarted_server_is_reconnected_to_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        client = await Client.connect(server.url)
        try:
            with caplog.at_level(logging.DEBUG):
                server.kill()
                await asyncio.sleep(0.5)
                server.start()
                for _ in range(100):
                    if client.nc.is_connected:
                        break
                    await asyncio.sleep(0.1)
            assert client.nc.is_connected
            await client.nc.flush(timeout=2)
        finally:
            await client.close()
    finally:
        server.stop()
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err + printed.out
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "disconnected from AgentMem's NATS server; reconnecting" in warned


async def test_closing_the_client_says_nothing_of_reconnecting(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """nats-py calls the disconnected callback on a close too; a script that ends must not
    print that it is reconnecting."""
    with caplog.at_level(logging.DEBUG):
        client = await Client.connect(nats_server.url)
        await client.close()
    assert not [r for r in caplog.records if "reconnecting" in r.getMessage()]


async def test_a_request_that_finds_no_responder_is_sent_again_for_a_moment(
    nats_server: NatsServer,
) -> None:
    """A service that is (re)starting subscribes a moment later: the request still gets its
    answer. With no service at all, the answer is `unavailable`, after about a second."""
    from agentmem import envelope
    from agentmem.queries import Health

    client = await Client.connect(nats_server.url)
    try:

        async def late_service() -> None:
            await asyncio.sleep(0.15)

            async def answer(msg: Any) -> None:
                await msg.respond(envelope.ok({"live": True, "checks": {}}))

            await client.nc.subscribe(Health.op.subject, cb=answer)

        starting = asyncio.create_task(late_service())
        reply = await client.request(Health.op.subject, {})
        assert reply.data["live"] is True
        await starting

        started = time.perf_counter()
        with pytest.raises(UnavailableError, match="no AgentMem service is answering"):
            await client.request("agentmem.sys.nobody_serves_this", {})
        assert time.perf_counter() - started < 5
    finally:
        await client.close()


async def test_a_service_with_no_nats_server_there_fails_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the bound docs/deploy.md names (30 s; 1 s here), with one line: nats-py's first
    connect retried for ever (a helper's serve logged 178 retries in 90 s and never
    exited)."""
    monkeypatch.setattr("agentmem.service.JETSTREAM_WAIT_S", 1.0)
    nobody = NatsServer(tmp_path / "never-started", free_port())
    service = Service(settings_for(nobody, tmp_path))
    with pytest.raises(StartupError, match=f"no NATS server answered at {nobody.url} within 1s"):
        await asyncio.wait_for(service.start(), 10)
    await service.stop()


async def test_a_taken_metrics_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """As a taken --listen is (a helper's serve started whole, printed its key, and only
    then failed on the metrics port, with exit status 1)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        nobody = NatsServer(tmp_path / "never-started", free_port())
        settings = settings_for(nobody, tmp_path)
        settings.metrics = f"127.0.0.1:{port}"
        service = Service(settings)
        with pytest.raises(StartupError, match=f"the metrics port {port} on 127.0.0.1 is taken"):
            await asyncio.wait_for(service.start(), 10)
        await service.stop()
