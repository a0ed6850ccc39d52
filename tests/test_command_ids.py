"""A command id belongs to whoever sent it: two organizations that pick the same command id
never see, replay or pre-empt each other's commands (security review, finding 1).

Each path that recognises a retried command is tried with two organizations, on each store:
the log's duplicate window (message.append), the retry check on a loaded subject
(agent.create with another organization's agent id, user.register), and login, which must
check the password before it answers as a retry.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, ConflictError, NotFoundError
from agentmem.commands import Login
from tests.realparts import bearer

STORES = ("sqlite", "postgres")

PASSWORD = "long-enough-password"
SECRET = "Acme secret: merger with Globex on Friday"


async def member_of(admin: Client, name: str) -> tuple[str, Client]:
    """A fresh organization and a client of one of its members (not a service admin)."""
    org_id = str((await admin.create_org(name)).fields["org_id"])
    user = await admin.register_user(org_id, "Member", f"m@{name}.example", PASSWORD)
    key = await admin.create_api_key("test", user_id=user.fields["user_id"])
    return org_id, admin.with_token(str(key.fields["token"]))


@pytest.fixture
async def two_orgs(client: Client) -> tuple[Client, Client]:
    _, acme = await member_of(client, "acme")
    _, globex = await member_of(client, "globex")
    return acme, globex


async def raw(nc: NATS, subject: str, body: dict[str, Any], token: str | None) -> dict[str, Any]:
    reply = await nc.request(
        subject, msgspec.json.encode(body), timeout=10, headers=bearer(token) if token else None
    )
    decoded: dict[str, Any] = msgspec.json.decode(reply.data)
    return decoded


async def test_a_message_append_with_another_orgs_command_id_is_its_own(
    two_orgs: tuple[Client, Client],
) -> None:
    acme, globex = two_orgs
    for api in (acme, globex):
        await api.create_agent("Helper", agent_id=f"agent-{id(api)}")
    stored = await acme.append_message(
        "s-1", f"agent-{id(acme)}", "user", SECRET, command_id="append-1"
    )
    answered = await globex.append_message(
        "s-1", f"agent-{id(globex)}", "user", "hello", command_id="append-1"
    )
    assert answered.seq > stored.seq  # stored anew, not answered with Acme's commit
    assert SECRET not in msgspec.json.encode(answered.fields).decode()
    assert answered.fields["content"] == "hello"
    page = await globex.list_messages("s-1", after_seq=globex.last_seq)
    assert [m.content for m in page.items] == ["hello"]
    # The same client retrying is still answered with its first outcome.
    again = await acme.append_message(
        "s-1", f"agent-{id(acme)}", "user", SECRET, command_id="append-1"
    )
    assert again.seq == stored.seq


async def test_another_orgs_command_id_sent_first_does_not_swallow_a_later_command(
    two_orgs: tuple[Client, Client],
) -> None:
    acme, globex = two_orgs
    for api in (acme, globex):
        await api.create_agent("Helper", agent_id=f"agent-{id(api)}")
    await globex.append_message("s-1", f"agent-{id(globex)}", "user", "first", command_id="c-7")
    stored = await acme.append_message("s-1", f"agent-{id(acme)}", "user", SECRET, command_id="c-7")
    page = await acme.list_messages("s-1", after_seq=stored.seq)
    assert [m.content for m in page.items] == [SECRET]


async def test_an_agent_create_with_another_orgs_agent_and_command_id_gets_nothing_of_it(
    two_orgs: tuple[Client, Client],
) -> None:
    acme, globex = two_orgs
    created = await acme.create_agent(
        "Helper", persona="Knows the merger plan", agent_id="shared-id", command_id="create-1"
    )
    with pytest.raises((ConflictError, NotFoundError)) as refused:
        await globex.create_agent("Helper", agent_id="shared-id", command_id="create-1")
    assert "merger" not in str(refused.value) + str(refused.value.details)
    # Globex's own agent, under the same command id, is created.
    own = await globex.create_agent("Mine", agent_id="globex-own", command_id="create-1")
    assert own.seq > created.seq
    assert own.fields["agent_id"] == "globex-own"
    assert (await acme.create_agent("Helper", agent_id="shared-id", command_id="create-1")).seq == (
        created.seq
    )


async def test_a_user_register_with_another_orgs_command_id_registers_its_own_user(
    client: Client,
) -> None:
    acme_id = str((await client.create_org("acme")).fields["org_id"])
    globex_id = str((await client.create_org("globex")).fields["org_id"])
    acme_admin = await client.register_user(
        acme_id, "A", "a@acme.example", PASSWORD, roles=["admin"]
    )
    globex_admin = await client.register_user(
        globex_id, "G", "g@globex.example", PASSWORD, roles=["admin"]
    )
    acme = client.with_token(
        str(
            (await client.create_api_key("k", user_id=acme_admin.fields["user_id"])).fields["token"]
        )
    )
    globex = client.with_token(
        str(
            (await client.create_api_key("k", user_id=globex_admin.fields["user_id"])).fields[
                "token"
            ]
        )
    )
    first = await acme.register_user(
        acme_id, "Ann", "ann@acme.example", PASSWORD, command_id="register-ann"
    )
    second = await globex.register_user(
        globex_id, "Bob", "bob@globex.example", PASSWORD, command_id="register-ann"
    )
    assert second.seq > first.seq
    assert second.fields["email"] == "bob@globex.example"
    assert second.fields["org_id"] == globex_id
    assert "ann@acme.example" not in msgspec.json.encode(second.fields).decode()


async def test_login_checks_the_password_before_it_answers_a_retry(
    client: Client, nc: NATS
) -> None:
    org_id = str((await client.create_org("acme")).fields["org_id"])
    await client.register_user(org_id, "Ann", "ann@acme.example", PASSWORD, command_id="reg-ann")
    login = {"email": "ann@acme.example", "password": PASSWORD, "command_id": "login-ann"}
    first = await raw(nc, Login.op.subject, login, None)
    assert first["ok"], first
    # A stranger who knows the command id (history shows it) but not the password.
    for command_id in ("login-ann", "reg-ann"):
        wrong = {**login, "password": "not the password", "command_id": command_id}
        refused = await raw(nc, Login.op.subject, wrong, None)
        assert not refused["ok"]
        assert refused["error"]["code"] == "unauthenticated"
        assert "ann@acme.example" not in msgspec.json.encode(refused).decode()
    # Those failures counted: the throttle was not reset by a replay.
    for _ in range(3):
        await raw(nc, Login.op.subject, {**login, "password": "wrong again!"}, None)
    throttled = await raw(nc, Login.op.subject, login, None)
    assert not throttled["ok"]
    assert "too many failed logins" in throttled["error"]["message"]


async def test_the_same_login_retried_with_its_password_is_answered_once(
    client: Client, nc: NATS
) -> None:
    org_id = str((await client.create_org("acme")).fields["org_id"])
    await client.register_user(org_id, "Ann", "ann@acme.example", PASSWORD)
    login = {"email": "ann@acme.example", "password": PASSWORD, "command_id": "login-1"}
    first = await raw(nc, Login.op.subject, login, None)
    again = await raw(nc, Login.op.subject, login, None)
    assert first["ok"]
    assert again["ok"]
    assert again["seq"] == first["seq"]
    assert again["data"]["session_id"] == first["data"]["session_id"]
    assert again["data"]["token"] is None  # the secret is in the first reply only


async def test_history_shows_the_command_id_the_client_sent(client: Client) -> None:
    created = await client.create_org("acme", command_id="create-acme-1")
    page = await client.history("org", str(created.fields["org_id"]))
    assert page.items[0]["command_id"] == "create-acme-1"


async def test_a_command_id_used_again_for_another_operation_is_a_conflict(
    client: Client, two_orgs: tuple[Client, Client]
) -> None:
    """One command id, one command: sent again for another operation it is neither stored
    a second time nor answered with the first command's outcome (a reply of another shape),
    whichever of the two writes one commit or a batch; the retry of the first one still
    gets its first outcome."""
    acme, _ = two_orgs

    async def last_seq() -> int:
        return int((await client.status())["stream"]["last_seq"])

    created = await acme.create_agent("Helper", command_id="reused-1")
    agent_id = str(created.fields["agent_id"])
    before = await last_seq()
    attempts = [
        acme.register_tool("tz_reused", parameters={"type": "object"}, command_id="reused-1"),
        acme.append_message("s-1", agent_id, "user", "hello", command_id="reused-1"),
        acme.update_agent(agent_id, persona="changed", command_id="reused-1"),
        acme.create_agent("Other", command_id="reused-1"),
    ]
    # The operation it was used for, where the log says (a batch is refused whole).
    used_for = {"command_id": "reused-1", "operation": "agent.create"}
    expected = [{"command_id": "reused-1"}, used_for, used_for]
    for attempt, details in zip(attempts[:3], expected, strict=True):
        with pytest.raises(ConflictError) as refused:
            await attempt
        assert refused.value.details == details
        assert "already used" in str(refused.value)
    retried = await attempts[3]  # the same operation: a retry, answered as the first time
    assert (retried.seq, retried.fields["agent_id"]) == (created.seq, agent_id)
    assert await last_seq() == before, "a reused command id appended"
    # A batch first, then a single commit under its id.
    tool = await acme.register_tool("tz_first", parameters={"type": "object"}, command_id="b-1")
    with pytest.raises(ConflictError) as refused:
        await acme.create_agent("Later", command_id="b-1")
    assert refused.value.details["command_id"] == "b-1"
    again = await acme.register_tool("tz_first", parameters={"type": "object"}, command_id="b-1")
    assert again.seq == tool.seq


async def test_a_command_id_used_again_on_another_aggregate_is_a_conflict(
    client: Client, two_orgs: tuple[Client, Client]
) -> None:
    """The same operation under the same id, on another existing aggregate (another
    agent, another conversation), is no retry: answering it with the first outcome said a
    change was made that was not."""
    acme, _ = two_orgs

    async def last_seq() -> int:
        return int((await client.status())["stream"]["last_seq"])

    one = str((await acme.create_agent("One")).fields["agent_id"])
    two = str((await acme.create_agent("Two")).fields["agent_id"])
    first = await acme.update_agent(one, persona="first", command_id="upd-1")
    await acme.append_message("s-1", one, "user", "hi", command_id="app-1")
    await acme.append_message("s-2", one, "user", "hi")
    await acme.delete_conversation("s-1", command_id="del-1")
    before = await last_seq()
    for attempt in (
        acme.update_agent(two, persona="second", command_id="upd-1"),
        acme.append_message("s-2", one, "user", "again", command_id="app-1"),
        acme.delete_conversation("s-2", command_id="del-1"),
    ):
        with pytest.raises(ConflictError, match="already used for another"):
            await attempt
    assert await last_seq() == before
    # The retry on the same aggregate still gets its first outcome.
    assert (await acme.update_agent(one, persona="first", command_id="upd-1")).seq == first.seq
    assert (await acme.get_agent(two)).persona == ""


async def test_a_command_id_used_again_for_another_new_aggregate_is_a_conflict(
    client: Client, two_orgs: tuple[Client, Client]
) -> None:
    """A create under the id of an earlier create, for another aggregate whose id the
    request decides (a chosen agent id, a memory's content and scope), is no retry:
    answering it with the first outcome said a thing was created that was not."""
    acme, _ = two_orgs

    async def last_seq() -> int:
        return int((await client.status())["stream"]["last_seq"])

    org_id = str((await client.create_org("initech")).fields["org_id"])
    user = await client.register_user(
        org_id, "U", "u@initech.example", PASSWORD, user_id="chosen-u1", command_id="reg-1"
    )
    agent = await acme.create_agent("A", agent_id="chosen-a", command_id="cre-1")
    memory = await acme.add_memory("Ann likes tea", user_id="ann", command_id="add-1")
    batch = await acme.add_memories(
        [{"content": "x", "user_id": "ann"}, {"content": "y", "user_id": "ann"}],
        command_id="batch-1",
    )
    before = await last_seq()
    for attempt in (
        # The same address: its reservation holds the first command's id.
        client.register_user(
            org_id, "U", "u@initech.example", PASSWORD, user_id="chosen-u2", command_id="reg-1"
        ),
        acme.create_agent("B", agent_id="chosen-b", command_id="cre-1"),
        acme.add_memory("Ann likes coffee", user_id="ann", command_id="add-1"),
        acme.add_memory("Ann likes tea", user_id="bob", command_id="add-1"),
        acme.add_memories(
            [{"content": "x", "user_id": "ann"}, {"content": "z", "user_id": "ann"}],
            command_id="batch-1",
        ),
    ):
        with pytest.raises(ConflictError, match="already used for another") as refused:
            await attempt
        assert refused.value.details["command_id"] in {"reg-1", "cre-1", "add-1", "batch-1"}
    assert await last_seq() == before, "a reused command id appended"
    with pytest.raises(NotFoundError):
        await acme.get_agent("chosen-b")
    # The retries of the first commands still get their first outcomes.
    registered = await client.register_user(
        org_id, "U", "u@initech.example", PASSWORD, user_id="chosen-u1", command_id="reg-1"
    )
    assert registered.seq == user.seq
    again = await acme.create_agent("A", agent_id="chosen-a", command_id="cre-1")
    assert again.seq == agent.seq
    added = await acme.add_memory("Ann likes tea", user_id="ann", command_id="add-1")
    assert added.fields["memory_id"] == memory.fields["memory_id"]
    repeated = await acme.add_memories(
        [{"content": "x", "user_id": "ann"}, {"content": "y", "user_id": "ann"}],
        command_id="batch-1",
    )
    assert repeated.memory_ids == batch.memory_ids


async def test_a_memory_correction_retried_or_reused_answers_for_its_own_memory(
    client: Client, two_orgs: tuple[Client, Client]
) -> None:
    """A retried supersede that found its content held already says so again; one whose
    id is reused on another memory, for the same content (whose slot the first one wrote),
    is ``conflict``, and so is a reused update."""
    acme, _ = two_orgs
    paris = str((await acme.add_memory("Ann lives in Paris", user_id="ann")).fields["memory_id"])
    await acme.add_memory("Ann lives in Berlin", user_id="ann")
    first = await acme.supersede_memory(paris, "Ann lives in Berlin", command_id="sup-1")
    again = await acme.supersede_memory(paris, "Ann lives in Berlin", command_id="sup-1")
    assert first.fields["deduplicated"] is True
    assert (again.seq, again.fields) == (first.seq, first.fields)
    a = str((await acme.add_memory("fact a", user_id="ua")).fields["memory_id"])
    b = str((await acme.add_memory("fact b", user_id="ua")).fields["memory_id"])
    made = await acme.supersede_memory(a, "fact c", command_id="sup-2")
    assert made.fields["deduplicated"] is False
    assert (await acme.supersede_memory(a, "fact c", command_id="sup-2")).fields == made.fields
    changed = await acme.update_memory(b, content="fact e", command_id="upd-2")
    d = str((await acme.add_memory("fact d", user_id="ua")).fields["memory_id"])
    before = int((await client.status())["stream"]["last_seq"])
    for attempt in (
        acme.supersede_memory(b, "fact c", command_id="sup-2"),
        acme.update_memory(d, content="fact e", command_id="upd-2"),
    ):
        with pytest.raises(ConflictError, match="already used for another"):
            await attempt
    assert int((await client.status())["stream"]["last_seq"]) == before
    assert (await acme.get_memory(b)).state == "live"
    assert changed.fields["memory_id"] == b
