"""Who may connect to NATS, decided with AgentMem's own credentials (nats-server's auth callout).

nats-server asks, on ``$SYS.REQ.USER.AUTH`` in the service's account, about every connection
that is not the service's own; the service answers with a user of the ``CLIENTS`` account
(``agentmem/natsauth.py``) or a refusal:

- a valid API key or session token as the NATS token: may publish requests
  (``agentmem.cmd.>``, ``agentmem.q.>``, ``agentmem.sys.>``) and commands to be ingested
  in its own organization (``agentmem.in.<org>.>``; a service administrator, in any), and
  subscribe to
  ``_INBOX_<credential id>.>`` and its user's outcome tree ``agentmem.out.<org>.<user>.>``
  (a principal is the credential's user: another user's outcomes never reach it); a
  session's connection ends when the session does;
- an anonymous token (``anon_<random>``): the public subjects only (login, health, schema),
  and its own inbox;
- anything else (no token, a revoked, expired or unknown credential): refused.

The credential is checked exactly as a request's is (``Authenticator``): from the access view,
and a refusal always on a fresh read of the log. ``Disconnector`` closes, through the system
account, the connections of credentials a command has just ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agentmem import natsauth
from agentmem.auth import natsjwt, tokens
from agentmem.consumers.auth import Authenticator
from agentmem.errors import AgentMemError
from agentmem.events import AnyEvent, ApiKeyRevoked, OrgDeleted, SessionEnded, UserDeleted
from agentmem.natsflush import flushed

log = structlog.get_logger(__name__)

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
QUEUE = "agentmem"
NO_CREDENTIAL = (
    "send an AgentMem API key or session token as the NATS token, or an anonymous token "
    "'anon_<22 or more random letters and digits>' (docs/security.md, The NATS layer)"
)


class ConnectionGate:
    def __init__(self, nc: NATS, authenticate: Authenticator, issuer_seed: str) -> None:
        self.nc = nc
        self.authenticate = authenticate
        self.issuer_seed = issuer_seed
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(AUTH_SUBJECT, queue=QUEUE, cb=self._on_ask)
        await flushed(self.nc)

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()

    async def _on_ask(self, msg: Msg) -> None:
        try:
            request = natsjwt.decode(msg.data.decode())["nats"]
            user_nkey, server_id = str(request["user_nkey"]), str(request["server_id"]["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("auth callout: a request that is not nats-server's; ignored")
            return
        nats_token = str((request.get("connect_opts") or {}).get("auth_token") or "")
        try:
            user = await self.decide(nats_token, user_nkey)
            answer = natsjwt.authorization_response(
                user_nkey, server_id, self.issuer_seed, jwt=user
            )
        except AgentMemError as refused:
            answer = natsjwt.authorization_response(
                user_nkey, server_id, self.issuer_seed, error=refused.message
            )
        except Exception as exc:  # refused, never let in by accident; the process goes on
            log.error("auth callout failed", error=repr(exc))
            answer = natsjwt.authorization_response(
                user_nkey, server_id, self.issuer_seed, error="internal error"
            )
        with contextlib.suppress(Exception):
            await self.nc.publish(msg.reply, answer.encode())  # no headers echoed (router.py)

    async def decide(self, nats_token: str, user_nkey: str) -> str:
        """The user JWT a connection that sent ``nats_token`` gets, or an AgentMemError."""
        inbox = natsauth.inbox_id(nats_token)
        if inbox is None:
            raise AgentMemError(NO_CREDENTIAL)
        credential = tokens.parse(nats_token)
        publish, expires = natsauth.PUBLIC_SUBJECTS, None
        if credential is not None:
            principal = await self.authenticate({tokens.HEADER: nats_token})
            publish = natsauth.publish_subjects(
                None if principal.service_admin else principal.org_id
            )
            if principal.expires_at is not None:
                expires = principal.expires_at // 1000
        return natsjwt.user_jwt(
            user_nkey,
            natsauth.CLIENT_ACCOUNT,
            natsauth.connection_name(credential),
            publish,
            [f"_INBOX_{inbox}.>", *natsauth.outcome_subscriptions(credential)],
            self.issuer_seed,
            expires,
        )


# Closing what a command ended -----------------------------------------------------------------
CONNZ_SUBJECT = "$SYS.REQ.SERVER.PING.CONNZ"
KICK_SUBJECT = "$SYS.REQ.SERVER.{server_id}.KICK"
GATHER_QUIET_S = 0.1  # every server of a cluster answers within this of the first
GATHER_MAX_S = 2.0
MAX_CONNECTIONS = 1_000_000  # per server, one page


def ended_by(events: list[AnyEvent]) -> list[tuple[str, str]]:
    """What ``events`` end, as (which part of a connection's name, value): a key, a
    session, every credential of a user or of an organization."""
    ended: list[tuple[str, str]] = []
    for event in events:
        match event:
            case ApiKeyRevoked(key_id=key_id):
                ended.append((tokens.API_KEY_PREFIX, key_id))
            case SessionEnded(session_id=session_id):
                ended.append((tokens.SESSION_PREFIX, session_id))
            case UserDeleted(user_id=user_id):
                ended.append(("user", user_id))
            case OrgDeleted(org_id=org_id):
                ended.append(("org", org_id))
    return ended


def _matches(name: str, ended: list[tuple[str, str]]) -> bool:
    parts = name.split("_")
    if len(parts) != 4:
        return False  # anonymous
    kind, org_id, user_id, credential_id = parts
    for what, value in ended:
        if (what == kind and value == credential_id) or (what, value) in (
            ("user", user_id),
            ("org", org_id),
        ):
            return True
    return False


class Disconnector:
    """Closes the client connections of ended credentials on every server, through the
    system account (connz to find them, kick to close them)."""

    def __init__(self, system_nc: NATS) -> None:
        self.nc = system_nc

    async def __call__(self, events: list[AnyEvent]) -> int:
        ended = ended_by(events)
        if not ended:
            return 0
        try:
            return await self._close(ended)
        except Exception as exc:  # NATS away: the credential is refused all the same
            log.warning("could not close ended credentials' connections", error=repr(exc))
            return 0

    async def _close(self, ended: list[tuple[str, str]]) -> int:
        query = {"acc": natsauth.CLIENT_ACCOUNT, "auth": True, "limit": MAX_CONNECTIONS}
        closed = 0
        for reply in await self._gather(CONNZ_SUBJECT, json.dumps(query).encode()):
            data = reply.get("data") or {}
            server_id = str((reply.get("server") or {}).get("id") or "")
            for connection in data.get("connections") or []:
                if _matches(str(connection.get("authorized_user") or ""), ended):
                    kick = json.dumps({"cid": connection["cid"]}).encode()
                    subject = KICK_SUBJECT.format(server_id=server_id)
                    with contextlib.suppress(Exception):
                        await self.nc.request(subject, kick, timeout=GATHER_MAX_S)
                        closed += 1
        if closed:
            log.info("closed the NATS connections of ended credentials", connections=closed)
        return closed

    async def _gather(self, subject: str, body: bytes) -> list[dict[str, Any]]:
        """Every server's answer to a PING request: until none came for a moment."""
        replies: list[dict[str, Any]] = []
        arrived = asyncio.Event()

        async def on_reply(msg: Msg) -> None:
            with contextlib.suppress(ValueError):
                replies.append(json.loads(msg.data))
            arrived.set()

        inbox = self.nc.new_inbox()
        subscription = await self.nc.subscribe(inbox, cb=on_reply)
        try:
            await self.nc.publish(subject, body, reply=inbox)
            wait = GATHER_MAX_S
            while True:
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), wait)
                except TimeoutError:
                    break
                wait = GATHER_QUIET_S
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        return replies
