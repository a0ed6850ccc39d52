"""Keys made ahead for new memories (``agentmem.keypool``), against a real nats-server: each
key is stored before it seals anything, seals one memory only, lies under its scope's
prefix, and a forget empties every pool, a refill under way included."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
import pytest

from agentmem import jetstream, subjects
from agentmem.errors import UnavailableError
from agentmem.events import AnyEvent, MemoryAdded, MemoryUpdated, Shredded
from agentmem.keypool import POOL_TOKEN, KeyPool, prefix_of
from agentmem.keys import STREAM, KeyRing, MasterKeys, bucket_config, matches
from agentmem.personal import key_filter
from agentmem.sealing import new_keys, open_events, seal, sealed_key_names
from tests.support import NatsServer

SCOPE = "o1.u1.=.=.memory"


def added(memory_id: str, content: str, user_id: str = "u1") -> MemoryAdded:
    return MemoryAdded(
        memory_id=memory_id,
        org_id="o1",
        memory_type="semantic",
        content=content,
        valid_from=0,
        user_id=user_id,
    )


@pytest.fixture
async def ring(nats_server: NatsServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_server.url)
    keys = KeyRing(nc, MasterKeys.load(tmp_path / "master.key"))
    await keys.start()
    yield keys
    await keys.stop()
    await nc.close()


async def stored(keys: KeyRing, pattern: str) -> set[str]:
    return set(await keys.names(pattern))


async def test_each_new_memory_gets_a_stored_key_of_its_own(ring: KeyRing) -> None:
    payloads = {}
    for n in range(40):  # past a pool's size: its refills are used too
        memory_id = f"m{n}"
        subject = subjects.event("o1", "memory", memory_id)
        payloads[memory_id] = await seal(subject, [added(memory_id, f"fact {n}")], ring, True)
    names = {m: sealed_key_names(p) for m, p in payloads.items()}
    assert all(len(n) == 1 for n in names.values())
    used = [next(iter(n)) for n in names.values()]
    assert len(set(used)) == len(used), "two memories share a key"
    assert all(prefix_of(name) == SCOPE for name in used)
    assert all(name.rsplit(".", 1)[1].startswith(POOL_TOKEN) for name in used)
    # Every key is in the bucket (stored before it sealed), and matched by the scope's
    # wildcards: the user's, and the memory scope's.
    in_bucket = await stored(ring, key_filter("o1", user_id="u1"))
    assert set(used) <= in_bucket
    assert all(matches(key_filter("o1", user_id="u1", aggregate="memory"), n) for n in used)

    # A later event of a memory is sealed with the key its add used, here.
    subject = subjects.event("o1", "memory", "m3")
    update = MemoryUpdated(
        memory_id="m3",
        content="new",
        metadata={},
        tags=(),
        importance=0.5,
        valid_from=0,
        user_id="u1",
    )
    later = await seal(subject, [update], ring)
    assert sealed_key_names(later) == names["m3"]

    # Forgetting one memory's key shreds that memory only.
    assert await ring.forget(next(iter(names["m3"]))) == 1
    assert await open_events(payloads["m3"], ring) == [Shredded(of="memory.added")]
    assert await open_events(later, ring) == [Shredded(of="memory.updated")]
    assert await open_events(payloads["m4"], ring) == [added("m4", "fact 4")]


async def test_a_forget_empties_the_pools_and_drops_a_refill_under_way(ring: KeyRing) -> None:
    pool = KeyPool(ring, size=8)
    ring.pool = pool
    for n in range(12):  # from the second new memory of a scope on, its pool fills
        await pool.take(subjects.event("o1", "memory", f"m{n}"), f"{SCOPE}.m{n}")
        await asyncio.gather(*pool._refills.values())
    assert len(pool._pools[SCOPE].keys) >= 4, "a busy scope keeps keys made ahead"
    made = await stored(ring, f"{SCOPE}.*")

    # Keys taken without a wait: a refill is scheduled, then the scope is forgotten.
    for n in range(12, 20):
        await pool.take(subjects.event("o1", "memory", f"m{n}"), f"{SCOPE}.m{n}")
    refills = list(pool._refills.values())
    assert refills, "taking half of a pool refills it"
    await ring.forget(key_filter("o1", user_id="u1"))
    await asyncio.gather(*refills)
    erased = made | await stored(ring, f"{SCOPE}.*")

    key = await pool.take(subjects.event("o1", "memory", "m99"), f"{SCOPE}.m99")
    assert key.name not in erased, "a key made before the forget sealed a new memory"
    assert key.name in await stored(ring, f"{SCOPE}.*")


async def test_a_batch_takes_keys_made_ahead_but_starts_no_pool(ring: KeyRing) -> None:
    """An atomic batch of new memories may span a thousand scopes once: it must not leave
    each of them a pool of keys that nothing will use."""
    pool = KeyPool(ring)
    for n in range(4):
        await pool.take(subjects.event("o1", "memory", f"b{n}"), f"o1.u{n}.=.=.memory.b{n}", False)
        await pool.take(subjects.event("o1", "memory", f"c{n}"), f"o1.u{n}.=.=.memory.c{n}", False)
    assert not pool._pools
    assert not pool._refills
    assert len(await stored(ring, "o1.>")) == 8


async def test_keys_made_many_at_once_are_stored_all_or_none(
    ring: KeyRing, nats_server: NatsServer, tmp_path: Path
) -> None:
    """A pool's refill is one atomic batch (``KeyRing.create_many``):
    every key stored, each under its own name (so a memory's forget erases its own), or
    none of them."""
    names = [f"{SCOPE}.{POOL_TOKEN}{n:016x}" for n in range(64)]
    made = await ring.create_many(names)
    assert [key.name for key in made] == names
    assert len({key.kid for key in made}) == 64
    assert await stored(ring, f"{SCOPE}.*") == set(names)

    # Another process (another connection, the same master key) opens every one.
    nc = await nats.connect(nats_server.url)
    other = KeyRing(nc, MasterKeys.load(tmp_path / "master.key"))
    await other.start()
    try:
        await other.resolve([(key.name, key.kid) for key in made])
        assert all(other.opener(key.name, key.kid) is not None for key in made)
    finally:
        await other.stop()
        await nc.close()

    # One name already taken: the whole batch is refused, and nothing of it is stored.
    clash = [f"{SCOPE}.{POOL_TOKEN}{n:016x}" for n in range(100, 130)] + [names[0]]
    with pytest.raises(UnavailableError):
        await ring.create_many(clash)
    assert await stored(ring, f"{SCOPE}.*") == set(names)

    # Forgetting one key of the batch erases that one only.
    assert await ring.forget(names[5]) == 1
    assert await stored(ring, f"{SCOPE}.*") == set(names) - {names[5]}


async def test_a_bucket_of_an_earlier_version_is_allowed_atomic_batches(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    nc = await nats.connect(nats_server.url)
    earlier = {k: v for k, v in bucket_config().items() if k != "allow_atomic"}
    created = await jetstream.api(nc, f"STREAM.CREATE.{STREAM}", earlier)
    assert "error" not in created
    assert not created["config"].get("allow_atomic")
    keys = KeyRing(nc, MasterKeys.load(tmp_path / "master.key"))
    await keys.start()
    try:
        info = await jetstream.api(nc, f"STREAM.INFO.{STREAM}")
        assert info["config"]["allow_atomic"] is True
        assert len(await keys.create_many([f"{SCOPE}.k_{n}" for n in range(20)])) == 20
    finally:
        await keys.stop()
        await nc.close()


async def test_a_batch_of_new_memories_takes_its_keys_together(ring: KeyRing) -> None:
    """An atomic batch of new memories over many users: a key each, stored together before
    any is used, each under its memory's scope, sealing that memory only."""
    writes: list[tuple[str, list[AnyEvent]]] = [
        (subjects.event("o1", "memory", f"n{i}"), [added(f"n{i}", f"fact {i}", f"u{i}")])
        for i in range(40)
    ]
    made = await new_keys(ring, writes)
    assert len({key.name for key in made.values()}) == 40
    payloads = [await seal(s, events, ring, True, False, made) for s, events in writes]
    for i, payload in enumerate(payloads):
        (name,) = sealed_key_names(payload)
        assert name == made[f"o1.u{i}.=.=.memory.n{i}"].name
        assert prefix_of(name) == f"o1.u{i}.=.=.memory"
        assert name in await stored(ring, key_filter("o1", user_id=f"u{i}"))
    await ring.forget(key_filter("o1", user_id="u7"))
    assert await open_events(payloads[7], ring) == [Shredded(of="memory.added")]
    assert await open_events(payloads[8], ring) == [added("n8", "fact 8", "u8")]


async def test_a_forget_leaves_other_organizations_pools_and_batches_alone(
    ring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forget in one organization made every batch of new memories in every other
    organization answer ``unavailable`` while its keys were being made (half of them, with
    forgets going on in one organization), and emptied every pool."""
    pool = KeyPool(ring, size=8)
    theirs = "o2.u1.=.=.memory"
    for n in range(6):
        await pool.take(subjects.event("o1", "memory", f"m{n}"), f"{SCOPE}.m{n}")
        await pool.take(subjects.event("o2", "memory", f"m{n}"), f"{theirs}.m{n}")
        await asyncio.gather(*pool._refills.values())
    ours = list(pool._pools[SCOPE].keys)
    assert ours
    assert pool._pools[theirs].keys
    await ring.forget(key_filter("o2", user_id="u1"))
    assert pool._pools[SCOPE].keys == ours
    assert theirs not in pool._pools

    made_now = ring.create_many

    def forgetting_in(org: str) -> None:
        async def create_many(names: list[str]) -> list[Any]:
            made = await made_now(names)
            await ring.forget(key_filter(org, user_id="u9"))  # while the batch's keys are made
            return made

        monkeypatch.setattr(ring, "create_many", create_many)

    batch = {f"o1.u5.=.=.memory.b{n}": subjects.event("o1", "memory", f"b{n}") for n in range(3)}
    forgetting_in("o2")
    assert len(await pool.take_many(batch)) == 3
    forgetting_in("o1")  # in its own organization: its keys may be erased
    with pytest.raises(UnavailableError, match="forgotten while"):
        await pool.take_many(batch)
