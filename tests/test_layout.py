"""How the code is laid out, checked: what the architecture promises a newcomer.

- Handlers in consumers/ hold no SQL: each projection module offers the named reads its
  queries need (its read model).
- Event subjects are taken apart in one place, ``agentmem.subjects.parse``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
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


PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]


def test_a_wheel_installs_no_top_level_package_but_agentmem(tmp_path: Path) -> None:
    """consumers/ and projections/ ship as agentmem.consumers and agentmem.projections, so
    installing AgentMem cannot collide with another distribution's ``consumers``."""
    built = subprocess.run(
        [*PIP_WHEEL, "--wheel-dir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("agentmem-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"agentmem"}
    assert "agentmem/consumers/router.py" in names
    assert "agentmem/projections/worker.py" in names
