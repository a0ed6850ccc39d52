"""Every command and query subject against every role, over NATS, on both stores.

One table: a row per subject (two for the subjects that act on a user's own account, once on
another user of the organization and once on the caller's own), and for each row one cell
per role:

- ``anonymous``: no credentials;
- ``readonly``, ``member``, ``org_admin``: users of the organization the request targets;
- ``other_org_admin``: the org admin of another organization;
- ``service_admin``: the service administrator.

The outcome each cell must get is not written cell by cell: it follows from the row's need,
as docs/security.md documents it ("Roles" and its role matrix), and from where the row's
target is (``Scope``). The need is the documented one, not read from the declaration, so a
declaration that lowers a need fails here (``test_the_table_covers_every_subject`` compares
the two); and a subject declared without a row in the table fails that test too.

Every refused cell must leave the log as it was; every command carried out must append, and
answer the event its declaration names. One nats-server and one service per store serve
the whole module; targets that a cell would use up (an agent to delete, a key to revoke) are
made fresh for that cell by the service administrator.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from agentmem import Client, envelope, subjects
from agentmem.auth import tokens
from agentmem.domain.access import Need
from agentmem.events import Role
from agentmem.protocol import Operation, by_subject
from agentmem.service import Service
from tests.conftest import admin_key
from tests.realparts import bearer
from tests.support import NatsServer

pytestmark = pytest.mark.asyncio(loop_scope="module")
STORES = ("sqlite", "postgres")

PASSWORD = "correct horse battery"

ROLES = ("anonymous", "readonly", "member", "org_admin", "other_org_admin", "service_admin")
# The role each caller holds in its own organization (docs/security.md, "Roles").
ORG_ROLE: dict[str, Role] = {
    "readonly": "readonly",
    "member": "member",
    "org_admin": "admin",
    "other_org_admin": "admin",
}

# Where a row's target is, which decides what the org admin of another organization gets:
# - "org": in the organization of the readonly, member and org_admin callers; another
#   organization's admin gets not_found, exactly as for a missing target;
# - "none": no target organization; the role alone decides, in any organization;
# - "scoped": a read of the caller's own organization, whatever it names: another
#   organization's admin gets an answer without anything of the target's organization;
# - "own": the caller's own account;
# - "session": the caller's own session (logout), sent with the session token itself.
Scope = Literal["org", "none", "scoped", "own", "session"]

OK = "ok"
# docs/security.md, "Roles": who has each need, in their own organization. "self" is on
# another user of the organization; on your own account it is OWN_ACCOUNT.
HOLDERS: dict[Need, frozenset[str]] = {
    "reader": frozenset({"readonly", "member", "admin"}),
    "member": frozenset({"member", "admin"}),
    "self": frozenset({"admin"}),
    "org_admin": frozenset({"admin"}),
    "service_admin": frozenset(),
}
OWN_ACCOUNT = frozenset({"member", "admin"})


# The world the cells act in --------------------------------------------------------------------
@dataclass(frozen=True)
class Person:
    user_id: str
    org_id: str
    email: str
    token: str  # an API key


@dataclass
class World:
    nc: NATS
    root: Client  # the service administrator
    own: str  # the organization of the readonly, member and org_admin callers
    other: str  # the other org admin's
    callers: dict[str, Person]  # every role but anonymous
    victim: Person  # a member of ``own``: "another user of the organization"
    login: Person  # a user of ``own`` whose email and password log in
    agent_id: str
    tool_id: str
    session_id: str  # a conversation of ``agent_id``, with a message that says hello
    memory_id: str = ""  # a memory of MEMORY_USER in ``own``
    block_id: str = ""  # a block of ``agent_id``, labelled "persona"
    working_key: str = ""  # an item of WORKING_SESSION in ``own``
    entity_id: str = ""  # a person in ``own``, who lives in ``place_id``
    place_id: str = ""
    seen: int = 0  # the log's end once all of the above was made: queries read after it
    _names: Iterator[int] = field(default_factory=itertools.count)

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{next(self._names)}"

    async def log_end(self) -> int:
        info = await self.nc.jetstream().stream_info(subjects.STREAM_NAME)
        return int(info.state.last_seq)

    async def person(self, org_id: str, role: Role) -> Person:
        email = f"{self.unique(role)}@example.com"
        user = await self.root.register_user(org_id, "Someone", email, PASSWORD, roles=[role])
        user_id = user.fields["user_id"]
        key = await self.root.create_api_key("table", user_id=user_id)
        return Person(user_id, org_id, email, key.fields["token"])

    async def new_org(self) -> str:
        return str((await self.root.create_org(self.unique("org"))).fields["org_id"])

    async def new_agent(self, *, archived: bool = False) -> str:
        created = await self.root.create_agent(self.unique("agent"), org_id=self.own)
        agent_id = str(created.fields["agent_id"])
        if archived:
            await self.root.archive_agent(agent_id)
        return agent_id

    async def new_tool(self) -> str:
        name = self.unique("tool").replace("-", "_")
        return str((await self.root.register_tool(name, org_id=self.own)).fields["tool_id"])

    async def new_message(self, session_id: str | None = None) -> tuple[str, str]:
        session_id = session_id or self.unique("session")
        said = await self.root.append_message(
            session_id, self.agent_id, "user", "hello from the table", org_id=self.own
        )
        return session_id, str(said.fields["message_ids"][0])

    async def new_memory(self, user_id: str = "", *, archived: bool = False) -> str:
        made = await self.root.add_memory(
            f"the table remembers {self.unique('fact')}",
            org_id=self.own,
            user_id=user_id or MEMORY_USER,
        )
        memory_id = str(made.fields["memory_id"])
        if archived:
            await self.root.archive_memory(memory_id)
        return memory_id

    async def new_block(self, content: str = "table text", *, attached: bool = False) -> str:
        """A block of a user of ``own``, with a label of its own; ``attached``: to
        ``agent_id`` too."""
        made = await self.root.create_block(
            self.unique("label"), content, user_id=MEMORY_USER, org_id=self.own
        )
        block_id = str(made.fields["block_id"])
        if attached:
            await self.root.attach_block(block_id, self.agent_id)
        return block_id

    async def new_working_item(self, session_id: str = "") -> tuple[str, str]:
        session_id = session_id or self.unique("working")
        put = await self.root.put_working(session_id, "table note", org_id=self.own)
        return session_id, str(put.fields["key"])

    async def new_entity(self, user_id: str | None = None, aliases: list[str] | None = None) -> str:
        made = await self.root.create_entity(
            "person",
            self.unique("Someone"),
            org_id=self.own,
            user_id=user_id,
            aliases=aliases or [],
        )
        return str(made.fields["entity_id"])

    async def new_relation(self) -> str:
        made = await self.root.assert_relation(
            await self.new_entity(), "knows", self.entity_id, valid_from=1
        )
        return str(made.fields["relation_id"])

    async def new_key(self, user_id: str) -> str:
        return str((await self.root.create_api_key("spare", user_id=user_id)).fields["key_id"])

    async def session(self, person: Person) -> str:
        return str((await self.root.login(person.email, PASSWORD)).fields["token"])


@dataclass
class Scene:
    """One cell: the world, the role, and the credentials the request goes with (a row may
    swap them: a session instead of a key, a user of the organization it just made)."""

    w: World
    role: str
    token: str | None = None

    def __post_init__(self) -> None:
        caller = self.caller
        self.token = caller.token if caller is not None else None

    @property
    def caller(self) -> Person | None:
        return self.w.callers.get(self.role)

    @property
    def me(self) -> str:
        """The caller's user id (for anonymous, someone's: it is refused before it counts)."""
        return (self.caller or self.w.victim).user_id


Body = Callable[[Scene], Awaitable[dict[str, Any]]]
Answer = Callable[[Scene, Any], bool]


@dataclass(frozen=True)
class Row:
    subject: str
    need: Need | None  # as docs/security.md documents it; None: public
    scope: Scope
    body: Body
    answer: Answer | None = None  # what a carried out request must answer, beyond ok
    variant: str = ""
    # Cells whose outcome the rules above do not give, each with why.
    special: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        short = self.subject.removeprefix("agentmem.")
        return f"{short} ({self.variant})" if self.variant else short


def fixed(body: dict[str, Any]) -> Body:
    async def build(s: Scene) -> dict[str, Any]:
        return body

    return build


def built(make: Callable[[Scene], dict[str, Any]]) -> Body:
    async def build(s: Scene) -> dict[str, Any]:
        return make(s)

    return build


def on_fresh_memory(make: Callable[[Scene, str], dict[str, Any]]) -> Body:
    """A body about a memory made fresh for the cell (one a command changes)."""

    async def build(s: Scene) -> dict[str, Any]:
        return make(s, await s.w.new_memory())

    return build


def listed(data: Any, key: str) -> list[Any]:
    return [item[key] for item in data["items"]]


def scoped_items(s: Scene, data: Any) -> bool:
    """A read of another organization's messages is answered empty, as if it had none."""
    return bool(data["items"] == []) == (s.role == "other_org_admin")


# The rows: every subject -------------------------------------------------------------------------
MEMORY_USER = "table-user"  # a scope label of the memories the table reads
WORKING_SESSION = "table-session"  # the session whose working memory the table reads


def on_fresh_block(make: Callable[[Scene, str], dict[str, Any]], attached: bool = False) -> Body:
    """A body about a block made fresh for the cell (one a command changes)."""

    async def build(s: Scene) -> dict[str, Any]:
        return make(s, await s.w.new_block(attached=attached))

    return build


async def working_item_body(s: Scene) -> dict[str, Any]:
    session_id, key = await s.w.new_working_item()
    return {"org_id": s.w.own, "session_id": session_id, "key": key}


async def working_session_body(s: Scene) -> dict[str, Any]:
    session_id, _ = await s.w.new_working_item()
    return {"org_id": s.w.own, "session_id": session_id}


async def fresh_memory(s: Scene) -> dict[str, Any]:
    return {"memory_id": await s.w.new_memory()}


async def archived_memory(s: Scene) -> dict[str, Any]:
    return {"memory_id": await s.w.new_memory(archived=True)}


async def memory_scope_body(s: Scene) -> dict[str, Any]:
    user_id = s.w.unique("scope-user")
    await s.w.new_memory(user_id)
    return {"org_id": s.w.own, "user_id": user_id}


def on_fresh_entity(make: Callable[[Scene, str], dict[str, Any]]) -> Body:
    """A body about an entity made fresh for the cell (one a command changes)."""

    async def build(s: Scene) -> dict[str, Any]:
        return make(s, await s.w.new_entity())

    return build


async def aliased_entity(s: Scene) -> dict[str, Any]:
    return {"entity_id": await s.w.new_entity(aliases=["alt"]), "alias": "alt"}


async def entity_scope_body(s: Scene) -> dict[str, Any]:
    user_id = s.w.unique("scope-user")
    await s.w.new_entity(user_id)
    return {"org_id": s.w.own, "user_id": user_id}


async def merge_body(s: Scene) -> dict[str, Any]:
    return {"entity_id": await s.w.new_entity(), "into": await s.w.new_entity()}


async def unmerge_body(s: Scene) -> dict[str, Any]:
    merged = await s.w.new_entity()
    await s.w.root.merge_entity(merged, await s.w.new_entity())
    return {"entity_id": merged}


async def fresh_relation(s: Scene) -> dict[str, Any]:
    return {"relation_id": await s.w.new_relation()}


async def association_body(s: Scene) -> dict[str, Any]:
    memory_id = await s.w.new_memory()
    await s.w.root.associate_memories(memory_id, s.w.memory_id)
    return {"from_memory_id": memory_id, "to_memory_id": s.w.memory_id}


async def forgettable_memory(s: Scene) -> dict[str, Any]:
    """Someone else's memory, outside the scope the memory reads look at (a refused
    forget leaves it, and the reads' pages must still hold the world's memory)."""
    return {"memory_id": await s.w.new_memory(s.w.unique("forget-user"))}


async def own_memory(s: Scene) -> dict[str, Any]:
    """A memory of the caller's own, in the caller's organization."""
    org_id = (s.caller or s.w.victim).org_id
    made = await s.w.root.add_memory(f"mine {s.w.unique('fact')}", org_id=org_id, user_id=s.me)
    return {"memory_id": made.fields["memory_id"]}


async def forget_self(s: Scene) -> dict[str, Any]:
    """The caller's own account, but a fresh one of the same role: a forget takes it away,
    and the other cells still need theirs. The service administrator forgets a member of
    the organization (it may forget anyone; forgetting itself would end the table)."""
    if s.role in ORG_ROLE:
        org_id = s.w.other if s.role == "other_org_admin" else s.w.own
        person = await s.w.person(org_id, ORG_ROLE[s.role])
        s.token = person.token
        return {"user_id": person.user_id}
    return {"user_id": (await s.w.person(s.w.own, "member")).user_id}


async def archive_body(s: Scene) -> dict[str, Any]:
    return {"agent_id": await s.w.new_agent()}


async def unarchive_body(s: Scene) -> dict[str, Any]:
    return {"agent_id": await s.w.new_agent(archived=True)}


async def revoke_theirs(s: Scene) -> dict[str, Any]:
    return {"key_id": await s.w.new_key(s.w.victim.user_id), "user_id": s.w.victim.user_id}


async def revoke_own(s: Scene) -> dict[str, Any]:
    return {"key_id": await s.w.new_key(s.me)}


async def logout_body(s: Scene) -> dict[str, Any]:
    if s.caller is not None and s.role != "service_admin":
        s.token = await s.w.session(s.caller)
    return {}


async def delete_conversation_body(s: Scene) -> dict[str, Any]:
    session_id, _ = await s.w.new_message()
    return {"org_id": s.w.own, "session_id": session_id}


async def redact_body(s: Scene) -> dict[str, Any]:
    session_id, message_id = await s.w.new_message()
    return {"org_id": s.w.own, "session_id": session_id, "message_id": message_id}


async def delete_org_body(s: Scene) -> dict[str, Any]:
    """A fresh organization, and a caller of the role in it (another org's admin stays out)."""
    org_id = await s.w.new_org()
    if s.role in ("readonly", "member", "org_admin"):
        s.token = (await s.w.person(org_id, ORG_ROLE[s.role])).token
    return {"org_id": org_id}


async def change_theirs(s: Scene) -> dict[str, Any]:
    victim = await s.w.person(s.w.own, "member")
    return {"user_id": victim.user_id, "old_password": PASSWORD, "new_password": "new password 1"}


async def fresh_victim(s: Scene) -> dict[str, Any]:
    return {"user_id": (await s.w.person(s.w.own, "member")).user_id}


async def set_roles_body(s: Scene) -> dict[str, Any]:
    return {**await fresh_victim(s), "roles": ["readonly"]}


async def delete_agent_body(s: Scene) -> dict[str, Any]:
    return {"agent_id": await s.w.new_agent()}


async def delete_tool_body(s: Scene) -> dict[str, Any]:
    return {"tool_id": await s.w.new_tool()}


def orgs_listed(s: Scene, data: Any) -> bool:
    seen = set(listed(data, "org_id"))
    if s.role == "service_admin":
        return {s.w.own, s.w.other} <= seen
    caller = s.caller
    return caller is not None and seen == {caller.org_id}


HELLO = {"role": "user", "content": "hello again"}
SERVICE_ADMIN_HAS_NO_SESSION = (
    "unauthenticated",
    "the service administrator cannot log in: its only credential is an API key, and an "
    "API key cannot log out",
)
SERVICE_ADMIN_PASSWORD_UNKNOWN = (
    "unauthenticated",
    "its password is random and never shown, so the old password sent cannot be right: "
    "the role check passed (it would be forbidden), the password check refused",
)

ROWS: list[Row] = [
    # Agents
    Row("agentmem.cmd.agent.archive", "member", "org", archive_body),
    Row(
        "agentmem.cmd.agent.create",
        "member",
        "org",
        built(lambda s: {"org_id": s.w.own, "name": s.w.unique("made")}),
    ),
    Row("agentmem.cmd.agent.delete", "org_admin", "org", delete_agent_body),
    Row("agentmem.cmd.agent.forget", "org_admin", "org", delete_agent_body),
    Row(
        "agentmem.cmd.agent.patch_state",
        "member",
        "org",
        built(lambda s: {"agent_id": s.w.agent_id, "patch": {s.w.unique("k"): 1}}),
    ),
    Row(
        "agentmem.cmd.agent.set_state",
        "member",
        "org",
        built(lambda s: {"agent_id": s.w.agent_id, "state": {"turn": s.w.unique("t")}}),
    ),
    Row("agentmem.cmd.agent.unarchive", "member", "org", unarchive_body),
    Row(
        "agentmem.cmd.agent.update",
        "member",
        "org",
        built(lambda s: {"agent_id": s.w.agent_id, "description": s.w.unique("d")}),
    ),
    Row(
        "agentmem.q.agent.get",
        "reader",
        "org",
        built(lambda s: {"agent_id": s.w.agent_id}),
        lambda s, d: d["agent_id"] == s.w.agent_id,
    ),
    Row(
        "agentmem.q.agent.get_state",
        "reader",
        "org",
        built(lambda s: {"agent_id": s.w.agent_id}),
        lambda s, d: d["agent_id"] == s.w.agent_id,
    ),
    Row(
        "agentmem.q.agent.list",
        "reader",
        "org",
        built(lambda s: {"org_id": s.w.own, "limit": 500}),
        lambda s, d: s.w.agent_id in listed(d, "agent_id"),
    ),
    # API keys
    Row(
        "agentmem.cmd.apikey.create",
        "self",
        "org",
        built(lambda s: {"name": "theirs", "user_id": s.w.victim.user_id}),
        lambda s, d: d["user_id"] == s.w.victim.user_id and d["token"].startswith("amk_"),
        variant="another user's",
    ),
    Row(
        "agentmem.cmd.apikey.create",
        "self",
        "own",
        fixed({"name": "mine"}),
        lambda s, d: d["user_id"] == s.me and d["token"].startswith("amk_"),
        variant="own",
    ),
    Row("agentmem.cmd.apikey.revoke", "self", "org", revoke_theirs, variant="another user's"),
    Row("agentmem.cmd.apikey.revoke", "self", "own", revoke_own, variant="own"),
    Row(
        "agentmem.q.apikey.list",
        "self",
        "org",
        built(lambda s: {"user_id": s.w.victim.user_id, "after_seq": s.w.seen}),
        lambda s, d: set(listed(d, "user_id")) == {s.w.victim.user_id},
        variant="another user's",
    ),
    Row(
        "agentmem.q.apikey.list",
        "self",
        "own",
        built(lambda s: {"after_seq": s.w.seen}),
        lambda s, d: set(listed(d, "user_id")) == {s.me},
        variant="own",
    ),
    # Sessions
    Row(
        "agentmem.cmd.auth.login",
        None,
        "none",
        built(lambda s: {"email": s.w.login.email, "password": PASSWORD}),
        lambda s, d: d["user_id"] == s.w.login.user_id and d["token"].startswith("ams_"),
    ),
    Row(
        "agentmem.cmd.auth.logout",
        "reader",
        "session",
        logout_body,
        special={"service_admin": SERVICE_ADMIN_HAS_NO_SESSION},
    ),
    # Messages
    Row("agentmem.cmd.conversation.delete", "member", "org", delete_conversation_body),
    Row("agentmem.cmd.conversation.forget", "org_admin", "org", delete_conversation_body),
    Row(
        "agentmem.cmd.message.append",
        "member",
        "org",
        built(
            lambda s: {
                "org_id": s.w.own,
                "session_id": s.w.session_id,
                "agent_id": s.w.agent_id,
                "message": HELLO,
            }
        ),
    ),
    Row(
        "agentmem.cmd.message.append_batch",
        "member",
        "org",
        built(
            lambda s: {
                "org_id": s.w.own,
                "session_id": s.w.session_id,
                "agent_id": s.w.agent_id,
                "messages": [HELLO, HELLO],
            }
        ),
    ),
    Row("agentmem.cmd.message.redact", "member", "org", redact_body),
    Row(
        "agentmem.q.message.last",
        "reader",
        "scoped",
        built(
            lambda s: {
                "org_id": s.w.own,
                "session_id": s.w.session_id,
                "n": 5,
                "after_seq": s.w.seen,
            }
        ),
        scoped_items,
    ),
    Row(
        "agentmem.q.message.list",
        "reader",
        "scoped",
        built(lambda s: {"org_id": s.w.own, "session_id": s.w.session_id, "after_seq": s.w.seen}),
        scoped_items,
    ),
    Row(
        "agentmem.q.message.search",
        "reader",
        "scoped",
        built(
            lambda s: {
                "org_id": s.w.own,
                "text": "hello",
                "agent_id": s.w.agent_id,
                "after_seq": s.w.seen,
            }
        ),
        scoped_items,
    ),
    # Core memory blocks
    Row(
        "agentmem.cmd.block.append",
        "member",
        "org",
        on_fresh_block(lambda s, b: {"block_id": b, "content": "more"}),
    ),
    Row(
        "agentmem.cmd.block.attach",
        "member",
        "org",
        on_fresh_block(lambda s, b: {"block_id": b, "agent_id": s.w.agent_id}),
    ),
    Row(
        "agentmem.cmd.block.create",
        "member",
        "org",
        built(
            lambda s: {
                "org_id": s.w.own,
                "label": s.w.unique("label"),
                "content": "made",
                "agent_id": s.w.agent_id,
            }
        ),
    ),
    Row("agentmem.cmd.block.delete", "member", "org", on_fresh_block(lambda s, b: {"block_id": b})),
    Row(
        "agentmem.cmd.block.detach",
        "member",
        "org",
        on_fresh_block(lambda s, b: {"block_id": b, "agent_id": s.w.agent_id}, attached=True),
    ),
    Row(
        "agentmem.cmd.block.replace",
        "member",
        "org",
        on_fresh_block(lambda s, b: {"block_id": b, "old_text": "table", "new_text": "cell"}),
    ),
    Row(
        "agentmem.cmd.block.set",
        "member",
        "org",
        on_fresh_block(lambda s, b: {"block_id": b, "content": s.w.unique("set")}),
    ),
    Row(
        "agentmem.q.block.get",
        "reader",
        "org",
        built(lambda s: {"block_id": s.w.block_id, "after_seq": s.w.seen}),
        lambda s, d: d["block_id"] == s.w.block_id,
    ),
    Row(
        "agentmem.q.block.history",
        "reader",
        "org",
        built(lambda s: {"block_id": s.w.block_id}),
        lambda s, d: d["items"][0]["commit_type"] == "block.create",
    ),
    Row(
        "agentmem.q.block.list",
        "reader",
        "org",
        built(lambda s: {"org_id": s.w.own, "agent_id": s.w.agent_id, "after_seq": s.w.seen}),
        lambda s, d: s.w.block_id in listed(d, "block_id"),
    ),
    # Working memory
    Row("agentmem.cmd.working.clear", "member", "org", working_session_body),
    Row(
        "agentmem.cmd.working.put",
        "member",
        "org",
        built(lambda s: {"org_id": s.w.own, "session_id": WORKING_SESSION, "content": "noted"}),
    ),
    Row("agentmem.cmd.working.remove", "member", "org", working_item_body),
    Row(
        "agentmem.q.working.get",
        "reader",
        "org",
        built(
            lambda s: {
                "org_id": s.w.own,
                "session_id": WORKING_SESSION,
                "limit": 500,
                "after_seq": s.w.seen,
            }
        ),
        lambda s, d: s.w.working_key in listed(d, "key"),
    ),
    # Published commands (ingestion): what became of one
    Row(
        "agentmem.q.ingest.status",
        "self",
        "own",
        built(lambda s: {"command_id": "never-published"}),
        lambda s, d: d["status"] == "pending",
        variant="own",
    ),
    Row(
        "agentmem.q.ingest.status",
        "self",
        "org",
        built(
            lambda s: {
                "org_id": s.w.own,
                "user_id": s.w.victim.user_id,
                "command_id": "never-published",
            }
        ),
        lambda s, d: d["status"] == "pending",
        variant="another user's",
    ),
    # Context for a model call
    Row(
        "agentmem.q.context.assemble",
        "reader",
        "org",
        built(
            lambda s: {
                "org_id": s.w.own,
                "agent_id": s.w.agent_id,
                "session_id": s.w.session_id,
                "query": "hello",
                "max_tokens": 100_000,
                "after_seq": s.w.seen,
            }
        ),
        lambda s, d: "hello from the table" in [i["text"] for i in d["items"]],
    ),
    # Memories
    Row(
        "agentmem.cmd.memory.add",
        "member",
        "org",
        built(
            lambda s: {
                "org_id": s.w.own,
                "content": f"added {s.w.unique('m')}",
                "user_id": MEMORY_USER,
            }
        ),
    ),
    Row(
        "agentmem.cmd.memory.add_batch",
        "member",
        "org",
        built(
            lambda s: {
                "org_id": s.w.own,
                "memories": [{"content": f"batched {s.w.unique('m')}", "user_id": MEMORY_USER}],
            }
        ),
    ),
    Row("agentmem.cmd.memory.archive", "member", "org", fresh_memory),
    Row("agentmem.cmd.memory.delete", "member", "org", fresh_memory),
    Row("agentmem.cmd.memory.delete_scope", "org_admin", "org", memory_scope_body),
    Row(
        "agentmem.cmd.memory.forget",
        "self",
        "org",
        forgettable_memory,
        variant="another user's",
    ),
    Row("agentmem.cmd.memory.forget", "self", "own", own_memory, variant="own"),
    Row(
        "agentmem.cmd.memory.forget_scope",
        "self",
        "org",
        memory_scope_body,
        variant="another user's",
    ),
    Row(
        "agentmem.cmd.memory.forget_scope",
        "self",
        "own",
        built(lambda s: {"org_id": (s.caller or s.w.victim).org_id, "user_id": s.me}),
        variant="own",
    ),
    Row("agentmem.cmd.memory.restore", "member", "org", archived_memory),
    Row(
        "agentmem.cmd.memory.supersede",
        "member",
        "org",
        on_fresh_memory(lambda s, m: {"memory_id": m, "content": f"corrected {s.w.unique('m')}"}),
    ),
    Row(
        "agentmem.cmd.memory.update",
        "member",
        "org",
        on_fresh_memory(lambda s, m: {"memory_id": m, "importance": 0.9}),
    ),
    Row(
        "agentmem.q.memory.get",
        "reader",
        "org",
        built(lambda s: {"memory_id": s.w.memory_id, "after_seq": s.w.seen}),
        lambda s, d: d["memory_id"] == s.w.memory_id,
    ),
    Row(
        "agentmem.q.memory.history",
        "reader",
        "org",
        built(lambda s: {"memory_id": s.w.memory_id}),
        lambda s, d: len(d["items"]) >= 1,
    ),
    Row(
        "agentmem.q.memory.list",
        "reader",
        "org",
        built(lambda s: {"org_id": s.w.own, "user_id": MEMORY_USER, "after_seq": s.w.seen}),
        lambda s, d: s.w.memory_id in listed(d, "memory_id"),
    ),
    Row(
        "agentmem.q.memory.search",
        "reader",
        "org",
        built(
            lambda s: {
                "org_id": s.w.own,
                "text": "remembers",
                "user_id": MEMORY_USER,
                "after_seq": s.w.seen,
            }
        ),
        lambda s, d: s.w.memory_id in listed(d, "memory_id"),
    ),
    Row(
        "agentmem.q.memory.stats",
        "reader",
        "org",
        built(lambda s: {"org_id": s.w.own, "user_id": MEMORY_USER, "after_seq": s.w.seen}),
        lambda s, d: d["org_id"] == s.w.own and d["by_state"]["live"] >= 1,
    ),
    # The knowledge graph
    Row(
        "agentmem.cmd.entity.create",
        "member",
        "org",
        built(lambda s: {"org_id": s.w.own, "entity_type": "person", "name": s.w.unique("P")}),
    ),
    Row(
        "agentmem.cmd.entity.rename",
        "member",
        "org",
        on_fresh_entity(lambda s, e: {"entity_id": e, "name": s.w.unique("N")}),
    ),
    Row(
        "agentmem.cmd.entity.add_alias",
        "member",
        "org",
        on_fresh_entity(lambda s, e: {"entity_id": e, "alias": "alt"}),
    ),
    Row("agentmem.cmd.entity.remove_alias", "member", "org", aliased_entity),
    Row(
        "agentmem.cmd.entity.set_attributes",
        "member",
        "org",
        on_fresh_entity(lambda s, e: {"entity_id": e, "attributes": {"a": 1}}),
    ),
    Row(
        "agentmem.cmd.entity.delete",
        "member",
        "org",
        on_fresh_entity(lambda s, e: {"entity_id": e}),
    ),
    Row("agentmem.cmd.entity.delete_scope", "org_admin", "org", entity_scope_body),
    Row("agentmem.cmd.entity.merge", "member", "org", merge_body),
    Row("agentmem.cmd.entity.unmerge", "member", "org", unmerge_body),
    Row(
        "agentmem.cmd.relation.assert",
        "member",
        "org",
        on_fresh_entity(
            lambda s, e: {"subject_id": e, "predicate": "knows", "object_id": s.w.entity_id}
        ),
    ),
    Row("agentmem.cmd.relation.invalidate", "member", "org", fresh_relation),
    Row(
        "agentmem.cmd.predicate.declare",
        "org_admin",
        "org",
        built(lambda s: {"org_id": s.w.own, "predicate": "employer", "single_valued": True}),
    ),
    Row(
        "agentmem.cmd.graph.extract",
        "member",
        "org",
        on_fresh_memory(lambda s, m: {"memory_id": m}),
    ),
    Row("agentmem.cmd.relation.retract", "member", "org", fresh_relation),
    Row(
        "agentmem.cmd.memory.associate",
        "member",
        "org",
        on_fresh_memory(lambda s, m: {"from_memory_id": m, "to_memory_id": s.w.memory_id}),
    ),
    Row("agentmem.cmd.memory.dissociate", "member", "org", association_body),
    Row(
        "agentmem.q.entity.get",
        "reader",
        "org",
        built(lambda s: {"entity_id": s.w.entity_id, "after_seq": s.w.seen}),
        lambda s, d: d["entity_id"] == s.w.entity_id,
    ),
    Row(
        "agentmem.q.entity.list",
        "reader",
        "org",
        built(lambda s: {"org_id": s.w.own, "name_prefix": "Ann", "after_seq": s.w.seen}),
        lambda s, d: listed(d, "entity_id") == [s.w.entity_id],
    ),
    Row(
        "agentmem.q.entity.resolve",
        "reader",
        "org",
        built(lambda s: {"org_id": s.w.own, "name": "ann table", "after_seq": s.w.seen}),
        lambda s, d: d["entity_id"] == s.w.entity_id,
    ),
    Row(
        "agentmem.q.graph.neighbors",
        "reader",
        "org",
        built(lambda s: {"entity_id": s.w.entity_id, "after_seq": s.w.seen}),
        lambda s, d: s.w.place_id in listed({"items": d["nodes"]}, "entity_id"),
    ),
    Row(
        "agentmem.q.graph.path",
        "reader",
        "org",
        built(lambda s: {"from_id": s.w.entity_id, "to_id": s.w.place_id, "after_seq": s.w.seen}),
        lambda s, d: d["entity_ids"] == [s.w.entity_id, s.w.place_id],
    ),
    Row(
        "agentmem.q.graph.facts",
        "reader",
        "org",
        built(lambda s: {"entity_id": s.w.entity_id, "after_seq": s.w.seen}),
        lambda s, d: "lives in" in d["text"],
    ),
    Row(
        "agentmem.q.predicate.list",
        "reader",
        "org",
        built(lambda s: {"org_id": s.w.own, "after_seq": s.w.seen}),
        lambda s, d: "lives_in" in listed(d, "predicate"),
    ),
    Row(
        "agentmem.q.graph.stats",
        "reader",
        "org",
        built(lambda s: {"org_id": s.w.own, "after_seq": s.w.seen}),
        lambda s, d: d["entities"] >= 2,
    ),
    Row(
        "agentmem.q.memory.associations",
        "reader",
        "org",
        built(lambda s: {"memory_id": s.w.memory_id, "after_seq": s.w.seen}),
        lambda s, d: isinstance(d["items"], list),
    ),
    # Organizations
    Row("agentmem.cmd.org.create", "service_admin", "none", built(lambda s: {"name": "New"})),
    Row("agentmem.cmd.org.delete", "org_admin", "org", delete_org_body),
    Row(
        "agentmem.cmd.org.rename",
        "org_admin",
        "org",
        built(lambda s: {"org_id": s.w.own, "name": s.w.unique("renamed")}),
    ),
    Row(
        "agentmem.q.org.get",
        "reader",
        "org",
        built(lambda s: {"org_id": s.w.own, "after_seq": s.w.seen}),
        lambda s, d: d["org_id"] == s.w.own,
    ),
    Row(
        "agentmem.q.org.list",
        "reader",
        "scoped",
        built(lambda s: {"limit": 500, "after_seq": s.w.seen}),
        orgs_listed,
    ),
    # History
    Row(
        "agentmem.q.history.get",
        "reader",
        "org",
        built(lambda s: {"aggregate": "org", "id": s.w.own}),
        lambda s, d: d["items"][0]["commit_type"] == "org.create",
    ),
    # Tools
    Row("agentmem.cmd.tool.delete", "org_admin", "org", delete_tool_body),
    Row(
        "agentmem.cmd.tool.register",
        "member",
        "org",
        built(lambda s: {"org_id": s.w.own, "name": s.w.unique("tool").replace("-", "_")}),
    ),
    Row(
        "agentmem.cmd.tool.update",
        "member",
        "org",
        built(lambda s: {"tool_id": s.w.tool_id, "description": s.w.unique("d")}),
    ),
    Row(
        "agentmem.q.tool.get",
        "reader",
        "org",
        built(lambda s: {"tool_id": s.w.tool_id, "after_seq": s.w.seen}),
        lambda s, d: d["tool_id"] == s.w.tool_id,
    ),
    Row(
        "agentmem.q.tool.list",
        "reader",
        "org",
        built(lambda s: {"org_id": s.w.own, "limit": 500, "after_seq": s.w.seen}),
        lambda s, d: s.w.tool_id in listed(d, "tool_id"),
    ),
    # Users
    Row(
        "agentmem.cmd.user.change_password",
        "self",
        "org",
        change_theirs,
        variant="another user's",
    ),
    Row(
        "agentmem.cmd.user.change_password",
        "self",
        "own",
        built(lambda s: {"user_id": s.me, "old_password": PASSWORD, "new_password": PASSWORD}),
        variant="own",
        special={"service_admin": SERVICE_ADMIN_PASSWORD_UNKNOWN},
    ),
    Row("agentmem.cmd.user.delete", "org_admin", "org", fresh_victim),
    Row("agentmem.cmd.user.forget", "self", "org", fresh_victim, variant="another user's"),
    Row("agentmem.cmd.user.forget", "self", "own", forget_self, variant="own"),
    Row(
        "agentmem.cmd.user.register",
        "org_admin",
        "org",
        built(
            lambda s: {
                "org_id": s.w.own,
                "name": "New",
                "email": f"{s.w.unique('new')}@example.com",
                "password": PASSWORD,
            }
        ),
    ),
    Row("agentmem.cmd.user.set_roles", "org_admin", "org", set_roles_body),
    Row(
        "agentmem.cmd.user.update_profile",
        "self",
        "org",
        built(lambda s: {"user_id": s.w.victim.user_id, "name": s.w.unique("name")}),
        variant="another user's",
    ),
    Row(
        "agentmem.cmd.user.update_profile",
        "self",
        "own",
        built(lambda s: {"user_id": s.me, "name": s.w.unique("name")}),
        variant="own",
    ),
    Row(
        "agentmem.q.user.email_exists",
        "org_admin",
        "none",
        built(lambda s: {"email": s.w.victim.email, "after_seq": s.w.seen}),
        lambda s, d: d["exists"] is True,
    ),
    Row(
        "agentmem.q.user.get",
        "reader",
        "org",
        built(lambda s: {"user_id": s.w.victim.user_id, "after_seq": s.w.seen}),
        lambda s, d: d["user_id"] == s.w.victim.user_id,
    ),
    Row(
        "agentmem.q.user.get_by_email",
        "reader",
        "org",
        built(lambda s: {"email": s.w.victim.email, "after_seq": s.w.seen}),
        lambda s, d: d["user_id"] == s.w.victim.user_id,
    ),
    Row(
        "agentmem.q.user.list",
        "reader",
        "org",
        built(lambda s: {"org_id": s.w.own, "limit": 500, "after_seq": s.w.seen}),
        lambda s, d: s.w.victim.user_id in listed(d, "user_id"),
    ),
    # The system
    Row(
        "agentmem.sys.health",
        None,
        "none",
        fixed({}),
        lambda s, d: d["live"] is True,
    ),
    Row(
        "agentmem.sys.schema",
        None,
        "none",
        fixed({}),
        lambda s, d: str(d["asyncapi"]).startswith("3."),
    ),
    Row(
        "agentmem.sys.status",
        "service_admin",
        "none",
        fixed({}),
        lambda s, d: "projections" in d,
    ),
]


def expected(row: Row, role: str) -> str:
    """The outcome of a cell: ``ok`` or an error code, from the row's need and scope."""
    if role in row.special:
        return row.special[role][0]
    if row.need is None:
        return OK  # public: a header, if sent, is ignored
    if role == "anonymous":
        return "unauthenticated"
    if role == "service_admin":
        return OK  # everything, in every organization
    if row.scope == "org" and role == "other_org_admin":
        return "not_found"  # another organization's target is answered as a missing one
    holders = OWN_ACCOUNT if row.scope == "own" and row.need == "self" else HOLDERS[row.need]
    return OK if ORG_ROLE[role] in holders else "forbidden"


CELLS = [pytest.param(row, role, id=f"{row.name}-{role}") for row in ROWS for role in ROLES]


# One service per store (module_service in conftest.py) ---------------------------------------
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    module_service: Service, module_server: NatsServer, module_data_dir: Path
) -> AsyncIterator[World]:
    nc = await nats.connect(module_server.url)
    root_key = admin_key(module_data_dir)
    root = Client(nc, root_key)
    admin = tokens.parse(root_key)
    assert admin is not None
    own = str((await root.create_org("Own")).fields["org_id"])
    other = str((await root.create_org("Other")).fields["org_id"])
    agent_id = str((await root.create_agent("Shared", org_id=own)).fields["agent_id"])
    tool_id = str((await root.register_tool("shared", org_id=own)).fields["tool_id"])
    service_admin = Person(admin.user_id, admin.org_id, "admin@agentmem.local", root_key)
    blank = Person("", "", "", "")
    w = World(nc, root, own, other, {}, blank, blank, agent_id, tool_id, "conversation")
    w.callers = {
        "readonly": await w.person(own, "readonly"),
        "member": await w.person(own, "member"),
        "org_admin": await w.person(own, "admin"),
        "other_org_admin": await w.person(other, "admin"),
        "service_admin": service_admin,
    }
    w.victim = await w.person(own, "member")
    w.login = await w.person(own, "member")
    await w.new_key(w.victim.user_id)
    await w.new_message(w.session_id)
    w.memory_id = await w.new_memory()
    ann = await root.create_entity("person", "Ann Table", org_id=own)
    w.entity_id = str(ann.fields["entity_id"])
    place = await root.create_entity("place", "Table Town", org_id=own)
    w.place_id = str(place.fields["entity_id"])
    await root.assert_relation(w.entity_id, "lives_in", w.place_id, valid_from=1)
    persona = await root.create_block("persona", "shared persona", agent_id=agent_id, org_id=own)
    w.block_id = str(persona.fields["block_id"])
    _, w.working_key = await w.new_working_item(WORKING_SESSION)
    w.seen = await w.log_end()
    yield w
    await nc.close()


# The table ---------------------------------------------------------------------------------------
async def test_the_table_covers_every_subject(module_service: Service) -> None:
    declared: dict[str, Operation] = by_subject()
    assert module_service.dispatcher is not None
    assert set(module_service.dispatcher.router.routes) == set(declared)
    rows: dict[str, list[Row]] = {}
    for row in ROWS:
        rows.setdefault(row.subject, []).append(row)
    missing = sorted(set(declared) - set(rows))
    assert not missing, f"add rows to ROWS in tests/test_role_matrix.py for {missing}"
    assert not set(rows) - set(declared), "rows for subjects nobody declares"
    for subject, operation in declared.items():
        for row in rows[subject]:
            assert row.need == operation.need, (
                f"{subject} is declared with need {operation.need!r}; docs/security.md "
                f"(and this table) say {row.need!r}"
            )
        scopes = sorted(row.scope for row in rows[subject])
        # What acts on a user's account is checked on another user's and on the caller's own.
        assert scopes == (["org", "own"] if operation.need == "self" else scopes[:1]), subject
    assert len({row.name for row in ROWS}) == len(ROWS)
    assert len(CELLS) == len(ROWS) * len(ROLES)


@pytest.mark.parametrize(("row", "role"), CELLS)
async def test_every_subject_against_every_role(world: World, row: Row, role: str) -> None:
    scene = Scene(world, role)
    body = await row.body(scene)
    operation = by_subject()[row.subject]
    want = expected(row, role)
    before = await world.log_end()
    headers = bearer(scene.token) if scene.token else None
    message = await world.nc.request(
        row.subject, msgspec.json.encode(body), timeout=10, headers=headers
    )
    reply = envelope.decode(message.data)
    after = await world.log_end()
    cell = f"{row.name} as {role}"
    if want == OK:
        assert reply.ok, f"{cell}: expected ok, got {reply.error}"
        if operation.kind == "command":
            # Carried out: appended, and answered with the event the declaration names (a
            # batch's reply is a view of several events, without a tag of its own).
            assert reply.seq is not None
            assert before < reply.seq <= after, f"{cell}: nothing appended"
            tag = operation.reply.__struct_config__.tag
            assert reply.data["event"] == (tag or reply.data["event"]), reply.data
        else:
            assert after == before, f"{cell}: a read appended to the log"
        if row.answer is not None:
            assert row.answer(scene, reply.data), f"{cell}: answered {reply.data}"
        return
    assert not reply.ok, f"{cell}: expected {want}, but it was carried out: {reply.data}"
    assert reply.error is not None
    assert reply.error.code == want, f"{cell}: expected {want}, got {reply.error}"
    if want == "forbidden":
        assert reply.error.details == {"needs": row.need, "roles": [ORG_ROLE[role]]}, reply.error
    assert after == before, f"{cell}: a refused request appended to the log"
