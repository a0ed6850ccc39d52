"""How ``memory.search`` orders what its two sides found: pure functions, no I/O.

Each candidate has up to two *relevance* components, both in [0, 1] and both absolute (a
function of the query and that memory alone, never of the other candidates, so a floor
means the same thing whatever else matched):

- ``text``: the share of the query's words the memory holds (the full-text side's rank
  divided by the number of words);
- ``vector``: the cosine of the query's and the memory's embeddings, below 0 counted as 0.

``relevance`` is their weighted mean (``WEIGHTS``, per mode; hybrid's were chosen on the
development split of the evaluation set, docs/architecture.md "Semantic search"). Two
optional boosts are then added: ``recency`` (1 for a memory made now, halving every
``half_life_days``) and ``importance`` (its importance decayed as ``memory.list`` decays it,
``decayed_importance``: per type, since its last write), each times the weight the request
gives it. ``min_score`` is a floor on relevance, before boosts, so that
a boost never lifts an unrelated memory over it. MMR (``mmr`` = λ), when asked, picks the
results one at a time by λ·score - (1-λ)·(the highest cosine to one already picked).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# (text, vector) weights of relevance per mode, and the floors and bars below: the best
# of a grid on the evaluation set's development split (``python -m bench.fusion``; the
# figures are in docs/architecture.md, "Semantic search").
WEIGHTS: dict[str, tuple[float, float]] = {
    "text": (1.0, 0.0),
    "vector": (0.0, 1.0),
    "hybrid": (0.2, 0.8),
}
# The floor of relevance when the request sets no ``min_score`` (per mode): under it a
# memory is not returned at all (the closest junk is no answer). Text: any word counts.
FLOOR: dict[str, float] = {"text": 0.0, "vector": 0.05, "hybrid": 0.05}
# The relevance of a confident match: a reply whose best result is under it says
# ``confident: false`` (per mode, whatever ``min_score`` the request sets).
CONFIDENT: dict[str, float] = {"text": 0.45, "vector": 0.25, "hybrid": 0.25}
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Candidate:
    memory_id: str
    text: float | None  # share of the query's words held; None: not found by that side
    vector: float | None  # cosine; None: no vector (not embedded yet, or text mode)
    created_at: int
    importance: float  # decayed to the query's time, as memory.list decays it (per type)


@dataclass(frozen=True)
class Boosts:
    recency: float = 0.0
    importance: float = 0.0
    half_life_days: float = 30.0


@dataclass(frozen=True)
class Scored:
    memory_id: str
    score: float
    components: dict[str, float | None]


def decay(age_ms: int, half_life_days: float) -> float:
    return float(0.5 ** (max(age_ms, 0) / (half_life_days * DAY_MS)))


def relevance(mode: str, text: float | None, vector: float | None) -> float:
    text_weight, vector_weight = WEIGHTS[mode]
    total = text_weight * (text or 0.0) + vector_weight * max(vector or 0.0, 0.0)
    return total / (text_weight + vector_weight)


def score(mode: str, candidates: list[Candidate], boosts: Boosts, now: int) -> list[Scored]:
    """Every candidate scored, best first (ties: newest first)."""
    scored = []
    for c in candidates:
        fused = relevance(mode, c.text, c.vector)
        fade = decay(now - c.created_at, boosts.half_life_days)
        components: dict[str, float | None] = {
            "text": c.text,
            "vector": c.vector,
            "relevance": fused,
            "recency": fade if boosts.recency else None,
            "importance": c.importance if boosts.importance else None,
        }
        total = fused + boosts.recency * fade + boosts.importance * c.importance
        scored.append((total, c.created_at, Scored(c.memory_id, total, components)))
    scored.sort(key=lambda item: (-item[0], -item[1]))
    return [item[2] for item in scored]


def floor(mode: str, scored: list[Scored], min_score: float | None) -> list[Scored]:
    """The results whose relevance reaches ``min_score`` (else the mode's ``FLOOR``)."""
    bar = FLOOR[mode] if min_score is None else min_score
    return [s for s in scored if (s.components["relevance"] or 0.0) >= bar]


def confident(mode: str, scored: list[Scored]) -> bool:
    """Whether some result's relevance reaches the mode's ``CONFIDENT`` bar."""
    return any((s.components["relevance"] or 0.0) >= CONFIDENT[mode] for s in scored)


def mmr(
    scored: list[Scored],
    vectors: Mapping[str, npt.NDArray[np.float32]],
    lam: float,
    limit: int,
) -> list[Scored]:
    """Maximal marginal relevance: diverse results among the best. A candidate without a
    vector is compared with nothing (it counts as unlike every other)."""
    left = list(scored)
    picked: list[Scored] = []
    chosen: list[npt.NDArray[np.float32]] = []
    while left and len(picked) < limit:
        best_index, best_value = 0, -np.inf
        for i, s in enumerate(left):
            vector = vectors.get(s.memory_id)
            similar = (
                max((float(vector @ c) for c in chosen), default=0.0) if vector is not None else 0.0
            )
            value = lam * s.score - (1 - lam) * similar
            if value > best_value:
                best_index, best_value = i, value
        pick = left.pop(best_index)
        picked.append(pick)
        vector = vectors.get(pick.memory_id)
        if vector is not None:
            chosen.append(vector)
    return picked
