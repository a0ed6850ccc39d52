"""Tools, and the name reservations that keep a tool's name unique within its organization.

As with emails, uniqueness is decided in the log: a name's reservation subject is written in
the same atomic batch as the tool, at the reservation's version, so of two commands racing
for one name exactly one is stored. A rename reserves the new name and releases the old one
in that batch; a deletion releases its name.

A tool's ``parameters`` is a JSON Schema (Draft 2020-12) whose top level is an object
schema: the shape of arguments that function-calling models accept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from agentmem import subjects
from agentmem.commands import DeleteTool, RegisterTool, UpdateTool
from agentmem.domain.aggregate import Loaded, Write, check_version
from agentmem.domain.jsondoc import check_bounds
from agentmem.errors import ConflictError, NotFoundError
from agentmem.events import (
    AnyEvent,
    ToolDeleted,
    ToolNameReleased,
    ToolNameReserved,
    ToolRegistered,
    ToolUpdated,
)
from agentmem.validation import invalid

# A schema travels with every prompt that offers the tool; requests are capped at 256 KiB.
MAX_PARAMETERS_BYTES = 64 * 1024


@dataclass(frozen=True)
class Tool:
    tool_id: str
    org_id: str
    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    deleted: bool = False


@dataclass(frozen=True)
class NameReservation:
    name: str
    tool_id: str


def subject(org_id: str, tool_id: str) -> str:
    return subjects.event(org_id, "tool", tool_id)


def evolve(state: Tool | None, event: AnyEvent) -> Tool | None:
    match event:
        case ToolRegistered():
            return Tool(
                tool_id=event.tool_id,
                org_id=event.org_id,
                name=event.name,
                description=event.description,
                parameters=event.parameters,
                tags=tuple(event.tags),
            )
        case ToolUpdated() if state is not None:
            return replace(
                state,
                name=event.name,
                description=event.description,
                parameters=event.parameters,
                tags=tuple(event.tags),
            )
        case ToolDeleted() if state is not None:
            return replace(state, deleted=True)
    return state


def evolve_reservation(state: NameReservation | None, event: AnyEvent) -> NameReservation | None:
    match event:
        case ToolNameReserved(name=name, tool_id=tool_id):
            return NameReservation(name, tool_id)
        case ToolNameReleased():
            return None
    return state


def missing(tool_id: str) -> NotFoundError:
    return NotFoundError(f"tool {tool_id} does not exist", {"tool_id": tool_id})


def require_live(loaded: Loaded[Tool], tool_id: str) -> Tool:
    if loaded.state is None or loaded.state.deleted:
        raise missing(tool_id)
    return loaded.state


def check_parameters(parameters: Mapping[str, Any]) -> None:
    """Raise ``invalid`` unless ``parameters`` is a JSON Schema (Draft 2020-12) of an object."""
    check_bounds(parameters, "parameters", MAX_PARAMETERS_BYTES, path="$.parameters")
    try:
        Draft202012Validator.check_schema(parameters)
    except SchemaError as exc:
        path = exc.json_path.replace("$", "$.parameters", 1)
        raise invalid(
            f"parameters is not a valid JSON Schema (Draft 2020-12): {exc.message} at {path}",
            path,
            "invalid_value",
            schema_error=exc.message,
        ) from None
    except RecursionError:  # bounded by the depth check; kept as a last line of defence
        raise invalid("parameters nests too deeply to check", "$.parameters", "too_deep") from None
    if parameters.get("type") != "object":
        raise invalid(
            'parameters must describe an object: its top level needs "type": "object" '
            "(what function-calling models accept)",
            "$.parameters.type",
            "invalid_value",
            found=parameters.get("type"),
        )


def _tags(tags: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(tags))  # duplicates dropped, first order kept


def _reserve(reservation: Loaded[NameReservation], name: str, tool_id: str) -> Write:
    if reservation.state is not None:
        raise ConflictError(
            f"a tool named {name!r} already exists in this organization",
            {"name": name, "tool_id": reservation.state.tool_id},
        )
    return Write(
        reservation.subject, reservation.version, [ToolNameReserved(name=name, tool_id=tool_id)]
    )


def _release(reservation: Loaded[NameReservation], tool: Tool) -> list[Write]:
    """Free the tool's name, if the tool holds it (it always should; a release never takes a
    name from another tool)."""
    if reservation.state is None or reservation.state.tool_id != tool.tool_id:
        return []
    released = ToolNameReleased(name=tool.name, tool_id=tool.tool_id)
    return [Write(reservation.subject, reservation.version, [released])]


def register(
    loaded: Loaded[Tool],
    command: RegisterTool,
    *,
    org_id: str,
    tool_id: str,
    reservation: Loaded[NameReservation],
) -> list[Write]:
    """The caller has checked that the organization is live."""
    if loaded.version != 0:
        raise ConflictError(f"tool {tool_id} already exists", {"tool_id": tool_id})
    check_parameters(command.parameters)
    registered = ToolRegistered(
        tool_id=tool_id,
        org_id=org_id,
        name=command.name,
        description=command.description,
        parameters=command.parameters,
        tags=_tags(command.tags),
    )
    return [
        _reserve(reservation, command.name, tool_id),
        Write(loaded.subject, 0, [registered]),
    ]


def update(
    loaded: Loaded[Tool],
    command: UpdateTool,
    *,
    new_reservation: Loaded[NameReservation] | None = None,
    old_reservation: Loaded[NameReservation] | None = None,
) -> list[Write]:
    """A new name needs both reservations loaded: the new name's and the current one's."""
    tool = require_live(loaded, command.tool_id)
    check_version(loaded, command.expected_version)
    if command.parameters is not None:
        check_parameters(command.parameters)
    writes: list[Write] = []
    name = tool.name
    if command.name is not None and command.name != tool.name:
        if new_reservation is None or old_reservation is None:
            raise ValueError("a rename needs both name reservations loaded")
        writes.append(_reserve(new_reservation, command.name, tool.tool_id))
        writes += _release(old_reservation, tool)
        name = command.name
    event = ToolUpdated(
        tool_id=tool.tool_id,
        name=name,
        description=tool.description if command.description is None else command.description,
        parameters=dict(tool.parameters if command.parameters is None else command.parameters),
        tags=tool.tags if command.tags is None else _tags(command.tags),
    )
    writes.append(Write(loaded.subject, loaded.version, [event]))
    return writes


def delete(
    loaded: Loaded[Tool], command: DeleteTool, reservation: Loaded[NameReservation]
) -> list[Write]:
    tool = require_live(loaded, command.tool_id)
    check_version(loaded, command.expected_version)
    deleted = Write(loaded.subject, loaded.version, [ToolDeleted(tool_id=tool.tool_id)])
    return [*_release(reservation, tool), deleted]
