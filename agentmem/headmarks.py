"""What this process has seen of the log's growth: "at this moment, the log held no commit
after sequence S yet".

Each append this process makes teaches it one such fact: the commit it stored got sequence
``s``, so when the publish was sent no commit from ``s`` on existed. With them a command can
know that every commit after a projection's checkpoint is younger than some age without
asking the log (``message.append`` with a command id asked for the conversation's first
unapplied commit, a direct get, on every append: 6% of the service's time under published
ingestion). They hold in a cluster and with several processes too: sequences only grow, and
a commit is stored after it was sent.
"""

from __future__ import annotations

import time
from bisect import bisect_right

SPACING_S = 0.5  # at most two marks a second: a projection is rarely further behind
KEPT = 128  # about a minute of marks when appends are steady; older ones are not needed


class HeadMarks:
    def __init__(self) -> None:
        # Both grow: a mark is kept only if its sequence is not below the one before it.
        self._seqs: list[int] = []  # "no commit after this sequence existed ..."
        self._times: list[float] = []  # "... at this monotonic time"

    def sent(self) -> float:
        """The moment a publish is sent, for :meth:`stored` once it is acknowledged."""
        return time.monotonic()

    def stored(self, seq: int, sent_at: float) -> None:
        """A commit sent at ``sent_at`` was stored, new (not a duplicate), at ``seq``."""
        if self._times and (sent_at - self._times[-1] < SPACING_S or seq - 1 < self._seqs[-1]):
            return
        self._seqs.append(seq - 1)
        self._times.append(sent_at)
        if len(self._seqs) > KEPT:
            del self._seqs[: KEPT // 2], self._times[: KEPT // 2]

    def all_after_since(self, seq: int) -> float | None:
        """A monotonic time before which no commit after ``seq`` existed (the latest this
        process knows), or None when it knows none."""
        index = bisect_right(self._seqs, seq)
        return self._times[index - 1] if index else None

    def all_after_younger_than(self, seq: int, age_s: float) -> bool:
        """Whether every commit after ``seq`` was stored less than ``age_s`` ago."""
        since = self.all_after_since(seq)
        return since is not None and since >= time.monotonic() - age_s
