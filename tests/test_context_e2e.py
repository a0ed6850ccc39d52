"""``context.assemble`` against the real service and a real nats-server, on each projection
store (``STORES``): the documented order of the sections, the budget kept exactly by the
documented counter (``agentmem.tokens``), the left-out list, the conversation's tail kept
whole, superseded, archived and expired memories never included, and organizations kept
apart (another organization's agent is not_found; its session, user and memories of the
same ids contribute nothing).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from agentmem import Client, InvalidError, NotFoundError, ranking
from agentmem.replies import AssembledContext

STORES = ("sqlite", "postgres")

PASSWORD = "long-enough-password"
T0 = 1_700_000_000_000  # a time in the past
SESSION = "chat-1"
QUERY = "peanuts allergy"


async def as_user(admin: Client, org_id: str, email: str, roles: list[Any]) -> Client:
    user = await admin.register_user(org_id, "Someone", email, PASSWORD, roles=roles)
    key = await admin.create_api_key("test", user_id=user.fields["user_id"])
    return admin.with_token(str(key.fields["token"]))


async def new_org(client: Client, name: str) -> tuple[str, Client]:
    org_id = str((await client.create_org(name)).fields["org_id"])
    return org_id, await as_user(client, org_id, f"member@{name.lower()}.example", ["member"])


async def furnish(api: Client, tag: str) -> dict[str, Any]:
    """An agent with a persona, blocks, working memory, memories and a conversation; every
    text carries ``tag`` so that another organization's can be told apart."""
    agent_id = str(
        (await api.create_agent(f"Helper {tag}", persona=f"I am a careful helper ({tag}).")).fields[
            "agent_id"
        ]
    )
    goals = await api.create_block("goals", f"Keep Ann safe ({tag}).", agent_id=agent_id)
    human = await api.create_block("human", f"Ann, a chef ({tag}).", user_id="ann")
    await api.put_working(SESSION, f"Ann asked about dinner ({tag})", key="dinner", priority=0.9)
    await api.put_working(SESSION, f"low priority note ({tag})", key="note", priority=0.1)
    allergy = await api.add_memory(f"Ann has a peanuts allergy ({tag})", user_id="ann")
    await api.add_memory(f"Ann likes peanuts sauce, allergy or not ({tag})", user_id="ann")
    turns = [
        {"role": "user", "content": f"Hello, it is Ann ({tag})."},
        {"role": "assistant", "content": f"Hello Ann, how can I help ({tag})?"},
        {"role": "user", "content": f"Can I eat satay? ({tag})"},
    ]
    await api.append_messages(SESSION, agent_id, turns)
    return {
        "agent_id": agent_id,
        "blocks": [goals.fields["block_id"], human.fields["block_id"]],
        "allergy": allergy.fields["memory_id"],
    }


async def assemble(api: Client, agent_id: str, max_tokens: int, **fields: Any) -> AssembledContext:
    return await api.assemble_context(
        agent_id,
        QUERY,
        max_tokens,
        user_id="ann",
        session_id=SESSION,
        after_seq=api.last_seq,
        **fields,
    )


def sections(context: AssembledContext) -> list[str]:
    return [item.section for item in context.items]


async def test_everything_in_order_when_it_fits(client: Client) -> None:
    _, api = await new_org(client, "Acme")
    made = await furnish(api, "acme")
    context = await assemble(api, made["agent_id"], 100_000)
    assert sections(context) == [
        "persona",
        "block",
        "block",
        "working",
        "working",
        "memory",
        "memory",
        "message",
        "message",
        "message",
    ]
    assert context.left_out == []
    persona, goals, human = context.items[:3]
    assert (persona.id, persona.type, persona.text) == (
        made["agent_id"],
        "persona",
        "I am a careful helper (acme).",
    )
    assert [(b.id, b.label, b.type) for b in (goals, human)] == [
        (made["blocks"][0], "goals", "core"),
        (made["blocks"][1], "human", "core"),
    ]
    assert [w.id for w in context.items[3:5]] == ["dinner", "note"]  # by priority
    memories = context.items[5:7]
    assert {m.id for m in memories} >= {made["allergy"]}
    assert all(m.type == "semantic" and m.valid_from > 0 and m.score is not None for m in memories)
    assert memories[0].score is not None
    assert memories[1].score is not None
    assert memories[0].score >= memories[1].score  # memory.search's order
    tail = context.items[7:]
    assert [m.type for m in tail] == ["user", "assistant", "user"]  # oldest first
    assert [m.position for m in tail] == sorted(m.position for m in tail if m.position is not None)
    assert tail[-1].text == "Can I eat satay? (acme)"
    # Each item's tokens is the documented count, ceil(characters / 4), and they add up.
    for item in context.items:
        assert item.tokens == math.ceil(len(item.text) / 4)
        assert item.created_at > 0
    assert context.tokens == sum(item.tokens for item in context.items)
    assert (context.counter, context.max_tokens) == ("chars4", 100_000)


async def test_a_users_block_attached_to_the_agent_comes_once(client: Client) -> None:
    _, api = await new_org(client, "Shared")
    made = await furnish(api, "shared")
    human = made["blocks"][1]  # Ann's block, now attached to the agent too
    await api.attach_block(human, made["agent_id"])
    context = await assemble(api, made["agent_id"], 100_000)
    blocks = [item.id for item in context.items if item.section == "block"]
    assert sorted(blocks) == sorted(made["blocks"]), blocks
    assert context.tokens == sum(item.tokens for item in context.items)


async def test_the_budget_is_kept_exactly_and_what_is_left_out_is_listed(client: Client) -> None:
    _, api = await new_org(client, "Acme")
    made = await furnish(api, "acme")
    everything = await assemble(api, made["agent_id"], 100_000)
    total = everything.tokens
    exact = await assemble(api, made["agent_id"], total)
    assert (exact.tokens, exact.left_out) == (total, [])
    # One token short: the last thing considered, the oldest message, does not fit.
    short = await assemble(api, made["agent_id"], total - 1)
    oldest = everything.items[7]
    assert [(o.section, o.id, o.tokens) for o in short.left_out] == [
        ("message", oldest.id, oldest.tokens)
    ]
    assert short.tokens == total - oldest.tokens <= total - 1
    # Just the persona and the first block: everything after them is left out, in order.
    first_two = everything.items[0].tokens + everything.items[1].tokens
    small = await assemble(api, made["agent_id"], first_two)
    assert [i.id for i in small.items] == [i.id for i in everything.items[:2]]
    assert small.tokens == first_two
    considered = everything.items[2:7] + everything.items[7:][::-1]  # the tail newest first
    assert [(o.section, o.id) for o in small.left_out] == [(i.section, i.id) for i in considered]
    # A budget of nothing: nothing, and everything left out.
    none = await assemble(api, made["agent_id"], 0)
    assert (none.items, none.tokens, len(none.left_out)) == ([], 0, len(everything.items))


async def test_the_tail_ends_at_the_first_message_that_does_not_fit(client: Client) -> None:
    _, api = await new_org(client, "Acme")
    agent_id = str((await api.create_agent("Plain")).fields["agent_id"])
    turns = [
        {"role": "user", "content": "a short one"},
        {"role": "assistant", "content": "a much longer answer " * 20},
        {"role": "user", "content": "short again"},
    ]
    await api.append_messages(SESSION, agent_id, turns)
    newest = math.ceil(len("short again") / 4)
    oldest = math.ceil(len("a short one") / 4)
    # Room for the newest and the oldest, not for the long one between: no hole in the tail.
    context = await assemble(api, agent_id, newest + oldest)
    assert [i.text for i in context.items] == ["short again"]
    assert [o.section for o in context.left_out] == ["message", "message"]
    assert context.left_out[1].tokens == oldest


async def test_the_word_counter(client: Client) -> None:
    _, api = await new_org(client, "Acme")
    made = await furnish(api, "acme")
    context = await assemble(api, made["agent_id"], 100_000, counter="words")
    assert context.counter == "words"
    persona = context.items[0]
    # "I am a careful helper (acme)." = I, am, a, careful, helper, (, acme, ), .
    assert persona.tokens == 9
    assert context.tokens == sum(item.tokens for item in context.items)


async def test_superseded_archived_and_expired_memories_are_never_included(client: Client) -> None:
    _, api = await new_org(client, "Acme")
    agent_id = str((await api.create_agent("Plain")).fields["agent_id"])
    old = await api.add_memory("Ann has a peanuts allergy, mild", user_id="ann")
    new = await api.supersede_memory(old.fields["memory_id"], "Ann has a severe peanuts allergy")
    await api.add_memory("Ann had a peanuts allergy test today", user_id="ann", expires_at=T0)
    archived = await api.add_memory("Ann's peanuts allergy card", user_id="ann")
    await api.archive_memory(archived.fields["memory_id"])
    context = await assemble(api, agent_id, 100_000)
    assert [(i.section, i.id) for i in context.items] == [("memory", new.fields["superseded_by"])]
    assert context.left_out == []


async def test_another_organization_contributes_nothing(client: Client) -> None:
    acme_id, acme = await new_org(client, "Acme")
    globex_id, globex = await new_org(client, "Globex")
    ours = await furnish(acme, "acme")
    theirs = await furnish(globex, "globex")  # the same user, session and block labels
    acme.last_seq = globex.last_seq = max(acme.last_seq, globex.last_seq)
    context = await assemble(acme, ours["agent_id"], 100_000)
    texts = " ".join(item.text for item in context.items)
    assert "acme" in texts
    assert "globex" not in texts
    assert theirs["allergy"] not in {item.id for item in context.items}
    assert not set(theirs["blocks"]) & {item.id for item in context.items}
    # Their agent, asked for by one of ours: as a missing one.
    with pytest.raises(NotFoundError):
        await assemble(acme, theirs["agent_id"], 100_000)
    # Their organization named by one of ours: not_found, as for every query.
    with pytest.raises(NotFoundError):
        await assemble(acme, theirs["agent_id"], 100_000, org_id=globex_id)
    # The service administrator may read in any organization, only within it.
    admin_view = await assemble(client, theirs["agent_id"], 100_000, org_id=globex_id)
    assert "globex" in " ".join(i.text for i in admin_view.items)
    assert "acme" not in " ".join(i.text for i in admin_view.items)
    with pytest.raises(NotFoundError):
        await assemble(client, ours["agent_id"], 100_000, org_id=globex_id)
    assert acme_id != globex_id


async def test_bad_input_is_refused(client: Client) -> None:
    _, api = await new_org(client, "Acme")
    agent_id = str((await api.create_agent("Plain")).fields["agent_id"])
    with pytest.raises(InvalidError):
        await api.assemble_context(agent_id, QUERY, -1)
    with pytest.raises(InvalidError):
        await api.assemble_context(agent_id, QUERY, 100, counter="tiktoken")
    with pytest.raises(InvalidError):
        await api.assemble_context(agent_id, "", 100)
    with pytest.raises(NotFoundError):
        await api.assemble_context("no-such-agent", QUERY, 100)


async def test_memories_are_found_by_meaning_above_the_relevance_floor(client: Client) -> None:
    _, api = await new_org(client, "Acme")
    agent_id = str((await api.create_agent("Plain")).fields["agent_id"])
    peanuts = await api.add_memory("Ann is allergic to peanuts", user_id="ann")
    await api.add_memory("The deploy pipeline runs every Friday afternoon", user_id="ann")
    await api.add_memory("Bob prefers window seats on long flights", user_id="ann")
    seq = api.last_seq
    question = "nut allergy"  # no word (stem) in common with the peanut fact
    found = await api.assemble_context(agent_id, question, 1_000, user_id="ann", after_seq=seq)
    memories = [i for i in found.items if i.section == "memory"]
    assert memories[0].id == peanuts.fields["memory_id"]
    assert found.memory_search["mode"] == "hybrid"  # the default
    assert all(m.score is not None and m.score >= ranking.FLOOR["hybrid"] for m in memories)
    # By words alone the peanut fact is not found.
    text = await api.assemble_context(agent_id, question, 1_000, user_id="ann", mode="text")
    assert peanuts.fields["memory_id"] not in [i.id for i in text.items]
    # A floor no memory reaches: none, rather than the closest junk.
    floored = await api.assemble_context(agent_id, question, 1_000, user_id="ann", min_score=1.0)
    assert [i for i in floored.items if i.section == "memory"] == []


async def test_the_valid_facts_about_the_entities_the_query_names(client: Client) -> None:
    _, api = await new_org(client, "Acme")
    agent_id = str((await api.create_agent("Helper")).fields["agent_id"])
    ann = str(
        (await api.create_entity("person", "Ann Lee", aliases=["Ann"], user_id="ann")).fields[
            "entity_id"
        ]
    )
    paris = str((await api.create_entity("place", "Paris")).fields["entity_id"])
    berlin = str((await api.create_entity("place", "Berlin")).fields["entity_id"])
    await api.assert_relation(ann, "lives_in", paris, valid_from=T0, fact="Ann lives in Paris")
    await api.assert_relation(
        ann, "lives_in", berlin, valid_from=T0 + 1, fact="Ann moved to Berlin"
    )
    # Another user's Ann, and a fact about her: never in ann's context.
    other = str((await api.create_entity("person", "Ann", user_id="bob")).fields["entity_id"])
    await api.assert_relation(other, "likes", paris, valid_from=T0, fact="Bob's Ann likes tea")
    await api.append_message(SESSION, agent_id, "user", "Hello")
    context = await api.assemble_context(
        agent_id,
        "Where does Ann live now?",
        10_000,
        user_id="ann",
        session_id=SESSION,
        after_seq=api.last_seq,
    )
    assert sections(context) == ["fact", "message"]
    [fact] = [item for item in context.items if item.section == "fact"]
    assert (fact.type, fact.text, fact.score, fact.valid_to) == (
        "lives_in",
        "Ann moved to Berlin",
        1.0,
        None,
    )
    # Named by a place: the same fact, once; no user: only the organization's own entities.
    by_place = await api.assemble_context(agent_id, "news from berlin", 10_000, user_id="ann")
    assert [i.text for i in by_place.items if i.section == "fact"] == ["Ann moved to Berlin"]
    # Without a user, or for another: Berlin is the organization's, but ann's facts about it
    # are hers alone.
    no_user = await api.assemble_context(agent_id, "Ann in Berlin? Paris?", 10_000)
    assert [i for i in no_user.items if i.section == "fact"] == []
    bob = await api.assemble_context(agent_id, "Ann in Berlin? Paris?", 10_000, user_id="bob")
    assert [i.text for i in bob.items if i.section == "fact"] == ["Bob's Ann likes tea"]
    limited = await api.assemble_context(agent_id, "Ann", 10_000, user_id="ann", facts=1)
    assert len([i for i in limited.items if i.section == "fact"]) == 1
