"""Semantic and hybrid ``memory.search`` over NATS, against the real service, the real default
embedder (offline, from its wheel) and each store: a paraphrase found by meaning, the three
modes and their score components, a floor that answers "nothing confident" instead of junk,
the vectors of a deleted memory gone from the vector table, unchanged content not embedded
again, filters and organizations kept apart on the vector side, and replay equal to live.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, ranking
from agentmem.projections import vectors
from agentmem.projections.vectors import MEMORY_VECTORS
from agentmem.service import Service
from tests.realparts import dump_store, replay_into, wait_caught_up

STORES = ("sqlite", "postgres")
PASSWORD = "long-enough-password"

FACTS = [
    "Ann is allergic to peanuts",
    "The deploy pipeline runs every Friday afternoon",
    "Bob prefers window seats on long flights",
    "The staging database password rotates monthly",
]


@pytest.fixture
async def acme(client: Client) -> tuple[str, Client]:
    org_id = str((await client.create_org("Acme")).fields["org_id"])
    user = await client.register_user(org_id, "M", "m@acme.example", PASSWORD, roles=["member"])
    key = await client.create_api_key("test", user_id=user.fields["user_id"])
    return org_id, client.with_token(str(key.fields["token"]))


async def add_facts(api: Client, user_id: str = "ann") -> dict[str, str]:
    ids = {}
    for fact in FACTS:
        ids[fact] = str((await api.add_memory(fact, user_id=user_id)).fields["memory_id"])
    return ids


async def vector_rows(service: Service) -> list[dict[str, Any]]:
    return await service.store.fetch_all(
        "SELECT memory_id, state, content_hash, vector FROM memory_vectors ORDER BY memory_id"
    )


async def test_a_paraphrase_is_found_by_meaning_not_by_words(acme: tuple[str, Client]) -> None:
    _, api = acme
    ids = await add_facts(api)
    seq = api.last_seq
    question = "nut allergy"  # no word (stem) in common with the peanut fact
    text = await api.search_memories_result(question, user_id="ann", mode="text", after_seq=seq)
    assert ids[FACTS[0]] not in [m.memory_id for m in text.items]
    found = await api.search_memories_result(question, user_id="ann", mode="vector")
    assert found.items[0].memory_id == ids[FACTS[0]]
    assert found.mode == "vector"
    assert found.model == vectors.PROJECTION.model
    best = found.items[0]
    assert best.scores is not None
    assert best.scores.vector is not None
    assert best.scores.text is None
    assert best.score == pytest.approx(best.scores.vector)
    hybrid = await api.search_memories_result(question, user_id="ann")
    assert hybrid.mode == "hybrid"
    assert hybrid.items[0].memory_id == ids[FACTS[0]]


async def test_hybrid_scores_carry_both_components(acme: tuple[str, Client]) -> None:
    _, api = acme
    ids = await add_facts(api)
    found = await api.search_memories("peanuts allergy", user_id="ann", after_seq=api.last_seq)
    top = found[0]
    assert top.memory_id == ids[FACTS[0]]
    assert top.scores is not None
    assert top.scores.text == pytest.approx(0.5)  # one word of two
    assert top.scores.vector is not None
    assert top.scores.vector > 0.3
    text_weight, vector_weight = ranking.WEIGHTS["hybrid"]
    fused = (text_weight * 0.5 + vector_weight * top.scores.vector) / (text_weight + vector_weight)
    assert top.scores.relevance == pytest.approx(fused)
    assert [s.score for s in found] == sorted((s.score for s in found), reverse=True)


async def test_nothing_confident_is_said_instead_of_returning_junk(
    acme: tuple[str, Client],
) -> None:
    _, api = acme
    await add_facts(api)
    seq = api.last_seq
    found = await api.search_memories_result(
        "quantum chromodynamics lattice gauge", user_id="ann", after_seq=seq
    )
    assert found.confident is False
    bar = ranking.CONFIDENT["hybrid"]
    assert all(m.scores is not None and m.scores.relevance < bar for m in found.items)
    # min_score 0: every memory of the scope comes back, ranked, still not confident.
    everything = await api.search_memories_result(
        "quantum chromodynamics lattice gauge", user_id="ann", min_score=0.0
    )
    assert len(everything.items) == len(FACTS)
    assert everything.confident is False
    sure = await api.search_memories_result("peanut allergy", user_id="ann", mode="vector")
    assert sure.confident is True


async def test_the_vector_side_keeps_scopes_states_and_organizations_apart(
    client: Client, acme: tuple[str, Client]
) -> None:
    org_id, api = acme
    ids = await add_facts(api, "ann")
    bob_ids = await add_facts(api, "bob")
    other = str((await client.create_org("Other")).fields["org_id"])
    await client.add_memory(FACTS[0], org_id=other, user_id="ann")
    seq = max(api.last_seq, client.last_seq)
    found = await api.search_memories(
        "peanut allergy", user_id="ann", mode="vector", min_score=0, after_seq=seq
    )
    assert {m.memory_id for m in found} == set(ids.values())
    assert {m.org_id for m in found} == {org_id}
    await api.archive_memory(bob_ids[FACTS[0]])
    live = await api.search_memories(
        "peanut allergy", user_id="bob", mode="vector", after_seq=api.last_seq
    )
    assert bob_ids[FACTS[0]] not in [m.memory_id for m in live]
    archived = await api.search_memories(
        "peanut allergy", user_id="bob", mode="vector", states=["archived"]
    )
    assert [m.memory_id for m in archived] == [bob_ids[FACTS[0]]]


async def test_a_deleted_memory_leaves_the_vector_table(
    service: Service, acme: tuple[str, Client]
) -> None:
    _, api = acme
    ids = await add_facts(api)
    peanuts = ids[FACTS[0]]
    assert await api.search_memories("peanut allergy", user_id="ann", after_seq=api.last_seq)
    await api.delete_memory(peanuts)
    found = await api.search_memories(
        "peanut allergy", user_id="ann", mode="vector", min_score=0, after_seq=api.last_seq
    )
    assert peanuts not in [m.memory_id for m in found]
    assert len(found) == len(FACTS) - 1
    rows = {r["memory_id"]: r for r in await vector_rows(service)}
    assert rows[peanuts]["state"] == "deleted"
    assert bytes(rows[peanuts]["vector"]) == b""
    assert rows[peanuts]["content_hash"] == ""
    assert all(len(bytes(r["vector"])) == 256 * 4 for m, r in rows.items() if m != peanuts)


async def test_unchanged_content_is_not_embedded_again(
    service: Service, acme: tuple[str, Client]
) -> None:
    _, api = acme
    ids = await add_facts(api)
    await api.search_memories("peanuts", user_id="ann", after_seq=api.last_seq)
    before = vectors.PROJECTION.embedded
    # The same text in another scope, and an update that changes only tags.
    await api.add_memory(FACTS[1], user_id="carl")
    await api.update_memory(ids[FACTS[2]], tags=["travel"])
    found = await api.search_memories(
        "Friday deploy", user_id="carl", mode="vector", after_seq=api.last_seq
    )
    assert [m.content for m in found][:1] == [FACTS[1]]
    assert vectors.PROJECTION.embedded == before
    await api.update_memory(ids[FACTS[2]], content="Bob prefers aisle seats")
    await api.search_memories("seat", user_id="ann", after_seq=api.last_seq)
    assert vectors.PROJECTION.embedded == before + 1


async def test_replay_rebuilds_the_same_vectors(
    service: Service, nc: NATS, admin_token: str, acme: tuple[str, Client], tmp_path: Path
) -> None:
    _, api = acme
    ids = await add_facts(api)
    await api.update_memory(ids[FACTS[1]], content="The deploy pipeline runs on Mondays")
    await api.delete_memory(ids[FACTS[3]])
    await wait_caught_up(nc, admin_token)
    live = (await dump_store(service.store))[MEMORY_VECTORS.name]
    replayed = (await replay_into(nc, tmp_path / "replayed.db"))[MEMORY_VECTORS.name]
    assert live == replayed
    assert len(live) == len(FACTS)


async def test_every_filter_of_memory_list_holds_on_the_vector_side(
    acme: tuple[str, Client],
) -> None:
    _, api = acme
    day, t0 = 86_400_000, 1_700_000_000_000
    food = await api.add_memory(
        "Ann is allergic to peanuts", user_id="ann", metadata={"topic": "health"}, tags=["a"]
    )
    await api.add_memory(
        "Ann avoids peanut butter cookies", user_id="ann", metadata={"topic": "snacks"}
    )
    old = await api.add_memory("Ann lives in Paris", user_id="ann", valid_from=t0)
    new = await api.supersede_memory(
        old.fields["memory_id"], "Ann lives in Berlin", valid_from=t0 + 10 * day
    )
    seq = api.last_seq
    by_metadata = await api.search_memories(
        "nut allergy",
        user_id="ann",
        mode="vector",
        metadata_filter={"topic": {"eq": "health"}},
        after_seq=seq,
    )
    assert [m.memory_id for m in by_metadata] == [food.fields["memory_id"]]
    by_tag = await api.search_memories("nut allergy", user_id="ann", mode="vector", tags_any=["a"])
    assert [m.memory_id for m in by_tag] == [food.fields["memory_id"]]
    where = "which city is Ann's home"
    then = await api.search_memories(
        where, user_id="ann", mode="vector", as_of=t0 + day, min_score=0.0
    )
    assert [m.memory_id for m in then] == [old.fields["memory_id"]]
    now = await api.search_memories(where, user_id="ann", mode="vector", min_score=0.0)
    assert new.fields["superseded_by"] in [m.memory_id for m in now]
    assert old.fields["memory_id"] not in [m.memory_id for m in now]


async def test_known_at_finds_a_memory_superseded_or_archived_since_in_every_mode(
    acme: tuple[str, Client],
) -> None:
    """What was known then is chosen by the versions known then, in every mode: the vector
    side must not filter again by the index's state and valid time, which are today's."""
    _, api = acme
    t0 = 1_700_000_000_000
    paris = await api.add_memory("Ann lives in Paris", user_id="ann", valid_from=t0)
    paris_id = str(paris.fields["memory_id"])
    tea = await api.add_memory("Ann drinks green tea", user_id="ann")
    known = api.last_seq
    await api.supersede_memory(paris_id, "Ann lives in Berlin", valid_from=t0 + 10 * 86_400_000)
    await api.archive_memory(str(tea.fields["memory_id"]))
    for mode in ("vector", "hybrid", "text"):
        then = await api.search_memories(
            "Ann lives in Paris",
            user_id="ann",
            mode=mode,
            known_at_seq=known,
            min_score=0.0,
            after_seq=api.last_seq,
        )
        found = {m.memory_id: m.state for m in then}
        assert found.get(paris_id) == "live", (mode, found)
        if mode != "text":  # no word of the question is in it
            assert found.get(str(tea.fields["memory_id"])) == "live", (mode, found)
        # As known then, Paris was true the day after t0, with no end.
        day_after = await api.search_memories(
            "Ann lives in Paris",
            user_id="ann",
            mode=mode,
            known_at_seq=known,
            as_of=t0 + 86_400_000,
            min_score=0.0,
        )
        assert paris_id in [m.memory_id for m in day_after], mode
    now = await api.search_memories("Ann lives in Paris", user_id="ann", mode="vector")
    assert paris_id not in [m.memory_id for m in now]


async def test_known_at_scores_the_content_known_then(
    acme: tuple[str, Client], service: Service
) -> None:
    """With ``known_at_seq`` the vector side scores the version known then with that
    version's own vector: a memory whose content changed since is found by its old words'
    meaning, not its new ones; a deleted memory leaves no past vector."""
    _, api = acme
    added = await api.add_memory("Ann is allergic to peanuts", user_id="ann")
    memory_id = str(added.fields["memory_id"])
    await api.add_memory("The deploy pipeline runs every Friday afternoon", user_id="ann")
    before = api.last_seq
    await api.update_memory(memory_id, content="Ann collects antique clocks")
    seq = api.last_seq
    question = "nut allergy"
    then = await api.search_memories_result(
        question, user_id="ann", mode="vector", known_at_seq=before, after_seq=seq
    )
    assert then.items[0].memory_id == memory_id
    assert then.items[0].content == "Ann is allergic to peanuts"
    assert then.confident is True
    hybrid_then = await api.search_memories(question, user_id="ann", known_at_seq=before)
    assert hybrid_then[0].memory_id == memory_id
    now = await api.search_memories(question, user_id="ann", mode="vector", min_score=0.0)
    now_vector = {m.memory_id: m.scores.vector for m in now if m.scores}
    assert then.items[0].scores is not None
    assert then.items[0].scores.vector is not None
    assert (now_vector[memory_id] or 0.0) < then.items[0].scores.vector - 0.2
    clocks = await api.search_memories("old timepieces", user_id="ann", mode="vector")
    assert clocks[0].memory_id == memory_id
    clocks_then = await api.search_memories(
        "old timepieces", user_id="ann", mode="vector", known_at_seq=before, min_score=0.0
    )
    vector_then = {m.memory_id: m.scores.vector for m in clocks_then if m.scores}
    assert vector_then[memory_id] == pytest.approx(
        min(m.scores.vector for m in clocks_then if m.scores and m.scores.vector is not None)
    ), "scored as the peanut fact it was, not as the clocks it is"
    past = "SELECT memory_id FROM memory_past_vectors"
    assert [r["memory_id"] for r in await service.store.fetch_all(past)] == [memory_id]
    await api.delete_memory(memory_id)
    await api.search_memories("x", user_id="ann", mode="vector", after_seq=api.last_seq)
    assert await service.store.fetch_all(past) == []
