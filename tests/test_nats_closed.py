"""Closed by default (issue 17): each attack a plain NATS client could make on a fresh
deployment that AgentMem started, played against it.

Before NATS-level authentication every one of these succeeded on the embedded default: a
connection without credentials read the whole stream (password hashes included), appended a
forged ``user.api_key_created`` and used that key, joined the ``agentmem`` queue group and
answered other clients' requests, and read other clients' replies (session tokens) on
``_INBOX.>``. Now a connection needs an AgentMem credential (or is anonymous, and may only
log in and ask health and schema), may only send requests and receive on its own inbox
prefix, and a revoked key's connections are closed.

The attackers here hold the *least* they could: no credential at all, or a member's own
valid key. Each attack runs on the embedded default (``Service`` with no ``--nats``, started
in-process on a free port) and on a three-node cluster configured as compose.yaml's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agentmem import Client, ids, natsauth, subjects
from agentmem.auth import tokens
from agentmem.commands import AppendMessage
from agentmem.config import Settings
from agentmem.consumers.passwords import SOURCE_LIMIT
from agentmem.domain import users
from agentmem.errors import UnauthenticatedError
from agentmem.eventlog import CommitMeta
from agentmem.events import ApiKeyCreated, encode_commit
from agentmem.natsflush import flushed
from agentmem.service import Service
from tests.conftest import admin_key
from tests.realparts import eventually
from tests.support import TEST_PASSWORD_COST, free_port
from tests.test_cluster import NatsCluster

PASSWORD = "correct horse battery"
STREAM_INFO = f"$JS.API.STREAM.INFO.{subjects.STREAM_NAME}"
DIRECT_GET = f"$JS.API.DIRECT.GET.{subjects.STREAM_NAME}"


async def quiet(exc: Exception) -> None:
    pass


@dataclass
class Deployment:
    service: Service
    url: str  # what anyone on the machine can reach: no credentials in it
    data_dir: Path
    service_url: str  # the service's own principal (only the service and its operator)

    @property
    def admin_key(self) -> str:
        return admin_key(self.data_dir)

    async def service_connection(self) -> NATS:
        return await nats.connect(self.service_url, error_cb=quiet)

    async def stream_messages(self) -> int:
        nc = await self.service_connection()
        try:
            reply = await nc.request(STREAM_INFO, b"", timeout=2)
            return int(json.loads(reply.data)["state"]["messages"])
        finally:
            await nc.close()


def base_settings(tmp_path: Path) -> Settings:
    settings = Settings()
    settings.data_dir = tmp_path / "data"
    settings.store = str(tmp_path / "data" / "agentmem.db")
    settings.password_cost = TEST_PASSWORD_COST
    settings.sync_always = False
    return settings


@contextlib.asynccontextmanager
async def embedded(tmp_path: Path) -> AsyncIterator[Deployment]:
    """The default: ``agentmem serve`` with its embedded nats-server."""
    settings = base_settings(tmp_path)
    settings.nats_url = None
    settings.listen = f"127.0.0.1:{free_port()}"
    service = Service(settings)
    await service.start()
    try:
        assert service.embedded is not None
        url = f"nats://{settings.listen}"
        yield Deployment(service, url, settings.data_dir, service.embedded.url)
    finally:
        await service.stop()


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Deployment]:
    """Three nats-servers configured as compose.yaml's are (``agentmem nats-config``'s
    block included in every node), the service on all three with the stream's three
    replicas, and the attacker on another node than the first."""
    settings = base_settings(tmp_path)
    found = natsauth.ensure_secrets(settings.data_dir / natsauth.SECRETS_FILE)
    nodes = NatsCluster(tmp_path / "cluster")
    for node in nodes.nodes:
        conf = node.store_dir / "nats.conf"
        conf.write_text(conf.read_text() + natsauth.server_config(found))
    try:
        for node in nodes.nodes:
            nodes.start(node)
        settings.nats_url = nodes.urls
        settings.replicas = 3
        service = Service(settings)
        await service.start()
        try:
            url = nodes.nodes[1].url
            service_url = natsauth.as_user(url, natsauth.SERVICE_USER, found.service_password)
            yield Deployment(service, url, settings.data_dir, service_url)
        finally:
            await service.stop()
    finally:
        nodes.stop_all()


@pytest.fixture(params=["embedded", pytest.param("cluster", marks=pytest.mark.cluster)])
async def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Deployment]:
    start = embedded if request.param == "embedded" else cluster
    async with start(tmp_path) as running:
        yield running


@dataclass
class Member:
    org_id: str
    user_id: str
    key: str
    email: str


async def member(deployment: Deployment, root: Client, email: str = "ann@acme.example") -> Member:
    org_id = str((await root.create_org("Acme")).fields["org_id"])
    user = await root.register_user(org_id, "Ann", email, PASSWORD, roles=["member"])
    user_id = str(user.fields["user_id"])
    key = str((await root.create_api_key("ann laptop", user_id=user_id)).fields["token"])
    return Member(org_id, user_id, key, email)


@pytest.fixture
async def root(deployment: Deployment) -> AsyncIterator[Client]:
    client = await Client.connect(deployment.url, token=deployment.admin_key)
    yield client
    await client.close()


async def plain_connect(url: str, **options: str) -> None:
    """Connect once, and close again: raises what the server refused."""
    nc = await nats.connect(
        url,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        connect_timeout=2,
        error_cb=quiet,
        **options,  # type: ignore[arg-type]
    )
    await nc.close()


async def answered(nc: NATS, subject: str, body: bytes = b"{}") -> bytes | None:
    """The reply a request got, or None when nothing answered it (refused by the server's
    permissions, or no such service in this connection's account)."""
    try:
        return (await nc.request(subject, body, timeout=1)).data
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return None


# Connecting -------------------------------------------------------------------------------
async def test_a_connection_without_credentials_is_refused(deployment: Deployment) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization"):
        await plain_connect(deployment.url)


async def test_an_anonymous_connection_may_only_log_in_and_ask_health(
    deployment: Deployment, root: Client
) -> None:
    ann = await member(deployment, root)
    anonymous = await Client.connect(deployment.url)
    try:
        assert (await anonymous.health())["live"]
        session = await anonymous.login(ann.email, PASSWORD)
        assert str(session.fields["token"]).startswith("ams_")
        # Any other subject is refused by the server itself: no request reaches the service.
        assert await answered(anonymous.nc, "agentmem.q.org.list") is None
        assert await answered(anonymous.nc, "agentmem.cmd.org.create", b'{"name":"x"}') is None
    finally:
        await anonymous.close()


# Reading the log ----------------------------------------------------------------------------
async def test_a_client_cannot_read_the_stream(deployment: Deployment, root: Client) -> None:
    ann = await member(deployment, root)
    client = await Client.connect(deployment.url, token=ann.key)
    seen: list[Msg] = []
    try:
        nc = client.nc
        assert await answered(nc, STREAM_INFO, b"") is None
        assert await answered(nc, DIRECT_GET, b'{"seq": 1}') is None
        assert await answered(nc, f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_NAME}") is None

        async def keep(msg: Msg) -> None:
            seen.append(msg)

        await nc.subscribe(f"{subjects.EVENT_PREFIX}.>", cb=keep)
        await nc.subscribe(">", cb=keep)
        await root.register_user(ann.org_id, "Bob", "bob@acme.example", PASSWORD)
        await asyncio.sleep(0.3)
        assert not [m for m in seen if m.subject.startswith(subjects.EVENT_PREFIX)]
        assert not [m for m in seen if b"scrypt" in m.data]
    finally:
        await client.close()


# Writing the log ----------------------------------------------------------------------------
async def test_a_client_cannot_append_a_forged_key(deployment: Deployment, root: Client) -> None:
    ann = await member(deployment, root)
    admin = tokens.parse(deployment.admin_key)
    assert admin is not None
    forged = tokens.new_token("key", admin.org_id, admin.user_id)
    event = ApiKeyCreated(
        user_id=admin.user_id,
        key_id=forged.credential_id,
        name="forged",
        prefix=forged.display_prefix,
        digest=tokens.digest(forged.secret),
    )
    command_id = ids.new_id()
    headers = CommitMeta(command_id=command_id, commit_type="apikey.create").headers()
    subject = users.subject(admin.org_id, admin.user_id)
    before = await deployment.stream_messages()
    client = await Client.connect(deployment.url, token=ann.key)
    try:
        await client.nc.publish(subject, encode_commit([event]), headers=headers)
        await answered(client.nc, subject, encode_commit([event]))
        await flushed(client.nc)
    finally:
        await client.close()
    await asyncio.sleep(0.2)
    assert await deployment.stream_messages() == before, "a client appended to the log"
    with pytest.raises(UnauthenticatedError):
        await root.with_token(str(forged)).list_orgs()


# Answering other clients' requests ------------------------------------------------------------
async def test_a_client_cannot_join_the_service_queue_group(
    deployment: Deployment, root: Client
) -> None:
    ann = await member(deployment, root)
    hijacker = await Client.connect(deployment.url, token=ann.key)
    stolen: list[Msg] = []

    async def answer_forged(msg: Msg) -> None:
        stolen.append(msg)
        await msg.respond(b'{"ok": true, "data": {"org_id": "x", "name": "forged"}, "seq": 1}')

    try:
        for tree in (subjects.QUERY_PREFIX, subjects.COMMAND_PREFIX):
            await hijacker.nc.subscribe(f"{tree}.>", queue="agentmem", cb=answer_forged)
        await flushed(hijacker.nc)
        names = [(await root.get_org(ann.org_id)).name for _ in range(40)]
    finally:
        await hijacker.close()
    assert not stolen, f"{len(stolen)} of 40 requests went to another client"
    assert names == ["Acme"] * 40


# Reading other clients' replies ---------------------------------------------------------------
async def test_a_client_cannot_read_other_clients_replies(
    deployment: Deployment, root: Client
) -> None:
    ann = await member(deployment, root)
    bob = await member(deployment, root, "bob@acme.example")
    sniffer = await Client.connect(deployment.url, token=ann.key)
    heard: list[Msg] = []

    async def keep(msg: Msg) -> None:
        heard.append(msg)

    victim = await Client.connect(deployment.url)
    try:
        for wildcard in ("_INBOX.>", ">", "*.>"):
            await sniffer.nc.subscribe(wildcard, cb=keep)
        await flushed(sniffer.nc)
        session = str((await victim.login(bob.email, PASSWORD)).fields["token"])
        await root.list_orgs()
        await asyncio.sleep(0.3)
    finally:
        await victim.close()
        await sniffer.close()
    assert not [m for m in heard if session.encode() in m.data], "a session token was read"
    assert not heard, [m.subject for m in heard]


# Revoking -----------------------------------------------------------------------------------
async def test_revoking_a_key_closes_and_refuses_its_connections(
    deployment: Deployment, root: Client
) -> None:
    ann = await member(deployment, root)
    key_id = ann.key.split("_")[3]
    connected = await Client.connect(deployment.url, token=ann.key)
    try:
        assert (await connected.get_org(ann.org_id, after_seq=root.last_seq)).name == "Acme"
        await root.revoke_api_key(key_id, user_id=ann.user_id)
        acknowledged = time.perf_counter()

        async def closed() -> bool:
            return not connected.nc.is_connected

        # Closed right after the revocation's reply (docs/security.md says how fast).
        await eventually(closed, 1.0, 0.01, "the revoked key's connection closed")
        print(f"closed {1000 * (time.perf_counter() - acknowledged):.0f} ms after the reply")
    finally:
        await connected.close()
    with pytest.raises(nats.errors.Error, match="Authorization"):
        await plain_connect(deployment.url, token=ann.key)


async def test_logging_out_closes_the_session_s_connections(
    deployment: Deployment, root: Client
) -> None:
    ann = await member(deployment, root)
    session = str((await root.login(ann.email, PASSWORD)).fields["token"])
    connected = await Client.connect(deployment.url, token=session)
    try:
        await connected.logout()

        async def closed() -> bool:
            return not connected.nc.is_connected

        await eventually(closed, 2.0, 0.05, "the ended session's connection closed")
    finally:
        await connected.close()


async def test_a_session_s_connection_ends_with_the_session(
    deployment: Deployment, root: Client
) -> None:
    ann = await member(deployment, root)
    session = str((await root.login(ann.email, PASSWORD, ttl_seconds=4)).fields["token"])
    connected = await Client.connect(deployment.url, token=session)
    try:
        assert (await connected.get_org(ann.org_id, after_seq=root.last_seq)).name == "Acme"

        async def closed() -> bool:
            return not connected.nc.is_connected

        # The server closes it when the user JWT the callout gave it expires; its reconnect
        # is refused (the session expired).
        await eventually(closed, 10.0, 0.05, "the expired session's connection closed")
    finally:
        await connected.close()


# Guessing passwords ---------------------------------------------------------------------------
async def test_300_concurrent_guesses_cannot_pass_the_login_throttle(
    deployment: Deployment, root: Client
) -> None:
    ann = await member(deployment, root)
    guesses = [f"guess number {n}" for n in range(300)]
    guesses[99] = PASSWORD
    attacker = await Client.connect(deployment.url, timeout=60)
    try:
        body = [{"email": ann.email, "password": g} for g in guesses]
        replies = await asyncio.gather(
            *(
                attacker.nc.request("agentmem.cmd.auth.login", msgspec.json.encode(b), timeout=60)
                for b in body
            )
        )
    finally:
        await attacker.close()
    decoded = [json.loads(r.data) for r in replies]
    assert not decoded[99]["ok"], "the right password, 100th of 300 guesses sent at once, got in"
    checked = [d for d in decoded if "wrong email" in d.get("error", {}).get("message", "")]
    assert len(checked) <= 5, f"{len(checked)} passwords were checked"


async def test_a_spray_of_other_emails_meets_the_limit_per_address(
    deployment: Deployment, root: Client
) -> None:
    """One guess each at many emails (which the per-email limit never sees), and a flood of
    other emails while one is locked: the lock holds, and the address runs out of tries."""
    ann = await member(deployment, root)
    attacker = await Client.connect(deployment.url, timeout=30)

    async def login(email: str, password: str) -> dict[str, Any]:
        body = msgspec.json.encode({"email": email, "password": password})
        reply = await attacker.nc.request("agentmem.cmd.auth.login", body, timeout=30)
        decoded: dict[str, Any] = json.loads(reply.data)
        return decoded

    try:
        for n in range(5):
            assert "wrong email" in (await login(ann.email, f"guess {n}"))["error"]["message"]
        spray = [await login(f"other{n}@example.com", "a guess!") for n in range(50)]
        locked = await login(ann.email, PASSWORD)
        spray += [await login(f"more{n}@example.com", "a guess!") for n in range(SOURCE_LIMIT)]
        after = await login("yet.another@example.com", "a guess!")
    finally:
        await attacker.close()
    assert "for this email" in locked["error"]["message"], locked
    assert sum("wrong email" in r["error"]["message"] for r in spray) == SOURCE_LIMIT - 5
    assert all(not r["ok"] for r in spray)
    assert "from your address" in after["error"]["message"], after
    assert after["error"]["details"]["retry_after_s"] > 0


# Publishing commands to be ingested (issue 18) -----------------------------------------------
async def test_a_client_publishes_to_the_ingestion_tree_and_gets_its_acknowledgement(
    deployment: Deployment, root: Client
) -> None:
    """A credential's connection may publish on ``agentmem.in.>`` (the ingestion stream's
    PubAck comes back to its own inbox); the command runs as that credential's, checked when
    it is executed; an anonymous connection may not publish there at all."""
    ann = await member(deployment, root)
    agent = (await root.create_agent("Ingest", org_id=ann.org_id)).fields["agent_id"]
    body = json.dumps(
        {"session_id": "s", "agent_id": agent, "message": {"role": "user", "content": "hi"}}
    ).encode()
    subject = f"agentmem.in.{ann.org_id}.message.append"
    client = await Client.connect(deployment.url, token=ann.key)
    anonymous = await Client.connect(deployment.url)
    try:
        headers = {tokens.HEADER: f"Bearer {ann.key}", "Nats-Msg-Id": "closed-1"}
        ack = json.loads((await client.nc.request(subject, body, headers=headers, timeout=5)).data)
        assert ack["stream"] == "AGENTMEM_INGEST"
        assert ack["seq"] >= 1

        async def stored() -> dict[str, Any] | None:
            found = await client.ingest_status("closed-1")
            return found if found["status"] == "stored" else None

        outcome = await eventually(stored, 20, 0.05, "the published append stored")
        assert outcome["seq"] > 0
        assert await answered(anonymous.nc, subject, body) is None
        # Into another organization's tree: the server refuses it (no acknowledgement), so
        # nobody can make an outcome appear under another tenant's command ids; the service
        # administrator may publish into any organization.
        other = str((await root.create_org("Globex")).fields["org_id"])
        elsewhere = f"agentmem.in.{other}.message.append"
        assert await answered(client.nc, elsewhere, body) is None
        admin_ack = await root.nc.request(subject, body, timeout=5)
        assert json.loads(admin_ack.data)["stream"] == "AGENTMEM_INGEST"
    finally:
        await client.close()
        await anonymous.close()


async def test_the_outcome_reaches_its_publisher_and_nobody_else(
    deployment: Deployment, root: Client
) -> None:
    """``AgentMem-Outcome-To`` on a closed deployment: the service's account exports the
    outcome tree as a stream, so the outcome reaches Ann on ``agentmem.out.<org>.<ann>.…``.
    Bob, a member of the same organization with a valid key, may subscribe to his own tree
    only: his subscriptions to Ann's tree and to the whole tree get nothing, and Ann cannot
    send her outcomes into his tree (refused, and said so in the outcome)."""
    ann = await member(deployment, root)
    bob_user = await root.register_user(
        ann.org_id, "Bob", "bob@acme.example", PASSWORD, roles=["member"]
    )
    bob_id = str(bob_user.fields["user_id"])
    bob_key = str((await root.create_api_key("bob laptop", user_id=bob_id)).fields["token"])
    agent = (await root.create_agent("Outcomes", org_id=ann.org_id)).fields["agent_id"]
    ann_tree = subjects.outcome_tree(ann.org_id, ann.user_id)
    bob_tree = subjects.outcome_tree(ann.org_id, bob_id)
    client = await Client.connect(deployment.url, token=ann.key)
    bob = await Client.connect(deployment.url, token=bob_key)
    heard_by_bob: list[Msg] = []

    async def keep(msg: Msg) -> None:
        heard_by_bob.append(msg)

    try:
        for wildcard in (f"{ann_tree}.>", f"{subjects.OUTCOME_TO_PREFIX}.>", ">"):
            await bob.nc.subscribe(wildcard, cb=keep)
        bobs_own = await bob.nc.subscribe(f"{bob_tree}.>")
        mine = await client.nc.subscribe(f"{ann_tree}.>")
        await flushed(client.nc)
        await flushed(bob.nc)

        def append(n: int) -> AppendMessage:
            message = {"role": "user", "content": f"m{n}"}
            body = {"session_id": "s", "agent_id": agent, "message": message}
            return msgspec.convert(body, AppendMessage)

        await client.publish(
            append(1),
            message_id="out-1",
            outcome_to=client.outcome_subject("out-1"),
        )
        outcome = json.loads((await mine.next_msg(timeout=20)).data)
        assert outcome["command_id"] == "out-1"
        assert outcome["status"] == "stored"

        await client.publish(
            append(2),
            message_id="out-2",
            outcome_to=f"{bob_tree}.stolen",
        )

        async def settled() -> dict[str, Any] | None:
            found = await client.ingest_status("out-2")
            return found if found["status"] != "pending" else None

        second = await eventually(settled, 20, 0.05, "the second outcome")
        assert second["status"] == "stored"
        assert ann_tree in second["outcome_to_refused"]
        with pytest.raises(nats.errors.TimeoutError):
            await bobs_own.next_msg(timeout=0.3)
        await asyncio.sleep(0.2)
    finally:
        await client.close()
        await bob.close()
    assert not heard_by_bob, [m.subject for m in heard_by_bob]
