"""What several projections' rows share: JSON columns, and a tag table per tagged aggregate.

Tags live in a table of their own, one row per (owner, tag) with the organization beside
them, so that "every agent of this org with tag X" walks an index instead of every row.
"""

from __future__ import annotations

import msgspec

from agentmem.store import Column, Delete, RowOp, Table, Upsert

_encoder = msgspec.json.Encoder()


def json_text(value: object) -> str:
    """A value for a ``json`` column."""
    return _encoder.encode(value).decode()


def tag_table(name: str, owner_key: str) -> Table:
    """The tag table ``name`` of the aggregates keyed by ``owner_key``."""
    return Table(
        name=name,
        columns=(Column(owner_key, "text"), Column("tag", "text"), Column("org_id", "text")),
        primary_key=(owner_key, "tag"),
        indexes=((f"{name}_org_tag", ("org_id", "tag", owner_key), False),),
    )


def tag_rows(
    table: Table, org_id: str, owner_id: str, tags: tuple[str, ...], first: bool = False
) -> list[RowOp]:
    """Replace an owner's tags: its old rows go, one row per tag comes. ``first``: the
    owner is new and has no rows yet, so nothing goes (and a batch of new owners is one run
    of inserts, ``agentmem.store.sql.grouped``)."""
    owner_key = table.primary_key[0]
    ops: list[RowOp] = [] if first else [Delete(table.name, {owner_key: owner_id})]
    for tag in tags:
        ops.append(Upsert(table.name, {owner_key: owner_id, "tag": tag, "org_id": org_id}))
    return ops
