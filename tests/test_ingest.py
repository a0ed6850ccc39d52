"""Published commands (issue 18) against the real service and a real nats-server, on each
store: stored once and in order, a duplicate publish stored once, refusals and outcomes in
``ingest.status``, the outcome published where the publisher asked, bounds on the stream,
and parking after transient failures (with the operator's retry and drop).

The crash and restart tests (a stopped service, SIGKILL) are in tests/test_ingest_crash.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any, cast

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, ingestion
from agentmem.auth import tokens
from agentmem.consumers.ingest import IngestWorker
from agentmem.domain.access import Principal
from agentmem.domain.ingest import IngestStatus
from agentmem.errors import UnavailableError
from agentmem.eventlog import H_COMMAND_ID, H_COMMIT_TYPE
from agentmem.natsflush import flushed
from agentmem.service import Service
from tests.conftest import settings_for
from tests.realparts import bearer, clean_env, eventually, read_log, run_cli, status
from tests.support import NatsServer

STORES = ("sqlite", "postgres")


# Past the ingestion stream's duplicate window (100 ms), whose ids nats-server drops on a
# timer of that period: up to twice it.
PAST_THE_WINDOW_S = 3 * ingestion.DUPLICATE_WINDOW_NS / 1e9


def org_of(token: str) -> str:
    parsed = tokens.parse(f"Bearer {token}")
    assert parsed is not None
    return parsed.org_id


def append_body(session: str, agent: str, n: int, **extra: Any) -> bytes:
    body = {
        "session_id": session,
        "agent_id": agent,
        "message": {"role": "user", "content": f"message {n}"},
        **extra,
    }
    return json.dumps(body).encode()


async def ingest_status(nc: NATS, token: str, command_id: str, **extra: Any) -> dict[str, Any]:
    reply = await nc.request(
        IngestStatus.op.subject,
        json.dumps({"command_id": command_id, **extra}).encode(),
        headers=bearer(token),
        timeout=5,
    )
    answer: dict[str, Any] = json.loads(reply.data)
    assert answer["ok"], answer
    data: dict[str, Any] = answer["data"]
    return data


async def settled(nc: NATS, token: str, command_id: str, timeout: float = 20) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        found = await ingest_status(nc, token, command_id)
        return found if found["status"] != "pending" else None

    return await eventually(done, timeout, 0.05, f"an outcome for {command_id}")


async def settled_as(
    nc: NATS, token: str, command_id: str, status: str, timeout: float = 20
) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        found = await ingest_status(nc, token, command_id)
        return found if found["status"] == status else None

    return await eventually(done, timeout, 0.05, f"{command_id} {status}")


async def commits_by_command(nc: NATS) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for message in await read_log(nc):
        found.setdefault(message.headers.get(H_COMMAND_ID, ""), []).append(message.seq)
    return found


async def test_published_appends_stored_once_in_order(
    service: Service, nc: NATS, client: Client, admin_token: str
) -> None:
    org = org_of(admin_token)
    agent = (await client.create_agent("Publisher")).fields["agent_id"]
    js = nc.jetstream()
    subject = f"agentmem.in.{org}.message.append"
    acks = await asyncio.gather(
        *(
            js.publish(
                subject,
                append_body(f"s{n % 3}", agent, n),
                headers={**bearer(admin_token), "Nats-Msg-Id": f"m-{n:03d}"},
            )
            for n in range(60)
        )
    )
    assert [a.seq for a in acks] == sorted(a.seq for a in acks)
    # The same message id again, past the stream's short window: stored in the stream
    # again, and executed once (the commits below), answered with the first outcome.
    first = await settled(nc, admin_token, "m-000")
    await asyncio.sleep(PAST_THE_WINDOW_S)
    again = await js.publish(
        subject,
        append_body("s0", agent, 0),
        headers={**bearer(admin_token), "Nats-Msg-Id": "m-000"},
    )
    assert not again.duplicate
    await eventually(lambda: _backlog_empty(nc), 20, 0.05, "the repeat executed")
    assert (await settled(nc, admin_token, "m-000"))["seq"] == first["seq"]
    # The last of each conversation: conversations run side by side, so the last published
    # is not the last stored.
    lasts = [await settled(nc, admin_token, f"m-0{n}") for n in (57, 58, 59)]
    assert all(found["status"] == "stored" for found in lasts)
    last = max(lasts, key=lambda found: int(found["seq"]))
    assert last["seq"] > 0
    for session in ("s0", "s1", "s2"):
        page = await client.list_messages(session, limit=100, after_seq=last["seq"])
        contents = [m.content for m in page.items]
        expected = [f"message {n}" for n in range(60) if n % 3 == int(session[1])]
        assert contents == expected
    commits = await commits_by_command(nc)
    published = {f"m-{n:03d}" for n in range(60)}
    stored = [seqs for key, seqs in commits.items() if key.rsplit(".", 1)[-1] in published]
    assert len(stored) == 60
    assert all(len(seqs) == 1 for seqs in stored)


async def test_another_tenants_publish_with_the_same_message_id_keeps_nothing_from_running(
    service: Service, nc: NATS, client: Client, admin_token: str
) -> None:
    """A Nats-Msg-Id is its publisher's own: another organization's member publishing it
    first (a guessable id) must not make this publish a dropped duplicate."""
    org = org_of(admin_token)
    agent = (await client.create_agent("Victim")).fields["agent_id"]
    other = str((await client.create_org("Squatter")).fields["org_id"])
    await client.register_user(other, "Sq", "sq@example.com", "password123", roles=["member"])
    squatter = str((await Client(nc, "").login("sq@example.com", "password123")).fields["token"])
    js = nc.jetstream()
    taken = await js.publish(
        f"agentmem.in.{other}.working.put",
        json.dumps({"session_id": "s", "key": "k", "content": "mine"}).encode(),
        headers={**bearer(squatter), "Nats-Msg-Id": "chat-42-turn-7"},
    )
    assert not taken.duplicate
    await asyncio.sleep(PAST_THE_WINDOW_S)
    ack = await js.publish(
        f"agentmem.in.{org}.message.append",
        append_body("victim", agent, 1),
        headers={**bearer(admin_token), "Nats-Msg-Id": "chat-42-turn-7"},
    )
    assert not ack.duplicate
    stored = await settled(nc, admin_token, "chat-42-turn-7")
    assert stored["status"] == "stored"
    page = await client.list_messages("victim", after_seq=stored["seq"])
    assert [m.content for m in page.items] == ["message 1"]


async def test_a_body_nested_thousands_deep_is_refused_and_holds_nothing_up(
    service: Service, nc: NATS, client: Client, admin_token: str
) -> None:
    """Reading its ordering keys raised RecursionError outside any handler: the partition
    stopped taking that pull, silently, and the commands after it stayed pending."""
    org = org_of(admin_token)
    agent = (await client.create_agent("Deep")).fields["agent_id"]
    js = nc.jetstream()
    deep = b'{"user_id":"u","content":"x","metadata":{"m":' + b"[" * 5000 + b"]" * 5000 + b"}}"
    await js.publish(
        f"agentmem.in.{org}.memory.add",
        deep,
        headers={**bearer(admin_token), "Nats-Msg-Id": "too-deep"},
    )
    for n in range(3):
        await js.publish(
            f"agentmem.in.{org}.message.append",
            append_body("after-deep", agent, n),
            headers={**bearer(admin_token), "Nats-Msg-Id": f"after-deep-{n}"},
        )
    refused = await settled(nc, admin_token, "too-deep")
    assert (refused["status"], refused["error"]["details"]["reason"]) == ("refused", "too_deep")
    for n in range(3):
        assert (await settled(nc, admin_token, f"after-deep-{n}"))["status"] == "stored"


async def test_a_command_published_twice_under_new_message_ids_is_stored_once(
    service: Service, nc: NATS, client: Client, admin_token: str
) -> None:
    """Past the stream's duplicate window (or with another Nats-Msg-Id) the command id does it."""
    org = org_of(admin_token)
    agent = (await client.create_agent("Twice")).fields["agent_id"]
    js = nc.jetstream()
    body = append_body("twice", agent, 1, command_id="same-command")
    for n in range(3):
        await js.publish(
            f"agentmem.in.{org}.message.append",
            body,
            headers={**bearer(admin_token), "Nats-Msg-Id": f"other-{n}"},
        )
    stored = await settled(nc, admin_token, "same-command")
    assert stored["status"] == "stored"
    # Until the three are executed and acked, they are in the backlog.
    await eventually(lambda: _backlog_empty(nc), 20, 0.05, "an empty backlog")
    commits = await commits_by_command(nc)
    assert [seqs for key, seqs in commits.items() if key.endswith(".same-command")] == [
        [stored["seq"]]
    ]


async def _backlog_empty(nc: NATS) -> bool:
    report = await ingestion.report(nc)
    return report is not None and report["backlog"] == 0


async def test_refused_publishes_are_recorded_with_their_error(
    service: Service, nc: NATS, client: Client, admin_token: str
) -> None:
    org = org_of(admin_token)
    agent = (await client.create_agent("Refused")).fields["agent_id"]
    js = nc.jetstream()
    subject = f"agentmem.in.{org}.message.append"
    # No credential: refused, recorded under the organization's anonymous outcomes.
    await js.publish(subject, append_body("r", agent, 1), headers={"Nats-Msg-Id": "no-credential"})
    # A wrong type: refused as invalid.
    await js.publish(
        subject,
        json.dumps({"session_id": "r", "agent_id": agent, "message": 5}).encode(),
        headers={**bearer(admin_token), "Nats-Msg-Id": "bad-body"},
    )
    # An agent that does not exist: not_found.
    await js.publish(
        subject,
        append_body("r", "no-such-agent", 1),
        headers={**bearer(admin_token), "Nats-Msg-Id": "no-agent"},
    )
    # A command that cannot be published.
    await js.publish(
        f"agentmem.in.{org}.org.delete",
        json.dumps({"org_id": org}).encode(),
        headers={**bearer(admin_token), "Nats-Msg-Id": "not-publishable"},
    )
    # Another organization in the body than in the subject.
    await js.publish(
        subject,
        append_body("r", agent, 1, org_id="another-org"),
        headers={**bearer(admin_token), "Nats-Msg-Id": "org-mismatch"},
    )
    expected = {
        "no-credential": "unauthenticated",
        "bad-body": "invalid",
        "no-agent": "not_found",
        "not-publishable": "invalid",
        "org-mismatch": "invalid",
    }
    for command_id, code in expected.items():
        outcome = await settled(nc, admin_token, command_id)
        assert outcome["status"] == "refused", outcome
        assert outcome["error"]["code"] == code, outcome
        assert outcome["attempts"] <= 1
        # Refused before a credential was looked at (none, or a subject nothing serves):
        # anybody's, as far as the service knows.
        anybodys = command_id in ("no-credential", "not-publishable")
        assert outcome["unattributed"] is anybodys, outcome
    assert (await ingest_status(nc, admin_token, "never-published"))["status"] == "pending"
    report = await ingestion.report(nc)
    assert report is not None
    assert report["parked"] == 0


async def test_a_command_id_that_is_no_subject_token_does_not_stop_its_partition(
    service: Service, nc: NATS, client: Client, admin_token: str
) -> None:
    """On a subject that cannot be published, the command id was not checked and became
    the outcome's subject: a space in it failed the outcome's write, so the partition
    restarted on that command forever and every later command of its organizations waited
    behind it. Now it is refused under an id the service makes; the next one is stored."""
    org = org_of(admin_token)
    agent = (await client.create_agent("Poison")).fields["agent_id"]
    js = nc.jetstream()
    poisons = [
        (f"agentmem.in.{org}.nothing.here", b"{}", {"Nats-Msg-Id": "x y"}),
        (f"agentmem.in.{org}.org.delete", b"{}", {**bearer(admin_token), "Nats-Msg-Id": "a b"}),
        (f"agentmem.in.{org}.nothing.here", json.dumps({"command_id": "c d"}).encode(), {}),
        # A trailing newline passed a check that ended in `$`, which matches before one.
        (
            f"agentmem.in.{org}.message.append",
            append_body("p", agent, 0, command_id="nl1\n"),
            bearer(admin_token),
        ),
    ]
    for subject, body, headers in poisons:
        await js.publish(subject, body, headers=headers)
    await js.publish(
        f"agentmem.in.{org}.message.append",
        append_body("p", agent, 1),
        headers={**bearer(admin_token), "Nats-Msg-Id": "after-poison"},
    )
    assert (await settled(nc, admin_token, "after-poison"))["status"] == "stored"
    await eventually(lambda: _backlog_empty(nc), 20, 0.05, "an empty backlog")


async def test_a_publish_without_a_credential_cannot_take_a_users_outcome(
    service: Service, nc: NATS, client: Client, admin_token: str
) -> None:
    """Outcomes of publishes refused before their caller was known are kept apart from
    every user's, even one whose id is ``anonymous``: a later publish of the same command id
    without a credential neither replaces nor hides the user's own outcome."""
    org = org_of(admin_token)
    agent = (await client.create_agent("Anon")).fields["agent_id"]
    await client.register_user(
        org, "Anon", "anon@example.com", "password123", roles=["member"], user_id="anonymous"
    )
    token = str((await client.create_api_key("anon", user_id="anonymous")).fields["token"])
    subject = f"agentmem.in.{org}.message.append"
    js = nc.jetstream()
    await js.publish(
        subject, append_body("a", agent, 1), headers={**bearer(token), "Nats-Msg-Id": "mine-1"}
    )
    stored = await settled(nc, token, "mine-1")
    assert (stored["status"], stored["unattributed"]) == ("stored", False), stored
    await asyncio.sleep(ingestion.DUPLICATE_WINDOW_NS / 1e9 + 0.05)  # past the window
    await js.publish(subject, append_body("a", agent, 2), headers={"Nats-Msg-Id": "mine-1"})
    await js.publish(subject, append_body("a", agent, 3), headers={"Nats-Msg-Id": "mine-2"})
    planted = await settled(nc, token, "mine-2")
    assert (planted["status"], planted["unattributed"]) == ("refused", True), planted
    await eventually(lambda: _backlog_empty(nc), 20, 0.05, "an empty backlog")
    assert await settled(nc, token, "mine-1") == stored


async def test_the_outcome_is_published_where_the_publisher_asks(
    service: Service, nc: NATS, client: Client, admin_token: str
) -> None:
    """``AgentMem-Outcome-To`` under the tree of the user the command ran as receives the
    outcome; any other subject (an inbox, another user's tree, a wildcard) is refused, and
    the refusal is in the outcome instead."""
    parsed = tokens.parse(f"Bearer {admin_token}")
    assert parsed is not None
    org, user = parsed.org_id, parsed.user_id
    agent = (await client.create_agent("Outcome")).fields["agent_id"]
    mine = f"agentmem.out.{org}.{user}.tell-me"
    subscription = await nc.subscribe(mine)
    inbox = nc.new_inbox()
    elsewhere = await nc.subscribe(inbox)
    others = await nc.subscribe(f"agentmem.out.{org}.somebody-else.>")
    await flushed(nc)
    await nc.publish(  # a plain publish: no acknowledgement, the outcome comes later
        f"agentmem.in.{org}.message.append",
        append_body("o", agent, 1),
        headers={**bearer(admin_token), "Nats-Msg-Id": "tell-me", "AgentMem-Outcome-To": mine},
    )
    message = await subscription.next_msg(timeout=20)
    outcome = json.loads(message.data)
    assert outcome["command_id"] == "tell-me"
    assert outcome["status"] == "stored"
    assert outcome["operation"] == "message.append"
    assert outcome["outcome_to_refused"] is None

    refused_targets = {
        "to-inbox": inbox,
        "to-other": f"agentmem.out.{org}.somebody-else.x",
        "to-wildcard": f"agentmem.out.{org}.{user}.>",
        "to-request": "agentmem.cmd.org.delete",
    }
    for n, (cid, where) in enumerate(refused_targets.items(), start=2):
        await nc.publish(
            f"agentmem.in.{org}.message.append",
            append_body("o", agent, n),
            headers={**bearer(admin_token), "Nats-Msg-Id": cid, "AgentMem-Outcome-To": where},
        )
    for cid in refused_targets:
        settled_outcome = await settled(nc, admin_token, cid)
        assert settled_outcome["status"] == "stored", settled_outcome
        assert f"agentmem.out.{org}.{user}." in settled_outcome["outcome_to_refused"]
    with pytest.raises(nats.errors.TimeoutError):
        await elsewhere.next_msg(timeout=0.3)
    with pytest.raises(nats.errors.TimeoutError):
        await others.next_msg(timeout=0.1)


async def test_ingest_status_keeps_users_and_organizations_apart(
    service: Service, nc: NATS, client: Client, admin_token: str
) -> None:
    org = org_of(admin_token)
    agent = (await client.create_agent("Apart")).fields["agent_id"]
    await nc.jetstream().publish(
        f"agentmem.in.{org}.message.append",
        append_body("a", agent, 1),
        headers={**bearer(admin_token), "Nats-Msg-Id": "admins-own"},
    )
    assert (await settled(nc, admin_token, "admins-own"))["status"] == "stored"
    other = await client.create_org("Other")
    other_org = other.fields["org_id"]
    await client.register_user(
        other_org, "Reader", "reader@example.com", "password123", roles=["member"]
    )
    reader = Client(nc, "")
    login = await reader.login("reader@example.com", "password123")
    token = str(login.fields["token"])
    # Another organization's user sees nothing of it, even naming the admin's organization.
    assert (await ingest_status(nc, token, "admins-own"))["status"] == "pending"
    reply = json.loads(
        (
            await nc.request(
                IngestStatus.op.subject,
                json.dumps({"command_id": "admins-own", "org_id": org}).encode(),
                headers=bearer(token),
                timeout=5,
            )
        ).data
    )
    assert reply["error"]["code"] == "not_found"
    # Its own command published into the admin's organization is refused as not found, and
    # its outcome kept where it can ask: under its own organization.
    await nc.jetstream().publish(
        f"agentmem.in.{org}.message.append",
        append_body("a", agent, 2),
        headers={**bearer(token), "Nats-Msg-Id": "into-another"},
    )
    outcome = await settled(nc, token, "into-another")
    assert (outcome["status"], outcome["error"]["code"]) == ("refused", "not_found")
    # Another organization's admin, naming the admin's user in its own organization (an
    # admin may look at its users' commands): that user is not one of them.
    boss_user = await client.register_user(
        other_org, "Boss", "boss@example.com", "password123", roles=["admin"]
    )
    boss = str((await reader.login("boss@example.com", "password123")).fields["token"])
    admin_user = tokens.parse(f"Bearer {admin_token}")
    assert admin_user is not None
    body = {"command_id": "admins-own", "user_id": admin_user.user_id}
    reply = json.loads(
        (
            await nc.request(
                IngestStatus.op.subject, json.dumps(body).encode(), headers=bearer(boss), timeout=5
            )
        ).data
    )
    assert reply["error"]["code"] == "not_found"
    assert reply["error"]["details"] == {"user_id": admin_user.user_id}
    # A member, the target before the role: the admin's user (another organization's) and a
    # user nobody has are not_found; a user of its own organization is forbidden.
    asked = {
        admin_user.user_id: "not_found",
        "nobody": "not_found",
        str(boss_user.fields["user_id"]): "forbidden",
    }
    for user_id, code in asked.items():
        body = {"command_id": "admins-own", "user_id": user_id}
        reply = json.loads(
            (
                await nc.request(
                    IngestStatus.op.subject,
                    json.dumps(body).encode(),
                    headers=bearer(token),
                    timeout=5,
                )
            ).data
        )
        assert reply["error"]["code"] == code, (user_id, reply)


async def test_a_full_stream_refuses_a_jetstream_publish(
    nats_server: NatsServer, tmp_path: Path, store_url: str
) -> None:
    """Backpressure: past the stream's bound a JetStream publisher is told (discard new); the
    commands already in the stream are executed once the service runs."""
    settings = settings_for(nats_server, tmp_path, store_url)
    settings.ingest_max_msgs = 5
    first = Service(settings)
    await first.start()
    await first.stop()
    token = (tmp_path / "admin.key").read_text().strip()
    org = org_of(token)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        subject = f"agentmem.in.{org}.agent.patch_state"
        body = json.dumps({"agent_id": "none", "patch": {"a": 1}}).encode()
        for n in range(5):
            await js.publish(subject, body, headers={**bearer(token), "Nats-Msg-Id": f"full-{n}"})
        with pytest.raises(nats.js.errors.APIError) as refused:
            await js.publish(subject, body, headers={**bearer(token), "Nats-Msg-Id": "full-5"})
        assert "maximum messages exceeded" in str(refused.value).lower()
        second = Service(settings)
        await second.start()
        try:
            for n in range(5):
                outcome = await settled(nc, token, f"full-{n}")
                assert outcome["error"]["code"] == "not_found"
            assert (await ingest_status(nc, token, "full-5"))["status"] == "pending"
        finally:
            await second.stop()
    finally:
        await nc.close()


async def test_transient_failures_are_retried_then_parked_and_an_operator_retries_or_drops(
    service: Service,
    nc: NATS,
    client: Client,
    admin_token: str,
    nats_server: NatsServer,
    tmp_path: Path,
) -> None:
    """The service's own worker is stopped, so that one whose command path answers
    ``unavailable`` (a store or log outage, stood in for here) takes the partition."""
    nats_url = nats_server.url
    for leader in service.ingest_leaders.values():
        leader.stop()
    await asyncio.wait(service.ingest_tasks.values(), timeout=10)
    org = org_of(admin_token)
    agent = (await client.create_agent("Parked")).fields["agent_id"]
    calls: list[str] = []
    failing = True
    assert service.dispatcher is not None
    real = service.dispatcher.execute

    async def outage(
        subject: str, data: bytes, headers: dict[str, str], prepare: Any, kind: str
    ) -> tuple[bytes, Principal | None]:
        calls.append(subject)
        if failing:
            error = {"code": "unavailable", "message": "the store is away", "details": {}}
            return json.dumps({"ok": False, "error": error}).encode(), None
        return await real(subject, data, headers, prepare, kind)

    subject = f"agentmem.in.{org}.message.append"
    await nc.jetstream().publish(
        subject,
        append_body("p", agent, 1),
        headers={**bearer(admin_token), "Nats-Msg-Id": "flaky-1"},
    )
    await nc.jetstream().publish(
        subject,
        append_body("p", agent, 2),
        headers={**bearer(admin_token), "Nats-Msg-Id": "flaky-2"},
    )
    partition = ingestion.PARTITIONS  # whichever: run every partition's worker
    workers = [IngestWorker(nc, p, outage, max_attempts=3) for p in range(partition)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        parked = await eventually(lambda: _parked(nc, 2), 20, 0.05, "two parked commands")
        assert len(calls) == 6  # three attempts each
        assert {p.command_id for p in parked} == {"flaky-1", "flaky-2"}
        assert parked[0].subject == subject
        assert parked[0].error["code"] == "unavailable"
        assert (await ingest_status(nc, admin_token, "flaky-1"))["status"] == "parked"
        report = await ingestion.report(nc)
        assert report is not None
        assert report["parked"] == 2
        assert report["backlog"] == 0
        failing = False
        # The operator's view and hands: agentmem ingest parked | retry | drop.
        env = clean_env(AGENTMEM_NATS=nats_url, AGENTMEM_DATA_DIR=str(tmp_path))
        listed = await run_cli("ingest", "parked", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [r["command_id"] for r in rows] == [p.command_id for p in parked]
        assert rows[0]["error"]["code"] == "unavailable"
        # agentmem status, and the Prometheus gauges it sets, show the parked count.
        report = await status(nc, admin_token)
        assert report["ingest"]["parked"] == 2
        gauges = {m["name"]: m["value"] for m in report["metrics"]["agentmem_ingest_parked"]}
        assert gauges == {"agentmem_ingest_parked": 2}
        shown = await run_cli("status", env=env)
        assert "2 parked" in shown.stdout, shown.stdout + shown.stderr
        retried = await run_cli("ingest", "retry", str(parked[0].seq), env=env)
        assert retried.returncode == 0, retried.stderr
        dropped = await run_cli("ingest", "drop", "--all", env=env)
        assert dropped.returncode == 0, dropped.stderr
        assert "flaky-2 dropped" in dropped.stdout
        await eventually(lambda: _parked_count(nc, 0), 10, 0.05, "none parked")
        retried = await settled_as(nc, admin_token, "flaky-1", "stored")
        assert retried["seq"] > 0
        assert (await ingest_status(nc, admin_token, "flaky-2"))["status"] == "dropped"
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_forget_drops_the_parked_commands_that_hold_its_data(
    service: Service, nc: NATS, client: Client, admin_token: str
) -> None:
    """Parked commands wait in plaintext until an operator acts: a forget of the
    conversation they append to drops them (recorded as dropped, erased from the parked
    stream); another conversation's stay parked."""
    for leader in service.ingest_leaders.values():
        leader.stop()
    await asyncio.wait(service.ingest_tasks.values(), timeout=10)
    org = org_of(admin_token)
    agent = (await client.create_agent("Forgetful")).fields["agent_id"]
    await client.append_message("gone", agent, "user", "the conversation to forget")

    async def outage(
        subject: str, data: bytes, headers: dict[str, str], prepare: Any, kind: str
    ) -> tuple[bytes, Principal | None]:
        error = {"code": "unavailable", "message": "the store is away", "details": {}}
        return json.dumps({"ok": False, "error": error}).encode(), None

    subject = f"agentmem.in.{org}.message.append"
    for n, session in enumerate(("gone", "kept", "gone")):
        await nc.jetstream().publish(
            subject,
            append_body(session, agent, n),
            headers={**bearer(admin_token), "Nats-Msg-Id": f"parked-{n}"},
        )
    workers = [IngestWorker(nc, p, outage, max_attempts=1) for p in range(ingestion.PARTITIONS)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        await eventually(lambda: _parked(nc, 3), 20, 0.05, "three parked commands")
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Another organization's conversation of the same id: its forget drops none of these.
    other_org = (await client.create_org("Other")).fields["org_id"]
    other_agent = (await client.create_agent("Elsewhere", org_id=other_org)).fields["agent_id"]
    await client.append_message("gone", other_agent, "user", "theirs", org_id=other_org)
    await client.forget_conversation("gone", org_id=other_org)
    assert [p.command_id for p in await ingestion.list_parked(nc)] == [
        "parked-0",
        "parked-1",
        "parked-2",
    ]

    await client.forget_conversation("gone")

    left = await ingestion.list_parked(nc)
    assert [p.command_id for p in left] == ["parked-1"]
    assert json.loads(left[0].data)["session_id"] == "kept"
    for command_id in ("parked-0", "parked-2"):
        outcome = await ingest_status(nc, admin_token, command_id)
        assert outcome["status"] == "dropped"
        assert outcome["error"]["code"] == "not_found"
        assert "forgotten" in outcome["error"]["message"]
    assert (await ingest_status(nc, admin_token, "parked-1"))["status"] == "parked"


async def _parked(nc: NATS, count: int) -> list[ingestion.Parked] | None:
    found = await ingestion.list_parked(nc)
    return found if len(found) == count else None


async def _parked_count(nc: NATS, count: int) -> bool:
    return len(await ingestion.list_parked(nc)) == count


async def test_commit_types_of_published_commands_are_the_operations(
    service: Service, nc: NATS, client: Client, admin_token: str
) -> None:
    org = org_of(admin_token)
    agent = (await client.create_agent("Kinds")).fields["agent_id"]
    js = nc.jetstream()
    headers = bearer(admin_token)
    bodies = {
        "message.append_batch": {
            "session_id": "k",
            "agent_id": agent,
            "messages": [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
        },
        "memory.add": {"content": "Ann likes tea", "agent_id": agent},
        "memory.add_batch": {"memories": [{"content": "Bob likes coffee", "agent_id": agent}]},
        "working.put": {"session_id": "k", "key": "goal", "content": "find the tea"},
        "agent.patch_state": {"agent_id": agent, "patch": {"mood": "calm"}},
        "agent.set_state": {"agent_id": agent, "state": {"mood": "busy"}},
    }
    for operation, body in bodies.items():
        await js.publish(
            f"agentmem.in.{org}.{operation}",
            json.dumps(body).encode(),
            headers={**headers, "Nats-Msg-Id": f"kind-{operation.replace('.', '-')}"},
        )
    for operation in bodies:
        outcome = await settled(nc, admin_token, f"kind-{operation.replace('.', '-')}")
        assert outcome["status"] == "stored", outcome
        assert outcome["operation"] == operation
    types = {m.headers.get(H_COMMIT_TYPE) for m in await read_log(nc)}
    assert set(bodies) <= types


async def test_a_command_that_fails_the_worker_stops_it_at_once(nc: NATS) -> None:
    """An execution that raises (not a refusal: a fault of the service) fails the worker,
    which its leader then starts again from the stream, at once: not when the next message
    arrives, which on an idle partition may be never."""
    await ingestion.ensure_all(nc)
    org = str(uuid.uuid4())
    await nc.jetstream().publish(f"agentmem.in.{org}.message.append", append_body("s", "a", 1))

    async def broken(
        subject: str, data: bytes, headers: dict[str, str], prepare: Any, kind: str
    ) -> tuple[bytes, Principal | None]:
        raise RuntimeError("the command path broke")

    worker = IngestWorker(nc, ingestion.partition_of(org), broken)
    with pytest.raises(RuntimeError, match="the command path broke"):
        await asyncio.wait_for(worker.run(), 10)
    backlog = (await nc.jetstream().stream_info(ingestion.STREAM)).state.messages
    assert backlog == 1  # not acked: the next run executes it again


async def test_partition_of_names_the_partition_jetstream_stores_a_publish_in(
    nats_server: NatsServer,
) -> None:
    """``ingestion.partition_of`` agrees with nats-server's ``partition()`` transform, so that
    an operator (and the test below) can tell which process reads an organization."""
    nc = await nats.connect(nats_server.url)
    try:
        await ingestion.ensure_all(nc)
        js = nc.jetstream()
        orgs = [str(uuid.uuid4()) for _ in range(64)]
        for org in orgs:
            await js.publish(f"agentmem.in.{org}.message.append", b"{}")
        stored = [await js.get_msg(ingestion.STREAM, seq) for seq in range(1, len(orgs) + 1)]
        assert [int(m.subject.rsplit(".", 1)[1]) for m in stored] == [
            ingestion.partition_of(org) for org in orgs
        ]
        assert len({ingestion.partition_of(org) for org in orgs}) == ingestion.PARTITIONS
    finally:
        await nc.close()


async def test_two_processes_share_the_partitions_and_keep_the_order(
    nats_server: NatsServer, tmp_path: Path, store_url: str, store_kind: str
) -> None:
    """Several processes (Postgres) share the partitions by lease: each reads some, and the
    commands of every conversation are still stored once, in publish order."""
    if store_kind != "postgres":
        pytest.skip("several processes share a deployment on Postgres only")
    first = Service(settings_for(nats_server, tmp_path / "a", store_url))
    await first.start()
    second = Service(settings_for(nats_server, tmp_path / "b", store_url))
    await second.start()
    nc = await nats.connect(nats_server.url)
    try:
        token = (tmp_path / "a" / "admin.key").read_text().strip()
        root = Client(nc, token)

        def partitions(service: Service) -> set[int]:
            names = cast(list[str], service.this_process()["ingesting"])
            return {int(name.rsplit("-", 1)[1]) for name in names}

        async def spread() -> bool:
            # Each at its fair share: while a process still holds more, a lease moves mid-run.
            return len(partitions(first)) == len(partitions(second)) == ingestion.PARTITIONS // 2

        await eventually(spread, 30, 0.1, "the partitions spread evenly over both processes")
        # Organizations whose publishes land in both processes' partitions (hashed by id).
        orgs: list[str] = []
        while len(orgs) < 8 or not all(
            partitions(s) & {ingestion.partition_of(o) for o in orgs} for s in (first, second)
        ):
            orgs.append(str((await root.create_org(f"Org {len(orgs)}")).fields["org_id"]))
        sent: list[tuple[str, str, int]] = []  # (org, session, rank)
        js = nc.jetstream()
        for o, org in enumerate(orgs):
            agent = str((await root.create_agent("A", org_id=org)).fields["agent_id"])
            for n in range(30):
                session = f"s{n % 2}"
                await js.publish(
                    f"agentmem.in.{org}.message.append",
                    append_body(session, agent, n),
                    headers={**bearer(token), "Nats-Msg-Id": f"o{o}-{session}-{n:03d}"},
                )
                sent.append((org, session, n))
        await eventually(lambda: _backlog_empty(nc), 60, 0.1, "an empty backlog")
        commits = await commits_by_command(nc)
        ranks: dict[str, list[tuple[int, int]]] = {}
        for key, seqs in commits.items():
            command_id = key.rsplit(".", 1)[-1]
            if command_id.startswith("o") and command_id.count("-") == 2:
                assert len(seqs) == 1, f"{command_id} stored {len(seqs)} times"
                group, rank = command_id.rsplit("-", 1)
                ranks.setdefault(group, []).append((seqs[0], int(rank)))
        assert sum(len(r) for r in ranks.values()) == len(sent)
        for group, stored in ranks.items():
            in_log = [rank for _, rank in sorted(stored)]
            assert in_log == sorted(in_log), f"{group} out of publish order"
        executed = [
            sum(
                sample["value"]
                for sample in s.metrics.snapshot()["agentmem_ingest_executed"]
                if sample["name"].endswith("_total")
            )
            for s in (first, second)
        ]
        assert all(executed), f"one process executed nothing: {executed}"
    finally:
        await nc.close()
        await second.stop()
        await first.stop()


async def test_outcomes_are_stored_in_groups_each_before_its_record_returns(
    nats_server: NatsServer,
) -> None:
    """``OutcomeRecorder``: outcomes recorded at once are stored together, in atomic
    batches of at most ``MAX_OUTCOMES_AT_ONCE``, each readable when its ``record``
    returns; a refused group fails every record of it."""
    nc = await nats.connect(nats_server.url)
    try:
        await ingestion.ensure_all(nc)
        recorder = ingestion.OutcomeRecorder(nc)
        writes: list[int] = []
        store = recorder._store

        async def counted(group: list[tuple[str, bytes]]) -> None:
            writes.append(len(group))
            await store(group)

        recorder._store = counted  # type: ignore[method-assign]
        subjects = [ingestion.outcome_subject("o1", "u1", f"c{n}") for n in range(300)]

        async def record(subject: str) -> None:
            await recorder.record(subject, json.dumps({"for": subject}).encode())
            # 300 reads at once on a loaded machine: nats-py's default 0.5 s is too
            # short (a CI run timed out here), and a late answer is not a wrong one.
            found = await nc.request(
                f"$JS.API.DIRECT.GET.{ingestion.OUTCOMES}",
                json.dumps({"last_by_subj": subject}).encode(),
                timeout=10,
            )
            assert json.loads(found.data) == {"for": subject}

        await asyncio.gather(*map(record, subjects))
        assert sum(writes) == 300
        # The same command's outcome twice in one group (a redelivery and its first
        # delivery): both stored, the last one read.
        twice = ingestion.outcome_subject("o1", "u1", "twice")
        await asyncio.gather(recorder.record(twice, b'{"n":1}'), recorder.record(twice, b'{"n":2}'))
        assert writes[-1] == 2
        found = await nc.request(
            f"$JS.API.DIRECT.GET.{ingestion.OUTCOMES}",
            json.dumps({"last_by_subj": twice}).encode(),
            timeout=10,
        )
        assert json.loads(found.data) == {"n": 2}
        assert len(writes) <= 4, writes
        assert max(writes) <= ingestion.MAX_OUTCOMES_AT_ONCE

        # A group the stream refuses (one subject outside it): each of its records fails,
        # as unavailable (its commands are redelivered); the next group is stored.
        outside = "agentmem.nowhere.1"
        results = await asyncio.gather(
            *(recorder.record(s, b"{}") for s in [subjects[0], outside, subjects[1]]),
            return_exceptions=True,
        )
        assert all(isinstance(r, UnavailableError) for r in results), results
        await record(ingestion.outcome_subject("o1", "u1", "after"))
    finally:
        await nc.close()


async def test_streams_of_an_earlier_version_are_updated_on_start(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        earlier = {k: v for k, v in ingestion.outcomes_config().items() if k != "allow_atomic"}
        await nc.jetstream().add_stream(
            name=earlier["name"], subjects=earlier["subjects"], max_msgs_per_subject=1
        )
        # And an ingestion stream made with the earlier 10-minute duplicate window.
        config = {**ingestion.ingest_config(), "duplicate_window": 600 * 10**9}
        created = await nc.request(
            f"$JS.API.STREAM.CREATE.{ingestion.STREAM}", json.dumps(config).encode()
        )
        assert json.loads(created.data)["config"]["duplicate_window"] == 600 * 10**9
        await ingestion.ensure_all(nc)
        info = await nc.request(f"$JS.API.STREAM.INFO.{ingestion.OUTCOMES}", b"")
        assert json.loads(info.data)["config"]["allow_atomic"] is True
        info = await nc.request(f"$JS.API.STREAM.INFO.{ingestion.STREAM}", b"")
        assert json.loads(info.data)["config"]["duplicate_window"] == ingestion.DUPLICATE_WINDOW_NS
    finally:
        await nc.close()


async def test_the_parked_stream_takes_the_ingestion_bound(nc: NATS) -> None:
    """JetStream reserves a stream's max_bytes on the disk when it is made: the parked
    stream's was fixed at 1 GiB, so a small disk refused the first start whatever
    AGENTMEM_INGEST_MAX_BYTES said (an operator's check, with 1.5 GB free)."""
    await ingestion.ensure_all(nc, max_bytes=10 * 1024 * 1024)
    js = nc.jetstream()
    for stream in (ingestion.STREAM, ingestion.PARKED):
        assert (await js.stream_info(stream)).config.max_bytes == 10 * 1024 * 1024, stream
