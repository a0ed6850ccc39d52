"""The ``users`` table: one row per live user, never a password hash."""

from __future__ import annotations

import msgspec

from agentmem import subjects
from agentmem.eventlog import StoredCommit
from agentmem.events import (
    ApiKeyCreated,
    ApiKeyRevoked,
    DataForgotten,
    OrgDeleted,
    SessionEnded,
    SessionStarted,
    UserDeleted,
    UserPasswordChanged,
    UserProfileUpdated,
    UserRegistered,
    UserRolesSet,
)
from agentmem.projections.rows import forgotten_rows, json_text
from agentmem.store import Column, Delete, Row, RowOp, Store, Table, Update, Upsert

USERS = Table(
    name="users",
    columns=(
        Column("user_id", "text"),
        Column("org_id", "text"),
        Column("name", "text"),
        Column("email", "text"),
        Column("roles", "json"),
        Column("service_admin", "integer"),
        Column("created_at", "integer"),
        Column("updated_at", "integer"),
        Column("version", "integer"),
    ),
    primary_key=("user_id",),
    indexes=(
        ("users_org", ("org_id", "user_id"), False),
        ("users_email", ("email",), True),
    ),
)


API_KEYS = Table(
    name="api_keys",
    columns=(
        Column("key_id", "text"),
        Column("user_id", "text"),
        Column("org_id", "text"),
        Column("name", "text"),
        Column("prefix", "text"),
        Column("created_at", "integer"),
        Column("revoked_at", "integer", nullable=True),
    ),
    primary_key=("key_id",),
    indexes=(("api_keys_user", ("user_id", "key_id"), False),),
)


class UsersProjection:
    name = "users"
    version = 1  # bumped when its rows change: docs/architecture.md, "Projection versions"
    # Org events too: deleting an organization removes its users from the table.
    # Forgets too (their own subject): forgetting a user erases its rows.
    filter_subjects = [
        subjects.events_of("user"),
        subjects.events_of("org"),
        subjects.events_of("forget"),
    ]
    tables = [USERS, API_KEYS]

    def project(self, commit: StoredCommit) -> list[RowOp]:
        ops: list[RowOp] = []
        at, version = commit.time_ms, commit.seq
        for event in commit.events:
            match event:
                case UserRegistered():
                    row = {
                        "user_id": event.user_id,
                        "org_id": event.org_id,
                        "name": event.name,
                        "email": event.email,
                        "roles": json_text(list(event.roles)),
                        "service_admin": int(event.service_admin),
                        "created_at": at,
                        "updated_at": at,
                        "version": version,
                    }
                    ops.append(Upsert("users", row))
                case UserProfileUpdated(user_id=user_id, name=name, email=email):
                    values = {"name": name, "email": email, "updated_at": at, "version": version}
                    ops.append(Update("users", {"user_id": user_id}, values))
                case UserRolesSet(user_id=user_id, roles=roles):
                    values = {"roles": json_text(list(roles)), "updated_at": at, "version": version}
                    ops.append(Update("users", {"user_id": user_id}, values))
                case UserPasswordChanged(user_id=user_id):
                    # The hash stays in the log; the table only learns the version moved.
                    values = {"updated_at": at, "version": version}
                    ops.append(Update("users", {"user_id": user_id}, values))
                case UserDeleted(user_id=user_id):
                    ops.append(Delete("users", {"user_id": user_id}))
                    ops.append(Delete("api_keys", {"user_id": user_id}))
                case OrgDeleted(org_id=org_id):
                    ops.append(Delete("users", {"org_id": org_id}))
                    ops.append(Delete("api_keys", {"org_id": org_id}))
                case DataForgotten():
                    ops += forgotten_rows(event, frozenset({"user"}), self.tables)
                case ApiKeyCreated():
                    row = {
                        "key_id": event.key_id,
                        "user_id": event.user_id,
                        "org_id": subjects.parse(commit.subject).org_id,
                        "name": event.name,
                        "prefix": event.prefix,
                        "created_at": at,
                        "revoked_at": None,
                    }
                    ops.append(Upsert("api_keys", row))
                    ops.append(_moved(event.user_id, version))
                case ApiKeyRevoked(key_id=key_id):
                    ops.append(Update("api_keys", {"key_id": key_id}, {"revoked_at": at}))
                    ops.append(_moved(event.user_id, version))
                case SessionStarted() | SessionEnded():
                    ops.append(_moved(event.user_id, version))
        return ops


def _moved(user_id: str, version: int) -> Update:
    """A credential's event is on the user's subject: the user's version (what a command's
    expected_version compares) moves, though nothing shown changes."""
    return Update("users", {"user_id": user_id}, {"version": version})


PROJECTION = UsersProjection()


# The reads its queries need ---------------------------------------------------------------
_COLUMNS = "user_id, org_id, name, email, roles, created_at, updated_at, version"


def _view(row: Row | None) -> Row | None:
    return None if row is None else {**row, "roles": msgspec.json.decode(row["roles"])}


async def get_user(store: Store, user_id: str) -> Row | None:
    return _view(await store.fetch_one(f"SELECT {_COLUMNS} FROM users WHERE user_id = ?", user_id))


async def get_user_by_email(store: Store, email: str) -> Row | None:
    return _view(await store.fetch_one(f"SELECT {_COLUMNS} FROM users WHERE email = ?", email))


async def email_taken(store: Store, email: str) -> bool:
    return await store.fetch_one("SELECT 1 AS found FROM users WHERE email = ?", email) is not None


async def list_users(store: Store, org_id: str, after: str, limit: int) -> list[Row]:
    rows = await store.fetch_all(
        f"SELECT {_COLUMNS} FROM users WHERE org_id = ? AND user_id > ? ORDER BY user_id LIMIT ?",
        org_id,
        after,
        limit,
    )
    return [{**row, "roles": msgspec.json.decode(row["roles"])} for row in rows]


async def key_owner(store: Store, user_id: str) -> Row | None:
    """The organization of the user whose keys are asked for, and whether it is the service
    administrator."""
    return await store.fetch_one(
        "SELECT org_id, service_admin FROM users WHERE user_id = ?", user_id
    )


async def api_keys(store: Store, user_id: str, after: str, limit: int) -> list[Row]:
    return await store.fetch_all(
        "SELECT key_id, user_id, name, prefix, created_at, revoked_at FROM api_keys "
        "WHERE user_id = ? AND key_id > ? ORDER BY key_id LIMIT ?",
        user_id,
        after,
        limit,
    )
