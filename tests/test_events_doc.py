"""docs/events.md must describe exactly the events in agentmem.events: every tag as a
"### `<tag>`" heading, and each tag's fields in its table."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from agentmem.events import EVENT_TYPES, Event

DOC = Path(__file__).resolve().parent.parent / "docs" / "events.md"

HEADING = re.compile(r"^### `([^`]+)`\s*$")
ANY_SECTION = re.compile(r"^#{1,3} ")
TABLE_HEADER = "| field | type | meaning |"
FIELD_CELL = re.compile(r"^`([A-Za-z_][A-Za-z0-9_]*)`$")


def tag_of(event_type: type[Event]) -> str:
    tag = msgspec.inspect.type_info(event_type).tag  # type: ignore[attr-defined]
    assert isinstance(tag, str)
    return tag


def sections(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = HEADING.match(line)
        if match:
            assert match.group(1) not in found, f"{match.group(1)} is documented twice"
            current = found[match.group(1)] = []
        elif ANY_SECTION.match(line):
            current = None
        elif current is not None:
            current.append(line)
    return found


def documented_fields(lines: list[str]) -> list[str]:
    stripped = [line.strip() for line in lines]
    assert TABLE_HEADER in stripped, f"no table with the header {TABLE_HEADER!r}"
    names = []
    for line in stripped[stripped.index(TABLE_HEADER) + 2 :]:
        if not line.startswith("|"):
            break
        first = line.strip("|").split("|")[0].strip()
        name = FIELD_CELL.match(first)
        assert name, f"the first cell must be a field name in backticks: {line!r}"
        names.append(name.group(1))
    return names


DOCUMENTED = sections(DOC.read_text(encoding="utf-8"))
TAGS = {tag_of(t): t for t in EVENT_TYPES}


def test_every_event_tag_is_a_heading_and_every_heading_a_tag() -> None:
    assert set(DOCUMENTED) == set(TAGS)


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_documented_fields_match_the_event(tag: str) -> None:
    assert tag in DOCUMENTED, f"{tag} has no section in {DOC.name}"
    names = documented_fields(DOCUMENTED[tag])
    assert len(names) == len(set(names)), f"{tag}: a field is listed twice"
    assert set(names) == {f.encode_name for f in msgspec.structs.fields(TAGS[tag])}
