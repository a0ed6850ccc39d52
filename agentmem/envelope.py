"""The one reply envelope every command, query and system subject answers with."""

from __future__ import annotations

from typing import Any

import msgspec

from agentmem.errors import AgentMemError, ErrorCode


class ErrorBody(msgspec.Struct, frozen=True):
    code: ErrorCode
    message: str
    details: dict[str, Any] = {}


class Reply(msgspec.Struct, frozen=True, omit_defaults=True):
    ok: bool
    data: Any = None
    seq: int | None = None
    error: ErrorBody | None = None


_encoder = msgspec.json.Encoder()
# A decoder per type of data: JSON's own types (Any), or a reply type a client decodes into.
_decoders: dict[Any, msgspec.json.Decoder[Reply]] = {Any: msgspec.json.Decoder(Reply)}


def ok(data: Any, seq: int | None = None) -> bytes:
    return _encoder.encode(Reply(ok=True, data=data, seq=seq))


def error(exc: AgentMemError) -> bytes:
    body = ErrorBody(code=exc.code, message=exc.message, details=exc.details)
    return _encoder.encode(Reply(ok=False, error=body))


def decode(payload: bytes, data: Any = Any) -> Reply:
    """A reply, its ``data`` decoded as ``data`` (a type msgspec can describe) in the same
    pass: a ``Reply`` whose data field has that type."""
    decoder = _decoders.get(data)
    if decoder is None:
        typed = msgspec.defstruct(
            "Reply", [("data", data | None, None)], bases=(Reply,), frozen=True
        )
        decoder = _decoders[data] = msgspec.json.Decoder(typed)
    return decoder.decode(payload)
