"""Projection workers: they read the log in order and materialise tables from it."""

from agentmem.projections.agents import AgentsProjection
from agentmem.projections.base import Projection
from agentmem.projections.messages import MessagesProjection
from agentmem.projections.orgs import OrgsProjection
from agentmem.projections.tools import ToolsProjection
from agentmem.projections.users import UsersProjection

ALL: list[Projection] = [
    OrgsProjection(),
    UsersProjection(),
    AgentsProjection(),
    ToolsProjection(),
    MessagesProjection(),
]
BY_NAME: dict[str, Projection] = {p.name: p for p in ALL}

__all__ = ["ALL", "BY_NAME", "Projection"]
