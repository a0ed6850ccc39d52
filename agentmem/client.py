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
from agentmem.events import MessageRole, Role

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


class Agent(msgspec.Struct, frozen=True):
    agent_id: str
    org_id: str
    name: str
    version: int
    description: str = ""
    persona: str = ""
    model: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    tags: list[str] = []
    archived: bool = False
    created_at: int = 0
    updated_at: int = 0


class AgentState(msgspec.Struct, frozen=True):
    agent_id: str
    state: dict[str, Any]
    version: int  # 0 until the first write; pass it as expected_version


class Message(msgspec.Struct, frozen=True):
    message_id: str
    session_id: str
    agent_id: str
    role: MessageRole
    content: str
    position: int  # the message's place in its conversation
    user_id: str | None = None
    tool_calls: list[dict[str, Any]] = []
    tool_call_id: str | None = None
    metadata: dict[str, Any] = {}
    created_at: int = 0
    redacted: bool = False
    rank: float | None = None  # search results only: higher is a better match


class Tool(msgspec.Struct, frozen=True):
    tool_id: str
    org_id: str
    name: str
    version: int
    description: str = ""
    parameters: dict[str, Any] = {}
    tags: list[str] = []
    created_at: int = 0
    updated_at: int = 0


class Page(msgspec.Struct, Generic[T], frozen=True):
    items: list[T]
    next_cursor: str | None


class _Items(msgspec.Struct, Generic[T], frozen=True):
    items: list[T]


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
        self,
        aggregate: str,
        aggregate_id: str,
        *,
        org_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[dict[str, Any]]:
        """Every commit on an org, user, agent, tool or conversation (by session id)."""
        return await self._query(
            subjects.HISTORY_GET,
            Page[dict[str, Any]],
            aggregate=aggregate,
            id=aggregate_id,
            org_id=org_id,
            limit=limit,
            cursor=cursor,
        )

    # Agents -----------------------------------------------------------------------------
    async def create_agent(
        self,
        name: str,
        *,
        description: str | None = None,
        persona: str | None = None,
        model: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        org_id: str | None = None,
        agent_id: str | None = None,
        command_id: str | None = None,
    ) -> Written:
        return await self._command(
            subjects.AGENT_CREATE,
            name=name,
            description=description,
            persona=persona,
            model=model,
            metadata=metadata,
            tags=tags,
            org_id=org_id,
            agent_id=agent_id,
            command_id=command_id,
        )

    async def update_agent(
        self,
        agent_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        persona: str | None = None,
        model: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> Written:
        return await self._command(
            subjects.AGENT_UPDATE,
            agent_id=agent_id,
            name=name,
            description=description,
            persona=persona,
            model=model,
            metadata=metadata,
            tags=tags,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def archive_agent(
        self, agent_id: str, *, expected_version: int | None = None, command_id: str | None = None
    ) -> Written:
        return await self._command(
            subjects.AGENT_ARCHIVE,
            agent_id=agent_id,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def unarchive_agent(
        self, agent_id: str, *, expected_version: int | None = None, command_id: str | None = None
    ) -> Written:
        return await self._command(
            subjects.AGENT_UNARCHIVE,
            agent_id=agent_id,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def delete_agent(
        self, agent_id: str, *, expected_version: int | None = None, command_id: str | None = None
    ) -> Written:
        return await self._command(
            subjects.AGENT_DELETE,
            agent_id=agent_id,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def set_agent_state(
        self,
        agent_id: str,
        state: dict[str, Any],
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> Written:
        """Replace the state document; ``expected_version`` is the state's own version."""
        return await self._command(
            subjects.AGENT_SET_STATE,
            agent_id=agent_id,
            state=state,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def patch_agent_state(
        self,
        agent_id: str,
        patch: dict[str, Any],
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> Written:
        """Apply a JSON merge patch (RFC 7396: ``None`` removes a key)."""
        return await self._command(
            subjects.AGENT_PATCH_STATE,
            agent_id=agent_id,
            patch=patch,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def get_agent(self, agent_id: str, *, after_seq: int | None = None) -> Agent:
        return await self._query(subjects.AGENT_GET, Agent, agent_id=agent_id, after_seq=after_seq)

    async def list_agents(
        self,
        *,
        tag: str | None = None,
        name_prefix: str | None = None,
        include_archived: bool | None = None,
        org_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        after_seq: int | None = None,
    ) -> Page[Agent]:
        return await self._query(
            subjects.AGENT_LIST,
            Page[Agent],
            tag=tag,
            name_prefix=name_prefix,
            include_archived=include_archived,
            org_id=org_id,
            limit=limit,
            cursor=cursor,
            after_seq=after_seq,
        )

    async def get_agent_state(self, agent_id: str, *, after_seq: int | None = None) -> AgentState:
        return await self._query(
            subjects.AGENT_GET_STATE, AgentState, agent_id=agent_id, after_seq=after_seq
        )

    # Conversations ----------------------------------------------------------------------
    async def append_message(
        self,
        session_id: str,
        agent_id: str,
        role: MessageRole,
        content: str,
        *,
        user_id: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_call_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        org_id: str | None = None,
        command_id: str | None = None,
    ) -> Written:
        message: dict[str, Any] = {"role": role, "content": content, "tool_calls": tool_calls}
        message.update(tool_call_id=tool_call_id, metadata=metadata)
        return await self._command(
            subjects.MESSAGE_APPEND,
            session_id=session_id,
            agent_id=agent_id,
            user_id=user_id,
            message={k: v for k, v in message.items() if v is not None},
            org_id=org_id,
            command_id=command_id,
        )

    async def append_messages(
        self,
        session_id: str,
        agent_id: str,
        messages: list[dict[str, Any]],
        *,
        user_id: str | None = None,
        org_id: str | None = None,
        command_id: str | None = None,
    ) -> Written:
        """Up to 1000 messages (each ``{"role", "content", ...}``), stored together or not."""
        return await self._command(
            subjects.MESSAGE_APPEND_BATCH,
            session_id=session_id,
            agent_id=agent_id,
            user_id=user_id,
            messages=messages,
            org_id=org_id,
            command_id=command_id,
        )

    async def redact_message(
        self,
        session_id: str,
        message_id: str,
        *,
        reason: str | None = None,
        org_id: str | None = None,
        command_id: str | None = None,
    ) -> Written:
        return await self._command(
            subjects.MESSAGE_REDACT,
            session_id=session_id,
            message_id=message_id,
            reason=reason,
            org_id=org_id,
            command_id=command_id,
        )

    async def delete_conversation(
        self, session_id: str, *, org_id: str | None = None, command_id: str | None = None
    ) -> Written:
        return await self._command(
            subjects.CONVERSATION_DELETE,
            session_id=session_id,
            org_id=org_id,
            command_id=command_id,
        )

    async def list_messages(
        self,
        session_id: str,
        *,
        order: str = "asc",
        since: int | None = None,
        until: int | None = None,
        role: MessageRole | None = None,
        org_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        after_seq: int | None = None,
    ) -> Page[Message]:
        return await self._query(
            subjects.MESSAGE_LIST,
            Page[Message],
            session_id=session_id,
            order=order,
            since=since,
            until=until,
            role=role,
            org_id=org_id,
            limit=limit,
            cursor=cursor,
            after_seq=after_seq,
        )

    async def last_messages(
        self,
        session_id: str,
        n: int = 50,
        *,
        org_id: str | None = None,
        after_seq: int | None = None,
    ) -> list[Message]:
        """The last ``n`` messages of a session, oldest first."""
        page = await self._query(
            subjects.MESSAGE_LAST,
            _Items[Message],
            session_id=session_id,
            n=n,
            org_id=org_id,
            after_seq=after_seq,
        )
        return page.items

    async def search_messages(
        self,
        text: str,
        *,
        agent_id: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        role: MessageRole | None = None,
        org_id: str | None = None,
        limit: int = 20,
        after_seq: int | None = None,
    ) -> list[Message]:
        """Best match first, over one agent's or one user's messages."""
        page = await self._query(
            subjects.MESSAGE_SEARCH,
            _Items[Message],
            text=text,
            agent_id=agent_id,
            user_id=user_id,
            session_id=session_id,
            role=role,
            org_id=org_id,
            limit=limit,
            after_seq=after_seq,
        )
        return page.items

    # Tools ------------------------------------------------------------------------------
    async def register_tool(
        self,
        name: str,
        *,
        description: str | None = None,
        parameters: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        org_id: str | None = None,
        tool_id: str | None = None,
        command_id: str | None = None,
    ) -> Written:
        return await self._command(
            subjects.TOOL_REGISTER,
            name=name,
            description=description,
            parameters=parameters,
            tags=tags,
            org_id=org_id,
            tool_id=tool_id,
            command_id=command_id,
        )

    async def update_tool(
        self,
        tool_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> Written:
        return await self._command(
            subjects.TOOL_UPDATE,
            tool_id=tool_id,
            name=name,
            description=description,
            parameters=parameters,
            tags=tags,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def delete_tool(
        self, tool_id: str, *, expected_version: int | None = None, command_id: str | None = None
    ) -> Written:
        return await self._command(
            subjects.TOOL_DELETE,
            tool_id=tool_id,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def get_tool(
        self,
        *,
        tool_id: str | None = None,
        name: str | None = None,
        org_id: str | None = None,
        after_seq: int | None = None,
    ) -> Tool:
        """By id, or by name within the organization."""
        return await self._query(
            subjects.TOOL_GET, Tool, tool_id=tool_id, name=name, org_id=org_id, after_seq=after_seq
        )

    async def list_tools(
        self,
        *,
        tags_any: list[str] | None = None,
        tags_all: list[str] | None = None,
        org_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        after_seq: int | None = None,
    ) -> Page[Tool]:
        return await self._query(
            subjects.TOOL_LIST,
            Page[Tool],
            tags_any=tags_any,
            tags_all=tags_all,
            org_id=org_id,
            limit=limit,
            cursor=cursor,
            after_seq=after_seq,
        )

    # System -----------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        return dict((await self.request(subjects.SYS_STATUS, {})).data)

    async def health(self) -> dict[str, Any]:
        return dict((await self.request(subjects.SYS_HEALTH, {})).data)
