"""The embedded nats-server demands credentials when it listens beyond loopback."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nats
import nats.errors
import pytest

from agentmem.embedded import CREDENTIALS_FILE, EmbeddedNats
from tests.support import free_port


async def quiet(exc: Exception) -> None:
    pass


async def test_beyond_loopback_the_embedded_server_requires_generated_credentials(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path / "nats", "0.0.0.0", free_port(), sync_always=False)
    assert server.require_auth
    await server.start()
    try:
        with pytest.raises(nats.errors.Error):
            await nats.connect(
                f"nats://127.0.0.1:{server.port}",
                allow_reconnect=False,
                max_reconnect_attempts=1,
                error_cb=quiet,
            )
        credentials = tmp_path / CREDENTIALS_FILE
        assert stat.S_IMODE(os.stat(credentials).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "nats-server.conf").st_mode) == 0o600
        connection = await nats.connect(server.url)  # the URL carries the credentials
        await connection.close()
    finally:
        await server.stop()


async def test_on_loopback_no_credentials_are_made(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", "127.0.0.1", free_port(), sync_always=False)
    assert not server.require_auth
    await server.start()
    try:
        connection = await nats.connect(f"nats://127.0.0.1:{server.port}")
        await connection.close()
        assert not (tmp_path / CREDENTIALS_FILE).exists()
    finally:
        await server.stop()
