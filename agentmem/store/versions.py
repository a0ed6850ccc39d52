"""Projection versions: which version of each projection the live tables hold, and the
version being built beside them (a blue-green rebuild, docs/architecture.md).

A projection declares ``version`` (an integer, 1 until its first bump). The store keeps, per
projection, the version its live tables were made by (``live``) and, while a newer one is
being built, that one (``building``), its start and the time of the last switch. The rows
of a build live apart from the live ones until the switch:

- SQLite: tables of the same declaration named ``<table>__v<version>`` in the same file,
  without their full-text index (nothing searches them before the switch);
- Postgres: the declared tables themselves, in a schema of the build's own
  (``build_schema``), indexes and full-text columns included.

The build's checkpoint and parked events are kept under ``build_key(name, version)``. The
switch is one transaction: the live tables are dropped, the build's become the live ones
(SQLite: renamed, their indexes and full-text index made under the declared names;
Postgres: moved into the live schema with ``ALTER TABLE ... SET SCHEMA``), the build's
checkpoint and parked events become the projection's, and ``live`` becomes the version.
The old tables are dropped then: the log can always make them again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from agentmem.store.port import Table
from agentmem.store.port import VersionMismatch as VersionMismatch
from agentmem.store.port import build_key as build_key

# The store's bookkeeping table, per engine (created when the store opens).
VERSIONS_DDL = {
    "sqlite": """CREATE TABLE IF NOT EXISTS projection_versions (
        projection TEXT NOT NULL PRIMARY KEY,
        live BIGINT NOT NULL,
        live_variant TEXT NOT NULL DEFAULT '',
        building BIGINT,
        building_variant TEXT,
        build_started_at BIGINT,
        switched_at BIGINT
    )""",
    "postgres": """CREATE TABLE IF NOT EXISTS projection_versions (
        projection TEXT COLLATE "C" NOT NULL PRIMARY KEY,
        live BIGINT NOT NULL,
        live_variant TEXT COLLATE "C" NOT NULL DEFAULT '',
        building BIGINT,
        building_variant TEXT COLLATE "C",
        build_started_at BIGINT,
        switched_at BIGINT
    )""",
}
VERSIONS = (
    "SELECT projection, live, live_variant, building, building_variant, build_started_at, "
    "switched_at FROM projection_versions"
)
ADOPT = (
    "INSERT INTO projection_versions (projection, live, live_variant) VALUES (?, ?, ?) "
    "ON CONFLICT (projection) DO NOTHING"
)
START_BUILD = (
    "UPDATE projection_versions SET building = ?, building_variant = ?, build_started_at = ? "
    "WHERE projection = ?"
)
END_BUILD = (
    "UPDATE projection_versions SET building = NULL, building_variant = NULL, "
    "build_started_at = NULL WHERE projection = ?"
)
SWITCHED = (
    "UPDATE projection_versions SET live = building, live_variant = building_variant, "
    "building = NULL, building_variant = NULL, build_started_at = NULL, switched_at = ? "
    "WHERE projection = ?"
)


@dataclass(frozen=True)
class VersionState:
    """What the store says of one projection's versions (times in ms since the epoch)."""

    projection: str
    live: int
    # What else the rows depend on besides the code (the vectors' embedding model): a
    # change of it is rebuilt like a version bump.
    live_variant: str = ""
    building: int | None = None
    building_variant: str | None = None
    build_started_at: int | None = None
    switched_at: int | None = None

    def needs_build(self, version: int, variant: str = "") -> bool:
        """Whether code of ``version`` (and ``variant``) builds its own version beside the
        live one: it is newer, or the same version of another variant. Never older: an old
        process of a rolling deploy stands aside instead of building its version back."""
        return version > self.live or (version == self.live and variant != self.live_variant)

    def runs_live(self, version: int, variant: str = "") -> bool:
        """Whether code of ``version`` (and ``variant``) made the live tables."""
        return (version, variant) == (self.live, self.live_variant)

    def building_this(self, version: int, variant: str = "") -> bool:
        return (self.building, self.building_variant or "") == (version, variant)


def shadow_name(table: str, version: int) -> str:
    """SQLite: the name of a table of a build."""
    return f"{table}__v{version}"


def shadow_table(table: Table, version: int) -> Table:
    """SQLite: the declaration of a build's table: the same columns and key, its indexes
    named apart, no full-text index (made at the switch)."""
    return Table(
        name=shadow_name(table.name, version),
        columns=table.columns,
        primary_key=table.primary_key,
        indexes=tuple(
            (shadow_name(name, version), columns, unique) for name, columns, unique in table.indexes
        ),
    )


_UNSAFE = re.compile(r"[^a-z0-9_]")


def variant_of(projection: object) -> str:
    """A projection's ``variant`` (the vectors' model id), or "" when it declares none."""
    return str(getattr(projection, "variant", ""))


def build_schema(live_schema: str, projection: str, version: int) -> str:
    """Postgres: the schema a build's tables live in until the switch; within the 63
    characters of an identifier, and apart for each deployment (its live schema)."""
    name = _UNSAFE.sub("_", f"{live_schema}__build_{projection}_v{version}".lower())
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[:52]}_{digest}"


def versions_from(rows: list[dict[str, object]]) -> dict[str, VersionState]:
    def number(value: object) -> int | None:
        return None if value is None else int(str(value))

    return {
        str(r["projection"]): VersionState(
            projection=str(r["projection"]),
            live=int(str(r["live"])),
            live_variant=str(r["live_variant"]),
            building=number(r["building"]),
            building_variant=None if r["building_variant"] is None else str(r["building_variant"]),
            build_started_at=number(r["build_started_at"]),
            switched_at=number(r["switched_at"]),
        )
        for r in rows
    }
