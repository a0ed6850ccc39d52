"""Extraction: entities and relations found in a memory or a message, for the knowledge graph.

Two extractors, one answer shape (``Answer``):

- ``rules`` (the default, no model, deterministic; ``agentmem.domain.extraction_rules``):
  e-mail addresses, dates, names (two or more capitalised words) and a documented set of
  relation patterns, each with a low confidence (``RULE_CONFIDENCE``).
- ``model``: an OpenAI-compatible chat endpoint (``agentmem.extraction_model``), asked with
  ``prompt_messages`` for JSON that must validate against ``ANSWER_SCHEMA``.

Whichever answers, the answer is stored as one ``graph.extracted`` event on
``agentmem.evt.<org>.extraction.<extraction_id>`` before anything is applied, with the
model and the SHA-256 of the prompt. The id is derived from the source, the extractor, the
model and that hash, and the subject is written at expected sequence 0: the same request
again (a retry, a replay of the command, another process) finds the stored answer and
never asks the model again. Then the answer goes through the graph's own paths: each
entity is resolved by its normalised name or alias in the source's scope (or created),
each relation asserted (``relation.assert``'s decision: single-valued predicates end the
previous value), with the source as provenance.

"I", "me" and "my" are the source's user: the entity ``SPEAKER`` (a person) of the user's
scope. A source without a user has no speaker, and first-person patterns find nothing.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from agentmem import subjects
from agentmem.commands import Command, Id
from agentmem.domain.aggregate import Loaded, Write
from agentmem.domain.entities import normalise
from agentmem.events import AnyEvent, GraphExtracted
from agentmem.protocol import command
from agentmem.replies import Extracted
from agentmem.validation import invalid

Extractor = Literal["rules", "model"]
RULES_VERSION = "rules-v1"  # the model name a rule-based answer is stored under
RULE_CONFIDENCE = 0.4  # a relation found by a pattern
MAX_TEXT = 20_000  # characters of a source that are read
MAX_ITEMS = 50  # entities, and relations, per answer
SPEAKER = "the user"

ENTITY_TYPE = r"^[a-z][a-z0-9_]{0,39}$"
PREDICATE = r"^[a-z][a-z0-9_]{0,63}$"
_NAME_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 200}
# What a model must answer (JSON Schema, Draft 2020-12); anything else is refused.
ANSWER_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["entities", "relations"],
    "additionalProperties": False,
    "properties": {
        "entities": {
            "type": "array",
            "maxItems": MAX_ITEMS,
            "items": {
                "type": "object",
                "required": ["name", "type"],
                "additionalProperties": False,
                "properties": {
                    "name": _NAME_SCHEMA,
                    "type": {"type": "string", "pattern": ENTITY_TYPE},
                },
            },
        },
        "relations": {
            "type": "array",
            "maxItems": MAX_ITEMS,
            "items": {
                "type": "object",
                "required": ["subject", "predicate", "object"],
                "additionalProperties": False,
                "properties": {
                    "subject": _NAME_SCHEMA,
                    "predicate": {"type": "string", "pattern": PREDICATE},
                    "object": _NAME_SCHEMA,
                    "fact": {"type": "string", "minLength": 1, "maxLength": 2000},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                },
            },
        },
    },
}

SYSTEM_PROMPT = (
    "You extract a knowledge graph from one text. Answer with one JSON object and nothing "
    'else: {"entities": [{"name": ..., "type": ...}], "relations": [{"subject": ..., '
    '"predicate": ..., "object": ..., "fact": ..., "confidence": ...}]}. Types are lower-case '
    "words: person, organization, place, concept, event, object, date, email, or another. "
    "Predicates are lower-case snake_case verbs such as works_at, lives_in, born_on, "
    "married_to. Subject and object name entities of the list. Confidence is 0 to 1. "
    f'The author of the text, "I", is the entity "{SPEAKER}". Extract only what the text '
    "states."
)


@command("graph.extract", need="member", reply=Extracted)
class ExtractGraph(Command, frozen=True, kw_only=True):
    """Find entities and relations in one memory (``memory_id``) or one message
    (``session_id`` and ``message_id``) and put them in the graph, in the source's scope."""

    org_id: Id | None = None  # a message's organization (default: the caller's)
    memory_id: Id | None = None
    session_id: Id | None = None
    message_id: Id | None = None
    extractor: Extractor = "rules"


# The answer ---------------------------------------------------------------------------------
class FoundEntity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    type: str


class FoundRelation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    subject: str
    predicate: str
    object: str
    fact: str | None = None
    confidence: float = RULE_CONFIDENCE


class Answer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    entities: list[FoundEntity] = msgspec.field(default_factory=list)
    relations: list[FoundRelation] = msgspec.field(default_factory=list)


def complete(answer: Answer) -> Answer:
    """The answer with every relation's ends among its entities (an end a model did not list
    is a ``concept``), each entity once (by normalised name), bounded."""
    kept: dict[str, FoundEntity] = {}
    for entity in answer.entities:
        kept.setdefault(normalise(entity.name), entity)
    for relation in answer.relations:
        for end in (relation.subject, relation.object):
            kept.setdefault(normalise(end), FoundEntity(end, "concept"))
    entities = [e for n, e in kept.items() if n][:MAX_ITEMS]
    names = {normalise(e.name) for e in entities}
    relations = [
        r
        for r in answer.relations
        if normalise(r.subject) in names and normalise(r.object) in names
    ][:MAX_ITEMS]
    return Answer(entities, relations)


# The model's prompt and the stored answer ------------------------------------------------------
def prompt_messages(text: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": text[:MAX_TEXT]},
    ]


def prompt_hash(extractor: Extractor, model: str, text: str) -> str:
    """The SHA-256 of what the extractor is given: the model's chat request (model and
    messages), or for the rules their version and the text."""
    if extractor == "model":
        body: Any = {"model": model, "messages": prompt_messages(text)}
    else:
        body = {"rules": model, "text": text[:MAX_TEXT]}
    return hashlib.sha256(msgspec.json.encode(body)).hexdigest()


@dataclass(frozen=True)
class Source:
    """What an extraction reads: one memory or one message, its text and its scope."""

    org_id: str
    text: str
    memory_id: str | None = None
    message_id: str | None = None
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    # When what it says holds in the world, the span its facts are asserted for: a memory's
    # valid time, a message's time (None: the extraction's).
    valid_from: int | None = None
    valid_to: int | None = None


def extraction_id(source: Source, extractor: Extractor, model: str, digest: str) -> str:
    parts = [source.org_id, source.memory_id, source.message_id, extractor, model, digest]
    raw = hashlib.sha256(msgspec.json.encode(parts)).digest()[:20]
    return base64.b32encode(raw).decode().lower()


def subject(org_id: str, extraction: str) -> str:
    return subjects.event(org_id, "extraction", extraction)


def evolve(state: GraphExtracted | None, event: AnyEvent) -> GraphExtracted | None:
    return event if isinstance(event, GraphExtracted) else state


def check_source(request: ExtractGraph) -> None:
    if (request.memory_id is None) == (request.message_id is None):
        # None is a missing field; both is a value not accepted here (as a block's two owners).
        raise invalid(
            "name one source: memory_id, or session_id and message_id",
            "$",
            "missing_field" if request.memory_id is None else "invalid_value",
            fields=["memory_id", "message_id"],
        )
    if request.message_id is not None and request.session_id is None:
        raise invalid(
            "a message is named by session_id and message_id", "$.session_id", "missing_field"
        )


def record(
    loaded: Loaded[GraphExtracted],
    source: Source,
    extractor: Extractor,
    model: str,
    digest: str,
    answer: Answer,
) -> list[Write]:
    """The stored answer, once (expected sequence 0); [] when it is stored already."""
    if loaded.version > 0:
        return []
    event = GraphExtracted(
        extraction_id=subjects.parse(loaded.subject).aggregate_id,
        org_id=source.org_id,
        extractor=extractor,
        model=model,
        prompt_sha256=digest,
        memory_id=source.memory_id,
        message_id=source.message_id,
        user_id=source.user_id,
        agent_id=source.agent_id,
        session_id=source.session_id,
        entities=tuple(msgspec.to_builtins(e) for e in answer.entities),
        relations=tuple(msgspec.to_builtins(r) for r in answer.relations),
    )
    return [Write(loaded.subject, 0, [event])]


def answer_of(event: GraphExtracted) -> Answer:
    return msgspec.convert(
        {"entities": list(event.entities), "relations": list(event.relations)}, Answer
    )


__all__ = ["ExtractGraph"]
