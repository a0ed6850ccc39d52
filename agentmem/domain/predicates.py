"""Which predicates are single-valued, per organization: a subject holds one value of such a
predicate at a time, so asserting a new one ends the previous one (``relation.assert``).

An organization's declarations live on ``agentmem.evt.<org>.predicates.<org>``; each
``predicate.declared`` says whether one predicate is single-valued there. A predicate never
declared keeps the service's default (``relations.SINGLE_VALUED``: ``lives_in``,
``works_at``, ...). A request's own ``single_valued`` wins over both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agentmem import subjects
from agentmem.commands import InOrg as CommandInOrg
from agentmem.domain.aggregate import Loaded, Write
from agentmem.domain.relations import SINGLE_VALUED, Predicate
from agentmem.events import AnyEvent, PredicateDeclared
from agentmem.protocol import command, query
from agentmem.queries import InOrg as QueryInOrg
from agentmem.replies import Items, PredicateRule


@command("predicate.declare", need="org_admin", reply=PredicateDeclared)
class DeclarePredicate(CommandInOrg, frozen=True, kw_only=True):
    """Declare whether ``predicate`` is single-valued in the organization."""

    predicate: Predicate
    single_valued: bool


@query("predicate.list", need="reader", reply=Items[PredicateRule])
class ListPredicates(QueryInOrg, frozen=True, kw_only=True):
    """The organization's declared predicates and the service's single-valued defaults."""


@dataclass(frozen=True)
class Predicates:
    declared: Mapping[str, bool] = field(default_factory=dict)


def subject(org_id: str) -> str:
    return subjects.event(org_id, "predicates", org_id)


def evolve(state: Predicates | None, event: AnyEvent) -> Predicates | None:
    if isinstance(event, PredicateDeclared):
        declared = dict((state or Predicates()).declared)
        declared[event.predicate] = event.single_valued
        return Predicates(declared)
    return state


def is_single(state: Predicates | None, predicate: str) -> bool:
    """Whether ``predicate`` is single-valued in an organization whose declarations are
    ``state``: as declared, else the service's default."""
    declared = (state or Predicates()).declared
    return declared.get(predicate, predicate in SINGLE_VALUED)


def declare(loaded: Loaded[Predicates], org_id: str, request: DeclarePredicate) -> list[Write]:
    event = PredicateDeclared(
        org_id=org_id, predicate=request.predicate, single_valued=request.single_valued
    )
    return [Write(loaded.subject, loaded.version, [event])]


__all__ = ["DeclarePredicate", "ListPredicates"]
