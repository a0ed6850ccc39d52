from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from agentmem import Client
from agentmem.config import Settings
from agentmem.keys import MASTER_KEY_FILE
from agentmem.service import Service
from tests.pg import DSN, postgres_schema, with_search_path
from tests.support import TEST_MASTER_KEY, TEST_PASSWORD_COST, NatsServer

STORE_KINDS = ("sqlite", "postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a module's tests on every store it names in ``STORES`` (only where they use one).

    A module opts in with ``STORES = ("sqlite", "postgres")``; elsewhere ``store_kind`` is
    SQLite, so tests that read SQLite files or rely on SQLite specifics stay as they are.
    """
    stores = getattr(metafunc.module, "STORES", None)
    if not stores:
        return
    unknown = set(stores) - set(STORE_KINDS)
    assert not unknown, f"unknown stores in STORES: {sorted(unknown)}"
    if "store_kind" in metafunc.fixturenames:
        metafunc.parametrize("store_kind", stores, indirect=True)
    elif "module_store_kind" in metafunc.fixturenames:
        # Modules that share one service across their tests: one service per store.
        metafunc.parametrize("module_store_kind", stores, indirect=True, scope="module")


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which projection store a test runs on: SQLite, unless its module names ``STORES``."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
async def store_url(store_kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a fresh, empty store of ``store_kind``: an SQLite file in ``tmp_path``, or a
    Postgres schema of its own (skipped outside CI when no Postgres is reachable)."""
    if store_kind == "postgres":
        async with postgres_schema() as schema:
            yield with_search_path(DSN, schema)
    else:
        yield str(tmp_path / "agentmem.db")


@pytest.fixture(scope="module")
def module_store_kind(request: pytest.FixtureRequest) -> str:
    """``store_kind`` for modules whose fixtures live for the whole module."""
    return str(getattr(request, "param", "sqlite"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_store_url(
    module_store_kind: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """``store_url`` for modules whose fixtures live for the whole module."""
    if module_store_kind == "postgres":
        async with postgres_schema() as schema:
            yield with_search_path(DSN, schema)
    else:
        yield str(tmp_path_factory.mktemp("store") / "agentmem.db")


# One deployment for a whole module (per store): for modules of many single-request cases,
# where a fresh server per case would cost more than all the cases together.
@pytest.fixture(scope="module")
def module_server(
    tmp_path_factory: pytest.TempPathFactory, module_store_kind: str
) -> Iterator[NatsServer]:
    # A log of its own per store, so each store's run starts from an empty deployment.
    started = NatsServer(tmp_path_factory.mktemp(f"nats-{module_store_kind}"))
    started.start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def module_data_dir(tmp_path_factory: pytest.TempPathFactory, module_store_kind: str) -> Path:
    return tmp_path_factory.mktemp(f"data-{module_store_kind}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_service(
    module_server: NatsServer, module_data_dir: Path, module_store_url: str
) -> AsyncIterator[Service]:
    running = Service(settings_for(module_server, module_data_dir, module_store_url))
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


def settings_for(server: NatsServer, tmp_path: Path, store: str | None = None) -> Settings:
    master = tmp_path / MASTER_KEY_FILE
    if not master.exists():
        tmp_path.mkdir(parents=True, exist_ok=True)
        master.write_text(TEST_MASTER_KEY + "\n")
        master.chmod(0o600)
    settings = Settings()
    settings.nats_url = server.url
    settings.data_dir = tmp_path
    settings.store = store or str(tmp_path / "agentmem.db")
    settings.password_cost = TEST_PASSWORD_COST
    return settings


@pytest.fixture
async def service(
    nats_server: NatsServer, tmp_path: Path, store_url: str
) -> AsyncIterator[Service]:
    svc = Service(settings_for(nats_server, tmp_path, store_url))
    await svc.start()
    await answering(nats_server.url)
    yield svc
    await svc.stop()


async def answering(url: str, seconds: float = 5.0) -> None:
    """Until the service answers a request sent from another connection: a busy server can
    make the service's new subscriptions visible to other connections a moment after the
    service's own flush, and a test's first raw request would find no responder."""
    connection = await nats.connect(url)
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            try:
                await connection.request("agentmem.sys.health", b"{}", timeout=seconds)
                return
            except nats.errors.NoRespondersError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.02)
    finally:
        await connection.close()


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
