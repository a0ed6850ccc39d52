"""The budget rule of ``context.assemble`` (``agentmem.domain.context.fit``) and the token
counters (``agentmem.tokens``), as pure functions."""

from __future__ import annotations

from agentmem.domain.context import fit
from agentmem.replies import ContextItem
from agentmem.tokens import COUNTERS, counter


def item(section: str, name: str, tokens: int) -> ContextItem:
    return ContextItem(
        section=section, id=name, type=section, text=name, tokens=tokens, created_at=1
    )


def test_first_four_sections_skip_what_does_not_fit_and_go_on() -> None:
    sections = [
        [item("persona", "p", 3)],
        [item("block", "big", 10), item("block", "small", 2)],
        [],
        [item("memory", "m", 4)],
        [],
    ]
    kept, left_out = fit(sections, 9)
    assert [i.id for i in kept] == ["p", "small", "m"]
    assert [(o.section, o.id, o.tokens) for o in left_out] == [("block", "big", 10)]
    assert sum(i.tokens for i in kept) == 9


def test_the_tail_is_taken_newest_first_stops_at_a_gap_and_comes_back_oldest_first() -> None:
    newest_first = [item("message", "m3", 2), item("message", "m2", 5), item("message", "m1", 1)]
    kept, left_out = fit([[], [], [], [], newest_first], 3)
    assert [i.id for i in kept] == ["m3"]  # m1 would fit, but not without m2
    assert [o.id for o in left_out] == ["m2", "m1"]
    kept, _ = fit([[], [], [], [], newest_first], 8)
    assert [i.id for i in kept] == ["m1", "m2", "m3"]


def test_a_budget_of_zero_keeps_only_empty_items() -> None:
    kept, left_out = fit([[item("persona", "p", 1)], [item("block", "b", 0)]], 0)
    assert [i.id for i in kept] == ["b"]
    assert [o.id for o in left_out] == ["p"]


def test_the_counters() -> None:
    assert sorted(COUNTERS) == ["chars4", "words"]
    chars4 = counter("chars4")
    assert [chars4.count(t) for t in ("", "a", "abcd", "abcde", "é" * 8)] == [0, 1, 1, 2, 2]
    words = counter("words")
    # Ann ' s peanut - free satay , please !
    assert words.count("Ann's peanut-free satay, please!") == 10
    assert words.count("   ") == 0
