"""A small typed async client: one method per command and query.

Every reply is the envelope of docs/protocol.md; an error reply is raised as the matching
``AgentMemError`` subclass. The client remembers the highest log sequence its commands
produced (``last_seq``), and every query reads its writes: it sends ``after_seq=last_seq``
unless the caller passes ``after_seq`` (``after_seq=0`` asks for no wait at all).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from agentmem import envelope, natsauth, subjects
from agentmem.auth import tokens
from agentmem.commands import (
    AppendMessage,
    AppendMessages,
    ArchiveAgent,
    ChangePassword,
    CreateAgent,
    CreateApiKey,
    CreateOrg,
    DeleteAgent,
    DeleteConversation,
    DeleteOrg,
    DeleteTool,
    DeleteUser,
    Login,
    Logout,
    PatchAgentState,
    RedactMessage,
    RegisterTool,
    RegisterUser,
    RenameOrg,
    RevokeApiKey,
    SetAgentState,
    SetRoles,
    UnarchiveAgent,
    UpdateAgent,
    UpdateProfile,
    UpdateTool,
)
from agentmem.domain.associations import (
    AssociateMemories,
    DissociateMemories,
    MemoryAssociations,
)
from agentmem.domain.blocks import (
    AppendToBlock,
    AttachBlock,
    BlockHistory,
    CreateBlock,
    DeleteBlock,
    DetachBlock,
    GetBlock,
    ListBlocks,
    ReplaceInBlock,
    SetBlock,
)
from agentmem.domain.context import AssembleContext
from agentmem.domain.entities import (
    AddEntityAlias,
    CreateEntity,
    DeleteEntity,
    DeleteEntityScope,
    GetEntity,
    ListEntities,
    MergeEntity,
    RemoveEntityAlias,
    RenameEntity,
    ResolveEntity,
    SetEntityAttributes,
    UnmergeEntity,
)
from agentmem.domain.extraction import ExtractGraph
from agentmem.domain.forget import (
    ForgetAgent,
    ForgetConversation,
    ForgetMemory,
    ForgetMemoryScope,
    ForgetUser,
)
from agentmem.domain.ingest import IngestStatus
from agentmem.domain.memories import (
    AddMemories,
    AddMemory,
    ArchiveMemory,
    DeleteMemory,
    DeleteMemoryScope,
    GetMemory,
    ListMemories,
    MemoryHistory,
    MemoryStats,
    RestoreMemory,
    SearchMemories,
    SupersedeMemory,
    UpdateMemory,
)
from agentmem.domain.predicates import DeclarePredicate, ListPredicates
from agentmem.domain.relations import (
    AssertRelation,
    FindGraphPath,
    GraphFacts,
    GraphNeighbors,
    GraphStatsQuery,
    InvalidateRelation,
    RetractRelation,
)
from agentmem.domain.working import (
    ClearWorkingMemory,
    GetWorkingMemory,
    PutWorkingItem,
    RemoveWorkingItem,
)
from agentmem.errors import ERRORS_BY_CODE, InternalError, InvalidError, UnavailableError
from agentmem.events import MemoryType, MessageRole, Role
from agentmem.headers import header
from agentmem.protocol import Operation, Request, operation_of, operations
from agentmem.queries import (
    EmailExists,
    GetAgent,
    GetAgentState,
    GetHistory,
    GetOrg,
    GetTool,
    GetUser,
    GetUserByEmail,
    Health,
    LastMessages,
    ListAgents,
    ListApiKeys,
    ListMessages,
    ListOrgs,
    ListTools,
    ListUsers,
    SearchMessages,
    Status,
)
from agentmem.replies import (
    Agent,
    AgentState,
    AssembledContext,
    Association,
    Block,
    Entity,
    EntityResolution,
    Extracted,
    Facts,
    GraphPath,
    GraphStats,
    HistoryEntry,
    Items,
    MemoriesAdded,
    Memory,
    MemoryCounts,
    MemorySearchResult,
    Message,
    MessageSearchResult,
    Neighbors,
    Org,
    Page,
    PredicateRule,
    ScopeDeleted,
    ScoredMemory,
    ScoredMessage,
    Tool,
    User,
    WorkingItem,
)

T = TypeVar("T")
# Pauses before sending again a request that found no responder (about 1 s in all).
NO_RESPONDER_PAUSES_S = (0.02, 0.05, 0.1, 0.25, 0.5)

_log = logging.getLogger(__name__)


async def deliver(
    nc: NATS, subject: str, payload: bytes, timeout: float, headers: dict[str, str] | None = None
) -> Msg:
    """One request. "No responders" means no service process received it, so sending it
    again is always safe: it is, a few times within about a second, which covers a service
    that is restarting (and a subscription nats-server has not spread to every connection
    yet, seen a few milliseconds after a start)."""
    for pause in NO_RESPONDER_PAUSES_S:
        try:
            return await nc.request(subject, payload, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            await asyncio.sleep(pause)
    return await nc.request(subject, payload, timeout=timeout, headers=headers)


CONNECT_WITHIN_S = 5.0  # Client.connect gives up after this long: no service is there
_CONNECT_TIMEOUT_S = 2.0  # one attempt's TCP and handshake
_RETRY_AFTER_S = 0.5  # between the first attempt and the second
_RECONNECT_WAIT_S = 2.0  # between attempts to get back to a server that went away


_reads: frozenset[str] | None = None


def _reads_your_writes(subject: str) -> bool:
    """Whether ``subject`` is a query that takes ``after_seq`` (not health or status)."""
    global _reads
    if _reads is None:
        _reads = frozenset(
            op.subject
            for op in operations()
            if op.kind == "query" and "after_seq" in op.request.__struct_fields__
        )
    return subject in _reads


def _shown(url: str) -> str:
    """``url`` without a password in it, to put in an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def _quiet_error(exc: Exception) -> None:
    """nats-py's default logs a traceback for every failed attempt; one line is enough."""
    _log.warning("nats: %s", exc or exc.__class__.__name__)


class _Notices:
    """A lost and a regained server, one log line each. nats-py also calls its
    disconnected callback when the client closes its own connection: that one is not
    lost, and a script's last line on stderr would otherwise say it is reconnecting."""

    def __init__(self) -> None:
        self.nc: NATS | None = None  # set once connected

    async def disconnected(self) -> None:
        if self.nc is not None and self.nc.is_closed:
            return
        _log.warning("disconnected from AgentMem's NATS server; reconnecting")

    async def reconnected(self) -> None:
        _log.info("reconnected to AgentMem's NATS server")


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
        cls,
        url: str | list[str] = "nats://127.0.0.1:4222",
        token: str | None = None,
        timeout: float = 10.0,
        *,
        max_reconnect_attempts: int = -1,
        **nats_options: Any,
    ) -> Client:
        """Connect to the NATS server an AgentMem service listens on.

        With nothing there, this fails within ``CONNECT_WITHIN_S`` (5 s) with one
        ``UnavailableError`` that names the URL. Once connected, a server that goes away is
        reconnected to quietly (one log line per attempt, no traceback), forever by default
        (``max_reconnect_attempts``, -1). ``nats_options`` go to ``nats.connect`` (user
        credentials, TLS, ...).

        ``token`` also authenticates the NATS connection (docs/security.md, The NATS
        layer): it is sent as the NATS token, with the inbox prefix the service lets that
        credential receive on; without a token, the connection is anonymous and may only
        log in and ask health and schema. A URL with a user in it, or options that
        authenticate otherwise, are used as given."""
        servers = [u.strip() for u in url.split(",")] if isinstance(url, str) else list(url)
        authenticated = "@" in urlsplit(servers[0]).netloc or any(
            name in nats_options for name in ("user", "token", "user_credentials", "nkeys_seed")
        )
        notices = _Notices()
        options: dict[str, Any] = {
            **({} if authenticated else natsauth.connection_options(token)),
            "connect_timeout": _CONNECT_TIMEOUT_S,
            "error_cb": _quiet_error,
            "disconnected_cb": notices.disconnected,
            "reconnected_cb": notices.reconnected,
            **nats_options,
            # The first connect: two attempts, then give up (nats-py's own default is 60
            # attempts 2 s apart, each failure logged with a traceback).
            "allow_reconnect": True,
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": _RETRY_AFTER_S,
        }
        try:
            nc = await asyncio.wait_for(nats.connect(servers, **options), CONNECT_WITHIN_S)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            shown = ",".join(_shown(u) for u in servers)
            reason = str(exc) or exc.__class__.__name__
            raise UnavailableError(
                f"cannot connect to {shown} ({reason}): is the AgentMem service running "
                "(`agentmem serve`), and is that the address it listens on (--listen)?",
                {"url": shown},
            ) from None
        notices.nc = nc
        # From now on, a lost server is reconnected to, quietly (nats-py reads these live).
        nc.options["max_reconnect_attempts"] = max_reconnect_attempts
        nc.options["reconnect_time_wait"] = nats_options.get(
            "reconnect_time_wait", _RECONNECT_WAIT_S
        )
        return cls(nc, token, timeout)

    def with_token(self, token: str | None) -> Client:
        """Another client on the same connection, acting with other credentials; it reads
        from this one's ``last_seq`` on."""
        other = Client(self.nc, token, self.timeout)
        other.last_seq = self.last_seq
        return other

    async def close(self) -> None:
        await self.nc.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Transport ---------------------------------------------------------------------------
    async def request(
        self,
        subject: str,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        data: Any = Any,
    ) -> envelope.Reply:
        """One request; its reply's ``data`` decoded as ``data`` (a type msgspec can
        describe; by default JSON's own types), or its error raised."""
        if self.last_seq and body.get("after_seq") is None and _reads_your_writes(subject):
            # Read-your-writes by default: the answer includes this client's last command.
            body = {**body, "after_seq": self.last_seq}
        payload = msgspec.json.encode({k: v for k, v in body.items() if v is not None})
        if self.token and header(headers, tokens.HEADER) is None:
            headers = {**(headers or {}), tokens.HEADER: f"Bearer {self.token}"}
        try:
            message = await deliver(self.nc, subject, payload, self.timeout, headers)
        except nats.errors.NoRespondersError as exc:
            raise UnavailableError(
                "no AgentMem service is answering", {"subject": subject}
            ) from exc
        except nats.errors.TimeoutError as exc:
            raise UnavailableError("AgentMem did not answer in time", {"subject": subject}) from exc
        reply = envelope.decode(message.data, data)
        if not reply.ok:
            error = reply.error
            if error is None:
                raise InternalError("error reply without an error body")
            raise ERRORS_BY_CODE.get(error.code, InternalError)(error.message, error.details)
        return reply

    async def send(self, request: Request) -> Any:
        """Any operation, from its request Struct alone: ``client.send(CreateAgent(name=
        "Helper"))``. A command answers ``Written``; a query or system request the reply
        type its operation declares (``agentmem.protocol``). The methods below are this,
        one operation each."""
        body = msgspec.to_builtins(request)
        return await self._send(operation_of(type(request)), body)

    async def _send(self, operation: Operation, body: dict[str, Any], result: Any = None) -> Any:
        """A query's reply decoded once, straight into ``result`` (by default the type its
        operation declares), not into dicts converted again: half the client's time on a
        page of 50 memories. A command's as ``Written``."""
        if operation.kind != "command":
            reply = await self.request(operation.subject, body, data=result or operation.reply)
            return reply.data
        reply = await self.request(operation.subject, body)
        data = dict(reply.data)
        seq = reply.seq or 0
        self.last_seq = max(self.last_seq, seq)
        return Written(event=data.pop("event"), version=data.pop("version"), seq=seq, fields=data)

    async def _command(self, request_type: type[Request], **body: Any) -> Written:
        written: Written = await self._send(operation_of(request_type), body)
        return written

    async def _query(self, request_type: type[Request], result: type[T], **body: Any) -> T:
        """``result``: the type this method returns, the declared reply or one it unwraps."""
        decoded: T = await self._send(operation_of(request_type), body, result)
        return decoded

    # Organizations ----------------------------------------------------------------------
    async def create_org(
        self, name: str, *, org_id: str | None = None, command_id: str | None = None
    ) -> Written:
        return await self._command(CreateOrg, name=name, org_id=org_id, command_id=command_id)

    async def rename_org(
        self,
        org_id: str,
        name: str,
        *,
        expected_version: int | None = None,
        command_id: str | None = None,
    ) -> Written:
        return await self._command(
            RenameOrg,
            org_id=org_id,
            name=name,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def delete_org(
        self, org_id: str, *, expected_version: int | None = None, command_id: str | None = None
    ) -> Written:
        return await self._command(
            DeleteOrg,
            org_id=org_id,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def get_org(self, org_id: str, *, after_seq: int | None = None) -> Org:
        return await self._query(GetOrg, Org, org_id=org_id, after_seq=after_seq)

    async def list_orgs(
        self, *, limit: int = 50, cursor: str | None = None, after_seq: int | None = None
    ) -> Page[Org]:
        return await self._query(
            ListOrgs, Page[Org], limit=limit, cursor=cursor, after_seq=after_seq
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
            RegisterUser,
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
            UpdateProfile,
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
            ChangePassword,
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
            SetRoles,
            user_id=user_id,
            roles=roles,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def delete_user(
        self, user_id: str, *, expected_version: int | None = None, command_id: str | None = None
    ) -> Written:
        return await self._command(
            DeleteUser,
            user_id=user_id,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def get_user(self, user_id: str, *, after_seq: int | None = None) -> User:
        return await self._query(GetUser, User, user_id=user_id, after_seq=after_seq)

    async def get_user_by_email(self, email: str, *, after_seq: int | None = None) -> User:
        return await self._query(GetUserByEmail, User, email=email, after_seq=after_seq)

    async def email_exists(self, email: str, *, after_seq: int | None = None) -> bool:
        reply = await self.request(EmailExists.op.subject, {"email": email, "after_seq": after_seq})
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
            ListUsers,
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
        return await self._command(Login, email=email, password=password, ttl_seconds=ttl_seconds)

    async def logout(self) -> Written:
        return await self._command(Logout)

    async def create_api_key(
        self, name: str, *, user_id: str | None = None, command_id: str | None = None
    ) -> Written:
        """``written.fields["token"]`` is the key (shown once; only its digest is stored)."""
        return await self._command(CreateApiKey, name=name, user_id=user_id, command_id=command_id)

    async def revoke_api_key(self, key_id: str, *, user_id: str | None = None) -> Written:
        return await self._command(RevokeApiKey, key_id=key_id, user_id=user_id)

    async def list_api_keys(
        self, *, user_id: str | None = None, after_seq: int | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Every key of the user, revoked ones too, page after page (``limit`` a page)."""
        keys: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            body = {"user_id": user_id, "after_seq": after_seq, "limit": limit, "cursor": cursor}
            reply = await self.request(ListApiKeys.op.subject, body)
            keys += reply.data["items"]
            cursor = reply.data["next_cursor"]
            if cursor is None:
                return keys

    async def history(
        self,
        aggregate: str,
        aggregate_id: str,
        *,
        org_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[dict[str, Any]]:
        """Every commit on an org, user, agent, tool or conversation (by session id), each
        entry as a dict (its events are those of docs/events.md)."""
        body = {"aggregate": aggregate, "id": aggregate_id, "org_id": org_id}
        reply = await self.request(
            GetHistory.op.subject,
            {**body, "limit": limit, "cursor": cursor},
            data=Page[dict[str, Any]],
        )
        page: Page[dict[str, Any]] = reply.data
        return page

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
            CreateAgent,
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
            UpdateAgent,
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
            ArchiveAgent,
            agent_id=agent_id,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def unarchive_agent(
        self, agent_id: str, *, expected_version: int | None = None, command_id: str | None = None
    ) -> Written:
        return await self._command(
            UnarchiveAgent,
            agent_id=agent_id,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def delete_agent(
        self, agent_id: str, *, expected_version: int | None = None, command_id: str | None = None
    ) -> Written:
        return await self._command(
            DeleteAgent,
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
            SetAgentState,
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
            PatchAgentState,
            agent_id=agent_id,
            patch=patch,
            expected_version=expected_version,
            command_id=command_id,
        )

    async def get_agent(self, agent_id: str, *, after_seq: int | None = None) -> Agent:
        return await self._query(GetAgent, Agent, agent_id=agent_id, after_seq=after_seq)

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
            ListAgents,
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
        return await self._query(GetAgentState, AgentState, agent_id=agent_id, after_seq=after_seq)

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
            AppendMessage,
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
            AppendMessages,
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
            RedactMessage,
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
            DeleteConversation,
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
            ListMessages,
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
            LastMessages,
            Items[Message],
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
        mode: str = "text",
        min_score: float | None = None,
    ) -> list[ScoredMessage]:
        """Best match first, over one agent's or one user's messages, by their words
        (``mode="text"``, the default), their meaning (``vector``) or both (``hybrid``);
        ``search_messages_result`` has the whole reply."""
        result = await self.search_messages_result(
            text,
            agent_id=agent_id,
            user_id=user_id,
            session_id=session_id,
            role=role,
            org_id=org_id,
            limit=limit,
            after_seq=after_seq,
            mode=mode,
            min_score=min_score,
        )
        return result.items

    async def search_messages_result(self, text: str, **filters: Any) -> MessageSearchResult:
        """The whole reply of ``message.search``: the items, the mode, whether anything
        matched with confidence, and the model of the vector side."""
        return await self._query(SearchMessages, MessageSearchResult, text=text, **filters)

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
            RegisterTool,
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
            UpdateTool,
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
            DeleteTool,
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
            GetTool, Tool, tool_id=tool_id, name=name, org_id=org_id, after_seq=after_seq
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
            ListTools,
            Page[Tool],
            tags_any=tags_any,
            tags_all=tags_all,
            org_id=org_id,
            limit=limit,
            cursor=cursor,
            after_seq=after_seq,
        )

    # Ingestion (docs/protocol.md, Ingestion) ------------------------------------------------
    async def publish(
        self,
        request: Request,
        *,
        message_id: str | None = None,
        org_id: str | None = None,
        outcome_to: str | None = None,
    ) -> int:
        """Publish a command to be executed later, instead of sending it as a request:
        ``client.publish(AppendMessage(session_id=..., agent_id=..., message=...),
        message_id="m-1")``. JetStream acknowledges that it is kept (the ingestion stream's
        sequence is returned); a service executes it once, in order per conversation, even
        if it is down now. ``message_id`` (``Nats-Msg-Id``) is its command id unless the
        request names one: ``ingest_status(message_id)`` then says what became of it.
        ``org_id``: the organization's subject it is published on (default: the request's
        ``org_id``, else the credential's organization). ``outcome_to``: where the outcome
        is published as well, under this user's tree (``outcome_subject(name)``)."""
        operation = operation_of(type(request))
        body = msgspec.to_builtins(request)
        org = org_id or body.get("org_id") or self._token_org()
        subject = f"agentmem.in.{org}.{operation.name}"
        headers: dict[str, str] = {}
        if self.token:
            headers[tokens.HEADER] = f"Bearer {self.token}"
        if message_id:
            headers["Nats-Msg-Id"] = message_id
        if outcome_to:
            headers["AgentMem-Outcome-To"] = outcome_to
        try:
            ack = await self.nc.request(
                subject, msgspec.json.encode(body), timeout=self.timeout, headers=headers
            )
        except nats.errors.NoRespondersError as exc:
            raise InvalidError(
                f"nothing keeps {subject}: no ingestion stream (the service has never "
                "started on this NATS server), or not an operation that can be published",
                {"subject": subject},
            ) from exc
        answer = msgspec.json.decode(ack.data)
        if "error" in answer:
            raise UnavailableError(
                f"not kept: {answer['error'].get('description')}", {"subject": subject}
            )
        return int(answer["seq"])

    def outcome_subject(self, name: str) -> str:
        """A subject for ``publish(..., outcome_to=...)``: ``name`` under this credential's
        user's outcome tree, the only place the service publishes an outcome to (and, on a
        closed deployment, the only one this connection may subscribe to)."""
        parsed = tokens.parse(f"Bearer {self.token}") if self.token else None
        if parsed is None:
            raise InvalidError("an outcome subject needs a credential")
        return f"{subjects.outcome_tree(parsed.org_id, parsed.user_id)}.{name}"

    def _token_org(self) -> str:
        parsed = tokens.parse(f"Bearer {self.token}") if self.token else None
        if parsed is None:
            raise InvalidError("publishing needs a credential, or an org_id")
        return parsed.org_id

    async def ingest_status(
        self, command_id: str, *, user_id: str | None = None, org_id: str | None = None
    ) -> dict[str, Any]:
        """What became of a published command: ``status`` pending, stored (``seq``),
        refused (``error``), parked or dropped."""
        body = {"command_id": command_id, "user_id": user_id, "org_id": org_id}
        return dict((await self.request(IngestStatus.op.subject, body)).data)

    # System -----------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        return dict((await self.request(Status.op.subject, {})).data)

    async def health(self) -> dict[str, Any]:
        return dict((await self.request(Health.op.subject, {})).data)

    # Memories ---------------------------------------------------------------------------
    async def remember(
        self,
        content: str,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        memory_type: MemoryType = "semantic",
        **fields: Any,
    ) -> str:
        """Remember one fact for a user, an agent or a session (mem0's ``add``): the
        memory's id, which is the existing one's when the scope already holds this
        content. ``fields``: any other field of ``memory.add`` (``metadata``, ``tags``,
        ``importance``, ``valid_from``...)."""
        written = await self.add_memory(
            content,
            user_id=user_id,
            agent_id=agent_id,
            session_id=session_id,
            memory_type=memory_type,
            **fields,
        )
        return str(written.fields["memory_id"])

    async def recall(
        self,
        query: str,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        limit: int = 10,
        **filters: Any,
    ) -> list[ScoredMemory]:
        """The live memories of a scope that best match ``query`` (mem0's ``search``), read
        after this client's own writes."""
        return await self.search_memories(
            query,
            user_id=user_id,
            agent_id=agent_id,
            session_id=session_id,
            limit=limit,
            after_seq=filters.pop("after_seq", self.last_seq or None),
            **filters,
        )

    async def add_memory(self, content: str, **fields: Any) -> Written:
        """``memory.add``; ``fields.deduplicated`` says whether it was already there."""
        return await self._command(AddMemory, content=content, **fields)

    async def add_memories(
        self, memories: list[dict[str, Any]], *, org_id: str | None = None, **fields: Any
    ) -> MemoriesAdded:
        """``memory.add_batch``: all or none, up to 1,000."""
        body = {"memories": memories, "org_id": org_id, **fields}
        reply = await self.request(AddMemories.op.subject, body, data=MemoriesAdded)
        self.last_seq = max(self.last_seq, reply.seq or 0)
        added: MemoriesAdded = reply.data
        return added

    async def update_memory(self, memory_id: str, **fields: Any) -> Written:
        return await self._command(UpdateMemory, memory_id=memory_id, **fields)

    async def supersede_memory(self, memory_id: str, content: str, **fields: Any) -> Written:
        return await self._command(SupersedeMemory, memory_id=memory_id, content=content, **fields)

    async def archive_memory(self, memory_id: str, **fields: Any) -> Written:
        return await self._command(ArchiveMemory, memory_id=memory_id, **fields)

    async def restore_memory(self, memory_id: str, **fields: Any) -> Written:
        return await self._command(RestoreMemory, memory_id=memory_id, **fields)

    async def delete_memory(self, memory_id: str, **fields: Any) -> Written:
        return await self._command(DeleteMemory, memory_id=memory_id, **fields)

    async def delete_memory_scope(
        self,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        **fields: Any,
    ) -> ScopeDeleted:
        body = {"user_id": user_id, "agent_id": agent_id, "session_id": session_id, **fields}
        reply = await self.request(DeleteMemoryScope.op.subject, body, data=ScopeDeleted)
        self.last_seq = max(self.last_seq, reply.seq or 0)
        deleted: ScopeDeleted = reply.data
        return deleted

    async def get_memory(self, memory_id: str, *, after_seq: int | None = None) -> Memory:
        return await self._query(GetMemory, Memory, memory_id=memory_id, after_seq=after_seq)

    async def list_memories(self, **filters: Any) -> Page[Memory]:
        """``memory.list``: any of its filters as keywords (``user_id``, ``memory_type``,
        ``states``, ``tags_any``, ``valid_from_after``, ``as_of``, ``known_at``,
        ``metadata_filter``, ``order_by="importance"``, ``cursor``...)."""
        return await self._query(ListMemories, Page[Memory], **filters)

    async def search_memories(self, text: str, **filters: Any) -> list[ScoredMemory]:
        """The results of ``memory.search`` (``mode``: text, vector or hybrid, the default; any
        filter of ``memory.list`` as a keyword); ``search_memories_result`` has the whole reply
        (whether anything matched with confidence, and the model)."""
        return (await self.search_memories_result(text, **filters)).items

    async def search_memories_result(self, text: str, **filters: Any) -> MemorySearchResult:
        return await self._query(SearchMemories, MemorySearchResult, text=text, **filters)

    async def memory_stats(self, **scope: Any) -> MemoryCounts:
        """``memory.stats``: counts by type, state and scope; ``user_id``, ``agent_id``,
        ``session_id``, ``memory_type`` narrow it."""
        return await self._query(MemoryStats, MemoryCounts, **scope)

    async def memory_history(
        self, memory_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> Page[HistoryEntry]:
        return await self._query(
            MemoryHistory, Page[HistoryEntry], memory_id=memory_id, limit=limit, cursor=cursor
        )

    # Core memory blocks -----------------------------------------------------------------
    async def create_block(
        self,
        label: str,
        content: str = "",
        *,
        agent_id: str | None = None,
        user_id: str | None = None,
        **fields: Any,
    ) -> Written:
        """``block.create``: owned by ``agent_id`` or ``user_id``; ``fields``: ``char_limit``,
        ``description``, ``block_id``, ``org_id``..."""
        return await self._command(
            CreateBlock, label=label, content=content, agent_id=agent_id, user_id=user_id, **fields
        )

    async def set_block(self, block_id: str, content: str, **fields: Any) -> Written:
        """``block.set``: ``fields``: ``expected_version``, ``char_limit``, ``description``."""
        return await self._command(SetBlock, block_id=block_id, content=content, **fields)

    async def append_to_block(self, block_id: str, content: str, **fields: Any) -> Written:
        return await self._command(AppendToBlock, block_id=block_id, content=content, **fields)

    async def replace_in_block(
        self, block_id: str, old_text: str, new_text: str, **fields: Any
    ) -> Written:
        return await self._command(
            ReplaceInBlock, block_id=block_id, old_text=old_text, new_text=new_text, **fields
        )

    async def attach_block(self, block_id: str, agent_id: str, **fields: Any) -> Written:
        return await self._command(AttachBlock, block_id=block_id, agent_id=agent_id, **fields)

    async def detach_block(self, block_id: str, agent_id: str, **fields: Any) -> Written:
        return await self._command(DetachBlock, block_id=block_id, agent_id=agent_id, **fields)

    async def delete_block(self, block_id: str, **fields: Any) -> Written:
        return await self._command(DeleteBlock, block_id=block_id, **fields)

    async def get_block(self, block_id: str, *, after_seq: int | None = None) -> Block:
        return await self._query(GetBlock, Block, block_id=block_id, after_seq=after_seq)

    async def list_blocks(
        self, *, agent_id: str | None = None, user_id: str | None = None, **filters: Any
    ) -> Page[Block]:
        """An agent's blocks (its own and attached ones) or a user's, by label."""
        return await self._query(
            ListBlocks, Page[Block], agent_id=agent_id, user_id=user_id, **filters
        )

    async def block_history(
        self, block_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> Page[HistoryEntry]:
        return await self._query(
            BlockHistory, Page[HistoryEntry], block_id=block_id, limit=limit, cursor=cursor
        )

    # Working memory ---------------------------------------------------------------------
    async def put_working(self, session_id: str, content: str, **fields: Any) -> Written:
        """``working.put``: ``fields``: ``key``, ``priority``, ``ttl_ms``, ``metadata``."""
        return await self._command(PutWorkingItem, session_id=session_id, content=content, **fields)

    async def get_working(self, session_id: str, **filters: Any) -> list[WorkingItem]:
        """The session's live items, highest priority first (``min_priority``, ``limit``)."""
        found = await self._query(
            GetWorkingMemory, Items[WorkingItem], session_id=session_id, **filters
        )
        return found.items

    async def remove_working(self, session_id: str, key: str, **fields: Any) -> Written:
        return await self._command(RemoveWorkingItem, session_id=session_id, key=key, **fields)

    async def clear_working(self, session_id: str, **fields: Any) -> Written:
        return await self._command(ClearWorkingMemory, session_id=session_id, **fields)

    # The knowledge graph ----------------------------------------------------------------
    async def create_entity(self, entity_type: str, name: str, **fields: Any) -> Written:
        """``entity.create``; ``fields.deduplicated`` and ``fields.matched_by`` say whether
        an entity of that name (or alias) was there already."""
        return await self._command(CreateEntity, entity_type=entity_type, name=name, **fields)

    async def rename_entity(self, entity_id: str, name: str, **fields: Any) -> Written:
        return await self._command(RenameEntity, entity_id=entity_id, name=name, **fields)

    async def add_entity_alias(self, entity_id: str, alias: str, **fields: Any) -> Written:
        return await self._command(AddEntityAlias, entity_id=entity_id, alias=alias, **fields)

    async def remove_entity_alias(self, entity_id: str, alias: str, **fields: Any) -> Written:
        return await self._command(RemoveEntityAlias, entity_id=entity_id, alias=alias, **fields)

    async def set_entity_attributes(
        self, entity_id: str, attributes: dict[str, Any], **fields: Any
    ) -> Written:
        """A JSON merge patch of the attributes (``None`` removes one)."""
        return await self._command(
            SetEntityAttributes, entity_id=entity_id, attributes=attributes, **fields
        )

    async def merge_entity(self, entity_id: str, into: str, **fields: Any) -> Written:
        return await self._command(MergeEntity, entity_id=entity_id, into=into, **fields)

    async def unmerge_entity(self, entity_id: str, **fields: Any) -> Written:
        return await self._command(UnmergeEntity, entity_id=entity_id, **fields)

    async def delete_entity(self, entity_id: str, **fields: Any) -> Written:
        return await self._command(DeleteEntity, entity_id=entity_id, **fields)

    async def delete_entity_scope(
        self, *, user_id: str | None = None, agent_id: str | None = None, **fields: Any
    ) -> ScopeDeleted:
        body = {"user_id": user_id, "agent_id": agent_id, **fields}
        reply = await self.request(DeleteEntityScope.op.subject, body, data=ScopeDeleted)
        self.last_seq = max(self.last_seq, reply.seq or 0)
        deleted: ScopeDeleted = reply.data
        return deleted

    async def get_entity(self, entity_id: str, *, after_seq: int | None = None) -> Entity:
        return await self._query(GetEntity, Entity, entity_id=entity_id, after_seq=after_seq)

    async def get_entity_at(self, entity_id: str, **at: Any) -> Entity:
        """``entity.get`` by system time: ``known_at`` (ms) or ``known_at_seq``."""
        return await self._query(GetEntity, Entity, entity_id=entity_id, **at)

    async def list_entities(self, **filters: Any) -> Page[Entity]:
        return await self._query(ListEntities, Page[Entity], **filters)

    async def resolve_entity(self, name: str, **filters: Any) -> EntityResolution:
        return await self._query(ResolveEntity, EntityResolution, name=name, **filters)

    async def assert_relation(
        self, subject_id: str, predicate: str, object_id: str, **fields: Any
    ) -> Written:
        """``relation.assert``; ``fields.invalidated`` names what a single-valued predicate
        ended, ``fields.deduplicated`` whether the same fact was valid already."""
        return await self._command(
            AssertRelation,
            subject_id=subject_id,
            predicate=predicate,
            object_id=object_id,
            **fields,
        )

    async def invalidate_relation(self, relation_id: str, **fields: Any) -> Written:
        return await self._command(InvalidateRelation, relation_id=relation_id, **fields)

    async def retract_relation(self, relation_id: str, **fields: Any) -> Written:
        return await self._command(RetractRelation, relation_id=relation_id, **fields)

    async def neighbors(self, entity_id: str, **filters: Any) -> Neighbors:
        return await self._query(GraphNeighbors, Neighbors, entity_id=entity_id, **filters)

    async def graph_path(self, from_id: str, to_id: str, **filters: Any) -> GraphPath:
        return await self._query(FindGraphPath, GraphPath, from_id=from_id, to_id=to_id, **filters)

    async def graph_facts(self, entity_id: str, **filters: Any) -> Facts:
        return await self._query(GraphFacts, Facts, entity_id=entity_id, **filters)

    async def graph_stats(self, **filters: Any) -> GraphStats:
        return await self._query(GraphStatsQuery, GraphStats, **filters)

    async def declare_predicate(
        self, predicate: str, single_valued: bool, **fields: Any
    ) -> Written:
        """``predicate.declare``: whether ``predicate`` is single-valued in the organization."""
        return await self._command(
            DeclarePredicate, predicate=predicate, single_valued=single_valued, **fields
        )

    async def list_predicates(self, **filters: Any) -> list[PredicateRule]:
        """``predicate.list``: the declared predicates and the single-valued defaults."""
        found = await self._query(ListPredicates, Items[PredicateRule], **filters)
        return found.items

    async def extract_graph(
        self,
        *,
        memory_id: str | None = None,
        session_id: str | None = None,
        message_id: str | None = None,
        extractor: str = "rules",
        **fields: Any,
    ) -> Extracted:
        """``graph.extract``: the entities and relations found in one memory, or one message
        (``session_id`` and ``message_id``), put in the graph."""
        body = {
            "memory_id": memory_id,
            "session_id": session_id,
            "message_id": message_id,
            "extractor": extractor,
            **fields,
        }
        reply = await self.request(ExtractGraph.op.subject, body, data=Extracted)
        self.last_seq = max(self.last_seq, reply.seq or 0)
        extracted: Extracted = reply.data
        return extracted

    async def associate_memories(
        self, from_memory_id: str, to_memory_id: str, **fields: Any
    ) -> Written:
        return await self._command(
            AssociateMemories, from_memory_id=from_memory_id, to_memory_id=to_memory_id, **fields
        )

    async def dissociate_memories(
        self, from_memory_id: str, to_memory_id: str, **fields: Any
    ) -> Written:
        return await self._command(
            DissociateMemories, from_memory_id=from_memory_id, to_memory_id=to_memory_id, **fields
        )

    async def memory_associations(self, memory_id: str, **filters: Any) -> list[Association]:
        found = await self._query(
            MemoryAssociations, Items[Association], memory_id=memory_id, **filters
        )
        return found.items

    # Context for a model call -----------------------------------------------------------
    async def assemble_context(
        self, agent_id: str, query: str, max_tokens: int, **fields: Any
    ) -> AssembledContext:
        """``context.assemble``: what to put before a model call, within ``max_tokens``;
        ``fields``: ``user_id``, ``session_id``, ``counter`` (``chars4`` or ``words``),
        ``mode`` and ``min_score`` (of the memory search), ``memories``, ``messages``,
        ``working_items``, ``org_id``, ``after_seq``."""
        return await self._query(
            AssembleContext,
            AssembledContext,
            agent_id=agent_id,
            query=query,
            max_tokens=max_tokens,
            **fields,
        )

    # Forgetting (crypto-shredding: docs/security.md, "Forgetting") -----------------------
    async def forget_user(self, user_id: str, **fields: Any) -> Written:
        """``user.forget``: the user, their messages in every conversation, their memories."""
        return await self._command(ForgetUser, user_id=user_id, **fields)

    async def forget_agent(self, agent_id: str, **fields: Any) -> Written:
        return await self._command(ForgetAgent, agent_id=agent_id, **fields)

    async def forget_conversation(self, session_id: str, **fields: Any) -> Written:
        return await self._command(ForgetConversation, session_id=session_id, **fields)

    async def forget_memory(self, memory_id: str, **fields: Any) -> Written:
        return await self._command(ForgetMemory, memory_id=memory_id, **fields)

    async def forget_memory_scope(
        self,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        **fields: Any,
    ) -> Written:
        return await self._command(
            ForgetMemoryScope, user_id=user_id, agent_id=agent_id, session_id=session_id, **fields
        )
