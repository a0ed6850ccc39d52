"""Full-text search on each engine: the DDL a migration adds for a table declared with
``full_text``, and the query behind ``Store.search``.

SQLite: an FTS5 table ``<table>_fts`` with the table as its external content (the text is
stored once), kept in step by triggers, ranked with bm25. Its rowid is the table's
``full_text.key`` column, an explicit integer: the implicit rowid of a table without an
INTEGER PRIMARY KEY may change on VACUUM, which would silently point the index at other rows.

Postgres: a generated ``tsvector`` column ``fts_document`` with a GIN index, ranked with
ts_rank. The column is not declared in the ``Table``, so dumps and upserts never see it.

Both stem English words (FTS5's porter tokenizer, the ``english`` configuration) and match
any word of the query (OR): a row with more of the words, and rarer ones, ranks higher.
Stop words differ: Postgres drops them, FTS5 keeps them (bm25 weighs them near zero).

A person's text never reaches either engine's query syntax: for FTS5 each word becomes a
quoted string (an FTS5 string literal, its quotes doubled), Postgres parses the text with
``plainto_tsquery``, which has no operators, and only its ANDs are turned into ORs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentmem.store.port import FullText, Table

TOKENIZE = "porter unicode61 remove_diacritics 2"
TS_CONFIG = "english"
PG_DOCUMENT = "fts_document"
RANK = "rank"
_RANK_ALIAS = "search_rank"  # `rank` is a hidden column of every FTS5 table


def index_of(table: Table) -> FullText:
    if table.full_text is None:
        raise ValueError(f"table {table.name} has no full-text index")
    return table.full_text


def fts_table(table: Table) -> str:
    return f"{table.name}_fts"


def sqlite_ddl(table: Table) -> tuple[str, ...]:
    """The FTS5 table, the unique index on its key, and the triggers that keep it in step."""
    index = index_of(table)
    fts, key = fts_table(table), index.key
    columns = ", ".join(index.columns)
    new = ", ".join(f"new.{c}" for c in index.columns)
    old = ", ".join(f"old.{c}" for c in index.columns)
    delete_old = f"INSERT INTO {fts} ({fts}, rowid, {columns}) VALUES ('delete', old.{key}, {old});"
    insert_new = f"INSERT INTO {fts} (rowid, {columns}) VALUES (new.{key}, {new});"
    return (
        f"CREATE UNIQUE INDEX IF NOT EXISTS {fts}_key ON {table.name} ({key})",
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {fts} USING fts5({columns}, "
        f"content='{table.name}', content_rowid='{key}', tokenize='{TOKENIZE}')",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_insert AFTER INSERT ON {table.name} "
        f"BEGIN {insert_new} END",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_delete AFTER DELETE ON {table.name} "
        f"BEGIN {delete_old} END",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_update AFTER UPDATE OF {key}, {columns} "
        f"ON {table.name} BEGIN {delete_old} {insert_new} END",
    )


def postgres_ddl(table: Table) -> tuple[str, ...]:
    """The generated tsvector column and its GIN index."""
    index = index_of(table)
    document = " || ' ' || ".join(f"coalesce({c}, '')" for c in index.columns)
    return (
        f"ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS {PG_DOCUMENT} tsvector "
        f"GENERATED ALWAYS AS (to_tsvector('{TS_CONFIG}', {document})) STORED",
        f"CREATE INDEX IF NOT EXISTS {table.name}_fts ON {table.name} USING GIN ({PG_DOCUMENT})",
    )


def ddl(table: Table) -> dict[str, tuple[str, ...]]:
    """Both engines' statements, as the fields of a migration's ``Sql`` step."""
    return {"sqlite": sqlite_ddl(table), "postgres": postgres_ddl(table)}


def clean(text: str) -> str:
    """The text without NUL characters, which neither engine takes in a query."""
    return text.replace("\x00", " ")


def fts5_match(text: str) -> str:
    """An FTS5 query matching any whitespace-separated word of ``text``, each taken
    literally (a word of several tokens, "foo-bar", is a phrase); '' when it has none."""
    words = clean(text).split()
    return " OR ".join('"' + word.replace('"', '""') + '"' for word in words)


def _filters(table: Table, where: Mapping[str, Any], alias: str) -> tuple[str, list[Any]]:
    sql, args = "", []
    for column, value in where.items():
        if column not in table.column_names:
            raise ValueError(f"table {table.name} has no column {column}")
        if value is None:
            sql += f" AND {alias}.{column} IS NULL"
        else:
            sql += f" AND {alias}.{column} = ?"
            args.append(value)
    return sql, args


def sqlite_search(
    table: Table, match: str, where: Mapping[str, Any], limit: int
) -> tuple[str, list[Any]]:
    """The query (``?`` placeholders) and its arguments; ``match`` is from ``fts5_match``."""
    index, fts = index_of(table), fts_table(table)
    columns = ", ".join(f"t.{c}" for c in table.column_names)
    filters, args = _filters(table, where, "t")
    sql = (
        f"SELECT {columns}, -bm25({fts}) AS {_RANK_ALIAS} FROM {fts} "
        f"JOIN {table.name} t ON t.{index.key} = {fts}.rowid "
        f"WHERE {fts} MATCH ?{filters} "
        f"ORDER BY {_RANK_ALIAS} DESC, t.{index.key} DESC LIMIT ?"
    )
    return sql, [match, *args, limit]


def postgres_search(
    table: Table, text: str, where: Mapping[str, Any], limit: int
) -> tuple[str, list[Any]]:
    """The query (``?`` placeholders) and its arguments."""
    index = index_of(table)
    columns = ", ".join(f"t.{c}" for c in table.column_names)
    filters, args = _filters(table, where, "t")
    # plainto_tsquery joins the words with ' & ' (lexemes never hold a space): any-word.
    query = f"replace(plainto_tsquery('{TS_CONFIG}', ?)::text, ' & ', ' | ')::tsquery"
    sql = (
        f"SELECT {columns}, ts_rank(t.{PG_DOCUMENT}, q.query) AS {_RANK_ALIAS} "
        f"FROM {table.name} t, (SELECT {query} AS query) q "
        f"WHERE t.{PG_DOCUMENT} @@ q.query{filters} "
        f"ORDER BY {_RANK_ALIAS} DESC, t.{index.key} DESC LIMIT ?"
    )
    return sql, [clean(text), *args, limit]


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as ``Store.search`` returns them: each with its ``rank``."""
    for row in rows:
        row[RANK] = float(row.pop(_RANK_ALIAS))
    return rows
