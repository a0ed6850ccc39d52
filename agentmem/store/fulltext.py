"""Full-text search on each engine: the DDL a migration adds for a table declared with
``full_text``, and the query behind ``Store.search``.

SQLite: an FTS5 table ``<table>_fts`` kept in step by triggers. Its rowid is the table's
``full_text.key`` column, an explicit integer: the implicit rowid of a table without an
INTEGER PRIMARY KEY may change on VACUUM, which would silently point the index at other rows.
An index with a ``scope`` holds, besides the text, one column ``fts_scope`` of scope tokens:
one token per scope column, the column's letter (a, b, c, ... in ``scope`` order) then the
hex of its value then ``0``, or the letter then ``1`` for NULL. Hex makes every value one
token that the tokenizer cannot split, fold or stem (ids are case-sensitive and hold
hyphens), so a token stands for exactly one value. Its external content is the view
``<table>_fts_rows`` (the key, the tokens, the text), from which ``rebuild`` refills it. A
search puts its filters into the MATCH (``fts_scope : "a...0" AND ...``): FTS5 itself finds
the scope's matches by intersecting the token's and the words' lists in rowid order, and
the table is read only by key for the rows found. Filtering by a JOIN instead let SQLite
walk the scope's rows and probe FTS5 once per row, which grew with the square of the
matches (one agent with 16,000 matches: 6.3 s; 32,000: 26.5 s).

Postgres: a generated ``tsvector`` column ``fts_document`` with a GIN index. The column is
not declared in the ``Table``, so dumps and upserts never see it. A search walks the
scope's own index on (scope column, key) (an agent's, a user's, a conversation's messages
by position) newest first and checks each row against the words (``postgres_search``).

Both stem English words (FTS5's porter tokenizer, the ``english`` configuration) and match
any word of the query (OR). Stop words differ: Postgres drops them, FTS5 keeps them.

Ranking, the same on both engines. ``rank`` is how many of the query's distinct words
(the first ``MAX_WORDS``) the row holds: computed from that row and the query only, never
from statistics over the index. bm25 (FTS5) weighs words by how rare they are in the whole
table, every organization's rows together, so its scores and even its order moved when
another organization wrote a word, telling the caller whether and how often someone else
used it. Ties go newest first (the higher key). A search ranks a bounded set of candidates:
the newest ``SEARCH_WINDOW`` matches in its scope, and the newest ``limit`` rows that hold
every word (however old). So a row with every word is always found; one with some of the
words is found when it is among the newest ``SEARCH_WINDOW`` matches. The cost does not
grow with the number of matches (100,000 matches in one scope: docs/performance.md); on
Postgres, words that few rows of a large scope hold make the walk longer (no row of
100,000 holds it: the whole scope).

A person's text never reaches either engine's query syntax: for FTS5 each word becomes a
quoted string (an FTS5 string literal, its quotes doubled), Postgres parses each word with
``phraseto_tsquery``, which has no operators: a word of several tokens is a phrase on both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentmem.store.port import Condition, FullText, Table

TOKENIZE = "porter unicode61 remove_diacritics 2"
TS_CONFIG = "english"
PG_DOCUMENT = "fts_document"
RANK = "rank"
_RANK_ALIAS = "search_rank"  # `rank` is a hidden column of every FTS5 table
SCOPE_COLUMN = "fts_scope"  # the FTS5 column of scope tokens
# A search ranks the newest this many matches in its scope (and the newest rows that hold
# every word). 1,000 matches ranked cost 2-8 ms on SQLite (2 to 25 words).
SEARCH_WINDOW = 1_000
# The words of a query that count: the first this many distinct ones.
MAX_WORDS = 32


def index_of(table: Table) -> FullText:
    if table.full_text is None:
        raise ValueError(f"table {table.name} has no full-text index")
    return table.full_text


def fts_table(table: Table) -> str:
    return f"{table.name}_fts"


def fts_rows(table: Table) -> str:
    """The view an FTS5 index with a scope takes its content from."""
    return f"{table.name}_fts_rows"


def _scope_letter(index: FullText, column: str) -> str:
    return chr(ord("a") + index.scope.index(column))


def scope_token(index: FullText, column: str, value: Any) -> str:
    """The token that stands for ``column = value`` (None: IS NULL) in the index."""
    letter = _scope_letter(index, column)
    if value is None:
        return f"{letter}1"
    return f"{letter}{str(value).encode().hex()}0"


def _scope_sql(index: FullText, row: str) -> str:
    """The scope tokens of a row, in SQL; ``row`` is ``new.``, ``old.`` or ''."""
    tokens = []
    for column in index.scope:
        letter = _scope_letter(index, column)
        value = f"{row}{column}"
        tokens.append(
            f"CASE WHEN {value} IS NULL THEN '{letter}1' ELSE '{letter}' || hex({value}) || '0' END"
        )
    return " || ' ' || ".join(tokens)


def _check_scope(table: Table, index: FullText) -> None:
    if not 0 < len(index.scope) <= 26:
        raise ValueError(f"table {table.name}: a full-text scope has 1 to 26 columns")
    for column in index.scope:
        if column not in table.column_names:
            raise ValueError(f"table {table.name} has no column {column} (full-text scope)")
    if SCOPE_COLUMN in index.columns:
        raise ValueError(f"table {table.name}: {SCOPE_COLUMN} is the index's own column")


def sqlite_ddl(table: Table) -> tuple[str, ...]:
    """The FTS5 table, the unique index on its key, and the triggers that keep it in step
    (with a scope: and the view it takes its content from)."""
    index = index_of(table)
    fts, key = fts_table(table), index.key
    if not index.scope:
        return _unscoped_sqlite_ddl(table, index)
    _check_scope(table, index)
    columns = ", ".join(index.columns)
    new = ", ".join(f"new.{c}" for c in index.columns)
    old = ", ".join(f"old.{c}" for c in index.columns)
    indexed = f"{SCOPE_COLUMN}, {columns}"
    delete_old = (
        f"INSERT INTO {fts} ({fts}, rowid, {indexed}) "
        f"VALUES ('delete', old.{key}, {_scope_sql(index, 'old.')}, {old});"
    )
    insert_new = (
        f"INSERT INTO {fts} (rowid, {indexed}) "
        f"VALUES (new.{key}, {_scope_sql(index, 'new.')}, {new});"
    )
    watched = ", ".join(dict.fromkeys((key, *index.columns, *index.scope)))
    return (
        f"CREATE UNIQUE INDEX IF NOT EXISTS {fts}_key ON {table.name} ({key})",
        f"CREATE VIEW IF NOT EXISTS {fts_rows(table)} AS SELECT {key}, "
        f"{_scope_sql(index, '')} AS {SCOPE_COLUMN}, {columns} FROM {table.name}",
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {fts} USING fts5({indexed}, "
        f"content='{fts_rows(table)}', content_rowid='{key}', tokenize='{TOKENIZE}')",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_insert AFTER INSERT ON {table.name} "
        f"BEGIN {insert_new} END",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_delete AFTER DELETE ON {table.name} "
        f"BEGIN {delete_old} END",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_update AFTER UPDATE OF {watched} "
        f"ON {table.name} BEGIN {delete_old} {insert_new} END",
    )


def _unscoped_sqlite_ddl(table: Table, index: FullText) -> tuple[str, ...]:
    """An index without a scope, the table its own external content (as migration 3 made
    the messages' index)."""
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


def sqlite_drop(table: Table) -> tuple[str, ...]:
    """Drop the table's FTS5 index, whatever its shape: its triggers, table and view."""
    fts = fts_table(table)
    return (
        *(f"DROP TRIGGER IF EXISTS {fts}_{event}" for event in ("insert", "delete", "update")),
        f"DROP TABLE IF EXISTS {fts}",
        f"DROP VIEW IF EXISTS {fts_rows(table)}",
    )


def sqlite_rebuild(table: Table) -> tuple[str, ...]:
    """Replace the table's FTS5 index (whatever its shape) with the one its declaration
    makes now, filled from the table's rows: for a migration that changes an index."""
    fts = fts_table(table)
    return (
        *sqlite_drop(table),
        *sqlite_ddl(table),
        f"INSERT INTO {fts} ({fts}) VALUES ('rebuild')",
    )


# ASCII punctuation, which FTS5's unicode61 tokenizer reads as a separator. Postgres's parser
# reads URLs, host and file names, version numbers, e-mail addresses and hyphenated words as
# tokens of their own, so that a part of one ("node" in "node.js", "1.5" in "1.5.2") found
# nothing on Postgres and the row on SQLite: both the documents and the query words have it
# turned into spaces first. (translate is immutable, as a generated column needs.)
_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def _split_at_punctuation(sql_text: str) -> str:
    """``sql_text`` (an SQL expression) with ASCII punctuation as spaces."""
    marks = _PUNCTUATION.replace("'", "''")
    return f"translate({sql_text}, '{marks}', '{' ' * len(_PUNCTUATION)}')"


def postgres_ddl(table: Table) -> tuple[str, ...]:
    """The generated tsvector column and its GIN index."""
    index = index_of(table)
    document = " || ' ' || ".join(f"coalesce({c}, '')" for c in index.columns)
    return (
        f"ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS {PG_DOCUMENT} tsvector "
        f"GENERATED ALWAYS AS (to_tsvector('{TS_CONFIG}', "
        f"{_split_at_punctuation(document)})) STORED",
        f"CREATE INDEX IF NOT EXISTS {table.name}_fts ON {table.name} USING GIN ({PG_DOCUMENT})",
    )


def postgres_rebuild(table: Table) -> tuple[str, ...]:
    """Replace the table's tsvector column and its index with the ones its declaration makes
    now (the column's drop takes its index along): for a migration that changes them."""
    return (f"ALTER TABLE {table.name} DROP COLUMN IF EXISTS {PG_DOCUMENT}", *postgres_ddl(table))


def ddl(table: Table) -> dict[str, tuple[str, ...]]:
    """Both engines' statements, as the fields of a migration's ``Sql`` step."""
    return {"sqlite": sqlite_ddl(table), "postgres": postgres_ddl(table)}


def rebuild_ddl(table: Table) -> dict[str, tuple[str, ...]]:
    """A migration's ``Sql`` fields for an index whose scope changed: SQLite rebuilds its
    FTS5 table; the Postgres index holds no scope, so it stays."""
    return {"sqlite": sqlite_rebuild(table), "postgres": ()}


def clean(text: str) -> str:
    """The text without NUL characters, which neither engine takes in a query."""
    return text.replace("\x00", " ")


def words(text: str) -> list[str]:
    """The words of a query: split at whitespace, each counted once (case aside), the first
    ``MAX_WORDS`` of them; [] when there are none."""
    distinct: dict[str, str] = {}
    for word in clean(text).split():
        distinct.setdefault(word.casefold(), word)
        if len(distinct) == MAX_WORDS:
            break
    return list(distinct.values())


def fts5_phrase(word: str) -> str:
    """One word taken literally: an FTS5 string (a word of several tokens, "foo-bar", is a
    phrase)."""
    return '"' + word.replace('"', '""') + '"'


def fts5_match(text: str) -> str:
    """An FTS5 query matching any word of ``text`` (``words``), each taken literally; ''
    when it has none."""
    return " OR ".join(fts5_phrase(word) for word in words(text))


def _check_filters(table: Table, where: Mapping[str, Any]) -> FullText:
    index = index_of(table)
    for column in where:
        if column not in table.column_names:
            raise ValueError(f"table {table.name} has no column {column}")
        if column not in index.scope:
            raise ValueError(
                f"table {table.name}: a search filters only by its full-text scope "
                f"({', '.join(index.scope) or 'none'}), not by {column}"
            )
    return index


def _filters(
    table: Table, where: Mapping[str, Any], alias: str, condition: Condition | None = None
) -> tuple[str, list[Any]]:
    """The WHERE clause's ANDs of the scope's columns, then ``condition`` (its columns as
    ``t.``: ``alias`` is ``t``)."""
    _check_filters(table, where)
    sql, args = "", []
    for column, value in where.items():
        if value is None:
            sql += f" AND {alias}.{column} IS NULL"
        else:
            sql += f" AND {alias}.{column} = ?"
            args.append(value)
    if condition is not None:
        sql += f" AND ({condition.sql})"
        args += condition.args
    return sql, args


def _match_sql(table: Table, index: FullText, where: Mapping[str, Any]) -> tuple[str, str]:
    """(the scope's part of a MATCH, with its AND; the column filter of the text)."""
    scope = "".join(
        f'{SCOPE_COLUMN} : "{scope_token(index, column, value)}" AND '
        for column, value in where.items()
    )
    text = "{" + " ".join(index.columns) + "} : " if index.scope else ""
    return scope, text


def sqlite_search(
    table: Table,
    query_words: list[str],
    where: Mapping[str, Any],
    limit: int,
    condition: Condition | None = None,
) -> tuple[str, list[Any]]:
    """The query (``?`` placeholders) and its arguments; ``query_words`` from ``words``
    (at least one).

    Every MATCH is scoped: the scope's tokens AND the words in the text columns. One word:
    the newest ``limit`` matches (each holds the one word). Several: from the newest
    ``SEARCH_WINDOW`` rows that match any word (``newest``), each word's matches from the
    oldest of them on (``hits``) count the words each one holds; when the window is full,
    the newest ``limit`` older rows that match every word hold them all. The table is read
    last, by key, for those rows only (CROSS JOIN keeps that order)."""
    if not query_words:
        raise ValueError("a search needs at least one word")
    index = _check_filters(table, where)
    fts, key = fts_table(table), index.key
    scope, text = _match_sql(table, index, where)
    phrases = [fts5_phrase(word) for word in query_words]
    any_word = f"{scope}{text}({' OR '.join(phrases)})"
    columns = ", ".join(f"t.{c}" for c in table.column_names)
    filters, filter_args = _filters(table, where, "t", condition)
    # With a condition, each match is read by key from the table and checked before a limit.
    joined, met, met_args = "", "", []
    if condition is not None:
        joined = f" CROSS JOIN {table.name} t ON t.{key} = {fts}.rowid"
        met, met_args = f" AND ({condition.sql})", list(condition.args)
    read = (
        f"SELECT {columns}, f.score AS {_RANK_ALIAS} FROM found f "
        f"CROSS JOIN {table.name} t ON t.{key} = f.pos WHERE 1{filters} "
        f"ORDER BY {_RANK_ALIAS} DESC, t.{key} DESC LIMIT ?"
    )
    if len(phrases) == 1:
        sql = (
            f"WITH found(pos, score) AS (SELECT {fts}.rowid, 1 FROM {fts}{joined} "
            f"WHERE {fts} MATCH ?{met} ORDER BY {fts}.rowid DESC LIMIT ?) {read}"
        )
        return sql, [any_word, *met_args, limit, *filter_args, limit]
    every_word = f"{scope}{text}({' AND '.join(phrases)})"
    one_word = [f"{scope}{text}({phrase})" for phrase in phrases]
    hits = " UNION ALL ".join(
        f"SELECT rowid FROM {fts} WHERE {fts} MATCH ? AND rowid >= (SELECT lo FROM bound)"
        for _ in phrases
    )
    sql = (
        f"WITH newest(pos) AS (SELECT {fts}.rowid FROM {fts}{joined} "
        f"WHERE {fts} MATCH ?{met} ORDER BY {fts}.rowid DESC LIMIT ?), "
        f"bound(lo, full) AS (SELECT min(pos), count(*) = ? FROM newest), "
        f"hits(pos) AS ({hits}), "
        f"found(pos, score) AS ("
        f"SELECT pos, count(*) FROM hits GROUP BY pos UNION ALL "
        f"SELECT pos, ? FROM (SELECT {fts}.rowid AS pos FROM {fts}{joined} "
        f"WHERE {fts} MATCH ?{met} AND (SELECT full FROM bound) "
        f"AND {fts}.rowid < (SELECT lo FROM bound) ORDER BY {fts}.rowid DESC LIMIT ?)) {read}"
    )
    args = [any_word, *met_args, SEARCH_WINDOW, SEARCH_WINDOW, *one_word, len(phrases)]
    args += [every_word, *met_args, limit]
    return sql, [*args, *filter_args, limit]


# The tsquery of one word, its argument ``?``: its lexemes as a phrase, as FTS5 takes a
# word of several tokens ("peace-hello", "content:hello"); any one of them matched more on
# Postgres than on SQLite. Only stop words: empty, matching nothing.
_TSQUERY = f"phraseto_tsquery('{TS_CONFIG}', {_split_at_punctuation('?')})"
# How a Postgres search is planned, set for its transaction (see ``postgres_search``).
PG_SEARCH_SETTINGS = (
    "SET LOCAL plan_cache_mode = force_custom_plan",
    "SET LOCAL enable_bitmapscan = off",
    "SET LOCAL enable_sort = off",
    # The disabled plans' made-up costs would pass JIT's thresholds: 0.5 s of compiling.
    "SET LOCAL jit = off",
)


def postgres_search(
    table: Table,
    query_words: list[str],
    where: Mapping[str, Any],
    limit: int,
    condition: Condition | None = None,
) -> tuple[str, list[Any]]:
    """The query (``?`` placeholders) and its arguments; ``query_words`` from ``words``
    (at least one). The same candidates and ranks as ``sqlite_search``.

    It runs with ``PG_SEARCH_SETTINGS``: the scope's rows are walked newest first along its
    own index on (scope column, key), each checked against the words, until the window
    is full; the cost is the rows walked, whatever other organizations hold. Left to its
    statistics, the planner took the GIN index whenever it expected few matches (no
    statistics yet, or a word rare in the table but common in one scope), handing over
    every match to be sorted: 100,000 matches took 100 ms and more. A generic plan also
    evaluates the tsqueries once per row; each search is planned for its own words. The
    price: a word rare in a large scope walks all of it (100,000 rows: docs/performance.md).

    One word: the newest ``limit`` matches. Several: the newest ``SEARCH_WINDOW`` matches
    (``newest``), and, when that window is full and holds fewer than ``limit`` rows with
    every word, the newest older rows with every word (``every``), ranked by how many of
    the words each holds."""
    if not query_words:
        raise ValueError("a search needs at least one word")
    index = index_of(table)
    key, doc = index.key, PG_DOCUMENT
    n = len(query_words)
    any_word = "(" + " || ".join([_TSQUERY] * n) + ")"
    columns = ", ".join(table.column_names)
    t_columns = ", ".join(f"t.{c}" for c in table.column_names)
    # A condition is checked on each row of the walk, before the limits.
    filters, filter_args = _filters(table, where, "t", condition)
    if n == 1:
        sql = (
            f"SELECT {t_columns}, 1::float8 AS {_RANK_ALIAS} FROM {table.name} t "
            f"WHERE t.{doc} @@ {any_word}{filters} ORDER BY t.{key} DESC LIMIT ?"
        )
        return sql, [*query_words, *filter_args, limit]
    every_word = "(" + " && ".join([_TSQUERY] * n) + ")"
    score = "(" + " + ".join(f"(c.{doc} @@ {_TSQUERY})::int" for _ in query_words) + ")"
    sql = (
        f"WITH newest AS MATERIALIZED (SELECT {t_columns}, t.{doc} FROM {table.name} t "
        f"WHERE t.{doc} @@ {any_word}{filters} ORDER BY t.{key} DESC LIMIT ?), "
        f"every AS (SELECT {t_columns}, t.{doc} FROM {table.name} t "
        f"WHERE t.{doc} @@ {every_word}{filters} "
        f"AND (SELECT count(*) FROM newest) = ? "
        f"AND (SELECT count(*) FROM newest e WHERE e.{doc} @@ {every_word}) < ? "
        f"AND t.{key} < (SELECT min({key}) FROM newest) "
        f"ORDER BY t.{key} DESC LIMIT ?) "
        f"SELECT {columns}, {score}::float8 AS {_RANK_ALIAS} FROM ("
        f"SELECT * FROM newest UNION ALL SELECT * FROM every) c "
        f"ORDER BY {_RANK_ALIAS} DESC, {key} DESC LIMIT ?"
    )
    # In the order of their ``?``: the window, the older rows with every word, the score,
    # the final limit.
    window = [*query_words, *filter_args, SEARCH_WINDOW]
    every = [*query_words, *filter_args, SEARCH_WINDOW, *query_words, limit, limit]
    return sql, [*window, *every, *query_words, limit]


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as ``Store.search`` returns them: each with its ``rank``."""
    for row in rows:
        row[RANK] = float(row.pop(_RANK_ALIAS))
    return rows
