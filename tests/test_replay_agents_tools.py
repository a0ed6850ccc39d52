"""Replaying the log rebuilds the agents and tools tables row for row: the live tables, on
either store, equal a replay into a fresh SQLite file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from agentmem import Client
from agentmem.projections.agents import AGENT_STATES, AGENT_TAGS, AGENTS
from agentmem.projections.tools import TOOL_TAGS, TOOLS
from agentmem.service import Service
from tests.realparts import dump_store, replay_into, rows, wait_caught_up

STORES = ("sqlite", "postgres")

TABLES = [AGENTS, AGENT_TAGS, AGENT_STATES, TOOLS, TOOL_TAGS]


async def run_mix(client: Client) -> dict[str, str]:
    """Every agent and tool event, in two organizations, one of which is then deleted."""
    acme = (await client.create_org("Acme")).fields["org_id"]
    gone = (await client.create_org("Gone")).fields["org_id"]
    made: dict[str, str] = {"acme": acme, "gone": gone}

    async def agent(key: str, org: str, **fields: Any) -> str:
        made[key] = (await client.create_agent(key, org_id=org, **fields)).fields["agent_id"]
        return made[key]

    kept = await agent("kept", acme, tags=["a", "b"], model={"name": "m"}, metadata={"x": [1]})
    await client.update_agent(kept, persona="You are kept.", tags=["b", "c"])
    await client.set_agent_state(kept, {"plan": ["one"], "n": 1})
    await client.patch_agent_state(kept, {"n": None, "plan": ["one", "two"], "mood": "ok"})
    shelved = await agent("shelved", acme, tags=["a"])
    await client.set_agent_state(shelved, {"s": True})
    await client.archive_agent(shelved)
    back = await agent("back", acme)
    await client.archive_agent(back)
    await client.unarchive_agent(back)
    deleted = await agent("deleted", acme, tags=["a"])
    await client.set_agent_state(deleted, {"d": 1})
    await client.delete_agent(deleted)
    await agent("orphan", gone, tags=["g"])
    await client.set_agent_state(made["orphan"], {"o": 1})

    async def tool(name: str, org: str, **fields: Any) -> str:
        made[name] = (await client.register_tool(name, org_id=org, **fields)).fields["tool_id"]
        return made[name]

    search = await tool("search", acme, tags=["web", "read"])
    await client.update_tool(search, name="web_search", description="Search the web")
    await client.update_tool(search, parameters={"type": "object", "required": ["q"]}, tags=[])
    dropped = await tool("dropped", acme, tags=["x"])
    await client.delete_tool(dropped)
    await tool("search", acme, tags=["again"])  # the freed name, taken again
    await tool("gone_tool", gone, tags=["g"])
    await client.delete_org(gone)
    return made


def assert_mix(dumped: dict[str, Any], made: dict[str, str]) -> None:
    agents, states = rows(dumped, AGENTS), rows(dumped, AGENT_STATES)
    assert set(agents) == {made["kept"], made["shelved"], made["back"]}
    assert agents[made["kept"]]["persona"] == "You are kept."
    assert agents[made["kept"]]["tags"] == '["b","c"]'
    assert (agents[made["shelved"]]["archived"], agents[made["back"]]["archived"]) == (1, 0)
    # Every agent has its state row from its creation (the empty document until set).
    assert set(states) == {made["kept"], made["shelved"], made["back"]}
    assert states[made["back"]]["state"] == "{}"
    assert states[made["kept"]]["state"] == '{"plan":["one","two"],"mood":"ok"}'
    acme = made["acme"]
    assert sorted(dumped["agent_tags"]) == sorted(
        [(made["kept"], "b", acme), (made["kept"], "c", acme), (made["shelved"], "a", acme)]
    )
    tools = {t["name"]: t for t in rows(dumped, TOOLS).values()}
    assert set(tools) == {"web_search", "search"}
    assert tools["web_search"]["parameters"] == '{"type":"object","required":["q"]}'
    assert [tuple(r[:2]) for r in dumped["tool_tags"]] == [(made["search"], "again")]


async def test_replay_into_a_fresh_file_equals_the_live_tables(
    service: Service, client: Client, nc: NATS, tmp_path: Path, admin_token: str
) -> None:
    assert service.store is not None
    made = await run_mix(client)
    await wait_caught_up(nc, admin_token)
    live = await dump_store(service.store)
    assert_mix(live, made)

    replayed = await replay_into(nc, tmp_path / "replayed.db")

    for table in TABLES:
        assert replayed[table.name] == live[table.name], table.name
    assert dict(replayed["checkpoints"])["agents"] == dict(live["checkpoints"])["agents"]
    assert dict(replayed["checkpoints"])["tools"] == dict(live["checkpoints"])["tools"]
