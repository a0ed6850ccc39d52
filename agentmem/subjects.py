"""Every NATS subject AgentMem uses, in one place.

Commands and queries live under ``agentmem.cmd`` and ``agentmem.q``; events under
``agentmem.evt``. The two trees never overlap, because a request on a subject that the event
stream captures would be answered by the stream's PubAck instead of by a handler.
"""

from __future__ import annotations

import hashlib

PREFIX = "agentmem"
COMMAND_PREFIX = f"{PREFIX}.cmd"
QUERY_PREFIX = f"{PREFIX}.q"
SYSTEM_PREFIX = f"{PREFIX}.sys"
EVENT_PREFIX = f"{PREFIX}.evt"

STREAM_NAME = "AGENTMEM_EVENTS"
STREAM_SUBJECTS = [f"{EVENT_PREFIX}.>"]

# Data that belongs to no organization (email reservations) lives under this org token.
# It starts with an underscore, which no generated id does.
GLOBAL_ORG = "_global"

QUEUE_GROUP = "agentmem"


def command(aggregate: str, verb: str) -> str:
    return f"{COMMAND_PREFIX}.{aggregate}.{verb}"


def query(aggregate: str, verb: str) -> str:
    return f"{QUERY_PREFIX}.{aggregate}.{verb}"


def system(verb: str) -> str:
    return f"{SYSTEM_PREFIX}.{verb}"


def event(org_id: str, aggregate: str, aggregate_id: str) -> str:
    """The one subject that holds an aggregate's whole history."""
    return f"{EVENT_PREFIX}.{org_id}.{aggregate}.{aggregate_id}"


def email_reservation(email: str) -> str:
    """The subject whose last event says who holds an email address.

    An email is not a valid NATS token (it has dots), so the subject carries its hash.
    """
    digest = hashlib.sha256(email.encode()).hexdigest()
    return event(GLOBAL_ORG, "email", digest)


def org_deletion(org_id: str) -> str:
    """Where an organization's deletion is written a second time, in the same atomic batch:
    the projections of an organization's content read this instead of every org event."""
    return event(org_id, "org_deletion", org_id)


def bootstrap() -> str:
    """Written once, with expected sequence 0, by the first start of a deployment."""
    return event(GLOBAL_ORG, "service", "bootstrap")


def tool_name_reservation(org_id: str, name: str) -> str:
    """The subject whose last event says which tool holds a name in an organization."""
    return event(org_id, "tool_name", hashlib.sha256(name.encode()).hexdigest())


def events_of(aggregate: str) -> str:
    """Filter matching every event subject of one aggregate type, in every org."""
    return f"{EVENT_PREFIX}.*.{aggregate}.*"


# Commands ------------------------------------------------------------------------------
ORG_CREATE = command("org", "create")
ORG_RENAME = command("org", "rename")
ORG_DELETE = command("org", "delete")
USER_REGISTER = command("user", "register")
USER_UPDATE_PROFILE = command("user", "update_profile")
USER_CHANGE_PASSWORD = command("user", "change_password")
USER_SET_ROLES = command("user", "set_roles")
USER_DELETE = command("user", "delete")
AUTH_LOGIN = command("auth", "login")
AUTH_LOGOUT = command("auth", "logout")
APIKEY_CREATE = command("apikey", "create")
APIKEY_REVOKE = command("apikey", "revoke")
AGENT_CREATE = command("agent", "create")
AGENT_UPDATE = command("agent", "update")
AGENT_ARCHIVE = command("agent", "archive")
AGENT_UNARCHIVE = command("agent", "unarchive")
AGENT_DELETE = command("agent", "delete")
AGENT_SET_STATE = command("agent", "set_state")
AGENT_PATCH_STATE = command("agent", "patch_state")
MESSAGE_APPEND = command("message", "append")
MESSAGE_APPEND_BATCH = command("message", "append_batch")
MESSAGE_REDACT = command("message", "redact")
CONVERSATION_DELETE = command("conversation", "delete")
TOOL_REGISTER = command("tool", "register")
TOOL_UPDATE = command("tool", "update")
TOOL_DELETE = command("tool", "delete")

# Queries -------------------------------------------------------------------------------
ORG_GET = query("org", "get")
ORG_LIST = query("org", "list")
USER_GET = query("user", "get")
USER_GET_BY_EMAIL = query("user", "get_by_email")
USER_EMAIL_EXISTS = query("user", "email_exists")
USER_LIST = query("user", "list")
APIKEY_LIST = query("apikey", "list")
AGENT_GET = query("agent", "get")
AGENT_LIST = query("agent", "list")
AGENT_GET_STATE = query("agent", "get_state")
MESSAGE_LIST = query("message", "list")
MESSAGE_LAST = query("message", "last")
MESSAGE_SEARCH = query("message", "search")
TOOL_GET = query("tool", "get")
TOOL_LIST = query("tool", "list")
HISTORY_GET = query("history", "get")

# System --------------------------------------------------------------------------------
SYS_STATUS = system("status")
SYS_HEALTH = system("health")

COMMANDS = [
    ORG_CREATE,
    ORG_RENAME,
    ORG_DELETE,
    USER_REGISTER,
    USER_UPDATE_PROFILE,
    USER_CHANGE_PASSWORD,
    USER_SET_ROLES,
    USER_DELETE,
    AUTH_LOGIN,
    AUTH_LOGOUT,
    APIKEY_CREATE,
    APIKEY_REVOKE,
    AGENT_CREATE,
    AGENT_UPDATE,
    AGENT_ARCHIVE,
    AGENT_UNARCHIVE,
    AGENT_DELETE,
    AGENT_SET_STATE,
    AGENT_PATCH_STATE,
    MESSAGE_APPEND,
    MESSAGE_APPEND_BATCH,
    MESSAGE_REDACT,
    CONVERSATION_DELETE,
    TOOL_REGISTER,
    TOOL_UPDATE,
    TOOL_DELETE,
]
QUERIES = [
    ORG_GET,
    ORG_LIST,
    USER_GET,
    USER_GET_BY_EMAIL,
    USER_EMAIL_EXISTS,
    USER_LIST,
    APIKEY_LIST,
    AGENT_GET,
    AGENT_LIST,
    AGENT_GET_STATE,
    MESSAGE_LIST,
    MESSAGE_LAST,
    MESSAGE_SEARCH,
    TOOL_GET,
    TOOL_LIST,
    HISTORY_GET,
]
SYSTEM = [SYS_STATUS, SYS_HEALTH]
ALL_REQUEST_SUBJECTS = COMMANDS + QUERIES + SYSTEM
