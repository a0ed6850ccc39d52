"""One log line per request (issue 15, item 12): subject, outcome, duration and principal, at
info, so that ``--log-level`` turns it on and off; never a secret, never a body."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import nats
import pytest
import structlog
from nats.aio.client import Client as NATS

from agentmem import Client, NotFoundError, UnauthenticatedError, subjects
from agentmem.queries import GetOrg, Health
from agentmem.service import Service
from tests.support import NatsServer, ServiceProcess

PASSWORD = "a password nobody logs"


def request_lines(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [entry for entry in logs if entry["event"] == "request"]


async def test_each_request_leaves_one_line_without_secrets(
    service: Service, nc: NATS, client: Client, admin_token: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        await client.health()
        org_id = (await client.create_org("Logged")).fields["org_id"]
        user = await client.register_user(org_id, "Lou", "lou@example.com", PASSWORD)
        session = (await client.login("lou@example.com", PASSWORD)).fields["token"]
        with pytest.raises(NotFoundError):
            await client.get_org("nope")
        with pytest.raises(UnauthenticatedError):
            await client.with_token(None).get_org(org_id)
        reply = await nc.request(
            GetOrg.op.subject, b"not json", headers={"Authorization": f"Bearer {admin_token}"}
        )
        assert msgspec.json.decode(reply.data)["error"]["code"] == "invalid"

    lines = request_lines(logs)
    assert [(e["subject"], e["outcome"]) for e in lines] == [
        (Health.op.subject, "ok"),
        (subjects.command("org", "create"), "ok"),
        (subjects.command("user", "register"), "ok"),
        (subjects.command("auth", "login"), "ok"),
        (GetOrg.op.subject, "not_found"),
        (GetOrg.op.subject, "unauthenticated"),
        (GetOrg.op.subject, "invalid"),
    ]
    admin_id = lines[1]["principal"]
    assert isinstance(admin_id, str)
    assert admin_id
    assert [e["principal"] for e in lines] == [
        None,
        *[admin_id] * 2,
        None,
        admin_id,
        None,
        admin_id,
    ]
    for entry in lines:
        assert entry["log_level"] == "info"
        assert isinstance(entry["ms"], float)
        assert entry["ms"] >= 0
        assert set(entry) == {"event", "log_level", "subject", "outcome", "ms", "principal"}
    text = repr(logs)
    for secret in (PASSWORD, session.rsplit("_", 1)[-1], admin_token.rsplit("_", 1)[-1]):
        assert secret not in text
    assert user.fields["user_id"] not in repr(lines)  # ids from a body are not logged either


@pytest.mark.parametrize(("level", "logged"), [("info", True), ("warning", False)])
async def test_log_level_turns_the_request_lines_on_and_off(
    nats_server: NatsServer, tmp_path: Path, level: str, logged: bool
) -> None:
    log_path = tmp_path / "serve.log"
    process = ServiceProcess(
        nats_server.url, tmp_path / "agentmem.db", log_path, {"AGENTMEM_LOG_LEVEL": level}
    )
    process.start()
    try:
        connection = await nats.connect(nats_server.url)
        try:
            await process.wait_ready(connection)
            client = Client(connection, process.admin_key())
            await client.create_org("Seen or not")
        finally:
            await connection.close()
    finally:
        assert process.terminate() == 0
    entries = [
        json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
    ]
    created = [
        e
        for e in entries
        if e.get("event") == "request" and e.get("subject") == subjects.command("org", "create")
    ]
    assert bool(created) is logged, entries
    if logged:
        assert created[0]["outcome"] == "ok"
