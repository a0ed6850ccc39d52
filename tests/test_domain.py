"""Fast unit tests of the pure parts: decide/evolve, passwords, ids, SQL grouping, projections.

Nothing here touches NATS; the SQL grouping is checked against a real in-memory SQLite.
"""

from __future__ import annotations

import itertools
import sqlite3
import uuid
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from agentmem import ids, subjects
from agentmem.commands import (
    CreateOrg,
    DeleteOrg,
    DeleteUser,
    RegisterUser,
    RenameOrg,
    SetRoles,
    UpdateProfile,
)
from agentmem.domain import orgs, passwords, users
from agentmem.domain.aggregate import Loaded, Write, check_version, fold
from agentmem.errors import ConflictError, NotFoundError
from agentmem.eventlog import H_COMMAND_ID, H_TIME, StoredCommit
from agentmem.events import (
    AnyEvent,
    EmailReleased,
    EmailReserved,
    OrgCreated,
    OrgDeleted,
    OrgRenamed,
    UserDeleted,
    UserPasswordChanged,
    UserProfileUpdated,
    UserRegistered,
    UserRolesSet,
    decode_commit,
    encode_commit,
)
from agentmem.projections.orgs import ORGS, OrgsProjection
from agentmem.projections.users import USERS, UsersProjection
from agentmem.store import Column, Copy, Delete, RowOp, Table, Update, Upsert
from agentmem.store import sql as store_sql

ORG_ID = "org-1"
USER_ID = "user-1"
HASH = "scrypt$1024$8$1$c2FsdA$ZGlnZXN0"


# Helpers ---------------------------------------------------------------------------------
def loaded_org(*events: AnyEvent, version: int | None = None) -> Loaded[orgs.Org]:
    state = fold(orgs.evolve, None, list(events))
    return Loaded(orgs.subject(ORG_ID), state, len(events) if version is None else version)


def loaded_user(*events: AnyEvent, version: int = 7) -> Loaded[users.User]:
    state = fold(users.evolve, None, list(events))
    return Loaded(users.subject(ORG_ID, USER_ID), state, version)


def reservation(
    email: str, holder: str | None = None, version: int = 0
) -> Loaded[users.Reservation]:
    state = users.Reservation(email, holder, "cmd-0") if holder else None
    return Loaded(subjects.email_reservation(email), state, version)


def registered(email: str = "ann@example.com", roles: tuple[Any, ...] = ("member",)) -> Any:
    return UserRegistered(
        user_id=USER_ID,
        org_id=ORG_ID,
        name="Ann",
        email=email,
        password_hash=HASH,
        roles=roles,
    )


def only_write(writes: list[Write]) -> Write:
    assert len(writes) == 1
    return writes[0]


# Orgs ------------------------------------------------------------------------------------
def test_org_create_writes_one_event_on_a_fresh_subject() -> None:
    write = only_write(orgs.create(loaded_org(), CreateOrg(name="Acme"), ORG_ID))
    assert write.subject == subjects.event(ORG_ID, "org", ORG_ID)
    assert write.expected == 0
    assert write.events == [OrgCreated(org_id=ORG_ID, name="Acme")]


def test_org_create_with_a_taken_id_is_a_conflict() -> None:
    taken = loaded_org(OrgCreated(org_id=ORG_ID, name="Acme"))
    with pytest.raises(ConflictError, match="already exists"):
        orgs.create(taken, CreateOrg(name="Other", org_id=ORG_ID), ORG_ID)


def test_org_evolve_create_rename_delete() -> None:
    state = fold(
        orgs.evolve,
        None,
        [
            OrgCreated(org_id=ORG_ID, name="Acme"),
            OrgRenamed(org_id=ORG_ID, name="Acme 2"),
        ],
    )
    assert state == orgs.Org(org_id=ORG_ID, name="Acme 2")
    state = orgs.evolve(state, OrgDeleted(org_id=ORG_ID))
    assert state == orgs.Org(org_id=ORG_ID, name="Acme 2", deleted=True)
    # Events of other aggregates leave the state alone; a rename with no org creates nothing.
    assert orgs.evolve(state, UserDeleted(user_id="x")) is state
    assert orgs.evolve(None, OrgRenamed(org_id=ORG_ID, name="ghost")) is None


def test_org_rename_expects_the_loaded_version() -> None:
    loaded = loaded_org(OrgCreated(org_id=ORG_ID, name="Acme"), version=41)
    write = only_write(orgs.rename(loaded, RenameOrg(org_id=ORG_ID, name="New")))
    assert (write.subject, write.expected) == (loaded.subject, 41)
    assert write.events == [OrgRenamed(org_id=ORG_ID, name="New")]


def test_org_rename_with_matching_expected_version() -> None:
    loaded = loaded_org(OrgCreated(org_id=ORG_ID, name="Acme"), version=3)
    command = RenameOrg(org_id=ORG_ID, name="New", expected_version=3)
    assert only_write(orgs.rename(loaded, command)).expected == 3


def test_org_rename_with_stale_expected_version_conflicts() -> None:
    loaded = loaded_org(OrgCreated(org_id=ORG_ID, name="Acme"), version=5)
    with pytest.raises(ConflictError) as caught:
        orgs.rename(loaded, RenameOrg(org_id=ORG_ID, name="New", expected_version=4))
    assert caught.value.details == {"expected_version": 4, "current_version": 5}


def test_org_delete() -> None:
    loaded = loaded_org(OrgCreated(org_id=ORG_ID, name="Acme"), version=9)
    marker, write = orgs.delete(loaded, DeleteOrg(org_id=ORG_ID))
    # First on its own subject, once (expected 0); the org's own subject last, so the
    # reply's version is the org's.
    assert (marker.subject, marker.expected, marker.events) == (
        f"agentmem.evt.{ORG_ID}.org_deletion.{ORG_ID}",
        0,
        [OrgDeleted(org_id=ORG_ID)],
    )
    assert (write.subject, write.expected, write.events) == (
        loaded.subject,
        9,
        [OrgDeleted(org_id=ORG_ID)],
    )
    with pytest.raises(ConflictError):
        orgs.delete(loaded, DeleteOrg(org_id=ORG_ID, expected_version=8))


@pytest.mark.parametrize(
    "loaded",
    [
        Loaded(orgs.subject(ORG_ID), None, 0),
        loaded_org(OrgCreated(org_id=ORG_ID, name="Acme"), OrgDeleted(org_id=ORG_ID)),
    ],
    ids=["missing", "deleted"],
)
def test_org_commands_on_a_missing_or_deleted_org_are_not_found(loaded: Loaded[orgs.Org]) -> None:
    with pytest.raises(NotFoundError) as caught:
        orgs.require_live(loaded, ORG_ID)
    assert caught.value.details == {"org_id": ORG_ID}
    with pytest.raises(NotFoundError):
        orgs.rename(loaded, RenameOrg(org_id=ORG_ID, name="x"))
    with pytest.raises(NotFoundError):
        orgs.delete(loaded, DeleteOrg(org_id=ORG_ID))


def test_not_found_wins_over_a_version_conflict() -> None:
    loaded = loaded_org(OrgCreated(org_id=ORG_ID, name="Acme"), OrgDeleted(org_id=ORG_ID))
    with pytest.raises(NotFoundError):
        orgs.rename(loaded, RenameOrg(org_id=ORG_ID, name="x", expected_version=99))


def test_check_version() -> None:
    loaded = Loaded("s", None, 12)
    check_version(loaded, None)
    check_version(loaded, 12)
    with pytest.raises(ConflictError) as caught:
        check_version(loaded, 0)
    assert caught.value.details["current_version"] == 12
    assert caught.value.details["expected_version"] == 0
    assert "12" in caught.value.message


# Users -----------------------------------------------------------------------------------
def register_command(**overrides: Any) -> RegisterUser:
    body = {
        "org_id": ORG_ID,
        "name": "Ann",
        "email": "ann@example.com",
        "password": "long-enough",
        **overrides,
    }
    return RegisterUser(**body)


def test_register_reserves_the_email_and_creates_the_user() -> None:
    free = reservation("ann@example.com", version=17)  # released before: version is not 0
    writes = users.register(
        register_command(roles=["admin", "member", "admin"]),
        email="ann@example.com",
        reservation=free,
        user_id=USER_ID,
        password_hash=HASH,
        command_id="cmd-1",
    )
    assert [(w.subject, w.expected) for w in writes] == [
        (subjects.email_reservation("ann@example.com"), 17),
        (subjects.event(ORG_ID, "user", USER_ID), 0),
    ]
    assert writes[0].events == [
        EmailReserved(email="ann@example.com", user_id=USER_ID, command_id="cmd-1", org_id=ORG_ID)
    ]
    assert writes[1].events == [registered(roles=("admin", "member"))]


def test_register_a_taken_email_conflicts() -> None:
    with pytest.raises(ConflictError) as caught:
        users.register(
            register_command(),
            email="ann@example.com",
            reservation=reservation("ann@example.com", holder="someone-else", version=3),
            user_id=USER_ID,
            password_hash=HASH,
            command_id="cmd-1",
        )
    assert caught.value.details == {"email": "ann@example.com"}


def test_user_evolve_folds_every_event() -> None:
    state = fold(
        users.evolve,
        None,
        [
            registered(),
            UserProfileUpdated(user_id=USER_ID, name="Anna", email="anna@example.com"),
            UserPasswordChanged(user_id=USER_ID, password_hash="scrypt$new"),
            UserRolesSet(user_id=USER_ID, roles=("admin",)),
        ],
    )
    assert state == users.User(
        user_id=USER_ID,
        org_id=ORG_ID,
        name="Anna",
        email="anna@example.com",
        password_hash="scrypt$new",
        roles=("admin",),
    )
    deleted = users.evolve(state, UserDeleted(user_id=USER_ID))
    assert deleted is not None
    assert deleted.deleted
    assert users.evolve(None, UserDeleted(user_id=USER_ID)) is None
    assert users.evolve(state, OrgCreated(org_id=ORG_ID, name="x")) is state


def test_reservation_evolve() -> None:
    state = users.evolve_reservation(
        None, EmailReserved(email="a@b.cc", user_id=USER_ID, command_id="c1")
    )
    assert state == users.Reservation("a@b.cc", USER_ID, "c1")
    assert users.evolve_reservation(state, EmailReleased(email="a@b.cc", user_id=USER_ID)) is None


def test_update_profile_name_only_writes_only_the_user() -> None:
    loaded = loaded_user(registered(), version=8)
    write = only_write(
        users.update_profile(
            loaded,
            UpdateProfile(user_id=USER_ID, name="Anna"),
            new_email=None,
            new_reservation=None,
            old_reservation=None,
            command_id="c1",
        )
    )
    assert (write.subject, write.expected) == (loaded.subject, 8)
    assert write.events == [
        UserProfileUpdated(user_id=USER_ID, name="Anna", email="ann@example.com")
    ]


def test_update_profile_to_the_same_email_does_not_touch_reservations() -> None:
    loaded = loaded_user(registered(), version=8)
    writes = users.update_profile(
        loaded,
        UpdateProfile(user_id=USER_ID, email="ann@example.com"),
        new_email="ann@example.com",
        new_reservation=None,
        old_reservation=None,
        command_id="c1",
    )
    assert [w.subject for w in writes] == [loaded.subject]


def test_update_profile_email_change_reserves_releases_and_updates() -> None:
    loaded = loaded_user(registered(), version=8)
    new = reservation("new@example.com", version=0)
    old = reservation("ann@example.com", holder=USER_ID, version=5)
    writes = users.update_profile(
        loaded,
        UpdateProfile(user_id=USER_ID, email="new@example.com", expected_version=8),
        new_email="new@example.com",
        new_reservation=new,
        old_reservation=old,
        command_id="c9",
    )
    assert [(w.subject, w.expected) for w in writes] == [
        (new.subject, 0),
        (old.subject, 5),
        (loaded.subject, 8),
    ]
    assert writes[0].events == [
        EmailReserved(email="new@example.com", user_id=USER_ID, command_id="c9", org_id=ORG_ID)
    ]
    released = EmailReleased(email="ann@example.com", user_id=USER_ID, org_id=ORG_ID)
    assert writes[1].events == [released]
    assert writes[2].events == [
        UserProfileUpdated(user_id=USER_ID, name="Ann", email="new@example.com")
    ]


def test_update_profile_to_a_taken_email_conflicts() -> None:
    with pytest.raises(ConflictError) as caught:
        users.update_profile(
            loaded_user(registered()),
            UpdateProfile(user_id=USER_ID, email="bob@example.com"),
            new_email="bob@example.com",
            new_reservation=reservation("bob@example.com", holder="bob", version=2),
            old_reservation=reservation("ann@example.com", holder=USER_ID, version=1),
            command_id="c1",
        )
    assert caught.value.details == {"email": "bob@example.com"}


def test_update_profile_with_a_stale_version_conflicts() -> None:
    with pytest.raises(ConflictError) as caught:
        users.update_profile(
            loaded_user(registered(), version=8),
            UpdateProfile(user_id=USER_ID, name="x", expected_version=7),
            new_email=None,
            new_reservation=None,
            old_reservation=None,
            command_id="c1",
        )
    assert caught.value.details["current_version"] == 8


def test_change_password() -> None:
    loaded = loaded_user(registered(), version=4)
    write = only_write(users.change_password(loaded, None, "scrypt$new"))
    assert (write.subject, write.expected) == (loaded.subject, 4)
    assert write.events == [UserPasswordChanged(user_id=USER_ID, password_hash="scrypt$new")]
    assert only_write(users.change_password(loaded, 4, "scrypt$new")).expected == 4
    with pytest.raises(ConflictError) as caught:
        users.change_password(loaded, 3, "scrypt$new")
    assert caught.value.details["current_version"] == 4


def test_set_roles_deduplicates_keeping_order() -> None:
    loaded = loaded_user(registered(), version=2)
    command = SetRoles(user_id=USER_ID, roles=["readonly", "admin", "readonly"])
    write = only_write(users.set_roles(loaded, command))
    assert write.events == [UserRolesSet(user_id=USER_ID, roles=("readonly", "admin"))]
    assert write.expected == 2
    with pytest.raises(ConflictError):
        users.set_roles(loaded, SetRoles(user_id=USER_ID, roles=["admin"], expected_version=1))


def test_delete_releases_the_users_reservation_in_the_same_commit() -> None:
    loaded = loaded_user(registered(), version=6)
    held = reservation("ann@example.com", holder=USER_ID, version=3)
    writes = users.delete(loaded, DeleteUser(user_id=USER_ID), held)
    assert [(w.subject, w.expected) for w in writes] == [(held.subject, 3), (loaded.subject, 6)]
    released = EmailReleased(email="ann@example.com", user_id=USER_ID, org_id=ORG_ID)
    assert writes[0].events == [released]
    assert writes[1].events == [UserDeleted(user_id=USER_ID)]


def test_delete_leaves_a_reservation_held_by_someone_else_alone() -> None:
    loaded = loaded_user(registered(), version=6)
    other = reservation("ann@example.com", holder="someone-else", version=3)
    write = only_write(users.delete(loaded, DeleteUser(user_id=USER_ID), other))
    assert write.events == [UserDeleted(user_id=USER_ID)]


def test_delete_with_a_stale_version_conflicts() -> None:
    loaded = loaded_user(registered(), version=6)
    held = reservation("ann@example.com", holder=USER_ID, version=3)
    with pytest.raises(ConflictError) as caught:
        users.delete(loaded, DeleteUser(user_id=USER_ID, expected_version=5), held)
    assert caught.value.details == {"expected_version": 5, "current_version": 6}


@pytest.mark.parametrize(
    "loaded",
    [
        Loaded(users.subject(ORG_ID, USER_ID), None, 0),
        loaded_user(registered(), UserDeleted(user_id=USER_ID)),
    ],
    ids=["missing", "deleted"],
)
def test_user_commands_on_a_missing_or_deleted_user_are_not_found(
    loaded: Loaded[users.User],
) -> None:
    held = reservation("ann@example.com", holder=USER_ID)
    attempts = [
        lambda: users.require_live(loaded, USER_ID),
        lambda: users.set_roles(loaded, SetRoles(user_id=USER_ID, roles=["admin"])),
        lambda: users.delete(loaded, DeleteUser(user_id=USER_ID), held),
        lambda: users.change_password(loaded, None, "scrypt$new"),
        lambda: users.update_profile(
            loaded,
            UpdateProfile(user_id=USER_ID, name="x"),
            new_email=None,
            new_reservation=None,
            old_reservation=None,
            command_id="c1",
        ),
    ]
    for attempt in attempts:
        with pytest.raises(NotFoundError) as caught:
            attempt()
        # The error names the user, not some internal subject.
        assert caught.value.details == {"user_id": USER_ID}
        assert caught.value.message == f"user {USER_ID} does not exist"


# Passwords -------------------------------------------------------------------------------
LOW_COST = 2**10


def test_password_hash_round_trip() -> None:
    encoded = passwords.hash_password("correct horse", LOW_COST)
    assert encoded.startswith(f"scrypt${LOW_COST}$")
    assert passwords.verify_password("correct horse", encoded)
    assert not passwords.verify_password("correct horsE", encoded)
    assert not passwords.verify_password("", encoded)


def test_password_hashes_are_salted_and_never_contain_the_password() -> None:
    secret = "hunter2-hunter2"
    first = passwords.hash_password(secret, LOW_COST)
    second = passwords.hash_password(secret, LOW_COST)
    assert first != second
    for encoded in (first, second):
        assert secret not in encoded
        assert secret.encode().hex() not in encoded


def test_default_cost_hash_verifies() -> None:
    encoded = passwords.hash_password("s3cret-pass")
    assert encoded.split("$")[1] == str(passwords.DEFAULT_COST)
    assert passwords.verify_password("s3cret-pass", encoded)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not-a-hash",
        "scrypt$",
        "bcrypt$1024$8$1$c2FsdA$ZGlnZXN0",
        "scrypt$x$8$1$c2FsdA$ZGlnZXN0",
        "scrypt$1024$8$1$c2FsdA",
        "scrypt$1024$8$1$c2FsdA$ZGlnZXN0$extra",
        "scrypt$3$8$1$c2FsdA$ZGlnZXN0",  # n not a power of two
        "scrypt$1024$0$1$c2FsdA$ZGlnZXN0",
        "scrypt$-1024$8$1$c2FsdA$ZGlnZXN0",
        "scrypt$1024$8$1$!!!!!$?????",
        "scrypt$1024$8$1$abcde$abcde",  # base64 of impossible length
        "scrypt$1024$8$1$sälz$ZGlnZXN0",  # not ASCII
        "scrypt$1099511627776$8$1$c2FsdA$ZGlnZXN0",  # a cost nobody may make us pay
    ],
)
def test_verify_against_a_garbage_hash_is_false(garbage: str) -> None:
    assert passwords.verify_password("whatever", garbage) is False


def test_verify_against_a_truncated_digest_is_false() -> None:
    encoded = passwords.hash_password("pw-pw-pw-pw", LOW_COST)
    assert not passwords.verify_password("pw-pw-pw-pw", encoded[:-4])


# Ids -------------------------------------------------------------------------------------
def test_new_id_is_a_uuid7() -> None:
    value = ids.new_id()
    parsed = uuid.UUID(value)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == value
    assert ids.is_token(value)


def test_ids_made_in_a_tight_loop_strictly_increase() -> None:
    made = [ids.new_id() for _ in range(20_000)]
    assert all(a < b for a, b in itertools.pairwise(made))
    assert len(set(made)) == len(made)


def test_ids_keep_increasing_when_one_millisecond_runs_out_of_counter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frozen = 1_800_000_000_000 * 1_000_000  # the clock stands still
    monkeypatch.setattr(ids, "time", SimpleNamespace(time_ns=lambda: frozen))
    # Put the generator's memory back afterwards: later ids must not live in this future.
    monkeypatch.setattr(ids, "_last_ms", 0)
    monkeypatch.setattr(ids, "_counter", 0)
    made = [ids.new_id() for _ in range(10_000)]  # far more than 4096 per millisecond
    assert all(a < b for a, b in itertools.pairwise(made))
    for value in (made[0], made[-1]):
        parsed = uuid.UUID(value)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
    millis = {uuid.UUID(v).int >> 80 for v in made}
    assert min(millis) == frozen // 1_000_000
    assert len(millis) > 1  # borrowed from the next milliseconds, never went back


@pytest.mark.parametrize("value", ["a", "A-b_9", "x" * 64, "01a217ef-705c-739a-81ea-b7ea49310a2c"])
def test_is_token_accepts(value: str) -> None:
    assert ids.is_token(value)


@pytest.mark.parametrize(
    "value",
    ["", "x" * 65, "a.b", "a b", "a*", ">", "a>", "é", "a\tb", "abc\n", "abc\r\n", "\nabc"],
)
def test_is_token_rejects(value: str) -> None:
    assert not ids.is_token(value)


# SQL grouping ----------------------------------------------------------------------------
T = Table(
    name="t",
    columns=(Column("id", "text"), Column("a", "text", nullable=True), Column("b", "integer")),
    primary_key=("id",),
)
KEYS = {"t": ("id",)}


def test_grouped_merges_only_consecutive_equal_statements_of_one_table_and_keeps_order() -> None:
    ops = [
        Upsert("t", {"id": "1", "a": "x", "b": 1}),
        Upsert("t", {"id": "2", "a": "y", "b": 2}),
        Update("t", {"id": "1"}, {"b": 10}),
        Update("t", {"id": "2"}, {"b": 20}),
        Upsert("t", {"id": "3", "a": "z", "b": 3}),
        Upsert("t", {"id": "4", "b": 4}),  # other columns: other SQL
        Delete("t", {"id": "2"}),
        Update("t", {"id": "1"}, {"b": 11}),
    ]
    runs = store_sql.grouped(ops, KEYS)
    assert [len(params) for _, params in runs] == [2, 2, 1, 1, 1, 1]
    assert runs[0][1] == [("1", "x", 1), ("2", "y", 2)]
    assert runs[1][1] == [(10, "1"), (20, "2")]
    assert runs[0][0] == runs[2][0]  # the same SQL again, but not adjacent: not merged
    assert runs[0][0] != runs[3][0]
    assert runs[1][0] == runs[5][0]
    assert runs[4] == ("DELETE FROM t WHERE id = ?", [("2",)])
    # Applied in order against a real SQLite, the runs give the rows the ops describe.
    db = sqlite3.connect(":memory:")
    for statement in store_sql.create_table(T):
        db.execute(statement)
    for statement, params in runs:
        db.executemany(statement, params)
    assert db.execute("SELECT id, a, b FROM t ORDER BY id").fetchall() == [
        ("1", "x", 11),
        ("3", "z", 3),
        ("4", None, 4),
    ]


TAGS = Table(
    name="tags",
    columns=(Column("id", "text"), Column("tag", "text")),
    primary_key=("id", "tag"),
)


def test_grouped_joins_a_tables_last_run_across_other_tables_runs() -> None:
    """A row and its tags, taking turns (a projection of one memory per commit): one run
    per table, each table's operations still in their order."""
    keys = {**KEYS, "tags": ("id", "tag")}
    ops: list[RowOp] = []
    for n in range(3):
        ops += [
            Upsert("t", {"id": str(n), "a": "x", "b": n}),
            Delete("tags", {"id": str(n)}),
            Upsert("tags", {"id": str(n), "tag": "red"}),
        ]
    ops += [Update("t", {"id": "0"}, {"b": 10}), Upsert("t", {"id": "3", "a": "y", "b": 3})]
    runs = store_sql.grouped(ops, keys)
    # t's upserts are one run; the tags' deletes and upserts take turns on one table, so
    # they stay apart; the update comes after every upsert of t before it; the last upsert
    # of t follows the update, so it cannot join the first run.
    assert [(statement.split()[0], len(params)) for statement, params in runs] == [
        ("INSERT", 3),
        ("DELETE", 1),
        ("INSERT", 1),
        ("DELETE", 1),
        ("INSERT", 1),
        ("DELETE", 1),
        ("INSERT", 1),
        ("UPDATE", 1),
        ("INSERT", 1),
    ]
    db = sqlite3.connect(":memory:")
    for statement in (*store_sql.create_table(T), *store_sql.create_table(TAGS)):
        db.execute(statement)
    for statement, params in runs:
        db.executemany(statement, params)
    assert db.execute("SELECT id, b FROM t ORDER BY id").fetchall() == [
        ("0", 10),
        ("1", 1),
        ("2", 2),
        ("3", 3),
    ]
    assert db.execute("SELECT id, tag FROM tags ORDER BY id").fetchall() == [
        ("0", "red"),
        ("1", "red"),
        ("2", "red"),
    ]


VERSIONS = Table(
    name="versions",
    columns=(Column("id", "text"), Column("b", "integer"), Column("until", "integer")),
    primary_key=("id", "until"),
)


def test_grouped_keeps_a_copy_where_it_reads_its_source() -> None:
    """A Copy reads its source table: it never moves past a change of that table, so each
    copy keeps the row as it was when the copy came."""
    keys = {**KEYS, "versions": ("id", "until")}

    def keep(until: int) -> Copy:
        return Copy("versions", "t", {"id": "1"}, ("id", "b", "until"), {"until": until})

    ops: list[RowOp] = [
        Upsert("t", {"id": "1", "a": "x", "b": 1}),
        keep(1),
        Update("t", {"id": "1"}, {"b": 2}),
        keep(2),
        Update("t", {"id": "1"}, {"b": 3}),
    ]
    runs = store_sql.grouped(ops, keys)
    assert [len(params) for _, params in runs] == [1, 1, 1, 1, 1]
    db = sqlite3.connect(":memory:")
    for statement in (*store_sql.create_table(T), *store_sql.create_table(VERSIONS)):
        db.execute(statement)
    for statement, params in runs:
        db.executemany(statement, params)
    assert db.execute("SELECT until, b FROM versions ORDER BY until").fetchall() == [(1, 1), (2, 2)]
    assert db.execute("SELECT b FROM t").fetchall() == [(3,)]


def test_grouped_of_nothing_is_nothing() -> None:
    assert store_sql.grouped([], KEYS) == []


def test_upsert_replaces_every_column_but_the_key() -> None:
    db = sqlite3.connect(":memory:")
    for statement in store_sql.create_table(T):
        db.execute(statement)
    ops = [Upsert("t", {"id": "1", "a": "x", "b": 1}), Upsert("t", {"id": "1", "a": "y", "b": 2})]
    for statement, params in store_sql.grouped(ops, KEYS):
        db.executemany(statement, params)
    assert db.execute("SELECT id, a, b FROM t").fetchall() == [("1", "y", 2)]


def test_statement_rejects_what_is_not_a_row_op() -> None:
    with pytest.raises(TypeError):
        store_sql.statement("DROP TABLE t", KEYS)  # type: ignore[arg-type]


# Projections -----------------------------------------------------------------------------
def commit(seq: int, events: list[AnyEvent], at: int = 1_700_000_000_123) -> StoredCommit:
    subject = "agentmem.evt.x.y.z"
    headers = {H_TIME: str(at), H_COMMAND_ID: f"cmd-{seq}"}
    # Through the wire format, as a worker would see it.
    return StoredCommit(seq, subject, headers, decode_commit(encode_commit(events)).events)


def test_orgs_projection_row_ops() -> None:
    projection = OrgsProjection()
    assert projection.project(commit(3, [OrgCreated(org_id="o1", name="Acme")], at=100)) == [
        Upsert(
            "orgs",
            {"org_id": "o1", "name": "Acme", "created_at": 100, "updated_at": 100, "version": 3},
        )
    ]
    assert projection.project(commit(8, [OrgRenamed(org_id="o1", name="B")], at=200)) == [
        Update("orgs", {"org_id": "o1"}, {"name": "B", "updated_at": 200, "version": 8})
    ]
    assert projection.project(commit(9, [OrgDeleted(org_id="o1")])) == [
        Delete("orgs", {"org_id": "o1"})
    ]
    # Events it does not own project to nothing.
    assert projection.project(commit(10, [registered()])) == []
    upsert = projection.project(commit(3, [OrgCreated(org_id="o1", name="Acme")]))[0]
    assert isinstance(upsert, Upsert)
    assert set(upsert.row) == set(ORGS.column_names)


def test_users_projection_row_ops() -> None:
    projection = UsersProjection()
    ops = projection.project(commit(4, [registered(roles=("admin", "member"))], at=100))
    assert ops == [
        Upsert(
            "users",
            {
                "user_id": USER_ID,
                "org_id": ORG_ID,
                "name": "Ann",
                "email": "ann@example.com",
                "roles": '["admin","member"]',
                "service_admin": 0,
                "created_at": 100,
                "updated_at": 100,
                "version": 4,
            },
        )
    ]
    upsert = ops[0]
    assert isinstance(upsert, Upsert)
    assert set(upsert.row) == set(USERS.column_names)
    profile = UserProfileUpdated(user_id=USER_ID, name="Anna", email="anna@example.com")
    assert projection.project(commit(5, [profile], at=200)) == [
        Update(
            "users",
            {"user_id": USER_ID},
            {"name": "Anna", "email": "anna@example.com", "updated_at": 200, "version": 5},
        )
    ]
    roles = UserRolesSet(user_id=USER_ID, roles=("readonly",))
    assert projection.project(commit(6, [roles], at=300)) == [
        Update(
            "users",
            {"user_id": USER_ID},
            {"roles": '["readonly"]', "updated_at": 300, "version": 6},
        )
    ]
    changed = UserPasswordChanged(user_id=USER_ID, password_hash=HASH)
    assert projection.project(commit(7, [changed], at=400)) == [
        Update("users", {"user_id": USER_ID}, {"updated_at": 400, "version": 7})
    ]
    assert projection.project(commit(8, [UserDeleted(user_id=USER_ID)])) == [
        Delete("users", {"user_id": USER_ID}),
        Delete("api_keys", {"user_id": USER_ID}),
    ]
    assert projection.project(commit(9, [OrgCreated(org_id="o", name="n")])) == []
    reserved = EmailReserved(email="ann@example.com", user_id=USER_ID, command_id="c")
    assert projection.project(commit(10, [reserved])) == []


ALL_EVENTS: list[AnyEvent] = [
    OrgCreated(org_id=ORG_ID, name="Acme"),
    OrgRenamed(org_id=ORG_ID, name="Acme 2"),
    registered(),
    UserProfileUpdated(user_id=USER_ID, name="Anna", email="anna@example.com"),
    UserPasswordChanged(user_id=USER_ID, password_hash=HASH),
    UserRolesSet(user_id=USER_ID, roles=("admin",)),
    EmailReserved(email="anna@example.com", user_id=USER_ID, command_id="c"),
    EmailReleased(email="ann@example.com", user_id=USER_ID),
    UserDeleted(user_id=USER_ID),
    OrgDeleted(org_id=ORG_ID),
]


def test_users_rows_never_hold_a_password_hash() -> None:
    projection = UsersProjection()
    assert not any("password" in c for c in USERS.column_names)
    for seq, event in enumerate(ALL_EVENTS, start=1):
        for op in projection.project(commit(seq, [event])):
            values = op.row if isinstance(op, Upsert) else getattr(op, "values", {})
            assert not any("password" in column for column in values)
            assert HASH not in msgspec.json.encode(values).decode()


@pytest.mark.parametrize("projection", [OrgsProjection(), UsersProjection()], ids=["orgs", "users"])
def test_projection_is_deterministic(projection: Any) -> None:
    commits = [commit(seq, [event]) for seq, event in enumerate(ALL_EVENTS, start=1)]
    commits.append(commit(99, ALL_EVENTS))  # a commit of many events, in order
    first = [projection.project(c) for c in commits]
    second = [projection.project(c) for c in commits]
    assert first == second
    assert any(first)  # it did produce something
    # A commit of many events projects to the ops of each event, in event order.
    many = first[-1]
    assert [type(op) for op in many] == [type(op) for ops in first[:-1] for op in ops]
    assert [getattr(op, "key", None) for op in many] == [
        getattr(op, "key", None) for ops in first[:-1] for op in ops
    ]


def test_an_event_subject_is_parsed_in_one_place() -> None:
    from agentmem import subjects

    assert subjects.parse(subjects.event("o1", "agent", "a-1")) == ("o1", "agent", "a-1")
    assert subjects.parse(subjects.email_reservation("a@b.example")).org_id == "_global"
    for wrong in ("agentmem.cmd.agent.create", "agentmem.evt.o1.agent", "other.evt.o.a.b", ""):
        with pytest.raises(ValueError, match="not an event subject"):
            subjects.parse(wrong)
