"""AgentMem: an event-sourced memory service for AI agents, over NATS JetStream.

The flat public API for agents: ``Client`` and the errors it raises.
"""

from agentmem.client import Client, Written
from agentmem.errors import (
    AgentMemError,
    ConflictError,
    ForbiddenError,
    InternalError,
    InvalidError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
)
from agentmem.replies import Org, Page, User

__version__ = "0.1.0"

__all__ = [
    "AgentMemError",
    "Client",
    "ConflictError",
    "ForbiddenError",
    "InternalError",
    "InvalidError",
    "NotFoundError",
    "Org",
    "Page",
    "UnauthenticatedError",
    "UnavailableError",
    "User",
    "Written",
]
