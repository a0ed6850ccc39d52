"""The event log against a real nats-server: stream config, optimistic concurrency, atomic
batches, reads."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig

from agentmem import subjects
from agentmem.domain.aggregate import Write
from agentmem.eventlog import (
    WRONG_LAST_SEQUENCE,
    CommitMeta,
    EventLog,
    StaleVersion,
)
from agentmem.events import OrgCreated, OrgRenamed, encode_commit
from agentmem.jetstream import StreamConfigMismatch, header_block

NS = 1_000_000_000


def org_subject(org_id: str) -> str:
    return subjects.event(org_id, "org", org_id)


def created(org_id: str, name: str = "Acme") -> Write:
    return Write(org_subject(org_id), 0, [OrgCreated(org_id=org_id, name=name)])


def renamed(org_id: str, expected: int, name: str) -> Write:
    return Write(org_subject(org_id), expected, [OrgRenamed(org_id=org_id, name=name)])


def meta(command_id: str) -> CommitMeta:
    return CommitMeta(command_id=command_id, commit_type="test")


@pytest.fixture
async def log(nc: NATS) -> EventLog:
    event_log = EventLog(nc)
    await event_log.ensure_stream()
    return event_log


async def test_ensure_stream_creates_the_documented_stream(nc: NATS) -> None:
    event_log = EventLog(nc)
    await event_log.ensure_stream()
    config = (await event_log.info())["config"]
    assert config["name"] == subjects.STREAM_NAME
    assert config["subjects"] == subjects.STREAM_SUBJECTS
    assert config["storage"] == "file"
    assert config["retention"] == "limits"
    assert (config["max_msgs"], config["max_bytes"], config["max_age"]) == (-1, -1, 0)
    assert config["max_msgs_per_subject"] == -1
    assert config["duplicate_window"] >= 60 * NS
    assert config["allow_atomic"] is True
    assert config["allow_direct"] is True
    # Present and right: a second call checks and passes, and changes nothing.
    await event_log.ensure_stream()
    assert (await event_log.info())["config"] == config


@pytest.mark.parametrize(
    ("wrong", "setting"),
    [
        ({"subjects": ["elsewhere.>"]}, "subjects"),
        ({"storage": StorageType.MEMORY}, "storage"),
        ({"max_msgs": 1000}, "max_msgs"),
        ({"duplicate_window": 5.0}, "duplicate_window"),
    ],
)
async def test_ensure_stream_refuses_a_wrong_existing_stream_and_leaves_it(
    nc: NATS, wrong: dict[str, object], setting: str
) -> None:
    js = nc.jetstream()
    settings: dict[str, object] = {"subjects": subjects.STREAM_SUBJECTS, "allow_direct": True}
    config = StreamConfig(name=subjects.STREAM_NAME, **{**settings, **wrong})  # type: ignore[arg-type]
    await js.add_stream(config)
    before = (await js.stream_info(subjects.STREAM_NAME)).config.as_dict()

    with pytest.raises(StreamConfigMismatch) as raised:
        await EventLog(nc).ensure_stream()

    assert setting in raised.value.details["settings"]
    assert "never rewrites" in raised.value.message
    after = (await js.stream_info(subjects.STREAM_NAME)).config.as_dict()
    assert after == before


async def test_ensure_stream_refuses_another_replica_count_and_leaves_the_stream(
    nc: NATS,
) -> None:
    event_log = EventLog(nc)
    await event_log.ensure_stream(replicas=1)
    before = (await event_log.info())["config"]

    with pytest.raises(StreamConfigMismatch) as raised:
        await event_log.ensure_stream(replicas=3)

    assert raised.value.details["settings"] == {"num_replicas": {"expected": 3, "actual": 1}}
    assert (await event_log.info())["config"] == before


async def test_append_with_a_stale_expected_sequence_raises_and_stores_nothing(
    nc: NATS, log: EventLog
) -> None:
    first = await log.append([created("o1")], meta("c1"))
    assert first.seqs == [1]
    await log.append([renamed("o1", 1, "Beta")], meta("c2"))
    assert await log.last_seq() == 2

    with pytest.raises(StaleVersion):
        await log.append([renamed("o1", 1, "Gamma")], meta("c3"))
    assert await log.last_seq() == 2
    assert [c.command_id for c in await log.read_subject(org_subject("o1"))] == ["c1", "c2"]

    # The server's own answer to such a write is err_code 10071.
    headers = {"Nats-Expected-Last-Subject-Sequence": "1", "Nats-Msg-Id": "c4"}
    reply = await nc.request(
        org_subject("o1"),
        encode_commit([OrgRenamed(org_id="o1", name="Delta")]),
        timeout=5,
        headers=headers,
    )
    assert json.loads(reply.data)["error"]["err_code"] == WRONG_LAST_SEQUENCE == 10071
    assert await log.last_seq() == 2


async def test_a_retried_command_is_stored_once(log: EventLog) -> None:
    # Same command id, new subject (org.create draws a new id per attempt): deduplicated.
    first = await log.append([created("o1")], meta("same"))
    again = await log.append([created("o1b")], meta("same"))
    assert again.duplicate
    assert again.seqs == first.seqs
    assert await log.read_subject(org_subject("o1b")) == []
    # Same subject: nats-server checks the expected sequence before the message id, so the
    # retry is refused as stale (the command side then finds the command in the subject).
    with pytest.raises(StaleVersion):
        await log.append([created("o1")], meta("same"))
    assert await log.last_seq() == 1


@pytest.mark.parametrize("stale_at", [0, 1, 2])
async def test_an_atomic_batch_is_all_or_nothing(log: EventLog, stale_at: int) -> None:
    await log.append([created("o1")], meta("c1"))
    await log.append([created("o2")], meta("c2"))
    await log.append([created("o3")], meta("c3"))
    writes = [renamed("o1", 1, "One"), renamed("o2", 2, "Two"), renamed("o3", 3, "Three")]
    old = writes[stale_at]
    writes[stale_at] = Write(old.subject, old.expected + 7, old.events)

    with pytest.raises(StaleVersion):
        await log.append(writes, meta("batch"))
    assert await log.last_seq() == 3
    for org_id, seq in (("o1", 1), ("o2", 2), ("o3", 3)):
        assert [c.seq for c in await log.read_subject(org_subject(org_id))] == [seq]

    # The same batch with every expected sequence right is stored whole, contiguously.
    writes[stale_at] = old
    appended = await log.append(writes, meta("batch-ok"))
    assert appended.seqs == [4, 5, 6]
    stored = [await log.get(seq) for seq in appended.seqs]
    assert [c.subject for c in stored if c] == [w.subject for w in writes]
    assert {c.command_id for c in stored if c} == {"batch-ok"}


async def test_read_subject_returns_commits_in_order_and_get_past_the_end_is_none(
    log: EventLog,
) -> None:
    at_o1 = (await log.append([created("o1", "v0")], meta("a0"))).last_seq
    at_o2 = (await log.append([created("o2")], meta("b0"))).last_seq
    for n in range(1, 6):  # interleaved with another subject's commits
        at_o1 = (await log.append([renamed("o1", at_o1, f"v{n}")], meta(f"a{n}"))).last_seq
        at_o2 = (await log.append([renamed("o2", at_o2, f"w{n}")], meta(f"b{n}"))).last_seq

    commits = await log.read_subject(org_subject("o1"))
    assert [c.command_id for c in commits] == [f"a{n}" for n in range(6)]
    assert [c.seq for c in commits] == sorted(c.seq for c in commits)
    assert [c.events[0].name for c in commits] == [f"v{n}" for n in range(6)]  # type: ignore[union-attr]
    after = await log.read_subject(org_subject("o1"), after=commits[2].seq)
    assert [c.seq for c in after] == [c.seq for c in commits[3:]]

    last = await log.last_seq()
    got = await log.get(last)
    assert got is not None
    assert got.seq == last
    assert await log.get(last + 1) is None
    assert await log.get(last + 1000) is None


async def test_the_leaders_next_head_is_the_direct_ones(log: EventLog) -> None:
    """Asked of the leader (what freshness asks: every acknowledged write), the first commit
    of a subject after a sequence is the one a direct get finds, headers and all."""
    at = (await log.append([created("o3", "v0")], meta("c0"))).last_seq
    await log.append([created("o4")], meta("d0"))
    at = (await log.append([renamed("o3", at, "v1")], meta("c1"))).last_seq
    for pattern in (org_subject("o3"), subjects.events_of("org")):
        for after in range(at + 1):
            direct = await log.next_head(pattern, after)
            leader = await log.next_head(pattern, after, leader=True)
            assert leader == direct, (pattern, after)
    assert await log.next_head(org_subject("o3"), at, leader=True) is None
    head = await log.next_head(org_subject("o3"), 0, leader=True)
    assert head is not None
    assert head.headers["AgentMem-Command-Id"] == "c0"


def test_a_header_block_is_read_name_by_name() -> None:
    block = b"NATS/1.0\r\nAgentMem-Command-Id: c.1\r\nAgentMem-Time: 17\r\n\r\n"
    assert header_block(block) == {"AgentMem-Command-Id": "c.1", "AgentMem-Time": "17"}
    assert header_block(b"") == {}
