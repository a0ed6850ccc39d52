"""``python -m bench.fusion``: choose hybrid search's weights and floors by measurement, on
the development split of the retrieval set (bench/eval/retrieval.json), never the test split.

The set is loaded into a real service once; each dev query is asked once in ``hybrid`` mode
with ``min_score`` 0 and a long ``limit``, which returns every candidate of both sides with
its ``text`` and ``vector`` components. Each setting of the grid then re-ranks those
candidates as ``agentmem.ranking`` would (relevance = w·text + (1-w)·cosine, the floor, the
confident bar) and is scored with the evaluation's own metrics. It prints the best settings
by mean nDCG@10 and the values ``agentmem/ranking.py`` holds, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from agentmem import ranking
from agentmem.domain.memories import SearchMemories
from bench.eval import dataset
from bench.eval.metrics import Score, mean
from bench.eval.run import _scope_fields, load, service_client, wait_idle

TEXT_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
FLOORS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
BARS = tuple(round(0.05 * i, 2) for i in range(1, 16))
CANDIDATES = 200


Asked = tuple[dataset.Query, list[tuple[str | None, float, float]]]


async def ask_all(split: str) -> list[Asked]:
    data = dataset.load(dataset.PATH).split([split])  # type: ignore[list-item]
    asked: list[Asked] = []
    async with service_client("sqlite") as client:
        org_ids = {
            org: str((await client.create_org(name)).fields["org_id"])
            for org, name in data.organizations.items()
        }
        ids = await load(client, data, org_ids)
        await wait_idle(client)
        keys = {memory_id: key for key, memory_id in ids.items()}
        for query in data.queries:
            body: dict[str, Any] = {
                "text": query.text,
                "org_id": org_ids[query.scope.org],
                "limit": CANDIDATES,
                "min_score": 0.0,
                **_scope_fields(query.scope),
            }
            reply = (await client.request(SearchMemories.op.subject, body)).data
            found = []
            for item in reply["items"]:
                scores = item["scores"]
                found.append(
                    (keys.get(item["memory_id"]), scores["text"] or 0.0, scores["vector"] or 0.0)
                )
            asked.append((query, found))
    return asked


def relevances(asked: Sequence[Asked], text_weight: float) -> list[list[tuple[float, str | None]]]:
    """Each query's candidates by relevance under ``text_weight``, best first."""
    ranked = []
    for _, found in asked:
        scored = [(text_weight * t + (1 - text_weight) * max(v, 0.0), key) for key, t, v in found]
        ranked.append(sorted(scored, key=lambda pair: -pair[0]))
    return ranked


def balanced_accuracy(
    asked: Sequence[Asked], ranked: list[list[tuple[float, Any]]], bar: float
) -> float:
    """How well ``confident`` (some candidate at or above ``bar``) tells answerable queries
    from unanswerable ones: the mean of the two classes' hit rates (unanswerable queries are
    a sixth of the set, so plain accuracy would favour calling everything confident)."""
    hits = {True: [0, 0], False: [0, 0]}
    for (query, _), candidates in zip(asked, ranked, strict=True):
        answerable = bool(query.relevant)
        confident = any(r >= bar for r, _ in candidates)
        hits[answerable][0] += confident == answerable
        hits[answerable][1] += 1
    return sum(right / max(total, 1) for right, total in hits.values()) / 2


def evaluate(
    ranked: list[list[tuple[float, Any]]], asked: Sequence[Asked], floor: float, bar: float
) -> Score:
    scores = []
    for (query, _), candidates in zip(asked, ranked, strict=True):
        kept = [(r, key) for r, key in candidates if r >= floor]
        confident = any(r >= bar for r, _ in kept)
        relevant: Mapping[str, int] = query.relevant
        scores.append(Score.of([key for _, key in kept][:10], relevant, confident))
    result = mean(scores)
    assert result is not None
    return result


# The confident rule: families of rules on what a reply holds (its candidates' relevance,
# cosine and word share), each family's parameters chosen on dev by balanced accuracy, then
# the chosen rule of each family scored once on test (``--confidence``).
Features = dict[str, float]


def features(found: list[tuple[str | None, float, float]], text_weight: float) -> Features:
    """What a rule may look at: the best relevance (``r1``) and its lead over the second
    (``gap``), the best cosine (``v1``), the best word share (``t1``), and whether the two
    sides' best candidates are the same memory (``agree``, 1 or 0)."""
    if not found:
        return {"r1": 0.0, "gap": 0.0, "v1": 0.0, "t1": 0.0, "agree": 0.0}
    rel = sorted(
        (text_weight * t + (1 - text_weight) * max(v, 0.0) for _, t, v in found), reverse=True
    )
    by_vector = max(range(len(found)), key=lambda i: found[i][2])
    by_text = max(range(len(found)), key=lambda i: found[i][1])
    return {
        "r1": rel[0],
        "gap": rel[0] - (rel[1] if len(rel) > 1 else 0.0),
        "v1": max(v for _, _, v in found),
        "t1": max(t for _, t, _ in found),
        "agree": float(by_vector == by_text and found[by_text][1] > 0),
    }


Rule = tuple[str, float, float]  # (family, a, b)


def confident_by(rule: Rule, f: Features) -> bool:
    family, a, b = rule
    if family == "relevance":  # today's rule: the best relevance reaches the bar a
        return f["r1"] >= a
    if family == "relevance+gap":  # a lead over the rest counts too
        return f["r1"] + b * f["gap"] >= a
    if family == "relevance|agree":  # both sides agree on the best, at a lower bar b
        return f["r1"] >= a or (f["agree"] == 1.0 and f["r1"] >= b)
    if family == "relevance|words":  # most of the query's words are in one memory
        return f["r1"] >= a or f["t1"] >= b
    raise ValueError(family)


def accuracy_of(asked: Sequence[Asked], rule: Rule, text_weight: float) -> tuple[float, int, int]:
    """Balanced accuracy, answerable queries said not confident, unanswerable said
    confident."""
    hits = {True: [0, 0], False: [0, 0]}
    for query, found in asked:
        answerable = bool(query.relevant)
        said = confident_by(rule, features(found, text_weight))
        hits[answerable][0] += said == answerable
        hits[answerable][1] += 1
    balanced = sum(right / max(total, 1) for right, total in hits.values()) / 2
    return balanced, hits[True][1] - hits[True][0], hits[False][1] - hits[False][0]


def confidence_study() -> None:
    text_weight, vector_weight = ranking.WEIGHTS["hybrid"]
    weight = text_weight / (text_weight + vector_weight)
    dev, test = asyncio.run(ask_all("dev")), asyncio.run(ask_all("test"))
    grid = [round(0.01 * i, 2) for i in range(5, 61)]
    families: dict[str, list[Rule]] = {
        "relevance": [("relevance", a, 0.0) for a in grid],
        "relevance+gap": [("relevance+gap", a, b) for a in grid for b in (-1, -0.5, 0.5, 1)],
        "relevance|agree": [("relevance|agree", a, b) for a in grid for b in grid if b < a],
        "relevance|words": [("relevance|words", a, b) for a in grid for b in (0.5, 0.6, 0.75, 1)],
    }
    print(f"{len(dev)} dev and {len(test)} test queries, hybrid (text weight {weight:.2f}).")
    print(
        "family            chosen on dev         dev: bal  ans-  unans+   test: bal  ans-  unans+"
    )
    for family, rules in families.items():
        best = max(rules, key=lambda r: (accuracy_of(dev, r, weight)[0], -r[1]))
        d, t = accuracy_of(dev, best, weight), accuracy_of(test, best, weight)
        print(
            f"{family:16}  a={best[1]:.2f} b={best[2]:5.2f}     {d[0]:.3f}  {d[1]:4}  {d[2]:6}"
            f"        {t[0]:.3f}  {t[1]:4}  {t[2]:6}"
        )


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fusion", description=__doc__)
    p.add_argument("--split", default="dev", choices=["dev"], help="only dev: test is for reports")
    p.add_argument(
        "--confidence",
        action="store_true",
        help="compare rules for the confident flag: chosen on dev, each scored once on test",
    )
    args = p.parse_args()
    if args.confidence:
        confidence_study()
        return
    asked = asyncio.run(ask_all(args.split))
    print(f"{len(asked)} {args.split} queries. Per text weight: the confident bar with the best")
    print("balanced accuracy (lowest among ties), then the floor with the best nDCG@10 under it.")
    print("text_weight  bar   balanced  floor  nDCG@10  MRR    R@1")
    best: tuple[float, float, float, float] | None = None
    for weight in TEXT_WEIGHTS:
        ranked = relevances(asked, weight)
        bar = max(BARS, key=lambda b: (balanced_accuracy(asked, ranked, b), -b))
        floor = max(FLOORS, key=lambda f: (evaluate(ranked, asked, f, bar).ndcg_10, f))
        score = evaluate(ranked, asked, floor, bar)
        accuracy = balanced_accuracy(asked, ranked, bar)
        print(
            f"{weight:11.2f}  {bar:4.2f}  {accuracy:8.3f}  {floor:5.2f}  {score.ndcg_10:7.3f}  "
            f"{score.mrr:5.3f}  {score.recall_1:5.3f}"
        )
        # Both matter: the order of the results, and a confident flag one can act on.
        if best is None or score.ndcg_10 + accuracy > best[0]:
            best = (score.ndcg_10 + accuracy, weight, floor, bar)
    assert best is not None
    print(
        f"best (nDCG@10 + balanced accuracy): text weight {best[1]:.2f}, floor {best[2]:.2f}, "
        f"bar {best[3]:.2f}"
    )
    text_weight, vector_weight = ranking.WEIGHTS["hybrid"]
    print(
        f"agentmem/ranking.py holds: hybrid text weight "
        f"{text_weight / (text_weight + vector_weight):.2f}, floor {ranking.FLOOR['hybrid']:.2f}, "
        f"bars {ranking.CONFIDENT}"
    )


if __name__ == "__main__":
    main()
