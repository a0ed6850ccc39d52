"""The service: one process running the log, command handlers, projections and queries.

``Service`` only wires the parts together; each part lives in its own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import nats
import structlog
from nats.aio.client import Client as NATS

from agentmem import bootstrap, ingestion, natsauth
from agentmem.config import ROLES, Settings, StartupError
from agentmem.consumers.access_view import AccessView, confirm_everywhere
from agentmem.consumers.aggregates import AggregateCache, FreshReads
from agentmem.consumers.auth import Authenticator
from agentmem.consumers.commands import CommandRunner
from agentmem.consumers.expiry import ExpirySweeper
from agentmem.consumers.freshness import Freshness
from agentmem.consumers.ingest import IngestWorker
from agentmem.consumers.nats_gate import ConnectionGate, Disconnector
from agentmem.consumers.parts import Parts, routers
from agentmem.consumers.router import Dispatcher
from agentmem.consumers.system import collect_status
from agentmem.embedded import EmbeddedNats, port_is_free
from agentmem.errors import UnavailableError
from agentmem.eventlog import EventLog
from agentmem.jetstream import StreamConfigMismatch
from agentmem.keys import KeyRing
from agentmem.metrics import Metrics
from agentmem.metrics_http import MetricsListener
from agentmem.projections import ALL, Projection
from agentmem.projections.board import CheckpointBoard
from agentmem.projections.build import Build
from agentmem.projections.leader import ProjectionLeader
from agentmem.projections.migrations import MIGRATIONS
from agentmem.projections.worker import ProjectionWorker
from agentmem.store import Store, open_store
from agentmem.store.leases import Leases, open_leases
from agentmem.store.metered import MeteredStore
from agentmem.store.versions import build_key, variant_of

log = structlog.get_logger(__name__)

MAX_REPLICAS = 5
# How long a starting service waits for JetStream to answer (a fresh cluster elects its
# leaders within seconds).
JETSTREAM_WAIT_S = 30.0
STEP_TIMEOUT_S = 10.0  # how long one step of a stop may take before the next one goes on
# The same once the process has failed (its nats-server died): what is in flight waits for a
# server that will not answer, and a supervisor waits for the exit to restart both.
FAILED_STEP_TIMEOUT_S = 1.0


class StoreBusy(StartupError):
    pass


def make_private(data_dir: Path) -> None:
    """The data dir and everything in it private to the service's user (0700 folders, 0600
    files): it holds every event, the store's rows (message text, emails) and keys. Run at
    every start, so a data dir made by an earlier version, or by hand, is made private too.
    Symbolic links are left alone (and not followed)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    for root, folders, files in os.walk(data_dir):
        for names, mode in ((folders, 0o700), (files, 0o600)):
            for name in names:
                path = os.path.join(root, name)
                # A file can go between the walk and the chmod (a nats-server that shares the
                # folder writes and removes its own): nothing left to make private.
                with contextlib.suppress(FileNotFoundError):
                    if not os.path.islink(path):
                        os.chmod(path, mode)


class DataDirBusy(StartupError):
    pass


DATA_DIR_LOCK = "agentmem.lock"
# Where a running serve says what it serves, so that the other commands (status, admin,
# replay) find it from the data dir alone: {"pid", "nats", "store"}. Private like the rest
# of the data dir (the URL holds the embedded server's credentials when it listens beyond
# loopback); removed when serve stops, and trusted only while the data dir is locked.
SERVICE_FILE = "service.json"


def record_service(data_dir: Path, nats_url: str, store_url: str) -> Path:
    path = data_dir / SERVICE_FILE
    text = json.dumps({"pid": os.getpid(), "nats": nats_url, "store": store_url})
    temporary = path.with_suffix(".tmp")
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text + "\n")
    os.replace(temporary, path)
    return path


def running_service(data_dir: Path) -> dict[str, Any] | None:
    """What the serve that holds ``data_dir`` recorded (``record_service``), or None when no
    serve holds it (a file left by one that was killed is stale, and ignored)."""
    path = data_dir / SERVICE_FILE
    lock = data_dir / DATA_DIR_LOCK
    if not path.is_file() or not lock.is_file():
        return None
    try:
        with open(lock) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # held: a serve is running on this data dir
            else:
                return None
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("nats"), str):
        return None
    return recorded


def lock_data_dir(data_dir: Path) -> IO[str]:
    """One process owns a data dir whose nats-server it runs (the JetStream store under it,
    and everything else there): take an exclusive lock in it, or fail clearly. Whatever
    ``--store`` says: two servers on one JetStream store would both acknowledge the same
    sequences, and one of them would lose its writes."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / DATA_DIR_LOCK
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = handle.read().strip()
        handle.close()
        raise DataDirBusy(
            f"data dir {data_dir} is in use by another AgentMem process"
            f"{f' (pid {holder})' if holder.isdigit() else ''}; stop it first, or give this "
            "one a data dir of its own (--data-dir)"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def lock_store(store_url: str) -> IO[str] | None:
    """One process owns an SQLite file: take an exclusive lock beside it, or fail clearly."""
    if "://" in store_url and not store_url.startswith("sqlite"):
        return None
    path = Path(store_url.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.fdopen(os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o600), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreBusy(
            f"{path} is in use by another AgentMem process; stop it first "
            "(one process owns an SQLite store)"
        ) from None
    return handle


def is_sqlite(store_url: str) -> bool:
    return "://" not in store_url or store_url.startswith("sqlite")


def check_roles(roles: frozenset[str], store_url: str) -> None:
    """Refuse a split of the roles that cannot work: an SQLite file belongs to one process
    (``lock_store``), so that process must run every role; several processes need Postgres."""
    if roles != frozenset(ROLES) and is_sqlite(store_url):
        chosen = ",".join(r for r in ROLES if r in roles)
        raise StartupError(
            f"roles {chosen} split the service over several processes, which needs a Postgres "
            "store (--store postgresql://...); an SQLite store belongs to one process, which "
            "runs every role"
        )


# Query parameters that carry a secret in a Postgres (libpq) URL.
_SECRET_PARAMS = frozenset({"password", "sslpassword", "passfile", "token"})


def redact_url(url: str) -> str:
    """A NATS or store URL fit for a log line: no password, no token (``nats://TOKEN@host``
    has it as a user name alone), no password in the query string."""
    parts = urlsplit(url)
    if "://" not in url:
        return url  # a file path
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
        elif not parts.scheme.startswith("postgres"):
            netloc = f"***@{host}"  # NATS: a user name alone is a token
    query = "&".join(
        f"{name}=***" if name.lower() in _SECRET_PARAMS else f"{name}={value}" if sep else name
        for name, sep, value in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _without_user(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


async def _connect(
    servers: list[str],
    name: str,
    metrics: Metrics,
    closed: Callable[[], Awaitable[None]] | None = None,
) -> NATS:
    """``closed``: called when nats-py gives the connection up for good (not by a stop)."""
    return await nats.connect(
        # Every node of a cluster: when the one in use goes away, nats-py reconnects to
        # another (and learns the rest of the cluster from the servers it reaches).
        servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        # One line per problem instead of nats-py's tracebacks; it keeps retrying.
        error_cb=_log_nats_error,
        disconnected_cb=_log_disconnected,
        reconnected_cb=_log_reconnected(metrics),
        closed_cb=closed,
    )


async def _log_nats_error(exc: Exception) -> None:
    log.warning("nats connection problem; retrying", error=repr(exc))


async def _log_disconnected() -> None:
    log.warning("disconnected from nats")


def _log_reconnected(metrics: Metrics) -> Callable[[], Awaitable[None]]:
    async def reconnected() -> None:
        metrics.nats_reconnects.inc()
        log.info("reconnected to nats")

    return reconnected


async def ensure_stream(log_: EventLog, replicas: int, wait_s: float = JETSTREAM_WAIT_S) -> None:
    """Create or check the stream, then wait until it answers a read. A cluster whose nodes
    just started is still electing its leaders, and a stream just created on a cluster takes
    a moment to elect its own (until then reads get no responders): wait for both, bounded,
    rather than fail the start."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            info = await log_.ensure_stream(replicas=replicas)
            if "cluster" in info and not info["cluster"].get("leader"):
                raise UnavailableError(f"stream {log_.stream} has no leader yet")
            await log_.get(1)
            return
        except StreamConfigMismatch as exc:
            wrong = exc.details.get("settings", {})
            found = "; ".join(
                f"{key} is {value['actual']!r}, AgentMem needs {value['expected']!r}"
                for key, value in wrong.items()
            )
            raise StartupError(f"{exc.message}: {found}" if found else exc.message) from None
        except UnavailableError as exc:
            if time.monotonic() >= deadline:
                raise StartupError(
                    f"JetStream did not answer within {wait_s:.0f}s ({exc.message}): is "
                    "JetStream enabled on the server, and does the cluster have a quorum?"
                ) from None
            log.warning("waiting for JetStream", error=exc.message)
            await asyncio.sleep(1.0)


class Service:
    def __init__(self, settings: Settings, projections: list[Projection] | None = None) -> None:
        self.settings = settings
        # The projections this code declares (a test may give other versions of them).
        self.projections = list(ALL if projections is None else projections)
        self.embedded: EmbeddedNats | None = None
        self.nc: NATS | None = None
        # The system account's connection, to close revoked credentials' connections.
        self.system_nc: NATS | None = None
        self.nats_secrets: natsauth.NatsSecrets | None = None
        self.gate: ConnectionGate | None = None
        self.store: Store | None = None
        self.leases: Leases | None = None
        # One per projection, in a process with the projections role: each runs its worker
        # while this process holds the projection's lease.
        self.leaders: dict[str, ProjectionLeader] = {}
        self.leader_tasks: dict[str, asyncio.Task[None]] = {}
        # One per partition of the ingestion stream, in a process with the commands role.
        self.ingest_leaders: dict[str, ProjectionLeader] = {}
        self.ingest_tasks: dict[str, asyncio.Task[None]] = {}
        self.ingest_leases: Leases | None = None
        self.dispatcher: Dispatcher | None = None
        self.access: AccessView | None = None
        # What the handlers are built from (the process's vector index among them), once
        # started.
        self.parts: Parts | None = None
        self.keys: KeyRing | None = None
        self._lock: IO[str] | None = None
        self._data_lock: IO[str] | None = None
        self._service_file: Path | None = None
        self.stopped = asyncio.Event()
        # Set when the process cannot go on (its embedded nats-server died): ``failure``
        # says why, and ``agentmem serve`` stops and exits non-zero.
        self.failed = asyncio.Event()
        self.failure = ""
        self._watcher: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.metrics = Metrics()
        self.metrics_listener: MetricsListener | None = None
        # Where the metrics listener is bound (a port of 0 picks one), once started.
        self.metrics_address: tuple[str, int] | None = None

    async def start(self) -> None:
        settings = self.settings
        roles = settings.roles
        check_roles(roles, settings.store_url)
        metrics_at = settings.metrics_host_port  # a bad address is refused before anything
        if metrics_at is not None and metrics_at[1] and not port_is_free(*metrics_at):
            # So is a taken one, as a taken --listen is: not after a whole start.
            host, port = metrics_at
            raise StartupError(f"the metrics port {port} on {host} is taken: choose another")
        if not settings.nats_servers:
            # Before anything is touched: the embedded server's store lives in the data dir.
            self._data_lock = lock_data_dir(settings.data_dir)
        make_private(settings.data_dir)
        self._lock = lock_store(settings.store_url)
        if not 1 <= settings.replicas <= MAX_REPLICAS:
            raise StartupError(
                f"replicas must be between 1 and {MAX_REPLICAS} (JetStream's limit), "
                f"not {settings.replicas}"
            )
        # The store first: a store this code cannot run on is refused before anything is
        # written to the log.
        self.store = await open_store(settings.store_url)
        # A projection whose code is newer than its live tables is rebuilt beside them: its
        # live tables are not checked against the new declarations.
        versions = await self.store.versions()
        rebuilt = [
            p
            for p in self.projections
            if p.name in versions and versions[p.name].needs_build(p.version, variant_of(p))
        ]
        # Reported with "ready": a start that fails later says only why it failed.
        migrated = await self.store.migrate(
            MIGRATIONS, unchecked={t.name for p in rebuilt for t in p.tables}
        )
        for projection in self.projections:
            if projection.name not in versions:
                # A new store (its tables are this code's), or one made before versions.
                await self.store.adopt(projection.name, projection.version, variant_of(projection))
        servers = settings.nats_servers
        if not servers:
            host, port = settings.listen_host_port
            self.embedded = EmbeddedNats(
                settings.data_dir / "nats", host, port, sync_always=settings.sync_always
            )
            await self.embedded.start()
            self._watcher = asyncio.create_task(
                self._watch_embedded(self.embedded), name="embedded-nats-watcher"
            )
        # With NATS secrets in the data dir (made by the embedded server, or by
        # `agentmem nats-config` for a cluster), this process connects as the service
        # principal and decides every other connection (docs/security.md, The NATS layer).
        self.nats_secrets = natsauth.load_secrets(settings.data_dir / natsauth.SECRETS_FILE)
        if self.embedded is not None:
            servers = [self.embedded.url]
        found = self.nats_secrets
        if found is not None:
            servers = [
                natsauth.as_user(url, natsauth.SERVICE_USER, found.service_password)
                for url in servers
            ]
        try:
            # Bounded like the wait for JetStream: with no server there, nats-py's first
            # connect retries for ever, and a supervisor would never see the start fail.
            self.nc = await asyncio.wait_for(
                _connect(servers, "agentmem", self.metrics, self._connection_closed),
                JETSTREAM_WAIT_S,
            )
        except TimeoutError:
            shown = ",".join(redact_url(url) for url in servers)
            raise StartupError(
                f"no NATS server answered at {shown} within {JETSTREAM_WAIT_S:.0f}s: is it "
                "running, and is that its address (--nats, AGENTMEM_NATS)?"
            ) from None
        if found is not None:
            self.system_nc = await _connect(
                [
                    natsauth.as_user(
                        _without_user(url), natsauth.SYSTEM_USER, found.system_password
                    )
                    for url in servers
                ],
                "agentmem-system",
                self.metrics,
                self._connection_closed,
            )
        # The data keys first: nothing personal is written without them (agentmem.keys).
        self.keys = KeyRing(self.nc, settings.master_keys(create=True))
        log_ = EventLog(self.nc, keys=self.keys)
        await ensure_stream(log_, settings.replicas)
        try:
            await ingestion.ensure_all(
                self.nc, settings.replicas, settings.ingest_max_msgs, settings.ingest_max_bytes
            )
        except StreamConfigMismatch as exc:
            raise StartupError(f"{exc.message}: {exc.details.get('settings')}") from None
        await self.keys.start(settings.replicas, await log_.last_seq())
        admin_key = await bootstrap.ensure_admin(log_, settings.password_cost)

        board = CheckpointBoard()
        if "projections" in roles:
            self.leases = open_leases(settings.store_url)
            total = len(self.projections) + len(rebuilt)
            # A projection being rebuilt whose live tables still have every column this
            # code declares: this code keeps them moving until the switch (its rows fit
            # them), so that reads of new writes are answered meanwhile, by any process.
            columns = await self.store.columns([t.name for p in rebuilt for t in p.tables])
            moving = {
                p.name
                for p in rebuilt
                if versions[p.name].live_variant == variant_of(p)
                and all(set(t.column_names) <= columns[t.name] for t in p.tables)
            }
            for projection in self.projections:
                self._lead(projection, board, total, keeps_old=projection.name in moving)
            for projection in rebuilt:
                self._build(projection, board, total)
            # Ready means each lease was asked for once: status then says what runs here.
            await asyncio.gather(*(leader.first_look.wait() for leader in self.leaders.values()))

        cache = AggregateCache(log_)
        # A forgotten key takes what was folded from its events out of this process's cache.
        self.keys.on_forget(lambda _pattern: cache.clear())
        self.access = AccessView(self.nc, FreshReads(cache), replicas=settings.replicas)
        await self.access.start()
        nc = self.nc
        parts = Parts(
            nc=nc,
            log=log_,
            runner=CommandRunner(
                log_,
                cache,
                lambda seq: confirm_everywhere(nc, seq),
                Disconnector(self.system_nc) if self.system_nc is not None else None,
                self.metrics,
            ),
            store=MeteredStore(self.store, self.metrics.store_read_seconds.observe),
            freshness=Freshness(nc, self.store, board),
            access=self.access,
            password_cost=settings.password_cost,
            workers_alive=self.workers_alive,
            this_process=self.this_process,
            metrics=self.metrics,
            ready_lag=settings.ready_lag,
            extraction_model=settings.extraction_endpoint(),
            extract_on_add=settings.extract_on_add,
        )
        self.parts = parts
        if "commands" in roles and settings.expiry_sweep_s > 0:
            sweeper = ExpirySweeper(log_, cache, self.store)
            self._sweeper = asyncio.create_task(
                sweeper.run(settings.expiry_sweep_s, self.stopped), name="expiry-sweep"
            )
        # A process subscribes only the subject trees of its roles; every process answers
        # the system subjects (status, health) for itself.
        router, trees = routers(parts, roles)
        authenticator = Authenticator(cache, self.access)
        if found is not None:
            self.gate = ConnectionGate(self.nc, authenticator, found.issuer_seed)
            await self.gate.start()
        self.dispatcher = Dispatcher(self.nc, router, authenticator, metrics=self.metrics)
        await self.dispatcher.start(trees)
        if "commands" in roles:
            # After the dispatcher: a published command runs through it. The partitions'
            # leases are a group of their own: only processes with this role share them.
            self.ingest_leases = open_leases(settings.store_url, group="ingest")
            for partition in range(ingestion.PARTITIONS):
                self._ingest(partition, board)
        if metrics_at is not None:
            store = self.store

            async def status_here() -> dict[str, Any]:
                return {**await collect_status(nc, store), "process": self.this_process()}

            self.metrics_listener = MetricsListener(
                self.metrics,
                status_here,
                live=lambda: not self.failed.is_set(),
                ready_lag=settings.ready_lag,
            )
            self.metrics_address = await self.metrics_listener.start(*metrics_at)
        # Only now, when a client that reads them can connect and be answered (a helper's
        # client that connected the moment the key was printed was refused by nats-server:
        # nobody answered its connection check yet). A process killed before this point on
        # a first start leaves the administrator without a saved key: `agentmem admin
        # create-key` makes one.
        if self.embedded is not None:
            self._service_file = record_service(
                settings.data_dir, self.embedded.url, settings.store_url
            )
        if admin_key is not None:
            path = bootstrap.save_key(settings.data_dir, admin_key)
            # Printed, never logged: logs must not carry secrets.
            print(
                "agentmem: first start of this deployment: the service administrator's API key "
                f"(shown once; also saved, readable only by you, in {path}):\n{admin_key}",
                flush=True,
            )
        log.info(
            "agentmem ready",
            nats=",".join(redact_url(url) for url in servers),
            store=redact_url(settings.store_url),
            roles=",".join(r for r in ROLES if r in roles),
            **({"migrations_applied": migrated} if migrated else {}),
        )

    async def _connection_closed(self) -> None:
        """nats-py gave a connection up for good (after a protocol error it does not
        reconnect from): the process would stay up serving nothing. Fail, so that ``serve``
        stops and exits non-zero and its supervisor starts it again."""
        if self.stopped.is_set():
            return  # our own stop closed it
        self.failure = "the NATS connection was closed for good; stopping"
        log.error("nats connection closed for good; stopping")
        self.failed.set()

    async def _watch_embedded(self, embedded: EmbeddedNats, every_s: float = 0.2) -> None:
        """A service whose embedded nats-server died must not look up to a supervisor: it
        holds the whole log, and nothing else would restart it. Say so and fail, so that
        ``serve`` stops and exits non-zero (and its supervisor restarts both)."""
        while not self.stopped.is_set():
            code = embedded.exit_code()
            if code is not None:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
                self.failure = f"the embedded nats-server {how}; stopping (see {embedded.log_path})"
                log.error("embedded nats-server died; stopping", returncode=code)
                self.failed.set()
                return
            await asyncio.sleep(every_s)

    def _lead(
        self, projection: Projection, board: CheckpointBoard, total: int, keeps_old: bool = False
    ) -> None:
        """The projection's live worker, run while this process holds its lease and its
        code's version is the live tables' one (or, with ``keeps_old``, is being built
        beside them, whose columns it still fits)."""
        assert self.nc is not None
        assert self.store is not None
        assert self.leases is not None
        nc, store, keys = self.nc, self.store, self.keys
        pace = self.settings.projection_pace_ms / 1000

        def make_worker() -> ProjectionWorker:
            return ProjectionWorker(
                nc,
                store,
                projection,
                board,
                metrics=self.metrics,
                keys=keys,
                version=projection.version,
                pace=pace,
            )

        async def live_is_mine() -> bool:
            state = (await store.versions()).get(projection.name)
            if state is None:
                return True
            version, variant = projection.version, variant_of(projection)
            return state.runs_live(version, variant) or (
                keeps_old and state.building_this(version, variant)
            )

        self._start_leader(
            ProjectionLeader(
                projection.name, make_worker, self.leases, board, total=total, may_run=live_is_mine
            )
        )

    def _build(self, projection: Projection, board: CheckpointBoard, total: int) -> None:
        """The projection's new version, built beside the live tables and switched to
        while this process holds the build's lease (``agentmem.projections.build``)."""
        assert self.nc is not None
        assert self.store is not None
        assert self.leases is not None
        nc, store, keys = self.nc, self.store, self.keys

        def make_build() -> Build:
            return Build(nc, store, projection, board, metrics=self.metrics, keys=keys)

        async def still_newer() -> bool:
            state = (await store.versions()).get(projection.name)
            return state is not None and state.needs_build(
                projection.version, variant_of(projection)
            )

        self._start_leader(
            ProjectionLeader(
                build_key(projection.name, projection.version),
                make_build,
                self.leases,
                board,
                total=total,
                may_run=still_newer,
            )
        )

    def _start_leader(self, leader: ProjectionLeader) -> None:
        self.leaders[leader.name] = leader
        self.leader_tasks[leader.name] = asyncio.create_task(
            leader.run(), name=f"projection-leader-{leader.name}"
        )

    def _ingest(self, partition: int, board: CheckpointBoard) -> None:
        assert self.nc is not None
        assert self.ingest_leases is not None
        assert self.dispatcher is not None
        nc, execute = self.nc, self.dispatcher.execute
        name = f"ingest-{partition}"

        def make_worker() -> IngestWorker:
            return IngestWorker(nc, partition, execute, metrics=self.metrics)

        leader = ProjectionLeader(
            name, make_worker, self.ingest_leases, board, total=ingestion.PARTITIONS
        )
        self.ingest_leaders[name] = leader
        self.ingest_tasks[name] = asyncio.create_task(leader.run(), name=f"leader-{name}")

    def workers_alive(self) -> dict[str, bool]:
        """Per projection: whether this process keeps it (runs its worker, or stands by for
        its lease); a projection another process runs is fine either way."""
        return {name: not task.done() for name, task in self.leader_tasks.items()}

    def this_process(self) -> dict[str, object]:
        """What ``agentmem.sys.status`` says about the process that answers it."""
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "roles": [r for r in ROLES if r in self.settings.roles],
            "active": sorted(name for name, leader in self.leaders.items() if leader.active),
            # The projections and ingestion partitions whose worker here keeps failing,
            # with the last error.
            "failing": {
                name: leader.failing
                for name, leader in sorted({**self.leaders, **self.ingest_leaders}.items())
                if leader.failing is not None
            },
            # The partitions of the ingestion stream this process reads.
            "ingesting": sorted(
                name for name, leader in self.ingest_leaders.items() if leader.active
            ),
            # This process's code's version of each projection (the store's are in
            # "projections"): during a rolling deploy, which processes run which.
            "versions": {p.name: p.version for p in self.projections},
        }

    async def stop(self) -> None:
        """Drain: stop taking requests, finish those in flight, finish the current batches."""
        self.stopped.set()
        step = FAILED_STEP_TIMEOUT_S if self.failed.is_set() else STEP_TIMEOUT_S
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()
        if self.gate:
            await self.gate.stop()
        if self.metrics_listener is not None:
            await self.metrics_listener.stop()
        # Ingestion first: a batch in hand finishes through the dispatcher (or is
        # redelivered to the next holder of its partition).
        for leader in self.ingest_leaders.values():
            leader.stop()
        if self.ingest_tasks:
            await asyncio.wait(self.ingest_tasks.values(), timeout=step)
        if self.ingest_leases:
            await self.ingest_leases.close()
        if self.dispatcher:
            await self.dispatcher.stop(timeout=step)
        if self._sweeper is not None:
            # ``stopped`` ends its wait; a sweep under way is finished, within a step's time.
            await asyncio.wait([self._sweeper], timeout=step)
        if self.access:
            try:
                # Bounded like every step of a stop: the projections below must still drain.
                await asyncio.wait_for(self.access.stop(), step)
            except TimeoutError:
                log.warning("access view did not stop in time; going on")
        for leader in self.leaders.values():
            leader.stop()
        if self.leader_tasks:
            await asyncio.wait(self.leader_tasks.values(), timeout=step)
        if self.leases:
            # Another process takes the projections over at its next look (about 1 s).
            await self.leases.close()
        if self.keys:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.keys.stop(), step)
        if self.nc:
            if self.failed.is_set():
                # No server to drain to: a drain would wait for a reconnect that never comes.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.nc.close(), step)
            else:
                with contextlib.suppress(Exception):
                    await self.nc.drain()
        if self.system_nc:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.system_nc.close(), STEP_TIMEOUT_S)
        if self.store:
            await self.store.close()
        if self._service_file is not None:
            with contextlib.suppress(OSError):
                self._service_file.unlink()
        if self.embedded:
            await self.embedded.stop()
        if self._lock:
            self._lock.close()
        if self._data_lock:
            self._data_lock.close()
        if self.nc is not None:  # a start refused before connecting says so in one line
            log.info("agentmem stopped")
