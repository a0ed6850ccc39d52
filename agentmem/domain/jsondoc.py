"""JSON documents that clients hand us whole: JSON merge patch (RFC 7396), and the bounds that
keep one document from costing more than its share (size when encoded, nesting depth).

Everything here is pure and works on the values msgspec decodes JSON into (dict, list, str,
int, float, bool, None).
"""

from __future__ import annotations

from typing import Any

import msgspec

from agentmem.validation import invalid

# Deeper than any document a person or a model writes on purpose; shallow enough that the
# recursive code that reads documents (the merge below, a JSON Schema check) stays far from
# Python's recursion limit.
MAX_DEPTH = 64

_encoder = msgspec.json.Encoder()


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with ``patch`` applied, as RFC 7396 section 2 defines it.

    A patch that is an object changes only the members it names: ``null`` removes one, an
    object merges into it, anything else replaces it. A patch that is not an object replaces
    the target whole. Neither argument is changed (the result may share the parts the
    patch leaves alone, so treat documents as values).
    """
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


def depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value``: 0 for a scalar, 1 for ``{}``.

    Iterative, so a document deeper than Python's recursion limit is measured, not crashed on.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level + 1)
        stack.extend((child, level + 1) for child in children)
    return deepest


def encoded_size(value: Any) -> int:
    return len(_encoder.encode(value))


def check_bounds(
    value: Any, what: str, max_bytes: int, max_depth: int = MAX_DEPTH, *, path: str
) -> None:
    """Raise ``invalid`` when ``value`` nests deeper than ``max_depth`` or encodes to more than
    ``max_bytes``; ``what`` names it in the message ("state", "parameters"), ``path`` is where
    it is in the request ("$.state")."""
    nested = depth(value)
    if nested > max_depth:
        raise invalid(
            f"{what} nests {nested} levels deep; at most {max_depth} are allowed",
            path,
            "too_deep",
            depth=nested,
            max_depth=max_depth,
        )
    size = encoded_size(value)
    if size > max_bytes:
        raise invalid(
            f"{what} is {size} bytes as JSON; at most {max_bytes} are allowed",
            path,
            "too_large",
            size=size,
            max_bytes=max_bytes,
        )
