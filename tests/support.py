"""Real parts for tests: a nats-server on a free port, the service in-process or as a child."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from agentmem.embedded import server_binary
from agentmem.queries import Health

# Tests hash passwords with a low scrypt cost: the KDF is tested for itself in unit tests.
TEST_PASSWORD_COST = 2**10
# The master key of every deployment a test starts (``tests.conftest.settings_for`` writes it
# as the data dir's master.key), so that a test's second process or replay opens its events.
TEST_MASTER_KEY = "dGVzdC1tYXN0ZXIta2V5LW9mLWFnZW50bWVtLXRlc3Q="


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """A real nats-server with JetStream, in a temp dir, that a test may kill and restart."""

    def __init__(self, store_dir: Path, port: int | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.store_dir / "server.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                server_binary(),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.store_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.02)
        raise RuntimeError("nats-server did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()


class ServiceProcess:
    """``agentmem serve`` as a child process, against a given NATS server and SQLite file.

    ``env`` adds or overrides ``AGENTMEM_*`` settings (a Postgres ``AGENTMEM_STORE``, say);
    ``store``'s directory stays the data dir."""

    def __init__(
        self, nats_url: str, store: Path, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.nats_url = nats_url
        self.store = store
        self.log_path = log_path
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.store.parent

    def admin_key(self) -> str:
        """The service administrator's API key, which the first start saved in the data dir."""
        return (self.data_dir / "admin.key").read_text().strip()

    def start(self) -> None:
        env = {
            **os.environ,
            "AGENTMEM_NATS": self.nats_url,
            "AGENTMEM_STORE": str(self.store),
            "AGENTMEM_DATA_DIR": str(self.data_dir),
            "AGENTMEM_PASSWORD_COST": str(TEST_PASSWORD_COST),
            "AGENTMEM_LOG_FORMAT": "json",
            # The tests' own master key, so that a test's replay opens what it sealed.
            "AGENTMEM_MASTER_KEY": TEST_MASTER_KEY,
            **self.env,
        }
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentmem", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    async def wait_ready(self, nc: object, timeout: float = 20.0) -> None:

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"service exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(Exception):
                await nc.request(Health.op.subject, b"{}", timeout=0.5)  # type: ignore[attr-defined]
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("service did not become ready")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def terminate(self) -> int:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            return self.process.wait(20)
        return self.process.returncode if self.process else 0
