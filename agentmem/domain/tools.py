"""Tools, and the name reservations that keep a tool's name unique within its organization.

As with emails, uniqueness is decided in the log: a name's reservation subject is written in
the same atomic batch as the tool, at the reservation's version, so of two commands racing
for one name exactly one is stored. A rename reserves the new name and releases the old one
in that batch; a deletion releases its name.

A tool's ``parameters`` is a JSON Schema (Draft 2020-12) whose top level is an object
schema: the shape of arguments that function-calling models accept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from agentmem import subjects
from agentmem.commands import DeleteTool, RegisterTool, UpdateTool
from agentmem.domain.aggregate import Loaded, Write, check_version
from agentmem.domain.jsondoc import MAX_DEPTH, encoded_size
from agentmem.errors import ConflictError, InvalidError, NotFoundError
from agentmem.events import (
    AnyEvent,
    ToolDeleted,
    ToolNameReleased,
    ToolNameReserved,
    ToolRegistered,
    ToolUpdated,
)
from agentmem.validation import Reason, invalid
from agentmem.validation import field as member_path

# A schema travels with every prompt that offers the tool; requests are capped at 256 KiB.
MAX_PARAMETERS_BYTES = 64 * 1024

# Bounds on a schema's shape, checked in one linear walk on the event loop before jsonschema
# runs (in a thread).
# jsonschema's Draft 2020-12 metaschema check costs about 0.2 ms per subschema here, and its
# ``uniqueItems`` falls back to comparing every pair of items when they are not all strings
# (6,646 objects in a ``type`` array took 52 s). So: at most this many values (objects,
# arrays and scalars, member names not counted) in all, which a tool with ~650 described
# properties stays under; no array longer than a long enum; a ``type`` array is at most
# the 7 type names, and name lists hold strings only, so no pairwise comparison is ever
# slow; and the regular expressions that the check compiles are short in total.
#
# Measured on this kind of machine (2 cores, time.perf_counter, best of several runs), for
# the worst schemas at these caps: ``check_parameters_shape`` at most ~1.2 ms (0.2 ms to
# refuse the 65 KB, 6,646-item ``type`` array); ``check_schema`` ~0.45 s (2,000 empty
# subschemas; a 64 KiB schema of 665 described properties ~0.17 s), which is why it runs in
# a thread, one at a time per process, with a time limit (consumers/tools.py).
MAX_PARAMETERS_VALUES = 2_000
MAX_ARRAY_ITEMS = 1_024
SIMPLE_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")
MAX_TYPE_NAMES = len(SIMPLE_TYPES)  # a type array names each at most once
MAX_NAME_LIST = 256  # required, and each list in dependentRequired / dependencies
MAX_PATTERN_CHARS = 8 * 1024  # pattern values and patternProperties names, together


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


# Where a value sits: ``(parent's trail, member name or index)``, ``None`` for the top. Linked
# rather than a tuple of keys, so that going one level deeper costs the same at any depth.
Trail = tuple["Trail", str | int] | None


def _json_path(trail: Trail) -> str:
    """Where ``trail`` leads, as a JSON path of protocol.md (``$.parameters.properties.x.type``,
    ``$.parameters.properties["odd name"]``)."""
    keys: list[str | int] = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    return _path_of(reversed(keys))


def _path_of(keys: Iterable[str | int]) -> str:
    path = "$.parameters"
    for key in keys:
        path = f"{path}[{key}]" if isinstance(key, int) else member_path(key, path)
    return path


def _refuse(trail: Trail, why: str, reason: Reason, **limits: int) -> InvalidError:
    where = _json_path(trail)
    return invalid(f"parameters {why} at {where}", where, reason, **limits)


def _check_names(value: list[Any], trail: Trail) -> None:
    """A list of property names (``required``, a ``dependentRequired`` entry): the metaschema
    wants unique strings, and checks uniqueness pairwise when an item is not a string."""
    if len(value) > MAX_NAME_LIST:
        raise _refuse(
            trail,
            f"has a list of more than {MAX_NAME_LIST} property names",
            "too_long",
            max_items=MAX_NAME_LIST,
        )
    if not all(isinstance(item, str) for item in value):
        raise _refuse(
            trail, "has a list of property names with an item that is not a string", "invalid_value"
        )


def check_parameters_shape(parameters: Mapping[str, Any]) -> None:
    """Raise ``invalid`` unless ``parameters`` keeps within the bounds that keep its JSON
    Schema check cheap: its size, depth and number of values, the length of its arrays, and
    the arrays whose items the metaschema compares pairwise.

    Linear and capped: the walk stops at the first value past a cap, so it visits at most
    ``MAX_PARAMETERS_VALUES`` values; it runs on the event loop, before ``check_schema``.
    The rules apply to every object in the document, data (``default``, ``const``, ``enum``,
    ``examples``) included, since a subschema can sit under any member name.
    """
    size = encoded_size(parameters)
    if size > MAX_PARAMETERS_BYTES:
        raise invalid(
            f"parameters is {size} bytes as JSON; at most {MAX_PARAMETERS_BYTES} are allowed",
            "$.parameters",
            "too_large",
            size=size,
            max_bytes=MAX_PARAMETERS_BYTES,
        )
    values = 1
    patterns = 0
    stack: list[tuple[dict[str, Any] | list[Any], int, Trail]] = [(dict(parameters), 1, None)]
    while stack:
        value, level, trail = stack.pop()
        if level > MAX_DEPTH:
            raise _refuse(
                trail, f"nests more than {MAX_DEPTH} levels deep", "too_deep", max_depth=MAX_DEPTH
            )
        if isinstance(value, list) and len(value) > MAX_ARRAY_ITEMS:
            raise _refuse(
                trail,
                f"has an array of more than {MAX_ARRAY_ITEMS} items",
                "too_long",
                max_items=MAX_ARRAY_ITEMS,
            )
        values += len(value)
        if values > MAX_PARAMETERS_VALUES:
            raise _refuse(
                trail,
                f"has more than {MAX_PARAMETERS_VALUES} values (objects, arrays, scalars)",
                "too_large",
                max_values=MAX_PARAMETERS_VALUES,
            )
        children = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in children:
            if key == "type" and isinstance(child, list):
                if len(child) > MAX_TYPE_NAMES:
                    raise _refuse(
                        (trail, key),
                        f"has a type array of more than {MAX_TYPE_NAMES} type names",
                        "too_long",
                        max_items=MAX_TYPE_NAMES,
                    )
                if not all(isinstance(item, str) for item in child):
                    raise _refuse(
                        (trail, key),
                        "has a type array with an item that is not a type name",
                        "invalid_value",
                    )
            elif key == "required" and isinstance(child, list):
                _check_names(child, (trail, key))
            elif key in ("dependentRequired", "dependencies") and isinstance(child, dict):
                for name, names in child.items():
                    if isinstance(names, list):
                        _check_names(names, ((trail, key), name))
            elif key == "pattern" and isinstance(child, str):
                patterns += len(child)
            elif key == "patternProperties" and isinstance(child, dict):
                patterns += sum(len(name) for name in child)
            if patterns > MAX_PATTERN_CHARS:
                raise _refuse(
                    (trail, key),
                    f"has more than {MAX_PATTERN_CHARS} characters of regular expressions",
                    "too_long",
                    max_chars=MAX_PATTERN_CHARS,
                )
            if isinstance(child, dict | list):
                stack.append((child, level + 1, (trail, key)))


def check_schema(parameters: Mapping[str, Any]) -> None:
    """Raise ``invalid`` unless ``parameters`` is a JSON Schema (Draft 2020-12) of an object.

    Pure but CPU-bound (up to ~0.45 s at the caps): call it only on parameters that
    ``check_parameters_shape`` accepted, and off the event loop (``consumers/tools.py`` runs
    it in a thread with a time limit).
    """
    try:
        Draft202012Validator.check_schema(parameters)
    except SchemaError as exc:
        path = _path_of(exc.absolute_path)
        raise invalid(
            f"parameters is not a valid JSON Schema (Draft 2020-12): {exc.message} at {path}",
            path,
            "invalid_value",
            schema_error=exc.message,
        ) from None
    except RecursionError:  # bounded by the depth check; kept as a last line of defence
        raise invalid(
            "parameters nests too deeply to check",
            "$.parameters",
            "too_deep",
            schema_error="nests too deeply to check",
        ) from None
    check_describes_object(parameters)


def check_describes_object(parameters: Mapping[str, Any]) -> None:
    if parameters.get("type") != "object":
        raise invalid(
            'parameters must describe an object: its top level needs "type": "object" '
            "(what function-calling models accept)",
            "$.parameters.type",
            "invalid_value",
            found=parameters.get("type"),
            schema_error='the top level of a tool\'s parameters must have "type": "object"',
        )


def check_parameters(parameters: Mapping[str, Any]) -> None:
    """Every check of ``parameters``, in order: the bounded shape, then the JSON Schema."""
    check_parameters_shape(parameters)
    check_schema(parameters)


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
    """The caller has checked that the organization is live, and ``command.parameters``
    with ``check_schema`` (off the event loop: here only the cheap checks run)."""
    if loaded.version != 0:
        raise ConflictError(f"tool {tool_id} already exists", {"tool_id": tool_id})
    check_parameters_shape(command.parameters)
    check_describes_object(command.parameters)
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
    """A new name needs both reservations loaded: the new name's and the current one's. The
    caller has checked new parameters with ``check_schema``, as for ``register``."""
    tool = require_live(loaded, command.tool_id)
    check_version(loaded, command.expected_version)
    if command.parameters is not None:
        check_parameters_shape(command.parameters)
        check_describes_object(command.parameters)
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
