"""``domain.ingest.names_forgotten``: which parked commands a forget reaches, and whose an
outcome subject says it was (pure)."""

from __future__ import annotations

import json

import pytest

from agentmem import subjects
from agentmem.domain.ingest import names_forgotten


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


APPEND = body(session_id="s1", agent_id="a1", message={"role": "user", "content": "hi"})
BATCH = body(memories=[{"content": "x", "user_id": "u1"}, {"content": "y", "user_id": "u2"}])


@pytest.mark.parametrize(
    ("target", "ids", "operation", "data", "ran_as", "reached"),
    [
        ("conversation", {"session_id": "s1"}, "message.append", APPEND, None, True),
        ("conversation", {"session_id": "s2"}, "message.append", APPEND, None, False),
        ("agent", {"agent_id": "a1"}, "message.append", APPEND, None, True),
        # A batch's items are read too.
        ("user", {"user_id": "u2"}, "memory.add_batch", BATCH, None, True),
        ("user", {"user_id": "u3"}, "memory.add_batch", BATCH, None, False),
        # What a user published is theirs, whatever it names.
        ("user", {"user_id": "u9"}, "message.append", APPEND, "u9", True),
        ("agent", {"agent_id": "a9"}, "message.append", APPEND, "a9", False),
        # A memory scope reaches memories only, and needs every id it names.
        ("memory_scope", {"user_id": "u1"}, "memory.add_batch", BATCH, None, True),
        ("memory_scope", {"agent_id": "a1"}, "message.append", APPEND, None, False),
        (
            "memory_scope",
            {"user_id": "u1", "session_id": "s1"},
            "memory.add_batch",
            BATCH,
            None,
            False,
        ),
        # An id as a key or inside a longer string is not a mention.
        ("user", {"user_id": "u1"}, "memory.add", body(u1="x", content="u1 said"), None, False),
        ("user", {"user_id": "u1"}, "memory.add", b"not json", None, False),
    ],
)
def test_names_forgotten(
    target: str,
    ids: dict[str, str],
    operation: str,
    data: bytes,
    ran_as: str | None,
    reached: bool,
) -> None:
    assert names_forgotten(target, ids, operation, data, ran_as) is reached


@pytest.mark.parametrize(
    ("subject", "user"),
    [
        ("agentmem.outcome.org1.u1.cmd-1", "u1"),
        ("agentmem.outcome.org1.anonymous.cmd-1", "anonymous"),
        ("agentmem.outcome.org1.u1", None),
        ("agentmem.out.org1.u1.cmd-1", None),
        ("", None),
    ],
)
def test_the_user_an_outcome_subject_names(subject: str, user: str | None) -> None:
    assert subjects.outcome_user(subject) == user
