"""Users, and the email reservations that keep an address unique across the service.

An email's uniqueness is decided in the log, not in a table: its reservation subject is
written in the same atomic batch as the user, with the reservation's expected sequence, so of
two registrations racing for one address exactly one can be stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from agentmem import subjects
from agentmem.commands import DeleteUser, RegisterUser, SetRoles, UpdateProfile
from agentmem.domain.aggregate import Loaded, Write, check_version
from agentmem.errors import ConflictError, NotFoundError
from agentmem.events import (
    AnyEvent,
    ApiKeyCreated,
    ApiKeyRevoked,
    EmailReleased,
    EmailReserved,
    Role,
    SessionEnded,
    SessionStarted,
    UserDeleted,
    UserPasswordChanged,
    UserProfileUpdated,
    UserRegistered,
    UserRolesSet,
)


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    prefix: str
    digest: str
    revoked: bool = False


@dataclass(frozen=True)
class Session:
    session_id: str
    digest: str
    expires_at: int
    ended: bool = False


@dataclass(frozen=True)
class User:
    user_id: str
    org_id: str
    name: str
    email: str
    password_hash: str
    roles: tuple[Role, ...]
    deleted: bool = False
    service_admin: bool = False
    api_keys: Mapping[str, ApiKey] = field(default_factory=dict)
    sessions: Mapping[str, Session] = field(default_factory=dict)


@dataclass(frozen=True)
class Reservation:
    email: str
    user_id: str
    command_id: str


def subject(org_id: str, user_id: str) -> str:
    return subjects.event(org_id, "user", user_id)


def evolve(state: User | None, event: AnyEvent) -> User | None:
    match event:
        case UserRegistered():
            return User(
                user_id=event.user_id,
                org_id=event.org_id,
                name=event.name,
                email=event.email,
                password_hash=event.password_hash,
                roles=tuple(event.roles),
                service_admin=event.service_admin,
            )
        case UserProfileUpdated(name=name, email=email) if state is not None:
            return replace(state, name=name, email=email)
        case UserPasswordChanged(password_hash=password_hash) if state is not None:
            return replace(state, password_hash=password_hash)
        case UserRolesSet(roles=roles) if state is not None:
            return replace(state, roles=tuple(roles))
        case UserDeleted() if state is not None:
            return replace(state, deleted=True)
        case ApiKeyCreated() if state is not None:
            key = ApiKey(event.key_id, event.name, event.prefix, event.digest)
            return replace(state, api_keys={**state.api_keys, event.key_id: key})
        case ApiKeyRevoked(key_id=key_id) if state is not None and key_id in state.api_keys:
            revoked = replace(state.api_keys[key_id], revoked=True)
            return replace(state, api_keys={**state.api_keys, key_id: revoked})
        case SessionStarted() if state is not None:
            # Sessions that had expired when this one started are dropped, so a user who
            # logs in daily does not drag years of sessions along.
            live = {k: s for k, s in state.sessions.items() if s.expires_at > event.started_at}
            live[event.session_id] = Session(event.session_id, event.digest, event.expires_at)
            return replace(state, sessions=live)
        case SessionEnded(session_id=sid) if state is not None and sid in state.sessions:
            ended = replace(state.sessions[sid], ended=True)
            return replace(state, sessions={**state.sessions, sid: ended})
    return state


def evolve_reservation(state: Reservation | None, event: AnyEvent) -> Reservation | None:
    match event:
        case EmailReserved(email=email, user_id=user_id, command_id=command_id):
            return Reservation(email=email, user_id=user_id, command_id=command_id)
        case EmailReleased():
            return None
    return state


def require_live(loaded: Loaded[User], user_id: str) -> User:
    if loaded.state is None or loaded.state.deleted:
        raise NotFoundError(f"user {user_id} does not exist", {"user_id": user_id})
    return loaded.state


def _reserve(
    reservation: Loaded[Reservation], email: str, user_id: str, command_id: str, org_id: str
) -> Write:
    if reservation.state is not None:
        raise ConflictError(f"email {email} is already registered", {"email": email})
    event = EmailReserved(email=email, user_id=user_id, command_id=command_id, org_id=org_id)
    return Write(reservation.subject, reservation.version, [event])


def register(
    command: RegisterUser,
    *,
    email: str,
    reservation: Loaded[Reservation],
    user_id: str,
    password_hash: str,
    command_id: str,
) -> list[Write]:
    """The caller has checked that the organization is live."""
    registered = UserRegistered(
        user_id=user_id,
        org_id=command.org_id,
        name=command.name,
        email=email,
        password_hash=password_hash,
        roles=tuple(dict.fromkeys(command.roles)),
    )
    return [
        _reserve(reservation, email, user_id, command_id, command.org_id),
        Write(subject(command.org_id, user_id), 0, [registered]),
    ]


def update_profile(
    loaded: Loaded[User],
    command: UpdateProfile,
    *,
    new_email: str | None,
    new_reservation: Loaded[Reservation] | None,
    old_reservation: Loaded[Reservation] | None,
    command_id: str,
) -> list[Write]:
    user = require_live(loaded, command.user_id)
    check_version(loaded, command.expected_version)
    writes: list[Write] = []
    email = user.email
    if new_email is not None and new_email != user.email:
        if new_reservation is None or old_reservation is None:
            raise ValueError("an email change needs both reservations loaded")
        writes.append(_reserve(new_reservation, new_email, user.user_id, command_id, user.org_id))
        released = EmailReleased(email=user.email, user_id=user.user_id, org_id=user.org_id)
        writes.append(Write(old_reservation.subject, old_reservation.version, [released]))
        email = new_email
    event = UserProfileUpdated(user_id=user.user_id, name=command.name or user.name, email=email)
    writes.append(Write(loaded.subject, loaded.version, [event]))
    return writes


def change_password(
    loaded: Loaded[User], expected_version: int | None, new_hash: str
) -> list[Write]:
    """The caller has verified the old password against ``loaded.state.password_hash``."""
    user = require_live(loaded, subjects.parse(loaded.subject).aggregate_id)
    check_version(loaded, expected_version)
    event = UserPasswordChanged(user_id=user.user_id, password_hash=new_hash)
    return [Write(loaded.subject, loaded.version, [event])]


def set_roles(loaded: Loaded[User], command: SetRoles) -> list[Write]:
    user = require_live(loaded, command.user_id)
    check_version(loaded, command.expected_version)
    event = UserRolesSet(user_id=user.user_id, roles=tuple(dict.fromkeys(command.roles)))
    return [Write(loaded.subject, loaded.version, [event])]


def delete(
    loaded: Loaded[User], command: DeleteUser, reservation: Loaded[Reservation]
) -> list[Write]:
    user = require_live(loaded, command.user_id)
    check_version(loaded, command.expected_version)
    writes = []
    # Free the address for someone else, in the same atomic batch as the deletion.
    if reservation.state is not None and reservation.state.user_id == user.user_id:
        released = EmailReleased(email=user.email, user_id=user.user_id, org_id=user.org_id)
        writes.append(Write(reservation.subject, reservation.version, [released]))
    writes.append(Write(loaded.subject, loaded.version, [UserDeleted(user_id=user.user_id)]))
    return writes
