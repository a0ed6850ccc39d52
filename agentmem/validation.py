"""Where and why a request is ``invalid``, in words a program can act on.

Every ``invalid`` reply carries ``details.path``, the JSON path of the offending field (``$``
for the body as a whole), and ``details.reason``, one of :data:`REASONS`; the message stays
for a person. :func:`decode_error` reads both out of what msgspec raised while decoding a
request; :func:`invalid` is for the checks that handlers make themselves.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

import msgspec

from agentmem.errors import InvalidError

Reason = Literal[
    "malformed_json",  # not JSON at all: truncated, trailing characters, a bare word
    "not_utf8",  # bytes that are not UTF-8
    "wrong_type",  # a JSON type other than the one expected (the body not an object too)
    "missing_field",  # a required field left out; ``path`` names the field
    "unknown_field",  # a field the request does not have; ``path`` names the field
    "out_of_range",  # a number below or above its bounds
    "too_long",  # a string, array or object longer than allowed
    "too_short",  # a string, array or object shorter than allowed (empty, say)
    "pattern",  # a string that does not match its pattern (an id, an email, a tool name)
    "invalid_value",  # the right type, but not a value that is accepted here
    "too_large",  # more bytes than allowed: the request, or a JSON document in it
    "too_deep",  # a JSON document that nests deeper than allowed
    "nul_character",  # a string (or a key) with U+0000 in it
    "unknown_subject",  # no handler serves this subject
]
REASONS: frozenset[str] = frozenset(get_args(Reason))

BODY = "$"


def invalid(message: str, path: str, reason: Reason, **extra: Any) -> InvalidError:
    """An ``invalid`` error that says where (``path``) and why (``reason``)."""
    return InvalidError(message, {"path": path, "reason": reason, **extra})


def field(name: str, parent: str = BODY) -> str:
    """The JSON path of the member ``name`` of the object at ``parent``: ``$.name``, or
    ``$["odd name"]`` when ``name`` is not a plain identifier."""
    if _IDENTIFIER.fullmatch(name):
        return f"{parent}.{name}"
    return f"{parent}[{msgspec.json.encode(name).decode()}]"


# msgspec appends where it failed: " - at `$.a[0].b`", or for a dict key
# " - at `key` in `$.a`". Struct field names are identifiers; "[...]" stands for a dict value.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH = r"\$(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\]|\[\.\.\.\])*"
_WHERE = re.compile(rf" - at (?:`key` in )?`({_PATH})`\Z")
_MEMBER = re.compile(r"Object (missing required|contains unknown) field `(.*)`", re.DOTALL)
_TYPE_ONLY = re.compile(r"Expected `[^`]+`")
_LENGTH = re.compile(r"Expected `\w+` of length ([<>]=)")
_BOUND = re.compile(r"Expected `[\w |]+` [<>]=? ")
_OUT_OF_RANGE = ("Number out of range", "Duration is out of range", "Timestamp is out of range")


def _where(text: str) -> tuple[str, str]:
    """msgspec's message without its location, and that location as a JSON path."""
    match = _WHERE.search(text)
    if match is None:
        return text, BODY
    return text[: match.start()], match.group(1)


def _reason(what: str) -> Reason:
    """The reason for msgspec's ValidationError message (without its location)."""
    if what.startswith("Expected `"):
        if ", got `" in what or _TYPE_ONLY.fullmatch(what):  # "Expected `str`": the type
            return "wrong_type"
        length = _LENGTH.match(what)
        if length is not None:
            return "too_long" if length.group(1) == "<=" else "too_short"
        if " matching regex " in what:
            return "pattern"
        if _BOUND.match(what):
            return "out_of_range"
        if " of at least length " in what:  # a tuple's "of at least length 2, got 1"
            return "too_short"
        if " of at most length " in what:
            return "too_long"
        return "invalid_value"  # "that's a multiple of", "with a timezone component"
    if what.startswith(_OUT_OF_RANGE):
        return "out_of_range"
    return "invalid_value"  # "Invalid enum value 'x'", "Invalid UUID", a __post_init__ error


def decode_error(
    exc: msgspec.ValidationError | msgspec.DecodeError | UnicodeDecodeError,
) -> InvalidError:
    """The ``invalid`` error for a request body that msgspec could not decode."""
    if isinstance(exc, UnicodeDecodeError):
        return invalid(f"malformed JSON: text is not valid UTF-8 ({exc})", BODY, "not_utf8")
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        reason: Reason = "not_utf8" if "UTF-8" in text else "malformed_json"
        return invalid(f"malformed JSON: {text}", BODY, reason)
    what, where = _where(text)
    member = _MEMBER.fullmatch(what)
    if member is not None:
        # The path names the field itself, missing or unknown, not the object around it.
        reason = "missing_field" if member.group(1) == "missing required" else "unknown_field"
        return invalid(f"invalid request: {text}", field(member.group(2), where), reason)
    return invalid(f"invalid request: {text}", where, _reason(what))


def nul_path(data: bytes) -> str:
    """The JSON path of the first string or key in ``data`` that holds U+0000, or ``$``
    when there is none or ``data`` is not JSON. Only asked once a request is refused for it."""
    try:
        document = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return BODY
    stack: list[tuple[str, Any]] = [(BODY, document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return path
        elif isinstance(value, dict):
            members = list(value.items())
            for key, _ in members:
                if "\x00" in key:
                    return field(key, path)
            stack.extend((field(key, path), item) for key, item in reversed(members))
        elif isinstance(value, list):
            stack.extend((f"{path}[{n}]", item) for n, item in reversed(list(enumerate(value))))
    return BODY
