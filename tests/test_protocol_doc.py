"""docs/protocol.md must describe exactly the subjects and request fields the code serves.

The request Struct of each subject comes from the routers themselves, so a handler added,
removed or re-typed without its documentation fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest

from agentmem.config import ROLES
from agentmem.consumers.parts import Parts, routers
from agentmem.consumers.router import Route
from agentmem.protocol import by_subject

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

HEADING = re.compile(r"^### `([^`]+)`\s*$")
ANY_SECTION = re.compile(r"^#{1,3} ")
TABLE_HEADER = "| field | type | required | meaning |"
TABLE_RULE = re.compile(r"^\|(\s*-+\s*\|){4}\s*$")
FIELD_CELL = re.compile(r"^`([A-Za-z_][A-Za-z0-9_]*)`$")


def served_routes() -> dict[str, Route]:
    """Every route a process with every role serves, found as the service finds them.
    Building a router only registers its handlers, so placeholders stand in for the parts."""
    placeholder = cast(Any, None)
    runner = cast(Any, SimpleNamespace(cache=None))  # a router that reads runner.cache
    parts = Parts(
        nc=placeholder, log=placeholder, runner=runner, store=placeholder, freshness=placeholder
    )
    router, _ = routers(parts, frozenset(ROLES))
    return router.routes


def sections(text: str) -> dict[str, list[str]]:
    """Each "### `subject`" heading with the lines up to the next heading of level 1-3."""
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


def field_table(lines: list[str]) -> list[tuple[str, str]]:
    """(field, required) for each row of the first request table in a section."""
    try:
        start = [line.strip() for line in lines].index(TABLE_HEADER)
    except ValueError:
        pytest.fail(f"no table with the header {TABLE_HEADER!r}")
    assert TABLE_RULE.match(lines[start + 1].strip()), "the table header needs a |---| rule"
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip().startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 4, f"a row needs 4 cells: {line!r}"
        name = FIELD_CELL.match(cells[0])
        assert name, f"the first cell must be a field name in backticks: {line!r}"
        rows.append((name.group(1), cells[2]))
    return rows


DOCUMENTED = sections(DOC.read_text(encoding="utf-8"))
OPERATIONS = by_subject()
TYPES = {subject: operation.request for subject, operation in OPERATIONS.items()}


def test_the_service_serves_exactly_the_declared_operations() -> None:
    routes = served_routes()
    assert set(routes) == set(OPERATIONS)
    for subject, route in routes.items():
        operation = OPERATIONS[subject]
        assert route.decoder.type is operation.request, subject
        assert route.public == operation.public, subject


def test_every_subject_is_documented_and_nothing_else() -> None:
    assert set(DOCUMENTED) == set(OPERATIONS)


@pytest.mark.parametrize("subject", sorted(OPERATIONS))
def test_fields_match_the_request_struct(subject: str) -> None:
    assert subject in DOCUMENTED, f"{subject} has no section in {DOC.name}"
    rows = field_table(DOCUMENTED[subject])
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), f"{subject}: a field is listed twice"
    fields = msgspec.structs.fields(TYPES[subject])
    assert set(names) == {f.encode_name for f in fields}, subject
    required = {name: cell for name, cell in rows}
    for field in fields:
        expected = "yes" if field.required else "no"
        assert required[field.encode_name] == expected, (
            f"{subject}: `{field.encode_name}` is required={field.required} in the code"
        )


@pytest.mark.parametrize("subject", sorted(OPERATIONS))
def test_every_subject_shows_a_reply(subject: str) -> None:
    body = "\n".join(DOCUMENTED.get(subject, []))
    assert "Reply `data`:" in body, f"{subject}: no 'Reply `data`:' paragraph"
    assert "```json" in body, f"{subject}: no JSON example"


def test_the_documented_size_limit_is_the_enforced_one() -> None:
    from agentmem.consumers.router import MAX_REQUEST_BYTES

    assert f"{MAX_REQUEST_BYTES:,} bytes" in DOC.read_text(encoding="utf-8")
