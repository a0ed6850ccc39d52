"""Numbered schema migrations: which ones a store still needs, and their SQL on each engine.

The list itself is the application's (``projections/migrations.py``); this module is what
both stores share to apply it. A store records each applied migration in its
``schema_migrations`` table (version, name, applied_at) and, at start, applies in order and
each in its own transaction the ones it has not recorded. Postgres does that under an
advisory lock, so processes starting together migrate once; SQLite under its write lock.

A store made before migrations existed has the tables of migration 1 and no
``schema_migrations``: migration 1 only creates what is missing (``CREATE ... IF NOT
EXISTS``), so applying it adopts such a store as it is. After migrating, a store checks that
every declared table has every declared column, so a table made by other code (or a
``Table`` changed without a migration) stops the start with the reason instead of failing
on the first write.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Literal

from agentmem.config import StartupError
from agentmem.store import sql
from agentmem.store.port import ColumnType, Migration, Sql, Table

Engine = Literal["sqlite", "postgres"]

# The bookkeeping table, per engine; ``applied_at`` in each engine's readable form.
SCHEMA_MIGRATIONS: dict[Engine, tuple[str, ...]] = {
    "sqlite": (
        """CREATE TABLE IF NOT EXISTS schema_migrations (
            -- One row per schema migration applied (projections/migrations.py lists them).
            version BIGINT NOT NULL PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        )""",
    ),
    "postgres": (
        """CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT NOT NULL PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
        "COMMENT ON TABLE schema_migrations IS "
        "'AgentMem: one row per schema migration applied (projections/migrations.py)'",
        "COMMENT ON TABLE checkpoints IS "
        "'AgentMem: per projection, the last event-log sequence applied to its tables'",
        "COMMENT ON TABLE parked_events IS "
        "'AgentMem: events a projection could not apply, with the error (agentmem status)'",
    ),
}
RECORDED = "SELECT version, name FROM schema_migrations"
RECORD = "INSERT INTO schema_migrations (version, name) VALUES (?, ?)"


class Plan:
    """An ordered list of migrations, checked once: versions 1, 2, 3, ... without gaps."""

    def __init__(self, migrations: Sequence[Migration]) -> None:
        versions = [m.version for m in migrations]
        if versions != list(range(1, len(versions) + 1)):
            raise ValueError(f"migration versions must be 1, 2, 3, ... in order, not {versions}")
        self.migrations = tuple(migrations)
        # The last declaration of each table is its shape now.
        self.tables: dict[str, Table] = {
            step.name: step for m in migrations for step in m.steps if isinstance(step, Table)
        }

    @property
    def keys(self) -> dict[str, tuple[str, ...]]:
        """Each table's primary key, as the stores' upserts need it."""
        return {name: table.primary_key for name, table in self.tables.items()}

    def pending(self, recorded: Mapping[int, str]) -> list[Migration]:
        """The migrations still to apply, in order, given the store's (version: name).

        Refuses a store that has a migration newer than this code, or one whose name differs
        from this code's migration of the same number (another schema made that store).
        """
        known = len(self.migrations)
        newest = max(recorded, default=0)
        if newest > known:
            raise StartupError(
                f"the store's schema is at migration {newest} ({recorded[newest]}), newer than "
                f"this AgentMem knows (up to {known}): run the AgentMem version that made it"
            )
        for m in self.migrations:
            if m.version in recorded and recorded[m.version] != m.name:
                raise StartupError(
                    f"the store's schema migration {m.version} is {recorded[m.version]!r}, "
                    f"but this AgentMem's is {m.name!r}: the store was made by other code"
                )
        return [m for m in self.migrations if m.version not in recorded]

    @staticmethod
    def statements(
        migration: Migration, engine: Engine, types: Mapping[ColumnType, str] = sql.TYPES
    ) -> list[str]:
        """The SQL of one migration on ``engine`` (``types``: its column types)."""
        out: list[str] = []
        for step in migration.steps:
            if isinstance(step, Table):
                out += sql.create_table(step, types)
            elif isinstance(step, Sql):
                out += step.sqlite if engine == "sqlite" else step.postgres
        return out

    def check_columns(self, found: Mapping[str, set[str]], unchecked: Collection[str] = ()) -> None:
        """Refuse a store whose tables lack declared columns (``found``: table -> columns),
        but those ``unchecked`` (a projection version's build makes them as declared)."""
        for name, table in self.tables.items():
            if name in unchecked:
                continue
            columns = found.get(name, set())
            missing = [c for c in table.column_names if c not in columns]
            if missing:
                what = f"has no column {', '.join(missing)}" if columns else "is missing"
                raise StartupError(
                    f"table {name} {what}: it was made by other code, or its Table changed "
                    "without a migration; replay the log into a fresh store "
                    "(agentmem replay --into ...)"
                )


def failed(migration: Migration, exc: BaseException) -> StartupError:
    """A migration the database refused, as one line a person can act on."""
    message = " ".join(str(exc).split())
    return StartupError(
        f"schema migration {migration.version} ({migration.name}) failed and was rolled "
        f"back: {type(exc).__name__}: {message}"
    )
