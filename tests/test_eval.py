"""The retrieval evaluation (``python -m bench.eval``): its metrics on hand-made rankings
with answers worked out by hand, the checks that keep the set consistent, how a reply is
scored (leaks, corrected facts, confidence), and the harness on a slice of the set against
a real service (its own nats-server and ``agentmem serve`` process)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from bench.eval import dataset, report
from bench.eval.dataset import CATEGORIES, Dataset, Query, Scope
from bench.eval.metrics import Score, mean, ndcg_at, recall_at, reciprocal_rank
from bench.eval.run import ModeRun, answer, evaluate, service_client


# Metrics ------------------------------------------------------------------------------------
def test_recall_counts_the_share_of_relevant_memories_in_the_first_k() -> None:
    ranking = ["x", "a", "y", "z", "w", "b"]
    relevant = {"a": 2, "b": 2}
    assert recall_at(ranking, relevant, 1) == 0.0
    assert recall_at(ranking, relevant, 2) == 0.5
    assert recall_at(ranking, relevant, 5) == 0.5
    assert recall_at(ranking, relevant, 6) == 1.0
    assert recall_at(["a", "a"], {"a": 2, "b": 1}, 5) == 0.5  # a repeat is found once


def test_reciprocal_rank_is_one_over_the_rank_of_the_first_relevant_result() -> None:
    assert reciprocal_rank(["a", "b"], {"a": 2}) == 1.0
    assert reciprocal_rank(["x", None, "a", "b"], {"a": 1, "b": 2}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x", "y"], {"a": 2}) == 0.0
    assert reciprocal_rank([], {"a": 2}) == 0.0


def test_ndcg_of_hand_made_rankings() -> None:
    # The one relevant memory second: gain 3 at rank 2 over gain 3 at rank 1.
    assert ndcg_at(["x", "a"], {"a": 2}, 10) == pytest.approx(1 / math.log2(3))
    # Graded: b (grade 1) first, a (grade 2) second; the ideal is a then b.
    ideal = 3 + 1 / math.log2(3)
    assert ndcg_at(["b", "a"], {"a": 2, "b": 1}, 10) == pytest.approx(
        (1 + 3 / math.log2(3)) / ideal
    )
    assert ndcg_at(["a", "b", "x"], {"a": 2, "b": 1}, 10) == pytest.approx(1.0)
    # Beyond k nothing counts; a repeated result does not beat the ideal.
    assert ndcg_at(["x", "a"], {"a": 2}, 1) == 0.0
    assert ndcg_at(["a", "a"], {"a": 2}, 10) == pytest.approx(1.0)


def test_metrics_of_a_query_without_relevant_memories_are_raised_not_guessed() -> None:
    with pytest.raises(ValueError, match="without relevant memories"):
        recall_at(["a"], {}, 1)
    with pytest.raises(ValueError, match="without relevant memories"):
        ndcg_at(["a"], {}, 10)


def test_an_unanswerable_query_scores_one_only_when_nothing_confident_came_back() -> None:
    assert Score.of([], {}, confident=False) == Score(1.0, 1.0, 1.0, 1.0)
    assert Score.of(["a"], {}, confident=True) == Score(0.0, 0.0, 0.0, 0.0)
    assert Score.of(["a"], {}, confident=False) == Score(1.0, 1.0, 1.0, 1.0)


def test_a_score_and_the_mean_of_scores() -> None:
    found = Score.of(["x", "a"], {"a": 2}, confident=True)
    assert (found.recall_1, found.recall_5, found.mrr) == (0.0, 1.0, 0.5)
    both = mean([found, Score(1.0, 1.0, 1.0, 1.0)])
    assert both is not None
    assert (both.recall_1, both.recall_5, both.mrr) == (0.5, 1.0, 0.75)
    assert mean([]) is None


# The set ------------------------------------------------------------------------------------
def test_the_set_is_as_large_as_promised_and_every_category_is_in_both_splits() -> None:
    data = dataset.load()
    assert len(data.memories) >= 300
    assert len(data.queries) >= 200
    for split in dataset.SPLITS:
        found = {q.category for q in data.queries if q.split == split}
        assert found == set(CATEGORIES), split
    assert any(m.supersedes for m in data.memories)
    assert all(q.as_of is not None for q in data.queries if q.category == "temporal")
    assert all(q.superseded for q in data.queries if q.category == "superseded")


def _document() -> dict[str, Any]:
    return {
        "valid_from_default": "2020-01-01",
        "organizations": {"o": "O"},
        "memories": [
            {"key": "a", "org": "o", "user": "u", "memory_type": "semantic", "content": "A"},
            {"key": "b", "org": "o", "user": "v", "memory_type": "semantic", "content": "B"},
        ],
        "queries": [
            {
                "id": "q1",
                "split": "dev",
                "category": "paraphrase",
                "org": "o",
                "user": "u",
                "text": "a?",
                "relevant": {"a": 2},
            }
        ],
    }


def test_the_set_is_checked_when_read() -> None:
    assert len(dataset.parse(_document()).queries) == 1
    outside = _document()
    outside["queries"][0]["relevant"] = {"b": 2}
    with pytest.raises(ValueError, match="outside the query's scope"):
        dataset.parse(outside)
    unknown = _document()
    unknown["queries"][0]["relevant"] = {"c": 2}
    with pytest.raises(ValueError, match="unknown memory c"):
        dataset.parse(unknown)
    stale = _document()
    stale["memories"].append(
        {
            **stale["memories"][0],
            "key": "a2",
            "content": "A2",
            "supersedes": "a",
            "valid_from": "2024-01-01",
        }
    )
    with pytest.raises(ValueError, match="superseded, relevant only with as_of"):
        dataset.parse(stale)
    stale["queries"][0]["as_of"] = "2024-02-01"  # a was true until 2024-01-01
    with pytest.raises(ValueError, match="was not valid at as_of"):
        dataset.parse(stale)
    stale["queries"][0]["as_of"] = "2023-12-31"
    assert dataset.parse(stale).queries[0].relevant == {"a": 2}


def test_a_slice_keeps_what_its_queries_name_and_other_scopes_to_leak() -> None:
    small = dataset.load().slice(20, 10)
    assert len(small.queries) == 10
    assert 20 <= len(small.memories) <= 22
    keys = {m.key for m in small.memories}
    for query in small.queries:
        assert set(query.relevant) | set(query.superseded) <= keys
    assert {m.scope.org for m in small.memories} == {"northwind", "harbor"}
    dataset.check(small)


# Scoring a reply ---------------------------------------------------------------------------
def _item(memory_id: str, org_id: str, user_id: str | None, **extra: Any) -> dict[str, Any]:
    return {"memory_id": memory_id, "org_id": org_id, "user_id": user_id, **extra}


QUERY = Query(
    "q", "dev", "cross_scope", Scope("nw", user="ann"), "peanuts?", {"mine": 2}, superseded=("old",)
)
KEYS = {"id-mine": "mine", "id-old": "old", "id-theirs": "theirs", "id-harbor": "harbor"}
ORGS = {"org-nw": "nw", "org-hb": "hb"}


def test_results_outside_the_scope_count_as_leaks_and_corrections_are_counted() -> None:
    data = {
        "items": [
            _item("id-harbor", "org-hb", "ann"),  # the same user id in another organization
            _item("id-mine", "org-nw", "ann", agent_id="concierge"),  # in the user's scope
            _item("id-theirs", "org-nw", "ben"),
            _item("id-old", "org-nw", "ann"),
            _item("id-stranger", "org-unknown", "ann"),
        ]
    }
    found = answer(QUERY, data, KEYS, ORGS, 0.001)
    assert found.ranking == ["harbor", "mine", "theirs", "old", None]
    assert (found.leaks, found.superseded, found.confident) == (3, 1, True)
    assert found.score.mrr == 0.5


def test_a_reply_that_says_it_is_not_confident_is_an_abstention() -> None:
    item = _item("id-mine", "org-nw", "ann")
    assert answer(QUERY, {"items": []}, KEYS, ORGS, 0).confident is False
    assert answer(QUERY, {"items": [item], "confident": False}, KEYS, ORGS, 0).confident is False
    unsure = {**item, "confident": False}
    assert answer(QUERY, {"items": [unsure]}, KEYS, ORGS, 0).confident is False
    assert answer(QUERY, {"items": [unsure, item]}, KEYS, ORGS, 0).confident is True


# Against a real service ---------------------------------------------------------------------
@pytest.mark.slow
async def test_the_harness_on_a_slice_against_a_real_service() -> None:
    small: Dataset = dataset.load().slice(20, 10)
    async with service_client() as client:
        evaluation = await evaluate(client, small)
    runs = {run.mode: run for run in evaluation.runs}
    text = runs["text"]
    assert text.unavailable is None
    assert [a.query.id for a in text.answers] == [q.id for q in small.queries]
    # The modes the service lacks are reported, not failed; those it has are run.
    for run in evaluation.runs:
        assert (run.unavailable is None) == (len(run.answers) == len(small.queries))
    for run in evaluation.runs:
        if run.unavailable is not None:
            continue
        assert sum(a.leaks for a in run.answers) == 0
        assert sum(a.superseded for a in run.answers if a.query.as_of is None) == 0
    for found in text.answers:
        if found.query.category == "exact":  # an id or a name: full text finds it first
            assert found.score.recall_1 == 1.0, found
        if found.query.category == "superseded":  # the correction, never the old fact
            assert found.ranking, found
            assert set(found.ranking) & set(found.query.superseded) == set()
    summary = report.summary(text)
    assert summary["overall"]["queries"] == 10
    assert summary["leaks"] == 0
    shown = report.text(evaluation)
    assert "cross-scope leaks: 0 results from another scope" in shown
    assert json.dumps(summary)  # the --json document is plain data


def test_modes_that_ran_are_compared_side_by_side() -> None:
    first = answer(QUERY, {"items": [_item("id-mine", "org-nw", "ann")]}, KEYS, ORGS, 0)
    second = answer(QUERY, {"items": [_item("id-old", "org-nw", "ann")]}, KEYS, ORGS, 0)
    text_run = ModeRun("text", None, answers=[first])
    vector_run = ModeRun("vector", "vector", answers=[second])
    missing = ModeRun("hybrid", "hybrid", unavailable="Object contains unknown field `mode`")
    assert report.comparison([text_run, missing]) is None
    shown = report.comparison([text_run, vector_run, missing])
    assert shown is not None
    rows = {line.split()[0]: line.split()[1:] for line in shown.splitlines()[3:]}
    assert rows == {
        "text": ["1", "1.000", "1.000", "1.000", "1.000"],
        "vector": ["1", "0.000", "0.000", "0.000", "0.000"],
    }
    assert "mode hybrid: unavailable" in report.mode_text(missing)


def test_abstaining_is_counted_right_on_unanswerable_and_wrong_on_answerable_queries() -> None:
    unanswerable = Query("n", "dev", "no_answer", Scope("nw", user="ann"), "shoe size?", {})
    mine = _item("id-mine", "org-nw", "ann")
    answers = [
        answer(QUERY, {"items": [mine], "confident": False}, KEYS, ORGS, 0),  # wrong
        answer(QUERY, {"items": [mine], "confident": True}, KEYS, ORGS, 0),
        answer(unanswerable, {"items": [mine], "confident": False}, KEYS, ORGS, 0),  # right
        answer(unanswerable, {"items": [mine]}, KEYS, ORGS, 0),
    ]
    summary = report.summary(ModeRun("hybrid", "hybrid", answers=answers))
    assert (summary["answerable"], summary["answerable_abstained"]) == (2, 1)
    assert (summary["unanswerable"], summary["unanswerable_abstained"]) == (2, 1)
    assert summary["categories"]["no_answer"]["mrr"] == 0.5
    assert summary["categories"]["cross_scope"]["mrr"] == 1.0  # ranking ignores confidence
