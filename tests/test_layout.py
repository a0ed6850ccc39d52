"""How the code is laid out, checked: what the architecture promises a newcomer.

- Handlers in consumers/ hold no SQL: each projection module offers the named reads its
  queries need (its read model).
- Event subjects are taken apart in one place, ``agentmem.subjects.parse``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONSUMERS = sorted((ROOT / "consumers").glob("*.py"))
SOURCES = sorted(
    p for folder in ("agentmem", "consumers", "projections") for p in (ROOT / folder).rglob("*.py")
)


@pytest.mark.parametrize("module", CONSUMERS, ids=lambda p: p.name)
def test_handlers_hold_no_sql(module: Path) -> None:
    text = module.read_text()
    found = re.findall(r"\b(?:fetch_one|fetch_all|store\.search)\(|\bSELECT\b", text)
    assert not found, f"{module.name} reads the store itself: move the read to projections/"


@pytest.mark.parametrize("module", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_subjects_parse_takes_a_subject_apart(module: Path) -> None:
    if module == ROOT / "agentmem" / "subjects.py":
        return
    text = module.read_text()
    found = re.findall(r"subject\w*\.r?(?:split|partition)\(", text)
    assert not found, f"{module.name} splits a subject by hand: use subjects.parse"
