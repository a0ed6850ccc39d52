"""docs/security.md's "Your own nats-server" block, run as written: a nats-server with those
users and permissions, the service connected as ``agentmem``, an agent as ``agent-support``.

The block had gone stale (no key bucket, no ingestion streams): a service started on it
could not store its first data key and never came up. Every publish or subscription the
service or the agent needs and the block does not allow is a "Permissions Violation" in the
server's log, and fails here.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client
from agentmem.domain.memories import AddMemory
from agentmem.embedded import server_binary
from agentmem.service import Service
from tests.conftest import admin_key, settings_for
from tests.support import NatsServer, free_port

SECURITY = Path(__file__).resolve().parent.parent / "docs" / "security.md"
SERVICE_PASSWORD = "service-password"
AGENT_PASSWORD = "agent-password"


def documented_config(port: int, store_dir: Path) -> str:
    """The block as security.md has it, on a test's port and store, with its passwords."""
    text = SECURITY.read_text()
    section = text[text.index("### Your own nats-server: subject-level permissions") :]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block is not None
    config = block.group(1)
    config = config.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{port}")
    config = config.replace('store_dir: "/var/lib/nats"', f'store_dir: "{store_dir}"')
    config = config.replace("$AGENTMEM_NATS_PASSWORD", f'"{SERVICE_PASSWORD}"')
    return config.replace("$AGENT_SUPPORT_NATS_PASSWORD", f'"{AGENT_PASSWORD}"')


def start_server(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [server_binary(), "-c", str(config)], stdout=out, stderr=subprocess.STDOUT
        )


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[NatsServer, Path]]:
    port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(documented_config(port, tmp_path / "js"))
    log = tmp_path / "nats.log"
    process = start_server(config, log)
    handle = NatsServer(tmp_path / "js", port)
    try:
        for _ in range(200):
            try:
                probe = await nats.connect(
                    f"nats://agentmem:{SERVICE_PASSWORD}@127.0.0.1:{port}",
                    allow_reconnect=False,
                )
                await probe.close()
                break
            except Exception:
                await asyncio.sleep(0.05)
        yield handle, log
    finally:
        process.terminate()
        process.wait(10)


async def test_the_documented_permissions_run_the_service_and_an_agent(
    server: tuple[NatsServer, Path], tmp_path: Path
) -> None:
    handle, log = server
    settings = settings_for(handle, tmp_path / "data")
    settings.nats_url = f"nats://agentmem:{SERVICE_PASSWORD}@127.0.0.1:{handle.port}"
    service = Service(settings)
    await service.start()
    agent: NATS | None = None
    try:
        agent = await nats.connect(
            f"nats://agent-support:{AGENT_PASSWORD}@127.0.0.1:{handle.port}",
            inbox_prefix="_INBOX_support",
        )
        admin = Client(agent, admin_key(tmp_path / "data"))
        org_id = str((await admin.create_org("Perm")).fields["org_id"])
        user = await admin.register_user(org_id, "Ann", "ann@perm.example", "long-password-1")
        user_id = str(user.fields["user_id"])
        added = await admin.add_memory("Ann likes tea", user_id=user_id, org_id=org_id)
        memory = await admin.get_memory(str(added.fields["memory_id"]))
        assert memory.content == "Ann likes tea"
        assert [m.content for m in await admin.recall("tea", user_id=user_id, org_id=org_id)] == [
            "Ann likes tea"
        ]
        # A command published to be ingested, and its outcome.
        await admin.publish(
            AddMemory(content="Ann likes jazz", user_id=user_id, org_id=org_id), message_id="p-1"
        )
        for _ in range(100):
            outcome = await admin.ingest_status("p-1", org_id=org_id)
            if outcome["status"] != "pending":
                break
            await asyncio.sleep(0.1)
        assert outcome["status"] == "stored", outcome
        await admin.forget_user(user_id)
        assert await admin.recall("tea", user_id=user_id, org_id=org_id) == []
    finally:
        if agent is not None:
            await agent.close()
        await service.stop()
    violations = [line for line in log.read_text().splitlines() if "Violation" in line]
    assert violations == []
