"""SQL text for row operations, shared by every adapter (placeholders are ``?``)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from agentmem.store.port import Column, ColumnType, Copy, Delete, RowOp, Table, Update, Upsert

TYPES: dict[ColumnType, str] = {
    "text": "TEXT",
    "integer": "BIGINT",
    "json": "TEXT",
    "blob": "BLOB",
}


def create_table(table: Table, types: Mapping[ColumnType, str] = TYPES) -> list[str]:
    """DDL for a table and its indexes; ``types`` maps column types to the engine's."""

    def column(c: Column) -> str:
        return f"{c.name} {types[c.type]}{'' if c.nullable else ' NOT NULL'}"

    columns = ", ".join(column(c) for c in table.columns)
    key = ", ".join(table.primary_key)
    statements = [f"CREATE TABLE IF NOT EXISTS {table.name} ({columns}, PRIMARY KEY ({key}))"]
    for name, index_columns, unique in table.indexes:
        kind = "UNIQUE INDEX" if unique else "INDEX"
        statements.append(
            f"CREATE {kind} IF NOT EXISTS {name} ON {table.name} ({', '.join(index_columns)})"
        )
    return statements


# The table and columns of each upsert statement made here, so that an adapter can write a
# run of one another way (the Postgres store: COPY, when every row is new).
UPSERT_TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {}


@lru_cache(maxsize=512)
def _upsert(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    placeholders = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    conflict = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    statement = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) "
        f"ON CONFLICT ({', '.join(key)}) {conflict}"
    )
    UPSERT_TARGETS[statement] = (table, columns)
    return statement


@lru_cache(maxsize=512)
def _update(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    sets = ", ".join(f"{c} = ?" for c in columns)
    where = " AND ".join(f"{k} = ?" for k in key)
    return f"UPDATE {table} SET {sets} WHERE {where}"


@lru_cache(maxsize=512)
def _delete(
    table: str, key: tuple[str, ...], through: str | None, owner: str, via: str, absent: bool
) -> str:
    where = " AND ".join(f"{k} = ?" for k in key)
    if through is None:
        return f"DELETE FROM {table} WHERE {where}"
    if absent:
        return (
            f"DELETE FROM {table} WHERE {where} AND NOT EXISTS "
            f"(SELECT 1 FROM {through} x WHERE x.{via} = {table}.{owner})"
        )
    return f"DELETE FROM {table} WHERE {owner} IN (SELECT {via} FROM {through} WHERE {where})"


@lru_cache(maxsize=512)
def _copy(
    table: str,
    source: str,
    columns: tuple[str, ...],
    given: tuple[str, ...],
    renamed: tuple[tuple[str, str], ...],
    key: tuple[str, ...],
) -> str:
    names = dict(renamed)
    chosen = ", ".join("?" if c in given else names.get(c, c) for c in columns)
    where = " AND ".join(f"{k} = ?" for k in key)
    return f"INSERT INTO {table} ({', '.join(columns)}) SELECT {chosen} FROM {source} WHERE {where}"


def statement(op: RowOp, keys: dict[str, tuple[str, ...]]) -> tuple[str, tuple[object, ...]]:
    """The SQL and parameters of one operation. Equal SQL strings can share an executemany."""
    match op:
        case Upsert(table=table, row=row):
            columns = tuple(row)
            return _upsert(table, columns, keys[table]), tuple(row.values())
        case Update(table=table, key=key, values=values):
            return _update(table, tuple(values), tuple(key)), (
                *values.values(),
                *key.values(),
            )
        case Delete(table=table, key=key, through=through, owner=owner, via=via):
            column = owner or keys[table][0]
            text = _delete(table, tuple(key), through, column, via or column, op.absent)
            return text, tuple(key.values())
        case Copy(table=table, source=source, key=key, columns=columns, values=values):
            given = tuple(c for c in columns if c in values)
            text = _copy(table, source, columns, given, op.renamed, tuple(key))
            return text, (*(values[c] for c in given), *key.values())
    raise TypeError(f"not a row operation: {op!r}")


def tables_of(op: RowOp) -> tuple[str, ...]:
    """The tables an operation writes or reads (a ``Copy`` reads its source, a ``Delete``
    through another table reads that one)."""
    if isinstance(op, Copy):
        return (op.table, op.source)
    if isinstance(op, Delete) and op.through is not None:
        return (op.table, op.through)
    return (op.table,)


def grouped(
    ops: list[RowOp], keys: dict[str, tuple[str, ...]]
) -> list[tuple[str, list[tuple[object, ...]]]]:
    """The operations as (sql, [params, ...]) runs, each run one ``executemany``.

    An operation joins the last run of the same SQL when no run after that one touches a
    table it touches (writes, or reads: a ``Copy``'s source), even if runs of other tables
    came between: each statement touches only its tables (and a table's full-text index,
    through that table's own triggers), and no table has a trigger or a foreign key onto
    another, so moving an operation past runs of other tables changes nothing, and the
    order of everything that touches one table is kept. A batch of memories, say, is one
    run of 1,000 rows and one of their 1,000 tags, not 2,000 runs of one row taking turns
    (a run of rows into a full-text table is moved in one statement, ``SQLiteStore._run``;
    on Postgres a long run of new rows is one COPY)."""
    runs: list[tuple[str, list[tuple[object, ...]]]] = []
    last_of_sql: dict[str, int] = {}  # SQL -> index of its last run
    last_touch: dict[str, int] = {}  # table -> index of the last run that touches it
    for op in ops:
        sql, params = statement(op, keys)
        tables = tables_of(op)
        at = last_of_sql.get(sql)
        if at is not None and all(last_touch.get(t, -1) <= at for t in tables):
            runs[at][1].append(params)
        else:
            at = len(runs)
            runs.append((sql, [params]))
            last_of_sql[sql] = at
        for t in tables:
            last_touch[t] = max(last_touch.get(t, -1), at)
    return runs
