"""The parts of semantic search that need no service: the embedders (the default one loaded
with every network connection refused; the OpenAI-compatible one against a local HTTP
server), the query side's vector index against a brute-force search, and the pure ranking
(fusion, boosts, floor, confidence, MMR)."""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agentmem import ranking
from agentmem.consumers.message_vector_cache import ScopeVectors
from agentmem.consumers.vector_index import OrgVectors, VectorFilter, VectorIndex
from agentmem.embedding import content_hash
from agentmem.embedding.remote import RemoteEmbedder
from agentmem.embedding.wordllama import WordLlamaEmbedder
from agentmem.eventlog import StoredCommit
from agentmem.events import MemoryDeleted, MemoryExpired
from agentmem.personal import key_filter
from agentmem.projections.migrations import MIGRATIONS
from agentmem.projections.vectors import VectorsProjection, vector_bytes
from agentmem.store import Delete, ProjectionBatch, Update, Upsert, open_store


# Embedders --------------------------------------------------------------------------------
def test_the_default_model_loads_and_embeds_with_the_network_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the embedder tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    embedder = WordLlamaEmbedder()
    vectors = embedder.embed(["Ann is allergic to peanuts", "nut allergy", "Friday deploys"])
    assert vectors.shape == (3, 256)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3  # related beats unrelated
    assert embedder.model_id.startswith("wordllama-l2_supercat-256@")
    assert embedder.embed([]).shape == (0, 256)


class _Embeddings(http.server.BaseHTTPRequestHandler):
    """A local /v1/embeddings: the vector of a text is its length and its vowel count."""

    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Embeddings.seen.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), **body}
        )
        data = [
            {"index": i, "embedding": [float(len(t)), float(sum(c in "aeiou" for c in t))]}
            for i, t in enumerate(body["input"])
        ]
        reply = json.dumps({"data": list(reversed(data)), "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def embeddings_server() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Embeddings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_openai_compatible_endpoint_embeds_in_order_with_its_key(embeddings_server: str) -> None:
    _Embeddings.seen.clear()
    embedder = RemoteEmbedder(embeddings_server, "tiny", key="sk-test")
    vectors = embedder.embed(["aa", "bbbb"])
    assert embedder.model_id == "openai-tiny"
    assert _Embeddings.seen == [
        {
            "path": "/v1/embeddings",
            "auth": "Bearer sk-test",
            "model": "tiny",
            "input": ["aa", "bbbb"],
        }
    ]
    # Sorted back by index (the server answered in reverse), and scaled to unit length.
    assert np.allclose(vectors, [[2 / np.sqrt(8), 2 / np.sqrt(8)], [1.0, 0.0]])
    assert embedder.dim == 2


@dataclass(frozen=True)
class Named:
    """An embedder that only has a model id (the projection loads nothing to name it)."""

    model_id: str
    dim: int = 2
    blocking: bool = False

    def embed(self, texts: list[str]) -> Any:
        raise AssertionError("not called")


def test_the_model_is_the_projections_variant_and_contents_hash_stably() -> None:
    first, second = VectorsProjection(Named("a")), VectorsProjection(Named("b"))
    assert first.name == second.name == "vectors"
    assert (first.variant, second.variant) == ("a", "b")
    assert content_hash("x") == content_hash("x") != content_hash("y")


# The vector index -------------------------------------------------------------------------
def _row(
    memory_id: str, embedding: np.ndarray[Any, Any], seq: int, **fields: Any
) -> dict[str, Any]:
    row = {
        "memory_id": memory_id,
        "user_id": "ann",
        "agent_id": None,
        "session_id": None,
        "memory_type": "semantic",
        "state": "live",
        "importance": 500_000,
        "valid_from": 0,
        "valid_to": None,
        "expires_at": None,
        "created_at": seq,
        "vector": vector_bytes(embedding),
        "seq": seq,
    }
    return {**row, **fields}


def test_the_index_finds_what_brute_force_finds_under_every_filter() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(3_000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    users = [f"u{i % 7}" for i in range(3_000)]
    states = ["archived" if i % 11 == 0 else "live" for i in range(3_000)]
    expiry = [5 if i % 13 == 0 else None for i in range(3_000)]
    rows = [
        _row(f"m{i:05}", vectors[i], i + 1, user_id=users[i], state=states[i], expires_at=expiry[i])
        for i in range(3_000)
    ]
    copy = OrgVectors(16)
    for start in range(0, 3_000, 700):  # caught up in several pages, growing as it goes
        copy.apply(rows[start : start + 700])
    query = vectors[42] + 0.1
    for scope, state in (({"user_id": "u3"}, "live"), ({}, "live"), ({}, "archived")):
        allowed = [
            i
            for i in range(3_000)
            if states[i] == state
            and expiry[i] is None
            and all(users[i] == v for v in scope.values())
        ]
        scores = vectors[allowed] @ query
        truth = [f"m{allowed[i]:05}" for i in np.argsort(-scores)[:10]]
        found = copy.search(query, VectorFilter(scope, (state,), now=10), 10)
        assert [memory_id for memory_id, _ in found] == truth
    assert copy.search(query, VectorFilter({"user_id": "nobody"}, ("live",), now=10), 10) == []


def test_a_tombstone_and_a_change_reach_the_index() -> None:
    a, b = np.eye(4, dtype=np.float32)[:2]
    copy = OrgVectors(4)
    copy.apply([_row("m1", a, 1), _row("m2", b, 1)])
    copy.apply([_row("m1", a, 2, state="deleted", vector=b"")])
    copy.apply([_row("m2", a, 3, user_id="bob")])  # new content and scope
    copy.apply([_row("m3", b, 4, state="deleted", vector=b"")])  # deleted before seen
    assert copy.search(a, VectorFilter({}, ("live",), now=0), 10) == [("m2", 1.0)]
    assert copy.search(a, VectorFilter({"user_id": "ann"}, ("live",), now=0), 10) == []
    assert copy.dead == 1
    assert copy.n == 2
    assert copy.after == (4, "m3")


def test_a_forget_evicts_its_vectors_and_keeps_them_out_of_catch_ups() -> None:
    a, b = np.eye(4, dtype=np.float32)[:2]
    copy = OrgVectors(4, "o1")
    copy.apply([_row("m1", a, 1), _row("m2", b, 2, user_id="bob", session_id="s1")])
    assert copy.names == ["o1.ann.=.=.memory.m1", "o1.bob.=.s1.memory.m2"]
    assert copy.forget(key_filter("o1", user_id="ann")) == 1
    assert copy.search(a, VectorFilter({}, ("live",), now=0), 10) == [("m2", 0.0)]
    assert not copy.matrix[0].any()  # its numbers are gone from memory, not only masked
    # A lagging store hands the forgotten row again: kept out while the forget is hidden.
    hidden = [key_filter("o1", user_id="ann"), key_filter("o1", session_id="s1")]
    copy.apply([_row("m1", a, 3), _row("m2", b, 3, user_id="bob", session_id="s1")], hidden)
    assert copy.search(a, VectorFilter({}, ("live",), now=0), 10) == []
    assert copy.after == (3, "m2")


async def test_the_index_loads_afresh_once_the_store_has_passed_a_forget() -> None:
    async def last_seq() -> int:
        return 7

    index = VectorIndex("m", 4, last_seq=last_seq)
    index.forget("o1.ann.*.*.>")
    await asyncio.sleep(0)  # the bound is read in a task of its own
    heard = index._forgotten["o1"]
    assert [(h.pattern, h.bound) for h in heard] == [("o1.ann.*.*.>", 7)]
    assert not index._settled("o1", 6)  # the projection has not applied the forget yet
    assert index._settled("o1", 7)
    assert "o1" not in index._forgotten


def test_as_of_keeps_what_was_valid_then() -> None:
    a = np.eye(4, dtype=np.float32)[0]
    copy = OrgVectors(4)
    copy.apply(
        [
            _row("old", a, 1, valid_from=0, valid_to=100, state="superseded"),
            _row("new", a, 2, valid_from=100),
        ]
    )
    then = copy.search(a, VectorFilter({}, ("superseded",), now=0, as_of=50), 10)
    assert [m for m, _ in then] == ["old"]
    assert copy.search(a, VectorFilter({}, ("live",), now=0, as_of=50), 10) == []
    assert [m for m, _ in copy.search(a, VectorFilter({}, ("live",), now=0, as_of=150), 10)] == [
        "new"
    ]


# Ranking -----------------------------------------------------------------------------------
def _candidate(
    memory_id: str, text: float | None, vector: float | None, **kw: Any
) -> ranking.Candidate:
    return ranking.Candidate(
        memory_id, text, vector, kw.get("created_at", 0), kw.get("importance", 0.5)
    )


def test_hybrid_relevance_is_the_weighted_mean_and_negative_cosines_count_as_zero() -> None:
    text_weight, vector_weight = ranking.WEIGHTS["hybrid"]
    fused = ranking.relevance("hybrid", 1.0, 0.5)
    assert fused == pytest.approx(
        (text_weight + vector_weight * 0.5) / (text_weight + vector_weight)
    )
    assert ranking.relevance("hybrid", 0.0, -0.4) == 0.0
    assert ranking.relevance("text", 0.5, 0.9) == 0.5
    assert ranking.relevance("vector", 0.5, 0.9) == pytest.approx(0.9)


def test_boosts_add_to_relevance_and_the_floor_ignores_them() -> None:
    day = ranking.DAY_MS
    now = 100 * day
    fresh = _candidate("fresh", 0.0, 0.2, created_at=now, importance=1.0)
    old = _candidate("old", 0.0, 0.3, created_at=now - 30 * day, importance=1.0)
    plain = ranking.score("vector", [fresh, old], ranking.Boosts(), now)
    assert [s.memory_id for s in plain] == ["old", "fresh"]
    boosted = ranking.score("vector", [fresh, old], ranking.Boosts(recency=0.5), now)
    assert [s.memory_id for s in boosted] == ["fresh", "old"]
    assert boosted[0].components["recency"] == pytest.approx(1.0)
    assert boosted[1].components["recency"] == pytest.approx(0.5)  # one half-life old
    assert boosted[0].score == pytest.approx(0.2 + 0.5)
    important = ranking.score("vector", [fresh], ranking.Boosts(importance=0.4), now)
    assert important[0].components["importance"] == pytest.approx(1.0)
    assert ranking.floor("vector", boosted, 0.25) == [boosted[1]]  # fresh: relevance 0.2
    # Relevance 0.2 and 0.3 against the bar; the boosts (scores 0.7, 0.55) do not count.
    assert ranking.confident("vector", boosted) is (ranking.CONFIDENT["vector"] <= 0.3)
    assert ranking.confident("vector", boosted[:1]) is (ranking.CONFIDENT["vector"] <= 0.2)
    assert ranking.confident(
        "vector", ranking.score("vector", [_candidate("x", None, 0.9)], ranking.Boosts(), now)
    )


def test_mmr_trades_relevance_for_diversity() -> None:
    a, b = np.eye(2, dtype=np.float32)
    scored = [
        ranking.Scored("a1", 0.9, {}),
        ranking.Scored("a2", 0.85, {}),
        ranking.Scored("b1", 0.6, {}),
    ]
    vectors = {"a1": a, "a2": a, "b1": b}
    assert [s.memory_id for s in ranking.mmr(scored, vectors, 1.0, 3)] == ["a1", "a2", "b1"]
    assert [s.memory_id for s in ranking.mmr(scored, vectors, 0.5, 2)] == ["a1", "b1"]


def test_an_expired_or_deleted_memory_leaves_only_a_tombstone_for_every_model() -> None:
    """And no past vector (``known_at``'s) of any model."""
    projection = VectorsProjection(WordLlamaEmbedder())
    for event, state in (
        (MemoryExpired(memory_id="m1", expires_at=5), "expired"),
        (MemoryDeleted(memory_id="m1"), "deleted"),
    ):
        commit = StoredCommit(
            seq=9, subject="agentmem.evt.o1.memory.m1", headers={}, events=[event]
        )
        op, past = projection.project(commit)
        assert isinstance(op, Update)
        assert op.key == {"memory_id": "m1"}  # every model's row
        assert op.values == {"state": state, "content_hash": "", "vector": b"", "seq": 9}
        assert past == Delete("memory_past_vectors", {"memory_id": "m1"})


async def test_the_index_stays_within_its_rows_and_reloads_what_it_dropped(
    tmp_path: Path,
) -> None:
    """Three organizations of 1,024 rows each (one matrix block) in an index of 2,048 rows:
    the least recently searched copy goes, and a search of it loads it again, whole."""
    store = await open_store(str(tmp_path / "vectors.db"))
    try:
        await store.migrate(MIGRATIONS)
        rng = np.random.default_rng(3)
        vectors = rng.normal(size=(3 * 1_000, 8)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ops: list[Any] = []
        for i in range(3_000):
            row = _row(f"m{i:05}", vectors[i], 1, content_hash=f"h{i}", position=i)
            del row["vector"]
            ops.append(
                Upsert(
                    "memory_vectors",
                    {
                        **row,
                        "model": "m",
                        "org_id": f"org{i % 3}",
                        "vector": vector_bytes(vectors[i]),
                    },
                )
            )
        await store.apply(ProjectionBatch("vectors-test", 1, [(1, "s", ops)]))
        index = VectorIndex("m", 8, max_rows=2_048)
        where = VectorFilter({}, ("live",), now=10)
        for org in ("org0", "org1", "org2"):
            copy = await index.fresh(store, org, 1)
            assert copy.n == 1_000
        assert list(index.held()) == ["org1", "org2"]  # org0, the coldest, was dropped
        assert index.evicted == 1
        again = await index.fresh(store, "org0", 1)  # loaded from the store, whole
        truth = max(range(0, 3_000, 3), key=lambda i: float(vectors[i] @ vectors[0]))
        assert again.search(vectors[0], where, 1)[0][0] == f"m{truth:05}"
        assert list(index.held()) == ["org2", "org0"]
        # Idle copies go too, whatever room is left.
        idle = VectorIndex("m", 8, max_rows=10_000, idle_seconds=1e-9)
        await idle.fresh(store, "org0", 1)
        await idle.fresh(store, "org1", 1)
        assert list(idle.held()) == ["org1"]
    finally:
        await store.close()


def test_a_message_copy_drops_what_is_gone_but_not_what_is_only_late() -> None:
    a, b, c = np.eye(4, dtype=np.float32)[:3]

    def row(
        message_id: str, vector: np.ndarray[Any, Any], seq: int, **fields: Any
    ) -> dict[str, Any]:
        base = {"session_id": "s1", "agent_id": "bot", "user_id": None, "role": "user"}
        return {
            **base,
            "message_id": message_id,
            "vector": vector_bytes(vector),
            "seq": seq,
            **fields,
        }

    copy = ScopeVectors(4)
    copy.apply([row("m1", a, 1), row("m2", b, 2, role="assistant"), row("m3", c, 3)])
    copy.apply([row("m3", c, 3)])  # read again (a page cut inside a commit): held once
    assert copy.n == 3
    ids, scores = copy.scores(a, {"org_id": "o", "agent_id": "bot"})
    assert dict(zip(ids, scores.tolist(), strict=True)) == {"m1": 1.0, "m2": 0.0, "m3": 0.0}
    assert copy.scores(a, {"role": "assistant"})[0] == ["m2"]
    assert copy.scores(a, {"session_id": "nowhere"})[0] == []
    copy.drop(["m1", "m3"], shown_until=2)  # m3 is newer than what messages shows: late
    assert copy.scores(a, {})[0] == ["m2", "m3"]
    assert copy.dead == 1
