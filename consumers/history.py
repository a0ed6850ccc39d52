"""``agentmem.q.history.get``: who did what to an aggregate, and when, straight from the log."""

from __future__ import annotations

from typing import Any

import msgspec

from agentmem import subjects
from agentmem.domain import orgs
from agentmem.errors import InvalidError, NotFoundError
from agentmem.eventlog import (
    H_COMMIT_TYPE,
    H_CORRELATION_ID,
    H_PRINCIPAL,
    EventLog,
    StoredCommit,
)
from agentmem.queries import GetHistory
from consumers.auth import authorize
from consumers.commands import SECRET_FIELDS, CommandRunner
from consumers.queries import decode_cursor, encode_cursor
from consumers.router import Request, Result, Router


def entry(commit: StoredCommit) -> dict[str, Any]:
    events = []
    for event in commit.events:
        fields = msgspec.to_builtins(event)
        events.append({k: v for k, v in fields.items() if k not in SECRET_FIELDS})
    return {
        "seq": commit.seq,
        "time": commit.time_ms,
        "commit_type": commit.headers.get(H_COMMIT_TYPE, ""),
        "principal": commit.headers.get(H_PRINCIPAL, ""),
        "command_id": commit.command_id,
        "correlation_id": commit.headers.get(H_CORRELATION_ID, ""),
        "events": events,
    }


def _seq_of(cursor_key: str) -> int:
    if not cursor_key:
        return 0
    if not cursor_key.isdigit():
        raise InvalidError("cursor is not one this subject returned", {"cursor": cursor_key})
    return int(cursor_key)


def build_router(log: EventLog, runner: CommandRunner) -> Router:
    router = Router()

    @router.route(subjects.HISTORY_GET, GetHistory)
    async def get_history(request: Request[GetHistory]) -> Result:
        query = request.body
        missing = NotFoundError(f"{query.aggregate} {query.id} does not exist")
        if query.aggregate == "org":
            subject = orgs.subject(query.id)
        else:
            try:
                subject = await runner.user_subject(query.id)
            except NotFoundError:
                raise missing from None
        org_id = subject.split(".")[2]
        authorize(request.caller, "reader", org_id, missing)
        after = _seq_of(decode_cursor(query.cursor))
        commits: list[StoredCommit] = []
        # Read one more than asked: it says whether a next page exists.
        async for commit in log.iter_subject(subject, after=after):
            commits.append(commit)
            if len(commits) > query.limit:
                break
        if not commits and after == 0:
            raise missing
        items = [entry(c) for c in commits[: query.limit]]
        more = len(commits) > query.limit
        next_cursor = encode_cursor(str(items[-1]["seq"])) if more else None
        return {"items": items, "next_cursor": next_cursor}, (items[-1]["seq"] if items else None)

    return router
