"""The request bodies of every command, as msgspec Structs.

Decoding a request validates it: types, lengths, patterns, unknown fields. A request that
does not decode never reaches a handler.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from agentmem.events import (
    AgentArchived,
    AgentCreated,
    AgentDeleted,
    AgentStateSet,
    AgentUnarchived,
    AgentUpdated,
    ApiKeyCreated,
    ApiKeyRevoked,
    ConversationDeleted,
    MessageAppended,
    MessageRedacted,
    MessageRole,
    OrgCreated,
    OrgDeleted,
    OrgRenamed,
    Role,
    SessionEnded,
    SessionStarted,
    ToolDeleted,
    ToolRegistered,
    ToolUpdated,
    UserDeleted,
    UserPasswordChanged,
    UserProfileUpdated,
    UserRegistered,
    UserRolesSet,
)
from agentmem.protocol import Request, command
from agentmem.replies import AlreadyDeleted, AlreadyRedacted, BatchAppended, Issued, MessageIds

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_\-]{1,64}$(?!\n)")]
# An id a client picks for a new organization or user: no underscore, which separates the
# parts of a credential (and starts the reserved "_global" token).
NewId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9\-]{0,63}$(?!\n)")]
# Deliberately simple: one @, no spaces, a dot in the domain. Deliverability is not our job.
# Spaces around the address are allowed here and trimmed by normalize_email (protocol.md:
# "Emails are trimmed and lower-cased"); the 254 counts the address with them.
Email = Annotated[
    str,
    msgspec.Meta(max_length=254, pattern=r"^\s*[^@\s]{1,64}@[^@\s]+\.[^@\s.]{2,}\s*$"),
]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=1024)]
# The bounds of every integer a request carries into the log and the tables: past what a
# store's signed 64-bit integer holds, one accepted event stalled a projection for every
# organization (each later event waited behind it).
# A log sequence (an aggregate's version, ``after_seq``): JetStream's are 64-bit unsigned.
MAX_SEQ = 2**63 - 1
Version = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
# A time in ms since the epoch, up to the end of the year 9999.
MAX_TIME_MS = 253_402_300_799_999
TimeMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME_MS)]
Roles = Annotated[list[Role], msgspec.Meta(min_length=1, max_length=3)]


class Command(Request, frozen=True, kw_only=True):
    # A client-chosen id makes a retry safe: the log stores the command once and answers
    # the retry with the first outcome.
    command_id: Id | None = None


class Targeted(Command, frozen=True, kw_only=True):
    # Optimistic concurrency: when given, the command fails with `conflict` unless the
    # aggregate is still at this version.
    expected_version: Version | None = None


@command("org.create", need="service_admin", reply=OrgCreated)
class CreateOrg(Command, frozen=True, kw_only=True):
    name: Name
    # Optional: a client that picks the id (a UUIDv7 is best) can retry safely forever,
    # not only within the log's 10-minute duplicate window.
    org_id: NewId | None = None


@command("org.rename", need="org_admin", reply=OrgRenamed)
class RenameOrg(Targeted, frozen=True, kw_only=True):
    org_id: Id
    name: Name


@command("org.delete", need="org_admin", reply=OrgDeleted)
class DeleteOrg(Targeted, frozen=True, kw_only=True):
    org_id: Id


@command("user.register", need="org_admin", reply=UserRegistered)
class RegisterUser(Command, frozen=True, kw_only=True):
    org_id: Id
    name: Name
    email: Email
    password: Password
    roles: Roles = msgspec.field(default_factory=lambda: ["member"])
    user_id: NewId | None = None  # optional, as org_id in CreateOrg


@command("user.update_profile", need="self", reply=UserProfileUpdated)
class UpdateProfile(Targeted, frozen=True, kw_only=True):
    user_id: Id
    name: Name | None = None
    email: Email | None = None


@command("user.change_password", need="self", reply=UserPasswordChanged)
class ChangePassword(Targeted, frozen=True, kw_only=True):
    user_id: Id
    old_password: Annotated[str, msgspec.Meta(max_length=1024)]
    new_password: Password


@command("user.set_roles", need="org_admin", reply=UserRolesSet)
class SetRoles(Targeted, frozen=True, kw_only=True):
    user_id: Id
    roles: Roles


@command("user.delete", need="org_admin", reply=UserDeleted)
class DeleteUser(Targeted, frozen=True, kw_only=True):
    user_id: Id


def normalize_email(email: str) -> str:
    return email.strip().lower()


@command("auth.login", need=None, reply=SessionStarted, extra=Issued)
class Login(Command, frozen=True, kw_only=True):
    email: Email
    password: Annotated[str, msgspec.Meta(max_length=1024)]
    ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=30 * 24 * 3600)] = 12 * 3600


@command("auth.logout", need="reader", reply=SessionEnded)
class Logout(Command, frozen=True, kw_only=True):
    pass


@command("apikey.create", need="self", reply=ApiKeyCreated, extra=Issued)
class CreateApiKey(Command, frozen=True, kw_only=True):
    name: Name
    user_id: Id | None = None  # default: the caller


@command("apikey.revoke", need="self", reply=ApiKeyRevoked)
class RevokeApiKey(Command, frozen=True, kw_only=True):
    key_id: Id
    user_id: Id | None = None  # default: the caller


# Agents, conversations and tools ---------------------------------------------------------
Text = Annotated[str, msgspec.Meta(max_length=100_000)]
Description = Annotated[str, msgspec.Meta(max_length=4_000)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=32)]
JsonObject = dict[str, Any]
# A tool's name as a model sees it (the OpenAI and Anthropic function-name rules).
ToolName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_\-]{1,64}$(?!\n)")]


class InOrg(Command, frozen=True, kw_only=True):
    # Default: the caller's organization. Only a service administrator may name another.
    org_id: Id | None = None


@command("agent.create", need="member", reply=AgentCreated)
class CreateAgent(InOrg, frozen=True, kw_only=True):
    name: Name
    description: Description = ""
    persona: Text = ""
    model: JsonObject = msgspec.field(default_factory=dict)
    metadata: JsonObject = msgspec.field(default_factory=dict)
    tags: Tags = msgspec.field(default_factory=list)
    agent_id: NewId | None = None  # optional, as org_id in CreateOrg


@command("agent.update", need="member", reply=AgentUpdated)
class UpdateAgent(Targeted, frozen=True, kw_only=True):
    """Fields left out keep their value; ``metadata`` and ``model`` are replaced whole."""

    agent_id: Id
    name: Name | None = None
    description: Description | None = None
    persona: Text | None = None
    model: JsonObject | None = None
    metadata: JsonObject | None = None
    tags: Tags | None = None


@command("agent.archive", need="member", reply=AgentArchived)
class ArchiveAgent(Targeted, frozen=True, kw_only=True):
    agent_id: Id


@command("agent.unarchive", need="member", reply=AgentUnarchived)
class UnarchiveAgent(Targeted, frozen=True, kw_only=True):
    agent_id: Id


@command("agent.delete", need="org_admin", reply=AgentDeleted)
class DeleteAgent(Targeted, frozen=True, kw_only=True):
    agent_id: Id


@command("agent.set_state", need="member", reply=AgentStateSet)
class SetAgentState(Targeted, frozen=True, kw_only=True):
    """Replace the agent's state document. ``expected_version`` is the state's version."""

    agent_id: Id
    state: JsonObject


@command("agent.patch_state", need="member", reply=AgentStateSet)
class PatchAgentState(Targeted, frozen=True, kw_only=True):
    """Apply a JSON merge patch (RFC 7396) to the agent's state document."""

    agent_id: Id
    patch: JsonObject


class NewMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    role: MessageRole
    content: Text
    tool_calls: Annotated[list[JsonObject], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )
    tool_call_id: Id | None = None
    metadata: JsonObject = msgspec.field(default_factory=dict)


@command("message.append", need="member", reply=MessageAppended, extra=MessageIds)
class AppendMessage(InOrg, frozen=True, kw_only=True):
    session_id: Id
    agent_id: Id
    user_id: Id | None = None
    message: NewMessage


MAX_MESSAGES_PER_BATCH = 1000


@command("message.append_batch", need="member", reply=BatchAppended)
class AppendMessages(InOrg, frozen=True, kw_only=True):
    """Several messages of one session in one commit: all stored, in order, or none."""

    session_id: Id
    agent_id: Id
    user_id: Id | None = None
    messages: Annotated[
        list[NewMessage], msgspec.Meta(min_length=1, max_length=MAX_MESSAGES_PER_BATCH)
    ]


@command("message.redact", need="member", reply=MessageRedacted, extra=AlreadyRedacted)
class RedactMessage(InOrg, frozen=True, kw_only=True):
    session_id: Id
    message_id: Id
    reason: Description = ""


@command("conversation.delete", need="member", reply=ConversationDeleted, extra=AlreadyDeleted)
class DeleteConversation(InOrg, frozen=True, kw_only=True):
    session_id: Id


@command("tool.register", need="member", reply=ToolRegistered)
class RegisterTool(InOrg, frozen=True, kw_only=True):
    name: ToolName
    description: Description = ""
    parameters: JsonObject = msgspec.field(default_factory=lambda: {"type": "object"})
    tags: Tags = msgspec.field(default_factory=list)
    tool_id: NewId | None = None


@command("tool.update", need="member", reply=ToolUpdated)
class UpdateTool(Targeted, frozen=True, kw_only=True):
    """Fields left out keep their value; a new ``name`` must be free in the organization."""

    tool_id: Id
    name: ToolName | None = None
    description: Description | None = None
    parameters: JsonObject | None = None
    tags: Tags | None = None


@command("tool.delete", need="org_admin", reply=ToolDeleted)
class DeleteTool(Targeted, frozen=True, kw_only=True):
    tool_id: Id
