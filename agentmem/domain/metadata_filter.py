"""The metadata filter language of ``memory.list``, ``memory.search`` and ``memory.stats``.

A filter is a JSON object, read here into a small tree that a store turns into SQL with
parameters (``agentmem.projections.memory_filters``); nothing of it is ever spliced into SQL
text. The grammar, with the operators mem0 users ask for:

    filter    := {"and": [filter, ...]} | {"or": [filter, ...]} | {"not": filter}
               | {key: scalar}                      # equality
               | {key: {op: value, ...}}            # every op must hold
               | {key1: ..., key2: ..., ...}        # every member must hold
    op        := eq | ne | gt | gte | lt | lte | in | nin | contains
    key       := a metadata key, [A-Za-z0-9_-]{1,64}; dots reach into nested objects
                 ("address.city"), at most 4 deep
    scalar    := string | number | true | false | null

``and`` / ``or`` / ``not`` (any case) are the logic words; a metadata key cannot be one of
them. Meaning, the same on both stores:

- ``eq`` holds when the key is present with an equal value of the same JSON type (1 and 1.0
  are equal numbers; "1" is not the number 1). ``ne`` is ``not eq``: it holds for a memory
  without the key. ``in`` is ``eq`` to any of a list, ``nin`` is ``not in``.
- ``gt`` ``gte`` ``lt`` ``lte`` take a number or a string; they hold only for a value of the
  same type (numbers by value, strings by code point order).
- ``contains`` holds for a string that holds the given string, or for an array that holds
  an element equal to the given scalar.

Bounds: at most ``MAX_DEPTH`` levels of and/or/not, ``MAX_CONDITIONS`` comparisons, ``MAX_IN``
values in one ``in``, ``MAX_STRING`` characters in a string value. A filter outside the
grammar or the bounds is refused ``invalid`` with the JSON path of the offending part.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from agentmem.validation import field, invalid

MAX_DEPTH = 5
MAX_CONDITIONS = 64
MAX_IN = 100
MAX_STRING = 1_000
MAX_KEY_DEPTH = 4
KEY_PART = re.compile(r"[A-Za-z0-9_\-]{1,64}")

Scalar = str | int | float | bool | None
Op = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "contains"]
OPS: tuple[Op, ...] = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "contains")
LOGIC = ("and", "or", "not")


@dataclass(frozen=True)
class Compare:
    """One comparison of the value at ``path`` (keys from the metadata object down)."""

    path: tuple[str, ...]
    op: Op
    value: Scalar | tuple[Scalar, ...]


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    part: Node


Node = Compare | AllOf | AnyOf | Not


class _Budget:
    def __init__(self) -> None:
        self.conditions = 0

    def spend(self, path: str) -> None:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise invalid(
                f"a metadata filter holds at most {MAX_CONDITIONS} comparisons",
                path,
                "too_long",
                limit=MAX_CONDITIONS,
            )


def parse(document: Any, path: str = "$.metadata_filter") -> Node:
    """The tree of a filter, or ``invalid`` with the path of what is wrong."""
    return _filter(document, path, 0, _Budget())


def _filter(document: Any, path: str, depth: int, budget: _Budget) -> Node:
    if not isinstance(document, dict):
        raise invalid("a metadata filter is a JSON object", path, "wrong_type")
    if not document:
        raise invalid("a metadata filter needs at least one condition", path, "too_short")
    parts = [_member(str(k), v, path, depth, budget) for k, v in document.items()]
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def _member(key: str, value: Any, path: str, depth: int, budget: _Budget) -> Node:
    word = key.lower()
    here = field(key, path)
    if word in LOGIC:
        if depth >= MAX_DEPTH:
            raise invalid(
                f"a metadata filter nests and/or/not at most {MAX_DEPTH} deep",
                here,
                "too_deep",
                limit=MAX_DEPTH,
            )
        if word == "not":
            return Not(_filter(value, here, depth + 1, budget))
        if not isinstance(value, list):
            raise invalid(f"{key} takes a list of filters", here, "wrong_type")
        if not 1 <= len(value) <= MAX_CONDITIONS:
            raise invalid(
                f"{key} takes 1 to {MAX_CONDITIONS} filters",
                here,
                "too_short" if not value else "too_long",
            )
        parts = tuple(_filter(v, f"{here}[{n}]", depth + 1, budget) for n, v in enumerate(value))
        return AllOf(parts) if word == "and" else AnyOf(parts)
    key_path = _key(key, here)
    if isinstance(value, dict):
        if not value:
            raise invalid("an operator object needs at least one operator", here, "too_short")
        compares = [_compare(key_path, op, v, field(op, here), budget) for op, v in value.items()]
        return compares[0] if len(compares) == 1 else AllOf(tuple(compares))
    return _compare(key_path, "eq", value, here, budget)


def _key(key: str, path: str) -> tuple[str, ...]:
    parts = tuple(key.split("."))
    if len(parts) > MAX_KEY_DEPTH or not all(KEY_PART.fullmatch(p) for p in parts):
        raise invalid(
            f"a metadata key is 1 to {MAX_KEY_DEPTH} dot-separated names of 1 to 64 letters, "
            "digits, '_' or '-'",
            path,
            "pattern",
        )
    return parts


def _compare(key: tuple[str, ...], op: Any, value: Any, path: str, budget: _Budget) -> Compare:
    budget.spend(path)
    if op not in OPS:
        raise invalid(
            f"unknown operator {op!r}: one of {', '.join(OPS)}",
            path,
            "invalid_value",
            allowed=list(OPS),
        )
    if op in ("in", "nin"):
        if not isinstance(value, list):
            raise invalid(f"{op} takes a list of values", path, "wrong_type")
        if not 1 <= len(value) <= MAX_IN:
            raise invalid(
                f"{op} takes 1 to {MAX_IN} values", path, "too_short" if not value else "too_long"
            )
        return Compare(key, op, tuple(_scalar(v, f"{path}[{n}]") for n, v in enumerate(value)))
    scalar = _scalar(value, path)
    if op in ("gt", "gte", "lt", "lte") and (
        scalar is None or isinstance(scalar, bool) or not isinstance(scalar, str | int | float)
    ):
        raise invalid(f"{op} compares with a number or a string", path, "wrong_type")
    if op == "contains" and scalar is None:
        raise invalid("contains takes a string, a number or a boolean", path, "wrong_type")
    return Compare(key, op, scalar)


def _scalar(value: Any, path: str) -> Scalar:
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise invalid(f"a filter's string is at most {MAX_STRING} characters", path, "too_long")
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid("a filter's number must be finite", path, "invalid_value")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise invalid("a filter's integer fits in 64 bits", path, "out_of_range")
    if value is None or isinstance(value, bool | int | float):
        return value
    raise invalid("a filter's value is a string, a number, true, false or null", path, "wrong_type")
