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
_decoder = msgspec.json.Decoder(Reply)


def ok(data: Any, seq: int | None = None) -> bytes:
    return _encoder.encode(Reply(ok=True, data=data, seq=seq))


def error(exc: AgentMemError) -> bytes:
    body = ErrorBody(code=exc.code, message=exc.message, details=exc.details)
    return _encoder.encode(Reply(ok=False, error=body))


def decode(payload: bytes) -> Reply:
    return _decoder.decode(payload)
