"""Run the set against a real service: ``python -m agentmem serve`` on its own nats-server
(``bench.env``, as every benchmark workload), the memories loaded through the client, and
every query asked through ``memory.search`` in each mode the service accepts.

Loading: per organization, the memories that correct nothing go in with
``memory.add_batch`` (up to 1,000 per command), then each correction with
``memory.supersede`` of its original, in file order, with its ``valid_from``. Then the
harness waits until no projection has events pending (a projection that embeds memories
catches up before the first vector query), and every search carries ``after_seq``.

Modes: a search is sent with ``mode`` (``text``, ``vector``, ``hybrid``). A service that
answers ``invalid`` at ``$.mode`` does not have that mode: it is reported unavailable. When
it has no ``mode`` at all, ``text`` is its one search, asked without the field. The same
for ``as_of``: a service without it answers the temporal queries with today's facts (and a
note says so).

Confidence: a reply may say that nothing in it is a confident match: ``confident: false``
on the reply's ``data`` (the whole reply) or on an item (that item). Without either, every
result returned counts as confident, so the right answer to an unanswerable query is then
an empty list.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentmem import Client, InvalidError
from agentmem.domain.memories import MAX_BATCH, SearchMemories
from agentmem.queries import Status
from bench import env
from bench.eval.dataset import Dataset, Memory, Query, Scope
from bench.eval.metrics import Score
from bench.harness import QUICK, Config
from bench.pg import postgres_store

MODES = ("text", "vector", "hybrid")
LIMIT = 10  # results asked for: what nDCG@10 needs
IDLE_SECONDS = 300.0  # how long the harness waits for the projections after loading


@dataclass(frozen=True)
class Answer:
    """One query's reply in one mode, as the metrics see it."""

    query: Query
    ranking: list[str | None]  # the set's key of each result, best first (None: unknown)
    confident: bool  # the reply holds at least one result it is confident of
    leaks: int  # results from outside the query's scope
    superseded: int  # corrected facts among the results
    seconds: float

    @property
    def score(self) -> Score:
        return Score.of(self.ranking, self.query.relevant, self.confident)


@dataclass
class ModeRun:
    mode: str
    sent_as: str | None  # the value of ``mode`` sent; None: the field left out
    unavailable: str | None = None  # why the service does not run this mode
    answers: list[Answer] = field(default_factory=list)


@dataclass
class Evaluation:
    runs: list[ModeRun]
    notes: list[str]
    load_seconds: float


def _scope_fields(scope: Scope) -> dict[str, str]:
    fields = {}
    if scope.user is not None:
        fields["user_id"] = scope.user
    if scope.agent is not None:
        fields["agent_id"] = scope.agent
    return fields


def _new_memory(memory: Memory) -> dict[str, Any]:
    body: dict[str, Any] = {
        "content": memory.content,
        "memory_type": memory.memory_type,
        "tags": list(memory.tags),
        "valid_from": memory.valid_from,
        **_scope_fields(memory.scope),
    }
    if memory.valid_to is not None:
        body["valid_to"] = memory.valid_to
    return body


async def load(client: Client, dataset: Dataset, org_ids: Mapping[str, str]) -> dict[str, str]:
    """Every memory of the set into the service; the service's id of each key."""
    ids: dict[str, str] = {}
    for org in dataset.organizations:
        fresh = [m for m in dataset.memories if m.scope.org == org and m.supersedes is None]
        for start in range(0, len(fresh), MAX_BATCH):
            chunk = fresh[start : start + MAX_BATCH]
            added = await client.add_memories([_new_memory(m) for m in chunk], org_id=org_ids[org])
            if added.added != len(chunk):
                raise RuntimeError(f"{len(chunk) - added.added} memories were duplicates")
            ids.update(zip((m.key for m in chunk), added.memory_ids, strict=True))
    for memory in dataset.memories:
        if memory.supersedes is None:
            continue
        written = await client.supersede_memory(
            ids[memory.supersedes],
            memory.content,
            valid_from=memory.valid_from,
            tags=list(memory.tags),
        )
        ids[memory.key] = str(written.fields["superseded_by"])
    return ids


async def wait_idle(client: Client, seconds: float = IDLE_SECONDS) -> None:
    """Until no projection has events pending."""
    deadline = time.monotonic() + seconds
    while True:
        status = (await client.request(Status.op.subject, {})).data
        pending = {
            name: p["lag"] for name, p in status["projections"].items() if p["lag"] not in (0, None)
        }
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"projections still behind after {seconds:g}s: {pending}")
        await asyncio.sleep(0.1)


def _search_body(query: Query, org_id: str, mode: str | None, as_of: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "text": query.text,
        "org_id": org_id,
        "limit": LIMIT,
        **_scope_fields(query.scope),
    }
    if mode is not None:
        body["mode"] = mode
    if as_of and query.as_of is not None:
        body["as_of"] = query.as_of
    return body


async def accepts(client: Client, body: dict[str, Any], name: str) -> str | None:
    """None when ``memory.search`` answers ``body``; the service's message when it answers
    ``invalid`` at the field ``name``. Any other error is raised."""
    try:
        await client.request(SearchMemories.op.subject, body)
    except InvalidError as exc:
        if exc.details.get("path") == f"$.{name}":
            return exc.message
        raise
    return None


def _confident(data: Mapping[str, Any]) -> bool:
    if data.get("confident") is False:
        return False
    return any(item.get("confident") is not False for item in data["items"])


def answer(
    query: Query,
    data: Mapping[str, Any],
    keys: Mapping[str, str],
    orgs: Mapping[str, str],
    seconds: float,
) -> Answer:
    """A ``memory.search`` reply (its ``data``) as an ``Answer``. ``keys``: the set's key
    of each memory id loaded; ``orgs``: the set's name of each organization id. A result
    counts as a leak unless its organization, user and agent are inside the query's
    scope."""
    items: Sequence[Mapping[str, Any]] = data["items"]
    ranking = [keys.get(item["memory_id"]) for item in items]
    leaks = 0
    for item in items:
        org = orgs.get(item.get("org_id", ""))
        scope = Scope(org, item.get("user_id"), item.get("agent_id")) if org else None
        if scope is None or not query.scope.holds(scope):
            leaks += 1
    superseded = sum(1 for key in ranking if key in query.superseded)
    return Answer(query, ranking, _confident(data), leaks, superseded, seconds)


class Asker:
    """Asks the queries of the set, as one client."""

    def __init__(
        self,
        client: Client,
        org_ids: Mapping[str, str],
        ids: Mapping[str, str],
        as_of: bool,
    ) -> None:
        self.client = client
        self.org_ids = org_ids
        self.keys = {memory_id: key for key, memory_id in ids.items()}
        self.orgs = {org_id: org for org, org_id in org_ids.items()}
        self.as_of = as_of

    async def ask(self, query: Query, mode: str | None) -> Answer:
        body = _search_body(query, self.org_ids[query.scope.org], mode, self.as_of)
        started = time.perf_counter()
        data = (await self.client.request(SearchMemories.op.subject, body)).data
        return answer(query, data, self.keys, self.orgs, time.perf_counter() - started)


async def plan_modes(
    client: Client, probe: dict[str, Any], wanted: Sequence[str], notes: list[str]
) -> list[ModeRun]:
    runs = []
    for mode in wanted:
        refused = await accepts(client, {**probe, "mode": mode}, "mode")
        runs.append(ModeRun(mode, mode, unavailable=refused))
    # No `mode` at all: the service's only search is its full-text search.
    no_modes = "text" in wanted and all(r.unavailable for r in runs)
    if no_modes and await accepts(client, probe, "mode") is None:
        text = next(r for r in runs if r.mode == "text")
        text.sent_as, text.unavailable = None, None
        notes.append("memory.search has no `mode`: text is its full-text search")
    return runs


async def evaluate(client: Client, dataset: Dataset, wanted: Sequence[str] = MODES) -> Evaluation:
    """Load the set through ``client`` (a service administrator's) into fresh
    organizations, and ask every query in every mode wanted."""
    notes: list[str] = []
    started = time.perf_counter()
    org_ids = {
        org: str((await client.create_org(name)).fields["org_id"])
        for org, name in dataset.organizations.items()
    }
    ids = await load(client, dataset, org_ids)
    await wait_idle(client)
    load_seconds = time.perf_counter() - started
    first = dataset.queries[0] if dataset.queries else None
    scope = first.scope if first else dataset.memories[0].scope
    probe = {"text": "probe", "org_id": org_ids[scope.org], "limit": 1, **_scope_fields(scope)}
    as_of_refused = await accepts(client, {**probe, "as_of": 0}, "as_of")
    if as_of_refused is not None:
        notes.append(
            "memory.search has no `as_of`: temporal queries were asked without it, so they "
            f"are answered with today's facts ({as_of_refused})"
        )
    asker = Asker(client, org_ids, ids, as_of=as_of_refused is None)
    runs = await plan_modes(client, probe, wanted, notes)
    for run in runs:
        if run.unavailable is None:
            run.answers = [await asker.ask(q, run.sent_as) for q in dataset.queries]
    return Evaluation(runs, notes, load_seconds)


@contextlib.asynccontextmanager
async def service_client(store: str = "sqlite") -> AsyncIterator[Client]:
    """A fresh nats-server and ``agentmem serve`` (SQLite, or a fresh Postgres schema), and
    a client acting as the service administrator."""
    with tempfile.TemporaryDirectory(prefix="agentmem-eval-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            cfg = Config(Path(tmp), QUICK, True, "asyncio", 1, stack)
            store_url = (
                await stack.enter_async_context(postgres_store("eval"))
                if store == "postgres"
                else None
            )
            url = await stack.enter_async_context(env.nats_server(cfg, "eval"))
            svc = await stack.enter_async_context(env.service(cfg, url, "eval", 2, store_url))
            (nc,) = await stack.enter_async_context(env.client_connections(url, 1, svc.token))
            yield env.client(nc, svc.token)


def median_ms(answers: Sequence[Answer]) -> float | None:
    return statistics.median(a.seconds for a in answers) * 1000 if answers else None
