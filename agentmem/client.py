"""A small typed async client: one method per command and query.

Every reply is the envelope of docs/protocol.md; an error reply is raised as the matching
``AgentMemError`` subclass. The client remembers the highest log sequence its commands
produced (``last_seq``); pass ``after_seq=client.last_seq`` to a query to read your writes.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec
import nats
from nats.aio.client import Client as NATS

from agentmem import envelope, subjects
from agentmem.auth import tokens
from agentmem.errors import ERRORS_BY_CODE, InternalError, UnavailableError
from agentmem.events import Role

T = TypeVar("T")


class Org(msgspec.Struct, frozen=True):
    org_id: str
    name: str
    version: int
    created_at: int = 0
    updated_at: int = 0


class User(msgspec.Struct, frozen=True):
    user_id: str
    org_id: str
    name: str
    email: str
    roles: list[str]
    version: int
    created_at: int = 0
    updated_at: int = 0


class Page(msgspec.Struct, Generic[T], frozen=True):
    items: list[T]
    next_cursor: str | None


class Written(msgspec.Struct, frozen=True):
    """What a command answers: the event it stored, the new version, and its fields."""

    event: str
    version: int
    seq: int
    fields: dict[str, Any]


class Client:
    """``token``: an API key or a session token; sent as ``Authorization: Bearer <token>``."""

    def __init__(self, nc: NATS, token: str | None = None, timeout: float = 10.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self.last_seq = 0
        self.token = token

    @classmethod
    async def connect(
        cls, url: str = "nats://127.0.0.1:4222", token: str | None = None, timeout: float = 10.0
    ) -> Client:
        return cls(await nats.connect(url), token, timeout)

    def with_token(self, token: str | None) -> Client:
        """Another client on the same connection, acting with other credentials."""
        return Client(self.nc, token, self.timeout)

    async def close(self) -> None:
        await self.nc.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Transport ---------------------------------------------------------------------------
    async def request(
        self, subject: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> envelope.Reply:
        payload = msgspec.json.encode({k: v for k, v in body.items() if v is not None})
        if self.token and not (headers and tokens.HEADER in headers):
            headers = {**(headers or {}), tokens.HEADER: f"Bearer {self.token}"}
        try:
            message = await self.nc.request(subject, payload, timeout=self.timeout, headers=headers)
        except nats.errors.NoRespondersError as exc:
            raise UnavailableError(
                "no AgentMem service is answering", {"subject": subject}
            ) from exc
        except nats.errors.TimeoutError as exc:
            raise UnavailableError("AgentMem did not answer in time", {"subject": subject}) from exc
        reply = envelope.decode(message.data)
        if not reply.ok:
            error = reply.error
            if error is None:
                raise InternalError("error reply without an error body")
            raise ERRORS_BY_CODE.get(error.code, InternalError)(error.message, error.details)
        return reply

    async def _command(self, subject: str, **body: Any) -> Written:
        reply = await self.request(subject, body)
        data = dict(reply.data)
        seq = reply.seq or 0
        self.last_seq = max(self.last_seq, seq)
        return Written(event=data.pop("event"), version=data.pop("version"), seq=seq, fields=data)

    async def _query(self, subject: str, result: type[T], **body: Any) -> T:
        reply = await self.request(subject, body)
        return msgspec.convert(reply.data, result)

    # Organizations ----------------------------------------------------------------------
    async def create_org(
        self, name: str, *, org_id: str | None = None, command_id: str | None = None
    ) -> Written:
        return await self._command(
            subjects.ORG_CREATE, name=name, org_id=org_id, command_id=command_id
        )

    async def rename_org(
        self,
        org_id: str,
        name: str,
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> Written:
        return await self._command(
            subjects.ORG_RENAME,
            org_id=org_id,
            name=name,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def delete_org(
        self, org_id: str, *, expected_version: int | None = None, command_id: str | None = None
    ) -> Written:
        return await self._command(
            subjects.ORG_DELETE,
            org_id=org_id,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def get_org(self, org_id: str, *, after_seq: int | None = None) -> Org:
        return await self._query(subjects.ORG_GET, Org, org_id=org_id, after_seq=after_seq)

    async def list_orgs(
        self, *, limit: int = 50, cursor: str | None = None, after_seq: int | None = None
    ) -> Page[Org]:
        return await self._query(
            subjects.ORG_LIST, Page[Org], limit=limit, cursor=cursor, after_seq=after_seq
        )

    # Users ------------------------------------------------------------------------------
    async def register_user(
        self,
        org_id: str,
        name: str,
        email: str,
        password: str,
        *,
        roles: list[Role] | None = None,
        user_id: str | None = None,
        command_id: str | None = None,
    ) -> Written:
        return await self._command(
            subjects.USER_REGISTER,
            user_id=user_id,
            org_id=org_id,
            name=name,
            email=email,
            password=password,
            roles=roles,
            command_id=command_id,
        )

    async def update_profile(
        self,
        user_id: str,
        *,
        name: str | None = None,
        email: str | None = None,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> Written:
        return await self._command(
            subjects.USER_UPDATE_PROFILE,
            user_id=user_id,
            name=name,
            email=email,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def change_password(
        self,
        user_id: str,
        old_password: str,
        new_password: str,
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> Written:
        return await self._command(
            subjects.USER_CHANGE_PASSWORD,
            user_id=user_id,
            old_password=old_password,
            new_password=new_password,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def set_roles(
        self,
        user_id: str,
        roles: list[Role],
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> Written:
        return await self._command(
            subjects.USER_SET_ROLES,
            user_id=user_id,
            roles=roles,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def delete_user(
        self, user_id: str, *, expected_version: int | None = None, command_id: str | None = None
    ) -> Written:
        return await self._command(
            subjects.USER_DELETE,
            user_id=user_id,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def get_user(self, user_id: str, *, after_seq: int | None = None) -> User:
        return await self._query(subjects.USER_GET, User, user_id=user_id, after_seq=after_seq)

    async def get_user_by_email(self, email: str, *, after_seq: int | None = None) -> User:
        return await self._query(subjects.USER_GET_BY_EMAIL, User, email=email, after_seq=after_seq)

    async def email_exists(self, email: str, *, after_seq: int | None = None) -> bool:
        reply = await self.request(
            subjects.USER_EMAIL_EXISTS, {"email": email, "after_seq": after_seq}
        )
        return bool(reply.data["exists"])

    async def list_users(
        self,
        org_id: str | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        after_seq: int | None = None,
    ) -> Page[User]:
        return await self._query(
            subjects.USER_LIST,
            Page[User],
            org_id=org_id,
            limit=limit,
            cursor=cursor,
            after_seq=after_seq,
        )

    # Credentials and history -------------------------------------------------------------
    async def login(self, email: str, password: str, *, ttl_seconds: int | None = None) -> Written:
        """Start a session; ``written.fields["token"]`` is the session token (shown once).
        The client keeps using its own token: ``client.with_token(...)`` acts as the user."""
        return await self._command(
            subjects.AUTH_LOGIN, email=email, password=password, ttl_seconds=ttl_seconds
        )

    async def logout(self) -> Written:
        return await self._command(subjects.AUTH_LOGOUT)

    async def create_api_key(
        self, name: str, *, user_id: str | None = None, command_id: str | None = None
    ) -> Written:
        """``written.fields["token"]`` is the key (shown once; only its digest is stored)."""
        return await self._command(
            subjects.APIKEY_CREATE, name=name, user_id=user_id, command_id=command_id
        )

    async def revoke_api_key(self, key_id: str, *, user_id: str | None = None) -> Written:
        return await self._command(subjects.APIKEY_REVOKE, key_id=key_id, user_id=user_id)

    async def list_api_keys(
        self, *, user_id: str | None = None, after_seq: int | None = None
    ) -> list[dict[str, Any]]:
        reply = await self.request(
            subjects.APIKEY_LIST, {"user_id": user_id, "after_seq": after_seq}
        )
        return list(reply.data["items"])

    async def history(
        self, aggregate: str, aggregate_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> Page[dict[str, Any]]:
        return await self._query(
            subjects.HISTORY_GET,
            Page[dict[str, Any]],
            aggregate=aggregate,
            id=aggregate_id,
            limit=limit,
            cursor=cursor,
        )

    # System -----------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        return dict((await self.request(subjects.SYS_STATUS, {})).data)

    async def health(self) -> dict[str, Any]:
        return dict((await self.request(subjects.SYS_HEALTH, {})).data)
