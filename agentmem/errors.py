"""The error codes of the reply envelope, as exceptions.

Handlers raise these; the router turns them into ``{"ok": false, "error": {...}}``. The
client raises the same classes back from an error reply, so both ends share one vocabulary.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

ErrorCode = Literal[
    "invalid",
    "not_found",
    "conflict",
    "unauthenticated",
    "forbidden",
    "unavailable",
    "internal",
]


class AgentMemError(Exception):
    code: ClassVar[ErrorCode] = "internal"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, details={self.details!r})"


class InvalidError(AgentMemError):
    code = "invalid"


class InvalidOnState(InvalidError):
    """``invalid`` decided on what an aggregate holds (a block's content over its limit
    after an append), not on the request alone: a process whose cache is behind may decide
    it wrongly, so it is decided again on the log before it is answered."""


class NotFoundError(AgentMemError):
    code = "not_found"


class ConflictError(AgentMemError):
    code = "conflict"


class UnauthenticatedError(AgentMemError):
    code = "unauthenticated"


class ForbiddenError(AgentMemError):
    code = "forbidden"


class UnavailableError(AgentMemError):
    code = "unavailable"


class InternalError(AgentMemError):
    code = "internal"


ERRORS_BY_CODE: dict[str, type[AgentMemError]] = {
    cls.code: cls
    for cls in (
        InvalidError,
        NotFoundError,
        ConflictError,
        UnauthenticatedError,
        ForbiddenError,
        UnavailableError,
        InternalError,
    )
}
