"""Projection workers: they read the log in order and materialise tables from it."""

from projections.agents import AgentsProjection
from projections.base import Projection
from projections.messages import MessagesProjection
from projections.orgs import OrgsProjection
from projections.tools import ToolsProjection
from projections.users import UsersProjection

ALL: list[Projection] = [
    OrgsProjection(),
    UsersProjection(),
    AgentsProjection(),
    ToolsProjection(),
    MessagesProjection(),
]
BY_NAME: dict[str, Projection] = {p.name: p for p in ALL}

__all__ = ["ALL", "BY_NAME", "Projection"]
