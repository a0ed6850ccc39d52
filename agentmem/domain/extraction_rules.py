"""The rule-based extractor: what ``graph.extract`` finds without a model.

E-mail addresses (type ``email``), dates (``date``, named ``YYYY-MM-DD``), names of two or
more capitalised words (``person``: a guess), and the relation patterns of ``PATTERNS`` and
"my X is Y", each relation with ``RULE_CONFIDENCE``: a pattern is a guess, not a statement.
docs/architecture.md (Extraction) lists them; ``tests/test_graph_extract.py`` runs each
pattern's example. Pure and deterministic: the same text gives the same answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentmem.domain.extraction import (
    MAX_TEXT,
    PREDICATE,
    RULE_CONFIDENCE,
    SPEAKER,
    Answer,
    FoundEntity,
    FoundRelation,
    complete,
)

__all__ = ["PATTERNS", "RULE_CONFIDENCE", "extract_rules", "iso_date"]


_WORD = r"[A-Z][\w'\u2019\-]*"  # an apostrophe, typed or typeset
_NAME = rf"{_WORD}(?:[ \t]+{_WORD}){{0,3}}"
_EMAIL = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+"
_MONTHS = [
    *("january", "february", "march", "april", "may", "june"),
    *("july", "august", "september", "october", "november", "december"),
]
_MONTH = "(?:" + "|".join(m.capitalize() for m in _MONTHS) + ")"
_DATE = (
    rf"(?:\d{{4}}-\d{{2}}-\d{{2}}|\d{{1,2}}[ \t]+{_MONTH}[ \t]+\d{{4}}"
    rf"|{_MONTH}[ \t]+\d{{1,2}},?[ \t]+\d{{4}})"
)
_WHO = rf"(?P<s>{_NAME})"


@dataclass(frozen=True)
class Pattern:
    """A sentence form: ``regex`` with groups ``s`` (the subject; "I" is the speaker) and
    ``o`` (the object), the relation's predicate and both ends' types."""

    regex: re.Pattern[str]
    predicate: str
    subject_type: str
    object_type: str
    example: str


def _pattern(
    verbs: str, preposition: str, obj: str, predicate: str, types: tuple[str, str], example: str
) -> Pattern:
    """``<name> <verb> [<preposition>] <object>``, the verb in any case, names capitalised."""
    joint = rf"[ \t]+{preposition}" if preposition else ""
    regex = re.compile(rf"\b{_WHO}[ \t]+(?i:{verbs}){joint}[ \t]+(?P<o>{obj})")
    return Pattern(regex, predicate, *types, example)


_PERSON_ORG, _PERSON_PLACE, _PEOPLE = (
    ("person", "organization"),
    ("person", "place"),
    ("person",) * 2,
)
# The documented set (docs/architecture.md, Extraction).
PATTERNS = (
    _pattern(
        "works|work|worked|is working|am working",
        "(?:at|for)",
        _NAME,
        "works_at",
        _PERSON_ORG,
        "Ann works at Acme",
    ),
    _pattern(
        "lives|live|lived|is living|am living",
        "in",
        _NAME,
        "lives_in",
        _PERSON_PLACE,
        "Ann lives in Paris",
    ),
    _pattern("was born|am born", "in", _NAME, "born_in", _PERSON_PLACE, "Ann was born in Lyon"),
    _pattern(
        "was born|am born",
        "on",
        _DATE,
        "born_on",
        ("person", "date"),
        "Ann was born on 1990-04-01",
    ),
    _pattern(
        "is married|am married|was married",
        "to",
        _NAME,
        "married_to",
        _PEOPLE,
        "Ann is married to Bob Lee",
    ),
    _pattern(
        "is the CEO|am the CEO|was the CEO",
        "of",
        _NAME,
        "ceo_of",
        _PERSON_ORG,
        "Ann is the CEO of Acme",
    ),
    _pattern("knows|know|knew", "", _NAME, "knows", _PEOPLE, "Ann knows Bob"),
)
# "my X is Y": the speaker's X is Y (``my sister is Ann Lee``: the user —sister→ Ann Lee).
_MY = re.compile(
    rf"\b(?i:my)[ \t]+(?P<p>[a-z][a-z \t]{{0,30}}?)[ \t]+is[ \t]+(?P<o>{_EMAIL}|{_DATE}|{_NAME})"
)
# "my X is Y": the type of Y by X (default a person: a relative, a friend, a colleague).
_MY_TYPES = {
    "city": "place",
    "home town": "place",
    "hometown": "place",
    "country": "place",
    "company": "organization",
    "employer": "organization",
    "email": "email",
    "email address": "email",
    "birthday": "date",
}
_MY_PREDICATES = {"email": "has_email", "email address": "has_email", "birthday": "born_on"}
# Words that start a sentence capitalised without being a name.
_NOT_NAMES = frozenset(
    {
        *("a", "an", "the", "this", "that", "these", "those", "my", "our", "your", "his"),
        *("her", "their", "it", "its", "i", "we", "you", "he", "she", "they", "yesterday"),
        *("today", "tomorrow", "and", "but", "or", "so", "then", "when", "if", "also", "on"),
        *("in", "at", "for", "to", "from", "monday", "tuesday", "wednesday", "thursday"),
        *("friday", "saturday", "sunday"),
    }
)
_EMAILS = re.compile(_EMAIL)
_DATES = re.compile(_DATE)
_NAMES = re.compile(_NAME)
_SPEAKER_WORDS = frozenset({"i", "me"})


def iso_date(text: str) -> str:
    """A date as YYYY-MM-DD (what a date entity is named), from the forms ``_DATE`` reads."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return text
    words = text.replace(",", " ").split()
    month = next(w for w in words if w.lower() in _MONTHS)
    numbers = [int(w) for w in words if w.isdigit()]
    day, year = (numbers[0], numbers[1]) if numbers[0] <= 31 else (numbers[1], numbers[0])
    return f"{year:04d}-{_MONTHS.index(month.lower()) + 1:02d}-{day:02d}"


def _trimmed(name: str) -> str:
    """A name without the capitalised non-names a sentence may start it with."""
    words = name.split()
    while words and words[0].lower() in _NOT_NAMES:
        words = words[1:]
    return " ".join(words)


def _end(raw: str, kind: str, speaker: bool) -> tuple[str, str] | None:
    """A relation's end as (name, type), or None when it names nothing (a first person
    without a user, a name made only of non-names)."""
    if raw.lower() in _SPEAKER_WORDS or raw.split()[-1:] == ["I"]:
        return (SPEAKER, "person") if speaker else None
    if kind == "date":
        return iso_date(raw), "date"
    if _EMAILS.fullmatch(raw):
        return raw, "email"
    name = _trimmed(raw)
    return (name, kind) if name else None


def _snake(words: str) -> str:
    return "_".join(words.lower().split())


def extract_rules(text: str, speaker: bool) -> Answer:
    """The rule-based answer for ``text``; ``speaker``: the source has a user, whom "I" and
    "my" name."""
    text = text[:MAX_TEXT]
    entities: list[FoundEntity] = []
    relations: list[FoundRelation] = []
    covered: list[tuple[int, int]] = []

    def add(name: str, kind: str) -> None:
        entities.append(FoundEntity(name, kind))

    def relate(subject: tuple[str, str], predicate: str, obj: tuple[str, str], fact: str) -> None:
        add(*subject)
        add(*obj)
        relations.append(FoundRelation(subject[0], predicate, obj[0], fact.strip()))

    for pattern in PATTERNS:
        for match in pattern.regex.finditer(text):
            subject = _end(match["s"], pattern.subject_type, speaker)
            obj = _end(match["o"], pattern.object_type, speaker)
            if subject is None or obj is None:
                continue
            relate(subject, pattern.predicate, obj, match[0])
            covered.append(match.span())
    if speaker:
        for match in _MY.finditer(text):
            said = " ".join(match["p"].split())
            kind = _MY_TYPES.get(said, "person")
            obj = _end(match["o"], "date" if _DATES.fullmatch(match["o"]) else kind, speaker)
            if obj is None:
                continue
            predicate = _MY_PREDICATES.get(said, _snake(said))
            if re.fullmatch(PREDICATE, predicate):
                relate((SPEAKER, "person"), predicate, obj, match[0])
                covered.append(match.span())
    for match in _EMAILS.finditer(text):
        add(match[0], "email")
    for match in _DATES.finditer(text):
        add(iso_date(match[0]), "date")
    for match in _NAMES.finditer(text):
        name = _trimmed(match[0])
        inside = any(start <= match.start() and match.end() <= end for start, end in covered)
        if len(name.split()) >= 2 and not inside and not _DATES.search(name):
            add(name, "person")
    return complete(Answer(entities, relations))
