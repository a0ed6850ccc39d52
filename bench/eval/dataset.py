"""The evaluation set: read from ``retrieval.json``, checked, and cut into slices.

The file is the source of truth and is meant to be read and edited by people: one memory
or query per line, dates as ISO days. Reading it checks what a typo would silently break
(a relevant key that does not exist, an answer outside the query's scope, a correction
whose original is missing), so a broken edit fails at once rather than scoring zero.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

PATH = Path(__file__).with_name("retrieval.json")
CATEGORIES = (
    "paraphrase",
    "exact",
    "temporal",
    "superseded",
    "no_answer",
    "cross_scope",
    "ambiguous",
)
Split = Literal["dev", "test"]
T = TypeVar("T")
SPLITS: tuple[Split, ...] = ("dev", "test")


def day_ms(day: str) -> int:
    """An ISO day (``2024-05-01``) as milliseconds since the epoch, at UTC midnight."""
    moment = datetime.datetime.combine(
        datetime.date.fromisoformat(day), datetime.time(), datetime.UTC
    )
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Scope:
    """An organization of the set (its name in the file) plus a user and/or an agent."""

    org: str
    user: str | None = None
    agent: str | None = None

    def holds(self, other: Scope) -> bool:
        """Whether a memory of scope ``other`` is inside this scope (what a search of this
        scope may return)."""
        return (
            other.org == self.org
            and (self.user is None or other.user == self.user)
            and (self.agent is None or other.agent == self.agent)
        )


@dataclass(frozen=True)
class Memory:
    key: str
    scope: Scope
    memory_type: str
    content: str
    valid_from: int  # the memory's own, or the set's valid_from_default
    valid_to: int | None = None
    supersedes: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Query:
    id: str
    split: Split
    category: str
    scope: Scope
    text: str
    relevant: Mapping[str, int]  # memory key: grade (2 answers, 1 helps)
    as_of: int | None = None
    superseded: tuple[str, ...] = ()  # corrected facts: never relevant


@dataclass(frozen=True)
class Dataset:
    organizations: Mapping[str, str]
    memories: tuple[Memory, ...]
    queries: tuple[Query, ...]
    by_key: Mapping[str, Memory] = field(default_factory=dict)

    def split(self, wanted: Iterable[Split]) -> Dataset:
        chosen = set(wanted)
        return replace(self, queries=tuple(q for q in self.queries if q.split in chosen))

    def slice(self, memories: int, queries: int) -> Dataset:
        """A small run: ``queries`` queries taken from each category in turn, the memories
        they name (with the originals of corrections), then memories of every scope in
        turn (organizations in turn) up to ``memories`` in all, so that other scopes'
        memories are there to leak."""
        chosen = _round_robin([[q for q in self.queries if q.category == c] for c in CATEGORIES])
        picked = chosen[:queries]
        kept: dict[str, Memory] = {}

        def keep(key: str) -> None:
            memory = self.by_key[key]
            if memory.supersedes is not None:
                keep(memory.supersedes)
            kept.setdefault(key, memory)

        for query in picked:
            for key in (*query.relevant, *query.superseded):
                keep(key)
        every = list(dict.fromkeys(m.scope for m in self.memories))
        # Organizations in turn too: another organization's memories are the leaks that
        # only the organization, not the user id, keeps apart.
        scopes = _round_robin([[s for s in every if s.org == org] for org in self.organizations])
        for memory in _round_robin([[m for m in self.memories if m.scope == s] for s in scopes]):
            if len(kept) >= memories:
                break
            keep(memory.key)
        ordered = tuple(m for m in self.memories if m.key in kept)
        return replace(self, memories=ordered, queries=tuple(picked), by_key=kept)


def _round_robin(groups: list[list[T]]) -> list[T]:
    """The first of each group, then the second of each, and so on."""
    longest = max((len(g) for g in groups), default=0)
    return [g[i] for i in range(longest) for g in groups if i < len(g)]


def _scope(record: Mapping[str, Any]) -> Scope:
    return Scope(record["org"], record.get("user"), record.get("agent"))


def _day(record: Mapping[str, Any], name: str) -> int | None:
    value = record.get(name)
    return None if value is None else day_ms(value)


def parse(document: Mapping[str, Any]) -> Dataset:
    organizations = dict(document["organizations"])
    default_from = day_ms(document["valid_from_default"])
    memories = tuple(
        Memory(
            key=m["key"],
            scope=_scope(m),
            memory_type=m["memory_type"],
            content=m["content"],
            valid_from=_day(m, "valid_from") or default_from,
            valid_to=_day(m, "valid_to"),
            supersedes=m.get("supersedes"),
            tags=tuple(m.get("tags", ())),
        )
        for m in document["memories"]
    )
    queries = tuple(
        Query(
            id=q["id"],
            split=q["split"],
            category=q["category"],
            scope=_scope(q),
            text=q["text"],
            relevant=dict(q["relevant"]),
            as_of=_day(q, "as_of"),
            superseded=tuple(q.get("superseded", ())),
        )
        for q in document["queries"]
    )
    by_key = {m.key: m for m in memories}
    dataset = Dataset(organizations, memories, queries, by_key)
    check(dataset)
    return dataset


def load(path: Path = PATH) -> Dataset:
    return parse(json.loads(path.read_text()))


def check(dataset: Dataset) -> None:
    """Raise ``ValueError`` naming every inconsistency of the set."""
    problems: list[str] = []
    by_key = dataset.by_key
    if len(by_key) != len(dataset.memories):
        problems.append("memory keys are not unique")
    if len({q.id for q in dataset.queries}) != len(dataset.queries):
        problems.append("query ids are not unique")
    # A corrected fact stops being true when its correction starts.
    valid_until = {m.supersedes: m.valid_from for m in dataset.memories if m.supersedes}
    corrected = set(valid_until)
    position = {m.key: i for i, m in enumerate(dataset.memories)}
    for memory in dataset.memories:
        if memory.scope.org not in dataset.organizations:
            problems.append(f"{memory.key}: unknown organization {memory.scope.org}")
        original = by_key.get(memory.supersedes) if memory.supersedes else None
        if memory.supersedes is not None and original is None:
            problems.append(f"{memory.key} supersedes unknown {memory.supersedes}")
        if original is not None and (
            original.scope != memory.scope
            or original.memory_type != memory.memory_type
            or original.valid_from >= memory.valid_from
            or position[original.key] > position[memory.key]
        ):
            problems.append(
                f"{memory.key}: its original {original.key} must come first, be valid "
                "earlier, and have the same scope and type"
            )
    for query in dataset.queries:
        if query.category not in CATEGORIES:
            problems.append(f"{query.id}: unknown category {query.category}")
        if query.split not in SPLITS:
            problems.append(f"{query.id}: unknown split {query.split}")
        for key in (*query.relevant, *query.superseded):
            if key not in by_key:
                problems.append(f"{query.id} names unknown memory {key}")
        for key, grade in query.relevant.items():
            found = by_key.get(key)
            if grade not in (1, 2):
                problems.append(f"{query.id}: grade {grade} of {key} is not 1 or 2")
            if found is not None and not query.scope.holds(found.scope):
                problems.append(f"{query.id}: {key} is outside the query's scope")
            if query.as_of is None and key in corrected:
                problems.append(f"{query.id}: {key} is superseded, relevant only with as_of")
            if found is not None and query.as_of is not None:
                start, end = found.valid_from, valid_until.get(key, found.valid_to)
                if not (start <= query.as_of and (end is None or query.as_of < end)):
                    problems.append(f"{query.id}: {key} was not valid at as_of")
        if query.category == "temporal" and query.as_of is None:
            problems.append(f"{query.id}: a temporal query needs as_of")
    if problems:
        raise ValueError("retrieval set: " + "; ".join(problems))
