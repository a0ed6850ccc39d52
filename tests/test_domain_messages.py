"""The pure parts of conversations: the decisions, the projection's row operations, the
full-text query text and the query helpers. No I/O here."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from agentmem import subjects
from agentmem.commands import NewMessage
from agentmem.consumers.messages import search_filters
from agentmem.consumers.queries import cursor_number, encode_cursor
from agentmem.domain import agents, messages, users
from agentmem.domain.aggregate import Loaded
from agentmem.errors import ConflictError, InvalidError, NotFoundError
from agentmem.eventlog import H_COMMAND_ID, H_TIME, StoredCommit
from agentmem.events import (
    AgentDeleted,
    AnyEvent,
    ConversationDeleted,
    MessageAppended,
    MessageRedacted,
    OrgDeleted,
)
from agentmem.projections.messages import (
    MESSAGES,
    MessagesProjection,
    list_sql,
    message_view,
    position,
)
from agentmem.queries import SearchMessages
from agentmem.store import Delete, Update, Upsert
from agentmem.store.fulltext import (
    MAX_WORDS,
    SEARCH_WINDOW,
    fts5_match,
    postgres_search,
    scope_token,
    sqlite_search,
    words,
)

ORG, OTHER = "org-1", "org-2"


def agent(org_id: str = ORG, archived: bool = False, deleted: bool = False) -> Loaded[Any]:
    state = agents.Agent("a1", org_id, "Ada", archived=archived, deleted=deleted)
    return Loaded(agents.subject(org_id, "a1"), state, 3)


def user(org_id: str = ORG, deleted: bool = False) -> Loaded[Any]:
    state = users.User("u1", org_id, "Ann", "ann@x.io", "h", ("member",), deleted=deleted)
    return Loaded(users.subject(org_id, "u1"), state, 2)


def said(text: str, role: Any = "user", **fields: Any) -> NewMessage:
    return NewMessage(role=role, content=text, **fields)


# Who may speak ----------------------------------------------------------------------------
def test_a_live_agent_and_user_of_the_org_may_speak() -> None:
    messages.check_speakers(ORG, agent(), "a1", user(), "u1")
    messages.check_speakers(ORG, agent(), "a1", None, None)


@pytest.mark.parametrize(
    ("loaded_agent", "loaded_user", "error"),
    [
        (Loaded("s", None, 0), None, NotFoundError),
        (agent(deleted=True), None, NotFoundError),
        (agent(OTHER), None, NotFoundError),
        (agent(archived=True), None, ConflictError),
        (agent(), user(deleted=True), NotFoundError),
        (agent(), user(OTHER), NotFoundError),
        (agent(), Loaded("s", None, 0), NotFoundError),
    ],
)
def test_who_may_not_speak(loaded_agent: Loaded[Any], loaded_user: Any, error: type) -> None:
    user_id = "u1" if loaded_user is not None else None
    with pytest.raises(error):
        messages.check_speakers(ORG, loaded_agent, "a1", loaded_user, user_id)


def test_an_archived_agent_says_why() -> None:
    with pytest.raises(ConflictError, match="archived") as raised:
        messages.check_speakers(ORG, agent(archived=True), "a1", None, None)
    assert raised.value.details["archived"] is True


# Decisions --------------------------------------------------------------------------------
def test_an_append_is_one_write_without_an_expected_version() -> None:
    batch = [said("hello"), said("hi!", "assistant", tool_calls=[{"id": "c1"}]), said("x")]
    (write,) = messages.append(ORG, "s1", "a1", "u1", batch, ["m1", "m2", "m3"])
    assert write.subject == subjects.event(ORG, "conversation", "s1")
    assert write.expected is None
    assert [e.message_id for e in write.events if isinstance(e, MessageAppended)] == [
        "m1",
        "m2",
        "m3",
    ]
    second = write.events[1]
    assert isinstance(second, MessageAppended)
    assert (second.role, second.content, second.tool_calls) == ("assistant", "hi!", ({"id": "c1"},))
    assert (second.session_id, second.agent_id, second.user_id) == ("s1", "a1", "u1")


def test_an_append_needs_one_id_per_message() -> None:
    with pytest.raises(ValueError, match="one id"):
        messages.append(ORG, "s1", "a1", None, [said("a"), said("b")], ["m1"])


def test_deeply_nested_metadata_is_refused() -> None:
    deep: dict[str, Any] = {}
    for _ in range(100):
        deep = {"x": deep}
    with pytest.raises(InvalidError, match="message 1's metadata nests") as batch:
        messages.append(ORG, "s1", "a1", None, [said("a"), said("b", metadata=deep)], ["1", "2"])
    assert batch.value.details["path"] == "$.messages[1].metadata"
    assert batch.value.details["reason"] == "too_deep"
    with pytest.raises(InvalidError, match="the message's tool_calls nests") as one:
        messages.append(ORG, "s1", "a1", None, [said("a", tool_calls=[deep])], ["1"], single=True)
    assert one.value.details["path"] == "$.message.tool_calls"


def test_redaction_and_deletion_write_without_an_expected_version() -> None:
    (redact,) = messages.redact(ORG, "s1", "m1", "pasted a password")
    assert redact.expected is None
    assert redact.events == [
        MessageRedacted(message_id="m1", session_id="s1", reason="pasted a password")
    ]
    (delete,) = messages.delete(ORG, "s1")
    assert delete.expected is None
    assert delete.events == [ConversationDeleted(session_id="s1")]
    assert redact.subject == delete.subject == messages.subject(ORG, "s1")


# The projection ---------------------------------------------------------------------------
def commit(seq: int, subject: str, *events: AnyEvent, at: int = 1_700_000_000_000) -> StoredCommit:
    return StoredCommit(seq, subject, {H_TIME: str(at), H_COMMAND_ID: "c"}, list(events))


def appended(message_id: str, content: str = "text", **fields: Any) -> MessageAppended:
    return MessageAppended(
        message_id=message_id,
        session_id="s1",
        agent_id="a1",
        role="user",
        content=content,
        **fields,
    )


def test_positions_order_by_seq_then_index() -> None:
    assert position(7, 0) < position(7, 999) < position(8, 0)
    with pytest.raises(ValueError, match="at most 1000"):
        position(7, 1000)


def test_an_append_commit_is_one_row_per_message() -> None:
    conversation = messages.subject(ORG, "s1")
    ops = MessagesProjection().project(
        commit(
            12,
            conversation,
            appended("m1", user_id="u1"),
            appended("m2", tool_calls=({"id": "c1"},), metadata={"k": 1}, tool_call_id="t"),
        )
    )
    # The commit's command id first (one row per commit: a retry is recognised by it),
    # then one row per message.
    command = {"org_id": ORG, "session_id": "s1", "command_id": "c", "seq": 12}
    assert ops[0] == Upsert("message_commands", command)
    assert [type(op) for op in ops[1:]] == [Upsert, Upsert]
    first, second = (op.row for op in ops[1:] if isinstance(op, Upsert))
    assert set(first) == set(MESSAGES.column_names)
    assert (first["org_id"], first["seq"], first["position"]) == (ORG, 12, 12_000)
    assert (first["user_id"], first["redacted_at"], first["created_at"]) == (
        "u1",
        None,
        1_700_000_000_000,
    )
    assert (second["position"], second["tool_calls"], second["metadata"]) == (
        12_001,
        '[{"id":"c1"}]',
        '{"k":1}',
    )
    assert second["tool_call_id"] == "t"


def test_a_redaction_empties_the_row_and_records_itself() -> None:
    ops = MessagesProjection().project(
        commit(20, messages.subject(ORG, "s1"), MessageRedacted("m1", "s1", "oops"), at=5)
    )
    assert ops == [
        Update(
            "messages",
            {"message_id": "m1", "org_id": ORG, "session_id": "s1"},
            {"content": "", "tool_calls": "[]", "metadata": "{}", "redacted_at": 5},
        ),
        Upsert(
            "message_redactions",
            {
                "message_id": "m1",
                "org_id": ORG,
                "session_id": "s1",
                "seq": 20,
                "reason": "oops",
                "redacted_at": 5,
            },
        ),
    ]


def test_deletions_delete_the_messages() -> None:
    project = MessagesProjection().project
    session = {"org_id": ORG, "session_id": "s1"}
    assert project(commit(30, messages.subject(ORG, "s1"), ConversationDeleted("s1"))) == [
        Delete("messages", session),
        Delete("message_redactions", session),
        Delete("message_commands", session),  # a fresh history: its command ids are new
    ]
    assert project(commit(31, agents.subject(ORG, "a1"), AgentDeleted("a1"))) == [
        Delete("messages", {"agent_id": "a1"})
    ]
    assert project(commit(32, subjects.event(ORG, "org", ORG), OrgDeleted(ORG))) == [
        Delete("messages", {"org_id": ORG}),
        Delete("message_redactions", {"org_id": ORG}),
        Delete("message_commands", {"org_id": ORG}),
    ]


def test_the_projection_reads_conversations_agents_org_deletions_and_forgets() -> None:
    assert MessagesProjection().filter_subjects == [
        subjects.events_of("conversation"),
        subjects.events_of("agent"),
        subjects.events_of("org_deletion"),
        subjects.events_of("forget"),
    ]


# Full-text query text ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("peanut allergy", '"peanut" OR "allergy"'),
        ('say "hi"', '"say" OR """hi"""'),
        ("a AND b NOT c*", '"a" OR "AND" OR "b" OR "NOT" OR "c*"'),
        ("col:value ^x (y)", '"col:value" OR "^x" OR "(y)"'),
        ("  \t\n ", ""),
    ],
)
def test_fts5_queries_take_every_word_literally(text: str, match: str) -> None:
    assert fts5_match(text) == match


def test_query_words_are_distinct_and_at_most_max_words() -> None:
    assert words("Peanut peanut PEANUT butter") == ["Peanut", "butter"]
    assert words("a\x00b") == ["a", "b"]
    many = " ".join(f"w{n}" for n in range(100))
    assert words(many) == [f"w{n}" for n in range(MAX_WORDS)]
    assert fts5_match(many).count(" OR ") == MAX_WORDS - 1


def test_search_sql_filters_by_equality_and_null_inside_the_match() -> None:
    where = {"org_id": ORG, "agent_id": "a1", "redacted_at": None}
    sql, args = sqlite_search(MESSAGES, ["x", "y"], where, 10)
    index = MESSAGES.full_text
    assert index is not None
    scope = (
        f'fts_scope : "{scope_token(index, "org_id", ORG)}" AND '
        f'fts_scope : "{scope_token(index, "agent_id", "a1")}" AND '
        f'fts_scope : "{scope_token(index, "redacted_at", None)}" AND '
    )
    # Every MATCH is scoped: any word (the window), each word, every word.
    assert args[:3] == [f'{scope}{{content}} : ("x" OR "y")', SEARCH_WINDOW, SEARCH_WINDOW]
    assert args[3:5] == [f'{scope}{{content}} : ("x")', f'{scope}{{content}} : ("y")']
    assert args[5:8] == [2, f'{scope}{{content}} : ("x" AND "y")', 10]
    # The table's own columns are checked again for the rows found.
    assert "t.org_id = ? AND t.agent_id = ? AND t.redacted_at IS NULL" in sql
    assert args[8:] == [ORG, "a1", 10]
    # One word: its newest matches.
    sql, args = sqlite_search(MESSAGES, ["x"], where, 10)
    assert args == [f'{scope}{{content}} : ("x")', 10, ORG, "a1", 10]
    sql, args = postgres_search(MESSAGES, ["x"], where, 10)
    assert "phraseto_tsquery('english', translate(?, " in sql
    assert "t.org_id = ? AND t.agent_id = ? AND t.redacted_at IS NULL" in sql
    assert args == ["x", ORG, "a1", 10]
    sql, args = postgres_search(MESSAGES, ["x", "y"], where, 10)
    window = ["x", "y", ORG, "a1", SEARCH_WINDOW]
    every = ["x", "y", ORG, "a1", SEARCH_WINDOW, "x", "y", 10, 10]
    assert args == [*window, *every, "x", "y", 10]
    for search in (sqlite_search, postgres_search):
        with pytest.raises(ValueError, match="no column"):
            search(MESSAGES, ["x"], {"content; DROP TABLE messages": 1}, 10)
        with pytest.raises(ValueError, match="only by its full-text scope"):
            search(MESSAGES, ["x"], {"content": "x"}, 10)


def test_a_scope_token_stands_for_one_value() -> None:
    """Ids are case-sensitive and hold hyphens; the tokenizer folds case and splits at
    hyphens. Hex keeps each value one token, distinct from every other value's."""
    index = MESSAGES.full_text
    assert index is not None
    values = ["chat-42", "Chat-42", "chat 42", "chat", "42", "", None, "a6368617430"]
    tokens = {scope_token(index, "session_id", v) for v in values}
    assert len(tokens) == len(values)
    assert all(t.isalnum() and t.islower() and t[-1] in "01" for t in tokens)
    assert scope_token(index, "org_id", "x") != scope_token(index, "agent_id", "x")


# Query helpers ----------------------------------------------------------------------------
def test_a_page_cursor_is_a_position() -> None:
    assert cursor_number(None) is None
    assert cursor_number(encode_cursor("12001")) == 12001
    for key in ("abc", "-1", "1.5"):
        with pytest.raises(InvalidError, match="cursor"):
            cursor_number(encode_cursor(key))


def test_list_sql_follows_the_order_and_filters() -> None:
    sql, args = list_sql(
        ORG, "s1", after=9000, order="desc", since=5, until=9, role="tool", limit=11
    )
    # A time range: only the time index may serve it (tests/test_message_filters.py).
    assert "position + 0 < ?" in sql
    assert "created_at >= ? AND created_at < ? AND role || '' = ?" in sql
    assert sql.endswith("ORDER BY position + 0 DESC LIMIT ?")
    assert args == [ORG, "s1", 9000, 5, 9, "tool", 11]
    sql, args = list_sql(
        ORG, "s1", after=9000, order="asc", since=None, until=None, role="tool", limit=11
    )
    assert "position > ? AND role = ?" in sql
    assert sql.endswith("ORDER BY position ASC LIMIT ?")
    sql, args = list_sql(
        ORG, "s1", after=None, order="asc", since=None, until=None, role=None, limit=51
    )
    assert "position" not in sql.split("WHERE")[1].split("ORDER BY")[0]
    assert sql.endswith("ORDER BY position ASC LIMIT ?")
    assert args == [ORG, "s1", 51]


def test_a_search_needs_an_agent_or_a_user() -> None:
    with pytest.raises(InvalidError, match="agent_id or user_id"):
        search_filters(SearchMessages(text="x", session_id="s1"), ORG)
    assert search_filters(SearchMessages(text="x", user_id="u1", role="user"), ORG) == {
        "org_id": ORG,
        "redacted_at": None,
        "user_id": "u1",
        "role": "user",
    }


def test_a_message_view_decodes_json_and_says_redacted() -> None:
    row = {c: None for c in MESSAGES.column_names}
    row.update(tool_calls="[]", metadata='{"a":[1]}', redacted_at=7, content="")
    view = message_view(row)
    assert (view["tool_calls"], view["metadata"], view["redacted"]) == ([], {"a": [1]}, True)
    assert msgspec.json.encode(view)  # all JSON
