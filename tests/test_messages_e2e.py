"""Conversations over NATS, against the real service and a real nats-server, on each
projection store (``STORES``): appends and batches, pages both ways, last N, full-text
search, redaction (down to the bytes on disk), deletion, organizations kept apart, replay,
and a conversation of 100,000 messages. Who may read and write messages is in the role
matrix, tests/test_role_matrix.py.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import msgspec
import pytest
from nats.aio.client import Client as NATS

from agentmem import (
    Client,
    ConflictError,
    InvalidError,
    NotFoundError,
    UnavailableError,
    Written,
    ids,
    subjects,
)
from agentmem.consumers.commands import log_command_id
from agentmem.consumers.queries import MAX_PAGE_BYTES
from agentmem.domain import messages as messages_domain
from agentmem.eventlog import CommitMeta
from agentmem.events import MessageAppended, encode_commit
from agentmem.headmarks import HeadMarks
from agentmem.projections import message_vectors
from agentmem.projections.messages import MESSAGE_COMMANDS, MESSAGE_REDACTIONS, MESSAGES
from agentmem.queries import SearchMessages
from agentmem.replies import Message
from agentmem.service import Service
from tests.realparts import dump_store, replay_into, rows, wait_caught_up

STORES = ("sqlite", "postgres")

PASSWORD = "long-enough-password"


# Helpers ---------------------------------------------------------------------------------
async def last_seq(nc: NATS) -> int:
    info = await nc.jetstream().stream_info(subjects.STREAM_NAME)
    return int(info.state.last_seq)


async def as_user(admin: Client, org_id: str, email: str, roles: list[Any]) -> tuple[str, Client]:
    """A new user of ``org_id`` with ``roles``, and a client acting as it (an API key)."""
    user = await admin.register_user(org_id, "Someone", email, PASSWORD, roles=roles)
    user_id = str(user.fields["user_id"])
    key = await admin.create_api_key("test", user_id=user_id)
    return user_id, admin.with_token(str(key.fields["token"]))


class Acme:
    """An organization with an agent, a member (whose client acts) and the admin client."""

    def __init__(self, admin: Client, org_id: str, agent_id: str, user_id: str, member: Client):
        self.admin = admin
        self.org_id = org_id
        self.agent_id = agent_id
        self.user_id = user_id
        self.member = member

    async def say(self, session: str, *texts: str, **fields: Any) -> Written:
        batch = [{"role": "user", "content": t} for t in texts]
        return await self.member.append_messages(session, self.agent_id, batch, **fields)


async def make_org(admin: Client, name: str) -> Acme:
    org_id = str((await admin.create_org(name)).fields["org_id"])
    user_id, member = await as_user(admin, org_id, f"member@{name.lower()}.example", ["member"])
    agent_id = str((await member.create_agent(f"{name} bot")).fields["agent_id"])
    return Acme(admin, org_id, agent_id, user_id, member)


@pytest.fixture
async def acme(client: Client) -> Acme:
    return await make_org(client, "Acme")


def contents(items: list[Message]) -> list[str]:
    return [m.content for m in items]


async def visible(client: Client, session: str, seq: int, seconds: float = 180.0) -> None:
    """Until the messages projection has applied ``seq`` (it may take longer than one
    query's bounded wait when 100,000 messages are on their way)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await client.last_messages(session, 1, after_seq=seq)
            return
        except UnavailableError:
            if time.monotonic() > deadline:
                raise


# Appending and reading -------------------------------------------------------------------
async def test_append_one_and_a_batch_then_read_them_both_ways(acme: Acme, nc: NATS) -> None:
    member = acme.member
    one = await member.append_message(
        "s1", acme.agent_id, "system", "You are helpful.", user_id=acme.user_id
    )
    assert one.event == "message.appended"
    assert one.fields["message_ids"] == [one.fields["message_id"]]
    assert (one.fields["session_id"], one.fields["content"]) == ("s1", "You are helpful.")
    assert one.seq == one.version == await last_seq(nc)

    batch = [
        {"role": "user", "content": "What is the weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "call-1", "name": "weather", "arguments": {"city": "Oslo"}}],
        },
        {"role": "tool", "content": '{"celsius": 3}', "tool_call_id": "call-1"},
        {"role": "assistant", "content": "It is 3 degrees.", "metadata": {"model": "m-1"}},
    ]
    written = await member.append_messages("s1", acme.agent_id, batch, user_id=acme.user_id)
    assert written.fields["count"] == 4
    ids = [one.fields["message_id"], *written.fields["message_ids"]]
    assert len(set(ids)) == 5
    assert written.seq == one.seq + 1, "one command, one commit"

    everything = await member.list_messages("s1", limit=500, after_seq=written.seq)
    assert [m.message_id for m in everything.items] == ids
    assert everything.next_cursor is None
    call = everything.items[2]
    assert call.tool_calls == batch[1]["tool_calls"]
    assert (everything.items[3].tool_call_id, everything.items[4].metadata) == (
        "call-1",
        {"model": "m-1"},
    )
    assert {m.user_id for m in everything.items} == {acme.user_id}
    positions = [m.position for m in everything.items]
    assert positions == sorted(positions)

    # Page by page, oldest first and newest first.
    for order, expected in (("asc", ids), ("desc", ids[::-1])):
        seen: list[str] = []
        cursor = None
        while True:
            page = await member.list_messages("s1", order=order, limit=2, cursor=cursor)
            seen += [m.message_id for m in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == expected, order

    last = await member.last_messages("s1", 3)
    assert [m.message_id for m in last] == ids[-3:]
    assert [m.message_id for m in await member.last_messages("s1", 50)] == ids
    assert await member.last_messages("nobody-here", 5) == []
    assert (await member.list_messages("nobody-here")).items == []


async def test_a_retried_append_is_stored_once(acme: Acme, nc: NATS) -> None:
    first = await acme.say("s1", "hello", "world", command_id="retry-me")
    before = await last_seq(nc)
    again = await acme.say("s1", "hello", "world", command_id="retry-me")
    assert await last_seq(nc) == before
    assert again.fields["message_ids"] == first.fields["message_ids"]
    assert again.version == first.version
    items = (await acme.member.list_messages("s1", after_seq=again.seq)).items
    assert contents(items) == ["hello", "world"]


async def store_as_if_long_ago(
    nc: NATS, acme: Acme, session: str, command_id: str, texts: list[str], ago_ms: int
) -> tuple[int, list[str]]:
    """The first attempt of the member's append, as the log holds it once the duplicate
    window has forgotten its message id: a commit under the member's command key, written
    ``ago_ms`` ago, with no ``Nats-Msg-Id`` left to match. Its (seq, message ids)."""
    key = log_command_id(f"{acme.org_id}.{acme.user_id}", command_id)
    meta = CommitMeta(
        command_id=key,
        # As the service writes it: the operation that was sent (one message: an append).
        commit_type="message.append" if len(texts) == 1 else "message.append_batch",
        time_ms=time.time_ns() // 1_000_000 - ago_ms,
    )
    events = [
        MessageAppended(
            message_id=ids.new_id(),
            session_id=session,
            agent_id=acme.agent_id,
            role="user",
            content=text,
        )
        for text in texts
    ]
    subject = messages_domain.subject(acme.org_id, session)
    reply = await nc.request(subject, encode_commit(events), timeout=5, headers=meta.headers())
    seq = int(msgspec.json.decode(reply.data)["seq"])
    return seq, [e.message_id for e in events]


@pytest.mark.parametrize("applied_first", [True, False])
async def test_an_append_retried_after_the_duplicate_window_is_stored_once(
    acme: Acme, nc: NATS, service: Service, applied_first: bool, monkeypatch: Any
) -> None:
    """A retry long after the first attempt (past the log's 10-minute duplicate window) is
    recognised by its command id, for append_batch and append alike, whether the messages
    projection has applied the first attempt yet or not: answered with the first outcome,
    nothing stored again. Another caller's same command id is another command."""
    hour = 3_600_000
    first_seq, first_ids = await store_as_if_long_ago(nc, acme, "s1", "late", ["a", "b"], hour)
    one_seq, one_ids = await store_as_if_long_ago(nc, acme, "s1", "late-one", ["c"], hour)
    # The service's own appends saw those commits arrive a moment ago (``HeadMarks``); the
    # retry comes an hour later, to a process that has known the log only since then.
    monkeypatch.setattr(service.parts.log, "marks", HeadMarks())
    if applied_first:
        await visible(acme.member, "s1", one_seq)
    before = await last_seq(nc)
    again = await acme.say("s1", "a", "b", command_id="late")
    assert await last_seq(nc) == before
    assert (again.version, again.fields["message_ids"]) == (first_seq, first_ids)
    single = await acme.member.append_message(
        "s1", acme.agent_id, "user", "c", command_id="late-one"
    )
    assert await last_seq(nc) == before
    assert (single.version, single.fields["message_ids"]) == (one_seq, one_ids)
    items = (await acme.member.list_messages("s1", after_seq=before)).items
    assert contents(items) == ["a", "b", "c"]
    # The admin's "late" is not the member's: it is stored.
    other = await acme.admin.append_messages(
        "s1",
        acme.agent_id,
        [{"role": "user", "content": "d"}],
        org_id=acme.org_id,
        command_id="late",
    )
    assert other.version > before
    # Once the conversation is deleted, its command ids go with it: a fresh history.
    await acme.member.delete_conversation("s1")
    fresh = await acme.say("s1", "a", "b", command_id="late")
    assert fresh.version > other.version


async def test_concurrent_appends_all_land_in_one_order(acme: Acme, client: Client) -> None:
    """No expected version: appends racing on one session never conflict, and every reader
    sees the same order (the log's)."""
    helper = str((await acme.member.create_agent("Helper")).fields["agent_id"])
    writers = [acme.member, client]

    async def one(n: int) -> Written:
        agent = acme.agent_id if n % 2 else helper
        writer = writers[n % 2]
        return await writer.append_message("busy", agent, "user", f"m{n}", org_id=acme.org_id)

    written = await asyncio.gather(*(one(n) for n in range(40)))
    seqs = [w.seq for w in written]
    assert len(set(seqs)) == 40
    listed = await acme.member.list_messages("busy", limit=500, after_seq=max(seqs))
    by_seq = [f"m{n}" for _, n in sorted((w.seq, n) for n, w in enumerate(written))]
    assert contents(listed.items) == by_seq
    assert {m.agent_id for m in listed.items} == {acme.agent_id, helper}


async def test_list_by_time_and_role(acme: Acme) -> None:
    member = acme.member
    times = []
    for n in range(3):
        written = await member.append_messages(
            "s1",
            acme.agent_id,
            [{"role": "user", "content": f"q{n}"}, {"role": "assistant", "content": f"a{n}"}],
        )
        listed = await member.list_messages("s1", order="desc", limit=1, after_seq=written.seq)
        times.append(listed.items[0].created_at)
        await asyncio.sleep(0.02)  # the next commit is a later millisecond
    assert times == sorted(set(times))

    async def listing(**filters: Any) -> list[str]:
        return contents((await member.list_messages("s1", **filters)).items)

    assert await listing(since=times[1]) == ["q1", "a1", "q2", "a2"]
    assert await listing(until=times[1]) == ["q0", "a0"]
    assert await listing(since=times[1], until=times[2]) == ["q1", "a1"]
    assert await listing(role="assistant") == ["a0", "a1", "a2"]
    assert await listing(role="assistant", order="desc", since=times[1]) == ["a2", "a1"]
    assert await listing(role="tool") == []
    # Filters and cursors together, page by page.
    first = await member.list_messages("s1", role="user", limit=2)
    assert contents(first.items) == ["q0", "q1"]
    rest = await member.list_messages("s1", role="user", limit=2, cursor=first.next_cursor)
    assert (contents(rest.items), rest.next_cursor) == (["q2"], None)


async def test_a_page_of_large_messages_is_cut_short_by_size(acme: Acme) -> None:
    big = "x" * 90_000
    for _ in range(5):  # two per request: a request may hold 256 KiB
        written = await acme.say("s1", big, big)
    page = await acme.member.list_messages("s1", limit=500, after_seq=written.seq)
    # About 90.4 KB of JSON each: 512 KiB holds five of them, not six.
    assert len(page.items) == MAX_PAGE_BYTES // 90_400 == 5
    assert page.next_cursor is not None
    rest = await acme.member.list_messages("s1", limit=500, cursor=page.next_cursor)
    assert len(page.items) + len(rest.items) == 10
    last = await acme.member.last_messages("s1", 10)
    assert len(last) == 5  # the five newest: as many as fit
    newest = await acme.member.list_messages("s1", order="desc", limit=1)
    assert last[-1].message_id == newest.items[0].message_id


# Search ----------------------------------------------------------------------------------
async def test_search_ranks_and_filters(acme: Acme, client: Client) -> None:
    member = acme.member
    other_agent = str((await member.create_agent("Other bot")).fields["agent_id"])
    other_user, _ = await as_user(client, acme.org_id, "other@acme.example", ["member"])
    await member.append_messages(
        "s1",
        acme.agent_id,
        [
            {"role": "user", "content": "I am allergic to peanuts"},
            {"role": "assistant", "content": "Noted: no peanuts in your recipes"},
            {"role": "user", "content": "What about almonds?"},
        ],
        user_id=acme.user_id,
    )
    await member.append_message(
        "s2", acme.agent_id, "user", "peanut butter is my favourite", user_id=other_user
    )
    written = await member.append_message(
        "s3", other_agent, "user", "peanuts again, allergic", user_id=acme.user_id
    )
    seq = written.seq

    found = await member.search_messages("allergic peanuts", agent_id=acme.agent_id, after_seq=seq)
    assert found[0].content == "I am allergic to peanuts"  # both words
    assert set(contents(found)) == {
        "I am allergic to peanuts",
        "Noted: no peanuts in your recipes",
        "peanut butter is my favourite",  # stemmed
    }
    ranks = [m.rank for m in found]
    assert all(r is not None for r in ranks)
    assert ranks == sorted(ranks, reverse=True)  # type: ignore[type-var]

    by_user = await member.search_messages("peanuts", user_id=acme.user_id)
    assert set(contents(by_user)) == {
        "I am allergic to peanuts",
        "Noted: no peanuts in your recipes",
        "peanuts again, allergic",
    }
    both = await member.search_messages("peanuts", user_id=acme.user_id, agent_id=other_agent)
    assert contents(both) == ["peanuts again, allergic"]
    in_s2 = await member.search_messages("peanut", agent_id=acme.agent_id, session_id="s2")
    assert contents(in_s2) == ["peanut butter is my favourite"]
    said = await member.search_messages("peanuts", agent_id=acme.agent_id, role="assistant")
    assert contents(said) == ["Noted: no peanuts in your recipes"]
    assert await member.search_messages("volcano", agent_id=acme.agent_id) == []
    assert len(await member.search_messages("peanuts", agent_id=acme.agent_id, limit=1)) == 1
    with pytest.raises(InvalidError, match="agent_id or user_id"):
        await member.search_messages("peanuts")
    with pytest.raises(InvalidError, match="agent_id or user_id"):
        await member.search_messages("peanuts", session_id="s1")
    # Search syntax in the text is only text.
    for text in ('"peanuts', "peanuts OR", "NEAR(", "peanuts AND NOT", "*", "'; DROP TABLE"):
        await member.search_messages(text, agent_id=acme.agent_id)
    # Another organization's search is empty, in the same shape as one's own.
    for mode in ("text", "hybrid"):
        body = {"text": "peanuts", "agent_id": acme.agent_id, "mode": mode}
        own = await member.request(SearchMessages.op.subject, body)
        elsewhere = await member.request(SearchMessages.op.subject, {**body, "org_id": "nobody"})
        assert elsewhere.data == {**own.data, "items": [], "confident": False}

    # A redacted message is found no more.
    await member.redact_message("s1", found[0].message_id)
    again = await member.search_messages(
        "allergic", agent_id=acme.agent_id, after_seq=member.last_seq
    )
    assert contents(again) == []


async def test_search_by_meaning_and_both_ways_and_vectors_leave_with_their_message(
    acme: Acme, service: Service, nc: NATS, admin_token: str
) -> None:
    """``mode`` vector and hybrid find a message by meaning, scoped as full-text search is;
    text stays the default; a redaction, a conversation's deletion, an agent's deletion
    and a conversation's forget remove the message's vectors."""
    member = acme.member
    other_agent = str((await member.create_agent("Other bot")).fields["agent_id"])
    written = await member.append_messages(
        "s1",
        acme.agent_id,
        [
            {"role": "user", "content": "I am allergic to peanuts"},
            {"role": "user", "content": "The deploy pipeline runs every Friday afternoon"},
            {"role": "assistant", "content": "Bob prefers window seats on long flights"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "name": "x"}]},
        ],
        user_id=acme.user_id,
    )
    peanuts = written.fields["message_ids"][0]
    await member.append_message("s2", other_agent, "user", "nut allergy is serious")
    seq = (await member.append_message("s3", acme.agent_id, "user", "hello there")).seq
    question = "nut allergy"  # no word (stem) in common with the peanut message
    text = await member.search_messages_result(question, agent_id=acme.agent_id, after_seq=seq)
    assert (text.mode, text.items, text.model) == ("text", [], None)
    assert text.confident is False
    vector = await member.search_messages_result(question, agent_id=acme.agent_id, mode="vector")
    assert vector.mode == "vector"
    assert vector.model == message_vectors.PROJECTION.model
    best = vector.items[0]
    assert best.message_id == peanuts  # not the other agent's, which has the very words
    assert best.scores is not None
    assert best.scores.text is None
    assert best.scores.vector is not None
    assert best.score == pytest.approx(best.scores.vector)
    assert vector.confident is True
    hybrid = await member.search_messages_result(question, agent_id=acme.agent_id, mode="hybrid")
    assert hybrid.items[0].message_id == peanuts
    assert hybrid.items[0].scores is not None
    assert hybrid.items[0].scores.text == 0.0
    said = await member.search_messages(
        "flights", agent_id=acme.agent_id, role="assistant", mode="hybrid"
    )
    assert contents(said)[0] == "Bob prefers window seats on long flights"
    assert all(m.role == "assistant" for m in said)
    everything = await member.search_messages(
        question, agent_id=acme.agent_id, mode="vector", min_score=0.0
    )
    assert len(everything) == 4, "every message with words, none without"

    async def vector_ids() -> set[str]:
        rows = await service.store.fetch_all("SELECT message_id FROM message_vectors")
        return {r["message_id"] for r in rows}

    assert peanuts in await vector_ids()
    await member.redact_message("s1", peanuts)
    again = await member.search_messages(
        question, agent_id=acme.agent_id, mode="vector", after_seq=member.last_seq
    )
    assert peanuts not in [m.message_id for m in again]
    assert peanuts not in await vector_ids()
    await member.delete_conversation("s1")
    await acme.admin.delete_agent(other_agent)
    await wait_caught_up(nc, admin_token)
    assert len(await vector_ids()) == 1  # "hello there", in s3
    await acme.admin.forget_conversation("s3", org_id=acme.org_id)
    await wait_caught_up(nc, admin_token)
    assert await vector_ids() == set()


# Redaction and deletion ------------------------------------------------------------------
async def test_redact_a_message(acme: Acme, nc: NATS) -> None:
    member = acme.member
    written = await member.append_messages(
        "s1",
        acme.agent_id,
        [
            {"role": "user", "content": "my password is hunter2", "metadata": {"ip": "10.0.0.1"}},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "name": "store"}]},
            {"role": "user", "content": "thanks"},
        ],
    )
    first, second, _ = written.fields["message_ids"]
    redacted = await member.redact_message("s1", first, reason="a password")
    assert redacted.event == "message.redacted"
    assert (redacted.fields["message_id"], redacted.fields["reason"]) == (first, "a password")
    await member.redact_message("s1", second)

    items = (await member.list_messages("s1", after_seq=member.last_seq)).items
    assert [(m.content, m.redacted) for m in items] == [("", True), ("", True), ("thanks", False)]
    assert (items[0].metadata, items[1].tool_calls) == ({}, [])
    assert [m.message_id for m in items] == written.fields["message_ids"], "they keep their place"
    assert [m.redacted for m in await member.last_messages("s1")] == [True, True, False]

    # Twice: nothing new is written, and the answer is the first redaction's.
    before = await last_seq(nc)
    twice = await member.redact_message("s1", first, reason="again")
    assert await last_seq(nc) == before
    assert (twice.version, twice.fields["reason"]) == (redacted.version, "a password")
    assert twice.fields["already_redacted"] is True

    for session, message_id in (("s1", "no-such-message"), ("s2", first), ("s9", "x")):
        with pytest.raises(NotFoundError):
            await member.redact_message(session, message_id)
    assert await last_seq(nc) == before


async def test_redact_right_after_append_reads_its_own_write(acme: Acme) -> None:
    for n in range(5):
        written = await acme.say("s1", f"message {n}")
        await acme.member.redact_message("s1", written.fields["message_ids"][0])
    items = (await acme.member.list_messages("s1", after_seq=acme.member.last_seq)).items
    assert [m.redacted for m in items] == [True] * 5


async def test_delete_a_conversation(acme: Acme, nc: NATS) -> None:
    member = acme.member
    old = await acme.say("s1", "old one", "old two")
    await acme.say("s2", "elsewhere")
    await member.redact_message("s1", old.fields["message_ids"][0])
    deleted = await member.delete_conversation("s1")
    assert deleted.event == "conversation.deleted"
    assert (await member.list_messages("s1", after_seq=deleted.seq)).items == []
    assert await member.last_messages("s1") == []
    assert contents(await member.last_messages("s2")) == ["elsewhere"]

    # Deleting it again writes nothing; a conversation that never was is not found.
    before = await last_seq(nc)
    again = await member.delete_conversation("s1")
    assert (again.version, again.fields["already_deleted"]) == (deleted.version, True)
    assert await last_seq(nc) == before
    with pytest.raises(NotFoundError):
        await member.delete_conversation("never-was")

    # The same session id starts a fresh history; the old messages cannot be redacted.
    fresh = await acme.say("s1", "new start")
    assert contents(await member.last_messages("s1", after_seq=fresh.seq)) == ["new start"]
    with pytest.raises(NotFoundError):
        await member.redact_message("s1", old.fields["message_ids"][1])


# Who may do what, and where --------------------------------------------------------------
async def test_organizations_are_kept_apart(acme: Acme, client: Client, nc: NATS) -> None:
    written = await acme.say("shared-name", "acme's secret plans")
    beta = await make_org(client, "Beta")
    await beta.say("shared-name", "beta's own")
    acme_message = written.fields["message_ids"][0]

    # Beta sees its own conversation under the same session id, and nothing of Acme's.
    seq = beta.member.last_seq
    assert contents(await beta.member.last_messages("shared-name", after_seq=seq)) == ["beta's own"]
    assert (await beta.member.list_messages("shared-name", org_id=acme.org_id)).items == []
    assert await beta.member.last_messages("shared-name", org_id=acme.org_id) == []
    found = await beta.member.search_messages("secret", agent_id=acme.agent_id)
    assert found == []
    assert (
        await beta.member.search_messages("plans", agent_id=acme.agent_id, org_id=acme.org_id) == []
    )

    before = await last_seq(nc)
    with pytest.raises(NotFoundError):  # Acme's agent, in Beta
        await beta.member.append_message("x", acme.agent_id, "user", "hi")
    with pytest.raises(NotFoundError):  # naming Acme
        await beta.member.append_message("x", acme.agent_id, "user", "hi", org_id=acme.org_id)
    with pytest.raises(NotFoundError):  # a user of Acme's speaking to Beta's agent
        await beta.member.append_message("x", beta.agent_id, "user", "hi", user_id=acme.user_id)
    with pytest.raises(NotFoundError):
        await beta.member.redact_message("shared-name", acme_message)
    with pytest.raises(NotFoundError):
        await beta.member.redact_message("shared-name", acme_message, org_id=acme.org_id)
    with pytest.raises(NotFoundError):
        await beta.member.delete_conversation("shared-name", org_id=acme.org_id)
    assert await last_seq(nc) == before

    # The service administrator names the organization.
    listed = await client.list_messages("shared-name", org_id=acme.org_id)
    assert contents(listed.items) == ["acme's secret plans"]
    await client.append_message(
        "shared-name", acme.agent_id, "user", "from admin", org_id=acme.org_id
    )
    assert contents(await acme.member.last_messages("shared-name", after_seq=client.last_seq)) == [
        "acme's secret plans",
        "from admin",
    ]


async def test_who_may_speak(acme: Acme, client: Client, nc: NATS) -> None:
    member = acme.member
    await acme.say("s1", "before")
    await member.archive_agent(acme.agent_id)
    with pytest.raises(ConflictError, match="archived"):
        await acme.say("s1", "while archived")
    await member.unarchive_agent(acme.agent_id)
    await acme.say("s1", "after")

    with pytest.raises(NotFoundError):
        await member.append_message("s1", "no-such-agent", "user", "hi")
    with pytest.raises(NotFoundError):
        await member.append_message("s1", acme.agent_id, "user", "hi", user_id="no-such-user")
    gone_user, _ = await as_user(client, acme.org_id, "gone@acme.example", ["member"])
    await client.delete_user(gone_user)
    with pytest.raises(NotFoundError):
        await member.append_message("s1", acme.agent_id, "user", "hi", user_id=gone_user)
    with pytest.raises(InvalidError, match="NUL"):
        await member.append_message("s1", acme.agent_id, "user", "a\x00b")

    # Another agent's messages in the same conversation stay when one agent is deleted.
    helper = str((await member.create_agent("Helper")).fields["agent_id"])
    await member.append_message("s1", helper, "assistant", "helper speaking")
    await client.delete_agent(acme.agent_id)
    with pytest.raises(NotFoundError):
        await acme.say("s1", "after deletion")
    left = await member.last_messages("s1", after_seq=client.last_seq)
    assert contents(left) == ["helper speaking"]


async def test_deleting_the_org_deletes_its_messages(acme: Acme, client: Client) -> None:
    await acme.say("s1", "soon gone")
    deleted = await client.delete_org(acme.org_id)
    listed = await client.list_messages("s1", org_id=acme.org_id, after_seq=deleted.seq)
    assert listed.items == []


# Nothing left on disk ---------------------------------------------------------------------
def file_traces(db: Path, needle: bytes) -> dict[str, int]:
    return {
        f.name: f.read_bytes().count(needle)
        for f in (Path(f"{db}{suffix}") for suffix in ("", "-wal", "-shm"))
        if f.exists()
    }


async def table_traces(store_url: str, needle: str) -> dict[str, int]:
    """Rows holding ``needle`` in any column (a tsvector's lexemes too), in every table of
    the store's schema."""
    conn = await asyncpg.connect(store_url)
    try:
        tables = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
        ]
        found = {}
        for table in tables:
            found[table] = await conn.fetchval(
                f"SELECT count(*) FROM {table} t WHERE t::text LIKE $1", f"%{needle}%"
            )
        return found
    finally:
        await conn.close()


async def test_a_redaction_leaves_no_trace_of_the_content(
    acme: Acme, service: Service, store_kind: str
) -> None:
    secret = secrets.token_hex(12)
    text = f"my card number is qzx{secret} keep it safe"
    # FTS5 may keep a term's first bytes as a prefix shared with the term before it, and a
    # stemmer may trim its end: look for the middle.
    needle = secret[3:-3]
    for n in range(200):  # pages and index segments around it
        await acme.say("s1", f"an ordinary message number {n}", f"and another one {n}")
    written = await acme.say("s1", text, "the message after it")
    await acme.say("s2", f"qzx{secret} said again elsewhere")
    member = acme.member
    assert contents(
        await member.search_messages(
            f"qzx{secret}", agent_id=acme.agent_id, after_seq=member.last_seq
        )
    )
    url = service.settings.store_url

    async def traces() -> int:
        if store_kind == "sqlite":
            return sum(file_traces(Path(url), needle.encode()).values())
        return sum((await table_traces(url, needle)).values())

    assert await traces() > 0, "the check sees the content while it is there"
    await member.redact_message("s1", written.fields["message_ids"][0])
    await member.delete_conversation("s2")
    await member.list_messages("s1", after_seq=member.last_seq)
    assert await traces() == 0
    assert await member.search_messages(f"qzx{secret}", agent_id=acme.agent_id) == []
    assert contents(await member.last_messages("s1", 1)) == ["the message after it"]


# Replay ----------------------------------------------------------------------------------
async def test_replay_equals_live(
    acme: Acme, client: Client, nc: NATS, admin_token: str, tmp_path: Path, service: Service
) -> None:
    member = acme.member
    beta = await make_org(client, "Beta")
    first = await acme.say("s1", "one", "two", "three", user_id=acme.user_id)
    await member.append_message(
        "s1", acme.agent_id, "assistant", "", tool_calls=[{"id": "c1"}], metadata={"k": [1]}
    )
    await member.redact_message("s1", first.fields["message_ids"][1], reason="why not")
    await acme.say("s2", "to be deleted")
    await member.delete_conversation("s2")
    await acme.say("s2", "fresh start")
    helper = str((await member.create_agent("Helper")).fields["agent_id"])
    await member.append_message("s1", helper, "assistant", "helper says")
    await client.delete_agent(helper)
    await beta.say("b1", "beta talks")
    gone = await make_org(client, "Gone")
    await gone.say("g1", "gone soon")
    await client.delete_org(gone.org_id)
    # A forgotten user's appends: their messages go, and what recognises a retry of them
    # stays, in a replay too, where they read as forgotten (it was dropped there).
    zed = await client.register_user(acme.org_id, "Zed", "zed@acme.example", "long-password-1")
    zed_id = str(zed.fields["user_id"])
    await acme.say("s3", "zed's words", user_id=zed_id, command_id="zed-turn-1")
    await client.forget_user(zed_id)
    await wait_caught_up(nc, admin_token)

    assert service.store is not None
    live = await dump_store(service.store)
    messages = rows(live, MESSAGES)
    assert sorted(m["content"] for m in messages.values()) == [
        "",
        "",
        "beta talks",
        "fresh start",
        "one",
        "three",
    ]
    (redaction,) = rows(live, MESSAGE_REDACTIONS).values()
    assert (redaction["reason"], redaction["message_id"]) == (
        "why not",
        first.fields["message_ids"][1],
    )

    replayed = await replay_into(nc, tmp_path / "replayed.db")
    for table in (MESSAGES, MESSAGE_REDACTIONS, MESSAGE_COMMANDS):
        assert replayed[table.name] == live[table.name], table.name


# A long conversation ---------------------------------------------------------------------
@pytest.mark.timeout(600)
async def test_a_conversation_of_100000_messages_pages_both_ways(acme: Acme) -> None:
    total, per_batch, in_flight = 100_000, 1_000, 4
    member = acme.member
    batches: list[list[str]] = [[] for _ in range(total // per_batch)]
    slots = asyncio.Semaphore(in_flight)

    async def append(b: int) -> int:
        texts = [
            {"role": "user", "content": f"message {b * per_batch + i}"} for i in range(per_batch)
        ]
        async with slots:
            written = await member.append_messages("long", acme.agent_id, texts)
        batches[b] = written.fields["message_ids"]
        return written.seq

    last = max(await asyncio.gather(*(append(b) for b in range(len(batches)))))
    await visible(member, "long", last)

    async def read_all(order: str) -> list[Message]:
        seen: list[Message] = []
        cursor = None
        while True:
            page = await member.list_messages("long", order=order, limit=500, cursor=cursor)
            seen += page.items
            cursor = page.next_cursor
            if cursor is None:
                return seen

    forward = await read_all("asc")
    ids = [m.message_id for m in forward]
    assert len(ids) == total
    assert set(ids) == {i for batch in batches for i in batch}, "every message exactly once"
    positions = [m.position for m in forward]
    assert all(a < b for a, b in itertools.pairwise(positions)), "in order"
    # Each batch is stored as one commit, its messages together and in the order sent.
    start = {batch[0]: batch for batch in batches}
    n = 0
    while n < total:
        batch = start[ids[n]]
        assert ids[n : n + per_batch] == batch
        n += per_batch

    backward = await read_all("desc")
    assert [m.message_id for m in backward] == ids[::-1]
    assert [m.message_id for m in await member.last_messages("long", 50)] == ids[-50:]


# History ---------------------------------------------------------------------------------
def history_contents(page: Any) -> list[tuple[str, bool]]:
    return [
        (event["content"], bool(event.get("hidden")))
        for item in page.items
        for event in item["events"]
        if event["type"] == "message.appended"
    ]


async def test_history_does_not_bring_back_what_was_redacted_or_deleted(acme: Acme) -> None:
    member = acme.member
    said = await acme.say("h1", "my card is 4111 1111", "and my name is Ann")
    card = said.fields["message_ids"][0]
    await acme.say("h2", "a conversation soon deleted")
    # Redacted right away: history waits for the projection, so it already hides it.
    await member.redact_message("h1", card)
    await member.delete_conversation("h2")

    h1 = await member.history("conversation", "h1")
    assert history_contents(h1) == [("", True), ("and my name is Ann", False)]
    assert [e["type"] for item in h1.items for e in item["events"]][-1] == "message.redacted"
    h2 = await member.history("conversation", "h2")
    assert history_contents(h2) == [("", True)]
    assert "4111" not in repr(h1)
    assert "soon deleted" not in repr(h2)
