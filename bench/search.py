"""Message search at scale: one agent's ``agentmem.q.message.search`` once ``sizes.search``
messages (100,000; 2,000 with --quick) of that agent match, and as many messages of another
organization match too, on each store.

Setup (once per workload, not timed): the agent's messages are ``y peanut <n>``, every
tenth with `` butter``; the other organization's are ``peanut walnut <n>``. They go in
through ``agentmem.cmd.message.append_batch``, 1,000 per command, until visible to queries.
Each run then asks, one request at a time, ``SEARCH_REQUESTS`` times each:

- ``one``: ``{"text": "peanut", "agent_id": A, "limit": 10}``: every message of the scope
  matches (the issue's reproduction; before the fix 16,000 matches took 6.3 s on SQLite);
- ``two``: ``"peanut butter"``: two words, the second in a tenth of the scope;
- ``none``: ``"walnut"``: nothing in the scope matches, while the other organization holds
  ``sizes.search`` matches (one tenant's rows must not slow another's search).

``raw-search`` is the baseline: a raw responder (``bench/responder.py``) over an SQLite file
holding the same rows, in a messages table with the store's own FTS5 index, answering the
least a scoped search can do: the newest 10 matches of ``peanut`` in the agent's scope, one
FTS5 MATCH (scope tokens AND the word) ordered by rowid, and their rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator

import msgspec

from agentmem import Client, ids
from agentmem.commands import MAX_MESSAGES_PER_BATCH
from agentmem.projections.messages import MESSAGES
from agentmem.store import fulltext, sql
from bench import env
from bench.harness import Config, Loop, Metric, Run, Session, Workload, check, sequential
from bench.messages import IN_FLIGHT, visible
from bench.pg import postgres_store
from bench.responder import MESSAGE_COLUMNS, RAW_SEARCH

SEARCH_REQUESTS = 500  # one at a time, per query, per run
LIMIT = 10
QUERIES = {"one": "peanut", "two": "peanut butter", "none": "walnut"}


def scope_text(n: int) -> str:
    return f"y peanut {n}" + (" butter" if n % 10 == 0 else "")


def other_text(n: int) -> str:
    return f"peanut walnut {n}"


async def _append_all(
    clients: list[Client], session_id: str, agent_id: str, texts: list[str], org_id: str | None
) -> int:
    """Every text as a user message, 1,000 per command, ``IN_FLIGHT`` at a time; the last
    sequence."""
    per = MAX_MESSAGES_PER_BATCH
    batches = [
        [{"role": "user", "content": text} for text in texts[s : s + per]]
        for s in range(0, len(texts), per)
    ]
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def append(b: int) -> int:
        async with slots:
            client = clients[b % len(clients)]
            written = await client.append_messages(session_id, agent_id, batches[b], org_id=org_id)
            return written.seq

    return max(await asyncio.gather(*(append(b) for b in range(len(batches)))))


def search_session(kind: str) -> Session:
    name = f"search-{kind}"

    @contextlib.asynccontextmanager
    async def session(cfg: Config) -> AsyncIterator[Run]:
        async with contextlib.AsyncExitStack() as stack:
            store = (
                await stack.enter_async_context(postgres_store(name))
                if kind == "postgres"
                else None
            )
            url = await stack.enter_async_context(env.nats_server(cfg, name))
            svc = await stack.enter_async_context(env.service(cfg, url, name, 2, store))
            conns = await stack.enter_async_context(
                env.client_connections(url, cfg.sizes.connections, svc.token)
            )
            clients = [env.client(nc, svc.token) for nc in conns]
            admin = clients[0]
            agent_id = str((await admin.create_agent("searched agent")).fields["agent_id"])
            other_org = str((await admin.create_org("other tenant")).fields["org_id"])
            other_agent = str(
                (await admin.create_agent("other agent", org_id=other_org)).fields["agent_id"]
            )
            n = cfg.sizes.search
            await _append_all(
                clients, "other", other_agent, [other_text(i) for i in range(n)], other_org
            )
            last = await _append_all(
                clients, "searched", agent_id, [scope_text(i) for i in range(n)], None
            )
            await visible(admin, "searched", last)
            expected = {"one": LIMIT, "two": LIMIT, "none": 0}

            async def ask(text: str, count: int) -> tuple[Loop, set[int]]:
                """``count`` searches for ``text``, one at a time; how many each found."""
                found: set[int] = set()

                async def call(worker: int, i: int) -> None:
                    found.add(
                        len(await admin.search_messages(text, agent_id=agent_id, limit=LIMIT))
                    )

                return await sequential(call, count, cfg.sizes.seconds * 3), found

            async def run(warmup: bool) -> dict[str, float]:
                result: dict[str, float] = {}
                for key, text in QUERIES.items():
                    loop, found = await ask(text, cfg.count(SEARCH_REQUESTS, warmup))
                    check(cfg, f"{name} {text!r}", loop)
                    if found != {expected[key]}:
                        raise RuntimeError(f"{text!r} found {sorted(found)} messages")
                    result[f"{key}_p50"] = loop.us(0.5) / 1000
                    result[f"{key}_p99"] = loop.us(0.99) / 1000
                return result

            yield run

    return session


# The raw baseline -------------------------------------------------------------------------
def _row(
    n: int, org_id: str, agent_id: str, session_id: str, text: str, seq: int
) -> tuple[object, ...]:
    known: dict[str, object] = {
        "message_id": ids.new_id(),
        "org_id": org_id,
        "session_id": session_id,
        "agent_id": agent_id,
        "user_id": None,
        "role": "user",
        "content": text,
        "tool_calls": "[]",
        "tool_call_id": None,
        "metadata": "{}",
        "seq": seq,
        "position": seq * MAX_MESSAGES_PER_BATCH + n % MAX_MESSAGES_PER_BATCH,
        "created_at": seq,
        "redacted_at": None,
    }
    return tuple(known[c.name] for c in MESSAGES.columns)


@contextlib.asynccontextmanager
async def raw_search(cfg: Config) -> AsyncIterator[Run]:
    n = cfg.sizes.search
    per = MAX_MESSAGES_PER_BATCH
    path = cfg.tmp / "raw-search.db"
    org_id, agent_id = ids.new_id(), ids.new_id()
    other_org, other_agent = ids.new_id(), ids.new_id()
    other = [
        _row(i, other_org, other_agent, "other", other_text(i), 1 + i // per) for i in range(n)
    ]
    base = 2 + n // per  # the searched agent's commits come after the other org's
    mine = [_row(i, org_id, agent_id, "searched", scope_text(i), base + i // per) for i in range(n)]
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    for statement in sql.create_table(MESSAGES):
        db.execute(statement)
    db.execute("BEGIN")
    insert = (
        f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in MESSAGE_COLUMNS)})"
    )
    db.executemany(insert, other + mine)
    # The store's FTS5 index (migration 4's statements), filled from the rows at once.
    for statement in fulltext.sqlite_rebuild(MESSAGES):
        db.execute(statement)
    db.execute("COMMIT")
    db.close()
    encoder = msgspec.json.Encoder()
    async with (
        env.nats_server(cfg, "raw-search") as url,
        env.responder(cfg, "raw-search", url, "--db", str(path)),
        env.connections(url, cfg.sizes.connections) as conns,
    ):
        payload = encoder.encode(
            {"org_id": org_id, "agent_id": agent_id, "text": "peanut", "limit": LIMIT}
        )
        decoder = msgspec.json.Decoder()

        async def call(worker: int, i: int) -> None:
            reply = decoder.decode((await conns[0].request(RAW_SEARCH, payload, timeout=10)).data)
            if not reply.get("ok") or len(reply["data"]["items"]) != LIMIT:
                raise RuntimeError(f"raw search answered {reply}")

        async def run(warmup: bool) -> dict[str, float]:
            loop = await sequential(call, cfg.count(SEARCH_REQUESTS, warmup), cfg.sizes.seconds)
            check(cfg, "raw search", loop)
            return {"p50": loop.us(0.5) / 1000, "p99": loop.us(0.99) / 1000}

        yield run


def metrics() -> tuple[Metric, ...]:
    return (
        Metric("one_p50", "'peanut' (every message matches) p50", "ms", ("raw-search:p50",)),
        Metric("one_p99", "'peanut' (every message matches) p99", "ms", ("raw-search:p99",)),
        Metric("two_p50", "'peanut butter' p50", "ms"),
        Metric("two_p99", "'peanut butter' p99", "ms"),
        Metric("none_p50", "'walnut' (none here, all in another org) p50", "ms"),
        Metric("none_p99", "'walnut' (none here, all in another org) p99", "ms"),
    )


def workload(kind: str, wid: str) -> Workload:
    return Workload(
        wid, f"search 100k matches ({kind})", metrics(), search_session(kind), group="search"
    )


RAW = Workload(
    "raw-search",
    "raw FTS5 scoped match, newest 10",
    (Metric("p50", "p50", "ms"), Metric("p99", "p99", "ms")),
    raw_search,
    group="search",
)
WORKLOADS = [RAW, workload("sqlite", "search-100k")]
# Run when named (--only search, or search-100k-postgres): it needs a Postgres server.
ON_REQUEST = [workload("postgres", "search-100k-postgres")]
