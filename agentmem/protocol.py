"""Every operation AgentMem serves, declared once, on its request Struct.

    @command("agent.create", need="member", reply=AgentCreated)
    class CreateAgent(InOrg, frozen=True, kw_only=True):
        name: Name
        ...

The declaration is the one place that says an operation's subject
(``agentmem.cmd.agent.create``), whether it is a command, a query or a system request, the
least role that may send it (``None``: public, no credentials), and the shape of its reply's
``data``. Everything else is derived from the registry it fills: the subjects the service
subscribes, a command's commit type, the tables the protocol tests iterate,
docs/asyncapi.json (``agentmem.asyncapi``), and ``Client.send``.

A command's ``reply`` is the event whose public fields it answers with (plus ``event`` and
``version``, see ``consumers.commands.event_view``), and ``extra`` the fields some commands
add to that view; a query's is the type of its ``data``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import msgspec

from agentmem import subjects
from agentmem.domain.access import Need

Kind = Literal["command", "query", "system"]

# The modules that declare operations: importing them fills the registry. A new aggregate
# declares its requests in its domain module, which is found here without a list to edit.
_DECLARING = ("agentmem.commands", "agentmem.queries")
_DOMAIN_PACKAGE = "agentmem.domain"


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The base of every request body. ``op`` is set by the declaration (``command``,
    ``query`` or ``system``) on each Struct that is a request of its own."""

    op: ClassVar[Operation]


@dataclass(frozen=True)
class Operation:
    name: str  # "<aggregate>.<verb>": the subject's tail, and a command's commit type
    kind: Kind
    request: type[Request]
    reply: Any  # a type msgspec can describe
    need: Need | None  # None: public, answered without credentials
    extra: type[msgspec.Struct] | None = None  # fields a command adds to its event's view

    @property
    def subject(self) -> str:
        aggregate, verb = self.name.split(".")
        match self.kind:
            case "command":
                return subjects.command(aggregate, verb)
            case "query":
                return subjects.query(aggregate, verb)
            case "system":
                return subjects.system(verb)

    @property
    def public(self) -> bool:
        return self.need is None

    @property
    def summary(self) -> str:
        """The request Struct's docstring, when it has one of its own."""
        doc = self.request.__dict__.get("__doc__") or ""
        return " ".join(doc.split())


_REGISTRY: dict[str, Operation] = {}

R = TypeVar("R", bound=type[Request])


def _declare(
    kind: Kind,
) -> Callable[..., Callable[[R], R]]:
    def declare(
        name: str,
        *,
        reply: Any,
        need: Need | None,
        extra: type[msgspec.Struct] | None = None,
    ) -> Callable[[R], R]:
        def register(request: R) -> R:
            operation = Operation(name, kind, request, reply, need, extra)
            if operation.subject in _REGISTRY:
                raise ValueError(f"{operation.subject} is declared twice")
            _REGISTRY[operation.subject] = operation
            request.op = operation
            return request

        return register

    return declare


command = _declare("command")
query = _declare("query")
system = _declare("system")


def operation_of(request_type: type[Request]) -> Operation:
    """The operation a request Struct declares itself (a base class's does not count)."""
    operation = request_type.__dict__.get("op")
    if not isinstance(operation, Operation):
        raise TypeError(f"{request_type.__name__} declares no operation")
    return operation


def operations() -> list[Operation]:
    """Every declared operation, in subject order."""
    for module in _DECLARING:
        importlib.import_module(module)
    package = importlib.import_module(_DOMAIN_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{_DOMAIN_PACKAGE}.{info.name}")
    return sorted(_REGISTRY.values(), key=lambda o: o.subject)


def by_subject() -> dict[str, Operation]:
    return {operation.subject: operation for operation in operations()}
