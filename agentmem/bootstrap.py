"""The first start of a fresh deployment: a service administrator and one API key.

Decided in the log like everything else: the bootstrap marker is written with expected
sequence 0 in the same atomic batch as the administrator, so of several processes starting
at once exactly one creates it. The key is shown once, and saved readable only by its owner.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from agentmem import ids, subjects
from agentmem.auth import tokens
from agentmem.domain import credentials, orgs, users
from agentmem.domain.aggregate import Loaded, Write, fold
from agentmem.domain.passwords import hash_password
from agentmem.errors import NotFoundError
from agentmem.eventlog import CommitMeta, EventLog, StaleVersion
from agentmem.events import (
    ApiKeyCreated,
    EmailReserved,
    OrgCreated,
    ServiceBootstrapped,
    UserRegistered,
)

ADMIN_EMAIL = "admin@agentmem.local"
ADMIN_ORG_NAME = "AgentMem service"
KEY_FILE = "admin.key"


@dataclass(frozen=True)
class Admin:
    org_id: str
    user_id: str


async def find_admin(log: EventLog) -> Admin | None:
    for commit in await log.read_subject(subjects.bootstrap()):
        for event in commit.events:
            if isinstance(event, ServiceBootstrapped):
                return Admin(event.org_id, event.admin_user_id)
    return None


def save_key(data_dir: Path, key: str) -> Path:
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    os.chmod(path, 0o600)
    return path


async def ensure_admin(log: EventLog, password_cost: int) -> str | None:
    """Create the administrator if the log has none; return its first API key, else None."""
    if await find_admin(log) is not None:
        return None
    org_id, user_id = ids.new_id(), ids.new_id()
    token = tokens.new_token("key", org_id, user_id)
    reservation_subject = subjects.email_reservation(ADMIN_EMAIL)
    reservation = await log.read_subject(reservation_subject)
    # Nobody logs in with this password: it is random and never shown; the key is the way in.
    password_hash = hash_password(secrets.token_urlsafe(32), password_cost)
    writes = [
        Write(subjects.bootstrap(), 0, [ServiceBootstrapped(org_id=org_id, admin_user_id=user_id)]),
        Write(orgs.subject(org_id), 0, [OrgCreated(org_id=org_id, name=ADMIN_ORG_NAME)]),
        Write(
            reservation_subject,
            reservation[-1].seq if reservation else 0,
            [
                EmailReserved(
                    email=ADMIN_EMAIL, user_id=user_id, command_id="bootstrap", org_id=org_id
                )
            ],
        ),
        Write(
            users.subject(org_id, user_id),
            0,
            [
                UserRegistered(
                    user_id=user_id,
                    org_id=org_id,
                    name="Service administrator",
                    email=ADMIN_EMAIL,
                    password_hash=password_hash,
                    roles=("admin",),
                    service_admin=True,
                ),
                ApiKeyCreated(
                    user_id=user_id,
                    key_id=token.credential_id,
                    name="bootstrap",
                    prefix=token.display_prefix,
                    digest=tokens.digest(token.secret),
                ),
            ],
        ),
    ]
    try:
        await log.append(
            writes,
            CommitMeta(
                command_id=ids.new_id(), commit_type="service.bootstrap", principal="bootstrap"
            ),
        )
    except StaleVersion:
        return None  # another process bootstrapped first
    return str(token)


async def create_admin_key(log: EventLog, name: str) -> str:
    """Another key for the administrator, for someone with access to the log."""
    admin = await find_admin(log)
    if admin is None:
        raise NotFoundError("this deployment has no administrator yet: start agentmem serve once")
    subject = users.subject(admin.org_id, admin.user_id)
    for _ in range(5):
        commits = await log.read_subject(subject)
        state = None
        for commit in commits:
            state = fold(users.evolve, state, commit.events)
        loaded = Loaded(subject, state, commits[-1].seq if commits else 0)
        token = tokens.new_token("key", admin.org_id, admin.user_id)
        meta = CommitMeta(command_id=ids.new_id(), commit_type="apikey.create", principal="cli")
        try:
            await log.append(credentials.create_key(loaded, token, name), meta)
        except StaleVersion:
            continue
        return str(token)
    raise RuntimeError("the administrator kept changing; try again")
