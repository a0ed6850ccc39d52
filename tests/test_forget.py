"""Forgetting for real (crypto-shredding), against the real service, a real nats-server and
each projection store: personal fields are sealed in the log; a forget deletes the keys
(erased on disk), the rows and the search index entries; queries answer as if the data
never existed; history says that something was forgotten, when and by whom; replay gives
the same tables; and no byte of the forgotten text, its email or its wrapped key is left
in any file under the data dir (JetStream store, SQLite file, -wal, -shm) or in any
Postgres table.

``AGENTMEM_TEST_SKIP_FORGET=1`` runs the proof without the forget: it must then fail
(the text is still there), which shows that the search for leftovers can find them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from agentmem import (
    Client,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UnauthenticatedError,
    subjects,
)
from agentmem.consumers.vector_index import VectorIndex
from agentmem.domain import forget
from agentmem.domain.aggregate import Write
from agentmem.domain.relations import Provenance, derived_from
from agentmem.eventlog import CommitMeta, EventLog
from agentmem.events import (
    DataForgotten,
    Event,
    GraphExtracted,
    MessageAppended,
    OrgCreated,
    RelationAsserted,
    Shredded,
)
from agentmem.keys import (
    PREFIX,
    STREAM,
    KeyRing,
    MasterKeys,
    matches,
    plaintext_until,
    scope_names,
    scope_of,
)
from agentmem.personal import Personal, key_filter, key_name, personal_fields
from agentmem.projections import graph as graph_projection
from agentmem.projections.memories import FORGETS, MEMORIES, MEMORY_TAGS
from agentmem.projections.messages import MESSAGES
from agentmem.projections.rows import forgotten_rows
from agentmem.projections.users import USERS
from agentmem.sealing import open_events, seal
from agentmem.service import Service
from agentmem.store import Delete
from tests.conftest import admin_key, settings_for
from tests.pg import postgres_file_leftovers
from tests.realparts import (
    clean_env,
    dump_store,
    eventually,
    keys_of,
    replay_into,
    rows,
    run_cli,
    status,
    wait_caught_up,
)
from tests.support import NatsServer

STORES = ("sqlite", "postgres")

NAME = "Wilhelmina Quorvexcombe"
EMAIL = "wilhelmina.quorvexcombe@example.org"
MESSAGE = "Quixotrellium note: Wilhelmina cannot eat peanuts, tell the kitchen"
MEMORY = "Wilhelmina Quorvexcombe is allergic to peanuts (Quixotrellium)"
TAG = "zebracorn-allergy"
STATE = "Vorpalquince state document"
# The knowledge graph's text: an entity's name, alias and attributes, a fact, a retraction.
PLACE = "Glimmerwick Abbey"
ALIAS = "Willa Quorvex"
ATTRIBUTE = "Snorkelbrook Lane 7"
FACT = "Wilhelmina lives at Glimmerwick Abbey since Quixotrellium"
REASON = "Frumblewort mistake"
BLOCK = "Core block: Wilhelmina prefers Glimmerwhistle tea"
WORKING = "Working note: Frobnizzle appointment at noon"
# Free-form fields: an agent's model settings, the producer of a fact.
MODEL = "Zanzibarquill tuned model"
PRODUCER = "Plumtwizzle extractor"
PASSWORD = "long-enough-password"
SKIP_FORGET = os.environ.get("AGENTMEM_TEST_SKIP_FORGET") == "1"


def needles(*extra: bytes) -> list[bytes]:
    texts = [NAME, EMAIL, MESSAGE, MEMORY, TAG, "Quixotrellium", "quixotrellium", STATE]
    texts += [PLACE, PLACE.casefold(), ALIAS, ATTRIBUTE, FACT, REASON]
    texts += [BLOCK, "Glimmerwhistle", WORKING, "Frobnizzle", MODEL, PRODUCER]
    return [t.encode() for t in texts] + list(extra)


def leftovers(folder: Path, wanted: list[bytes]) -> list[str]:
    """Every (file, needle) where a file under ``folder`` holds a needle's bytes."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        found += [f"{path.relative_to(folder)}: {n[:40]!r}" for n in wanted if n in data]
    return found


async def postgres_leftovers(store_url: str, wanted: list[bytes]) -> list[str]:
    """Every (table, needle) where a row of a table of the test's schema holds a needle."""
    connection = await asyncpg.connect(store_url)
    try:
        tables = await connection.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
        found = []
        for (table,) in tables:
            for (text,) in await connection.fetch(f"SELECT t::text FROM {table} t"):
                found += [f"{table}: {n[:40]!r}" for n in wanted if n in text.encode()]
        return found
    finally:
        await connection.close()


def in_memory_index(service: Service) -> VectorIndex:
    """The query side's vector index of the service process (made by its first search)."""
    assert service.parts is not None
    assert service.parts.recall is not None
    index = service.parts.recall.index
    assert index is not None
    return index


async def vector_ids(service: Service) -> set[str]:
    """The memories the ``memory_vectors`` table holds a row of (any model, any state)."""
    rows = await service.store.fetch_all("SELECT memory_id FROM memory_vectors")
    return {str(row["memory_id"]) for row in rows}


async def found_by_meaning(admin: Client, text: str, org_id: str) -> list[str]:
    return [m.memory_id for m in await admin.search_memories(text, mode="vector", org_id=org_id)]


async def wrapped_keys(nc: NATS, pattern: str) -> list[bytes]:
    """The values the key bucket holds for ``pattern``: the wrapped keys as they are stored."""
    keys = KeyRing(nc, MasterKeys([bytes(32)]))
    values = []
    for name in await keys.names(pattern):
        reply = await nc.request(
            f"$JS.API.STREAM.MSG.GET.{STREAM}",
            msgspec.json.encode({"last_by_subj": PREFIX + name}),
        )
        message = msgspec.json.decode(reply.data).get("message")
        if message and message.get("data"):
            data = base64.b64decode(message["data"])
            if data:
                values.append(data)
    return values


# The declaration and the cipher, against a real nats-server -------------------------------
async def test_personal_fields_are_sealed_and_read_back(nats_server: NatsServer, tmp_path: Path):
    nc = await nats.connect(nats_server.url)
    keys = KeyRing(nc, MasterKeys.load(tmp_path / "master.key"))
    await keys.start()
    try:
        subject = subjects.event("o1", "conversation", "s1")
        event = MessageAppended(
            message_id="m1",
            session_id="s1",
            agent_id="a1",
            role="user",
            content=MESSAGE,
            user_id="u1",
            metadata={"email": EMAIL},
        )
        payload = await seal(subject, [event, OrgCreated(org_id="o1", name="Acme")], keys)
        assert MESSAGE.encode() not in payload
        assert EMAIL.encode() not in payload
        assert b'"message_id":"m1"' in payload  # ids and roles stay readable
        assert b'"role":"user"' in payload
        assert key_name(subject, event) == "o1.u1.a1.s1.conversation.s1"
        assert await open_events(payload, keys) == [event, OrgCreated(org_id="o1", name="Acme")]
        # The master key file is the deployment's secret: readable by the service alone.
        assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600

        # A second process, which has the key cached, stops using it once it is deleted.
        other_nc = await nats.connect(nats_server.url)
        other = KeyRing(other_nc, MasterKeys.load(tmp_path / "master.key"))
        await other.start()
        assert await open_events(payload, other) == [event, OrgCreated(org_id="o1", name="Acme")]
        assert await keys.forget(key_filter("o1", user_id="u1")) == 1
        started = time.perf_counter()
        while other.cached("o1.u1.a1.s1.conversation.s1") == _kid(payload):
            assert time.perf_counter() - started < 2, "the other process kept the deleted key"
            await asyncio.sleep(0.001)
        shredded = [Shredded(of="message.appended"), OrgCreated(org_id="o1", name="Acme")]
        assert await open_events(payload, other) == shredded
        assert await open_events(payload, keys) == shredded
        # A new key under the same name never opens what the old one sealed.
        again = await seal(subject, [event], keys)
        assert await open_events(payload, keys) == shredded
        assert await open_events(again, other) == [event]
        await other.stop()
        await other_nc.close()
    finally:
        await keys.stop()
        await nc.close()


async def test_a_reader_without_keys_finds_a_sealed_commit_without_opening_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """A read-your-writes wait asks only where the next commit is: it opens nothing, so it
    needs no key and counts no commit as skipped (it logged one on every sealed commit)."""
    nc = await nats.connect(nats_server.url)
    keys = KeyRing(nc, MasterKeys.load(tmp_path / "master.key"))
    await keys.start()
    try:
        sealing = EventLog(nc, keys=keys)
        await sealing.ensure_stream()
        subject = subjects.event("o1", "conversation", "s1")
        event = MessageAppended(
            message_id="m1", session_id="s1", agent_id="a1", role="user", content=MESSAGE
        )
        [seq] = (await sealing.append([Write(subject, None, [event])], meta("c1"))).seqs
        keyless = EventLog(nc)
        head = await keyless.next_head(subjects.event("o1", "conversation", "*"))
        assert head is not None
        assert (head.seq, head.subject, head.command_id) == (seq, subject, "c1")
        assert await keyless.next_head(subject, after=seq) is None
        assert await keyless.first_subject(f"{subjects.EVENT_PREFIX}.>") == subject
        assert keyless.skipped == 0
        assert (await keyless.get(seq)) is not None  # opening it is what cannot be done
        assert keyless.skipped == 1
    finally:
        await keys.stop()
        await nc.close()


def meta(command_id: str) -> CommitMeta:
    return CommitMeta(command_id=command_id, commit_type="message.append")


def _kid(payload: bytes) -> str:
    return str(msgspec.json.decode(payload)["events"][0]["_sealed"]["i"])


async def test_before_encryption_the_text_is_in_the_jetstream_files(
    nats_server: NatsServer, nc: NATS
) -> None:
    """What the proof's search finds in a log written without keys (as earlier versions
    wrote it): the text itself, in the stream's block files. So its finding nothing after a
    forget means something."""
    log = EventLog(nc)
    await log.ensure_stream()
    event = MessageAppended(
        message_id="m1", session_id="s1", agent_id="a1", role="user", content=MESSAGE
    )
    write = Write(subjects.event("o1", "conversation", "s1"), None, [event])
    await log.append([write], CommitMeta(command_id="c1", commit_type="message.append"))
    assert leftovers(nats_server.store_dir, [MESSAGE.encode()])


# The proof, on each store ------------------------------------------------------------------
async def test_a_forgotten_user_leaves_no_byte_behind(
    service: Service, nc: NATS, admin_token: str, tmp_path: Path, store_url: str, store_kind: str
) -> None:
    admin = Client(nc, admin_token)
    org_id = str((await admin.create_org("Forgetful")).fields["org_id"])
    user = await admin.register_user(org_id, NAME, EMAIL, PASSWORD)
    user_id = str(user.fields["user_id"])
    agent_id = str((await admin.create_agent("Helper", org_id=org_id)).fields["agent_id"])
    other_id = str(
        (await admin.register_user(org_id, "Other", "o@example.org", PASSWORD)).fields["user_id"]
    )
    await admin.append_message("s1", agent_id, "user", MESSAGE, user_id=user_id, org_id=org_id)
    await admin.append_message(
        "s1", agent_id, "assistant", "Noted.", user_id=user_id, org_id=org_id
    )
    await admin.append_message(
        "s2", agent_id, "user", "Kept message", user_id=other_id, org_id=org_id
    )
    memory = await admin.add_memory(MEMORY, user_id=user_id, tags=[TAG], org_id=org_id)
    memory_id = str(memory.fields["memory_id"])
    kept = await admin.add_memory("A memory of someone else", user_id=other_id, org_id=org_id)
    kept_id = str(kept.fields["memory_id"])
    # Links both ways between the user's memory and another's: ids only, gone with it.
    await admin.associate_memories(memory_id, kept_id)
    await admin.associate_memories(kept_id, memory_id, association_type="causal")
    graph = await graph_of_user(admin, org_id, user_id)
    theirs = await admin.create_entity("person", "Someone Else", user_id=other_id, org_id=org_id)
    await wait_caught_up(nc, admin_token)
    # An extraction's stored answer holds the memory's names: sealed, and forgotten with it.
    extracted = await admin.extract_graph(memory_id=memory_id)
    assert [e.entity_id for e in extracted.entities] == [graph["person"]]
    block = await admin.create_block("human", "draft", user_id=user_id, org_id=org_id)
    block_id = str(block.fields["block_id"])
    await admin.set_block(block_id, BLOCK)
    await admin.put_working("s1", WORKING, user_id=user_id, org_id=org_id)
    await admin.put_working("s1", "Kept working item", org_id=org_id)
    await wait_caught_up(nc, admin_token)

    # Before: in the tables (and in the SQLite files), never in the JetStream files.
    assert (await admin.get_user(user_id)).email == EMAIL
    assert [
        m.content
        for m in await admin.search_messages("Quixotrellium", agent_id=agent_id, org_id=org_id)
    ]
    assert (await admin.get_memory(memory_id)).content == MEMORY
    assert (await admin.get_block(block_id)).content == BLOCK
    assert WORKING in [i.content for i in await admin.get_working("s1", org_id=org_id)]
    assert memory_id in await vector_ids(service)
    assert memory_id in await found_by_meaning(admin, MEMORY, org_id)
    assert (await admin.get_entity(graph["person"])).aliases == ["W. Q.", ALIAS]
    assert FACT in (await admin.graph_facts(graph["person"])).text
    index = in_memory_index(service)
    assert index.holds(org_id, memory_id)  # the search loaded it into this process
    keys = await wrapped_keys(nc, key_filter(org_id, user_id=user_id))
    # profile, email reservation, conversation, memory, 2 entities, 2 facts, 1 extraction,
    # block, working memory
    assert len(keys) >= 11
    # Every one of them is wrapped under the user's scope key too: erasing that one makes
    # them all unopenable, whatever bytes of them a purge leaves in the bucket's files.
    scope = scope_of(key_filter(org_id, user_id=user_id))
    assert scope == f"_scope.{org_id}.user.{user_id}"
    (scope_key,) = await wrapped_keys(nc, scope)
    assert all(scope in dict(MasterKeys.scopes_of(key)) for key in keys)
    in_files = leftovers(tmp_path, needles())
    assert not [f for f in in_files if f.startswith("nats/")], in_files
    if store_kind == "sqlite":
        assert in_files, "the SQLite files held none of the text before the forget"
    else:
        assert await postgres_leftovers(store_url, needles())
        in_tables = await postgres_file_leftovers(store_url, needles())
        assert in_tables is None or in_tables, "the table files held none of the text"
    assert leftovers(tmp_path / "nats", [*keys, scope_key])  # in the bucket's files

    if not SKIP_FORGET:
        forgotten = await admin.forget_user(user_id)
        assert forgotten.event == "data.forgotten"
        assert forgotten.fields["keys"] == len(keys)
    await wait_caught_up(nc, admin_token)

    # No byte left: not in the log's or the bucket's files, not in the store.
    await asyncio.sleep(0.2)
    assert leftovers(tmp_path, needles(scope_key)) == []
    assert await wrapped_keys(nc, key_filter(org_id, user_id=user_id)) == []
    assert await wrapped_keys(nc, scope) == []
    if store_kind == "postgres":
        assert await postgres_leftovers(store_url, needles()) == []

        # Dead rows too: the tables a forget deleted from are rewritten (VACUUM FULL) just
        # after the projection's commit, as SQLite's -wal is emptied just after it.
        async def erased() -> bool:
            return await postgres_file_leftovers(store_url, needles()) in ([], None)

        await eventually(erased, 10.0, 0.2, "the table files let go of the forgotten text")

    # Queries answer as if the data never existed; everyone else's stays.
    with pytest.raises(NotFoundError):
        await admin.get_user(user_id)
    with pytest.raises(NotFoundError):
        await admin.get_memory(memory_id)
    assert await admin.search_messages("Quixotrellium", agent_id=agent_id, org_id=org_id) == []
    assert await admin.search_messages("peanuts", agent_id=agent_id, org_id=org_id) == []
    assert not await admin.email_exists(EMAIL)
    assert [m.content for m in (await admin.list_messages("s1", org_id=org_id)).items] == []
    assert [m.content for m in (await admin.list_messages("s2", org_id=org_id)).items] == [
        "Kept message"
    ]
    assert (await admin.get_memory(kept_id)).user_id == other_id
    assert await admin.memory_associations(kept_id) == []
    with pytest.raises(NotFoundError):
        await admin.get_block(block_id)
    assert [i.content for i in await admin.get_working("s1", org_id=org_id)] == [
        "Kept working item"
    ]
    # Out of the vector table too, rows and all, and so out of search by meaning.
    assert memory_id not in await vector_ids(service)
    assert str(kept.fields["memory_id"]) in await vector_ids(service)
    assert memory_id not in await found_by_meaning(admin, MEMORY, org_id)
    # Out of the graph: no entity, name or relation of the user's scope is left.
    for entity_id in graph.values():
        with pytest.raises(NotFoundError):
            await admin.get_entity(entity_id)
    assert (await admin.resolve_entity(NAME, org_id=org_id)).candidates == []
    assert await graph_rows(service, org_id, user_id) == {}
    assert (await admin.get_entity(str(theirs.fields["entity_id"]))).name == "Someone Else"
    # The same name in the same scope is a new entity (its subject reads as gone).
    again_person = await admin.create_entity("person", NAME, user_id=user_id, org_id=org_id)
    assert again_person.fields["deduplicated"] is False
    assert again_person.fields["entity_id"] != graph["person"]
    await admin.delete_entity(str(again_person.fields["entity_id"]))
    # And out of the process's in-memory vector index, not only filtered from its hits.
    assert not index.holds(org_id, memory_id)
    assert index.holds(org_id, str(kept.fields["memory_id"]))

    # History: that something was, when and by whom, never what.
    history = (await admin.history("user", user_id, org_id=org_id)).items
    events = [e for entry in history for e in entry["events"]]
    assert {"type": "user.registered", "forgotten": True} in events
    assert NAME not in str(history)
    assert EMAIL not in str(history)

    # The address is free again (after the search: the new user's row holds it).
    again = await admin.register_user(org_id, "Someone new", EMAIL, PASSWORD)
    assert again.fields["user_id"] != user_id

    # Replay gives the very same tables.
    await wait_caught_up(nc, admin_token)
    live = await dump_store(service.store)  # type: ignore[arg-type]
    replayed = await replay_into(nc, tmp_path / "replayed" / "agentmem.db")
    assert rows(replayed, MESSAGES) == rows(live, MESSAGES)
    tables = ("users", "api_keys", "memories", "memory_tags", "messages", "blocks")
    for table in (*tables, "block_agents", "working_items"):
        assert replayed[table] == live[table], table
    for table in ("graph_entities", "graph_names", "graph_name_grams", "graph_relations"):
        assert replayed[table] == live[table], table
    for table in ("graph_associations", "graph_memory_scopes", "graph_entity_history"):
        assert replayed[table] == live[table], table


async def graph_of_user(admin: Client, org_id: str, user_id: str) -> dict[str, str]:
    """A person and a place of the user's scope, with an alias, attributes, a fact and a
    retracted one: every personal field of the graph's events."""
    scope = {"user_id": user_id, "org_id": org_id}
    person = str((await admin.create_entity("person", "W. Q.", **scope)).fields["entity_id"])
    await admin.rename_entity(person, NAME)
    await admin.add_entity_alias(person, ALIAS)
    await admin.add_entity_alias(person, "Mina")
    await admin.remove_entity_alias(person, "Mina")
    await admin.set_entity_attributes(person, {"address": ATTRIBUTE})
    place = str((await admin.create_entity("place", PLACE, **scope)).fields["entity_id"])
    await admin.assert_relation(person, "lives_in", place, fact=FACT)
    wrong = await admin.assert_relation(place, "near", person, fact=f"{PLACE} is near {NAME}")
    await admin.retract_relation(str(wrong.fields["relation_id"]), reason=REASON)
    return {"person": person, "place": place}


async def graph_rows(service: Service, org_id: str, user_id: str) -> dict[str, int]:
    """How many rows of the user's scope each graph table holds (names and grams through
    their entities' ids, which outlive the rows in nothing)."""
    found = {}
    for table, where in (
        ("graph_entities", "user_id = ?"),
        ("graph_relations", "user_id = ?"),
        ("graph_names", "name IN (?, ?, ?)"),
        ("graph_name_grams", "norm IN (?, ?)"),
        ("graph_entity_history", "value IN (?, ?, ?)"),
    ):
        args: list[object] = [org_id, user_id]
        if table in ("graph_names", "graph_entity_history"):
            args = [org_id, NAME, ALIAS, PLACE]
        elif table == "graph_name_grams":
            args = [org_id, NAME.casefold(), PLACE.casefold()]
        sql = f"SELECT COUNT(*) AS n FROM {table} WHERE org_id = ? AND {where}"
        row = await service.store.fetch_one(sql, *args)
        if row and int(row["n"]):
            found[table] = int(row["n"])
    return found


async def test_forget_a_conversation_a_memory_a_scope_and_an_agent(
    service: Service, nc: NATS, admin_token: str, tmp_path: Path
) -> None:
    admin = Client(nc, admin_token)
    org_id = str((await admin.create_org("Forgetful")).fields["org_id"])
    created = await admin.create_agent("Vorpal agent", org_id=org_id, model={"name": MODEL})
    agent_id = str(created.fields["agent_id"])
    await admin.set_agent_state(agent_id, {"notes": STATE})
    await admin.create_block("persona", BLOCK, agent_id=agent_id, org_id=org_id)
    # A block of another agent that this one also sees: attached to both.
    other = str((await admin.create_agent("Other agent", org_id=org_id)).fields["agent_id"])
    shared = await admin.create_block("team", "Team notes", agent_id=other, org_id=org_id)
    shared_id = str(shared.fields["block_id"])
    await admin.attach_block(shared_id, agent_id)
    await admin.put_working("s9", WORKING, agent_id=agent_id, org_id=org_id)
    await admin.put_working("s1", "Frobnizzle in the forgotten session", org_id=org_id)
    await admin.append_message("s1", agent_id, "user", MESSAGE, org_id=org_id)
    await admin.append_message("s2", agent_id, "user", "Other talk", org_id=org_id)
    one = await admin.add_memory(MEMORY, agent_id=agent_id, org_id=org_id)
    scoped = await admin.add_memory("In session s3", session_id="s3", org_id=org_id)
    kept = str((await admin.add_memory("kept", session_id="s4", org_id=org_id)).fields["memory_id"])
    await admin.associate_memories(kept, str(scoped.fields["memory_id"]))
    lair = await admin.create_entity("place", PLACE, agent_id=agent_id, org_id=org_id)
    scope = {"user_id": "u-scope", "org_id": org_id}
    person = str((await admin.create_entity("person", ALIAS, **scope)).fields["entity_id"])
    street = str((await admin.create_entity("place", ATTRIBUTE, **scope)).fields["entity_id"])
    await admin.assert_relation(
        person, "lives_in", street, fact=FACT, source={"producer": PRODUCER}
    )

    await admin.forget_conversation("s1", org_id=org_id)
    assert (await admin.list_messages("s1", org_id=org_id)).items == []
    assert await admin.get_working("s1", org_id=org_id) == []
    assert len((await admin.list_messages("s2", org_id=org_id)).items) == 1

    await wait_caught_up(nc, admin_token)
    assert str(one.fields["memory_id"]) in await vector_ids(service)
    assert str(one.fields["memory_id"]) in await found_by_meaning(admin, MEMORY, org_id)
    await admin.forget_memory(str(one.fields["memory_id"]))
    with pytest.raises(NotFoundError):
        await admin.get_memory(str(one.fields["memory_id"]))
    await wait_caught_up(nc, admin_token)
    assert str(one.fields["memory_id"]) not in await vector_ids(service)
    assert str(one.fields["memory_id"]) not in await found_by_meaning(admin, MEMORY, org_id)
    # Forgetting it again (a forget cut short is finished so) finds no key left.
    assert (await admin.forget_memory(str(one.fields["memory_id"]))).fields["keys"] == 0

    await admin.forget_memory_scope(session_id="s3", org_id=org_id)
    with pytest.raises(NotFoundError):
        await admin.get_memory(str(scoped.fields["memory_id"]))
    assert [m.content for m in (await admin.list_memories(org_id=org_id)).items] == ["kept"]
    # Its links went with it, as a memory.delete takes them.
    assert await admin.memory_associations(kept, after_seq=admin.last_seq) == []
    # A session holds no entity; a user's memory scope holds theirs, and their facts.
    assert (await admin.get_entity(person)).name == ALIAS
    forgotten = await admin.forget_memory_scope(user_id="u-scope", org_id=org_id)
    assert forgotten.fields["keys"] == 3  # two entities, one facts subject
    for entity_id in (person, street):
        with pytest.raises(NotFoundError):
            await admin.get_entity(entity_id, after_seq=admin.last_seq)
    assert (await admin.graph_stats(org_id=org_id)).relations == 0

    await admin.forget_agent(agent_id)
    with pytest.raises(NotFoundError):
        await admin.get_agent(agent_id)
    with pytest.raises(NotFoundError):
        await admin.get_entity(str(lair.fields["entity_id"]), after_seq=admin.last_seq)
    assert await admin.get_working("s9", org_id=org_id) == []
    assert (await admin.list_blocks(agent_id=agent_id, org_id=org_id)).items == []
    # The other agent's block stays, and no longer names the forgotten agent.
    assert (await admin.get_block(shared_id)).attached_agent_ids == []
    [team] = (await admin.list_blocks(agent_id=other, org_id=org_id)).items
    assert (team.block_id, team.attached_agent_ids) == (shared_id, [])
    assert (await admin.list_messages("s2", org_id=org_id)).items == []
    with pytest.raises(NotFoundError):
        await admin.forget_conversation("never-was", org_id=org_id)
    await wait_caught_up(nc, admin_token)
    await asyncio.sleep(0.2)
    assert leftovers(tmp_path, needles()) == []


# What extraction derived from one memory or one conversation -------------------------------
DERIVED = "Zorbulon Quappeldyke works at Frimblewax Corp"  # a memory's fact, as extracted
SAID = "Orvenna Plistrock works at Quillfeather Ltd"  # a message's fact, as extracted


async def test_a_forgotten_memory_or_conversation_takes_the_facts_extracted_from_it(
    service: Service, nc: NATS, admin_token: str, tmp_path: Path, store_url: str, store_kind: str
) -> None:
    """``graph.extract`` copied a memory's or a message's text into facts: a forget of the
    memory or the conversation forgets those facts too (sealed with a key it deletes, out of
    the tables, replay equal), and the extraction's stored answer. A fact another live
    source also names stays, and so do the entities (docs/protocol.md, "Forgetting")."""
    admin = Client(nc, admin_token)
    org_id = str((await admin.create_org("Derived")).fields["org_id"])
    agent_id = str((await admin.create_agent("Extracting", org_id=org_id)).fields["agent_id"])
    user = await admin.register_user(org_id, "Derived", "d@example.org", PASSWORD)
    scope = {"user_id": str(user.fields["user_id"]), "org_id": org_id}
    gone = str((await admin.add_memory(f"{DERIVED}.", **scope)).fields["memory_id"])
    kept = await admin.add_memory("Zorbulon Quappeldyke lives in Brindlemoor.", **scope)
    kept_id = str(kept.fields["memory_id"])
    extracted = await admin.extract_graph(memory_id=gone)
    await admin.extract_graph(memory_id=kept_id)
    ids = {e.name: e.entity_id for e in extracted.entities}
    person, corp = ids["Zorbulon Quappeldyke"], ids["Frimblewax Corp"]
    # Said by both memories: it stays while one of them does.
    await admin.assert_relation(
        person, "admires", corp, source={"memory_ids": [gone, kept_id]}, fact="Twice said"
    )
    said = await admin.append_message("s-gone", agent_id, "user", f"{SAID}.", **scope)
    other = await admin.append_message(
        "s-kept", agent_id, "user", "Orvenna Plistrock lives in Tarnwick.", **scope
    )
    for session, sent in (("s-gone", said), ("s-kept", other)):
        message_id = str(sent.fields["message_id"])
        found = await admin.extract_graph(session_id=session, message_id=message_id, org_id=org_id)
    speaker = next(e.entity_id for e in found.entities if e.name == "Orvenna Plistrock")

    async def facts(entity_id: str) -> list[str]:
        return sorted(
            f.fact for f in (await admin.graph_facts(entity_id, after_seq=admin.last_seq)).items
        )

    assert await facts(person) == sorted(
        [DERIVED, "Twice said", "Zorbulon Quappeldyke lives in Brindlemoor"]
    )
    assert await facts(speaker) == ["Orvenna Plistrock lives in Tarnwick", SAID]

    await admin.forget_memory(gone)
    assert await facts(person) == ["Twice said", "Zorbulon Quappeldyke lives in Brindlemoor"]
    await admin.forget_conversation("s-gone", org_id=org_id)
    assert await facts(speaker) == ["Orvenna Plistrock lives in Tarnwick"]
    # What stays: the entities (no text of a fact): entity.delete, or a wider forget.
    assert (await admin.get_entity(corp)).name == "Frimblewax Corp"

    # In the log: the facts and the memory's extraction read as forgotten.
    keys = await keys_of(nc)
    try:
        log = EventLog(nc, keys=keys)
        read = [
            e
            for subject in (
                subjects.event(org_id, "facts", person),
                subjects.event(org_id, "facts", speaker),
                subjects.event(org_id, "extraction", extracted.extraction_id),
            )
            for c in await log.read_subject(subject)
            for e in c.events
        ]
    finally:
        await keys.stop()
    texts = [str(getattr(e, "fact", "")) for e in read]
    assert DERIVED not in texts
    assert SAID not in texts
    shredded = [e.of for e in read if isinstance(e, Shredded)]
    assert shredded == ["relation.asserted", "relation.asserted", "graph.extracted"]

    # No byte left in the files or the tables; a replay builds the same tables.
    await wait_caught_up(nc, admin_token)
    await asyncio.sleep(0.2)
    wanted = [DERIVED.encode(), SAID.encode()]
    assert leftovers(tmp_path, wanted) == []
    if store_kind == "postgres":
        assert await postgres_leftovers(store_url, wanted) == []
    live = await dump_store(service.store)  # type: ignore[arg-type]
    replayed = await replay_into(nc, tmp_path / "replayed" / "agentmem.db")
    for table in ("graph_entities", "graph_names", "graph_relations", "graph_entity_history"):
        assert replayed[table] == live[table], table


async def test_forget_one_memory_of_a_busy_scope(
    service: Service, nc: NATS, admin_token: str
) -> None:
    """A scope that keeps adding memories seals them with keys made ahead (agentmem.keypool):
    still one key per memory, so a forget of one shreds that one (its update too) and no
    other, and a forget of the scope finds every key by its wildcard."""
    admin = Client(nc, admin_token)
    org_id = str((await admin.create_org("Busy")).fields["org_id"])
    ids = [
        str(
            (await admin.add_memory(f"busy fact {n}", user_id="busy", org_id=org_id)).fields[
                "memory_id"
            ]
        )
        for n in range(12)
    ]
    log = EventLog(nc)
    named = [await log.sealed_keys(subjects.event(org_id, "memory", m)) for m in ids]
    assert all(len(n) == 1 for n in named)
    assert len({next(iter(n)) for n in named}) == len(ids), "two memories share a key"
    await admin.update_memory(ids[5], content="busy fact five, corrected")
    assert await log.sealed_keys(subjects.event(org_id, "memory", ids[5])) == named[5]

    assert (await admin.forget_memory(ids[5])).fields["keys"] == 1
    with pytest.raises(NotFoundError):
        await admin.get_memory(ids[5])
    keys = KeyRing(nc, MasterKeys([bytes(32)]))
    assert next(iter(named[5])) not in await keys.names(f"{org_id}.>")
    for n in (4, 6):
        assert (await admin.get_memory(ids[n])).content == f"busy fact {n}"

    await admin.forget_memory_scope(user_id="busy", org_id=org_id)
    for n in (0, 11):
        with pytest.raises(NotFoundError):
            await admin.get_memory(ids[n])
    assert await keys.names(key_filter(org_id, user_id="busy")) == []


async def test_a_user_may_forget_themself_but_not_another(
    service: Service, nc: NATS, admin_token: str
) -> None:
    admin = Client(nc, admin_token)
    org_id = str((await admin.create_org("Selves")).fields["org_id"])
    me = str(
        (await admin.register_user(org_id, "Me", "me@example.org", PASSWORD)).fields["user_id"]
    )
    you = str(
        (await admin.register_user(org_id, "You", "you@example.org", PASSWORD)).fields["user_id"]
    )
    token = str((await admin.create_api_key("mine", user_id=me)).fields["token"])
    mine = admin.with_token(token)
    with pytest.raises(ForbiddenError):
        await mine.forget_user(you)
    await mine.forget_user(me)
    with pytest.raises(NotFoundError):
        await admin.get_user(me, after_seq=mine.last_seq)
    # Its key went with it: the next request is refused.
    with pytest.raises(UnauthenticatedError):
        await mine.get_user(me)
    assert (await admin.get_user(you)).name == "You"


async def test_a_user_may_send_the_forget_of_their_memory_again(
    service: Service, nc: NATS, admin_token: str
) -> None:
    """A forget cut short is finished by sending it again (docs/protocol.md), by whoever
    may send it: once the memory no longer reads, its user is the one its key names (a
    helper's member got `forbidden` for the retry of their own forget)."""
    admin = Client(nc, admin_token)
    org_id = str((await admin.create_org("Retries")).fields["org_id"])
    me, you = [
        str((await admin.register_user(org_id, n, f"{n}@example.org", PASSWORD)).fields["user_id"])
        for n in ("me", "you")
    ]
    mine = admin.with_token(str((await admin.create_api_key("m", user_id=me)).fields["token"]))
    yours = admin.with_token(str((await admin.create_api_key("y", user_id=you)).fields["token"]))
    memory_id = str((await mine.add_memory("my secret", user_id=me)).fields["memory_id"])
    first = await mine.forget_memory(memory_id, command_id="forget-mine")
    again = await mine.forget_memory(memory_id, command_id="forget-mine")
    assert again.seq == first.seq  # the first outcome, not a second forget
    with pytest.raises(ForbiddenError):
        await yours.forget_memory(memory_id, command_id="forget-theirs")


async def test_a_write_decided_before_a_scope_forget_is_not_appended_after_it(
    service: Service, nc: NATS, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`memory.forget_scope` writes nothing on the entities it forgets, so no version stops
    a write decided on one before it: appended after, sealed under a key made again, it
    put the forgotten attributes back in the log and the tables, replays too (a helper: up
    to 511 such writes per forget under four writers). It is decided again, and refused."""
    assert service.parts is not None
    admin = Client(nc, admin_token)
    org_id = str((await admin.create_org("Racing")).fields["org_id"])
    secret = {"diagnosis": "forgotten-attribute-7f3a"}
    entity_id = str(
        (await admin.create_entity("person", "Dr. Race", user_id="ann", org_id=org_id)).fields[
            "entity_id"
        ]
    )
    await admin.set_entity_attributes(entity_id, secret)
    runner = service.parts.runner
    append = runner.log.append
    decided, go_on = asyncio.Event(), asyncio.Event()

    async def held_append(writes: Any, meta: Any, *args: Any) -> Any:
        if any(entity_id in w.subject for w in writes) and not decided.is_set():
            decided.set()
            await go_on.wait()  # the forget runs here, between the decision and the append
        return await append(writes, meta, *args)

    monkeypatch.setattr(runner.log, "append", held_append)
    writing = asyncio.ensure_future(admin.set_entity_attributes(entity_id, {"seen": 2}))
    await asyncio.wait_for(decided.wait(), 10)
    epoch = runner.cache.epoch
    await admin.forget_memory_scope(user_id="ann", org_id=org_id)
    for _ in range(500):  # the notice of the deleted keys clears this process's cache
        if runner.cache.epoch != epoch:
            break
        await asyncio.sleep(0.01)
    go_on.set()
    with pytest.raises(NotFoundError):
        await writing
    with pytest.raises(NotFoundError):
        await admin.get_entity(entity_id)
    rows = await service.store.fetch_all("SELECT value FROM graph_entity_history")
    assert not [r for r in rows if "forgotten-attribute" in str(r["value"])]


async def test_a_forgotten_id_stays_taken(service: Service, nc: NATS, admin_token: str) -> None:
    """A create that chooses the id of a forgotten user or agent gets ``conflict``, as for a
    deleted one (it got ``unavailable``, "retry", forever), and writes nothing."""
    admin = Client(nc, admin_token)
    org_id = str((await admin.create_org("Reuse")).fields["org_id"])
    await admin.register_user(org_id, "Gone", "gone@example.org", PASSWORD, user_id="gone-user")
    await admin.create_agent("Gone", org_id=org_id, agent_id="gone-agent")
    await admin.forget_user("gone-user")
    await admin.forget_agent("gone-agent")
    end = (await admin.status())["stream"]["last_seq"]
    # Said as for any taken id: the id may be another organization's, whose fate is its own.
    with pytest.raises(ConflictError, match=r"^user gone-user already exists$") as refused:
        await admin.register_user(org_id, "New", "new@example.org", PASSWORD, user_id="gone-user")
    assert refused.value.details == {"user_id": "gone-user"}
    with pytest.raises(ConflictError, match=r"^agent gone-agent already exists$") as refused:
        await admin.create_agent("New", org_id=org_id, agent_id="gone-agent")
    assert refused.value.details == {"agent_id": "gone-agent"}
    assert (await admin.status())["stream"]["last_seq"] == end


async def test_a_retry_of_a_forgotten_users_add_answers_what_is_left(
    service: Service, nc: NATS, admin_token: str
) -> None:
    """The first outcome of a memory.add whose user was forgotten since cannot be read
    back: its retry answers that it was (``shredded``), appends nothing, and does not fail
    (it raised ``internal`` on every attempt)."""
    admin = Client(nc, admin_token)
    org_id = str((await admin.create_org("Retry")).fields["org_id"])
    await admin.register_user(org_id, "Ann", "ann@retry.example", PASSWORD, user_id="ann-r")
    body = {"user_id": "ann-r", "org_id": org_id, "command_id": "add-ann-r"}
    added = await admin.add_memory("Ann likes tea", **body)
    await admin.forget_user("ann-r")
    end = (await admin.status())["stream"]["last_seq"]
    again = await admin.add_memory("Ann likes tea", **body)
    assert (again.event, again.seq) == ("shredded", added.seq)
    assert (await admin.status())["stream"]["last_seq"] == end


async def test_the_cache_of_a_second_process_lets_go(
    service: Service, nc: NATS, admin_token: str, tmp_path: Path
) -> None:
    """A key deleted by one process is not used by another that cached it."""
    admin = Client(nc, admin_token)
    org_id = str((await admin.create_org("Two")).fields["org_id"])
    agent_id = str((await admin.create_agent("A", org_id=org_id)).fields["agent_id"])
    await admin.append_message("s1", agent_id, "user", MESSAGE, org_id=org_id)
    other_nc = await nats.connect(service.settings.nats_url or "")
    other = await keys_of(other_nc)
    log = EventLog(other_nc, keys=other)
    try:
        commits = await log.read_subject(subjects.event(org_id, "conversation", "s1"))
        assert [e.content for e in commits[0].events if isinstance(e, MessageAppended)] == [MESSAGE]
        await admin.forget_conversation("s1", org_id=org_id)

        async def shredded() -> bool | None:
            again = await log.read_subject(subjects.event(org_id, "conversation", "s1"))
            return again[0].events == [Shredded(of="message.appended")] or None

        await eventually(shredded, 2.0, 0.001, "the second process let go of the key")
    finally:
        await other.stop()
        await other_nc.close()


async def test_rotating_the_master_key(nats_server: NatsServer, nc: NATS) -> None:
    old, new = os.urandom(32), os.urandom(32)
    keys = KeyRing(nc, MasterKeys([old]))
    await keys.start()
    subject = subjects.event("o1", "conversation", "s1")
    event = MessageAppended(
        message_id="m1", session_id="s1", agent_id="a1", role="user", content=MESSAGE
    )
    payload = await seal(subject, [event], keys)
    await keys.stop()
    # Both keys while rotating: everything wrapped again by the new one.
    rotating = KeyRing(nc, MasterKeys([new, old]))
    await rotating.start()
    # The conversation's data key, and the scope keys of its agent and its session.
    assert await rotating.rewrap() == 3
    assert await rotating.rewrap() == 0
    await rotating.stop()
    # The old key gone: the data still opens.
    rotated = KeyRing(nc, MasterKeys([new]))
    await rotated.start()
    assert await open_events(payload, rotated) == [event]
    await rotated.stop()


async def test_a_log_with_plaintext_from_earlier_versions_says_so(
    nats_server: NatsServer, nc: NATS, tmp_path: Path
) -> None:
    """A log that held events before the key bucket existed (written by an earlier version,
    unsealed) is marked, and status reports up to where it holds plaintext."""
    log = EventLog(nc)  # no keys: as an earlier version wrote
    await log.ensure_stream()
    event = MessageAppended(
        message_id="m1", session_id="s1", agent_id="a1", role="user", content=MESSAGE
    )
    write = Write(subjects.event("o1", "conversation", "s1"), None, [event])
    await log.append([write], CommitMeta(command_id="c1", commit_type="message.append"))
    assert await plaintext_until(nc) is None
    settings = settings_for(nats_server, tmp_path)
    upgraded = Service(settings)
    await upgraded.start()
    try:
        assert upgraded.keys is not None
        assert upgraded.keys.plaintext_until == 1
        report = await status(nc, admin_key(tmp_path))
        assert report["stream"]["plaintext_until"] == 1
    finally:
        await upgraded.stop()
    ran = await run_cli(
        "status", "--data-dir", str(tmp_path), "--nats", nats_server.url, env=clean_env()
    )
    assert ran.returncode == 0, ran.stderr
    assert "plaintext personal data up to seq 1" in ran.stdout


# The declaration and the forget's reach, pure ------------------------------------------------
def test_one_annotation_makes_a_field_personal() -> None:
    class NoteTaken(Event, tag="test.note_taken", frozen=True):
        note_id: str
        user_id: str
        text: Personal[str]
        labels: Personal[tuple[str, ...]] = ()

    assert personal_fields(NoteTaken) == ("text", "labels")
    assert personal_fields(OrgCreated) == ()
    event = NoteTaken(note_id="n1", user_id="u1", text="hi")
    assert key_name(subjects.event("o1", "note", "n1"), event) == "o1.u1.=.=.note.n1"


def test_what_each_forget_deletes() -> None:
    assert forget.keys_of("user", "o1", {"user_id": "u1"}) == "o1.u1.*.*.>"
    assert forget.keys_of("agent", "o1", {"agent_id": "a1"}) == "o1.*.a1.*.>"
    assert forget.keys_of("conversation", "o1", {"session_id": "s1"}) == "o1.*.*.s1.>"
    assert forget.keys_of("memory", "o1", {"memory_id": "m1"}) == "o1.*.*.*.memory.m1"
    scope = {"user_id": "u1", "session_id": "s1"}
    assert forget.keys_of("memory_scope", "o1", scope) == "o1.u1.*.s1.memory.*"
    # A memory scope's entities and relations too; a user's and an agent's are in keys_of.
    assert forget.graph_keys_of("memory_scope", "o1", {"user_id": "u1"}) == [
        "o1.u1.*.*.entity.*",
        "o1.u1.*.*.facts.*",
        "o1.u1.*.*.extraction.*",
    ]
    assert forget.graph_keys_of("user", "o1", {"user_id": "u1"}) == []
    assert matches("o1.u1.*.*.>", "o1.u1.=.=.facts.e1-0")
    forgotten = DataForgotten(forget_id="f1", org_id="o1", target="user", user_id="u1")
    # The memories' tags go through their memories' rows, before them; erased from the files.
    assert forgotten_rows(
        forgotten, FORGETS, [MEMORY_TAGS, MEMORIES], {"memory_tags": MEMORIES}
    ) == [
        Delete("memory_tags", {"org_id": "o1", "user_id": "u1"}, through="memories", erase=True),
        Delete("memories", {"org_id": "o1", "user_id": "u1"}, erase=True),
    ]
    # A scope's forget never reaches the users table, whose rows have a user_id too.
    scoped = DataForgotten(forget_id="f2", org_id="o1", target="memory_scope", user_id="u1")
    assert forgotten_rows(scoped, frozenset({"user"}), [USERS]) == []
    # A table without a column for an id holds none of it.
    by_agent = DataForgotten(forget_id="f3", org_id="o1", target="agent", agent_id="a1")
    assert forgotten_rows(by_agent, frozenset({"agent", "user"}), [USERS]) == []


def test_what_is_derived_from_one_memory_or_session_is_sealed_so_its_forget_finds_it() -> None:
    def fact(source: Provenance, session_id: str | None = None) -> RelationAsserted:
        return RelationAsserted(
            relation_id="e1-0_1",
            org_id="o1",
            subject_id="e1-0",
            predicate="works_at",
            object_id="e2-0",
            fact=DERIVED,
            confidence=0.4,
            valid_from=1,
            source=msgspec.to_builtins(source),
            user_id="u1",
            memory_id=derived_from(source),
            session_id=session_id,
        )

    facts = subjects.event("o1", "facts", "e1-0")
    one = fact(Provenance(memory_ids=["m1"]), "s1")
    assert key_name(facts, one) == "o1.u1.=.s1.memory.m1"
    assert matches(forget.keys_of("memory", "o1", {"memory_id": "m1"}), key_name(facts, one))
    assert matches(
        forget.keys_of("conversation", "o1", {"session_id": "s1"}), "o1.u1.=.s1.memory.m1"
    )
    # Two memories, or a memory and a message: the facts subject's key, as before.
    for source in (
        Provenance(memory_ids=["m1", "m2"]),
        Provenance(memory_ids=["m1"], message_ids=["x"]),
    ):
        assert key_name(facts, fact(source)) == "o1.u1.=.=.facts.e1-0"
    said = fact(Provenance(message_ids=["x"]), "s1")
    assert key_name(facts, said) == "o1.u1.=.s1.facts.e1-0"
    assert matches(
        forget.keys_of("conversation", "o1", {"session_id": "s1"}), key_name(facts, said)
    )
    answer = GraphExtracted(
        extraction_id="x1",
        org_id="o1",
        extractor="rules",
        model="rules-v1",
        prompt_sha256="0",
        memory_id="m1",
        user_id="u1",
    )
    assert key_name(subjects.event("o1", "extraction", "x1"), answer) == "o1.u1.=.=.memory.m1"
    # The rows go with the memory's or the conversation's forget, and with nothing else.
    for target, ids in (("memory", {"memory_id": "m1"}), ("conversation", {"session_id": "s1"})):
        event = DataForgotten(forget_id="f", org_id="o1", target=target, **ids)  # type: ignore[arg-type]
        assert forgotten_rows(
            event,
            graph_projection.FORGETS,
            graph_projection.FORGOTTEN_TABLES,
            graph_projection.FORGOTTEN_THROUGH,
        ) == [Delete("graph_relations", {"org_id": "o1", **ids}, erase=True)]


def test_a_forget_notice_names_its_keys_by_wildcard() -> None:
    assert matches("o1.u1.*.*.>", "o1.u1.=.=.user.u1")
    assert matches("o1.*.*.s1.>", "o1.u1.a1.s1.conversation.s1")
    assert not matches("o1.*.*.s1.>", "o1.u1.a1.s2.conversation.s2")
    assert matches("o1.*.*.*.memory.m1", "o1.=.=.s9.memory.m1")
    assert not matches("o1.*.*.*.memory.m1", "o1.=.=.s9.memory.m1.x")
    assert not matches("o1.u1.*.*.>", "o1.u1.=.=")
    assert not matches("o2.u1.*.*.>", "o1.u1.=.=.user.u1")


def test_the_scope_keys_of_a_key_name_and_of_a_forget() -> None:
    assert scope_names("o1.u1.=.s1.memory.m1") == ["_scope.o1.user.u1", "_scope.o1.session.s1"]
    assert scope_names("o1.=.=.=.tool.t1") == []
    assert scope_names("_scope.o1.user.u1") == []  # a scope key has no scope of its own
    assert scope_of(forget.keys_of("user", "o1", {"user_id": "u1"})) == "_scope.o1.user.u1"
    assert scope_of(forget.keys_of("agent", "o1", {"agent_id": "a1"})) == "_scope.o1.agent.a1"
    conversation = forget.keys_of("conversation", "o1", {"session_id": "s1"})
    assert scope_of(conversation) == "_scope.o1.session.s1"
    # Not a whole scope: its keys are erased one by one.
    assert scope_of(forget.keys_of("memory", "o1", {"memory_id": "m1"})) is None
    assert scope_of("o1.u1.*.s1.memory.*") is None


async def test_a_key_made_before_scope_keys_is_erased_by_a_scope_forget(
    nats_server: NatsServer, nc: NATS, tmp_path: Path
) -> None:
    """A data key wrapped by the master key alone (as before scope keys) is not covered by
    the scope key's erasure: a forget of its user erases it on disk, as before."""
    keys = KeyRing(nc, MasterKeys.load(tmp_path / "master.key"))
    await keys.start()
    try:
        name = "o1.u1.=.=.user.u1"
        legacy = keys.master.wrap(name, "0123456789abcdef", os.urandom(32))
        await nc.request(PREFIX + name, legacy)
        scoped = await keys.key_for("o1.u1.=.s1.memory.m1")
        (scoped_value,) = await wrapped_keys(nc, scoped.name)
        assert leftovers(nats_server.store_dir, [legacy, scoped_value])
        assert await keys.forget(key_filter("o1", user_id="u1")) == 2
        assert leftovers(nats_server.store_dir, [legacy]) == []
        assert await wrapped_keys(nc, "o1.u1.>") == []
        assert await wrapped_keys(nc, "_scope.o1.user.u1") == []
        # The session's scope key stays: other data of the session still opens.
        assert len(await wrapped_keys(nc, "_scope.o1.session.s1")) == 1
    finally:
        await keys.stop()
