"""Every schema migration of the projection store, in order: the one place that says what
tables a store has. ``Service.start`` (and ``agentmem replay``) apply the ones a store has
not recorded yet; docs/architecture.md says how to add one.

A ``Table`` step names the table declared beside its projection, so that declaration stays
the only list of its columns. A migration, once released, is never edited: change a schema
with a new migration.
"""

from __future__ import annotations

from agentmem.store.port import Migration, Sql
from projections.orgs import ORGS
from projections.users import API_KEYS, USERS

MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "orgs, users and api keys",
        (
            ORGS,
            USERS,
            API_KEYS,
            Sql(
                postgres=(
                    "COMMENT ON TABLE orgs IS 'AgentMem projection orgs: one row per live "
                    "organization'",
                    "COMMENT ON TABLE users IS 'AgentMem projection users: one row per user; "
                    "roles is a JSON array'",
                    "COMMENT ON TABLE api_keys IS 'AgentMem projection users: one row per API "
                    "key of a live user (prefix only, no secret); revoked_at set once revoked'",
                )
            ),
        ),
    ),
]
