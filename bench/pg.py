"""The Postgres server the benchmark measures against: one fresh schema per use."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from urllib.parse import quote

import asyncpg  # type: ignore[import-untyped]

DSN = os.environ.get(
    "AGENTMEM_BENCH_POSTGRES",
    os.environ.get("AGENTMEM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"),
)


@contextlib.asynccontextmanager
async def postgres_store(name: str) -> AsyncIterator[str]:
    """A fresh, empty schema on the server, dropped afterwards; yields its store URL."""
    schema = f"bench_{name.replace('-', '_')}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(DSN, timeout=10)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in DSN else "?"
        yield f"{DSN}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()
