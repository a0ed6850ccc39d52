"""Pure rules: what an ``invalid`` reply says in ``details.path`` and ``details.reason`` for a
body that does not decode, and where a NUL character is. No NATS: the router raises exactly
what ``decode_error`` returns (tests/test_bad_input.py checks that end to end)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import pytest

from agentmem import validation
from agentmem.commands import AppendMessage, AppendMessages, CreateOrg, RegisterUser
from agentmem.errors import InvalidError
from agentmem.queries import GetHistory, ListMessages
from agentmem.validation import REASONS, decode_error, field, nul_path


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    x: Annotated[int, msgspec.Meta(ge=0, le=5)]
    kind: Literal["a", "b"] = "a"


class Sample(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=3, pattern="^[a-z]+$")] = "a"
    n: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    f: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    step: Annotated[int, msgspec.Meta(multiple_of=2)] = 2
    tags: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(max_length=2)
    ] = []
    inner: list[Inner] = []
    by_key: dict[str, Inner] = {}
    short_keys: dict[Annotated[str, msgspec.Meta(max_length=2)], int] = {}
    maybe: Annotated[int, msgspec.Meta(ge=0)] | None = None
    pair: tuple[int, int] = (0, 0)
    any_value: Any = None


def decoded(payload: bytes, type_: type[Any] = Sample) -> InvalidError:
    try:
        msgspec.json.Decoder(type_).decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        return decode_error(exc)
    raise AssertionError(f"{payload!r} decoded")


CASES = [
    # Not JSON, or not UTF-8.
    (b"{", "$", "malformed_json"),
    (b'{"name": "a"} x', "$", "malformed_json"),
    (b'{"a" 1}', "$", "malformed_json"),
    (b"{'name': 'a'}", "$", "malformed_json"),
    (b"not json", "$", "malformed_json"),
    (b'{"name": "a\\q"}', "$", "malformed_json"),
    (b'{"name": "\\ud800\\u0041"}', "$", "malformed_json"),
    (b"\xff\xfe{}", "$", "malformed_json"),
    (b'{"name": "\xff"}', "$", "not_utf8"),
    (b'{"\xff": 1}', "$", "not_utf8"),
    (b'{"any_value": {"k": "ab\xc3"}}', "$", "not_utf8"),
    # The body itself of the wrong type.
    (b"[]", "$", "wrong_type"),
    (b"null", "$", "wrong_type"),
    (b'"x"', "$", "wrong_type"),
    # A field of the wrong type, at any depth.
    (b'{"name": 5}', "$.name", "wrong_type"),
    (b'{"n": 1.5}', "$.n", "wrong_type"),
    (b'{"n": "1"}', "$.n", "wrong_type"),
    (b'{"maybe": "1"}', "$.maybe", "wrong_type"),
    (b'{"tags": "a"}', "$.tags", "wrong_type"),
    (b'{"tags": [1]}', "$.tags[0]", "wrong_type"),
    (b'{"inner": [{"x": 1}, {"x": "2"}]}', "$.inner[1].x", "wrong_type"),
    (b'{"inner": [{"x": 1, "kind": 3}]}', "$.inner[0].kind", "wrong_type"),
    (b'{"by_key": {"k": {"x": true}}}', "$.by_key[...].x", "wrong_type"),
    # Missing and unknown fields: the path names the field, not the object around it.
    (b'{"inner": [{}]}', "$.inner[0].x", "missing_field"),
    (b'{"bogus": 1}', "$.bogus", "unknown_field"),
    (b'{"inner": [{"x": 1, "y": 2}]}', "$.inner[0].y", "unknown_field"),
    (b'{"odd name": 1}', '$["odd name"]', "unknown_field"),
    (b'{"a`b": 1}', '$["a`b"]', "unknown_field"),
    (b'{"a\\nb": 1}', '$["a\\nb"]', "unknown_field"),
    (b'{"x - at `$.name`": 1}', '$["x - at `$.name`"]', "unknown_field"),
    # Numbers out of their bounds.
    (b'{"n": 0}', "$.n", "out_of_range"),
    (b'{"n": 6}', "$.n", "out_of_range"),
    (b'{"n": 99999999999999999999999}', "$.n", "out_of_range"),
    (b'{"n": 1e400}', "$.n", "out_of_range"),
    (b'{"f": 0}', "$.f", "out_of_range"),
    (b'{"maybe": -1}', "$.maybe", "out_of_range"),
    (b'{"inner": [{"x": 9}]}', "$.inner[0].x", "out_of_range"),
    (b'{"by_key": {"k": {"x": -1}}}', "$.by_key[...].x", "out_of_range"),
    # Too long, too short.
    (b'{"name": "abcd"}', "$.name", "too_long"),
    (b'{"name": ""}', "$.name", "too_short"),
    (b'{"tags": ["a", "b", "c"]}', "$.tags", "too_long"),
    (b'{"tags": [""]}', "$.tags[0]", "too_short"),
    (b'{"short_keys": {"abc": 1}}', "$.short_keys", "too_long"),
    (b'{"pair": [1]}', "$.pair", "invalid_value"),
    # Patterns and other values.
    (b'{"name": "AB"}', "$.name", "pattern"),
    (b'{"inner": [{"x": 1, "kind": "c"}]}', "$.inner[0].kind", "invalid_value"),
    (b'{"step": 3}', "$.step", "invalid_value"),
]


@pytest.mark.parametrize(("payload", "path", "reason"), CASES)
def test_a_body_that_does_not_decode_says_where_and_why(
    payload: bytes, path: str, reason: str
) -> None:
    error = decoded(payload)
    assert error.details == {"path": path, "reason": reason}, (error.message, error.details)
    assert reason in REASONS
    # The message for a person stays what it was: msgspec's words behind a prefix.
    prefix = "invalid request: " if reason not in ("malformed_json", "not_utf8") else "malformed"
    assert error.message.startswith(prefix), error.message


USER = {"org_id": "o1", "name": "A", "email": "a@b.co", "password": "12345678"}
TO = {"session_id": "s1", "agent_id": "a1"}


@pytest.mark.parametrize(
    ("type_", "body", "path", "reason"),
    [
        (CreateOrg, {}, "$.name", "missing_field"),
        (CreateOrg, {"name": "Acme", "colour": "red"}, "$.colour", "unknown_field"),
        (CreateOrg, {"name": "Acme", "command_id": "a.b"}, "$.command_id", "pattern"),
        (RegisterUser, {**USER, "email": "a@b"}, "$.email", "pattern"),
        (RegisterUser, {**USER, "email": "x" * 250 + "@e.com"}, "$.email", "too_long"),
        (RegisterUser, {**USER, "password": "short"}, "$.password", "too_short"),
        (RegisterUser, {**USER, "roles": ["root"]}, "$.roles[0]", "invalid_value"),
        (RegisterUser, {**USER, "roles": []}, "$.roles", "too_short"),
        (GetHistory, {"aggregate": "apikey", "id": "o1"}, "$.aggregate", "invalid_value"),
        (GetHistory, {"aggregate": "org", "id": "o1", "limit": 501}, "$.limit", "out_of_range"),
        (ListMessages, {"session_id": "s1", "until": 1.5}, "$.until", "wrong_type"),
        (AppendMessage, {**TO, "message": {"role": "user"}}, "$.message.content", "missing_field"),
        (
            AppendMessages,
            {**TO, "messages": [{"role": "user", "content": "x"}, {}]},
            "$.messages[1].role",
            "missing_field",
        ),
    ],
)
def test_the_request_types_say_where_and_why(
    type_: type[Any], body: dict[str, Any], path: str, reason: str
) -> None:
    error = decoded(msgspec.json.encode(body), type_)
    assert error.details == {"path": path, "reason": reason}, error.message


def test_a_unicode_decode_error_is_not_utf8() -> None:
    exc = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    error = decode_error(exc)
    assert error.details == {"path": "$", "reason": "not_utf8"}
    assert "UTF-8" in error.message


class Checked(msgspec.Struct):
    a: int = 0
    b: int = 0

    def __post_init__(self) -> None:
        if self.a > self.b:
            raise ValueError("a may not be above b")


class Outer(msgspec.Struct):
    checked: Checked


def test_a_post_init_refusal_is_an_invalid_value_where_it_happened() -> None:
    error = decoded(b'{"checked": {"a": 2, "b": 1}}', Outer)
    assert error.details == {"path": "$.checked", "reason": "invalid_value"}
    assert "a may not be above b" in error.message


@pytest.mark.parametrize(
    ("name", "parent", "path"),
    [
        ("name", "$", "$.name"),
        ("_x1", "$.a[0]", "$.a[0]._x1"),
        ("1st", "$", '$["1st"]'),
        ("a.b", "$", '$["a.b"]'),
        ('say "hi"', "$.m", '$.m["say \\"hi\\""]'),
        ("", "$", '$[""]'),
    ],
)
def test_a_field_path(name: str, parent: str, path: str) -> None:
    assert field(name, parent) == path


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'{"name": "a\\u0000b"}', "$.name"),
        (b'{"name": "ok", "meta": {"deep": ["x", "y\\u0000"]}}', "$.meta.deep[1]"),
        (b'{"a": "\\u0000", "b": "\\u0000"}', "$.a"),  # the first in the document
        (b'{"k\\u0000": 1}', '$["k\\u0000"]'),
        (b'["x", {"y": "\\u0000"}]', "$[1].y"),
        (b'"\\u0000"', "$"),
        (b'{"name": "a\\u0000b"', "$"),  # not JSON: the body
        (b'{"text": "C:\\\\u0000"}', "$"),  # an escaped backslash, no NUL at all
        (b"[" * 100_000 + b"]" * 100_000, "$"),
    ],
)
def test_where_the_nul_character_is(body: bytes, path: str) -> None:
    assert nul_path(body) == path


def test_invalid_names_where_and_why_and_keeps_other_facts() -> None:
    error = validation.invalid("too big", "$.state", "too_large", size=9, max_bytes=8)
    assert error.code == "invalid"
    assert error.message == "too big"
    assert error.details == {"path": "$.state", "reason": "too_large", "size": 9, "max_bytes": 8}


@pytest.mark.parametrize(
    ("payload", "path", "reason", "mention"),
    [
        (b'{"name": "\\ud83c"}', "$.name", "malformed_json", "\\ud83c at byte 10"),
        (b'{"tags": ["a", "\\udc00"]}', "$.tags[1]", "malformed_json", "surrogate"),
        (b'{"by_key": {"\\ud800": {"x": 1}}}', "$.by_key", "malformed_json", "lone"),
        (b'{"name": "\\ud800\\u0041"}', "$.name", "malformed_json", "surrogate"),
        (b'{"name": "\\ud800"', "$", "malformed_json", "surrogate"),  # and cut short
        (b"\xff\xfe{}", "$", "not_utf8", "Invalid UTF-8 encoded string (byte 0)"),
        (b'{"name": "caf\xe9"}', "$", "not_utf8", "Invalid UTF-8 encoded string (byte 13)"),
    ],
)
def test_given_the_body_a_lone_surrogate_or_bad_utf8_is_named(
    payload: bytes, path: str, reason: str, mention: str
) -> None:
    try:
        msgspec.json.Decoder(Sample).decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        error = decode_error(exc, payload)
    else:
        raise AssertionError(f"{payload!r} decoded")
    assert error.details == {"path": path, "reason": reason}, error.message
    assert mention in error.message, error.message
