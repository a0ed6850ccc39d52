from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client
from agentmem.config import Settings
from agentmem.service import Service
from tests.support import TEST_PASSWORD_COST, NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


def settings_for(server: NatsServer, tmp_path: Path) -> Settings:
    settings = Settings()
    settings.nats_url = server.url
    settings.data_dir = tmp_path
    settings.store = str(tmp_path / "agentmem.db")
    settings.password_cost = TEST_PASSWORD_COST
    return settings


@pytest.fixture
async def service(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Service]:
    svc = Service(settings_for(nats_server, tmp_path))
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    connection = await nats.connect(nats_server.url)
    yield connection
    await connection.close()


def admin_key(data_dir: Path) -> str:
    """The service administrator's API key, saved by the first start of a deployment."""
    return (data_dir / "admin.key").read_text().strip()


@pytest.fixture
def admin_token(service: Service, tmp_path: Path) -> str:
    return admin_key(tmp_path)


@pytest.fixture
def auth_headers(admin_token: str) -> dict[str, str]:
    """Headers that authenticate a raw nats-py request as the service administrator."""
    return {"Authorization": f"Bearer {admin_token}"}


@pytest.fixture
async def client(service: Service, nc: NATS, admin_token: str) -> Client:
    return Client(nc, admin_token)
