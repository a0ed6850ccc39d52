"""``agentmem serve`` in embedded mode, ``agentmem status``, as real child processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import agentmem
from agentmem import Client, natsauth, subjects
from agentmem.auth import tokens
from agentmem.embedded import port_is_free
from agentmem.natsflush import flushed
from agentmem.projections import ALL as ALL_PROJECTIONS
from agentmem.queries import Health, Status
from agentmem.service import redact_url
from tests.conftest import admin_key
from tests.realparts import (
    Ran,
    after_bootstrap,
    agentmem_command,
    bootstrap_batch,
    child_pids,
    clean_env,
    cmdline,
    eventually,
    process_alive,
    read_log,
    run_cli,
    status,
    wait_caught_up,
)
from tests.support import NatsServer, free_port


async def test_help_and_version(tmp_path: Path) -> None:
    # --help showed the module docstring's RST markup and left ``admin`` out of its summary;
    # there was no --version.
    ran = await run_cli("--help", env=clean_env(), cwd=tmp_path)
    assert ran.returncode == 0, ran
    assert "``" not in ran.stdout, ran.stdout
    for command in ("serve", "status", "admin", "replay"):
        assert re.search(rf"^\s+{command}\s+\S", ran.stdout, re.MULTILINE), (command, ran.stdout)
    ran = await run_cli("--version", env=clean_env(), cwd=tmp_path)
    assert ran.returncode == 0, ran
    assert ran.stdout.strip() == f"agentmem {agentmem.__version__}", ran


async def quiet(exc: Exception) -> None:
    pass


class Serve:
    """One ``agentmem serve`` child process: its log lines (stderr) in a log file, what it
    prints on stdout in another, each appended to across restarts."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.args, self.env, self.cwd, self.log = args, env, cwd, log
        self.out = log.with_suffix(".out")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as err, open(self.out, "ab") as out:
            self.process = subprocess.Popen(
                [*agentmem_command(), "serve", *self.args],
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=err,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_lines(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def printed(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    def output(self) -> str:
        return self.log_lines() + self.printed()

    @property
    def data_dir(self) -> Path:
        if "--data-dir" in self.args:
            return Path(self.args[self.args.index("--data-dir") + 1])
        return Path(self.env.get("AGENTMEM_DATA_DIR") or self.cwd / "data")

    def as_service(self, url: str) -> str:
        """``url`` as the service principal, whose password the data dir holds once serve
        has started its embedded server (a serve on its own NATS has none: ``url``)."""
        found = natsauth.load_secrets(self.data_dir / natsauth.SECRETS_FILE)
        if found is None:
            return url
        return natsauth.as_user(url, natsauth.SERVICE_USER, found.service_password)

    async def connect(self, url: str, timeout: float = 20.0) -> NATS:
        """Connect, as the service principal, once the service answers agentmem.sys.health."""

        async def healthy() -> NATS | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited: {self.output()[-2000:]}")
            nc = await nats.connect(
                self.as_service(url),
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                error_cb=quiet,
            )
            try:
                reply = json.loads((await nc.request(Health.op.subject, b"{}", timeout=1)).data)
                if reply["ok"] and reply["data"]["live"]:
                    return nc
            except Exception:
                pass
            await nc.close()
            return None

        try:
            return await eventually(healthy, timeout, 0.1, "agentmem.sys.health answered")
        except AssertionError:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"serve exited: {self.output()[-2000:]}") from None
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def serves(tmp_path: Path) -> Iterator[list[Serve]]:
    """Every serve a test starts is killed at teardown, whatever happened."""
    started: list[Serve] = []
    yield started
    for serve in started:
        children = child_pids(serve.pid) if serve.process else []
        serve.kill()
        for pid in children:  # an orphaned embedded nats-server, if the test failed
            if process_alive(pid) and "nats-server" in cmdline(pid):
                subprocess.run(["kill", "-9", str(pid)], check=False)


def new_serve(
    serves: list[Serve], tmp_path: Path, args: list[str], name: str = "serve", **env: str
) -> Serve:
    serve = Serve(args, clean_env(**env), tmp_path, tmp_path / f"{name}.log")
    serves.append(serve)
    serve.start()
    return serve


def nats_child(serve: Serve) -> int:
    children = [pid for pid in child_pids(serve.pid) if "nats-server" in cmdline(pid)]
    assert len(children) == 1, children
    return children[0]


def check_admin_key_shown_once(serve: Serve, data: Path) -> str:
    """The first start saved the administrator's API key in the data dir, readable only by
    its owner, and printed it on stdout exactly once (however often serve started); it is
    in no log line."""
    path = data / "admin.key"
    assert path.stat().st_mode & 0o777 == 0o600, oct(path.stat().st_mode)
    key = admin_key(data)
    token = tokens.parse(key)
    assert token is not None, key
    assert token.kind == "key", key
    printed = serve.printed()
    assert printed.count(key) == 1, printed
    assert re.findall(rf"{tokens.API_KEY_PREFIX}_\S+", printed) == [key], printed
    assert key in printed.splitlines(), "the key on a line of its own, to copy"
    logs = serve.log_lines()
    assert logs.strip(), "serve logged something"
    assert token.secret not in logs
    assert f"{tokens.API_KEY_PREFIX}_" not in logs
    return key


@contextlib.asynccontextmanager
async def status_requests(nc: NATS) -> AsyncIterator[list[Msg]]:
    """Every agentmem.sys.status request made while inside (a plain subscriber gets a copy
    of each; it never answers)."""
    seen: list[Msg] = []

    async def record(msg: Msg) -> None:
        seen.append(msg)

    subscription = await nc.subscribe(Status.op.subject, cb=record)
    await flushed(nc)
    try:
        yield seen
    finally:
        await flushed(nc)
        await subscription.unsubscribe()


def credentials_sent(seen: list[Msg]) -> list[str | None]:
    return [(m.headers or {}).get(tokens.HEADER) for m in seen]


async def wait_gone(pid: int, timeout: float = 10.0) -> None:
    async def gone() -> bool:
        return not process_alive(pid)

    await eventually(gone, timeout, 0.05, f"process {pid} gone")


def not_private(data: Path) -> list[str]:
    """Everything under ``data`` (and ``data`` itself) that anyone but its owner may use."""
    found = []
    for path in [data, *data.rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            # A running nats-server writes some files as ``*.tmp`` and renames them: one
            # listed a moment ago may be gone. The test checks again once it has stopped.
            continue
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{path.relative_to(data.parent)} {stat.filemode(mode)}")
    return found


async def test_the_data_dir_is_private(serves: list[Serve], tmp_path: Path) -> None:
    # agentmem.db (message text, emails) was created 0644, and so were its -wal and -shm,
    # nats-server.log and the JetStream store. A data dir an earlier version left readable
    # is made private at the next start.
    port = free_port()
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "nats-server.log").write_text("an earlier run\n")
    (data / "nats-server.log").chmod(0o644)
    args = ["--data-dir", str(data), "--listen", f"127.0.0.1:{port}"]
    serve = new_serve(serves, tmp_path, args)
    nc = await serve.connect(f"nats://127.0.0.1:{port}")
    try:
        key = admin_key(data)
        client = Client(nc, key)
        await client.create_org("Acme")
        await wait_caught_up(nc, key)
        names = {path.name for path in data.rglob("*")}
        for name in ("agentmem.db", "agentmem.db-wal", "agentmem.db-shm", "nats-server.log"):
            assert name in names, sorted(names)
        assert (data / "nats" / "jetstream").is_dir()
        assert not_private(data) == []
    finally:
        await nc.close()
    assert serve.stop() == 0, serve.output()[-2000:]
    assert not_private(data) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_serve_embedded_stops_cleanly_and_resumes(
    serves: list[Serve], tmp_path: Path, sig: int
) -> None:
    port = free_port()
    data = tmp_path / "data"
    args = ["--data-dir", str(data), "--listen", f"127.0.0.1:{port}"]
    url = f"nats://127.0.0.1:{port}"
    serve = new_serve(serves, tmp_path, args)
    nc = await serve.connect(url)
    nats_pid = nats_child(serve)
    conf = (data / "nats-server.conf").read_text()
    assert re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.MULTILINE), conf
    key = check_admin_key_shown_once(serve, data)
    bootstrap = bootstrap_batch(await read_log(nc))

    client = Client(nc, key)
    org = (await client.create_org("Acme")).fields["org_id"]
    user = await client.register_user(org, "Ann", "ann@example.com", "password-1")
    before = await wait_caught_up(nc, key)
    await nc.close()

    assert serve.stop(sig) == 0, serve.output()[-2000:]
    assert "agentmem stopped" in serve.log_lines()
    await wait_gone(nats_pid)
    assert port_is_free("127.0.0.1", port)

    # Restarted on the same data: the user is there, nothing re-applied or lost; the first
    # start's administrator and key stand (no second bootstrap, nothing printed again).
    serve.start()
    nc = await serve.connect(url)
    try:
        assert check_admin_key_shown_once(serve, data) == key
        assert bootstrap_batch(await read_log(nc)) == bootstrap
        client = Client(nc, key)
        got = await client.get_user(user.fields["user_id"])
        assert (got.name, got.email, got.version) == ("Ann", "ann@example.com", user.version)
        after = await wait_caught_up(nc, key)
        assert after["stream"]["last_seq"] == before["stream"]["last_seq"]
        assert {k: v["checkpoint"] for k, v in after["projections"].items()} == {
            k: v["checkpoint"] for k, v in before["projections"].items()
        }
        nats_pid = nats_child(serve)
    finally:
        await nc.close()
    assert serve.stop(sig) == 0
    assert serve.log_lines().count("agentmem stopped") == 2
    check_admin_key_shown_once(serve, data)
    await wait_gone(nats_pid)


async def test_a_second_serve_on_the_same_port_fails_with_one_clear_line(
    serves: list[Serve], tmp_path: Path
) -> None:
    port = free_port()
    listen = f"127.0.0.1:{port}"
    serve = new_serve(serves, tmp_path, ["--data-dir", str(tmp_path / "one"), "--listen", listen])
    nc = await serve.connect(f"nats://{listen}")
    await nc.close()

    second = await run_cli(
        "serve", "--data-dir", str(tmp_path / "two"), "--listen", listen, env=clean_env()
    )
    assert second.returncode != 0
    lines = [line for line in (second.stdout + second.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "--listen" in lines[0], lines[0]
    assert "--nats" in lines[0], lines[0]
    assert serve.process is not None
    assert serve.process.poll() is None

    # The same data dir is refused as well, in one line, before any port is touched.
    third = await run_cli(
        "serve", "--data-dir", str(tmp_path / "one"), "--listen", listen, env=clean_env()
    )
    assert third.returncode != 0
    lines = [line for line in (third.stdout + third.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "in use" in lines[0], lines


async def test_a_second_serve_on_the_same_data_dir_is_refused_whatever_its_store(
    serves: list[Serve], tmp_path: Path
) -> None:
    # It started a second nats-server on the same JetStream store: both acknowledged the
    # same sequences, and after a restart one service's commits were gone.
    port, other = free_port(), free_port()
    data = tmp_path / "data"
    serve = new_serve(serves, tmp_path, ["--data-dir", str(data), "--listen", f"127.0.0.1:{port}"])
    nc = await serve.connect(f"nats://127.0.0.1:{port}")
    await nc.close()
    for store in (str(tmp_path / "other.db"), f"sqlite:///{tmp_path / 'third.db'}"):
        second = await run_cli(
            "serve",
            *("--data-dir", str(data), "--listen", f"127.0.0.1:{other}", "--store", store),
            env=clean_env(),
            timeout=20,
        )
        assert second.returncode != 0, second
        lines = [line for line in (second.stdout + second.stderr).splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert "in use" in lines[0], lines
        assert str(data) in lines[0], lines
        assert f"pid {serve.pid}" in lines[0], lines
        assert port_is_free("127.0.0.1", other), "a second nats-server was started"
    assert serve.process is not None
    assert serve.process.poll() is None
    # Once the first has stopped, the data dir is free again.
    assert serve.stop() == 0, serve.output()[-2000:]
    serve.start()
    nc = await serve.connect(f"nats://127.0.0.1:{port}")
    await nc.close()


async def test_the_first_key_is_printed_once_a_client_can_use_it(
    serves: list[Serve], tmp_path: Path
) -> None:
    """A script that reads the first start's key and connects with it at once is answered
    (a helper's was refused by nats-server in 9 of 10 starts: the key was printed before
    the service answered connection checks, and the client gave up after 5 s)."""
    port = free_port()
    data = tmp_path / "data"
    serve = new_serve(serves, tmp_path, ["--data-dir", str(data), "--listen", f"127.0.0.1:{port}"])
    for _ in range(600):
        found = re.findall(rf"^({tokens.API_KEY_PREFIX}_\S+)$", serve.printed(), re.MULTILINE)
        if found or serve.process is None or serve.process.poll() is not None:
            break
        await asyncio.sleep(0.05)
    assert found, serve.output()[-2000:]
    assert (data / "service.json").exists()  # written before the key too
    nc = await nats.connect(
        f"nats://127.0.0.1:{port}",
        **natsauth.connection_options(found[0]),
        allow_reconnect=False,
        connect_timeout=5,
        error_cb=quiet,
    )
    try:
        assert await Client(nc, found[0]).list_orgs() is not None
    finally:
        await nc.close()


async def test_serve_exits_non_zero_when_its_nats_server_dies(
    serves: list[Serve], tmp_path: Path
) -> None:
    # After a SIGKILL of the embedded nats-server the service lived on with nothing on its
    # port, logging retries: a supervisor saw it as up.
    port = free_port()
    args = ["--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}"]
    serve = new_serve(serves, tmp_path, args)
    nc = await serve.connect(f"nats://127.0.0.1:{port}")
    await nc.close()
    os.kill(nats_child(serve), signal.SIGKILL)
    killed = time.monotonic()
    assert serve.process is not None
    try:
        code = serve.process.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serve lives on: {serve.output()[-2000:]}") from None
    assert code not in (0, None), serve.output()[-2000:]
    # Promptly: each step of its stop waited up to 10 s for a server that was gone (8 s
    # idle, past 15 s under load).
    assert time.monotonic() - killed < 6, serve.output()[-2000:]
    assert "agentmem: the embedded nats-server was killed by signal 9" in serve.log_lines()
    # Its supervisor starts it again: the same data dir, nothing lost.
    serve.start()
    nc = await serve.connect(f"nats://127.0.0.1:{port}")
    await nc.close()
    assert serve.stop() == 0, serve.output()[-2000:]


def parse_status(text: str) -> tuple[int, dict[str, tuple[int, str, int]]]:
    last = re.search(r"last seq ([\d,]+)", text)
    assert last, text
    rows = re.findall(
        r"^([\w-]+)\s+(v\d+|-)\s+([\d,]+)\s+([\d,]+|-)\s+([\d,]+)$", text, re.MULTILINE
    )
    table = {
        name: (int(cp.replace(",", "")), lag, int(parked)) for name, _, cp, lag, parked in rows
    }
    # The live versions: each projection's own.
    declared = {p.name: f"v{p.version}" for p in ALL_PROJECTIONS}
    assert {name: version for name, version, _, _, _ in rows} == declared, text
    return int(last[1].replace(",", "")), table


async def test_status_against_a_running_and_a_stopped_service(
    serves: list[Serve], tmp_path: Path
) -> None:
    port = free_port()
    data = tmp_path / "data"
    flags = ["--data-dir", str(data), "--listen", f"127.0.0.1:{port}"]
    serve = new_serve(serves, tmp_path, flags)
    nc = await serve.connect(f"nats://127.0.0.1:{port}")
    key = admin_key(data)
    try:
        client = Client(nc, key)
        org = (await client.create_org("Acme")).fields["org_id"]
        for n in range(3):
            await client.register_user(org, f"U{n}", f"u{n}@example.com", "password-1")
        await client.rename_org(org, "Acme 2")
        report = await wait_caught_up(nc, key)
        checkpoints = {name: p["checkpoint"] for name, p in report["projections"].items()}
        last_seq = report["stream"]["last_seq"]
        messages = await read_log(nc)
        assert last_seq == messages[-1].seq
        # An org, three users (each with its email reservation), a rename: after the batch
        # the first start wrote.
        assert len(after_bootstrap(messages)) == 1 + 3 * 2 + 1
        assert set(checkpoints) == {p.name for p in ALL_PROJECTIONS}

        def assert_reported(ran: Ran) -> None:
            assert ran.returncode == 0, ran.stderr
            assert "Traceback" not in ran.stderr
            seq, table = parse_status(ran.stdout)
            assert seq == last_seq
            assert {name: (cp, lag) for name, (cp, lag, _) in table.items()} == {
                name: (cp, "0") for name, cp in checkpoints.items()
            }
            # A checkpoint behind the last seq with lag 0 is explained, naming which ones.
            behind = sorted(name for name, cp in checkpoints.items() if cp < last_seq)
            assert behind, checkpoints  # agents, tools, ...: nothing of theirs was written
            note = [line for line in ran.stdout.splitlines() if line.startswith("* ")]
            assert len(note) == 1, ran.stdout
            assert "reads only its own subjects" in note[0], note
            assert all(name in note[0] for name in behind), (behind, note)
            assert not any(name in note[0] for name in set(checkpoints) - set(behind)), note

        # The running service answers, asked with the administrator's key that the first
        # start saved in the data dir: nothing else needed.
        async with status_requests(nc) as seen:
            ran = await run_cli("status", *flags, env=clean_env(), cwd=tmp_path)
        assert_reported(ran)
        assert credentials_sent(seen) == [f"Bearer {key}"]
        assert ran.stderr == ""
        async with status_requests(nc) as seen:
            as_json = await run_cli("status", "--json", *flags, env=clean_env(), cwd=tmp_path)
        assert credentials_sent(seen) == [f"Bearer {key}"]
        assert as_json.returncode == 0, as_json.stderr
        parsed = json.loads(as_json.stdout)
        assert parsed["stream"]["last_seq"] == last_seq
        assert {k: v["checkpoint"] for k, v in parsed["projections"].items()} == checkpoints

        # Another key, from AGENTMEM_TOKEN, wins over the data dir's file; --token-file (a
        # key never goes in argv, where every user of the machine can read it) wins over both.
        other = (await client.create_api_key("status")).fields["token"]
        report = await wait_caught_up(nc, key)
        last_seq = report["stream"]["last_seq"]
        checkpoints = {name: p["checkpoint"] for name, p in report["projections"].items()}
        env = clean_env(AGENTMEM_TOKEN=other)
        async with status_requests(nc) as seen:
            ran = await run_cli("status", *flags, env=env, cwd=tmp_path)
        assert_reported(ran)
        assert credentials_sent(seen) == [f"Bearer {other}"]
        async with status_requests(nc) as seen:
            key_file = tmp_path / "status.key"
            key_file.write_text(key)
            ran = await run_cli(
                "status", *flags, "--token-file", str(key_file), env=env, cwd=tmp_path
            )
        assert_reported(ran)
        assert credentials_sent(seen) == [f"Bearer {key}"]

        # Refused (a wrong key): it says so in one line, then reads the store itself.
        wrong = tokens.parse(key)
        assert wrong is not None
        wrong = tokens.Token(wrong.kind, wrong.org_id, wrong.user_id, wrong.credential_id, "0" * 64)
        async with status_requests(nc) as seen:
            key_file.write_text(str(wrong))
            ran = await run_cli(
                "status", *flags, "--token-file", str(key_file), env=env, cwd=tmp_path
            )
        assert_reported(ran)
        assert credentials_sent(seen) == [f"Bearer {wrong}"]
        assert "refused" in ran.stderr, ran.stderr
        assert "unauthenticated" in ran.stderr, ran.stderr
        assert len(ran.stderr.splitlines()) == 1, ran.stderr
        assert wrong.secret not in ran.stderr + ran.stdout

        # No credentials at all (a data dir without a key): it does not ask, and reads the
        # store itself.
        # (It still needs the NATS server's credentials: NATS is closed by default. No serve
        # runs on that data dir, so the server is named with --nats: a server that merely
        # listens at --listen is not trusted with them.)
        (tmp_path / "no-key").mkdir(mode=0o700)
        shutil.copy(data / natsauth.SECRETS_FILE, tmp_path / "no-key" / natsauth.SECRETS_FILE)
        bare = ["--data-dir", str(tmp_path / "no-key"), "--nats", f"nats://127.0.0.1:{port}"]
        bare += ["--store", str(data / "agentmem.db")]
        async with status_requests(nc) as seen:
            ran = await run_cli("status", *bare, env=clean_env(), cwd=tmp_path)
        assert_reported(ran)
        assert seen == []
        assert ran.stderr == ""
    finally:
        await nc.close()

    nats_pid = nats_child(serve)
    assert serve.stop() == 0
    await wait_gone(nats_pid)

    # Stopped: status starts the embedded server for itself, answers, and stops it again.
    started = time.monotonic()
    ran = await run_cli("status", *flags, env=clean_env(), cwd=tmp_path, timeout=20)
    assert ran.returncode == 0, ran.stderr
    assert time.monotonic() - started < 10
    assert "Traceback" not in ran.stderr
    seq, table = parse_status(ran.stdout)
    assert seq == last_seq
    assert {name: cp for name, (cp, _, _) in table.items()} == checkpoints
    as_json = await run_cli("status", "--json", *flags, env=clean_env(), cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["stream"]["last_seq"] == last_seq
    assert port_is_free("127.0.0.1", port)


async def test_flags_come_from_agentmem_env_vars(serves: list[Serve], tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "from-env"
    env = {"AGENTMEM_LISTEN": f"127.0.0.1:{port}", "AGENTMEM_DATA_DIR": str(data)}
    serve = new_serve(serves, tmp_path, [], **env)
    nc = await serve.connect(f"nats://127.0.0.1:{port}")
    try:
        key = check_admin_key_shown_once(serve, data)  # in the data dir the env var named
        created = await Client(nc, key).create_org("Acme")
        report = await wait_caught_up(nc, key)
        # The log: the first start's batch, then the one org.create.
        messages = await read_log(nc)
        (mine,) = after_bootstrap(messages)
        assert (mine.seq, mine.commit_type) == (created.seq, "org.create")
        assert messages[-1] == mine

        assert (data / "agentmem.db").is_file()
        assert "sync_interval: always" in (data / "nats-server.conf").read_text()
        assert f"127.0.0.1:{port}" in (data / "nats-server.conf").read_text()
        assert not (tmp_path / "data").exists()  # not the default ./data

        async with status_requests(nc) as seen:  # the key found through AGENTMEM_DATA_DIR
            ran = await run_cli("status", "--json", env=clean_env(**env), cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
        assert credentials_sent(seen) == [f"Bearer {key}"]
        assert json.loads(ran.stdout)["stream"]["last_seq"] == report["stream"]["last_seq"]
        assert report["stream"]["last_seq"] == mine.seq
    finally:
        await nc.close()
    assert serve.stop() == 0


async def test_status_reply_matches_the_cli(serves: list[Serve], tmp_path: Path) -> None:
    """The CLI prints what agentmem.sys.status reports, parked events included."""
    port = free_port()
    flags = ["--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}"]
    serve = new_serve(serves, tmp_path, flags)
    nc = await serve.connect(f"nats://127.0.0.1:{port}")
    key = admin_key(tmp_path / "d")
    try:
        bad = (await nc.jetstream().publish(subjects.event("o", "user", "u"), b"nope")).seq
        await wait_caught_up(nc, key)
        report = await status(nc, key)
    finally:
        await nc.close()
    ran = await run_cli("status", *flags, env=clean_env(), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    _, table = parse_status(ran.stdout)
    assert table["users"][2] == report["projections"]["users"]["parked"] == 1
    assert f"parked: users seq {bad} {subjects.event('o', 'user', 'u')}" in ran.stdout
    assert serve.stop() == 0


async def test_sigterm_during_startup_stops_serve(serves: list[Serve], tmp_path: Path) -> None:
    """Waiting for a NATS server that is not up yet must not make serve deaf to signals."""
    dead = f"nats://127.0.0.1:{free_port()}"
    serve = new_serve(serves, tmp_path, ["--data-dir", str(tmp_path / "d"), "--nats", dead])

    async def waiting() -> bool:
        return "nats connection problem" in serve.output()

    await eventually(waiting, 15, 0.1, "serve waiting for NATS")
    started = time.monotonic()
    assert serve.stop(signal.SIGTERM, timeout=15) == 0
    assert time.monotonic() - started < 10
    assert "Traceback" not in serve.output()
    assert not (tmp_path / "d" / "admin.key").exists(), "no bootstrap without a log"


async def test_admin_create_key_makes_a_working_key_from_the_log(
    serves: list[Serve], tmp_path: Path
) -> None:
    port = free_port()
    data = tmp_path / "data"
    flags = ["--data-dir", str(data), "--listen", f"127.0.0.1:{port}"]
    serve = new_serve(serves, tmp_path, flags)
    nc = await serve.connect(f"nats://127.0.0.1:{port}")
    try:
        made = await run_cli("admin", "create-key", "--name", "ops", *flags, env=clean_env())
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        assert key.startswith("amk_")
        assert key != admin_key(data)
        root = Client(nc, key)
        org = (await root.create_org("Made with the CLI key")).fields["org_id"]
        keys = await root.list_api_keys(after_seq=root.last_seq)
        assert {k["name"] for k in keys} == {"bootstrap", "ops"}
        assert (await root.get_org(org)).name == "Made with the CLI key"
    finally:
        await nc.close()


async def test_ctrl_c_to_the_whole_process_group_still_drains_cleanly(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches every process of the foreground group; the embedded
    nats-server must not go down under the drain. And when serve is SIGKILLed, its
    nats-server must not outlive it."""
    import os

    port = free_port()
    data = tmp_path / "data"
    flags = ["serve", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"]

    def start(log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(
                [*agentmem_command(), *flags],
                env=clean_env(),
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a group of its own, as a terminal's job is
            )

    async def connected(process: subprocess.Popen[bytes], log: Path) -> NATS:
        watcher = Serve(flags[1:], clean_env(), tmp_path, log)
        watcher.process = process
        return await watcher.connect(f"nats://127.0.0.1:{port}")

    log = tmp_path / "serve.log"
    serve = start(log)
    try:
        nc = await connected(serve, log)
        await Client(nc, admin_key(data)).create_org("Acme")
        await nc.close()
        os.killpg(serve.pid, signal.SIGINT)
        assert serve.wait(20) == 0
        text = log.read_text()
        assert "agentmem stopped" in text
        assert "Server Shutdown" not in text
        assert "projection failed" not in text
    finally:
        if serve.poll() is None:
            serve.kill()

    serve = start(tmp_path / "serve2.log")
    try:
        await (await connected(serve, tmp_path / "serve2.log")).close()
    except BaseException:
        serve.kill()
        raise
    children = [pid for pid in child_pids(serve.pid) if "nats-server" in cmdline(pid)]
    assert len(children) == 1
    serve.kill()
    serve.wait(10)
    await wait_gone(children[0])


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://s3cret-token@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("nats://user:s3cret@host:4222", "nats://user:***@host:4222"),
        ("postgresql://app@db:5432/agentmem", "postgresql://app@db:5432/agentmem"),
        ("postgresql://app:s3cret@db/agentmem", "postgresql://app:***@db/agentmem"),
        (
            "postgresql://db/agentmem?user=app&password=s3cret&sslmode=require",
            "postgresql://db/agentmem?user=app&password=***&sslmode=require",
        ),
        ("/var/lib/agentmem/agentmem.db", "/var/lib/agentmem/agentmem.db"),
    ],
)
def test_urls_are_logged_without_any_credential(url: str, logged: str) -> None:
    assert redact_url(url) == logged


def test_making_the_data_dir_private_outlives_a_file_that_goes_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A nats-server sharing the folder removes its own files while the walk runs."""
    from agentmem import service

    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "msgs").write_text("x")
    chmod = os.chmod

    def vanishing(path: str, mode: int) -> None:
        if str(path).endswith("msgs"):
            raise FileNotFoundError(path)
        chmod(path, mode)

    monkeypatch.setattr(service.os, "chmod", vanishing)
    service.make_private(tmp_path)
    assert (tmp_path / "gone").stat().st_mode & 0o777 == 0o700


async def test_the_other_commands_find_the_running_service_from_the_data_dir(
    serves: list[Serve], tmp_path: Path
) -> None:
    # Another NATS server, without AgentMem's stream, on the port the commands assumed
    # (AGENTMEM_LISTEN stands for 127.0.0.1:4222 here): status, admin create-key and replay
    # crashed with tracebacks ("stream not found"). They now find the serve running on the
    # data dir from what it recorded there, and any failure is one line.
    stray = NatsServer(tmp_path / "stray")
    stray.start()
    try:
        port = free_port()
        data = tmp_path / "data"
        serve = new_serve(
            serves, tmp_path, ["--data-dir", str(data), "--listen", f"127.0.0.1:{port}"]
        )
        nc = await serve.connect(f"nats://127.0.0.1:{port}")
        await nc.close()
        assert json.loads((data / "service.json").read_text())["pid"] == serve.pid
        assert stat.S_IMODE((data / "service.json").stat().st_mode) == 0o600
        env = clean_env(AGENTMEM_LISTEN=f"127.0.0.1:{stray.port}", AGENTMEM_DATA_DIR=str(data))
        ran = await run_cli("status", env=env, cwd=tmp_path)
        assert ran.returncode == 0, ran
        assert parse_status(ran.stdout)[0] > 0
        made = await run_cli("admin", "create-key", "--name", "found", env=env, cwd=tmp_path)
        assert made.returncode == 0, made
        assert made.stdout.strip().startswith("amk_")
        into = tmp_path / "rebuilt.db"
        ran = await run_cli("replay", "--all", "--into", str(into), env=env, cwd=tmp_path)
        assert ran.returncode == 0, ran
        assert "orgs:" in ran.stdout

        # A data dir with no serve running: its own server cannot start on the stray's
        # port, refused in one line each, with no traceback.
        other = clean_env(
            AGENTMEM_LISTEN=f"127.0.0.1:{stray.port}", AGENTMEM_DATA_DIR=str(tmp_path / "none")
        )
        for args in (["status"], ["admin", "create-key"], ["replay", "--all", "--into", str(into)]):
            ran = await run_cli(*args, env=other, cwd=tmp_path)
            assert ran.returncode != 0, (args, ran)
            assert "Traceback" not in ran.stderr, (args, ran.stderr)
            lines = ran.stderr.strip().splitlines()
            assert len(lines) == 1, (args, ran.stderr)
            assert f"port {stray.port} on 127.0.0.1 is taken" in lines[0], (args, lines)

        # Once serve stops, its record goes: the commands no longer trust it.
        assert serve.stop() == 0
        assert not (data / "service.json").exists()
    finally:
        stray.stop()


async def test_no_command_sends_the_data_dirs_credentials_to_a_server_it_did_not_start(
    serves: list[Serve], tmp_path: Path
) -> None:
    """With its serve stopped, status, admin and replay logged in to whatever listened at
    --listen with the data dir's service password (full access to the log): anyone who took
    the port while the deployment was down got it."""
    port = free_port()
    data = tmp_path / "data"
    serve = new_serve(serves, tmp_path, ["--data-dir", str(data), "--listen", f"127.0.0.1:{port}"])
    await (await serve.connect(f"nats://127.0.0.1:{port}")).close()
    assert serve.stop() == 0
    password = json.loads((data / natsauth.SECRETS_FILE).read_text())["service_password"]
    heard: list[bytes] = []

    async def squat(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b'INFO {"server_id":"squatter","version":"2.10.0","headers":true,'
            b'"max_payload":1048576,"proto":1,"auth_required":true}\r\n'
        )
        await writer.drain()
        with contextlib.suppress(Exception):
            heard.append(await asyncio.wait_for(reader.read(65536), 5))
        writer.close()

    squatter = await asyncio.start_server(squat, "127.0.0.1", 0)
    taken = squatter.sockets[0].getsockname()[1]
    env = clean_env(AGENTMEM_LISTEN=f"127.0.0.1:{taken}", AGENTMEM_DATA_DIR=str(data))
    try:
        into = tmp_path / "rebuilt.db"
        for args in (["status"], ["admin", "create-key"], ["replay", "--all", "--into", str(into)]):
            ran = await run_cli(*args, env=env, cwd=tmp_path)
            assert ran.returncode != 0, (args, ran)
            assert f"port {taken} on 127.0.0.1 is taken" in ran.stderr, (args, ran.stderr)
    finally:
        squatter.close()
        await squatter.wait_closed()
    assert not any(password.encode() in said for said in heard), heard
    # Its own port free again: the data dir's own server, started for the command.
    ran = await run_cli(
        "status",
        env=clean_env(AGENTMEM_LISTEN=f"127.0.0.1:{port}", AGENTMEM_DATA_DIR=str(data)),
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran


async def test_a_forget_over_nats_leaves_no_file_with_the_text(
    serves: list[Serve], tmp_path: Path
) -> None:
    """The bar of issue 16: on a fresh ``agentmem serve`` (embedded nats-server, SQLite),
    after a forget over NATS, no file under the data dir holds the forgotten text."""
    port = free_port()
    data = tmp_path / "data"
    serve = new_serve(serves, tmp_path, ["--data-dir", str(data), "--listen", f"127.0.0.1:{port}"])
    nc = await serve.connect(f"nats://127.0.0.1:{port}")
    text = "Xylophagous Quentarella told us her blood type"
    email = "quentarella.x@example.org"
    needles = [text.encode(), email.encode(), b"Quentarella", b"quentarella"]
    try:
        key = admin_key(data)
        client = Client(nc, key)
        org_id = str((await client.create_org("Acme")).fields["org_id"])
        user = await client.register_user(org_id, "Quentarella X", email, "long-enough-password")
        user_id = str(user.fields["user_id"])
        agent_id = str((await client.create_agent("A", org_id=org_id)).fields["agent_id"])
        await client.append_message("s1", agent_id, "user", text, user_id=user_id, org_id=org_id)
        await client.add_memory(text, user_id=user_id, org_id=org_id)
        await wait_caught_up(nc, key)
        held = [p for p in data.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]
        assert held, "the text was in no file before the forget"
        assert not [p for p in held if "jetstream" in str(p)], held  # sealed in the log
        await client.forget_user(user_id)
        await wait_caught_up(nc, key)
    finally:
        await nc.close()
    assert serve.stop() == 0
    left = [
        f"{path.relative_to(data)}: {needle!r}"
        for path in data.rglob("*")
        if path.is_file()
        for needle in needles
        if needle in path.read_bytes()
    ]
    assert left == []


async def test_a_plain_publish_while_the_embedded_service_is_down_is_stored_after_it_starts(
    serves: list[Serve], tmp_path: Path
) -> None:
    """The bar of issue 18 on the embedded default: the nats-server stops with the service,
    so a publish in between waits in the connected client (nats-py keeps what is published
    while it reconnects, up to its ``pending_size``) and reaches the ingestion stream when
    the service is back; it is then stored once."""
    port = free_port()
    data = tmp_path / "data"
    serve = new_serve(serves, tmp_path, ["--data-dir", str(data), "--listen", f"127.0.0.1:{port}"])
    url = f"nats://127.0.0.1:{port}"
    await (await serve.connect(url)).close()
    key = admin_key(data)
    org = tokens.parse(f"Bearer {key}")
    assert org is not None
    agent = await Client.connect(url, token=key, reconnect_time_wait=0.2)
    try:
        assert serve.stop() == 0

        async def cut_off() -> bool:
            return not agent.nc.is_connected

        await eventually(cut_off, 10, 0.05, "the client saw the server go")
        body = json.dumps({"content": "published while the service was down", "user_id": "ann"})
        await agent.nc.publish(
            f"agentmem.in.{org.org_id}.memory.add",
            body.encode(),
            headers={"Authorization": f"Bearer {key}", "Nats-Msg-Id": "while-down-1"},
        )
        serve.start()
        await (await serve.connect(url)).close()

        async def stored() -> list[str]:
            page = await agent.list_memories(user_id="ann")
            return [m.content for m in page.items]

        assert await eventually(stored, 30, 0.2, "the published memory stored") == [
            "published while the service was down"
        ]
        await agent.nc.publish(  # the same message id again: stored once
            f"agentmem.in.{org.org_id}.memory.add",
            body.encode(),
            headers={"Authorization": f"Bearer {key}", "Nats-Msg-Id": "while-down-1"},
        )
        await flushed(agent.nc)
        await asyncio.sleep(0.5)
        assert len(await stored()) == 1
    finally:
        await agent.close()


async def test_import_reaches_a_served_deployment_with_its_key_alone(
    serves: list[Serve], tmp_path: Path
) -> None:
    """``agentmem import FILE --token-file KEY --nats URL`` from another machine (a data dir
    without the target's NATS secrets): the key is the connection's credential, as for any
    client. It connected as the service principal, with secrets it did not have, and the
    target's nats-server refused it (Authorization Violation)."""
    port = free_port()
    target = tmp_path / "target"
    args = ["--data-dir", str(target), "--listen", f"127.0.0.1:{port}"]
    nc = await new_serve(serves, tmp_path, args).connect(f"nats://127.0.0.1:{port}")
    await nc.close()
    org_id = "01a25000-0000-7000-8000-00000000000a"
    lines = [
        {"format": "agentmem.export", "version": 1, "org_id": org_id,
         "exported_at": "2026-12-07T00:00:00+00:00", "log_last_seq": 9},
        {"seq": 9, "subject": f"agentmem.evt.{org_id}.org.{org_id}", "time_ms": 0,
         "commit_type": "org.create", "command_id": "c1", "principal": "p", "index": 0,
         "event": {"type": "org.created", "org_id": org_id, "name": "Moved in"}},
        {"end": {"events": 1, "forgotten": 0, "unreadable": 0}},
    ]  # fmt: skip
    export = tmp_path / "org.ndjson"
    export.write_text("".join(json.dumps(line) + "\n" for line in lines))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ran = await run_cli(
        "import", str(export), "--token-file", str(target / "admin.key"),
        "--nats", f"nats://127.0.0.1:{port}", "--data-dir", str(elsewhere),
        env=clean_env(),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "applied 1, already there 0, failed 0" in ran.stdout
    async with await Client.connect(f"nats://127.0.0.1:{port}", token=admin_key(target)) as client:
        assert (await client.get_org(org_id)).name == "Moved in"


async def test_serve_on_a_data_dir_it_cannot_make_says_so_in_one_line(tmp_path: Path) -> None:
    """A data dir that cannot be written (here: under a file; read-only or full alike) ends
    serve with one line and status 1, not a traceback (an operator's check found both)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    ran = await run_cli(
        "serve", "--data-dir", str(blocker / "data"), "--listen", f"127.0.0.1:{free_port()}",
        env=clean_env(),
    )  # fmt: skip
    assert ran.returncode == 1
    lines = [line for line in (ran.stdout + ran.stderr).splitlines() if line.strip()]
    assert lines == [f"agentmem: could not start: Not a directory ({blocker / 'data'})"], lines
