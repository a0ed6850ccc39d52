"""Forgetting: a user, an agent, a conversation, a memory or a memory scope, for real.

The log is append-only, so forgetting is crypto-shredding (``agentmem.personal``,
``agentmem.sealing``, ``agentmem.keys``): the data keys of what is forgotten are deleted,
after which every event they sealed reads as ``Shredded`` in every process, in every replay.
Then one ``data.forgotten`` event, on ``agentmem.evt.<org>.forget.<forget_id>``, records
that something was forgotten (which ids, when, by whom, how many keys) and makes each
projection drop its rows of it, search index entries included.

The first three are whole scopes: their keys are all wrapped under one scope key, which the
forget erases (``agentmem.keys``), so their count does not make it slower.

The keys go first and the event second: an event appended while a process still held a
key (before its delete marker arrived) is unreadable, like the rest; and a forget that
failed between the two is finished by sending it again (deleting keys again is harmless).

Which keys each target deletes (``keys_of``: a wildcard over the key names
``<org>.<user>.<agent>.<session>.<aggregate>.<id>``), and which rows go:

- user: every key of the user (profile, email, API key names, every message they were the
  user of, every memory in their scope, the blocks they own, the working memory items put
  about them); the user, its API keys, messages, memories, blocks and items.
- agent: the agent's profile and state, every message, memory, block and working item with
  the agent; the agent, its tags and state, its messages, memories, blocks and items.
- conversation: every message of the session, the memories scoped to it and its working
  memory; its messages and redactions, those memories and items. And what extraction
  derived from them: its stored answers, and the relations (their keys name the session).
- memory: that memory's key and row; and, sealed with a key of the memory's name, its
  extraction's stored answer and each relation whose source is that memory alone
  (``agentmem.personal``), whose rows go too. The entities an extraction made stay.
- memory scope: every memory whose scope has each id given; those memories. And the
  entities, relations and extractions of that scope (``graph_keys_of``; a session holds
  no entity).

A user's and an agent's keys cover their knowledge graph too (entities and relations are
scoped by user and agent); their entities, names and relations leave the graph's tables.
"""

from __future__ import annotations

from typing import Any

from agentmem import subjects
from agentmem.commands import Command, Id, InOrg
from agentmem.domain.aggregate import Write
from agentmem.events import (
    AgentDeleted,
    AnyEvent,
    ConversationDeleted,
    DataForgotten,
    ForgetTarget,
    MemoryDeleted,
    UserDeleted,
)
from agentmem.personal import key_filter
from agentmem.protocol import command
from agentmem.validation import invalid


@command("user.forget", need="self", reply=DataForgotten)
class ForgetUser(Command, frozen=True, kw_only=True):
    """Forget a user and everything that is theirs: profile, email, messages in every
    conversation, memories. The user themself, or an administrator of their organization."""

    user_id: Id


@command("agent.forget", need="org_admin", reply=DataForgotten)
class ForgetAgent(Command, frozen=True, kw_only=True):
    """Forget an agent: its profile and state, and every message and memory with it."""

    agent_id: Id


@command("conversation.forget", need="org_admin", reply=DataForgotten)
class ForgetConversation(InOrg, frozen=True, kw_only=True):
    """Forget a conversation: every message of the session, and the memories scoped to it."""

    session_id: Id


@command("memory.forget", need="self", reply=DataForgotten)
class ForgetMemory(Command, frozen=True, kw_only=True):
    """Forget one memory. The user it belongs to, or an administrator of its organization."""

    memory_id: Id


@command("memory.forget_scope", need="self", reply=DataForgotten)
class ForgetMemoryScope(InOrg, frozen=True, kw_only=True):
    """Forget every memory of a scope: all that match every id given (at least one). A user
    may forget their own scope; any other needs an administrator of the organization."""

    user_id: Id | None = None
    agent_id: Id | None = None
    session_id: Id | None = None


def subject(org_id: str, forget_id: str) -> str:
    return subjects.event(org_id, "forget", forget_id)


def scope_ids(request: ForgetMemoryScope) -> dict[str, str]:
    ids = {
        name: value
        for name in ("user_id", "agent_id", "session_id")
        if (value := getattr(request, name)) is not None
    }
    if not ids:
        raise invalid(
            "a memory scope to forget needs at least one of user_id, agent_id and session_id",
            "$",
            "missing_field",
        )
    return ids


def keys_of(target: ForgetTarget, org_id: str, ids: dict[str, str]) -> str:
    """The wildcard over key names of what ``target`` forgets (see the table above)."""
    match target:
        case "user":
            return key_filter(org_id, user_id=ids["user_id"])
        case "agent":
            return key_filter(org_id, agent_id=ids["agent_id"])
        case "conversation":
            return key_filter(org_id, session_id=ids["session_id"])
        case "memory":
            return key_filter(org_id, aggregate="memory", aggregate_id=ids["memory_id"])
        case "memory_scope":
            return key_filter(org_id, **ids, aggregate="memory")
    raise ValueError(f"nothing to forget for {target!r}")


def graph_keys_of(target: ForgetTarget, org_id: str, ids: dict[str, str]) -> list[str]:
    """The wildcards over the knowledge graph's keys (entities, relations, extractions) that
    ``target`` forgets besides ``keys_of``: a memory scope's (a user's and an agent's are in
    ``keys_of`` already)."""
    if target != "memory_scope":
        return []
    graph = ("entity", "facts", "extraction")
    return [key_filter(org_id, **ids, aggregate=aggregate) for aggregate in graph]


def forget(
    target: ForgetTarget,
    org_id: str,
    ids: dict[str, Any],
    forget_id: str,
    keys: int,
    target_subject: str | None = None,
    target_version: int | None = None,
) -> list[Write]:
    """The writes of a forget whose keys are deleted: the ``data.forgotten`` event, and a
    deletion on the target's own subject (a user, an agent, a conversation, a memory), so
    that its history shows the forget and every process's access view lets go of it at once
    (a user's or an agent's deletion takes access away: the command waits for every view
    to apply it, as for a revoked key). ``target_version``: the subject's version, which
    the deletion is written at (None: a conversation, written at no version)."""
    event = DataForgotten(forget_id=forget_id, org_id=org_id, target=target, keys=keys, **ids)
    writes = [Write(subject(org_id, forget_id), 0, [event])]
    deleted = _deletion(target, ids)
    if target_subject is not None and deleted is not None:
        writes.insert(0, Write(target_subject, target_version, [deleted]))
    return writes


def _deletion(target: ForgetTarget, ids: dict[str, Any]) -> AnyEvent | None:
    match target:
        case "user":
            return UserDeleted(user_id=ids["user_id"])
        case "agent":
            return AgentDeleted(agent_id=ids["agent_id"])
        case "conversation":
            return ConversationDeleted(session_id=ids["session_id"])
        case "memory":
            return MemoryDeleted(memory_id=ids["memory_id"])
    return None
