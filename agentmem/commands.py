"""The request bodies of every command, as msgspec Structs.

Decoding a request validates it: types, lengths, patterns, unknown fields. A request that
does not decode never reaches a handler.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from agentmem.events import Role

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_\-]{1,64}$(?!\n)")]
# An id a client picks for a new organization or user: no underscore, which separates the
# parts of a credential (and starts the reserved "_global" token).
NewId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9\-]{0,63}$(?!\n)")]
# Deliberately simple: one @, no spaces, a dot in the domain. Deliverability is not our job.
Email = Annotated[str, msgspec.Meta(max_length=254, pattern=r"^[^@\s]{1,64}@[^@\s]+\.[^@\s.]{2,}$")]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=1024)]
Version = Annotated[int, msgspec.Meta(ge=0)]
Roles = Annotated[list[Role], msgspec.Meta(min_length=1, max_length=3)]


class Command(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # A client-chosen id makes a retry safe: the log stores the command once and answers
    # the retry with the first outcome.
    command_id: Id | None = None


class Targeted(Command, frozen=True, kw_only=True):
    # Optimistic concurrency: when given, the command fails with `conflict` unless the
    # aggregate is still at this version.
    expected_version: Version | None = None


class CreateOrg(Command, frozen=True, kw_only=True):
    name: Name
    # Optional: a client that picks the id (a UUIDv7 is best) can retry safely forever,
    # not only within the log's 10-minute duplicate window.
    org_id: NewId | None = None


class RenameOrg(Targeted, frozen=True, kw_only=True):
    org_id: Id
    name: Name


class DeleteOrg(Targeted, frozen=True, kw_only=True):
    org_id: Id


class RegisterUser(Command, frozen=True, kw_only=True):
    org_id: Id
    name: Name
    email: Email
    password: Password
    roles: Roles = msgspec.field(default_factory=lambda: ["member"])
    user_id: NewId | None = None  # optional, as org_id in CreateOrg


class UpdateProfile(Targeted, frozen=True, kw_only=True):
    user_id: Id
    name: Name | None = None
    email: Email | None = None


class ChangePassword(Targeted, frozen=True, kw_only=True):
    user_id: Id
    old_password: Annotated[str, msgspec.Meta(max_length=1024)]
    new_password: Password


class SetRoles(Targeted, frozen=True, kw_only=True):
    user_id: Id
    roles: Roles


class DeleteUser(Targeted, frozen=True, kw_only=True):
    user_id: Id


def normalize_email(email: str) -> str:
    return email.strip().lower()


class Login(Command, frozen=True, kw_only=True):
    email: Email
    password: Annotated[str, msgspec.Meta(max_length=1024)]
    ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=30 * 24 * 3600)] = 12 * 3600


class Logout(Command, frozen=True, kw_only=True):
    pass


class CreateApiKey(Command, frozen=True, kw_only=True):
    name: Name
    user_id: Id | None = None  # default: the caller


class RevokeApiKey(Command, frozen=True, kw_only=True):
    key_id: Id
    user_id: Id | None = None  # default: the caller
