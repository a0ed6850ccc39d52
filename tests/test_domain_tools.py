"""Unit tests of the pure parts of tools: evolve, the name reservations, every decide
function, the JSON Schema check and the bounded shape checked before it, and the tools
projection. No NATS, no database."""

from __future__ import annotations

from typing import Any

import pytest

from agentmem import subjects
from agentmem.commands import DeleteTool, RegisterTool, UpdateTool
from agentmem.domain import tools
from agentmem.domain.aggregate import Loaded, Write, fold
from agentmem.errors import ConflictError, InvalidError, NotFoundError
from agentmem.eventlog import H_TIME, StoredCommit
from agentmem.events import (
    AgentDeleted,
    AnyEvent,
    OrgDeleted,
    ToolDeleted,
    ToolNameReleased,
    ToolNameReserved,
    ToolRegistered,
    ToolUpdated,
)
from agentmem.projections.tools import ToolsProjection
from agentmem.store import Delete, Update, Upsert
from agentmem.validation import REASONS

ORG = "org-1"
TOOL = "tool-1"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
REGISTERED = ToolRegistered(
    tool_id=TOOL,
    org_id=ORG,
    name="get_weather",
    description="Weather now",
    parameters=SCHEMA,
    tags=("weather", "web"),
)


def loaded_tool(*events: AnyEvent, version: int = 4) -> Loaded[tools.Tool]:
    state = fold(tools.evolve, None, list(events))
    return Loaded(tools.subject(ORG, TOOL), state, version if events else 0)


def reservation(name: str, holder: str | None = None, version: int = 0) -> Loaded[Any]:
    state = tools.NameReservation(name, holder) if holder else None
    return Loaded(subjects.tool_name_reservation(ORG, name), state, version)


# Evolve ----------------------------------------------------------------------------------
def test_evolve_register_update_delete() -> None:
    state = tools.evolve(None, REGISTERED)
    assert state == tools.Tool(TOOL, ORG, "get_weather", "Weather now", SCHEMA, ("weather", "web"))
    updated = ToolUpdated(
        tool_id=TOOL, name="weather", description="", parameters={"type": "object"}, tags=()
    )
    state = tools.evolve(state, updated)
    assert state == tools.Tool(TOOL, ORG, "weather", "", {"type": "object"}, ())
    state = tools.evolve(state, ToolDeleted(tool_id=TOOL))
    assert state is not None
    assert state.deleted
    assert tools.evolve(state, AgentDeleted(agent_id="a")) is state
    assert tools.evolve(None, updated) is None
    assert tools.evolve(None, ToolDeleted(tool_id=TOOL)) is None


def test_evolve_reservation() -> None:
    held = tools.evolve_reservation(None, ToolNameReserved(name="n", tool_id=TOOL))
    assert held == tools.NameReservation("n", TOOL)
    assert tools.evolve_reservation(held, ToolNameReleased(name="n", tool_id=TOOL)) is None
    assert tools.evolve_reservation(held, REGISTERED) is held


def test_the_reservation_subject_is_per_org_and_exact_name() -> None:
    one = subjects.tool_name_reservation(ORG, "search")
    assert one.startswith(f"agentmem.evt.{ORG}.tool_name.")
    assert one != subjects.tool_name_reservation("org-2", "search")
    assert one != subjects.tool_name_reservation(ORG, "Search")


# The JSON Schema check -------------------------------------------------------------------
@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object"},
        SCHEMA,
        {
            "type": "object",
            "properties": {
                "unit": {"enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "where": {"$ref": "#/$defs/place"},
            },
            "$defs": {"place": {"type": "string"}},
            "additionalProperties": False,
        },
    ],
)
def test_valid_object_schemas_pass(schema: dict[str, Any]) -> None:
    tools.check_parameters(schema)


@pytest.mark.parametrize(
    ("schema", "path", "says"),
    [
        ({"type": "objekt"}, "$.parameters.type", "'objekt' is not valid"),
        ({"type": "object", "required": "city"}, "$.parameters.required", "is not of type 'array'"),
        (
            {"type": "object", "properties": {"a": {"type": 5}}},
            "$.parameters.properties.a.type",
            "5 is not valid",
        ),
        ({"type": "object", "minProperties": -1}, "$.parameters.minProperties", "less than"),
        # A member name that is not an identifier, written as protocol.md's paths are.
        (
            {"type": "object", "properties": {"odd name": {"type": "strange"}}},
            '$.parameters.properties["odd name"].type',
            "'strange' is not valid",
        ),
        (
            {"type": "object", "properties": {"a-b": {"items": [{"type": "string"}]}}},
            '$.parameters.properties["a-b"].items',
            "is not of type",
        ),
    ],
)
def test_an_invalid_schema_names_the_error_and_where(
    schema: dict[str, Any], path: str, says: str
) -> None:
    with pytest.raises(InvalidError, match="not a valid JSON Schema") as refused:
        tools.check_parameters(schema)
    assert refused.value.details["path"] == path
    assert says in refused.value.details["schema_error"]
    assert path in refused.value.message


@pytest.mark.parametrize(
    "schema", [{}, {"type": "string"}, {"type": ["object", "null"]}, {"properties": {}}]
)
def test_a_schema_of_anything_but_an_object_is_invalid(schema: dict[str, Any]) -> None:
    with pytest.raises(InvalidError, match='"type": "object"') as refused:
        tools.check_parameters(schema)
    assert refused.value.details["path"] == "$.parameters.type"
    # protocol.md: a schema that is not valid carries details.schema_error.
    assert '"type": "object"' in refused.value.details["schema_error"]


def test_a_shape_limit_under_an_odd_member_name_has_a_protocol_path() -> None:
    schema = {"type": "object", "properties": {"a b": {"type": ["string"] * 8}}}
    with pytest.raises(InvalidError) as refused:
        tools.check_parameters(schema)
    assert refused.value.details["path"] == '$.parameters.properties["a b"].type'
    assert refused.value.details["reason"] == "too_long"


def test_a_huge_or_deep_schema_is_invalid() -> None:
    big = {"type": "object", "description": "x" * tools.MAX_PARAMETERS_BYTES}
    with pytest.raises(InvalidError, match=r"parameters is \d+ bytes"):
        tools.check_parameters(big)
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(40):  # 80 levels of JSON
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(InvalidError, match="parameters nests"):
        tools.check_parameters(deep)


# The bounded shape, checked before the JSON Schema check ---------------------------------
def finding() -> dict[str, Any]:
    """6,646 distinct objects in a ``type`` array (65 KB): jsonschema's ``uniqueItems``
    compares them pairwise, which took 52 s."""
    return {"type": "object", "properties": {"x": {"type": [{"": i} for i in range(6646)]}}}


def nested(levels: int) -> dict[str, Any]:
    """An object schema ``levels`` levels of JSON deep."""
    schema: dict[str, Any] = {}
    for _ in range(levels - 1):
        schema = {"not": schema}
    return schema


WIDE = tools.MAX_PARAMETERS_VALUES - 3  # values besides the top object, "type" and "object"


@pytest.mark.parametrize(
    ("schema", "path", "reason"),
    [
        (finding(), "$.parameters.properties.x.type", "type array of more than 7"),
        (
            {"type": "object", "anyOf": [{"type": ["string", {"": 0}]}]},
            "$.parameters.anyOf[0].type",
            "not a type name",
        ),
        (
            {"type": "object", "required": [{"": 0}, {"": 1}]},
            "$.parameters.required",
            "not a string",
        ),
        (
            {"type": "object", "required": [f"p{i}" for i in range(tools.MAX_NAME_LIST + 1)]},
            "$.parameters.required",
            "more than 256 property names",
        ),
        (
            {"type": "object", "dependentRequired": {"a": [["b"], ["c"]]}},
            "$.parameters.dependentRequired.a",
            "not a string",
        ),
        (
            {"type": "object", "dependencies": {"a": [{"": 0}]}},
            "$.parameters.dependencies.a",
            "not a string",
        ),
        (
            {"type": "object", "enum": list(range(tools.MAX_ARRAY_ITEMS + 1))},
            "$.parameters.enum",
            "array of more than 1024 items",
        ),
        (
            {"type": "object", "properties": {f"p{i}": {} for i in range(WIDE + 1)}},
            "$.parameters.properties",
            "more than 2000 values",
        ),
        (
            {"type": "object", "pattern": "a" * 5000, "patternProperties": {"b" * 5000: {}}},
            "$.parameters.patternProperties",
            "more than 8192 characters of regular expressions",
        ),
        (
            {"type": "object", "patternProperties": {"a" * 9000: {}}},
            "$.parameters.patternProperties",
            "regular expressions",
        ),
        (
            {"type": "object", "properties": {"x": nested(63)}},
            "$.parameters.properties.x" + ".not" * 62,
            "nests more than 64 levels",
        ),
        (
            # Data is held to the same rules: a subschema can sit under any member name.
            {"type": "object", "default": {"type": [1, 2]}},
            "$.parameters.default.type",
            "not a type name",
        ),
    ],
)
def test_the_shape_check_refuses_what_is_slow_to_check(
    schema: dict[str, Any], path: str, reason: str
) -> None:
    with pytest.raises(InvalidError) as refused:
        tools.check_parameters_shape(schema)
    assert refused.value.details["path"] == path
    assert refused.value.details["reason"] in REASONS
    assert reason in refused.value.message
    assert path in refused.value.message
    with pytest.raises(InvalidError):  # and so does the whole check, without jsonschema
        tools.check_parameters(schema)


@pytest.mark.parametrize(
    "schema",
    [
        SCHEMA,
        {"type": "object", "properties": {"x": {"type": ["string", "null"]}}},
        {"type": "object", "properties": {"x": {"type": list(tools.SIMPLE_TYPES)}}},
        {"type": "object", "required": [f"p{i}" for i in range(tools.MAX_NAME_LIST)]},
        {"type": "object", "dependentRequired": {"a": ["b", "c"]}},
        {"type": "object", "properties": {"tz": {"enum": [f"z{i}" for i in range(1024)]}}},
        {"type": "object", "properties": {f"p{i}": {} for i in range(WIDE)}},
        {"type": "object", "pattern": "a" * tools.MAX_PATTERN_CHARS},
        {"type": "object", "properties": {"x": nested(62)}},  # 64 levels in all
        {"type": "object", "default": {"type": "anything", "required": 3}},
    ],
)
def test_the_shape_check_passes_what_the_caps_allow(schema: dict[str, Any]) -> None:
    tools.check_parameters_shape(schema)


def test_decide_runs_only_the_cheap_checks() -> None:
    """register and update refuse what the shape check and the top-level type refuse; the
    JSON Schema check itself is the caller's, off the event loop (consumers/tools.py)."""
    with pytest.raises(InvalidError) as refused:
        tools.register(
            loaded_tool(),
            register(parameters=finding()),
            org_id=ORG,
            tool_id=TOOL,
            reservation=reservation("get_weather"),
        )
    assert refused.value.details["path"] == "$.parameters.properties.x.type"
    with pytest.raises(InvalidError, match="type array"):
        tools.update(loaded_tool(REGISTERED), UpdateTool(tool_id=TOOL, parameters=finding()))


# Register --------------------------------------------------------------------------------
def register(name: str = "get_weather", **fields: Any) -> RegisterTool:
    defaults: dict[str, Any] = {
        "description": "Weather now",
        "parameters": SCHEMA,
        "tags": ["weather", "web", "weather"],
    }
    return RegisterTool(name=name, **{**defaults, **fields})


def test_register_reserves_the_name_in_the_same_batch() -> None:
    writes = tools.register(
        loaded_tool(), register(), org_id=ORG, tool_id=TOOL, reservation=reservation("get_weather")
    )
    assert writes == [
        Write(
            subjects.tool_name_reservation(ORG, "get_weather"),
            0,
            [ToolNameReserved(name="get_weather", tool_id=TOOL)],
        ),
        Write(tools.subject(ORG, TOOL), 0, [REGISTERED]),  # duplicate tag dropped
    ]


def test_register_writes_the_reservation_at_its_version() -> None:
    """A name released before is reserved again on top of its history, not at 0."""
    writes = tools.register(
        loaded_tool(),
        register(),
        org_id=ORG,
        tool_id=TOOL,
        reservation=reservation("get_weather", version=17),
    )
    assert writes[0].expected == 17


def test_register_a_taken_name_is_a_conflict_naming_the_holder() -> None:
    with pytest.raises(ConflictError, match="'get_weather' already exists") as taken:
        tools.register(
            loaded_tool(),
            register(),
            org_id=ORG,
            tool_id=TOOL,
            reservation=reservation("get_weather", "tool-0", 3),
        )
    assert taken.value.details == {"name": "get_weather", "tool_id": "tool-0"}


def test_register_a_taken_id_is_a_conflict() -> None:
    with pytest.raises(ConflictError, match=f"tool {TOOL} already exists"):
        tools.register(
            loaded_tool(REGISTERED),
            register(),
            org_id=ORG,
            tool_id=TOOL,
            reservation=reservation("get_weather"),
        )


def test_register_an_invalid_schema_is_invalid() -> None:
    with pytest.raises(InvalidError):
        tools.register(
            loaded_tool(),
            register(parameters={"type": "array"}),
            org_id=ORG,
            tool_id=TOOL,
            reservation=reservation("get_weather"),
        )


# Update ----------------------------------------------------------------------------------
def test_update_without_a_rename_writes_the_tool_only() -> None:
    loaded = loaded_tool(REGISTERED)
    writes = tools.update(loaded, UpdateTool(tool_id=TOOL, description="", tags=["x"]))
    assert writes == [
        Write(
            loaded.subject,
            4,
            [
                ToolUpdated(
                    tool_id=TOOL,
                    name="get_weather",
                    description="",
                    parameters=SCHEMA,
                    tags=("x",),
                )
            ],
        )
    ]
    # Naming the current name is no rename.
    writes = tools.update(loaded, UpdateTool(tool_id=TOOL, name="get_weather"))
    assert len(writes) == 1


def test_a_rename_reserves_the_new_name_and_releases_the_old() -> None:
    loaded = loaded_tool(REGISTERED)
    new, old = reservation("weather", version=9), reservation("get_weather", TOOL, 2)
    writes = tools.update(
        loaded,
        UpdateTool(tool_id=TOOL, name="weather"),
        new_reservation=new,
        old_reservation=old,
    )
    assert writes == [
        Write(new.subject, 9, [ToolNameReserved(name="weather", tool_id=TOOL)]),
        Write(old.subject, 2, [ToolNameReleased(name="get_weather", tool_id=TOOL)]),
        Write(
            loaded.subject,
            4,
            [
                ToolUpdated(
                    tool_id=TOOL,
                    name="weather",
                    description="Weather now",
                    parameters=SCHEMA,
                    tags=("weather", "web"),
                )
            ],
        ),
    ]


def test_a_rename_to_a_taken_name_is_a_conflict() -> None:
    with pytest.raises(ConflictError, match="'weather' already exists"):
        tools.update(
            loaded_tool(REGISTERED),
            UpdateTool(tool_id=TOOL, name="weather"),
            new_reservation=reservation("weather", "tool-2", 5),
            old_reservation=reservation("get_weather", TOOL, 2),
        )


def test_a_rename_never_releases_a_name_another_tool_holds() -> None:
    writes = tools.update(
        loaded_tool(REGISTERED),
        UpdateTool(tool_id=TOOL, name="weather"),
        new_reservation=reservation("weather"),
        old_reservation=reservation("get_weather", "tool-other", 8),
    )
    assert [w.subject for w in writes] == [
        subjects.tool_name_reservation(ORG, "weather"),
        tools.subject(ORG, TOOL),
    ]


def test_a_rename_needs_both_reservations() -> None:
    with pytest.raises(ValueError, match="both name reservations"):
        tools.update(loaded_tool(REGISTERED), UpdateTool(tool_id=TOOL, name="weather"))


def test_update_checks_version_liveness_and_schema() -> None:
    loaded = loaded_tool(REGISTERED, version=4)
    with pytest.raises(ConflictError) as stale:
        tools.update(loaded, UpdateTool(tool_id=TOOL, expected_version=3))
    assert stale.value.details == {"expected_version": 3, "current_version": 4}
    with pytest.raises(NotFoundError, match=f"tool {TOOL} does not exist"):
        tools.update(loaded_tool(), UpdateTool(tool_id=TOOL))
    with pytest.raises(NotFoundError):
        tools.update(loaded_tool(REGISTERED, ToolDeleted(tool_id=TOOL)), UpdateTool(tool_id=TOOL))
    with pytest.raises(InvalidError):
        tools.update(loaded, UpdateTool(tool_id=TOOL, parameters={"type": 1}))


# Delete ----------------------------------------------------------------------------------
def test_delete_releases_the_name_in_the_same_batch() -> None:
    loaded = loaded_tool(REGISTERED)
    held = reservation("get_weather", TOOL, 2)
    assert tools.delete(loaded, DeleteTool(tool_id=TOOL), held) == [
        Write(held.subject, 2, [ToolNameReleased(name="get_weather", tool_id=TOOL)]),
        Write(loaded.subject, 4, [ToolDeleted(tool_id=TOOL)]),
    ]


def test_delete_checks_version_and_liveness() -> None:
    held = reservation("get_weather", TOOL, 2)
    with pytest.raises(ConflictError):
        tools.delete(loaded_tool(REGISTERED), DeleteTool(tool_id=TOOL, expected_version=1), held)
    with pytest.raises(NotFoundError):
        tools.delete(
            loaded_tool(REGISTERED, ToolDeleted(tool_id=TOOL)), DeleteTool(tool_id=TOOL), held
        )


# The projection --------------------------------------------------------------------------
def commit(seq: int, subject: str, *events: AnyEvent, at: int = 1_000) -> StoredCommit:
    return StoredCommit(seq, subject, {H_TIME: str(at)}, list(events))


def test_projection_rows_through_a_whole_life() -> None:
    projection = ToolsProjection()
    subject = tools.subject(ORG, TOOL)
    assert projection.project(commit(3, subject, REGISTERED)) == [
        Upsert(
            "tools",
            {
                "tool_id": TOOL,
                "org_id": ORG,
                "name": "get_weather",
                "description": "Weather now",
                "parameters": (
                    '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}'
                ),
                "tags": '["weather","web"]',
                "created_at": 1_000,
                "updated_at": 1_000,
                "version": 3,
            },
        ),
        Delete("tool_tags", {"tool_id": TOOL}),
        Upsert("tool_tags", {"tool_id": TOOL, "tag": "weather", "org_id": ORG}),
        Upsert("tool_tags", {"tool_id": TOOL, "tag": "web", "org_id": ORG}),
    ]
    updated = ToolUpdated(tool_id=TOOL, name="w", description="d", parameters={}, tags=())
    assert projection.project(commit(5, subject, updated, at=2_000)) == [
        Update(
            "tools",
            {"tool_id": TOOL},
            {
                "name": "w",
                "description": "d",
                "parameters": "{}",
                "tags": "[]",
                "updated_at": 2_000,
                "version": 5,
            },
        ),
        Delete("tool_tags", {"tool_id": TOOL}),
    ]
    assert projection.project(commit(6, subject, ToolDeleted(tool_id=TOOL))) == [
        Delete("tools", {"tool_id": TOOL}),
        Delete("tool_tags", {"tool_id": TOOL}),
    ]
    org = commit(7, subjects.event(ORG, "org", ORG), OrgDeleted(org_id=ORG))
    assert projection.project(org) == [
        Delete("tools", {"org_id": ORG}),
        Delete("tool_tags", {"org_id": ORG}),
    ]


def test_projection_reads_tool_and_org_deletion_subjects_only() -> None:
    """Not the name reservations: the tool's own events say its name."""
    assert sorted(ToolsProjection().filter_subjects) == [
        "agentmem.evt.*.org_deletion.*",
        "agentmem.evt.*.tool.*",
    ]
