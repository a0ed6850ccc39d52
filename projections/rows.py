"""What several projections' rows share: JSON columns, and a tag table per tagged aggregate.

Tags live in a table of their own, one row per (owner, tag) with the organization beside
them, so that "every agent of this org with tag X" walks an index instead of every row.
"""

from __future__ import annotations

import msgspec

from agentmem.events import DataForgotten, ForgetTarget
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


FORGOTTEN_IDS = ("user_id", "agent_id", "session_id", "memory_id")


def forgotten_rows(
    event: DataForgotten,
    targets: frozenset[ForgetTarget],
    tables: list[Table],
    through: dict[str, Table] | None = None,
) -> list[RowOp]:
    """The deletions of a forget (``data.forgotten``) in a projection that holds rows of
    ``targets``: each table's rows that have every id the event names (and its
    organization), erased from the files too. A tag table named in ``through`` is matched
    through its owner's table (the tags of every memory of a user). A table without a
    column for one of the ids holds none of it."""
    if event.target not in targets:
        return []
    ids = {name: value for name in FORGOTTEN_IDS if (value := getattr(event, name)) is not None}
    ops: list[RowOp] = []
    for table in tables:
        owner = (through or {}).get(table.name)
        columns = set((owner or table).column_names)
        if not ids.keys() <= columns:
            continue
        key = {"org_id": event.org_id, **ids} if "org_id" in columns else ids
        ops.append(Delete(table.name, key, through=owner.name if owner else None, erase=True))
    return ops
