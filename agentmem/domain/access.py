"""Who may do what: the role matrix of docs/security.md, as one pure function.

Roles nest: an org ``admin`` can do everything a ``member`` can, who can do everything a
``readonly`` user can. A service administrator can do everything everywhere. The
organization a request acts on always comes from the target aggregate or the principal,
never from a field the caller could forge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agentmem.events import (
    AgentArchived,
    AgentDeleted,
    AnyEvent,
    ApiKeyRevoked,
    OrgDeleted,
    Role,
    SessionEnded,
    UserDeleted,
    UserRolesSet,
)

# What an operation needs, from least to most.
Need = Literal["reader", "member", "self", "org_admin", "service_admin"]

_RANK: dict[Role, int] = {"readonly": 1, "member": 2, "admin": 3}


@dataclass(frozen=True)
class Principal:
    user_id: str
    org_id: str
    roles: tuple[Role, ...]
    service_admin: bool = False
    via: str = ""  # "key:<id>" or "session:<id>": which credential, for the audit trail
    expires_at: int | None = None  # a session's end (Unix ms); a key does not expire

    @property
    def rank(self) -> int:
        return max((_RANK[r] for r in self.roles), default=0)

    def audit_name(self) -> str:
        return f"user:{self.user_id}" + (f" via {self.via}" if self.via else "")


def allowed(
    principal: Principal, need: Need, target_org: str | None, target_user: str | None = None
) -> bool:
    """May ``principal`` do an operation needing ``need`` on ``target_org`` (and user)?"""
    if principal.service_admin:
        return True
    if need == "service_admin":
        return False
    if target_org is not None and target_org != principal.org_id:
        return False
    match need:
        case "reader":
            return principal.rank >= _RANK["readonly"]
        case "member":
            return principal.rank >= _RANK["member"]
        case "self":
            # Your own account (password, keys, sessions): any writer role, or an org admin.
            if target_user == principal.user_id:
                return principal.rank >= _RANK["member"]
            return principal.rank >= _RANK["admin"]
        case "org_admin":
            return principal.rank >= _RANK["admin"]
    return False


def narrows_access(event: AnyEvent) -> bool:
    """Whether an event can take a credential or a right away from someone (or from an
    agent). A commit that
    holds one is acknowledged only once every process's access view has applied it
    (``consumers/access_view.py``): a revoked key then fails on the very next request.
    Events that only grant (a new key, a new session) need no such wait: a credential the
    view does not know yet is checked against the log before it is refused."""
    match event:
        case ApiKeyRevoked() | SessionEnded() | UserDeleted() | UserRolesSet() | OrgDeleted():
            return True
        case AgentArchived() | AgentDeleted():  # an agent that may no longer speak
            return True
        case _:
            return False
