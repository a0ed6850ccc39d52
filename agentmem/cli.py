"""``agentmem``: serve, status, admin, replay."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from agentmem import __version__, bootstrap, natsauth, subjects
from agentmem.auth import tokens
from agentmem.config import Settings, StartupError, parse_roles
from agentmem.embedded import EmbeddedNats
from agentmem.errors import AgentMemError
from agentmem.logging import configure
from agentmem.queries import Status
from agentmem.service import (
    DataDirBusy,
    Service,
    StoreBusy,
    lock_data_dir,
    lock_store,
    redact_url,
    running_service,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentmem",
        description="AgentMem, an event-sourced memory service for AI agents, over NATS. "
        "Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"agentmem {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def connection_flags(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--nats", help="use this NATS server (env AGENTMEM_NATS); default: the embedded one"
        )
        sub.add_argument(
            "--listen",
            help="embedded server address, host:port (env AGENTMEM_LISTEN; default 127.0.0.1:4222)",
        )
        sub.add_argument("--data-dir", type=Path, help="env AGENTMEM_DATA_DIR; default ./data")
        sub.add_argument(
            "--store",
            help="an SQLite file or a postgresql:// DSN (env AGENTMEM_STORE; "
            "default <data-dir>/agentmem.db)",
        )
        sub.add_argument("--log-level", help="env AGENTMEM_LOG_LEVEL; default info")
        sub.add_argument(
            "--log-format",
            choices=["auto", "json", "console"],
            help="env AGENTMEM_LOG_FORMAT; default auto (JSON unless a terminal)",
        )

    serve = commands.add_parser("serve", help="run the service")
    connection_flags(serve)
    serve.add_argument(
        "--replicas",
        type=int,
        help="copies of the event stream a NATS cluster keeps, when the service creates it "
        "(env AGENTMEM_REPLICAS; default 1; 3 on a three-node cluster)",
    )
    serve.add_argument(
        "--roles",
        help="what this process runs, comma-separated: commands, queries, projections "
        "(env AGENTMEM_ROLES; default all three; a split over several processes needs Postgres)",
    )
    serve.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics (/metrics) and probes (/livez, /readyz) over HTTP "
        "here (env AGENTMEM_METRICS; default off)",
    )
    status = commands.add_parser("status", help="log position, checkpoints and lag")
    connection_flags(status)
    status.add_argument("--json", action="store_true", help="print the raw report")
    status.add_argument(
        "--token-file",
        help="a file holding the API key to ask the running service with (else env "
        "AGENTMEM_TOKEN, else <data-dir>/admin.key if readable); never a key in argv, where "
        "every user of the machine can read it",
    )
    admin = commands.add_parser("admin", help="administration straight on the log")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    create_key = admin_commands.add_parser(
        "create-key",
        help="print a new API key of the service administrator (needs access to the log)",
    )
    connection_flags(create_key)
    create_key.add_argument("--name", default="cli", help="a label for the key")
    nats_config = commands.add_parser(
        "nats-config",
        help="the accounts and auth callout a nats-server (cluster) needs for AgentMem",
    )
    nats_config.add_argument("--data-dir", type=Path, help="env AGENTMEM_DATA_DIR; default ./data")
    nats_config.add_argument(
        "--out",
        type=Path,
        help="write the config block to this file (private, 0600) instead of stdout; "
        "include it in every node's config",
    )
    rewrap = admin_commands.add_parser(
        "rewrap-keys",
        help="wrap every data key again with the current (first) master key, after a "
        "rotation (docs/security.md, 'Forgetting')",
    )
    connection_flags(rewrap)
    ingest = commands.add_parser(
        "ingest", help="published commands parked after transient failures (list, retry, drop)"
    )
    ingest_commands = ingest.add_subparsers(dest="ingest_command", required=True)
    parked = ingest_commands.add_parser("parked", help="list the parked commands")
    connection_flags(parked)
    parked.add_argument("--json", action="store_true", help="one JSON object a line")
    for verb, what in (
        ("retry", "put parked commands back in the ingestion stream, to be executed again"),
        ("drop", "remove parked commands; ingest.status says dropped"),
    ):
        sub = ingest_commands.add_parser(verb, help=what)
        connection_flags(sub)
        sub.add_argument("seqs", nargs="*", type=int, metavar="SEQ", help="parked seqs")
        sub.add_argument("--all", action="store_true", help="every parked command")
    replay = commands.add_parser("replay", help="rebuild projections from the log")
    connection_flags(replay)
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--projection", help="one projection by name")
    which.add_argument("--all", action="store_true", help="every projection")
    replay.add_argument(
        "--into",
        help="rebuild into this SQLite file or postgresql:// DSN (a schema of its own: "
        "?options=-csearch_path%%3DNAME) instead of the live store",
    )
    until = replay.add_mutually_exclusive_group()
    until.add_argument(
        "--until-seq",
        type=int,
        metavar="N",
        help="the state as it was after log sequence N (needs --into)",
    )
    until.add_argument(
        "--until-time",
        type=_moment,
        metavar="TIME",
        help="the state as it was at TIME, ISO 8601 (2026-12-06T04:00:00Z; UTC when it names "
        "no zone; needs --into)",
    )
    export = commands.add_parser(
        "export",
        help="write an organization's (or one user's) events, decrypted, as NDJSON "
        "(docs/deploy.md, 'Export and import'); reads the log with the deployment's keys",
    )
    connection_flags(export)
    export.add_argument("--org", required=True, help="the organization to export")
    export.add_argument("--user", help="only this user's events")
    export.add_argument(
        "--out", type=Path, help="write to this file (private, 0600) instead of stdout"
    )
    importer = commands.add_parser(
        "import",
        help="replay an export (or a mem0 memory list, with --mem0) into the running service "
        "as commands; importing twice changes nothing",
    )
    connection_flags(importer)
    importer.add_argument("file", type=Path, help="the export (NDJSON) or mem0 JSON file")
    importer.add_argument(
        "--mem0",
        metavar="ORG",
        help="the file is a mem0 memory list: add its memories to organization ORG",
    )
    importer.add_argument(
        "--token-file",
        help="a file holding the API key to send the commands with (else env AGENTMEM_TOKEN, "
        "else <data-dir>/admin.key if readable)",
    )
    return parser


def _nats_config(data_dir: Path, out: Path | None) -> int:
    """Make (or keep) the deployment's NATS secrets in the data dir, which every AgentMem
    process of the deployment then reads, and give the nats-server side of them."""
    found = natsauth.ensure_secrets(data_dir / natsauth.SECRETS_FILE)
    text = natsauth.server_config(found)
    if out is None:
        print(text, end="")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with os.fdopen(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(text)
    print(f"agentmem: wrote {out}; include it in every nats-server's config", file=sys.stderr)
    return 0


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (2026-12-06T04:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if args.command == "nats-config":
        if args.data_dir:
            settings.data_dir = args.data_dir
        return settings
    if args.nats:
        settings.nats_url = args.nats
    if getattr(args, "replicas", None) is not None:
        settings.replicas = args.replicas
    if getattr(args, "metrics", None):
        settings.metrics = args.metrics
    if getattr(args, "roles", None):
        settings.roles = parse_roles(args.roles, "--roles")
    if args.listen:
        settings.listen = args.listen
    if args.data_dir:
        settings.data_dir = args.data_dir
    if args.store:
        settings.store = args.store
    if args.log_level:
        settings.log_level = args.log_level
    if args.log_format:
        settings.log_format = args.log_format
    return settings


def _find_service(settings: Settings) -> None:
    """For status, admin and replay: the NATS server (and, unless given, the store) of the
    serve running on the data dir, as it recorded them there; left as they are when no NATS
    server is named (--nats, AGENTMEM_NATS) and no serve runs on the data dir."""
    if settings.nats_url:
        return
    recorded = running_service(settings.data_dir)
    if recorded is None:
        return
    settings.nats_url = recorded["nats"]
    if settings.store is None and isinstance(recorded.get("store"), str):
        settings.store = recorded["store"]


async def _serve(settings: Settings) -> int:
    service = Service(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # A signal during startup (say, while waiting for a NATS server that is not up yet)
    # must stop it too, so startup races the stop event.
    starting = asyncio.create_task(service.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
        await service.stop()
        return 0
    try:
        starting.result()
    except StartupError as exc:
        stopping.cancel()
        print(f"agentmem: {exc}", file=sys.stderr)
        await service.stop()
        return 2
    except Exception as exc:
        # A data dir or store that cannot be written (read-only, full, not a directory):
        # said in one line, as the refusals above, not as a traceback.
        stopping.cancel()
        print(f"agentmem: could not start: {_start_failure(exc)}", file=sys.stderr)
        with contextlib.suppress(Exception):
            await service.stop()
        return 1
    failing = asyncio.create_task(service.failed.wait())
    await asyncio.wait([stopping, failing], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    failing.cancel()
    if service.failed.is_set():
        print(f"agentmem: {service.failure}", file=sys.stderr)
        await service.stop()
        return 1
    await service.stop()
    return 0


def _start_failure(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no message'}"


async def _no_error_report(exc: Exception) -> None:
    pass


# One quick attempt, no 2-minute retry loop and no traceback per attempt when nothing
# listens (nats-py retries a first connect max_reconnect_attempts times even without
# allow_reconnect).
_ONE_TRY: dict[str, Any] = {
    "allow_reconnect": False,
    "connect_timeout": 1,
    "max_reconnect_attempts": 1,
    "reconnect_time_wait": 0,
    "error_cb": _no_error_report,
}


@contextlib.asynccontextmanager
async def _log_connection(settings: Settings) -> AsyncIterator[NATS]:
    """The running service's NATS server if there is one, else the embedded one, started
    for as long as this command needs it."""
    if settings.nats_url:
        _where["nats"] = redact_url(settings.nats_url)
        found = natsauth.load_secrets(settings.data_dir / natsauth.SECRETS_FILE)
        servers = settings.nats_servers
        if found is not None:  # as the service principal, as serve connects
            servers = [
                natsauth.as_user(url, natsauth.SERVICE_USER, found.service_password)
                for url in servers
            ]
        nc = await nats.connect(servers, **_ONE_TRY)
        await _check_stream(nc)
        yield nc
        await nc.close()
        return
    # No serve has recorded a NATS server on the data dir (``_find_service``): run the data
    # dir's own for as long as this command needs it, holding the data dir as serve does (a
    # serve that starts meanwhile is refused). Whatever already listens at --listen is not
    # asked first: it is not known to be this deployment's, and the data dir's service
    # password, which opens the whole log, would go to it (an outside check caught it).
    host, port = settings.listen_host_port
    _where["nats"] = f"nats://{host}:{port}"
    try:
        lock = lock_data_dir(settings.data_dir)
    except DataDirBusy as exc:
        raise DataDirBusy(
            f"{exc}; a serve started with --nats records no NATS server: name it with --nats"
        ) from None
    try:
        embedded = EmbeddedNats(settings.data_dir / "nats", host, port, settings.sync_always)
        await embedded.start()
        try:
            nc = await nats.connect(embedded.url, allow_reconnect=False)
            yield nc
            await nc.close()
        finally:
            await embedded.stop()
    finally:
        lock.close()


async def _check_stream(nc: NATS) -> None:
    """A server that AgentMem runs on has its event stream: say so now if this one does
    not, rather than as whatever the first read happens to meet."""
    try:
        await nc.jetstream().stream_info(subjects.STREAM_NAME)
    except nats.js.errors.NotFoundError:
        await nc.close()
        raise
    except Exception:
        pass  # JetStream off, no answer: the command meets it and says so


# The NATS server a command reached or tried, for its one line when it fails.
_where: dict[str, str] = {}


def _one_line(exc: BaseException, settings: Settings) -> str:
    """What went wrong, in one line, for a command other than serve."""
    url = _where.get("nats") or redact_url(settings.nats_url or settings.listen)
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(
        isinstance(e, nats.js.errors.NotFoundError) or "stream not found" in str(e) for e in chain
    ):
        return (
            f"the NATS server at {url} has no AgentMem event stream ({subjects.STREAM_NAME}): "
            "it is not the one an AgentMem service uses. Name the running service's data dir "
            "(--data-dir, AGENTMEM_DATA_DIR) or its NATS server (--nats, AGENTMEM_NATS)"
        )
    if isinstance(exc, nats.errors.NoServersError | ConnectionError):
        return f"no NATS server answers at {url}; is the service running (agentmem serve)?"
    if isinstance(exc, TimeoutError | nats.errors.TimeoutError):
        return f"the NATS server at {url} did not answer in time"
    if isinstance(exc, AgentMemError):
        return exc.message
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no message'} (NATS server {url})"


def _status_token(settings: Settings, token_file: str | None) -> str | None:
    """The credentials to ask the running service with: the file named, else AGENTMEM_TOKEN,
    else the administrator's key that the first start saved in the data dir, if readable."""
    if token_file:
        try:
            return Path(token_file).read_text().strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise StartupError(f"--token-file {token_file}: cannot read it ({exc})") from exc
    env = os.environ.get("AGENTMEM_TOKEN", "").strip()
    if env:
        return env
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return (settings.data_dir / bootstrap.KEY_FILE).read_text().strip() or None
    return None


async def _ask_service(nc: NATS, token: str) -> dict[str, Any] | None:
    """The running service's own report; None if no service answers, or it refuses."""
    headers = {tokens.HEADER: f"Bearer {token}"}
    try:
        message = await nc.request(Status.op.subject, b"{}", timeout=2, headers=headers)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return None
    reply = json.loads(message.data)
    if not reply.get("ok"):
        error = reply.get("error") or {}
        print(
            f"agentmem: the running service refused the status request "
            f"({error.get('code')}: {error.get('message')}); reading the log and the store "
            "directly instead",
            file=sys.stderr,
        )
        return None
    report: dict[str, Any] = reply["data"]
    return report


async def _status(settings: Settings, as_json: bool, token: str | None) -> int:
    from agentmem.consumers.system import collect_status
    from agentmem.store import open_store

    async with _log_connection(settings) as nc:
        # A running service answers for itself, to a caller with credentials; otherwise
        # (none running, no credentials, or refused) read the log and the store directly.
        report = await _ask_service(nc, token) if token else None
        if report is None:
            store = await open_store(settings.store_url)
            try:
                report = await collect_status(nc, store)
            finally:
                await store.close()
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    stream = report["stream"]
    print(
        f"log {stream['name']}: last seq {stream['last_seq']:,}, "
        f"{stream['messages']:,} messages, {stream['bytes']:,} bytes"
    )
    if stream.get("plaintext_until"):
        print(
            f"! the log holds plaintext personal data up to seq {stream['plaintext_until']:,}: "
            "events written by earlier versions, before personal fields were sealed; they "
            'cannot be forgotten (docs/security.md, "Forgetting")'
        )
    # As wide as the longest name (a vector projection's carries its model's digest).
    width = max([12, *(len(name) for name in report["projections"])])
    print(f"{'projection':<{width}} {'version':>7} {'checkpoint':>12} {'lag':>10} {'parked':>8}")
    for name, p in report["projections"].items():
        lag = "-" if p["lag"] is None else f"{p['lag']:,}"
        version = "-" if p.get("version") is None else f"v{p['version']}"
        print(f"{name:<{width}} {version:>7} {p['checkpoint']:>12,} {lag:>10} {p['parked']:>8,}")
        build = p.get("build")
        if build:  # a new version built beside the live one (docs/deploy.md)
            build_lag = "-" if build["lag"] is None else f"{build['lag']:,}"
            variant = f" ({build['variant']})" if build.get("variant") else ""
            print(
                f"  building v{build['version']}{variant}: checkpoint {build['checkpoint']:,}, "
                f"lag {build_lag}, {build['progress']:.0%} of the live checkpoint, "
                f"{build['parked']:,} parked; queries read v{p['version']} until the switch"
            )
    behind = [
        name
        for name, p in report["projections"].items()
        if p["lag"] == 0 and p["checkpoint"] < stream["last_seq"]
    ]
    if behind:
        # Otherwise it reads as a projection that is stuck.
        print(
            f"* {', '.join(behind)}: checkpoint behind the last seq with lag 0, and up to "
            "date: a projection reads only its own subjects, so its checkpoint is the seq of "
            "the last event it read (0: none yet)"
        )
    for parked in report["parked"]:
        print(
            f"parked: {parked['projection']} seq {parked['seq']} {parked['subject']}: "
            f"{parked['error']}"
        )
    ingest = report.get("ingest")
    if ingest is not None:
        print(
            f"ingestion: {ingest['backlog']:,} published commands waiting "
            f"(bound {ingest['max_msgs']:,}), {ingest['parked']:,} parked"
            + (" (agentmem ingest parked)" if ingest["parked"] else "")
        )
    process = report.get("process")
    if process:  # the running service that answered: one of several, perhaps
        active = ", ".join(process["active"]) or "none"
        print(
            f"answered by pid {process['pid']} on {process['host']}: roles "
            f"{','.join(process['roles'])}; active for projections: {active}"
        )
    answered = _requests_answered(report.get("metrics") or {})
    if answered:
        print(f"requests it answered since its start: {answered}")
    return 0


async def _ingest(settings: Settings, verb: str, seqs: list[int], args: argparse.Namespace) -> int:
    """``agentmem ingest parked|retry|drop``: straight on the parked stream, as the service."""
    from agentmem import ingestion

    async with _log_connection(settings) as nc:
        parked = await ingestion.list_parked(nc, limit=100_000)
        if verb == "parked":
            for p in parked:
                if args.json:
                    row = {"seq": p.seq, "subject": p.subject, "command_id": p.command_id}
                    print(json.dumps({**row, "error": p.error, "time": p.time}))
                else:
                    error = f"{p.error.get('code')}: {p.error.get('message')}"
                    print(f"{p.seq:>8} {p.subject} command {p.command_id}: {error}")
            if not args.json:
                print(f"{len(parked):,} parked")
            return 0
        if bool(seqs) == bool(args.all):
            print(f"agentmem ingest {verb}: name parked seqs, or --all", file=sys.stderr)
            return 2
        chosen = parked if args.all else [p for p in parked if p.seq in set(seqs)]
        unknown = set(seqs) - {p.seq for p in parked}
        for seq in sorted(unknown):
            print(f"agentmem ingest {verb}: no parked command at seq {seq}", file=sys.stderr)
        for p in chosen:
            if verb == "retry":
                at = await ingestion.retry_parked(nc, p)
                print(f"{p.seq}: command {p.command_id} back in the ingestion stream at {at}")
            else:
                await ingestion.drop_parked(nc, p)
                print(f"{p.seq}: command {p.command_id} dropped")
        return 1 if unknown else 0


def _requests_answered(figures: dict[str, list[dict[str, Any]]]) -> str:
    """``1,204 (ok 1,170, invalid 30, conflict 4)`` from a status report's metrics."""
    by_outcome: dict[str, float] = {}
    for sample in figures.get("agentmem_requests", []):
        if sample["name"] == "agentmem_requests_total":
            outcome = sample["labels"]["outcome"]
            by_outcome[outcome] = by_outcome.get(outcome, 0) + sample["value"]
    if not by_outcome:
        return ""
    parts = ", ".join(f"{o} {n:,.0f}" for o, n in sorted(by_outcome.items(), key=lambda i: -i[1]))
    return f"{sum(by_outcome.values()):,.0f} ({parts})"


async def _replay(
    settings: Settings,
    name: str | None,
    into: str | None,
    until_seq: int | None = None,
    until_time: datetime | None = None,
) -> int:
    from agentmem.keys import KeyRing
    from agentmem.projections import ALL, BY_NAME
    from agentmem.projections.replay import progress_bar, replay, seq_at_time
    from agentmem.store import open_store
    from agentmem.store.leases import open_leases

    if name is not None and name not in BY_NAME:
        print(f"agentmem: no projection {name!r}; there are: {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    chosen = [BY_NAME[name]] if name else ALL
    point_in_time = until_seq is not None or until_time is not None
    # An earlier state written over the live tables would serve stale answers: never there.
    if point_in_time and (into is None or into == settings.store_url):
        print(
            "agentmem: --until-seq and --until-time rebuild into another store: add --into",
            file=sys.stderr,
        )
        return 2
    if until_seq is not None and until_seq < 0:
        print("agentmem: --until-seq must be 0 or more", file=sys.stderr)
        return 2
    target = into or settings.store_url
    try:
        lock = lock_store(target)
    except StoreBusy as exc:
        print(f"agentmem: {exc}; or rebuild into another file with --into", file=sys.stderr)
        return 2
    # On Postgres a service process may be running these projections: take their leases, so
    # that the replay and a live worker never write the same tables at once.
    leases = open_leases(target)
    try:
        busy = [p.name for p in chosen if not await leases.hold(p.name)]
        if busy:
            print(
                f"agentmem: projection(s) {', '.join(busy)} of this store are being run by a "
                "service process; stop it first (or its projections role), or rebuild into "
                "another store with --into",
                file=sys.stderr,
            )
            return 2
        async with _log_connection(settings) as nc:
            if until_time is not None:
                until_seq = await seq_at_time(nc, until_time)
                print(f"the log at {until_time.isoformat()} ended at sequence {until_seq:,}")
            store = await open_store(target)
            keys = KeyRing(nc, settings.master_keys())
            await keys.start()
            try:
                for projection in chosen:
                    result = await replay(
                        nc,
                        store,
                        projection,
                        on_progress=progress_bar(projection.name),
                        until_seq=until_seq,
                        keys=keys,
                    )
                    print(
                        f"{result.projection}: {result.events:,} events in "
                        f"{result.seconds:.2f}s ({result.events_per_second:,.0f} ev/s), "
                        f"checkpoint {result.checkpoint:,}"
                    )
            finally:
                await keys.stop()
                await store.close()
    finally:
        await leases.close()
        if lock:
            lock.close()
    return 0


async def _rewrap_keys(settings: Settings) -> int:
    from agentmem.keys import KeyRing

    async with _log_connection(settings) as nc:
        keys = KeyRing(nc, settings.master_keys())
        await keys.start()
        try:
            count = await keys.rewrap()
        finally:
            await keys.stop()
    print(f"wrapped {count:,} data keys again with master key {keys.master.current}")
    return 0


async def _create_admin_key(settings: Settings, name: str) -> int:
    from agentmem.bootstrap import create_admin_key
    from agentmem.errors import NotFoundError
    from agentmem.eventlog import EventLog
    from agentmem.keys import KeyRing

    async with _log_connection(settings) as nc:
        keys = KeyRing(nc, settings.master_keys())
        await keys.start()
        try:
            key = await create_admin_key(EventLog(nc, keys=keys), name)
            await keys.stop()
        except NotFoundError as exc:
            print(f"agentmem: {exc.message}", file=sys.stderr)
            return 2
    print(key)
    return 0


async def _export(settings: Settings, org_id: str, user_id: str | None, out: Path | None) -> int:
    from agentmem.exporting import export
    from agentmem.keys import KeyRing

    async with _log_connection(settings) as nc:
        keys = KeyRing(nc, settings.master_keys(create=False))
        # A log of an earlier version has no bucket yet: made here as serve makes it,
        # marking up to where the log holds plaintext.
        info = await nc.jetstream().stream_info(subjects.STREAM_NAME)
        await keys.start(log_last_seq=int(info.state.last_seq))
        try:
            if out is None:
                counts = await export(nc, keys, sys.stdout.buffer, org_id, user_id)
            else:
                # The file holds personal data in clear: private to its owner from its birth.
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    counts = await export(nc, keys, handle, org_id, user_id)
        finally:
            await keys.stop()
    print(
        f"exported {counts.events:,} events; left out {counts.forgotten:,} forgotten, "
        f"{counts.expired:,} of expired memories and {counts.unreadable:,} unreadable",
        file=sys.stderr,
    )
    if not counts.events:
        # Most likely a mistyped id: an empty file would pass for a backup.
        whose = f"user {user_id} of organization {org_id}" if user_id else f"organization {org_id}"
        print(f"agentmem export: nothing of {whose} to export (a mistyped id?)", file=sys.stderr)
        return 1
    return 0


async def _import(settings: Settings, path: Path, mem0_org: str | None, token: str | None) -> int:
    from agentmem.client import Client
    from agentmem.importing import ImportError_, import_export, import_mem0

    if token is None:
        print("agentmem: import needs an API key: --token-file or AGENTMEM_TOKEN", file=sys.stderr)
        return 2
    # A client of the target service, with the key as its credential (as any client
    # connects): the target may be on another machine, whose NATS secrets are not here.
    host, port = settings.listen_host_port
    servers = settings.nats_servers or [f"nats://{host}:{port}"]
    _where["nats"] = redact_url(",".join(servers))
    async with await Client.connect(servers, token=token, timeout=60.0) as client:
        try:
            with path.open("rb") as source:
                if mem0_org is not None:
                    result = await import_mem0(client, source, mem0_org)
                else:
                    result = await import_export(client, source)
        except ImportError_ as exc:
            print(f"agentmem: {path}: {exc}", file=sys.stderr)
            return 2
    skipped = ", ".join(f"{kind} {n}" for kind, n in sorted(result.skipped.items()))
    print(
        f"applied {result.applied:,}, already there {result.already:,}, "
        f"failed {len(result.failed):,}" + (f"; skipped (no command): {skipped}" if skipped else "")
    )
    for failure in result.failed[:20]:
        print(f"  refused: {failure}", file=sys.stderr)
    if not result.complete:
        print("agentmem: the export has no end line: it was cut short", file=sys.stderr)
        return 1
    return 1 if result.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except StartupError as exc:
        print(f"agentmem: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_format)
    if args.command == "nats-config":
        os.umask(0o077)
        return _nats_config(settings.data_dir, args.out)
    try:
        if args.command == "serve":
            # Whatever the service writes is private to its user (docs/security.md).
            os.umask(0o077)
            return asyncio.run(_serve(settings))
    except StartupError as exc:
        print(f"agentmem: {exc}", file=sys.stderr)
        return 2
    except nats.errors.NoServersError:
        print(f"agentmem: no NATS server answers at {settings.nats_url}", file=sys.stderr)
        return 2
    # The other commands find the running service from the data dir, and fail in one line.
    _find_service(settings)
    try:
        if args.command == "status":
            return asyncio.run(
                _status(settings, args.json, _status_token(settings, args.token_file))
            )
        if args.command == "ingest":
            return asyncio.run(
                _ingest(settings, args.ingest_command, getattr(args, "seqs", []), args)
            )
        if args.command == "admin" and args.admin_command == "rewrap-keys":
            return asyncio.run(_rewrap_keys(settings))
        if args.command == "admin":
            return asyncio.run(_create_admin_key(settings, args.name))
        if args.command == "export":
            return asyncio.run(_export(settings, args.org, args.user, args.out))
        if args.command == "import":
            token = _status_token(settings, args.token_file)
            return asyncio.run(_import(settings, args.file, args.mem0, token))
        return asyncio.run(
            _replay(settings, args.projection, args.into, args.until_seq, args.until_time)
        )
    except StartupError as exc:
        print(f"agentmem: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"agentmem {args.command}: {_one_line(exc, settings)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
