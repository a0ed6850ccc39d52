"""JSON documents that clients hand us whole: JSON merge patch (RFC 7396), and the bounds that
keep one document from costing more than its share (size when encoded, nesting depth).

Everything here is pure and works on the values msgspec decodes JSON into (dict, list, str,
int, float, bool, None).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import msgspec
from msgspec import inspect

from agentmem.validation import field, invalid

# Deeper than any document a person or a model writes on purpose; shallow enough that the
# recursive code that reads documents (the merge below, a JSON Schema check) stays far from
# Python's recursion limit.
MAX_DEPTH = 64
# A request deeper than this is refused without looking for the field that is too deep:
# finding it decodes the request's members, and msgspec's decoder recurses (it raises
# RecursionError near 1,000 levels).
_SEARCHABLE_DEPTH = 512

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


# A JSON string, escapes included (the "unrolled loop" form: far faster than an alternation).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_depth(data: bytes) -> int:
    """How deeply arrays and objects nest in the JSON text ``data`` (``depth`` of what it
    decodes to), counted on the bytes, without decoding: brackets inside strings do not
    count. Text that is not JSON gets a number too (what its brackets say).

    The strings are cut out and the brackets summed, all in C but one ``max`` over the
    brackets: a few ms for 256 KiB of nothing but brackets, far less for a usual document.
    """
    if b"[" not in data and b"{" not in data:
        return 0
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = memoryview(brackets.translate(_STEPS)).cast("b")
    return max(0, max(itertools.accumulate(steps)))


def exceeds(data: bytes, limit: int) -> bool:
    """Whether the JSON text ``data`` nests deeper than ``limit``; free when it holds no more
    than ``limit`` opening brackets, as almost every request does."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    return json_depth(data) > limit


def _structured(info: inspect.Type) -> bool:
    """Whether a request field of this type is part of the request's own shape (a Struct, or
    an array or union holding one) rather than a free-form JSON document."""
    if isinstance(info, inspect.StructType):
        return True
    if isinstance(info, inspect.ListType | inspect.SetType | inspect.FrozenSetType):
        return _structured(info.item_type)
    if isinstance(info, inspect.VarTupleType):
        return _structured(info.item_type)
    if isinstance(info, inspect.UnionType):
        return any(_structured(t) for t in info.types)
    return False


def _too_deep_at(
    raw: bytes, info: inspect.Type, path: str, level: int = 0
) -> tuple[str, int, int] | None:
    """Where in ``raw`` (a request, or part of one, of type ``info``, ``level`` containers
    down) a free-form document nests deeper than ``MAX_DEPTH``: its path, depth and level;
    None when none does."""
    nested = json_depth(raw) if exceeds(raw, MAX_DEPTH) else 0
    if nested <= MAX_DEPTH:
        return None
    if not _structured(info):
        return path, nested, level
    if isinstance(info, inspect.UnionType):
        info = next(t for t in info.types if _structured(t))
    try:
        if isinstance(info, inspect.StructType):
            types = {f.encode_name: f.type for f in info.fields}
            members = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
            for name, value in members.items():
                inner = types.get(name, inspect.AnyType())  # an unknown field: anything
                found = _too_deep_at(bytes(value), inner, field(name, path), level + 1)
                if found is not None:
                    return found
        else:
            item = info.item_type  # type: ignore[attr-defined]
            items = msgspec.json.decode(raw, type=list[msgspec.Raw])
            for n, value in enumerate(items):
                found = _too_deep_at(bytes(value), item, f"{path}[{n}]", level + 1)
                if found is not None:
                    return found
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return path, nested, level  # not the shape it should be: too deep as a whole
    return None  # deep, but no document in it deeper than allowed


_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_CLOSER = {ord("["): ord("]"), ord("{"): ord("}")}


def _cut(data: bytes, limit: int) -> bytes:
    """``data`` with the first value that would nest deeper than ``limit`` replaced by ``0``
    (and the containers open there closed): shallow enough for msgspec to look into, and
    the too-deep part still where it was. Only for a request being refused."""
    open_: list[int] = []
    for token in _TOKEN.finditer(data):
        at = token.start()
        byte = data[at]
        if byte in _CLOSER:
            if len(open_) == limit:
                return data[:at] + b"0" + bytes(reversed(open_))
            open_.append(_CLOSER[byte])
        elif byte != ord('"') and open_:
            open_.pop()
    return data


def check_request_depth(data: bytes, request_type: type[Any]) -> None:
    """Raise ``invalid`` (reason ``too_deep``) when a free-form JSON document in the request
    body ``data`` (``state``, ``metadata``, a tool's ``parameters``, a field the request
    does not even have) nests deeper than ``MAX_DEPTH``, before anything decodes it.
    ``details.path`` names the document.

    Free (two counts) for a request with no more than ``MAX_DEPTH`` brackets; a few ms for
    256 KiB of brackets.
    """
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return
    nested = json_depth(data)
    if nested <= MAX_DEPTH:
        return
    # msgspec's decoder recurses (RecursionError near 1,000 levels): a request too deep to
    # look into is cut to a depth it can, to find the document that is too deep.
    cut = nested > _SEARCHABLE_DEPTH
    found = _too_deep_at(
        _cut(data, _SEARCHABLE_DEPTH) if cut else data, inspect.type_info(request_type), "$"
    )
    if found is None:
        return
    path, depth_, level = found
    if cut and level + depth_ >= _SEARCHABLE_DEPTH:
        depth_ = nested - level  # the document that was cut: its real depth
    what = "the request" if path == "$" else path
    raise invalid(
        f"{what} nests {depth_} levels deep; a JSON document in a request may nest at most "
        f"{MAX_DEPTH} levels",
        path,
        "too_deep",
        depth=depth_,
        max_depth=MAX_DEPTH,
    )


def check_bounds(
    value: Any, what: str, max_bytes: int | None, max_depth: int = MAX_DEPTH, *, path: str
) -> None:
    """Raise ``invalid`` when ``value`` nests deeper than ``max_depth`` or encodes to more than
    ``max_bytes`` (None: no bound of its own); ``what`` names it in the message ("state",
    "parameters"), ``path`` is where it is in the request ("$.state").

    The size first, then the depth, measured on the encoded bytes (``json_depth``): far
    cheaper than walking the values. A value too deep for msgspec to encode is measured by
    the walk (``depth``); no request gets here with one, the router refuses it first."""
    try:
        encoded = _encoder.encode(value)
    except RecursionError:
        nested = depth(value)
    else:
        size = len(encoded)
        if max_bytes is not None and size > max_bytes:
            raise invalid(
                f"{what} is {size} bytes as JSON; at most {max_bytes} are allowed",
                path,
                "too_large",
                size=size,
                max_bytes=max_bytes,
            )
        if not exceeds(encoded, max_depth):
            return
        nested = json_depth(encoded)
    if nested > max_depth:
        raise invalid(
            f"{what} nests {nested} levels deep; at most {max_depth} are allowed",
            path,
            "too_deep",
            depth=nested,
            max_depth=max_depth,
        )
