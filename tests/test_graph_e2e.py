"""The knowledge graph over NATS, against the real service and a real nats-server, on each
projection store (``STORES``): entities and their resolution, relations with valid and
system time, single-valued predicates, retraction, merge and unmerge, walks, associations
between memories, deletion, organizations kept apart, and replay.

The complaints about graph memory (issue 14) are one test each, named for what they check:
``test_a_newer_fact_invalidates_the_old_edge_and_never_deletes_it``,
``test_a_fact_about_one_person_never_invalidates_a_fact_about_another``,
``test_the_same_person_is_not_stored_twice`` (and ten concurrent creates),
``test_a_deleted_scope_leaves_no_entity_relation_or_association_behind``,
``test_another_organizations_graph_is_not_found_on_every_subject``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from agentmem import (
    Client,
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    subjects,
)
from agentmem.consumers.aggregates import AggregateCache
from agentmem.domain import entities
from agentmem.projections.graph import TABLES
from agentmem.service import Service
from tests.realparts import dump_store, replay_into, wait_caught_up

STORES = ("sqlite", "postgres")

PASSWORD = "long-enough-password"
DAY = 24 * 3600 * 1000
T0 = 1_700_000_000_000  # a fixed valid time, in the past


async def last_seq(nc: NATS) -> int:
    info = await nc.jetstream().stream_info(subjects.STREAM_NAME)
    return int(info.state.last_seq)


async def as_user(admin: Client, org_id: str, email: str, roles: list[Any]) -> Client:
    user = await admin.register_user(org_id, "Someone", email, PASSWORD, roles=roles)
    key = await admin.create_api_key("test", user_id=user.fields["user_id"])
    return admin.with_token(str(key.fields["token"]))


@pytest.fixture
async def acme(client: Client) -> tuple[str, Client]:
    """A fresh organization and a client of one of its members."""
    org_id = str((await client.create_org("Acme")).fields["org_id"])
    return org_id, await as_user(client, org_id, "member@acme.example", ["member"])


async def entity(api: Client, name: str, entity_type: str = "person", **fields: Any) -> str:
    return str((await api.create_entity(entity_type, name, **fields)).fields["entity_id"])


async def objects_of(api: Client, entity_id: str, predicate: str, **at: Any) -> list[str]:
    facts = await api.graph_facts(entity_id, after_seq=api.last_seq, **at)
    return sorted(
        f.object_name for f in facts.items if f.predicate == predicate and f.subject_id == entity_id
    )


# Entities and resolution -------------------------------------------------------------------
async def test_create_get_rename_alias_attributes(acme: tuple[str, Client]) -> None:
    org_id, api = acme
    made = await api.create_entity(
        "person", "Ann Lee", aliases=["Annie"], attributes={"born": 1990}, user_id="u1"
    )
    assert made.event == "entity.created"
    assert made.fields["deduplicated"] is False
    ann = made.fields["entity_id"]
    await api.rename_entity(ann, "Ann Smith")
    await api.add_entity_alias(ann, "A. Smith")
    await api.remove_entity_alias(ann, "Annie")
    await api.set_entity_attributes(ann, {"born": None, "city": "Paris"})
    got = await api.get_entity(ann, after_seq=api.last_seq)
    assert (got.org_id, got.name, got.entity_type, got.user_id) == (
        org_id,
        "Ann Smith",
        "person",
        "u1",
    )
    assert sorted(got.aliases) == ["A. Smith", "Ann Lee"]  # the old name stays an alias
    assert got.attributes == {"city": "Paris"}
    with pytest.raises(NotFoundError):
        await api.remove_entity_alias(ann, "never")
    listed = await api.list_entities(name_prefix="ann", after_seq=api.last_seq)
    assert [e.entity_id for e in listed.items] == [ann]
    assert (await api.list_entities(entity_type="place")).items == []


async def test_the_same_person_is_not_stored_twice(acme: tuple[str, Client]) -> None:
    _, api = acme
    ann = await entity(api, "Ann Lee")
    again = await api.create_entity("person", "  ann   LEE ")
    assert (again.fields["entity_id"], again.fields["deduplicated"]) == (ann, True)
    await api.add_entity_alias(ann, "Annie")
    await api.get_entity(ann, after_seq=api.last_seq)
    by_alias = await api.create_entity("person", "annie")
    assert (by_alias.fields["entity_id"], by_alias.fields["matched_by"]) == (ann, "alias")
    # Another type or another scope is another entity.
    assert await entity(api, "Ann Lee", "organization") != ann
    assert await entity(api, "Ann Lee", user_id="u2") != ann


async def test_a_retried_create_is_answered_with_its_first_outcome(
    acme: tuple[str, Client], nc: NATS
) -> None:
    """A create whose reply was lost, sent again with its command id once the tables hold
    the entity it made: answered as created (its first outcome), not as a match of its own
    name; nothing appended. Another command naming that entity is a match."""
    _, api = acme
    first = await api.create_entity("person", "Cy Dee", command_id="create-cy")
    assert (first.fields["deduplicated"], first.fields["matched_by"]) == (False, "created")
    await api.get_entity(str(first.fields["entity_id"]), after_seq=api.last_seq)
    before = await last_seq(nc)
    again = await api.create_entity("person", "Cy Dee", command_id="create-cy")
    assert (again.fields["entity_id"], again.version) == (first.fields["entity_id"], first.version)
    assert (again.fields["deduplicated"], again.fields["matched_by"]) == (False, "created")
    other = await api.create_entity("person", "cy dee", command_id="create-cy-again")
    assert (other.fields["deduplicated"], other.fields["matched_by"]) == (True, "name")
    await api.add_entity_alias(str(first.fields["entity_id"]), "Cyd")
    await api.get_entity(str(first.fields["entity_id"]), after_seq=api.last_seq)
    by_alias = await api.create_entity("person", "cyd", command_id="create-cyd")
    assert (by_alias.fields["deduplicated"], by_alias.fields["matched_by"]) == (True, "alias")
    assert await last_seq(nc) == before + 1  # the alias only


@pytest.mark.parametrize("how", ["alias at creation", "alias added", "renamed"])
async def test_a_create_right_after_an_alias_or_a_rename_finds_that_entity(
    acme: tuple[str, Client], nc: NATS, how: str
) -> None:
    """A create sent as soon as the previous command is answered, with no read in between
    (a command cannot send ``after_seq``), finds the name or alias that command gave: an
    alias given at creation, an alias added, a new name. It appends nothing."""
    _, api = acme
    for i in range(20):
        if how == "alias at creation":
            first = await entity(api, f"Ann Lee {i}", aliases=[f"Annie {i}"])
            again, matched_by = f"annie {i}", "alias"
        elif how == "alias added":
            first = await entity(api, f"Ann Lee {i}")
            await api.add_entity_alias(first, f"Annie {i}")
            again, matched_by = f"ANNIE {i}", "alias"
        else:
            first = await entity(api, f"Ann Lee {i}")
            await api.rename_entity(first, f"Ann Smith {i}")
            again, matched_by = f"ann smith {i}", "name"
        before = await last_seq(nc)
        found = await api.create_entity("person", again)
        assert (found.fields["entity_id"], found.fields["deduplicated"]) == (first, True)
        assert found.fields["matched_by"] == matched_by
        assert await last_seq(nc) == before


async def test_ten_concurrent_creates_of_one_name_give_one_entity(
    acme: tuple[str, Client], nc: NATS
) -> None:
    _, api = acme
    before = await last_seq(nc)
    made = await asyncio.gather(*(api.create_entity("person", "Bo Chen") for _ in range(10)))
    assert len({m.fields["entity_id"] for m in made}) == 1
    assert sum(not m.fields["deduplicated"] for m in made) == 1
    assert await last_seq(nc) == before + 1


async def test_entities_of_the_longest_names_are_paged_through(
    acme: tuple[str, Client],
) -> None:
    """A page's cursor carries the last entity's normalised name: at 200 characters of 4
    bytes (or a character that NFKC makes 18), it must still be taken back."""
    _, api = acme
    names = ["\U0001f600" * 200, "\U0001f601" * 200, "\ufdfa" * 200]
    made = {await entity(api, name, "concept") for name in names}
    seen: list[str] = []
    cursor = None
    for _ in range(len(names) + 1):
        page = await api.list_entities(entity_type="concept", limit=1, cursor=cursor)
        seen += [e.entity_id for e in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(made)


async def test_entity_reads_by_system_time(acme: tuple[str, Client]) -> None:
    _, api = acme
    before = api.last_seq
    ann_made = await api.create_entity("person", "Ann Lee")
    ann = str(ann_made.fields["entity_id"])
    between = api.last_seq
    await asyncio.sleep(0.01)
    between_ms = (await api.get_entity(ann, after_seq=api.last_seq)).created_at
    await asyncio.sleep(0.01)
    bob = await entity(api, "Ann Leigh")
    # get: not known before its creation, known after, by sequence or by time.
    with pytest.raises(NotFoundError):
        await api.get_entity_at(ann, known_at_seq=before)
    assert (await api.get_entity_at(ann, known_at_seq=between)).name == "Ann Lee"
    assert (await api.get_entity_at(ann, known_at=between_ms)).name == "Ann Lee"
    with pytest.raises(NotFoundError):
        await api.get_entity_at(bob, known_at=between_ms)
    # list and resolve: only what was known then.
    listed = await api.list_entities(name_prefix="Ann", known_at_seq=between)
    assert [e.entity_id for e in listed.items] == [ann]
    listed = await api.list_entities(name_prefix="Ann", known_at=between_ms)
    assert [e.entity_id for e in listed.items] == [ann]
    assert len((await api.list_entities(name_prefix="Ann")).items) == 2
    then = await api.resolve_entity("Ann Leigh", known_at_seq=between)
    assert [c.entity_id for c in then.candidates] == [ann]  # similar, not yet Ann Leigh
    assert (await api.resolve_entity("Ann Leigh")).entity_id == bob
    with pytest.raises(InvalidError):
        await api.list_entities(known_at=1, known_at_seq=1)


async def test_system_time_reads_say_what_was_known_then(acme: tuple[str, Client]) -> None:
    """A rename, an alias, attributes and a merge after a point leave what a read at that
    point answers as it was then (issue 14: not the entity as it is now)."""
    _, api = acme
    ann = await entity(api, "Ann Lee", aliases=["Annie"], attributes={"city": "Oslo"})
    bob = await entity(api, "Bob")
    first = api.last_seq
    first_ms = (await api.get_entity(bob, after_seq=first)).updated_at
    await asyncio.sleep(0.01)
    await api.rename_entity(ann, "Ann Smith")
    await api.add_entity_alias(ann, "Nan")
    await api.remove_entity_alias(ann, "Annie")
    await api.set_entity_attributes(ann, {"city": "Paris"})
    await api.merge_entity(bob, ann)
    merged = api.last_seq
    await api.unmerge_entity(bob)

    for at in ({"known_at_seq": first}, {"known_at": first_ms}):
        then = await api.get_entity_at(ann, **at)
        assert (then.name, then.aliases, then.attributes) == (
            "Ann Lee",
            ["Annie"],
            {"city": "Oslo"},
        )
        assert then.members == []
        assert (await api.get_entity_at(bob, **at)).entity_id == bob  # not merged yet
        listed = await api.list_entities(name_prefix="Ann", **at)
        assert [(e.name, e.aliases) for e in listed.items] == [("Ann Lee", ["Annie"])]
        assert (await api.list_entities(name_prefix="Ann S", **at)).items == []
        found = await api.resolve_entity("Annie", **at)
        assert (found.entity_id, found.candidates[0].layer) == (ann, "alias")
        assert (await api.resolve_entity("Nan", **at)).entity_id is None
    # While merged: Bob answered as Ann, with its new name, aliases (the old name one of
    # them) and attributes; now, Bob is himself again.
    during = await api.get_entity_at(bob, known_at_seq=merged)
    assert (during.entity_id, during.name, during.members) == (ann, "Ann Smith", [bob])
    assert (during.aliases, during.attributes) == (["Ann Lee", "Nan"], {"city": "Paris"})
    assert (await api.resolve_entity("Bob", known_at_seq=merged)).entity_id == ann
    listed = await api.list_entities(known_at_seq=merged)
    assert [e.entity_id for e in listed.items] == [ann]
    assert (await api.get_entity(bob)).entity_id == bob
    assert [e.name for e in (await api.list_entities()).items] == ["Ann Smith", "Bob"]


async def test_resolve_explains_its_layers(acme: tuple[str, Client]) -> None:
    _, api = acme
    jon = await entity(api, "Jonathan Smith", aliases=["Jon"])
    await entity(api, "Jane Doe")
    await api.get_entity(jon, after_seq=api.last_seq)
    exact = await api.resolve_entity("jonathan  smith")
    assert (exact.entity_id, exact.layer) == (jon, "name")
    alias = await api.resolve_entity("JON")
    assert (alias.entity_id, alias.layer) == (jon, "alias")
    assert "alias" in alias.explanation
    similar = await api.resolve_entity("Jonathon Smith")
    assert similar.entity_id is None  # proposed, never decided
    assert [(c.entity_id, c.layer) for c in similar.candidates] == [(jon, "similar")]
    assert 0.6 <= similar.candidates[0].score < 1.0
    nothing = await api.resolve_entity("Zed")
    assert (nothing.entity_id, nothing.candidates) == (None, [])


# Relations and time ------------------------------------------------------------------------
async def test_a_newer_fact_invalidates_the_old_edge_and_never_deletes_it(
    acme: tuple[str, Client],
) -> None:
    _, api = acme
    ann = await entity(api, "Ann")
    paris = await entity(api, "Paris", "place")
    berlin = await entity(api, "Berlin", "place")
    first = await api.assert_relation(ann, "lives_in", paris, valid_from=T0)
    move = {"valid_from": T0 + 10 * DAY, "command_id": "move-1"}
    moved = await api.assert_relation(ann, "lives_in", berlin, **move)
    assert moved.fields["invalidated"] == [first.fields["relation_id"]]
    # Retried: the first outcome, what it ended included.
    again = await api.assert_relation(ann, "lives_in", berlin, **move)
    assert (again.seq, again.fields) == (moved.seq, moved.fields)
    assert await objects_of(api, ann, "lives_in") == ["Berlin"]
    assert await objects_of(api, ann, "lives_in", as_of=T0 + DAY) == ["Paris"]
    assert await objects_of(api, ann, "lives_in", as_of=T0 - DAY) == []
    # What the service knew before the move: Paris, still valid now.
    assert await objects_of(api, ann, "lives_in", known_at_seq=first.seq) == ["Paris"]
    # At the last sequence a request may name, what it knows now (the rows' "not yet" is
    # 2**62, which no such point may pass).
    for latest in (2**62, 2**63 - 1):
        assert await objects_of(api, ann, "lives_in", known_at_seq=latest) == ["Berlin"]
        assert len((await api.list_entities(known_at_seq=latest)).items) == 3
    believed = await api.graph_facts(ann, known_at_seq=first.seq)
    assert [(f.valid_to, f.status, f.superseded_by) for f in believed.items] == [
        (None, "valid", None)
    ]
    # Every read at that point tells the same: no end yet, no successor yet.
    walked = await api.neighbors(ann, known_at_seq=first.seq)
    assert [(e.relation_id, e.valid_to) for e in walked.edges] == [
        (first.fields["relation_id"], None)
    ]
    found = await api.graph_path(ann, paris, known_at_seq=first.seq)
    assert [(e.relation_id, e.valid_to) for e in found.edges] == [
        (first.fields["relation_id"], None)
    ]
    now = await api.graph_facts(ann, as_of=T0 + DAY)
    assert [(f.valid_to, f.superseded_by) for f in now.items] == [
        (T0 + 10 * DAY, moved.fields["relation_id"])
    ]
    # The old edge is still there, invalidated, on a walk as of before the move.
    old = await api.neighbors(ann, as_of=T0 + DAY)
    assert {n.name for n in old.nodes} == {"Ann", "Paris"}
    assert [e.valid_to for e in old.edges] == [T0 + 10 * DAY]
    # Asserting an older value after the newer one records history, invalidates nothing.
    rome = await entity(api, "Rome", "place")
    history = await api.assert_relation(ann, "lives_in", rome, valid_from=T0 - 30 * DAY)
    assert history.fields["invalidated"] == []
    assert history.fields["valid_to"] == T0
    assert await objects_of(api, ann, "lives_in") == ["Berlin"]
    # The same fact again is the same relation.
    again = await api.assert_relation(ann, "lives_in", berlin, valid_from=T0 + 10 * DAY)
    assert again.fields["deduplicated"] is True
    assert again.fields["relation_id"] == moved.fields["relation_id"]


async def test_a_fact_about_one_person_never_invalidates_a_fact_about_another(
    acme: tuple[str, Client],
) -> None:
    _, api = acme
    ann, bob = await entity(api, "Ann"), await entity(api, "Bob")
    paris, berlin = await entity(api, "Paris", "place"), await entity(api, "Berlin", "place")
    acme_co = await entity(api, "Acme", "organization")
    await api.assert_relation(bob, "lives_in", paris, valid_from=T0)
    await api.assert_relation(ann, "lives_in", paris, valid_from=T0)
    await api.assert_relation(ann, "works_at", acme_co, valid_from=T0)
    await api.assert_relation(ann, "likes", paris, valid_from=T0)
    moved = await api.assert_relation(ann, "lives_in", berlin, valid_from=T0 + DAY)
    assert len(moved.fields["invalidated"]) == 1
    assert await objects_of(api, bob, "lives_in") == ["Paris"]
    assert await objects_of(api, ann, "works_at") == ["Acme"]
    # A predicate that is not single-valued keeps every value.
    await api.assert_relation(ann, "likes", berlin, valid_from=T0 + DAY)
    assert await objects_of(api, ann, "likes") == ["Berlin", "Paris"]


async def test_single_valued_predicates_are_declared_per_organization(
    acme: tuple[str, Client], client: Client
) -> None:
    org_id, api = acme
    other_org = str((await client.create_org("Other")).fields["org_id"])
    with pytest.raises(ForbiddenError):  # a member may not change the organization's rules
        await api.declare_predicate("employer", True)
    await client.declare_predicate("employer", True, org_id=org_id)
    await client.declare_predicate("works_at", False, org_id=org_id)
    ann, bob = await entity(api, "Ann"), await entity(api, "Bob")
    acme_co, globex = (
        await entity(api, "Acme", "organization"),
        await entity(api, "Globex", "organization"),
    )
    await api.assert_relation(ann, "employer", acme_co, valid_from=T0)
    await api.assert_relation(bob, "employer", acme_co, valid_from=T0)
    changed = await api.assert_relation(ann, "employer", globex, valid_from=T0 + DAY)
    # The new value ends the old one of the same subject, in the same commit, and only it.
    assert len(changed.fields["invalidated"]) == 1
    assert await objects_of(api, ann, "employer") == ["Globex"]
    assert await objects_of(api, ann, "employer", as_of=T0 + 1) == ["Acme"]
    assert await objects_of(api, bob, "employer") == ["Acme"]
    # works_at declared multi-valued here: both stay; a request's own flag still wins.
    await api.assert_relation(ann, "works_at", acme_co, valid_from=T0)
    await api.assert_relation(ann, "works_at", globex, valid_from=T0 + DAY)
    assert await objects_of(api, ann, "works_at") == ["Acme", "Globex"]
    await api.assert_relation(bob, "works_at", acme_co, valid_from=T0)
    flagged = await api.assert_relation(
        bob, "works_at", globex, valid_from=T0 + DAY, single_valued=True
    )
    assert len(flagged.fields["invalidated"]) == 1
    rules = {r.predicate: (r.single_valued, r.declared) for r in await api.list_predicates()}
    assert rules["employer"] == (True, True)
    assert rules["works_at"] == (False, True)
    assert rules["lives_in"] == (True, False)  # the service's default
    # Another organization keeps the defaults.
    theirs = await client.list_predicates(org_id=other_org)
    assert {r.predicate: r.single_valued for r in theirs}["works_at"] is True
    assert "employer" not in {r.predicate for r in theirs}


async def test_retract_and_invalidate(acme: tuple[str, Client]) -> None:
    _, api = acme
    ann, paris = await entity(api, "Ann"), await entity(api, "Paris", "place")
    wrong = await api.assert_relation(ann, "visited", paris, valid_from=T0, confidence=0.4)
    relation_id = wrong.fields["relation_id"]
    retracted = await api.retract_relation(relation_id, reason="never went")
    assert retracted.event == "relation.retracted"
    assert await objects_of(api, ann, "visited") == []
    # Known before the retraction, it was there.
    assert await objects_of(api, ann, "visited", known_at_seq=wrong.seq) == ["Paris"]
    with pytest.raises(ConflictError):
        await api.retract_relation(relation_id)
    with pytest.raises(NotFoundError):
        await api.retract_relation(f"{ann}_99")
    kept = await api.assert_relation(ann, "knows_of", paris, valid_from=T0)
    await api.invalidate_relation(kept.fields["relation_id"], valid_to=T0 + DAY)
    assert await objects_of(api, ann, "knows_of") == []
    assert await objects_of(api, ann, "knows_of", as_of=T0 + 1) == ["Paris"]
    with pytest.raises(InvalidError):
        await api.invalidate_relation(kept.fields["relation_id"], valid_to=T0 - 1)


async def test_a_wrong_merge_undone_restores_both_entities_and_their_relations(
    acme: tuple[str, Client],
) -> None:
    _, api = acme
    ann = await entity(api, "Ann Lee")
    other = await entity(api, "Ann Li")
    paris, oslo = await entity(api, "Paris", "place"), await entity(api, "Oslo", "place")
    await api.assert_relation(ann, "likes", paris, valid_from=T0)
    await api.assert_relation(other, "likes", oslo, valid_from=T0)
    merged = await api.merge_entity(other, ann)
    assert merged.event == "entity.absorbed"
    got = await api.get_entity(other, after_seq=api.last_seq)
    assert (got.entity_id, got.members) == (ann, [other])
    assert await objects_of(api, ann, "likes") == ["Oslo", "Paris"]
    assert (await api.resolve_entity("Ann Li")).entity_id == ann
    undone = await api.unmerge_entity(other)
    assert undone.event == "entity.unmerged"
    assert (await api.get_entity(other, after_seq=api.last_seq)).entity_id == other
    assert (await api.get_entity(ann)).members == []
    assert await objects_of(api, ann, "likes") == ["Paris"]
    assert await objects_of(api, other, "likes") == ["Oslo"]
    assert (await api.resolve_entity("Ann Li")).entity_id == other
    with pytest.raises(ConflictError):
        await api.unmerge_entity(other)


async def test_walks_handle_cycles_and_filters(acme: tuple[str, Client]) -> None:
    _, api = acme
    a, b, c, d = [await entity(api, n) for n in ("A", "B", "C", "D")]
    place = await entity(api, "Hub", "place")
    await api.assert_relation(a, "knows", b, valid_from=T0)
    await api.assert_relation(b, "knows", c, valid_from=T0)
    await api.assert_relation(c, "knows", a, valid_from=T0)  # a cycle
    await api.assert_relation(c, "knows", d, valid_from=T0, confidence=0.2)
    await api.assert_relation(a, "visited", place, valid_from=T0)
    one = await api.neighbors(a, after_seq=api.last_seq)
    assert {(n.name, n.depth) for n in one.nodes} == {("A", 0), ("B", 1), ("C", 1), ("Hub", 1)}
    two = await api.neighbors(a, depth=2, predicates=["knows"])
    assert {(n.name, n.depth) for n in two.nodes} == {("A", 0), ("B", 1), ("C", 1), ("D", 2)}
    assert len(two.edges) == 4
    confident = await api.neighbors(a, depth=3, min_confidence=0.5, entity_types=["person"])
    assert {n.name for n in confident.nodes} == {"A", "B", "C"}
    capped = await api.neighbors(a, depth=3, limit=2)
    assert (len(capped.nodes), capped.truncated) == (2, True)
    found = await api.graph_path(a, d)
    assert found.found
    assert found.entity_ids == [a, c, d]
    assert [e.predicate for e in found.edges] == ["knows", "knows"]
    assert not (await api.graph_path(a, d, max_depth=1)).found
    stats = await api.graph_stats()
    assert (stats.entities, stats.relations, stats.valid_relations) == (5, 5, 5)
    assert stats.predicates == {"knows": 4, "visited": 1}


async def test_a_deleted_entitys_relations_decide_nothing_more(
    acme: tuple[str, Client],
) -> None:
    """Deleting an entity takes its relations out of every table, and out of every
    decision: they end no new value, date none, and cannot be invalidated or retracted."""
    _, api = acme
    sam = await entity(api, "Sam")
    oslo, rome, lima = [await entity(api, name, "place") for name in ("Oslo", "Rome", "Lima")]
    first = await api.assert_relation(sam, "lives_in", oslo, valid_from=T0)
    later = await api.assert_relation(sam, "lives_in", lima, valid_from=T0 + 100 * DAY)
    await api.delete_entity(oslo)
    await api.delete_entity(lima)
    for relation in (first, later):
        relation_id = str(relation.fields["relation_id"])
        with pytest.raises(NotFoundError):
            await api.invalidate_relation(relation_id, valid_to=T0 + 5 * DAY)
        with pytest.raises(NotFoundError):
            await api.retract_relation(relation_id)
    # From the same day as the deleted fact, and with no later value to end it.
    again = await api.assert_relation(sam, "lives_in", rome, valid_from=T0)
    assert (again.fields["invalidated"], again.fields["valid_to"]) == ([], None)
    assert await objects_of(api, sam, "lives_in") == ["Rome"]


async def test_a_member_of_a_deleted_entity_is_gone_with_it(acme: tuple[str, Client]) -> None:
    _, api = acme
    al, bo, xi = [await entity(api, name) for name in ("Al", "Bo", "Xi")]
    await api.merge_entity(al, into=bo)
    await api.delete_entity(bo)
    for attempt in (
        api.rename_entity(al, "Alan"),
        api.delete_entity(al),
        api.merge_entity(al, into=xi),
        api.merge_entity(xi, into=al),
        api.assert_relation(xi, "knows", al),
    ):
        with pytest.raises(NotFoundError):
            await attempt


async def test_walks_stay_inside_a_scope(acme: tuple[str, Client]) -> None:
    _, api = acme
    shared = await entity(api, "Acme", "organization")
    ann = await entity(api, "Ann", user_id="u1")
    bob = await entity(api, "Bob", user_id="u2")
    await api.assert_relation(ann, "works_at", shared, valid_from=T0)
    await api.assert_relation(bob, "works_at", shared, valid_from=T0)
    mine = await api.neighbors(shared, user_id="u1", after_seq=api.last_seq)
    assert {n.name for n in mine.nodes} == {"Acme", "Ann"}
    assert not (await api.graph_path(ann, bob, user_id="u1")).found
    with pytest.raises(InvalidError):  # one user's entity cannot point into another's
        await api.assert_relation(ann, "knows", bob)


# Associations between memories -------------------------------------------------------------
async def test_associations_both_ways_and_gone_with_a_memory(acme: tuple[str, Client]) -> None:
    _, api = acme
    rain = (await api.add_memory("It rained", user_id="u1")).fields["memory_id"]
    wet = (await api.add_memory("The road was wet", user_id="u1")).fields["memory_id"]
    made = await api.associate_memories(rain, wet, association_type="causal", strength=0.9)
    assert made.event == "memory.associated"
    out = await api.memory_associations(rain, after_seq=api.last_seq)
    assert [(a.memory_id, a.direction, a.strength) for a in out] == [(wet, "out", 0.9)]
    back = await api.memory_associations(wet)
    assert [(a.memory_id, a.direction, a.association_type) for a in back] == [
        (rain, "in", "causal")
    ]
    await api.delete_memory(wet)
    assert await api.memory_associations(rain, after_seq=api.last_seq) == []
    with pytest.raises(NotFoundError):
        await api.associate_memories(rain, wet)


# Deletion and tenants ----------------------------------------------------------------------
async def test_a_deleted_scope_leaves_no_entity_relation_or_association_behind(
    acme: tuple[str, Client], client: Client, service: Service, nc: NATS, admin_token: str
) -> None:
    org_id, api = acme
    ann = await entity(api, "Ann", user_id="gone")
    paris = await entity(api, "Paris", "place", user_id="gone")
    kept = await entity(api, "Kept", user_id="stays")
    await api.assert_relation(ann, "lives_in", paris, valid_from=T0)
    await api.assert_relation(kept, "knows", kept, valid_from=T0)
    rain = (await api.add_memory("rain", user_id="gone")).fields["memory_id"]
    wet = (await api.add_memory("wet", user_id="gone")).fields["memory_id"]
    await api.associate_memories(rain, wet)
    # A memory scope's deletion takes the scope's entities and relations with it.
    deleted = await client.delete_memory_scope(user_id="gone", org_id=org_id)
    assert (deleted.deleted, deleted.entities) == (2, 2)
    await wait_caught_up(nc, admin_token)
    await assert_graph_left(service, [ann, paris, rain, wet, "Paris", "lives_in"], [kept])
    with pytest.raises(NotFoundError):
        await api.get_entity(ann)
    # entity.delete_scope, the graph's own, finds nothing left; a session holds no entity.
    assert (await client.delete_entity_scope(user_id="gone", org_id=org_id)).deleted == 0
    session = await client.delete_memory_scope(session_id="s1", org_id=org_id)
    assert session.entities == 0
    # The same name in that scope is a new entity.
    again = await api.create_entity("person", "Ann", user_id="gone")
    assert again.fields["deduplicated"] is False


async def test_a_deleted_user_leaves_no_entity_or_relation_behind(
    acme: tuple[str, Client], client: Client, service: Service, nc: NATS, admin_token: str
) -> None:
    org_id, api = acme
    user = await client.register_user(org_id, "Leaving", "leaving@acme.example", PASSWORD)
    user_id = str(user.fields["user_id"])
    ann = await entity(api, "Ann", user_id=user_id)
    paris = await entity(api, "Paris", "place", user_id=user_id)
    shared = await entity(api, "Acme HQ", "place")
    await api.assert_relation(ann, "lives_in", paris, valid_from=T0)
    await api.assert_relation(ann, "works_at", shared, valid_from=T0)
    await client.delete_user(user_id)
    await wait_caught_up(nc, admin_token)
    await assert_graph_left(service, [ann, paris, "Paris", "lives_in", "works_at"], [shared])
    for gone in (ann, paris):
        with pytest.raises(NotFoundError):
            await api.get_entity(gone)
    assert (await api.graph_stats()).relations == 0


async def assert_graph_left(service: Service, gone: list[str], kept: list[str]) -> None:
    """No row of any graph table holds any of ``gone``; some row holds each of ``kept``."""
    assert service.store is not None
    rows = await dump_store(service.store)
    text = repr([row for table in TABLES for row in rows[table.name]])
    assert [g for g in gone if g in text] == []
    assert [k for k in kept if k not in text] == []


async def test_a_deleted_organization_leaves_no_graph_row(
    client: Client, service: Service, nc: NATS, admin_token: str
) -> None:
    gone = str((await client.create_org("Gone")).fields["org_id"])
    ann = await entity(client, "Ann", org_id=gone)
    paris = await entity(client, "Paris", "place", org_id=gone)
    await client.assert_relation(ann, "lives_in", paris, valid_from=T0)
    m1 = (await client.add_memory("one", user_id="u", org_id=gone)).fields["memory_id"]
    m2 = (await client.add_memory("two", user_id="u", org_id=gone)).fields["memory_id"]
    await client.associate_memories(m1, m2)
    await client.declare_predicate("employer", True, org_id=gone)
    await wait_caught_up(nc, admin_token)
    assert service.store is not None
    before = await dump_store(service.store)
    assert all(before[table.name] for table in TABLES)
    await client.delete_org(gone)
    await wait_caught_up(nc, admin_token)
    after = await dump_store(service.store)
    assert not any(gone in repr(after[table.name]) for table in TABLES)


async def test_another_organizations_graph_is_not_found_on_every_subject(
    client: Client, acme: tuple[str, Client], nc: NATS
) -> None:
    org_id, api = acme
    ann, paris = await entity(api, "Ann"), await entity(api, "Paris", "place")
    fact = await api.assert_relation(ann, "lives_in", paris, valid_from=T0)
    relation_id = fact.fields["relation_id"]
    memory_id = (await api.add_memory("Acme's", user_id="u")).fields["memory_id"]
    other_org = str((await client.create_org("Other")).fields["org_id"])
    other = await as_user(client, other_org, "admin@other.example", ["admin"])
    mine = await entity(other, "Mine")
    before = await last_seq(nc)
    for call in (
        other.get_entity(ann, after_seq=api.last_seq),
        other.rename_entity(ann, "x"),
        other.add_entity_alias(ann, "x"),
        other.remove_entity_alias(ann, "x"),
        other.set_entity_attributes(ann, {"a": 1}),
        other.merge_entity(ann, paris),
        other.merge_entity(mine, ann),
        other.unmerge_entity(ann),
        other.delete_entity(ann),
        other.assert_relation(ann, "knows", paris),
        other.assert_relation(mine, "knows", ann),
        other.invalidate_relation(relation_id),
        other.retract_relation(relation_id),
        other.neighbors(ann),
        other.graph_path(ann, paris),
        other.graph_facts(ann),
        other.list_entities(org_id=org_id),
        other.resolve_entity("Ann", org_id=org_id),
        other.graph_stats(org_id=org_id),
        other.delete_entity_scope(user_id="u", org_id=org_id),
        other.memory_associations(memory_id),
        other.associate_memories(memory_id, memory_id),
        other.dissociate_memories(memory_id, memory_id),
    ):
        with pytest.raises(NotFoundError):
            await call
    assert await last_seq(nc) == before
    assert (await other.resolve_entity("Ann")).candidates == []
    assert (await other.graph_stats()).entities == 1


async def test_replay_equals_live(
    acme: tuple[str, Client], service: Service, nc: NATS, admin_token: str, tmp_path: Path
) -> None:
    _, api = acme
    ann, bob = await entity(api, "Ann", aliases=["Annie"]), await entity(api, "Bob")
    paris, berlin = await entity(api, "Paris", "place"), await entity(api, "Berlin", "place")
    await api.assert_relation(ann, "lives_in", paris, valid_from=T0)
    await api.assert_relation(ann, "lives_in", berlin, valid_from=T0 + DAY)
    wrong = await api.assert_relation(bob, "knows", ann, valid_from=T0)
    await api.retract_relation(wrong.fields["relation_id"])
    await api.merge_entity(bob, ann)
    await api.unmerge_entity(bob)
    await api.rename_entity(paris, "Paris, France")
    await api.add_entity_alias(paris, "Lutetia")
    await api.remove_entity_alias(paris, "Lutetia")
    await api.set_entity_attributes(paris, {"population": 2_100_000})
    m1 = (await api.add_memory("one", user_id="u")).fields["memory_id"]
    m2 = (await api.add_memory("two", user_id="u")).fields["memory_id"]
    await api.associate_memories(m1, m2, strength=0.3)
    await api.delete_entity(berlin)
    await wait_caught_up(nc, admin_token)
    assert service.store is not None
    live = await dump_store(service.store)
    assert live["graph_relations"]
    replayed = await replay_into(nc, tmp_path / "replayed.db")
    for table in TABLES:
        assert replayed[table.name] == live[table.name], table.name


async def test_an_entity_another_process_deleted_takes_no_new_relation(
    service: Service, acme: tuple[str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An assertion writes neither entity it names: a process whose cache had not seen a
    deletion made elsewhere accepted a relation to the deleted entity (a race attacker,
    two processes on Postgres). Both entities are read from the log."""
    org_id, api = acme
    ann = await entity(api, "Ann")
    paris = await entity(api, "Paris", "place")
    runner = service.parts.runner
    behind = AggregateCache(runner.cache.log)
    for entity_id in (ann, paris):
        await behind.load(entities.subject(org_id, entity_id), entities.evolve)
    await api.delete_entity(paris)
    monkeypatch.setattr(runner, "cache", behind)
    with pytest.raises(NotFoundError):
        await api.assert_relation(ann, "lives_in", paris)
    with pytest.raises(NotFoundError):
        await api.assert_relation(paris, "lives_in", ann)
