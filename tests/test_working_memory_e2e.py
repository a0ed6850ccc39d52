"""Working memory over NATS, against the real service and a real nats-server, on each
projection store (``STORES``): put, get by priority, replace by key, remove, clear, expiry
from the log's recorded time, roles, organizations kept apart, and replay.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, ForbiddenError, InvalidError, NotFoundError, subjects
from agentmem.eventlog import H_TIME, EventLog
from agentmem.projections.working import WORKING_ITEMS
from agentmem.service import Service
from tests.realparts import dump_store, replay_into, wait_caught_up

STORES = ("sqlite", "postgres")

PASSWORD = "long-enough-password"


async def last_seq(nc: NATS) -> int:
    info = await nc.jetstream().stream_info(subjects.STREAM_NAME)
    return int(info.state.last_seq)


async def as_user(admin: Client, org_id: str, email: str, roles: list[Any]) -> Client:
    user = await admin.register_user(org_id, "Someone", email, PASSWORD, roles=roles)
    key = await admin.create_api_key("test", user_id=user.fields["user_id"])
    return admin.with_token(str(key.fields["token"]))


@pytest.fixture
async def acme(client: Client) -> tuple[str, Client]:
    org_id = str((await client.create_org("Acme")).fields["org_id"])
    return org_id, await as_user(client, org_id, "member@acme.example", ["member"])


def keys(items: list[Any]) -> list[str]:
    return [item.key for item in items]


async def test_items_come_highest_priority_first(acme: tuple[str, Client]) -> None:
    org_id, api = acme
    put = await api.put_working("s1", "the user wants a refund", key="goal", priority=0.9)
    assert (put.event, put.fields["key"], put.fields["priority"]) == (
        "working.item_put",
        "goal",
        0.9,
    )
    await api.put_working("s1", "order 1234", key="order", priority=0.5)
    await api.put_working("s1", "they sounded upset", key="mood", priority=0.2)
    generated = await api.put_working("s1", "same priority, newer", priority=0.5)
    assert generated.fields["key"]  # a new id when no key is given
    items = await api.get_working("s1")
    assert keys(items) == ["goal", generated.fields["key"], "order", "mood"]
    assert (items[0].org_id, items[0].session_id, items[0].content) == (
        org_id,
        "s1",
        "the user wants a refund",
    )
    assert (items[0].ttl_ms, items[0].expires_at, items[0].version) == (None, None, put.version)
    assert keys(await api.get_working("s1", min_priority=0.5)) == [
        "goal",
        generated.fields["key"],
        "order",
    ]
    assert keys(await api.get_working("s1", min_priority=0.5, limit=1)) == ["goal"]
    assert await api.get_working("another-session") == []
    # A put with a key replaces that item.
    await api.put_working("s1", "order 5678", key="order", priority=1.0, metadata={"n": 2})
    items = await api.get_working("s1")
    assert (items[0].key, items[0].content, items[0].metadata) == ("order", "order 5678", {"n": 2})
    assert len(items) == 4


async def test_remove_and_clear(acme: tuple[str, Client], nc: NATS) -> None:
    _, api = acme
    for key in ("a", "b", "c"):
        await api.put_working("s2", f"item {key}", key=key)
    removed = await api.remove_working("s2", "b")
    assert (removed.event, removed.fields["key"]) == ("working.item_removed", "b")
    assert sorted(keys(await api.get_working("s2"))) == ["a", "c"]
    before = await last_seq(nc)
    with pytest.raises(NotFoundError, match="no working memory item b"):
        await api.remove_working("s2", "b")
    with pytest.raises(NotFoundError):
        await api.remove_working("never-used", "a")
    assert await last_seq(nc) == before
    await api.put_working("s3", "another session's", key="a")
    cleared = await api.clear_working("s2")
    assert cleared.event == "working.cleared"
    assert await api.get_working("s2") == []
    assert keys(await api.get_working("s3")) == ["a"]  # other sessions stay
    with pytest.raises(NotFoundError):
        await api.remove_working("s2", "a")
    await api.put_working("s2", "after the clear", key="a")
    assert keys(await api.get_working("s2")) == ["a"]


async def test_a_retried_put_is_stored_once(acme: tuple[str, Client], nc: NATS) -> None:
    _, api = acme
    first = await api.put_working("s7", "once", command_id="put-1")
    before = await last_seq(nc)
    again = await api.put_working("s7", "once", command_id="put-1")
    assert (again.seq, again.fields["key"]) == (first.seq, first.fields["key"])
    assert await last_seq(nc) == before
    assert keys(await api.get_working("s7")) == [first.fields["key"]]


async def test_expired_items_are_never_returned(
    service: Service, acme: tuple[str, Client], nc: NATS
) -> None:
    """An item expires ttl_ms after the time the log recorded for its put."""
    org_id, api = acme
    ttl = 1_500
    put = await api.put_working("s4", "a passing thought", key="brief", ttl_ms=ttl, priority=1.0)
    await api.put_working("s4", "a lasting one", key="kept")
    items = await api.get_working("s4")
    assert keys(items) == ["brief", "kept"]
    brief = items[0]
    commits = await EventLog(nc).read_subject(subjects.event(org_id, "working", "s4"))
    assert commits[0].seq == put.seq
    recorded = int(commits[0].headers[H_TIME])
    assert (brief.created_at, brief.ttl_ms, brief.expires_at) == (recorded, ttl, recorded + ttl)
    # Once that time has passed (the service's clock), the item is left out of every read.
    await asyncio.sleep(max(0.0, (recorded + ttl) / 1000 - time.time()) + 0.1)
    assert keys(await api.get_working("s4")) == ["kept"]
    assert keys(await api.get_working("s4", min_priority=0.9)) == []
    # It is still there until removed, and a new put starts its time again.
    await api.remove_working("s4", "brief")
    await api.put_working("s4", "again", key="brief", ttl_ms=60_000)
    assert keys(await api.get_working("s4")) == ["brief", "kept"]


async def test_what_a_put_refuses(acme: tuple[str, Client], nc: NATS) -> None:
    _, api = acme
    before = await last_seq(nc)
    for fields in (
        {"priority": 1.5},
        {"ttl_ms": 0},
        {"ttl_ms": 31 * 24 * 3600 * 1000},
        {"key": "a.b"},
    ):
        with pytest.raises(InvalidError):
            await api.put_working("s5", "x", **fields)
    with pytest.raises(InvalidError):
        await api.put_working("s5", "")
    with pytest.raises(InvalidError):
        await api.put_working("s5", "x" * 10_001)
    assert await last_seq(nc) == before


async def test_roles(client: Client, acme: tuple[str, Client]) -> None:
    org_id, member = acme
    reader = await as_user(client, org_id, "reader@acme.example", ["readonly"])
    await member.put_working("s6", "hello", key="k")
    assert keys(await reader.get_working("s6", after_seq=member.last_seq)) == ["k"]
    for write in (
        reader.put_working("s6", "mine"),
        reader.remove_working("s6", "k"),
        reader.clear_working("s6"),
    ):
        with pytest.raises(ForbiddenError):
            await write


async def test_another_organizations_session_is_apart(
    client: Client, acme: tuple[str, Client], nc: NATS
) -> None:
    org_id, api = acme
    await api.put_working("shared-id", "Acme's", key="k")
    other_org = str((await client.create_org("Other")).fields["org_id"])
    other = await as_user(client, other_org, "admin@other.example", ["admin"])
    before = await last_seq(nc)
    for call in (
        other.get_working("shared-id", org_id=org_id, after_seq=api.last_seq),
        other.put_working("shared-id", "planted", org_id=org_id),
        other.remove_working("shared-id", "k", org_id=org_id),
        other.clear_working("shared-id", org_id=org_id),
        # The same session id in their own organization is another session.
        other.remove_working("shared-id", "k"),
    ):
        with pytest.raises(NotFoundError):
            await call
    assert await last_seq(nc) == before
    assert await other.get_working("shared-id") == []
    await other.put_working("shared-id", "Other's", key="k")
    await other.clear_working("shared-id")
    assert [i.content for i in await api.get_working("shared-id", after_seq=other.last_seq)] == [
        "Acme's"
    ]


async def test_replay_equals_live(
    service: Service,
    client: Client,
    acme: tuple[str, Client],
    nc: NATS,
    tmp_path: Path,
    admin_token: str,
) -> None:
    _, api = acme
    await api.put_working("r1", "one", key="a", priority=0.3, ttl_ms=60_000)
    await api.put_working("r1", "two", key="b", metadata={"x": [1, 2]})
    await api.put_working("r1", "one, again", key="a", priority=0.7)
    await api.remove_working("r1", "b")
    await api.put_working("r2", "cleared soon", key="c")
    await api.clear_working("r2")
    await api.put_working("r2", "after the clear", key="d", ttl_ms=1)
    gone = str((await client.create_org("Gone")).fields["org_id"])
    await client.put_working("r1", "in a deleted org", org_id=gone)
    await client.delete_org(gone)
    await wait_caught_up(nc, admin_token)
    assert service.store is not None
    live = await dump_store(service.store)
    assert sorted(row[3] for row in live["working_items"]) == ["after the clear", "one, again"]
    replayed = await replay_into(nc, tmp_path / "replayed.db")
    assert replayed[WORKING_ITEMS.name] == live[WORKING_ITEMS.name]
    assert dict(replayed["checkpoints"])["working"] == dict(live["checkpoints"])["working"]
