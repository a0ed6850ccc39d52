"""The graph's pure decisions: entities (names, merges) and relations (single-valued
predicates, history, duplicates), without the log or a store."""

from __future__ import annotations

import pytest

from agentmem import subjects
from agentmem.domain import entities, relations
from agentmem.domain.aggregate import Loaded, fold
from agentmem.domain.entities import CreateEntity, Entity, MergeEntity, UnmergeEntity
from agentmem.domain.relations import AssertRelation, Facts
from agentmem.errors import ConflictError, InvalidError
from agentmem.events import AnyEvent, RelationAsserted, RelationInvalidated

ORG = "o1"
T0 = 1_000


def made(name: str, user_id: str | None = None, entity_type: str = "person") -> Loaded[Entity]:
    key = entities.name_key(ORG, entity_type, user_id, None, name)
    free: Loaded[Entity] = Loaded(entities.subject(ORG, entities.slot_id(key, 0)), None, 0)
    command = CreateEntity(entity_type=entity_type, name=name, user_id=user_id)
    events = entities.create(ORG, command, free)[0].events
    return Loaded(free.subject, fold(entities.evolve, None, events), 1)


def applied(loaded: Loaded[Facts], events: list[AnyEvent]) -> Loaded[Facts]:
    return Loaded(loaded.subject, fold(relations.evolve, loaded.state, events), loaded.version + 1)


def state(loaded: Loaded[Entity]) -> Entity:
    assert loaded.state is not None
    return loaded.state


def test_a_name_is_one_key_whatever_its_case_and_spaces() -> None:
    key = entities.name_key(ORG, "person", None, None, "Ann  Lee")
    assert key == entities.name_key(ORG, "person", None, None, " ann lee ")
    assert key != entities.name_key(ORG, "person", "u1", None, "Ann Lee")
    assert key != entities.name_key(ORG, "place", None, None, "Ann Lee")
    assert key != entities.name_key("o2", "person", None, None, "Ann Lee")
    ann = state(made("Ann Lee"))
    assert entities.holds(ann, key)
    assert ann.entity_id == f"{key}-0"


def test_a_rename_keeps_the_old_name_as_an_alias_and_frees_its_key() -> None:
    loaded = made("Ann Lee")
    writes = entities.rename(loaded, entities.RenameEntity(entity_id="x", name="Ann Smith"))
    renamed = fold(entities.evolve, loaded.state, writes[0].events)
    assert renamed is not None
    assert (renamed.name, renamed.aliases) == ("Ann Smith", ("Ann Lee",))
    assert not entities.holds(renamed, entities.name_key(ORG, "person", None, None, "Ann Lee"))


def facts_of(entity: Loaded[Entity]) -> Loaded[Facts]:
    return Loaded(relations.subject(ORG, state(entity).entity_id), None, 0)


def test_a_single_valued_predicate_ends_only_the_subjects_same_predicate() -> None:
    ann, paris, berlin = made("Ann"), made("Paris", entity_type="place"), made("Berlin")
    facts = facts_of(ann)
    for predicate, target in (("lives_in", paris), ("likes", paris)):
        command = AssertRelation(subject_id="x", predicate=predicate, object_id="y", valid_from=T0)
        decided = relations.assert_relation(facts, command, state(ann), state(target), T0)
        facts = applied(facts, decided.writes[0].events)
    moved = AssertRelation(subject_id="x", predicate="lives_in", object_id="y", valid_from=T0 + 5)
    decided = relations.assert_relation(facts, moved, state(ann), state(berlin), T0 + 5)
    events = decided.writes[0].events
    assert [type(e).__name__ for e in events] == ["RelationInvalidated", "RelationAsserted"]
    ended = events[0]
    assert isinstance(ended, RelationInvalidated)
    assert (ended.relation_id, ended.valid_to) == (
        relations.relation_id(state(ann).entity_id, 1),
        T0 + 5,
    )
    assert [w.subject for w in decided.writes] == [facts.subject]


def test_an_older_value_after_a_newer_one_is_history() -> None:
    ann, paris, rome = made("Ann"), made("Paris"), made("Rome")
    facts = facts_of(ann)
    now = AssertRelation(subject_id="x", predicate="lives_in", object_id="y", valid_from=T0)
    facts = applied(
        facts, relations.assert_relation(facts, now, state(ann), state(paris), T0).writes[0].events
    )
    old = AssertRelation(subject_id="x", predicate="lives_in", object_id="y", valid_from=T0 - 50)
    decided = relations.assert_relation(facts, old, state(ann), state(rome), T0)
    (event,) = decided.writes[0].events
    assert isinstance(event, RelationAsserted)
    assert (event.valid_to, decided.invalidated) == (T0, ())


def test_the_same_fact_twice_is_one_relation() -> None:
    ann, paris = made("Ann"), made("Paris")
    facts = facts_of(ann)
    command = AssertRelation(subject_id="x", predicate="likes", object_id="y", valid_from=T0)
    first = relations.assert_relation(facts, command, state(ann), state(paris), T0)
    facts = applied(facts, first.writes[0].events)
    again = relations.assert_relation(facts, command, state(ann), state(paris), T0 + 1)
    assert (again.writes, again.existing) == ([], relations.relation_id(state(ann).entity_id, 1))


def living(valid_from: int, valid_to: int | None = None) -> AssertRelation:
    """That the subject lives in the object (single-valued), over that valid time."""
    return AssertRelation(
        subject_id="x",
        predicate="lives_in",
        object_id="y",
        valid_from=valid_from,
        valid_to=valid_to,
    )


def test_the_same_fact_within_its_valid_time_is_one_relation() -> None:
    """Dated later, or bounded inside it: the relation that holds it answers; starting
    earlier or ending past it, it says something new."""
    ann, berlin = made("Ann"), made("Berlin")
    facts = facts_of(ann)

    first = relations.assert_relation(facts, living(T0), state(ann), state(berlin), T0)
    facts = applied(facts, first.writes[0].events)
    held = relations.relation_id(state(ann).entity_id, 1)
    for command in (living(T0 + 86_400_000), living(T0 + 10, T0 + 20)):
        again = relations.assert_relation(facts, command, state(ann), state(berlin), T0 + 99)
        assert (again.writes, again.existing) == ([], held)
    earlier = relations.assert_relation(facts, living(T0 - 10), state(ann), state(berlin), T0)
    assert earlier.writes
    assert earlier.existing is None
    # A bounded relation: a time after its end is new.
    bounded = facts_of(ann)
    first = relations.assert_relation(bounded, living(T0, T0 + 100), state(ann), state(berlin), T0)
    bounded = applied(bounded, first.writes[0].events)
    past_end = living(T0 + 50, T0 + 200)
    assert relations.assert_relation(bounded, past_end, state(ann), state(berlin), T0).writes
    open_ended = living(T0 + 50)
    assert relations.assert_relation(bounded, open_ended, state(ann), state(berlin), T0).writes


def test_an_extracted_fact_is_asserted_for_the_time_not_held_yet() -> None:
    """An extraction states its source's fact once, for its source's span: where relations
    hold the same fact for part of it, for the first part they do not hold (a memory dated
    before the one that first stated it adds the time between), and not at all when they
    hold all of it; a value another one holds from the same instant replaces it (the source
    corrects it from its start: it was never true), where a client's assertion is refused."""
    ann, berlin, rome = made("Ann"), made("Berlin"), made("Rome")
    facts = facts_of(ann)

    def span(decided: relations.Asserted) -> tuple[int, int | None]:
        (event,) = decided.writes[0].events
        assert isinstance(event, RelationAsserted)
        return event.valid_from, event.valid_to

    first = relations.assert_relation(facts, living(T0), state(ann), state(berlin), T0)
    facts = applied(facts, first.writes[0].events)
    held = relations.relation_id(state(ann).entity_id, 1)
    for command in (living(T0 + 5), living(T0 + 5, T0 + 9)):
        later = relations.assert_relation(
            facts, command, state(ann), state(berlin), T0, extracted=True
        )
        assert (later.writes, later.existing) == ([], held)
    for command in (living(T0 - 10), living(T0 - 10, T0 + 1), living(T0 - 10, T0)):
        earlier = relations.assert_relation(
            facts, command, state(ann), state(berlin), T0, extracted=True
        )
        assert span(earlier) == (T0 - 10, T0)
    # Held until T0 + 100 only: from there on.
    bounded = facts_of(ann)
    first = relations.assert_relation(bounded, living(T0, T0 + 100), state(ann), state(berlin), T0)
    bounded = applied(bounded, first.writes[0].events)
    after = relations.assert_relation(
        bounded, living(T0 + 50), state(ann), state(berlin), T0, extracted=True
    )
    assert span(after) == (T0 + 100, None)
    with pytest.raises(ConflictError):
        relations.assert_relation(facts, living(T0), state(ann), state(rome), T0)
    same_instant = relations.assert_relation(
        facts, living(T0), state(ann), state(rome), T0, extracted=True
    )
    ended, asserted = same_instant.writes[0].events
    assert ended == RelationInvalidated(
        relation_id=held, valid_to=T0, superseded_by=asserted.relation_id
    )
    assert isinstance(asserted, RelationAsserted)
    assert (asserted.valid_from, asserted.valid_to, same_instant.invalidated) == (T0, None, (held,))


def test_an_object_of_another_users_scope_is_refused() -> None:
    ann, bob = made("Ann", user_id="u1"), made("Bob", user_id="u2")
    command = AssertRelation(subject_id="x", predicate="knows", object_id="y")
    with pytest.raises(InvalidError):
        relations.assert_relation(facts_of(ann), command, state(ann), state(bob), T0)


def test_merge_then_unmerge_gives_back_exactly_what_the_merge_brought() -> None:
    ann, twin, third = made("Ann"), made("Ann L"), made("Ann X")
    first = entities.merge(third, twin, MergeEntity(entity_id="x", into="y"))
    third = Loaded(third.subject, fold(entities.evolve, third.state, first[0].events), 2)
    twin = Loaded(twin.subject, fold(entities.evolve, twin.state, first[1].events), 2)
    assert state(twin).absorbed == (state(third).entity_id,)
    second = entities.merge(twin, ann, MergeEntity(entity_id="x", into="y"))
    twin = Loaded(twin.subject, fold(entities.evolve, twin.state, second[0].events), 3)
    ann = Loaded(ann.subject, fold(entities.evolve, ann.state, second[1].events), 2)
    members = (state(twin).entity_id, state(third).entity_id)
    assert state(ann).absorbed == members
    with pytest.raises(ConflictError):
        entities.merge(twin, ann, MergeEntity(entity_id="x", into="y"))
    undone = entities.unmerge(twin, ann, UnmergeEntity(entity_id="x"))
    assert [w.subject for w in undone] == [ann.subject, twin.subject]
    ann_after = fold(entities.evolve, ann.state, undone[0].events)
    twin_after = fold(entities.evolve, twin.state, undone[1].events)
    assert ann_after is not None
    assert twin_after is not None
    assert (ann_after.absorbed, twin_after.state, twin_after.absorbed) == (
        (),
        "live",
        (state(third).entity_id,),
    )


def test_relation_ids_name_their_subject() -> None:
    relation = relations.relation_id("abc-0", 12)
    assert relations.subject_entity_of(relation) == "abc-0"
    assert subjects.parse(relations.subject(ORG, "abc-0")).aggregate == "facts"
