"""A commit this version cannot read does not break its aggregate (issue 15, item 5).

Anyone with NATS write access can put a message on an event subject (the stream captures
``agentmem.evt.>``), and the stream denies delete: such a message stays forever. A rolling
upgrade meets the same thing, a commit holding an event type newer than this code. The
command and authentication paths skip what they cannot read, record it, and decide from the
events they understand, as the projections park such a commit.
"""

from __future__ import annotations

import msgspec
import structlog
from nats.aio.client import Client as NATS

from agentmem import Client, subjects
from agentmem.events import read_commit
from agentmem.service import Service

PASSWORD = "correct horse battery"


async def put_on(nc: NATS, subject: str, payload: bytes) -> None:
    """Publish straight onto the stream, as a NATS client with write access could."""
    ack = msgspec.json.decode((await nc.request(subject, payload, timeout=5)).data)
    assert "error" not in ack, ack


UNREADABLE = [
    b"\x00 not json at all",
    msgspec.json.encode({"events": [{"type": "org.teleported", "to": "mars"}]}),
    msgspec.json.encode({"events": {"not": "a list"}}),
]


async def test_an_unreadable_commit_is_skipped_by_commands_and_keys(
    service: Service, nc: NATS, client: Client
) -> None:
    org_id = (await client.create_org("Tolerant")).fields["org_id"]
    user = await client.register_user(org_id, "Ann", "ann@example.com", PASSWORD, roles=["admin"])
    user_id = user.fields["user_id"]
    key = (await client.create_api_key("k", user_id=user_id)).fields["token"]
    ann = client.with_token(key)
    await ann.create_agent("before")

    with structlog.testing.capture_logs() as logs:
        for subject in (
            subjects.event(org_id, "org", org_id),
            subjects.event(org_id, "user", user_id),
        ):
            for payload in UNREADABLE:
                await put_on(nc, subject, payload)

        # The organization's commands, as the administrator and as its user.
        renamed = await client.rename_org(org_id, "Still here")
        assert renamed.event == "org.renamed"
        await ann.create_agent("after")
        # The user's key authenticates, and the user's own aggregate takes commands.
        assert (await ann.update_profile(user_id, name="Ann B")).event == "user.profile_updated"
        assert (await ann.get_user(user_id, after_seq=ann.last_seq)).name == "Ann B"
        # A later commit appended on top of the unreadable ones keeps the versions right.
        again = await client.rename_org(org_id, "Still here, again")
        assert again.version > renamed.version

    skipped = [e for e in logs if e["event"] == "skipped a commit this version cannot read"]
    assert skipped, logs
    assert all("subject" in e and "seq" in e and "reason" in e for e in skipped)


def test_read_commit_keeps_the_events_it_knows() -> None:
    known = {"type": "org.renamed", "org_id": "o1", "name": "N"}
    payload = msgspec.json.encode({"events": [known, {"type": "org.teleported"}]})
    events, skipped = read_commit(payload)
    assert [e.__class__.__name__ for e in events] == ["OrgRenamed"]
    assert skipped is not None
    assert "event 1" in skipped
    assert read_commit(b"garbage")[0] == []
    assert read_commit(msgspec.json.encode({"events": [known]}))[1] is None
