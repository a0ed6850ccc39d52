"""``agentmem.q.history.get`` over NATS, against the real service and a real nats-server, on
each projection store (``STORES``): it reads exactly the named aggregate's subjects, and its
pages are cut by bytes so that every reply fits in one NATS message.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, InvalidError, UnavailableError, envelope
from agentmem.commands import MAX_MESSAGES_PER_BATCH
from agentmem.consumers.queries import MAX_PAGE_BYTES
from agentmem.consumers.router import MAX_REQUEST_BYTES
from agentmem.projections import messages as messages_read
from agentmem.queries import GetHistory
from agentmem.service import Service

STORES = ("sqlite", "postgres")

PASSWORD = "long-enough-password"


class Acme:
    """An organization, a member's client acting in it and the service administrator's."""

    def __init__(self, admin: Client, org_id: str, member: Client) -> None:
        self.admin = admin
        self.org_id = org_id
        self.member = member


@pytest.fixture
async def acme(client: Client) -> Acme:
    org_id = str((await client.create_org("Acme")).fields["org_id"])
    user = await client.register_user(
        org_id, "Someone", "member@acme.example", PASSWORD, roles=["member"]
    )
    key = await client.create_api_key("test", user_id=str(user.fields["user_id"]))
    return Acme(client, org_id, client.with_token(str(key.fields["token"])))


def events_of(page: Any) -> list[dict[str, Any]]:
    return [event for item in page.items for event in item["events"]]


async def whole_history(api: Client, aggregate: str, aggregate_id: str, limit: int) -> list[Any]:
    items: list[Any] = []
    cursor = None
    while True:
        page = await api.history(aggregate, aggregate_id, limit=limit, cursor=cursor)
        items += page.items
        cursor = page.next_cursor
        if cursor is None:
            return items


async def caught_up(api: Client, session: str, seq: int, seconds: float = 120.0) -> None:
    """Until the messages projection has applied ``seq``: a history page of a conversation
    waits for it, but only for a few seconds, and thousands of messages take longer."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await api.last_messages(session, 1, after_seq=seq)
            return
        except UnavailableError:
            if time.monotonic() > deadline:
                raise


# Exactly the named aggregate ------------------------------------------------------------
async def test_an_agents_history_is_its_profile_and_state_and_nothing_else(acme: Acme) -> None:
    """Agent and session ids are both client-chosen, and apps use the agent id as the session
    id: the agent's history must not show that conversation, redacted messages least of all."""
    member = acme.member
    bot = "support-bot"
    await member.create_agent("Support", agent_id=bot)
    said = await member.append_message(bot, bot, "user", "my SSN is 078-05-1120")
    await member.set_agent_state(bot, {"turn": 1})
    await member.append_message(bot, bot, "assistant", "noted, Ann")
    await member.redact_message(bot, str(said.fields["message_id"]))
    await member.update_agent(bot, description="answers questions")
    await member.patch_agent_state(bot, {"turn": 2})
    # A user of the same id: its subject ends in the agent's id too.
    await acme.admin.register_user(
        acme.org_id, "Bot Owner", "owner@acme.example", PASSWORD, roles=["member"], user_id=bot
    )

    page = await member.history("agent", bot)
    assert "078-05-1120" not in repr(page)
    assert "noted, Ann" not in repr(page)
    assert "owner@acme.example" not in repr(page)
    assert [item["commit_type"] for item in page.items] == [
        "agent.create",
        "agent.set_state",
        "agent.update",
        "agent.patch_state",
    ]
    assert [event["type"] for event in events_of(page)] == [
        "agent.created",
        "agent.state_set",
        "agent.updated",
        "agent.state_set",
    ]

    # Page by page, the profile and the state document still interleave in log order.
    one_by_one = await whole_history(member, "agent", bot, limit=1)
    assert one_by_one == page.items
    seqs = [item["seq"] for item in one_by_one]
    assert seqs == sorted(seqs)

    # The conversation of the same id is still there, under its own aggregate.
    conversation = await member.history("conversation", bot)
    contents = [e["content"] for e in events_of(conversation) if e["type"] == "message.appended"]
    assert contents == ["", "noted, Ann"]
    # after_seq, as on every query (the client sends its last seq): past the log, refused.
    body = {"aggregate": "agent", "id": bot, "after_seq": member.last_seq}
    assert (await member.request(GetHistory.op.subject, body)).data["items"] == page.items
    with pytest.raises(InvalidError, match="past the end of the log"):
        await member.request(GetHistory.op.subject, {**body, "after_seq": 10**12})


# Pages cut by bytes ---------------------------------------------------------------------
async def raw_history(nc: NATS, headers: dict[str, str], body: dict[str, Any]) -> bytes:
    reply = await nc.request(
        GetHistory.op.subject, msgspec.json.encode(body), timeout=10, headers=headers
    )
    return reply.data


async def test_history_pages_of_large_commits_fit_in_one_nats_message(
    acme: Acme, nc: NATS, auth_headers: dict[str, str]
) -> None:
    """Commits near the request size limit: each reply stays under the server's payload
    limit, a commit larger than a page's byte budget comes alone, and the pages together
    hold every commit once, in order, unchanged."""
    member = acme.member
    bot = "b" * 64  # long ids: every message of a commit repeats them
    session = "s" * 64
    await member.create_agent("Bot", agent_id=bot)
    written: dict[int, list[str]] = {}

    async def append(batch: list[dict[str, Any]]) -> None:
        body = {"session_id": session, "agent_id": bot, "messages": batch}
        assert len(msgspec.json.encode(body)) < MAX_REQUEST_BYTES - 1024
        done = await member.append_messages(session, bot, batch)
        written[done.seq] = [m["content"] for m in batch]

    # Commits of a few messages of 60,000 characters (about 240 KB each).
    for n in range(5):
        await append([{"role": "user", "content": f"{n}{k}" + "x" * 60_000} for k in range(4)])
    # 1,000 messages of 200 characters: as history shows it, this commit is over the budget.
    await append([{"role": "assistant", "content": f"{k:04}" + "y" * 196} for k in range(1_000)])
    for n in range(3):
        await append([{"role": "user", "content": f"small {n}"}])
    await caught_up(member, session, max(written))

    headers = auth_headers
    body: dict[str, Any] = {"aggregate": "conversation", "id": session, "org_id": acme.org_id}
    seen: list[dict[str, Any]] = []
    sizes: list[int] = []
    while True:
        data = await raw_history(nc, headers, body)
        sizes.append(len(data))
        reply = envelope.decode(data)
        assert reply.ok, reply.error
        assert reply.data["items"], "every page holds at least one commit"
        seen += reply.data["items"]
        if reply.data["next_cursor"] is None:
            break
        body["cursor"] = reply.data["next_cursor"]

    assert max(sizes) < nc.max_payload, sizes
    assert len(sizes) > 1
    assert [item["seq"] for item in seen] == sorted(written)
    for item in seen:
        contents = [e["content"] for e in item["events"]]
        assert contents == written[item["seq"]]
        if len(contents) == 1_000:
            assert len(msgspec.json.encode(item)) > MAX_PAGE_BYTES
    # Pages are cut by bytes only where they have to be: the small commits share a page.
    assert len(sizes) < len(written)


async def test_history_of_a_conversation_with_tens_of_thousands_of_messages(
    acme: Acme, nc: NATS, auth_headers: dict[str, str]
) -> None:
    """More messages than SQLite (32,766) or asyncpg (32,767) take as query parameters, in
    commits of a full batch each: every page answers, and every message comes back."""
    member = acme.member
    bot = str((await member.create_agent("Bot")).fields["agent_id"])
    batches = 33
    last = 0
    for n in range(batches):
        batch = [{"role": "user", "content": f"{n}.{k}"} for k in range(MAX_MESSAGES_PER_BATCH)]
        last = (await member.append_messages("long", bot, batch)).seq
    await caught_up(member, "long", last)

    body: dict[str, Any] = {"aggregate": "conversation", "id": "long", "org_id": acme.org_id}
    body["limit"] = 500
    contents: list[str] = []
    while True:
        data = await raw_history(nc, auth_headers, body)
        assert len(data) < nc.max_payload
        reply = envelope.decode(data)
        assert reply.ok, reply.error
        contents += [e["content"] for item in reply.data["items"] for e in item["events"]]
        if reply.data["next_cursor"] is None:
            break
        body["cursor"] = reply.data["next_cursor"]
    assert contents == [f"{n}.{k}" for n in range(batches) for k in range(MAX_MESSAGES_PER_BATCH)]


async def test_which_messages_are_hidden_is_asked_in_bounded_statements(
    acme: Acme, service: Service
) -> None:
    """More ids than any store takes as parameters of one statement (SQLite's default limit
    is 32,766, this machine's build 250,000; asyncpg's 32,767): still one answer."""
    member = acme.member
    bot = str((await member.create_agent("Bot")).fields["agent_id"])
    said = await member.append_messages(
        "s1", bot, [{"role": "user", "content": "shown"}, {"role": "user", "content": "gone"}]
    )
    shown, gone = said.fields["message_ids"]
    redacted = await member.redact_message("s1", gone)
    await caught_up(member, "s1", redacted.seq)
    assert service.store is not None

    unknown = [f"no-such-message-{n}" for n in range(250_001)]
    hidden = await messages_read.hidden_messages(service.store, [shown, *unknown, gone])
    assert hidden == frozenset([*unknown, gone])
