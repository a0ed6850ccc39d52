"""The embedded nats-server demands credentials on loopback as beyond it: the service's own,
generated into the data dir, and AgentMem credentials through the auth callout for everyone
else (tests/test_nats_closed.py plays the attacks)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import nats
import nats.errors
import pytest

from agentmem import natsauth
from agentmem.embedded import CREDENTIALS_FILE, EmbeddedNats
from tests.support import free_port


async def quiet(exc: Exception) -> None:
    pass


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
async def test_the_embedded_server_requires_generated_credentials(
    tmp_path: Path, host: str
) -> None:
    server = EmbeddedNats(tmp_path / "nats", host, free_port(), sync_always=False)
    await server.start()
    try:
        # No service decides connections here (no auth callout answers): refused, or
        # never let in.
        with pytest.raises((nats.errors.Error, TimeoutError)):
            await nats.connect(
                f"nats://127.0.0.1:{server.port}",
                allow_reconnect=False,
                max_reconnect_attempts=1,
                connect_timeout=1,
                error_cb=quiet,
            )
        credentials = tmp_path / CREDENTIALS_FILE
        assert stat.S_IMODE(os.stat(credentials).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "nats-server.conf").st_mode) == 0o600
        found = server.secrets
        assert found is not None
        # As server.url says, at an address a test can reach.
        connection = await nats.connect(found.service_url("127.0.0.1", server.port))
        info = await connection.request("$JS.API.INFO", b"", timeout=2)
        assert "error" not in json.loads(info.data)  # the service's account has JetStream
        await connection.close()
        system = await nats.connect(found.system_url("127.0.0.1", server.port))
        await system.close()
    finally:
        await server.stop()


async def test_the_secrets_are_kept_across_starts(tmp_path: Path) -> None:
    first = natsauth.ensure_secrets(tmp_path / CREDENTIALS_FILE)
    assert natsauth.ensure_secrets(tmp_path / CREDENTIALS_FILE) == first
    assert first.issuer.startswith("A")
    assert first.issuer in natsauth.server_config(first)
    assert first.issuer_seed not in natsauth.server_config(first)


def test_a_client_s_inbox_follows_from_its_token() -> None:
    key = "amk_o1_u1_k1_" + "a" * 64
    assert natsauth.inbox_prefix(key) == "_INBOX_k1"
    anonymous = natsauth.anonymous_token()
    assert natsauth.inbox_prefix(anonymous) == f"_INBOX_{anonymous}"
    assert natsauth.inbox_id("anon_short") is None
    assert natsauth.inbox_id("not a token") is None
    # Let in at connect, it could subscribe to no inbox (a `$` matched before the newline).
    assert natsauth.inbox_id(anonymous + "\n") is None
