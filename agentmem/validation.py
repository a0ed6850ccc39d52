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
    data: bytes | None = None,
) -> InvalidError:
    """The ``invalid`` error for a request body that msgspec could not decode. Given the body
    ``data``, a body that is not UTF-8 or that escapes half a surrogate pair is named as such
    (msgspec says "JSON is malformed: invalid character" or "Input data was truncated")."""
    if not isinstance(exc, msgspec.ValidationError) and data is not None:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            return _not_utf8(bad.start)
        lone = _lone_surrogate(data)
        if lone is not None:
            start, escape = lone
            return invalid(
                f"malformed JSON: {escape} at byte {start} is half of a UTF-16 surrogate pair "
                "(a lone surrogate); a string must be valid Unicode: escape a character above "
                "U+FFFF as a pair (\\ud83c\\udf4c) or send it as UTF-8",
                _path_at(data, start),
                "malformed_json",
            )
    if isinstance(exc, UnicodeDecodeError):
        return _not_utf8(exc.start)
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        if "UTF-8" in text:
            return invalid(f"malformed JSON: {text}", BODY, "not_utf8")
        return invalid(f"malformed JSON: {text}", BODY, "malformed_json")
    what, where = _where(text)
    member = _MEMBER.fullmatch(what)
    if member is not None:
        # The path names the field itself, missing or unknown, not the object around it.
        reason: Reason = (
            "missing_field" if member.group(1) == "missing required" else "unknown_field"
        )
        return invalid(f"invalid request: {text}", field(member.group(2), where), reason)
    return invalid(f"invalid request: {text}", where, _reason(what))


def _not_utf8(start: int) -> InvalidError:
    return invalid(
        f"malformed JSON: Invalid UTF-8 encoded string (byte {start}); send the body as UTF-8",
        BODY,
        "not_utf8",
    )


# A \\uXXXX escape: a backslash that is not itself escaped (an even run of backslashes
# before it), "u", four hex digits. Only looked for once a body has failed to decode.
_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*(\\u([0-9A-Fa-f]{4}))")


def _lone_surrogate(data: bytes) -> tuple[int, str] | None:
    """Where the first \\uD800-\\uDFFF escape in ``data`` that is not half of a pair
    starts, and the escape itself; None when there is none."""
    pending: re.Match[bytes] | None = None  # a high surrogate waiting for its low half
    for match in _ESCAPE.finditer(data):
        unit = int(match.group(2), 16)
        if pending is not None:
            if 0xDC00 <= unit <= 0xDFFF and match.start(1) == pending.end(1):
                pending = None
                continue
            break
        if 0xD800 <= unit <= 0xDBFF:
            pending = match
        elif 0xDC00 <= unit <= 0xDFFF:
            return match.start(1), match.group(1).decode()
    if pending is not None:
        return pending.start(1), pending.group(1).decode()
    return None


def _path_at(data: bytes, start: int) -> str:
    """The JSON path of the string or key that holds the escape at byte ``start``, or ``$``:
    the escape is swapped for an escaped NUL of the same length and looked for as one."""
    marked = data[:start] + b"\\u0000" + data[start + 6 :]
    if b"\\u0000" in data or b"\x00" in data:
        return BODY
    try:
        path = nul_path(_without_lone_surrogates(marked))
    except RecursionError:
        return BODY
    marker = path.find("\\u0000")
    if marker != -1:  # a key: name the object that holds it
        path = path[: path.rfind('["', 0, marker)]
    return path


def _without_lone_surrogates(data: bytes) -> bytes:
    """``data`` with every lone surrogate escape replaced by \\ufffd, so that it decodes."""
    while (lone := _lone_surrogate(data)) is not None:
        start = lone[0]
        data = data[:start] + b"\\ufffd" + data[start + 6 :]
    return data


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
