"""Ranking metrics of one query, and their means: pure functions of a ranking (the keys of
the results, best first) and the graded relevant set (key: grade, 2 answers, 1 helps).

- Recall@k: the share of the relevant memories found in the first k results.
- MRR: the mean of 1 / the rank of the first relevant result (0 when none is found).
- nDCG@10: the discounted gain of the first 10 results, gain ``2**grade - 1`` at rank i
  discounted by ``log2(i + 1)``, divided by that of the ideal ranking of the relevant set.

A query with no relevant memory (``no_answer``, and ``cross_scope`` queries whose scope
holds no answer) is right when the reply holds nothing confident: then each of the four
metrics is 1, else 0. So a mean over a category or the whole set stays a number between 0
and 1 in which returning junk for an unanswerable question costs as much as missing an
answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Ranking = Sequence[str | None]  # None: a result that is no memory of the set
Grades = Mapping[str, int]


def recall_at(ranking: Ranking, relevant: Grades, k: int) -> float:
    if not relevant:
        raise ValueError("recall of a query without relevant memories")
    found = {key for key in ranking[:k] if key in relevant}
    return len(found) / len(relevant)


def reciprocal_rank(ranking: Ranking, relevant: Grades) -> float:
    for rank, key in enumerate(ranking, start=1):
        if key in relevant:
            return 1.0 / rank
    return 0.0


def _dcg(gains: Iterable[int]) -> float:
    return sum((2.0**g - 1.0) / math.log2(i + 1) for i, g in enumerate(gains, start=1))


def ndcg_at(ranking: Ranking, relevant: Grades, k: int) -> float:
    if not relevant:
        raise ValueError("nDCG of a query without relevant memories")
    seen: set[str] = set()
    gains = []
    for key in ranking[:k]:
        # A memory counted twice would let a repeated result beat the ideal ranking.
        gain = relevant.get(key, 0) if key is not None and key not in seen else 0
        if key is not None:
            seen.add(key)
        gains.append(gain)
    ideal = _dcg(sorted(relevant.values(), reverse=True)[:k])
    return _dcg(gains) / ideal


@dataclass(frozen=True)
class Score:
    recall_1: float
    recall_5: float
    mrr: float
    ndcg_10: float

    @staticmethod
    def of(ranking: Ranking, relevant: Grades, confident: bool) -> Score:
        """One query's score. ``confident``: the reply holds at least one result it is
        confident of (only asked of queries without relevant memories)."""
        if not relevant:
            right = 0.0 if confident else 1.0
            return Score(right, right, right, right)
        return Score(
            recall_at(ranking, relevant, 1),
            recall_at(ranking, relevant, 5),
            reciprocal_rank(ranking, relevant),
            ndcg_at(ranking, relevant, 10),
        )


def mean(scores: Sequence[Score]) -> Score | None:
    if not scores:
        return None
    n = len(scores)
    return Score(
        sum(s.recall_1 for s in scores) / n,
        sum(s.recall_5 for s in scores) / n,
        sum(s.mrr for s in scores) / n,
        sum(s.ndcg_10 for s in scores) / n,
    )
