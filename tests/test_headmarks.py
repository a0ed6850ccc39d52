"""HeadMarks: what a process's own appends say of the log's growth (pure logic)."""

from __future__ import annotations

import time

from agentmem.headmarks import KEPT, SPACING_S, HeadMarks


def test_a_stored_commit_bounds_every_later_one() -> None:
    marks = HeadMarks()
    sent = time.monotonic() - 5.0
    marks.stored(101, sent)  # commit 101 was sent at ``sent``: nothing from 101 on existed
    assert marks.all_after_since(100) == sent
    assert marks.all_after_since(250) == sent  # a later checkpoint: fewer commits after it
    assert marks.all_after_since(99) is None  # commit 100 may be older than ``sent``


def test_the_latest_mark_at_or_below_the_checkpoint_counts() -> None:
    marks = HeadMarks()
    now = time.monotonic()
    marks.stored(10, now - 30.0)
    marks.stored(50, now - 20.0)
    marks.stored(90, now - 10.0)
    assert marks.all_after_since(60) == now - 20.0
    assert marks.all_after_since(89) == now - 10.0
    assert marks.all_after_younger_than(60, 25.0)
    assert not marks.all_after_younger_than(60, 15.0)  # commits 61-89: maybe 20 s old
    assert not marks.all_after_younger_than(5, 3600.0)  # known to nobody: ask the log


def test_marks_closer_than_the_spacing_are_not_kept() -> None:
    marks = HeadMarks()
    now = time.monotonic()
    marks.stored(10, now - 1.0)
    marks.stored(20, now - 1.0 + SPACING_S / 2)
    assert marks.all_after_since(19) == now - 1.0  # the second was not kept: 9 is the bound
    assert marks.all_after_since(8) is None


def test_a_mark_below_the_one_before_is_not_kept_and_old_marks_go() -> None:
    marks = HeadMarks()
    now = time.monotonic() - 1000.0
    marks.stored(50, now)
    marks.stored(40, now + 1.0)  # stored out of order: kept marks stay in order
    assert marks.all_after_since(45) is None
    for n in range(1, KEPT + 2):
        marks.stored(50 + n, now + 1.0 + n)
    assert marks.all_after_since(49) is None  # the oldest half was dropped
    assert marks.all_after_since(50 + KEPT) == now + 1.0 + KEPT + 1
