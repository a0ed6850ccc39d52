"""Export and import (issue 16, point 5), on a real nats-server and each store: an
organization exported from one deployment and imported into a fresh one answers the same
queries; importing it again changes nothing (not one event appended); a forgotten user is
not in the export; a mem0 memory list moves in.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from agentmem import Client, NotFoundError, subjects
from agentmem.consumers.aggregates import AggregateCache
from agentmem.consumers.expiry import ExpirySweeper
from agentmem.eventlog import EventLog
from agentmem.exporting import FORMAT, VERSION, export
from agentmem.importing import ImportError_, import_export, import_mem0, mem0_memories
from agentmem.service import Service
from tests.conftest import admin_key, answering, settings_for
from tests.pg import DSN, postgres_schema, with_search_path
from tests.realparts import clean_env, deployment_keys, keys_of, run_cli, wait_caught_up
from tests.support import NatsServer

STORES = ("sqlite", "postgres")
PASSWORD = "long-enough-password"
FORGOTTEN_EMAIL = "zanzibar.forgotten@example.org"
FORGOTTEN_TEXT = "Zanzibarquill secret of the forgotten user"
REDACTED_TEXT = "my card number is 4111-1111"
EXPIRED_TEXT = "Ann's passing mood, expired"


@contextlib.asynccontextmanager
async def fresh_deployment(folder: Path, store_kind: str) -> AsyncIterator[tuple[NATS, str]]:
    """Another deployment: its own nats-server, data dir and store (of the same kind)."""
    server = NatsServer(folder / "nats")
    server.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(server.stop)
        if store_kind == "postgres":
            schema = await stack.enter_async_context(postgres_schema())
            store = with_search_path(DSN, schema)
        else:
            store = str(folder / "agentmem.db")
        service = Service(settings_for(server, folder, store))
        await service.start()
        stack.push_async_callback(service.stop)
        await answering(server.url)
        nc = await nats.connect(server.url)
        stack.push_async_callback(nc.close)
        yield nc, admin_key(folder)


async def last_seq(nc: NATS) -> int:
    return int((await nc.jetstream().stream_info(subjects.STREAM_NAME)).state.last_seq)


async def snapshot(client: Client, org_id: str, ids: dict[str, str]) -> dict[str, Any]:
    """What the queries of an organization answer, without what a deployment makes itself
    (message ids, sequences, times of writing)."""
    user = await client.get_user(ids["user"])
    agent = await client.get_agent(ids["agent"])
    state = await client.get_agent_state(ids["agent"])
    messages = (await client.list_messages("s1", org_id=org_id)).items
    deleted_session = (await client.list_messages("s3", org_id=org_id)).items
    agents = (await client.list_agents(org_id=org_id, include_archived=True)).items
    memories = (
        await client.list_memories(
            org_id=org_id, states=["live", "archived", "superseded"], limit=100
        )
    ).items
    blocks = (await client.list_blocks(agent_id=ids["agent"], org_id=org_id)).items
    tools = (await client.list_tools(org_id=org_id)).items
    return {
        "org": (await client.get_org(org_id)).name,
        "user": (user.user_id, user.name, user.email, list(user.roles)),
        "agent": (agent.agent_id, agent.name, agent.persona, list(agent.tags), agent.metadata),
        "state": state.state,
        "messages": [(m.role, m.content, m.user_id, m.redacted) for m in messages],
        "deleted session": deleted_session,
        "agents": sorted((a.agent_id, a.name, a.archived) for a in agents),
        "memories": sorted(
            (m.memory_id, m.content, m.user_id, list(m.tags), m.metadata, m.state, m.superseded_by)
            for m in memories
        ),
        "blocks": [(b.block_id, b.label, b.content) for b in blocks],
        "tools": [(t.tool_id, t.name, t.description) for t in tools],
    }


async def test_an_organization_moves_to_a_fresh_deployment(
    service: Service, nc: NATS, admin_token: str, tmp_path: Path, store_kind: str
) -> None:
    admin = Client(nc, admin_token)
    org_id = str((await admin.create_org("Movers")).fields["org_id"])
    user_id = str(
        (await admin.register_user(org_id, "Ann", "ann@example.org", PASSWORD)).fields["user_id"]
    )
    gone = str(
        (await admin.register_user(org_id, "Zed", FORGOTTEN_EMAIL, PASSWORD)).fields["user_id"]
    )
    agent_id = str(
        (await admin.create_agent("Helper", persona="Be kind", tags=["a"], org_id=org_id)).fields[
            "agent_id"
        ]
    )
    await admin.set_agent_state(agent_id, {"step": 3})
    await admin.append_message(
        "s1", agent_id, "user", "Hello there", user_id=user_id, org_id=org_id
    )
    await admin.append_messages(
        "s1",
        agent_id,
        [{"role": "assistant", "content": "Hi Ann"}, {"role": "user", "content": "Bye"}],
        user_id=user_id,
        org_id=org_id,
    )
    await admin.append_message("s2", agent_id, "user", FORGOTTEN_TEXT, user_id=gone, org_id=org_id)
    kept = await admin.add_memory("Ann likes tea", user_id=user_id, tags=["food"], org_id=org_id)
    changed = await admin.add_memory("Ann lives in Oslo", user_id=user_id, org_id=org_id)
    await admin.update_memory(str(changed.fields["memory_id"]), content="Ann lives in Bergen")
    archived = await admin.add_memory("Ann had a cat", user_id=user_id, org_id=org_id)
    await admin.archive_memory(str(archived.fields["memory_id"]))
    await admin.add_memory(FORGOTTEN_TEXT, user_id=gone, org_id=org_id)
    block = await admin.create_block("persona", "Ann's helper", agent_id=agent_id, org_id=org_id)
    await admin.set_block(str(block.fields["block_id"]), "Ann's helper, since 2026")
    await admin.register_tool("lookup", description="Looks things up", org_id=org_id)
    # What undoes or ends something: the import must do it too (a redaction above all).
    await admin.rename_org(org_id, "Movers Inc")
    await admin.update_profile(user_id, name="Ann Lee")
    await admin.set_roles(user_id, ["admin"])
    said = await admin.append_message(
        "s1", agent_id, "user", REDACTED_TEXT, user_id=user_id, org_id=org_id
    )
    await admin.redact_message("s1", str(said.fields["message_id"]), org_id=org_id)
    await admin.append_message("s3", agent_id, "user", "Soon gone", org_id=org_id)
    await admin.delete_conversation("s3", org_id=org_id)
    paused = str((await admin.create_agent("Paused", org_id=org_id)).fields["agent_id"])
    await admin.archive_agent(paused)
    await admin.unarchive_agent(paused)
    dropped = str((await admin.create_agent("Dropped", org_id=org_id)).fields["agent_id"])
    await admin.delete_agent(dropped)
    resting = str((await admin.create_agent("Resting", org_id=org_id)).fields["agent_id"])
    await admin.archive_agent(resting)
    await admin.attach_block(str(block.fields["block_id"]), paused)
    await admin.detach_block(str(block.fields["block_id"]), paused)
    tool = await admin.register_tool("scratch", org_id=org_id)
    await admin.delete_tool(str(tool.fields["tool_id"]))
    paris = await admin.add_memory("Ann lives in Paris", user_id=user_id, org_id=org_id)
    await admin.supersede_memory(str(paris.fields["memory_id"]), "Ann lives in Berlin")
    tea = str(kept.fields["memory_id"])
    coffee = await admin.add_memory("Ann likes coffee", user_id=user_id, org_id=org_id)
    await admin.supersede_memory(tea, "Ann likes coffee")  # by a memory already there
    dog = await admin.add_memory("Ann has a dog", user_id=user_id, org_id=org_id)
    await admin.archive_memory(str(dog.fields["memory_id"]))
    await admin.restore_memory(str(dog.fields["memory_id"]))
    await admin.put_working("s1", "draft reply", org_id=org_id)  # no command imports it
    # A memory the expiry sweep emptied: its content left every answer, and the export.
    await admin.add_memory(EXPIRED_TEXT, user_id=user_id, org_id=org_id, expires_at=1)
    await admin.list_memories(org_id=org_id, after_seq=admin.last_seq)  # the sweep reads rows
    assert service.store is not None
    sweeping = EventLog(nc, keys=deployment_keys(nc))
    assert await ExpirySweeper(sweeping, AggregateCache(sweeping), service.store).sweep() == 1
    await admin.forget_user(gone)
    await wait_caught_up(nc, admin_token)

    keys = await keys_of(nc)
    try:
        out = io.BytesIO()
        counts = await export(nc, keys, out, org_id)
        mine = io.BytesIO()
        await export(nc, keys, mine, org_id, user_id)
    finally:
        await keys.stop()
    data = out.getvalue()
    lines = [json.loads(line) for line in data.splitlines()]
    assert lines[0]["format"] == FORMAT
    assert lines[0]["version"] == VERSION
    assert lines[-1] == {"end": {"events": counts.events, "forgotten": counts.forgotten,
                                 "unreadable": 0, "expired": 2}}  # fmt: skip
    assert [line["seq"] for line in lines[1:-1]] == sorted(line["seq"] for line in lines[1:-1])
    # The forgotten user is not in it: no text, no email, not even their ids' events.
    assert FORGOTTEN_TEXT.encode() not in data
    assert FORGOTTEN_EMAIL.encode() not in data
    assert gone.encode() not in data
    assert counts.forgotten >= 3  # their profile, their message, their memory
    assert b"password_hash" not in data
    assert b"Hello there" in data
    # A redacted message is exported as the service shows it: said, emptied.
    assert REDACTED_TEXT.encode() not in data
    assert EXPIRED_TEXT.encode() not in data
    assert counts.expired == 2  # the memory's added and expired events
    # One user's export: their events, no one else's.
    own = [json.loads(line) for line in mine.getvalue().splitlines()[1:-1]]
    assert {e["event"].get("user_id") for e in own if e["event"]["type"] == "memory.added"} == {
        user_id
    }
    assert not [e for e in own if e["event"]["type"] in ("agent.created", "tool.registered")]
    assert [e["event"]["content"] for e in own if e["event"]["type"] == "message.appended"] == [
        "Hello there",
        "Hi Ann",
        "Bye",
        "",  # redacted
    ]

    ids = {"user": user_id, "agent": agent_id}
    source = await snapshot(admin, org_id, ids)
    assert len(source["memories"]) == 7
    assert [m[6] for m in source["memories"] if m[5] == "superseded"] != []
    assert source["messages"][-1][1:] == ("", user_id, True)
    assert source["deleted session"] == []
    assert str(coffee.fields["memory_id"]) in {m[0] for m in source["memories"]}
    async with fresh_deployment(tmp_path / "target", store_kind) as (target_nc, token):
        target = Client(target_nc, token, timeout=30.0)
        first = await import_export(target, io.BytesIO(data))
        assert first.failed == []
        assert first.complete
        # Counted as skipped: what has no command (working memory), nothing that has one.
        assert set(first.skipped) == {"working.item_put"}, first.skipped
        await wait_caught_up(target_nc, token)
        assert await snapshot(target, org_id, ids) == source
        assert str(kept.fields["memory_id"]) in {m[0] for m in source["memories"]}
        with pytest.raises(NotFoundError):
            await target.get_user(gone)

        # Again: every command is answered with its first outcome; the log does not move.
        before = await last_seq(target_nc)
        again = await import_export(target, io.BytesIO(data))
        assert again.applied == 0
        assert again.failed == []
        assert await last_seq(target_nc) == before
        assert await snapshot(target, org_id, ids) == source

        # Not an export: refused before anything is sent.
        with pytest.raises(ImportError_):
            await import_export(target, io.BytesIO(b'{"format": "something else"}\n'))


MEM0 = {
    "results": [
        {
            "id": "8f9d1c2e-0000-4000-8000-000000000001",
            "memory": "Prefers window seats",
            "user_id": "alice",
            "agent_id": None,
            "run_id": None,
            "hash": "3c9f",
            "metadata": {"source": "chat"},
            "categories": ["travel"],
            "created_at": "2024-07-20T10:15:00-07:00",
            "updated_at": "2024-07-21T10:15:00-07:00",
        },
        {
            "id": "8f9d1c2e-0000-4000-8000-000000000002",
            "memory": "Allergic to shellfish",
            "user_id": "bob@example.org",
            "agent_id": "travel-agent",
            "run_id": "trip-42",
            "metadata": None,
            "created_at": "2024-07-22T08:00:00Z",
        },
    ]
}


def test_a_mem0_memory_list_becomes_memory_items() -> None:
    alice, bob = mem0_memories(MEM0)
    assert alice["content"] == "Prefers window seats"
    assert alice["user_id"] == "alice"
    assert alice["tags"] == ["travel"]
    assert alice["metadata"] == {"source": "chat", "mem0_id": MEM0["results"][0]["id"]}
    assert alice["valid_from"] == 1721495700000  # 2024-07-20T17:15:00Z
    assert bob["user_id"].startswith("bob-example-org-")  # an email is no id here
    assert bob["metadata"]["mem0_user_id"] == "bob@example.org"
    assert (bob["agent_id"], bob["session_id"]) == ("travel-agent", "trip-42")
    assert mem0_memories([{"memory": "x"}])[0]["agent_id"] == "mem0"  # some scope
    with pytest.raises(ImportError_):
        mem0_memories({"memories": "nope"})


async def test_a_mem0_user_moves_in(service: Service, nc: NATS, admin_token: str) -> None:
    admin = Client(nc, admin_token)
    org_id = str((await admin.create_org("From mem0")).fields["org_id"])
    data = msgspec.json.encode(MEM0)
    first = await import_mem0(admin, io.BytesIO(data), org_id)
    assert (first.applied, first.already, first.failed) == (2, 0, [])
    before = await last_seq(nc)
    again = await import_mem0(admin, io.BytesIO(data), org_id)
    assert (again.applied, again.already) == (0, 2)
    assert await last_seq(nc) == before
    found = (await admin.list_memories(org_id=org_id, user_id="alice")).items
    assert [(m.content, list(m.tags)) for m in found] == [("Prefers window seats", ["travel"])]
    # A memory the service would refuse fails alone, not the batch around it.
    flawed = [{"memory": "", "user_id": "carol"}, {"memory": "Likes tea", "user_id": "carol"}]
    mixed = await import_mem0(admin, io.BytesIO(msgspec.json.encode(flawed)), org_id)
    assert (mixed.applied, len(mixed.failed)) == (1, 1)
    assert mixed.failed[0].startswith("mem0 memory 0: "), mixed.failed


async def test_the_commands_export_and_import(
    service: Service, nc: NATS, admin_token: str, tmp_path: Path, store_kind: str
) -> None:
    """``agentmem export`` writes a private file; ``agentmem import`` replays it into
    another deployment, and a second time finds everything already there."""
    if store_kind != "sqlite":
        pytest.skip("the commands are the same on every store")
    admin = Client(nc, admin_token)
    org_id = str((await admin.create_org("By command")).fields["org_id"])
    agent_id = str((await admin.create_agent("Helper", org_id=org_id)).fields["agent_id"])
    await admin.append_message("s1", agent_id, "user", "Hello", org_id=org_id)
    out = tmp_path / "export.ndjson"
    url = service.settings.nats_url or ""
    ran = await run_cli(
        "export", "--org", org_id, "--out", str(out), "--data-dir", str(tmp_path), "--nats", url,
        env=clean_env(),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "exported 3 events" in ran.stderr  # the org, the agent, the message
    assert out.stat().st_mode & 0o777 == 0o600
    assert b"Hello" in out.read_bytes()
    # A mistyped organization or user exports nothing: a failure, not an empty backup.
    for who in (["--org", "no-such-org"], ["--org", org_id, "--user", "no-such-user"]):
        ran = await run_cli(
            "export", *who, "--out", str(tmp_path / "typo.ndjson"), "--data-dir", str(tmp_path),
            "--nats", url, env=clean_env(),
        )  # fmt: skip
        assert ran.returncode == 1, ran
        assert "to export (a mistyped id?)" in ran.stderr.splitlines()[-1], ran.stderr
    async with fresh_deployment(tmp_path / "target", store_kind) as (target_nc, target_token):
        token = tmp_path / "token"
        token.write_text(target_token)
        target_url = target_nc.connected_url
        assert target_url is not None
        flags = ["--token-file", str(token), "--data-dir", str(tmp_path / "target")]
        flags += ["--nats", f"nats://{target_url.hostname}:{target_url.port}"]
        ran = await run_cli("import", str(out), *flags, env=clean_env())
        assert ran.returncode == 0, ran.stderr
        assert "applied 3, already there 0, failed 0" in ran.stdout
        before = await last_seq(target_nc)
        ran = await run_cli("import", str(out), *flags, env=clean_env())
        assert ran.returncode == 0, ran.stderr
        assert "applied 0, already there 3, failed 0" in ran.stdout
        assert await last_seq(target_nc) == before
