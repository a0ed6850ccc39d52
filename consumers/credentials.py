"""Login, logout, and API keys: the commands that issue and withdraw credentials.

A new secret is in exactly one reply, the one that created it; the log keeps a digest. A
retried command is answered with its first outcome, but without the secret, which nobody can
produce again (create another key instead).
"""

from __future__ import annotations

import asyncio
import time

from agentmem import subjects
from agentmem.auth import tokens
from agentmem.commands import CreateApiKey, Login, Logout, RevokeApiKey, normalize_email
from agentmem.domain import credentials, orgs, users
from agentmem.domain.aggregate import Write
from agentmem.domain.passwords import hash_password, verify_password
from agentmem.errors import UnauthenticatedError
from consumers.aggregates import Loader
from consumers.auth import LoginThrottle
from consumers.commands import CommandRunner, check_user
from consumers.router import Request, Result, Router

WRONG_LOGIN = "wrong email or password"


def _with_secret(result: Result, held: list[tokens.Token], id_field: str) -> Result:
    data, seq = result
    token = held[0] if held else None
    issued = token is not None and data.get(id_field) == token.credential_id
    data = {**data, "token": str(token) if issued else None}
    if not issued:
        data["note"] = "created by an earlier attempt of this command; its secret was shown then"
    return data, seq


def build_router(runner: CommandRunner, throttle: LoginThrottle, password_cost: int) -> Router:
    router = Router()
    # Verifying against this when the email is unknown keeps both answers equally slow.
    decoy_hash = hash_password("decoy password", password_cost)

    @router.route(subjects.AUTH_LOGIN, Login, public=True)
    async def login(request: Request[Login]) -> Result:
        command = request.body
        email = normalize_email(command.email)
        throttle.check(email)
        token_holder: list[tokens.Token] = []

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            reservation = await loader.load(
                subjects.email_reservation(email), users.evolve_reservation
            )
            user = None
            if reservation.state is not None:
                user = await loader.load(
                    await runner.user_subject(reservation.state.user_id), users.evolve
                )
            state = user.state if user is not None else None
            live = state is not None and not state.deleted
            if state is not None and live:
                org = await loader.load(orgs.subject(state.org_id), orgs.evolve)
                live = org.state is not None and not org.state.deleted
            stored = state.password_hash if state is not None and live else decoy_hash
            matches = await asyncio.to_thread(verify_password, command.password, stored)
            if user is None or state is None or not live or not matches:
                throttle.failed(email)
                raise UnauthenticatedError(WRONG_LOGIN)
            if not token_holder:
                token_holder.append(tokens.new_token("session", state.org_id, state.user_id))
            now_ms = time.time_ns() // 1_000_000
            return credentials.start_session(user, token_holder[0], now_ms, command.ttl_seconds)

        result = await runner.run("auth.login", request, plan)
        throttle.succeeded(email)
        return _with_secret(result, token_holder, "session_id")

    @router.route(subjects.AUTH_LOGOUT, Logout)
    async def logout(request: Request[Logout]) -> Result:
        caller = request.caller
        kind, _, session_id = caller.via.partition(":")
        if kind != "session":
            raise UnauthenticatedError("log out with the session token itself, not an API key")

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            user = await runner.load_user(loader, caller.user_id)
            return credentials.end_session(user, caller.user_id, session_id)

        return await runner.run("auth.logout", request, plan)

    @router.route(subjects.APIKEY_CREATE, CreateApiKey)
    async def create_key(request: Request[CreateApiKey]) -> Result:
        user_id = request.body.user_id or request.caller.user_id
        token_holder: list[tokens.Token] = []

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            user = await runner.load_user(loader, user_id)
            state = check_user(request, "self", user)
            if not token_holder:
                token_holder.append(tokens.new_token("key", state.org_id, state.user_id))
            return credentials.create_key(user, token_holder[0], request.body.name)

        result = await runner.run("apikey.create", request, plan)
        return _with_secret(result, token_holder, "key_id")

    @router.route(subjects.APIKEY_REVOKE, RevokeApiKey)
    async def revoke_key(request: Request[RevokeApiKey]) -> Result:
        user_id = request.body.user_id or request.caller.user_id

        async def plan(loader: Loader, command_id: str) -> list[Write]:
            user = await runner.load_user(loader, user_id)
            check_user(request, "self", user)
            return credentials.revoke_key(user, user_id, request.body.key_id)

        return await runner.run("apikey.revoke", request, plan)

    return router
