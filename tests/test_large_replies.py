"""Answers that would be larger than a NATS message: each request still gets one.

A reply over the server's ``max_payload`` is never delivered, and the caller waited for its
timeout (an API key list with thousands of revoked keys, a context assembled from many
large messages). Lists and searches stop at 512 KiB, best first; a query that has no
pages answers ``invalid`` (``too_large``), never nothing.
"""

from __future__ import annotations

import pytest

from agentmem import Client, InvalidError
from agentmem.consumers.queries import MAX_PAGE_BYTES
from agentmem.domain.memories import SearchMemories

STORES = ("sqlite", "postgres")

BIG = 9_900  # characters a memory, under its 10,000


def big_text(n: int, word: str) -> str:
    """About ``BIG`` characters, unique to ``n``, holding ``word``."""
    return (f"{word} number {n} " + "lorem ipsum dolor sit amet " * 400)[:BIG]


async def test_a_search_of_many_large_memories_is_cut_to_what_one_reply_holds(
    client: Client,
) -> None:
    org_id = str((await client.create_org("Big")).fields["org_id"])
    for start in (0, 20, 40, 60):  # 20 a batch: a request is at most 256 KiB
        batch = [
            {"content": big_text(n, "zebra"), "user_id": "ann"} for n in range(start, start + 20)
        ]
        await client.add_memories(batch, org_id=org_id)
    body = {
        "text": "zebra",
        "user_id": "ann",
        "org_id": org_id,
        "mode": "text",
        "limit": 500,
        "after_seq": client.last_seq,
    }
    reply = await client.request(SearchMemories.op.subject, body)
    items = reply.data["items"]
    # 80 memories of about 10 KB match: about 800 KB, more than one page holds.
    assert 40 < len(items) < 80
    assert sum(len(m["content"]) for m in items) < MAX_PAGE_BYTES
    scores = [m["score"] for m in items]
    assert scores == sorted(scores, reverse=True)


async def test_a_context_larger_than_a_nats_message_is_refused_in_words(client: Client) -> None:
    org_id = str((await client.create_org("Long chat")).fields["org_id"])
    agent_id = str((await client.create_agent("Talker", org_id=org_id)).fields["agent_id"])
    for n in range(12):  # 12 messages of 99,000 characters: about 1.2 MB
        text = f"turn {n} " + "x" * 99_000
        await client.append_message("long", agent_id, "user", text, org_id=org_id)
    asked = {"session_id": "long", "org_id": org_id, "after_seq": client.last_seq}
    with pytest.raises(InvalidError, match=r"over the .* a NATS message carries") as refused:
        await client.assemble_context(agent_id, "turn", 2_000_000, **asked)
    details = refused.value.details
    assert details["reason"] == "too_large"
    assert details["reply_size"] > details["limit"] >= 1_000_000
    # Asked for less, it answers.
    fitted = await client.assemble_context(agent_id, "turn", 200_000, **asked)
    assert 0 < fitted.tokens <= 200_000
