"""The filters of the memory reads as SQL, once for every read that takes them.

``condition`` turns a ``MemoryFilter`` (``agentmem.domain.memory_filter``) into one
``Condition`` on the memory rows, named ``t.<column>``: ``memory.list`` reads it from the
table, ``memory.search`` hands it to ``Store.search`` (checked inside the full-text query,
before its limits), ``memory.stats`` counts under it, and a read of another kind (vector
candidates) can take it as it is. Values travel only as parameters: a metadata key is a
parameter too (a JSON path), never SQL text.

The metadata filter on each engine (``metadata_sql``), with the meaning that
``agentmem.domain.metadata_filter`` documents:

- SQLite: ``json_type(t.metadata, ?)`` and ``json_extract(t.metadata, ?)`` at the path
  ``$."a"."b"``; the type is checked with the value, so that the string "1" never equals
  the number 1 and ``true`` never equals 1 (json_extract alone gives 1 for both).
- Postgres: the column holds JSON text; ``(t.metadata::jsonb #> ?::text[])`` at the path
  ``{a,b}``. Equality is jsonb equality (typed; 1 = 1.0); order compares jsonb numbers, or
  strings ``COLLATE "C"`` (code point order, as SQLite's binary compare of UTF-8).

Each comparison is wrapped in ``COALESCE(..., FALSE)``: a missing key makes it false, never
NULL, so that ``not``, ``ne`` and ``nin`` (``not`` of ``eq`` and ``in``) hold for a memory
without the key on both engines.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from agentmem.domain.memory_filter import HALF_LIFE_DAYS, MemoryFilter
from agentmem.domain.metadata_filter import AllOf, AnyOf, Compare, Node, Not, Op, Scalar
from agentmem.store import Condition, Dialect

DAY_MS = 86_400_000
_ORDER = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def metadata_sql(node: Node, dialect: Dialect, column: str = "t.metadata") -> Condition:
    """The filter as one boolean SQL expression over the JSON text in ``column``."""
    match node:
        case AllOf(parts=parts) | AnyOf(parts=parts):
            joiner = " AND " if isinstance(node, AllOf) else " OR "
            each = [metadata_sql(p, dialect, column) for p in parts]
            return Condition(
                "(" + joiner.join(c.sql for c in each) + ")",
                tuple(a for c in each for a in c.args),
            )
        case Not(part=part):
            inner = metadata_sql(part, dialect, column)
            return Condition(f"(NOT {inner.sql})", inner.args)
        case Compare(op="ne" | "nin"):
            # ``not`` of the comparison made false for a missing key (never NULL first).
            positive: Op = "eq" if node.op == "ne" else "in"
            return metadata_sql(Not(Compare(node.path, positive, node.value)), dialect, column)
        case Compare():
            compare = _sqlite_compare if dialect == "sqlite" else _postgres_compare
            sql, args = compare(node, column)
            return Condition(f"COALESCE({sql}, FALSE)", tuple(args))
    raise TypeError(f"not a filter node: {node!r}")


# SQLite ------------------------------------------------------------------------------------
def _sqlite_path(path: tuple[str, ...]) -> str:
    return "$" + "".join(f'."{key}"' for key in path)


def _sqlite_is(value: Scalar, kind: str, got: str) -> tuple[str, list[Any]]:
    """``kind`` (a json_type) and ``got`` (the extracted value) equal to ``value``."""
    if value is None:
        return f"{kind} = 'null'", []
    if isinstance(value, bool):
        return f"{kind} = '{'true' if value else 'false'}'", []
    if isinstance(value, str):
        return f"({kind} = 'text' AND {got} = ?)", [value]
    return f"({kind} IN ('integer', 'real') AND {got} = ?)", [value]


def _sqlite_compare(node: Compare, column: str) -> tuple[str, list[Any]]:
    path = _sqlite_path(node.path)
    kind, got = f"json_type({column}, ?)", f"json_extract({column}, ?)"
    op, value = node.op, node.value

    def equal(v: Scalar) -> tuple[str, list[Any]]:
        sql, values = _sqlite_is(v, kind, got)
        # ``kind`` takes the path; ``got`` too, when a value is compared.
        return sql, [path, path, *values] if values else [path]

    if op == "eq":
        assert not isinstance(value, tuple)
        return equal(value)
    if op == "in":
        # One bound JSON array, each element matched as ``_sqlite_is`` matches one value: a
        # list spelled out as one OR term per value made SQLite's statement compile
        # quadratic in the filter's values (64 lists of 100 took seconds, and a statement
        # being compiled cannot be stopped at the read's time limit).
        assert isinstance(value, tuple)
        sql = (
            f"EXISTS (SELECT 1 FROM (SELECT {kind} AS k, {got} AS g) m, json_each(?) v WHERE"
            " CASE WHEN v.type IN ('integer', 'real') THEN m.k IN ('integer', 'real')"
            " AND m.g = v.value WHEN v.type = 'text' THEN m.k = 'text' AND m.g = v.value"
            " ELSE m.k = v.type END)"
        )
        return sql, [path, path, _json(list(value))]
    if op in _ORDER:
        types = "= 'text'" if isinstance(value, str) else "IN ('integer', 'real')"
        return f"({kind} {types} AND {got} {_ORDER[op]} ?)", [path, path, value]
    # contains: a substring of a string, or an element of an array.
    assert not isinstance(value, tuple)
    element, element_args = _sqlite_is(value, "e.type", "e.value")
    array = (
        f"({kind} = 'array' AND EXISTS (SELECT 1 FROM json_each({column}, ?) e WHERE {element}))"
    )
    if isinstance(value, str):
        text = f"({kind} = 'text' AND instr({got}, ?) > 0)"
        return f"({text} OR {array})", [path, path, value, path, path, *element_args]
    return array, [path, path, *element_args]


# Postgres ----------------------------------------------------------------------------------
def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _postgres_compare(node: Compare, column: str) -> tuple[str, list[Any]]:
    path = list(node.path)
    got = f"({column}::jsonb #> ?::text[])"
    op, value = node.op, node.value
    if op == "eq":
        return f"{got} = ?::jsonb", [path, _json(value)]
    if op == "in":
        assert isinstance(value, tuple)
        return f"{got} = ANY(?::jsonb[])", [path, [_json(v) for v in value]]
    if op in _ORDER:
        if isinstance(value, str):
            sql = (
                f"(jsonb_typeof({got}) = 'string' AND ({got} #>> '{{}}') COLLATE \"C\" "
                f"{_ORDER[op]} ?)"
            )
            return sql, [path, path, value]
        sql = f"(jsonb_typeof({got}) = 'number' AND {got} {_ORDER[op]} ?::jsonb)"
        return sql, [path, path, _json(value)]
    array = f"(jsonb_typeof({got}) = 'array' AND {got} @> ?::jsonb)"
    if isinstance(value, str):
        text = f"(jsonb_typeof({got}) = 'string' AND strpos({got} #>> '{{}}', ?) > 0)"
        return f"({text} OR {array})", [path, path, value, path, path, _json([value])]
    return array, [path, path, _json([value])]


# Decay -------------------------------------------------------------------------------------
def decayed_sql(at: int) -> Condition:
    """A memory's importance (in millionths) decayed to the time ``at``, as an SQL
    expression: halved every half-life of its type since it was last written
    (``updated_at``), never raised for a time before that."""
    rates = " ".join(
        f"WHEN '{memory_type}' THEN {math.log(2) / (days * DAY_MS)!r}"
        for memory_type, days in HALF_LIFE_DAYS.items()
    )
    sql = (
        f"(CASE WHEN ? > t.updated_at THEN t.importance * exp(-CAST(? - t.updated_at AS "
        f"DOUBLE PRECISION) * (CASE t.memory_type {rates} ELSE 0.0 END)) "
        f"ELSE CAST(t.importance AS DOUBLE PRECISION) END)"
    )
    return Condition(sql, (at, at))


# Every filter ------------------------------------------------------------------------------
def _state_sql(states: tuple[str, ...], now: int, args: list[Any]) -> str:
    """One condition for the states asked. A memory whose ``expires_at`` has passed counts
    as expired only, before the sweep's ``memory.expired`` as after (which expires a
    superseded memory too)."""
    parts = []
    not_expired = "(t.expires_at IS NULL OR t.expires_at > ?)"
    for state in dict.fromkeys(states):
        if state == "expired":
            parts.append("(t.state = 'expired' OR t.expires_at <= ?)")
            args.append(now)
        else:
            parts.append(f"(t.state = ? AND {not_expired})")
            args += [state, now]
    return "(" + " OR ".join(parts) + ")"


def _known_sql(f: MemoryFilter, earlier: bool, args: list[Any]) -> str:
    """The versions current at the point ``known_at_seq`` or ``known_at`` names: a
    ``memories`` row since its last change; a ``memory_versions`` row (``earlier``) from
    its ``recorded_seq`` until the change that replaced it."""
    by_seq = f.known_at_seq is not None
    at = f.known_at_seq if f.known_at_seq is not None else f.known_at
    since = "t.version" if by_seq else "t.updated_at"
    until = "t.recorded_until_seq" if by_seq else "t.recorded_until_at"
    if earlier:
        since = "t.recorded_seq" if by_seq else "t.recorded_at"
        args += [at, at]
        return f"{since} <= ? AND {until} > ?"
    args.append(at)
    return f"{since} <= ?"


def condition(
    memory_filter: MemoryFilter,
    dialect: Dialect,
    now: int,
    with_scope: bool = True,
    earlier: bool = False,
) -> Condition:
    """Every filter of ``memory_filter`` but its organization as one condition on ``t``:
    the ``memories`` table, or ``memory_versions`` (``earlier``: a read of what was known
    at an earlier point, ``MemoryFilter.past``, reads both). ``with_scope`` False leaves out
    the scope columns and the type (a full-text search puts those inside its index's
    match)."""
    f = memory_filter
    where: list[str] = []
    args: list[Any] = []
    if with_scope:
        for column, value in f.scope.items():
            where.append(f"t.{column} = ?")
            args.append(value)
        if f.memory_type is not None:
            where.append("t.memory_type = ?")
            args.append(f.memory_type)
    where.append(_state_sql(f.states, now, args))
    if f.tags_any:
        marks = ", ".join("?" for _ in f.tags_any)
        if f.past:
            # A version's tags are in its row (memory_tags holds the current ones).
            elements = (
                "json_each(t.tags) g WHERE g.value"
                if dialect == "sqlite"
                else "jsonb_array_elements_text(t.tags::jsonb) g(tag) WHERE g.tag"
            )
            where.append(f"EXISTS (SELECT 1 FROM {elements} IN ({marks}))")
            args += f.tags_any
        else:
            where.append(
                f"t.memory_id IN (SELECT g.memory_id FROM memory_tags g WHERE g.org_id = ? "
                f"AND g.tag IN ({marks}))"
            )
            args += [f.org_id, *f.tags_any]
    if f.past:
        where.append(_known_sql(f, earlier, args))
    for sql, bound in (
        ("t.importance >= ?", f.min_importance),
        ("t.importance <= ?", f.max_importance),
        ("t.created_at >= ?", f.created_after),
        ("t.created_at < ?", f.created_before),
        ("t.valid_from >= ?", f.valid_from_after),
        ("t.valid_from < ?", f.valid_from_before),
    ):
        if bound is not None:
            where.append(sql)
            args.append(bound)
    if f.as_of is not None:
        where.append("t.valid_from <= ? AND (t.valid_to IS NULL OR t.valid_to > ?)")
        args += [f.as_of, f.as_of]
    if f.metadata is not None:
        metadata = metadata_sql(f.metadata, dialect)
        where.append(metadata.sql)
        args += metadata.args
    return Condition(" AND ".join(where), tuple(args))
