"""Login, logout, and API keys: the commands that issue and withdraw credentials.

A new secret is in exactly one reply, the one that created it; the log keeps a digest. A
retried command is answered with its first outcome, but without the secret, which nobody can
produce again (create another key instead).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from agentmem import natsauth, subjects
from agentmem.auth import tokens
from agentmem.commands import CreateApiKey, Login, Logout, RevokeApiKey, normalize_email
from agentmem.consumers.aggregates import Loader
from agentmem.consumers.commands import check_user, owner_of_user
from agentmem.consumers.router import Request, Result, Router
from agentmem.domain import credentials, orgs, users
from agentmem.domain.aggregate import Loaded, Write
from agentmem.domain.passwords import cost_of, hash_password, verify_password
from agentmem.errors import UnauthenticatedError

if TYPE_CHECKING:
    from agentmem.consumers.parts import Parts

WRONG_LOGIN = "wrong email or password"


def _with_secret(result: Result, held: list[tokens.Token], id_field: str) -> Result:
    data, seq = result
    token = held[0] if held else None
    issued = token is not None and data.get(id_field) == token.credential_id
    data = {**data, "token": str(token) if issued else None}
    if not issued:
        data["note"] = "created by an earlier attempt of this command; its secret was shown then"
    return data, seq


def command_router(parts: Parts) -> Router:
    router = Router()
    runner, throttle, work, password_cost = (
        parts.runner,
        parts.throttle,
        parts.work,
        parts.password_cost,
    )
    sources = parts.source_throttle
    # Verifying against this when the email is unknown keeps both answers equally slow.
    decoy_hash = hash_password("decoy password", password_cost)

    async def verified_user(email: str, password: str) -> tuple[Loaded[users.User], users.User]:
        """The live user that ``email`` and ``password`` name, or UnauthenticatedError. The
        password is checked before anything else is looked at: a login that replays an
        earlier one must know the password as well as its command id."""
        cache = runner.cache
        reservation = await cache.load(
            subjects.email_reservation(email), users.evolve_reservation, refresh=True
        )
        user = None
        if reservation.state is not None:
            user_subject = await runner.user_subject(reservation.state.user_id)
            user = await cache.load(user_subject, users.evolve, refresh=True)
        state = user.state if user is not None else None
        live = state is not None and not state.deleted
        if state is not None and live:
            org = await cache.load(orgs.subject(state.org_id), orgs.evolve, refresh=True)
            live = org.state is not None and not org.state.deleted
        stored = state.password_hash if state is not None and live else decoy_hash
        matches = await work.run(verify_password, password, stored, shed=True)
        if user is None or state is None or not live or not matches:
            raise UnauthenticatedError(WRONG_LOGIN)
        return user, state

    @router.handle(Login)
    async def login(request: Request[Login]) -> Result:
        command = request.body
        email = normalize_email(command.email)
        work.check_room()
        # Both counted before the password is checked, so guesses sent at once meet the
        # limits as sequential ones do.
        source = natsauth.request_source(request.headers)
        where = f"source:{source}" if source else None
        if where is not None:
            sources.attempt(where, "failed logins from your address")
        try:
            throttle.attempt(email)
        except UnauthenticatedError:
            if where is not None:
                sources.refund(where)  # refused before any password was checked
            raise
        # Read from the log, not from this process's cache: another process may have
        # written the registration or a new password a moment ago, and a refusal is
        # decided on the log. (A few reads next to a password hash cost nothing.)
        verified, verified_state = await verified_user(email, command.password)
        token_holder: list[tokens.Token] = []
        rehashed = None
        if cost_of(verified_state.password_hash) < password_cost:
            rehashed = await work.run(hash_password, command.password, password_cost, shed=True)

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            user = await loader.load(verified.subject, users.evolve)
            state = users.require_live(user, verified_state.user_id)
            if state.password_hash != verified_state.password_hash:
                raise UnauthenticatedError(WRONG_LOGIN)  # changed since it was checked
            if not token_holder:
                token_holder.append(tokens.new_token("session", state.org_id, state.user_id))
            now_ms = time.time_ns() // 1_000_000
            return credentials.start_session(
                user, token_holder[0], now_ms, command.ttl_seconds, rehashed
            )

        # A login belongs to the command-id space of the user it logs in, like the commands
        # that user sends with the session afterwards.
        owner = owner_of_user(verified_state)
        result = await runner.run(request, plan, owner=owner)
        throttle.succeeded(email)
        if where is not None:
            sources.refund(where)  # not a failure: it does not count against the address
        return _with_secret(result, token_holder, "session_id")

    @router.handle(Logout)
    async def logout(request: Request[Logout]) -> Result:
        caller = request.caller
        kind, _, session_id = caller.via.partition(":")
        if kind != "session":
            raise UnauthenticatedError("log out with the session token itself, not an API key")

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            user = await runner.load_user(loader, caller.user_id)
            return credentials.end_session(user, caller.user_id, session_id)

        return await runner.run(request, plan)

    @router.handle(CreateApiKey)
    async def create_key(request: Request[CreateApiKey]) -> Result:
        user_id = request.body.user_id or request.caller.user_id
        token_holder: list[tokens.Token] = []

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            user = await runner.load_user(loader, user_id)
            state = check_user(request, request.need, user)
            if not token_holder:
                token_holder.append(tokens.new_token("key", state.org_id, state.user_id))
            return credentials.create_key(user, token_holder[0], request.body.name)

        result = await runner.run(request, plan)
        return _with_secret(result, token_holder, "key_id")

    @router.handle(RevokeApiKey)
    async def revoke_key(request: Request[RevokeApiKey]) -> Result:
        user_id = request.body.user_id or request.caller.user_id

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            user = await runner.load_user(loader, user_id)
            check_user(request, request.need, user)
            return credentials.revoke_key(user, user_id, request.body.key_id)

        return await runner.run(request, plan)

    return router
