"""Who is calling (authentication) and whether they may (authorization), per request.

A credential names its user, so checking it needs that user's aggregate and its
organization's. In a service they come from the process's access view
(``consumers/access_view.py``), which keeps them current from the log without a round trip
per request, and which a command that takes access away waits for: a key revoked a moment
ago, a role taken away, a deleted user or organization, all fail on the very next request in
every process. Without a view (or while it cannot trust itself) they are read from the log.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agentmem.auth import tokens
from agentmem.consumers.access_view import AccessView
from agentmem.consumers.aggregates import AggregateCache, FreshReads
from agentmem.domain import orgs, users
from agentmem.domain.access import Need, Principal, allowed
from agentmem.domain.aggregate import Loaded
from agentmem.errors import AgentMemError, ForbiddenError, NotFoundError, UnauthenticatedError
from agentmem.headers import header

EXPECTED = f"'{tokens.HEADER}: Bearer <API key or session token>'"
# No Authorization header at all (or an empty one); one that holds no well-formed token; a
# well-formed token that does not let anyone in. None of them quotes what was sent.
MISSING = f"credentials needed: send the header {EXPECTED}"
MALFORMED = "malformed credentials: {problem}; send the header " + EXPECTED
INVALID = "credentials are not valid (unknown, revoked, expired or of a deleted user)"


class Authenticator:
    def __init__(self, cache: AggregateCache, view: AccessView | None = None) -> None:
        self.fresh = FreshReads(cache)
        self.view = view

    async def __call__(self, headers: dict[str, str]) -> Principal:
        value = header(headers, tokens.HEADER)
        if value is None or not value.strip():
            raise UnauthenticatedError(MISSING)
        token = tokens.parse(value)
        if token is None:
            raise UnauthenticatedError(MALFORMED.format(problem=tokens.malformed(value)))
        user_subject = users.subject(token.org_id, token.user_id)
        org_subject = orgs.subject(token.org_id)
        view = self.view
        if view is None or not view.trusted:
            return _check(token, *await _both(self.fresh, user_subject, org_subject))
        user, org = view.peek(user_subject), view.peek(org_subject)
        held = user is not None or org is not None
        if user is None or org is None:
            user, org = await _both(view, user_subject, org_subject)
        try:
            return _check(token, user, org)
        except UnauthenticatedError:
            if not held:
                raise  # both were just read from the log: the refusal is the log's
            # The view may not have a key or a session created a moment ago in another
            # process yet: a refusal is only ever decided on the log.
            return _check(token, *await _both(self.fresh, user_subject, org_subject))


async def _both(
    reads: FreshReads | AccessView, user_subject: str, org_subject: str
) -> tuple[Loaded[users.User], Loaded[orgs.Org]]:
    user, org = await asyncio.gather(
        reads.load(user_subject, users.evolve), reads.load(org_subject, orgs.evolve)
    )
    return user, org


def _check(token: tokens.Token, user_loaded: Loaded[Any], org_loaded: Loaded[Any]) -> Principal:
    user, org = user_loaded.state, org_loaded.state
    if user is None or user.deleted or org is None or org.deleted:
        raise UnauthenticatedError(INVALID)
    if token.kind == "key":
        key = user.api_keys.get(token.credential_id)
        if key is None or key.revoked or not tokens.matches(token.secret, key.digest):
            raise UnauthenticatedError(INVALID)
        session = None
    else:
        session = user.sessions.get(token.credential_id)
        if session is None or session.ended or not tokens.matches(token.secret, session.digest):
            raise UnauthenticatedError(INVALID)
        if session.expires_at <= time.time() * 1000:
            raise UnauthenticatedError("session expired; log in again")
    return Principal(
        user_id=user.user_id,
        org_id=user.org_id,
        roles=user.roles,
        service_admin=user.service_admin,
        via=f"{token.kind}:{token.credential_id}",
        expires_at=None if session is None else session.expires_at,
    )


def authorize(
    principal: Principal,
    need: Need,
    target_org: str | None,
    hidden: AgentMemError | None = None,
    target_user: str | None = None,
) -> None:
    """Raise unless allowed. Another organization's data is answered as ``hidden`` (the
    same not-found a missing thing gets), so its existence does not leak."""
    if allowed(principal, need, target_org, target_user):
        return
    other_org = target_org is not None and target_org != principal.org_id
    if other_org and not principal.service_admin:
        raise hidden or NotFoundError("not found")
    raise ForbiddenError(
        f"your role does not allow this (it needs {need.replace('_', ' ')})",
        {"needs": need, "roles": list(principal.roles)},
    )
