"""``agentmem.q.history.get`` over NATS, against the real service and a real nats-server, on
each projection store (``STORES``): it reads exactly the named aggregate's subjects.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from agentmem import Client, UnavailableError

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
