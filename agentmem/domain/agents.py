"""Agents: a profile (name, persona, model settings, ...) and a working-state document.

The two live on two subjects of the log. The profile is on the agent's subject; the state
document, which an agent rewrites every turn, is on a subject of its own, so a profile edit
never makes a state write fail. Deleting or archiving an agent writes to both subjects in one
atomic batch: the state subject at its current version, so that a state write racing the
deletion or the archive fails, is decided again and finds the agent gone or archived. The
state's version counts state writes and these fences.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agentmem import subjects
from agentmem.commands import (
    ArchiveAgent,
    CreateAgent,
    DeleteAgent,
    PatchAgentState,
    SetAgentState,
    UnarchiveAgent,
    UpdateAgent,
)
from agentmem.domain.aggregate import Loaded, Write, check_version
from agentmem.domain.jsondoc import check_bounds, merge_patch
from agentmem.errors import ConflictError, NotFoundError
from agentmem.events import (
    AgentArchived,
    AgentCreated,
    AgentDeleted,
    AgentStateCleared,
    AgentStateSet,
    AgentUnarchived,
    AgentUpdated,
    AnyEvent,
)

# The state document is read and rewritten whole on every turn: keep it small enough that
# doing so stays cheap (and far below the log's message size).
MAX_STATE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Agent:
    agent_id: str
    org_id: str
    name: str
    description: str = ""
    persona: str = ""
    model: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    archived: bool = False
    deleted: bool = False


@dataclass(frozen=True)
class StateDocument:
    """The agent's working state as its own subject holds it."""

    agent_id: str
    state: Mapping[str, Any]
    cleared: bool = False


def subject(org_id: str, agent_id: str) -> str:
    return subjects.event(org_id, "agent", agent_id)


def state_subject(org_id: str, agent_id: str) -> str:
    return subjects.event(org_id, "agent_state", agent_id)


def evolve(state: Agent | None, event: AnyEvent) -> Agent | None:
    match event:
        case AgentCreated():
            return Agent(
                agent_id=event.agent_id,
                org_id=event.org_id,
                name=event.name,
                description=event.description,
                persona=event.persona,
                model=event.model,
                metadata=event.metadata,
                tags=tuple(event.tags),
            )
        case AgentUpdated() if state is not None:
            return replace(
                state,
                name=event.name,
                description=event.description,
                persona=event.persona,
                model=event.model,
                metadata=event.metadata,
                tags=tuple(event.tags),
            )
        case AgentArchived() if state is not None:
            return replace(state, archived=True)
        case AgentUnarchived() if state is not None:
            return replace(state, archived=False)
        case AgentDeleted() if state is not None:
            return replace(state, deleted=True)
    return state


def evolve_state(state: StateDocument | None, event: AnyEvent) -> StateDocument | None:
    match event:
        case AgentStateSet(agent_id=agent_id, state=document):
            return StateDocument(agent_id, document)
        case AgentStateCleared(agent_id=agent_id):
            return StateDocument(agent_id, {}, cleared=True)
    return state


def missing(agent_id: str) -> NotFoundError:
    return NotFoundError(f"agent {agent_id} does not exist", {"agent_id": agent_id})


def require_live(loaded: Loaded[Agent], agent_id: str) -> Agent:
    if loaded.state is None or loaded.state.deleted:
        raise missing(agent_id)
    return loaded.state


def require_active(loaded: Loaded[Agent], agent_id: str) -> Agent:
    """A live agent that is not archived: what a state write or a new message needs."""
    agent = require_live(loaded, agent_id)
    if agent.archived:
        raise ConflictError(
            f"agent {agent_id} is archived: it takes no state writes and no new messages "
            "until it is unarchived",
            {"agent_id": agent_id, "archived": True},
        )
    return agent


def _tags(tags: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(tags))  # duplicates dropped, first order kept


def create(loaded: Loaded[Agent], command: CreateAgent, org_id: str, agent_id: str) -> list[Write]:
    """The caller has checked that the organization is live."""
    if loaded.version != 0:
        raise ConflictError(f"agent {agent_id} already exists", {"agent_id": agent_id})
    created = AgentCreated(
        agent_id=agent_id,
        org_id=org_id,
        name=command.name,
        description=command.description,
        persona=command.persona,
        model=command.model,
        metadata=command.metadata,
        tags=_tags(command.tags),
    )
    return [Write(loaded.subject, 0, [created])]


def update(loaded: Loaded[Agent], command: UpdateAgent) -> list[Write]:
    """Fields left out keep their value (an archived agent's profile can still be edited)."""
    agent = require_live(loaded, command.agent_id)
    check_version(loaded, command.expected_version)

    def pick(new: Any, old: Any) -> Any:
        return old if new is None else new

    event = AgentUpdated(
        agent_id=agent.agent_id,
        name=pick(command.name, agent.name),
        description=pick(command.description, agent.description),
        persona=pick(command.persona, agent.persona),
        model=dict(pick(command.model, agent.model)),
        metadata=dict(pick(command.metadata, agent.metadata)),
        tags=agent.tags if command.tags is None else _tags(command.tags),
    )
    return [Write(loaded.subject, loaded.version, [event])]


def archive(
    loaded: Loaded[Agent], state: Loaded[StateDocument], command: ArchiveAgent
) -> list[Write]:
    """Fenced as a deletion is: ``agent.archived`` on the state subject at its current version
    too, in the same atomic batch, so that a state write racing the archive fails, is
    decided again and finds the agent archived. The document itself is kept."""
    agent = require_live(loaded, command.agent_id)
    check_version(loaded, command.expected_version)
    if agent.archived:
        raise ConflictError(
            f"agent {agent.agent_id} is already archived", {"agent_id": agent.agent_id}
        )
    archived = AgentArchived(agent_id=agent.agent_id)
    return [
        Write(state.subject, state.version, [archived]),
        Write(loaded.subject, loaded.version, [archived]),
    ]


def unarchive(loaded: Loaded[Agent], command: UnarchiveAgent) -> list[Write]:
    agent = require_live(loaded, command.agent_id)
    check_version(loaded, command.expected_version)
    if not agent.archived:
        raise ConflictError(f"agent {agent.agent_id} is not archived", {"agent_id": agent.agent_id})
    return [Write(loaded.subject, loaded.version, [AgentUnarchived(agent_id=agent.agent_id)])]


def delete(
    loaded: Loaded[Agent], state: Loaded[StateDocument], command: DeleteAgent
) -> list[Write]:
    """``expected_version`` is the profile's. The state is cleared at whatever version it
    has: the point is that a concurrent state write cannot land after the deletion."""
    agent = require_live(loaded, command.agent_id)
    check_version(loaded, command.expected_version)
    return [
        Write(state.subject, state.version, [AgentStateCleared(agent_id=agent.agent_id)]),
        Write(loaded.subject, loaded.version, [AgentDeleted(agent_id=agent.agent_id)]),
    ]


def _state_write(
    state: Loaded[StateDocument],
    agent_id: str,
    document: dict[str, Any],
    patched: bool,
    path: str,
) -> list[Write]:
    """``path``: what in the request made ``document`` (``$.state`` or ``$.patch``)."""
    check_bounds(document, "the state document", MAX_STATE_BYTES, path=path)
    event = AgentStateSet(agent_id=agent_id, state=document, patched=patched)
    # Always at the version read, even without an expected_version: this is what makes a
    # state write racing a deletion (which clears the state subject) fail and decide again.
    return [Write(state.subject, state.version, [event])]


def set_state(
    loaded: Loaded[Agent], state: Loaded[StateDocument], command: SetAgentState
) -> list[Write]:
    """Replace the document. ``expected_version`` is the state's version (0: never set)."""
    require_active(loaded, command.agent_id)
    check_version(state, command.expected_version)
    return _state_write(state, command.agent_id, command.state, patched=False, path="$.state")


def patch_state(
    loaded: Loaded[Agent], state: Loaded[StateDocument], command: PatchAgentState
) -> list[Write]:
    """Apply a JSON merge patch (RFC 7396) and store the whole resulting document."""
    require_active(loaded, command.agent_id)
    check_version(state, command.expected_version)
    check_bounds(command.patch, "the patch", None, path="$.patch")
    current = state.state.state if state.state is not None else {}
    document: dict[str, Any] = merge_patch(current, command.patch)
    # The document a patch makes is too large: the patch is what was sent.
    return _state_write(state, command.agent_id, document, patched=True, path="$.patch")
