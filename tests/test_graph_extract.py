"""Extraction into the knowledge graph (``graph.extract``), against the real service and a
real nats-server: the rules (names, e-mail addresses, dates, the documented relation
patterns), through entity resolution and relation assertion; a stored answer used again;
extraction as every memory is added (a setting); and an OpenAI-compatible model played by a
tiny HTTP server on this machine (a real HTTP call, no network), whose answer is validated
against the JSON Schema and stored with the model and the prompt's hash, so that the same
extraction again, and a replay, never call it again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, InvalidError, NotFoundError, UnavailableError, subjects
from agentmem.domain.extraction import ANSWER_SCHEMA, RULE_CONFIDENCE, SPEAKER
from agentmem.domain.extraction_rules import PATTERNS, extract_rules, iso_date
from agentmem.eventlog import EventLog
from agentmem.events import GraphExtracted
from agentmem.extraction_model import parse_answer
from agentmem.service import Service
from tests.conftest import admin_key, answering, settings_for
from tests.realparts import dump_store, keys_of, replay_into, wait_caught_up
from tests.support import NatsServer

T0 = 1_700_000_000_000


# The rules, pure ---------------------------------------------------------------------------
def test_each_documented_pattern_finds_its_example() -> None:
    for pattern in PATTERNS:
        answer = extract_rules(pattern.example, speaker=False)
        assert [(r.predicate, r.confidence) for r in answer.relations] == [
            (pattern.predicate, RULE_CONFIDENCE)
        ], pattern.example
        types = {e.name: e.type for e in answer.entities}
        relation = answer.relations[0]
        assert (types[relation.subject], types[relation.object]) == (
            pattern.subject_type,
            pattern.object_type,
        )


def test_first_person_names_the_user_and_only_with_a_user() -> None:
    text = "I live in Berlin and my sister is Clara Weiss. My email is me@example.org"
    answer = extract_rules(text, speaker=True)
    assert [(r.subject, r.predicate, r.object) for r in answer.relations] == [
        (SPEAKER, "lives_in", "Berlin"),
        (SPEAKER, "sister", "Clara Weiss"),
        (SPEAKER, "has_email", "me@example.org"),
    ]
    assert {e.name: e.type for e in answer.entities}["me@example.org"] == "email"
    without = extract_rules(text, speaker=False)
    assert without.relations == []
    assert SPEAKER not in [e.name for e in without.entities]


def test_names_emails_and_dates_alone() -> None:
    answer = extract_rules(
        "Yesterday Jane Eyre wrote to rochester@thornfield.example on 3 March 1847.", False
    )
    assert {(e.name, e.type) for e in answer.entities} == {
        ("Jane Eyre", "person"),
        ("rochester@thornfield.example", "email"),
        ("1847-03-03", "date"),
    }
    assert answer.relations == []
    assert iso_date("March 3, 1990") == iso_date("3 March 1990") == "1990-03-03"
    # Capitalised words at the start of a sentence alone are no name.
    assert extract_rules("The weather was fine. Then it rained.", False).entities == []


def test_a_model_answer_must_match_the_schema() -> None:
    good = {"entities": [{"name": "Ann", "type": "person"}], "relations": []}
    assert [e.name for e in parse_answer(json.dumps(good)).entities] == ["Ann"]
    # An end the model did not list becomes a concept.
    ends = {
        "entities": [],
        "relations": [{"subject": "Ann", "predicate": "likes", "object": "Tea"}],
    }
    assert {(e.name, e.type) for e in parse_answer(json.dumps(ends)).entities} == {
        ("Ann", "concept"),
        ("Tea", "concept"),
    }
    for bad in (
        "not json",
        json.dumps({"entities": []}),
        json.dumps({**good, "extra": 1}),
        json.dumps({"entities": [{"name": "Ann", "type": "Person!"}], "relations": []}),
        json.dumps(
            {
                "entities": [],
                "relations": [{"subject": "a", "predicate": "x", "object": "b", "confidence": 2}],
            }
        ),
    ):
        with pytest.raises(UnavailableError):
            parse_answer(bad)
    assert ANSWER_SCHEMA["additionalProperties"] is False


# A chat endpoint on this machine -----------------------------------------------------------
class FakeModel:
    """An OpenAI-compatible ``/v1/chat/completions`` that answers ``answer`` and counts."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answer: str = json.dumps(
            {
                "entities": [
                    {"name": "Ann Lee", "type": "person"},
                    {"name": "Globex", "type": "organization"},
                ],
                "relations": [
                    {
                        "subject": "Ann Lee",
                        "predicate": "works_at",
                        "object": "Globex",
                        "fact": "Ann Lee works at Globex",
                        "confidence": 0.9,
                    }
                ],
            }
        )
        model = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                model.calls.append(
                    {"path": self.path, "auth": self.headers["Authorization"], **body}
                )
                reply = {"choices": [{"message": {"role": "assistant", "content": model.answer}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeModel:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def model() -> Iterator[FakeModel]:
    with FakeModel() as running:
        yield running


@pytest.fixture
async def extracting(
    nats_server: NatsServer, tmp_path: Path, store_url: str, model: FakeModel
) -> AsyncIterator[Service]:
    """The service with the model configured and extraction on every add."""
    settings = settings_for(nats_server, tmp_path, store_url)
    settings.extraction_url = model.url
    settings.extraction_model = "tiny-test-model"
    settings.extraction_key = "sk-test"
    settings.extract_on_add = True
    running = Service(settings)
    await running.start()
    await answering(nats_server.url)
    yield running
    await running.stop()


@pytest.fixture
async def member(extracting: Service, nc: NATS, tmp_path: Path) -> tuple[Client, str]:
    """A client of a member of a fresh organization, and the member's user id."""
    admin = Client(nc, admin_key(tmp_path))
    org_id = str((await admin.create_org("Extracting")).fields["org_id"])
    user = await admin.register_user(org_id, "Member", "m@x.example", "long-enough-password")
    key = await admin.create_api_key("test", user_id=user.fields["user_id"])
    return admin.with_token(str(key.fields["token"])), str(user.fields["user_id"])


@pytest.fixture
def api(member: tuple[Client, str]) -> Client:
    return member[0]


async def facts_of(api: Client, entity_id: str) -> list[tuple[str, str, str]]:
    facts = await api.graph_facts(entity_id, after_seq=api.last_seq)
    return sorted((f.subject_name, f.predicate, f.object_name) for f in facts.items)


# Over NATS ---------------------------------------------------------------------------------
async def test_rules_on_a_memory_and_again(api: Client) -> None:
    text = "Ann Lee works at Acme Corp. Ann Lee lives in Paris."
    memory_id = str((await api.add_memory(text, user_id="u1")).fields["memory_id"])
    # Extracted as it was added (the setting): asked again, the stored answer is used.
    again = await api.extract_graph(memory_id=memory_id)
    assert again.reused is True
    assert (again.extractor, again.model) == ("rules", "rules-v1")
    assert len(again.prompt_sha256) == 64
    assert {e.name: e.created for e in again.entities} == {
        "Ann Lee": False,
        "Acme Corp": False,
        "Paris": False,
    }
    assert [(r.predicate, r.deduplicated) for r in again.relations] == [
        ("works_at", True),
        ("lives_in", True),
    ]
    ann = next(e.entity_id for e in again.entities if e.name == "Ann Lee")
    assert await facts_of(api, ann) == [
        ("Ann Lee", "lives_in", "Paris"),
        ("Ann Lee", "works_at", "Acme Corp"),
    ]
    got = await api.get_entity(ann)
    assert (got.entity_type, got.user_id) == ("person", "u1")
    facts = await api.graph_facts(ann)
    assert {f.confidence for f in facts.items} == {RULE_CONFIDENCE}
    assert facts.items[0].source == {
        "memory_ids": [memory_id],
        "message_ids": [],
        "producer": "graph.extract rules-v1",
    }
    # The same names elsewhere in the scope resolve to these entities; a move ends the old
    # place (lives_in is single-valued) and touches nothing else.
    moved = str(
        (await api.add_memory("Ann Lee lives in Berlin.", user_id="u1")).fields["memory_id"]
    )
    assert moved
    assert await facts_of(api, ann) == [
        ("Ann Lee", "lives_in", "Berlin"),
        ("Ann Lee", "works_at", "Acme Corp"),
    ]
    assert len((await api.resolve_entity("Ann Lee", user_id="u1")).candidates) == 1
    # A batch too: each memory it adds.
    batch = await api.add_memories(
        [
            {"content": "Bo Chen works at Initech.", "user_id": "u1"},
            {"content": "Bo Chen lives in Oslo.", "user_id": "u1"},
        ]
    )
    assert batch.added == 2
    bo = (await api.resolve_entity("Bo Chen", user_id="u1", after_seq=api.last_seq)).entity_id
    assert bo is not None
    assert await facts_of(api, bo) == [
        ("Bo Chen", "lives_in", "Oslo"),
        ("Bo Chen", "works_at", "Initech"),
    ]


async def test_facts_hold_for_their_memorys_valid_time(api: Client) -> None:
    """A fact extracted from a memory dated in the past holds from that date, and its
    correction ends it when the correction became true, so the graph and the memories give
    one answer to the same ``as_of``; an older memory stating a fact held from later adds
    the time between, and one of a time held already adds nothing."""
    day = 86_400_000
    paris = await api.add_memory("Ann Lee lives in Paris.", user_id="u1", valid_from=T0)
    first = await api.extract_graph(memory_id=str(paris.fields["memory_id"]))
    ann = next(e.entity_id for e in first.entities if e.name == "Ann Lee")
    berlin = await api.supersede_memory(
        str(paris.fields["memory_id"]), "Ann Lee lives in Berlin.", valid_from=T0 + 60 * day
    )
    await api.extract_graph(memory_id=str(berlin.fields["superseded_by"]))
    with pytest.raises(NotFoundError) as gone:  # the corrected memory: its correction's turn
        await api.extract_graph(memory_id=str(paris.fields["memory_id"]))
    assert gone.value.details["superseded_by"] == berlin.fields["superseded_by"]
    for as_of, place, span in [
        (T0 + 10 * day, "Paris", (T0, T0 + 60 * day)),
        (T0 + 90 * day, "Berlin", (T0 + 60 * day, None)),
    ]:
        held = await api.graph_facts(ann, as_of=as_of, after_seq=api.last_seq)
        assert [(f.object_name, f.valid_from, f.valid_to) for f in held.items] == [
            (place, *span)
        ], as_of
        listed = await api.list_memories(user_id="u1", as_of=as_of)
        assert [m.content for m in listed.items] == [f"Ann Lee lives in {place}."]
    assert (await api.graph_facts(ann, as_of=T0 - day)).items == []
    # Said again by a memory dated before the fact was first stated: the same fact.
    works = await api.add_memory("Ann Lee works at Acme Corp.", user_id="u1", valid_from=T0)
    await api.extract_graph(memory_id=str(works.fields["memory_id"]))
    older = await api.add_memory(
        "Ann Lee works at Acme Corp, she said.", user_id="u1", valid_from=T0 - 30 * day
    )
    await api.extract_graph(memory_id=str(older.fields["memory_id"]))
    for as_of, span in [(T0 - 10 * day, (T0 - 30 * day, T0)), (T0 + 10 * day, (T0, None))]:
        facts = await api.graph_facts(ann, as_of=as_of, after_seq=api.last_seq)
        works = [(f.valid_from, f.valid_to) for f in facts.items if f.predicate == "works_at"]
        assert works == [span], as_of
    # Said once more, by a memory of a time held already: nothing new.
    within = await api.add_memory(
        "Ann Lee works at Acme Corp, again.", user_id="u1", valid_from=T0 + day
    )
    await api.extract_graph(memory_id=str(within.fields["memory_id"]))
    facts = await api.graph_facts(ann, as_of=T0 + 10 * day, after_seq=api.last_seq)
    assert [f.valid_from for f in facts.items if f.predicate == "works_at"] == [T0]


async def test_a_correction_from_the_corrected_memorys_own_start_replaces_its_fact(
    api: Client,
) -> None:
    """Superseded from its own valid_from, a memory was never true: its fact must not stay
    in the graph beside the correction's (it stayed, the correction's was left out)."""
    kyiv = await api.add_memory("Ned Fry lives in Kyiv.", user_id="u1", valid_from=T0)
    first = await api.extract_graph(memory_id=str(kyiv.fields["memory_id"]))
    ned = next(e.entity_id for e in first.entities if e.name == "Ned Fry")
    riga = await api.supersede_memory(
        str(kyiv.fields["memory_id"]), "Ned Fry lives in Riga.", valid_from=T0
    )
    await api.extract_graph(memory_id=str(riga.fields["superseded_by"]))
    for as_of in (T0, T0 + 1_000_000_000):
        facts = await api.graph_facts(ned, as_of=as_of, after_seq=api.last_seq)
        assert [f.fact for f in facts.items] == ["Ned Fry lives in Riga"], as_of
        listed = await api.list_memories(user_id="u1", as_of=as_of)
        assert [m.content for m in listed.items] == ["Ned Fry lives in Riga."]


async def test_a_message_and_the_speaker(member: tuple[Client, str]) -> None:
    api, user_id = member
    agent_id = str((await api.create_agent("Helper")).fields["agent_id"])
    sent = await api.append_message(
        "s1",
        agent_id,
        "user",
        "I work at Initech and my email is me@initech.example",
        user_id=user_id,
    )
    message_id = str(sent.fields["message_id"])
    found = await api.extract_graph(session_id="s1", message_id=message_id)
    assert found.reused is False
    speaker = next(e for e in found.entities if e.name == SPEAKER)
    assert speaker.created
    assert await facts_of(api, speaker.entity_id) == [
        (SPEAKER, "has_email", "me@initech.example"),
        (SPEAKER, "works_at", "Initech"),
    ]
    # Its facts hold from when the message was said, not from when it was read.
    said = (await api.list_messages("s1", after_seq=api.last_seq)).items[0].created_at
    facts = await api.graph_facts(speaker.entity_id)
    assert {f.valid_from for f in facts.items} == {said}
    # In the message's scope: its user and agent.
    got = await api.get_entity(speaker.entity_id)
    assert (got.user_id, got.agent_id) == (user_id, agent_id)
    with pytest.raises(NotFoundError):
        await api.extract_graph(session_id="s1", message_id="no-such-message")
    with pytest.raises(InvalidError):
        await api.extract_graph(message_id=message_id)  # no session
    with pytest.raises(InvalidError) as refused:
        await api.extract_graph()  # no source
    assert refused.value.details["reason"] == "missing_field"
    with pytest.raises(InvalidError) as refused:
        await api.extract_graph(memory_id="m", session_id="s1", message_id=message_id)  # both
    assert refused.value.details["reason"] == "invalid_value"
    with pytest.raises(NotFoundError):
        await api.extract_graph(memory_id="no-such-memory")


async def test_a_model_is_asked_once_and_its_answer_replays(
    api: Client, model: FakeModel, extracting: Service, nc: NATS, tmp_path: Path
) -> None:
    memory_id = str(
        (await api.add_memory("Ann Lee joined Globex last spring.", user_id="u3")).fields[
            "memory_id"
        ]
    )
    first = await api.extract_graph(memory_id=memory_id, extractor="model")
    assert (first.extractor, first.model, first.reused) == ("model", "tiny-test-model", False)
    assert len(model.calls) == 1
    call = model.calls[0]
    assert (call["path"], call["auth"], call["model"]) == (
        "/v1/chat/completions",
        "Bearer sk-test",
        "tiny-test-model",
    )
    assert call["messages"][-1]["content"] == "Ann Lee joined Globex last spring."
    assert [(r.predicate, r.confidence) for r in first.relations] == [("works_at", 0.9)]
    # Again: the stored answer, and no call.
    again = await api.extract_graph(memory_id=memory_id, extractor="model")
    assert (again.reused, again.extraction_id) == (True, first.extraction_id)
    assert len(model.calls) == 1

    # Stored with the model and the prompt's hash, its answer sealed like the memory.
    org_id = (await api.get_memory(memory_id)).org_id
    keys = await keys_of(nc)
    try:
        log = EventLog(nc, keys=keys)
        commits = await log.read_subject(subjects.event(org_id, "extraction", first.extraction_id))
    finally:
        await keys.stop()
    [stored] = [e for c in commits for e in c.events if isinstance(e, GraphExtracted)]
    assert (stored.model, stored.prompt_sha256, stored.memory_id) == (
        "tiny-test-model",
        first.prompt_sha256,
        memory_id,
    )
    assert stored.user_id == "u3"

    # A replay builds the same graph without the model.
    await wait_caught_up(nc, admin_key(tmp_path))
    assert extracting.store is not None
    live = await dump_store(extracting.store)
    model.calls.clear()
    replayed = await replay_into(nc, tmp_path / "replayed" / "agentmem.db")
    for table in ("graph_entities", "graph_names", "graph_relations"):
        assert replayed[table] == live[table], table
    assert model.calls == []


async def test_a_wrong_answer_is_refused_and_nothing_is_stored(
    api: Client, model: FakeModel
) -> None:
    model.answer = json.dumps({"entities": [{"name": "Ann", "kind": "person"}], "relations": []})
    memory_id = str((await api.add_memory("Ann was here.", user_id="u4")).fields["memory_id"])
    with pytest.raises(UnavailableError, match="schema"):
        await api.extract_graph(memory_id=memory_id, extractor="model")
    stats = await api.graph_stats(after_seq=api.last_seq)
    assert stats.entities == 0
    # Fixed, it is asked again (nothing was stored the first time).
    model.answer = json.dumps({"entities": [{"name": "Ann", "type": "person"}], "relations": []})
    fixed = await api.extract_graph(memory_id=memory_id, extractor="model")
    assert (fixed.reused, [e.name for e in fixed.entities]) == (False, ["Ann"])
    assert len(model.calls) == 2


async def test_no_model_configured_is_invalid(client: Client) -> None:
    added = await client.add_memory("Ann Lee works at Acme.", user_id="u5")
    memory_id = str(added.fields["memory_id"])
    with pytest.raises(InvalidError, match="no extraction model"):
        await client.extract_graph(memory_id=memory_id, extractor="model")
    # Without the setting, adding extracted nothing; on request, the rules do.
    assert (await client.graph_stats()).entities == 0
    found = await client.extract_graph(memory_id=memory_id)
    assert [r.predicate for r in found.relations] == ["works_at"]


async def test_a_name_given_just_before_is_that_entity(client: Client) -> None:
    """Extraction right after the ``entity.add_alias`` that gave a name, with no read in
    between (a command cannot send ``after_seq``): the name is that entity's, not a new one."""
    for letter in "ABCDEFGHIJKLMNOPQRST":
        text = f"Annie {letter}oss works at Acme Corp."
        memory_id = str((await client.add_memory(text, user_id="u6")).fields["memory_id"])
        made = await client.create_entity("person", f"Ann {letter}oss", user_id="u6")
        ann = str(made.fields["entity_id"])
        await client.add_entity_alias(ann, f"Annie {letter}oss")
        found = await client.extract_graph(memory_id=memory_id)
        assert (found.entities[0].entity_id, found.entities[0].created) == (ann, False)
