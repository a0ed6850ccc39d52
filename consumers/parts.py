"""What a process's handlers are built from, and how they are found.

Each module of ``consumers`` offers the routers of its operations under a role's name:
``command_router(parts)``, ``query_router(parts)`` or ``system_router(parts)``. The service
builds every router its roles call for, from every module, without a list to edit: a new
aggregate's handlers are served once its module exists.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from agentmem import subjects
from agentmem.consumers.passwords import SOURCE_LIMIT, PasswordThrottle, PasswordWork
from agentmem.consumers.router import Router
from agentmem.domain.passwords import DEFAULT_COST
from agentmem.metrics import Metrics

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from agentmem.consumers.access_view import AccessView
    from agentmem.consumers.commands import CommandRunner
    from agentmem.consumers.freshness import Freshness
    from agentmem.consumers.recall import Recall
    from agentmem.eventlog import EventLog
    from agentmem.extraction_model import ModelEndpoint
    from agentmem.store import Store

# Which builder serves which role; the system subjects are answered by every process.
BUILDERS = {"commands": "command_router", "queries": "query_router"}
SYSTEM_BUILDER = "system_router"


@dataclass
class Parts:
    nc: NATS
    log: EventLog
    runner: CommandRunner
    store: Store
    freshness: Freshness
    # Without it (a test's stand-in for a process), access is read from the log.
    access: AccessView | None = None
    password_cost: int = DEFAULT_COST
    # One throttle and one pool for every password check of the process.
    throttle: PasswordThrottle = field(default_factory=PasswordThrottle)
    # Failed logins per source address, whatever the emails (a spray of one guess each).
    source_throttle: PasswordThrottle = field(
        default_factory=lambda: PasswordThrottle(limit=SOURCE_LIMIT)
    )
    work: PasswordWork = field(default_factory=PasswordWork)
    workers_alive: Callable[[], dict[str, bool]] = dict
    # What the answering process is (its roles, the leases it holds), for status.
    this_process: Callable[[], dict[str, Any]] | None = None
    stream: str = subjects.STREAM_NAME
    # The process's figures, which agentmem.sys.status reports.
    metrics: Metrics = field(default_factory=Metrics)
    # Ready (agentmem.sys.health, /readyz): every projection at most this far behind the log.
    ready_lag: int = 1000
    # memory.search's ranking and vector index, shared by its users (recall.recall_of).
    recall: Recall | None = None
    # graph.extract's model (None: the rules only), and whether every added memory is
    # extracted from (with the rules) as it is added.
    extraction_model: ModelEndpoint | None = None
    extract_on_add: bool = False


def modules() -> Iterator[ModuleType]:
    package = importlib.import_module("agentmem.consumers")
    for info in pkgutil.iter_modules(package.__path__):
        yield importlib.import_module(f"agentmem.consumers.{info.name}")


def routers(parts: Parts, roles: frozenset[str]) -> tuple[Router, list[str]]:
    """Every handler for ``roles``, and the subject trees to subscribe for them."""
    router = Router()
    trees = [subjects.SYSTEM_PREFIX]
    wanted = [BUILDERS[role] for role in sorted(roles) if role in BUILDERS] + [SYSTEM_BUILDER]
    for module in modules():
        for name in wanted:
            build = getattr(module, name, None)
            if build is not None:
                router.include(build(parts))
    if "commands" in roles:
        trees.append(subjects.COMMAND_PREFIX)
    if "queries" in roles:
        trees.append(subjects.QUERY_PREFIX)
    return router, trees
