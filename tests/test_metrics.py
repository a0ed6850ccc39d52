"""The metrics listener answers Prometheus text whose counters move with the requests made,
agentmem.sys.status reports the same figures, and the probes tell live from ready."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families

from agentmem import Client, ConflictError, ForbiddenError, envelope
from agentmem.commands import CreateOrg, RenameOrg
from agentmem.consumers import commands as command_handlers
from agentmem.consumers.aggregates import AggregateCache
from agentmem.consumers.auth import Authenticator
from agentmem.consumers.commands import CommandRunner
from agentmem.consumers.router import Dispatcher
from agentmem.consumers.system import readiness
from agentmem.eventlog import EventLog
from agentmem.projections import ALL
from agentmem.queries import GetOrg
from agentmem.service import Service
from tests.conftest import admin_key, settings_for
from tests.realparts import (
    agentmem_command,
    bearer,
    clean_env,
    deployment_keys,
    eventually,
    run_cli,
    second_process,
    status,
    wait_caught_up,
)
from tests.support import NatsServer, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def http_get(address: tuple[str, int], path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text page, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(address: tuple[str, int]) -> Samples:
    code, body = await http_get(address, "/metrics")
    assert code == 200, body
    return parse(body)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def metered(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Service]:
    settings = settings_for(nats_server, tmp_path)
    settings.metrics = "127.0.0.1:0"
    service = Service(settings)
    await service.start()
    yield service
    await service.stop()


async def test_the_counters_move_with_the_requests_made(
    metered: Service, nc: NATS, tmp_path: Path
) -> None:
    address = metered.metrics_address
    assert address is not None
    token = admin_key(tmp_path)
    client = Client(nc, token)
    await wait_caught_up(nc, token)
    before = await scrape(address)

    org = (await client.create_org("Acme")).fields["org_id"]
    for n in range(3):
        await client.rename_org(org, f"Acme {n}")
    with pytest.raises(ConflictError):
        await client.rename_org(org, "Late", expected_version=1)
    member = await client.register_user(org, "M", "m@example.com", "password-m")
    key = (await client.create_api_key("k", user_id=member.fields["user_id"])).fields["token"]
    with pytest.raises(ForbiddenError):
        await Client(nc, key).create_org("Not allowed")
    for _ in range(4):
        await client.get_org(org)
    await nc.request("agentmem.q.no.such.thing", b"{}", timeout=5, headers=bearer(token))
    await wait_caught_up(nc, token)
    after = await scrape(address)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    create, rename, get = CreateOrg.op.subject, RenameOrg.op.subject, GetOrg.op.subject
    assert moved("agentmem_requests_total", subject=create, outcome="ok") == 1
    assert moved("agentmem_requests_total", subject=create, outcome="forbidden") == 1
    assert moved("agentmem_requests_total", subject=rename, outcome="ok") == 3
    assert moved("agentmem_requests_total", subject=rename, outcome="conflict") == 1
    assert moved("agentmem_requests_total", subject=get, outcome="ok") == 4
    assert moved("agentmem_requests_total", subject="unknown", outcome="invalid") == 1
    assert moved("agentmem_request_seconds_count", subject=get, outcome="ok") == 4
    assert moved("agentmem_request_seconds_sum", subject=get, outcome="ok") > 0
    assert moved("agentmem_command_conflicts_total", subject=rename) == 1
    # Each get_org read the store once (a point read).
    assert moved("agentmem_store_read_seconds_count") >= 4
    # The log's figures, read at the scrape: every projection at the log's end.
    report = await status(nc, token)
    assert value(after, "agentmem_log_last_seq") == report["stream"]["last_seq"]
    for projection in ALL:
        name = projection.name
        assert value(after, "agentmem_projection_lag", projection=name) == 0
        checkpoint = report["projections"][name]["checkpoint"]
        assert value(after, "agentmem_projection_checkpoint", projection=name) == checkpoint
        assert value(after, "agentmem_projection_parked", projection=name) == 0
    assert moved("agentmem_projection_batch_events_count", projection="orgs") >= 1
    assert moved("agentmem_projection_batch_events_sum", projection="orgs") == 4
    # Nothing of an organization's data is in the page, only subjects and projections.
    assert org not in (await http_get(address, "/metrics"))[1]


async def test_status_reports_the_same_figures(metered: Service, nc: NATS, tmp_path: Path) -> None:
    token = admin_key(tmp_path)
    client = Client(nc, token)
    org = (await client.create_org("Acme")).fields["org_id"]
    await client.get_org(org)
    figures = (await status(nc, token))["metrics"]
    by_labels = {
        (s["labels"].get("subject"), s["labels"].get("outcome")): s["value"]
        for s in figures["agentmem_requests"]
        if s["name"] == "agentmem_requests_total"
    }
    assert by_labels[(CreateOrg.op.subject, "ok")] == 1
    assert by_labels[(GetOrg.op.subject, "ok")] == 1
    names = set(figures)
    assert {
        "agentmem_request_seconds",
        "agentmem_projection_checkpoint",
        "agentmem_projection_lag",
        "agentmem_projection_parked",
        "agentmem_log_last_seq",
        "agentmem_nats_reconnects",
        "agentmem_command_retries",
    } <= names
    # The histograms as count and sum, not their buckets.
    assert not any(s["name"].endswith("_bucket") for f in figures.values() for s in f)


async def test_live_and_ready_probes(metered: Service, nc: NATS, tmp_path: Path) -> None:
    address = metered.metrics_address
    assert address is not None
    await wait_caught_up(nc, admin_key(tmp_path))
    code, body = await http_get(address, "/livez")
    assert (code, json.loads(body)) == (200, {"live": True})
    code, body = await http_get(address, "/readyz")
    assert (code, json.loads(body)) == (200, {"ready": True, "reasons": []})
    assert (await http_get(address, "/nothing"))[0] == 404
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"POST /metrics HTTP/1.0\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.0 400")
    writer.close()

    # The embedded server's death (here: said to have happened) makes it not live.
    metered.failed.set()
    assert (await http_get(address, "/livez"))[0] == 503


async def test_serve_with_metrics_answers_prometheus_text(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """The bar: ``agentmem serve --metrics 127.0.0.1:<port>`` answers request counters."""
    port = free_port()
    args = ["--data-dir", str(tmp_path / "data"), "--nats", nats_server.url]
    log = await asyncio.to_thread((tmp_path / "serve.log").open, "wb")
    serve = await asyncio.create_subprocess_exec(
        *agentmem_command(),
        "serve",
        *args,
        "--metrics",
        f"127.0.0.1:{port}",
        env=clean_env(),
        stdout=log,
        stderr=log,
    )
    log.close()
    try:

        async def counted() -> Samples | None:
            with contextlib.suppress(OSError):
                samples = await scrape(("127.0.0.1", port))
                if any(name == "agentmem_requests_total" for name, _ in samples):
                    return samples
            return None

        # The probe asks sys.health over NATS: a counted request.
        async def health_asked() -> bool:
            import nats

            with contextlib.suppress(Exception):
                nc = await nats.connect(nats_server.url)
                try:
                    await nc.request("agentmem.sys.health", b"{}", timeout=2)
                    return True
                finally:
                    await nc.close()
            return False

        await eventually(health_asked, 30, 0.2, "serve answered sys.health")
        samples = await eventually(counted, 10, 0.2, "request counters on /metrics")
        health = {"subject": "agentmem.sys.health", "outcome": "ok"}
        assert value(samples, "agentmem_requests_total", **health) >= 1
    finally:
        serve.terminate()
        await asyncio.wait_for(serve.wait(), 20)


async def test_a_bad_metrics_address_is_refused_at_start(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = settings_for(nats_server, tmp_path)
    settings.metrics = "localhost"
    with pytest.raises(Exception, match="--metrics"):
        await Service(settings).start()


async def test_a_command_decided_again_after_another_process_wrote_is_counted(
    metered: Service, nc: NATS, tmp_path: Path
) -> None:
    token = admin_key(tmp_path)
    client = Client(nc, token)
    org = (await client.create_org("Acme")).fields["org_id"]
    await client.rename_org(org, "One")  # the service's cache holds the org now
    # Another process of the deployment: with its master key, it opens the sealed events.
    log = EventLog(nc, keys=deployment_keys(nc))
    other = CommandRunner(log, AggregateCache(log))
    elsewhere = Dispatcher(
        nc, command_handlers.command_router(second_process(nc, other)), Authenticator(other.cache)
    )
    body = msgspec.json.encode({"org_id": org, "name": "Elsewhere"})
    assert envelope.decode(await elsewhere.handle(RenameOrg.op.subject, body, bearer(token))).ok
    address = metered.metrics_address
    assert address is not None
    before = value(await scrape(address), "agentmem_command_retries_total")

    await client.rename_org(org, "Back")  # decided on a stale cache first: appended again

    after = await scrape(address)
    assert value(after, "agentmem_command_retries_total") == before + 1
    conflicts = value(after, "agentmem_command_conflicts_total", subject=RenameOrg.op.subject)
    assert conflicts == 0


async def test_a_nats_reconnect_is_counted(
    metered: Service, nats_server: NatsServer, tmp_path: Path
) -> None:
    address = metered.metrics_address
    assert address is not None
    assert value(await scrape(address), "agentmem_nats_reconnects_total") == 0
    nats_server.stop()
    nats_server.start()

    async def reconnected() -> float:
        return value(await scrape(address), "agentmem_nats_reconnects_total")

    assert await eventually(reconnected, 20, 0.2, "a reconnect counted") == 1


async def test_health_on_nats_says_ready_too(metered: Service, nc: NATS, tmp_path: Path) -> None:
    await wait_caught_up(nc, admin_key(tmp_path))
    reply = json.loads((await nc.request("agentmem.sys.health", b"{}", timeout=5)).data)
    assert reply["data"]["live"] is True
    assert (reply["data"]["ready"], reply["data"]["reasons"]) == (True, [])


def test_a_projection_behind_or_without_a_worker_is_not_ready() -> None:
    report = {
        "projections": {
            "orgs": {"checkpoint": 10, "lag": 0, "parked": 0},
            "users": {"checkpoint": 3, "lag": 1001, "parked": 0},
            "memories": {"checkpoint": 0, "lag": None, "parked": 0},
        }
    }
    assert readiness(report, 1000) == [
        "projection memories has no consumer (no worker has run)",
        "projection users is 1001 events behind (limit 1000)",
    ]
    report["projections"]["users"]["lag"] = 1000
    del report["projections"]["memories"]
    assert readiness(report, 1000) == []
    # A worker that keeps failing here is named, though its lag is small.
    report["process"] = {"failing": {"graph": "OverflowError('too large')"}}
    assert readiness(report, 1000) == ["projection graph keeps failing: OverflowError('too large')"]


async def test_agentmem_status_says_what_the_service_answered(
    metered: Service, nats_server: NatsServer, nc: NATS, tmp_path: Path
) -> None:
    token = admin_key(tmp_path)
    client = Client(nc, token)
    org = (await client.create_org("Acme")).fields["org_id"]
    with pytest.raises(ConflictError):
        await client.rename_org(org, "Late", expected_version=0)
    ran = await run_cli(
        "status", "--nats", nats_server.url, "--data-dir", str(tmp_path), env=clean_env()
    )
    assert ran.returncode == 0, ran
    (line,) = [x for x in ran.stdout.splitlines() if x.startswith("requests it answered")]
    # create_org and the rename; the status request itself is counted once answered.
    assert line == "requests it answered since its start: 2 (ok 1, conflict 1)", ran.stdout
