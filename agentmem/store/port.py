"""What a projection store must do, whatever the engine."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import repeat
from typing import TYPE_CHECKING, Any, Literal, Protocol

from agentmem.errors import UnavailableError

if TYPE_CHECKING:
    from agentmem.store.versions import VersionState

# "blob": bytes (derived vectors: float32, little-endian).
ColumnType = Literal["text", "integer", "json", "blob"]
Row = dict[str, Any]


def as_rows(names: Sequence[str], values: Iterable[Sequence[Any]]) -> list[Row]:
    """A query's rows as dicts: its column names, read once (every row of one query has
    them all), zipped with each row's values. ``map`` over ``zip`` is a fifth faster than a
    comprehension (51 memory rows: 40 against 49 µs); both stores make their rows here."""
    return list(map(dict, map(zip, repeat(names), values)))


# Every read of a query (``fetch_one``, ``fetch_all``, ``search``; not ``dump``) is stopped
# after this long and answered ``unavailable``: no read may hold a connection or a reader
# thread, and the requests queued behind it, for ever. A query may first wait up to 5 s for
# ``after_seq``; with this the answer still comes within a client's 10 s.
READ_TIME_LIMIT_S = 3.0


def read_too_long(seconds: float) -> UnavailableError:
    return UnavailableError(
        f"the read took longer than {seconds:g} s and was stopped; narrow the request "
        "(a smaller limit, a session, a role) or try again"
    )


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool = False


@dataclass(frozen=True)
class FullText:
    """A full-text index over some text ``columns`` of a table. ``key`` is a unique integer
    column of the table that names each row in the index (SQLite FTS5 needs one), and
    orders the matches: a higher key is newer.

    ``scope``: the columns a search may filter by (the organization first). SQLite keeps
    their values in the index itself, so that the match is scoped inside FTS5 and never
    walks the table's rows (``agentmem.store.fulltext``)."""

    columns: tuple[str, ...]
    key: str
    scope: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    # Each index is (name, columns, unique).
    indexes: tuple[tuple[str, tuple[str, ...], bool], ...] = ()
    # Searched with ``Store.search``. A migration creates the index: the statements of
    # ``agentmem.store.fulltext.ddl`` in a ``Sql`` step after the table's.
    full_text: FullText | None = None
    # Its rows hold what people wrote: once a batch has overwritten or deleted some, the
    # store also removes what would be left of them on disk (old page images, index entries).
    scrub: bool = False

    @cached_property
    def column_names(self) -> tuple[str, ...]:
        # Once per table: a read shapes every row it returns by these (50 times a page).
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True)
class Sql:
    """What a ``Table`` cannot express (full-text indexes, triggers, comments): statements
    for each engine, one per string, run in order. Either engine may have none."""

    sqlite: tuple[str, ...] = ()
    postgres: tuple[str, ...] = ()


MigrationStep = Table | Sql


@dataclass(frozen=True)
class Migration:
    """One numbered change of the schema: applied once, in its own transaction, and recorded
    in the store's ``schema_migrations`` table. A ``Table`` step creates the table as it is
    declared (and its indexes) when missing."""

    version: int
    name: str
    steps: tuple[MigrationStep, ...]


@dataclass(frozen=True)
class Upsert:
    """Insert the row, or replace every column but the key when the key exists."""

    table: str
    row: Row


@dataclass(frozen=True)
class Update:
    table: str
    key: Row
    values: Row


@dataclass(frozen=True)
class Delete:
    """Delete the rows matching ``key``. With ``through``: the rows whose first primary key
    column is that column of a row of table ``through`` matching ``key`` (the tags of every
    memory of a user); ``owner`` names another column of this table to match instead of the
    first primary key column (it must be a column of ``through`` too, unless ``via`` names
    the column of ``through`` it matches: a link's either end, through its memory's row).
    ``erase``: what it deletes must leave the files too, as for a ``scrub`` table (a
    forget). ``absent``: the other way round, the rows matching ``key`` whose ``owner`` has
    no row in ``through`` (a link to a memory the projection never saw: its ``memory.added``
    reads as forgotten on a replay)."""

    table: str
    key: Row
    through: str | None = None
    erase: bool = False
    owner: str | None = None
    via: str | None = None
    absent: bool = False


@dataclass(frozen=True)
class Copy:
    """Insert into ``table`` a row made from the row of ``source`` at ``key``: each of
    ``columns`` from the source's column of the same name, or of the name ``renamed`` gives
    it, or from ``values``. A projection keeps an old version of a row this way, from the
    row itself, before an event that names only what changed (``memory.archived``)."""

    table: str
    source: str
    key: Row
    columns: tuple[str, ...]
    values: Row = field(default_factory=dict)
    renamed: tuple[tuple[str, str], ...] = ()


RowOp = Upsert | Update | Delete | Copy


@dataclass(frozen=True)
class Parked:
    """An event a projection could not apply: kept, with why, for an operator to see."""

    projection: str
    seq: int
    subject: str
    error: str


def build_key(projection: str, version: int) -> str:
    """The name a build's checkpoint, parked events, lease and consumer go by
    (``agentmem.store.versions``)."""
    return f"{projection}@v{version}"


@dataclass
class ProjectionBatch:
    """What one fetch from the log turns into: row ops per stream sequence, then a checkpoint.

    ``after`` is the checkpoint the batch was built on (the worker's last one); a store
    applies the batch only while that is still the stored checkpoint (see ``fence``).

    ``version``: the projection version of the code that made the rows. A store applies a
    batch for the live tables only while they are of that version, and with ``building``
    writes the rows into the tables of that version's build instead, under the build's own
    checkpoint (``agentmem.store.versions``). None: no version check (a replay, a test).
    """

    projection: str
    checkpoint: int
    items: list[tuple[int, str, list[RowOp]]] = field(default_factory=list)
    parked: list[Parked] = field(default_factory=list)
    after: int | None = None
    version: int | None = None
    variant: str = ""
    building: bool = False

    @property
    def key(self) -> str:
        """The name its checkpoint and parked events go by."""
        if self.building:
            if self.version is None:
                raise ValueError("a build's batch names its version")
            return build_key(self.projection, self.version)
        return self.projection


class StaleBatch(Exception):
    """The store refused a batch built on a checkpoint that is no longer the stored one:
    another worker moved the projection on (this one lost its lease). Nothing was written."""


class VersionMismatch(StaleBatch):
    """A batch, build or switch for a projection version the store is not at: the live
    tables are of another version (another process's code moved them on), or that version
    is not the one being built. Nothing was written."""


def fence_version(batch: ProjectionBatch, state: VersionState | None) -> None:
    """Refuse a batch of code of another version (or variant) than its target's (``state``:
    the store's ``projection_versions`` row; None: none). Checked in the batch's
    transaction, under the same lock as ``fence``, so that a switch and a late batch of the
    old version's code never both commit."""
    if batch.version is None:
        return
    if batch.building:
        refused = state is None or not state.building_this(batch.version, batch.variant)
        where = "being built"
    else:
        # The live tables take the batches of the code that made them, and those of the
        # code whose version is being built beside them, which keeps them moving until the
        # switch when their columns are still its own (``ProjectionLeader``'s ``may_run``).
        refused = state is not None and not (
            state.runs_live(batch.version, batch.variant)
            or state.building_this(batch.version, batch.variant)
        )
        where = "live"
    if refused:
        raise VersionMismatch(
            f"projection {batch.projection}: a batch of version {batch.version} "
            f"{batch.variant!r} refused; it is not the version {where} ({state}): another "
            "process's code moved it on"
        )


def fence(batch: ProjectionBatch, stored: int) -> None:
    """Refuse a batch that would apply an event twice or move the checkpoint back.

    A store calls this inside the batch's transaction, with the stored checkpoint read under
    a lock that holds until the commit, so two workers that both think they are active can
    never both apply the same events: the late one's batch is refused whole.
    """
    seqs = [seq for seq, _, _ in batch.items] + [p.seq for p in batch.parked]
    problem = None
    if batch.after is not None and batch.after != stored:
        problem = f"it was built on checkpoint {batch.after}"
    elif seqs and min(seqs) <= stored:
        problem = f"it holds seq {min(seqs)}"
    elif batch.checkpoint < stored:
        problem = f"it would move the checkpoint back to {batch.checkpoint}"
    if problem is not None:
        raise StaleBatch(
            f"projection {batch.key}: batch refused, {problem} but the stored "
            f"checkpoint is {stored} (another worker applied it; this one is no longer active)"
        )


Dialect = Literal["sqlite", "postgres"]


@dataclass(frozen=True)
class Condition:
    """A part of a WHERE clause a read module wrote for one engine: ``sql`` with ``?``
    placeholders, naming the searched table's columns as ``t.<column>``, and its arguments
    in order. Never text from a request: values travel only in ``args``."""

    sql: str
    args: tuple[Any, ...] = ()


class Store(Protocol):
    # Seconds a query's read may take before it is stopped (``READ_TIME_LIMIT_S``).
    read_time_limit: float
    # Which SQL the engine speaks beyond the common part (JSON functions, full text).
    dialect: Dialect

    async def close(self) -> None: ...

    async def migrate(
        self, migrations: Sequence[Migration], unchecked: Collection[str] = ()
    ) -> list[int]:
        """Apply, in order, the migrations the store has not recorded yet; return their
        versions. Raises ``StartupError`` when the store holds one this code does not know,
        or a table (but those ``unchecked``: a projection about to be rebuilt) lacks a
        declared column."""

    async def apply(self, batch: ProjectionBatch) -> list[Parked]:
        """Apply every item and set the checkpoint, in one transaction.

        An item whose operations the database refuses is parked (with the error) instead of
        failing the batch; the parked items are returned. A batch that ``fence`` refuses
        against the stored checkpoint raises ``StaleBatch`` and writes nothing.
        """

    async def checkpoint(self, projection: str) -> int: ...

    async def versions(self) -> dict[str, VersionState]:
        """Per projection, the version of its live tables and the one being built."""

    async def adopt(self, projection: str, version: int, variant: str = "") -> None:
        """Record ``version`` as the live one of a projection the store has no version of
        yet (a new store, or one made before versions): its tables are taken as they are."""

    async def begin_build(
        self, projection: str, tables: list[Table], version: int, variant: str = ""
    ) -> None:
        """Make (or keep, to resume) the tables of ``version``'s build beside the live ones,
        and record it as building; a leftover build of another version (or variant) is
        dropped first. Raises ``VersionMismatch`` unless the live one ``needs_build``."""

    async def switch(self, projection: str, tables: list[Table], version: int) -> int:
        """In one transaction: drop the live tables, make the build's the live ones, give
        the projection the build's checkpoint and parked events, record ``version`` as live.
        Returns the checkpoint the new live tables start at. Raises ``VersionMismatch`` when
        ``version`` is not the one being built."""

    async def columns(self, tables: list[str]) -> dict[str, set[str]]:
        """The columns each of the live ``tables`` has (none: the table is missing)."""

    async def drop_build(self, projection: str, tables: list[Table]) -> None:
        """Drop the tables, checkpoint and parked events of the projection's build, if any."""

    async def checkpoints(self) -> dict[str, int]: ...

    async def parked(self, projection: str | None = None) -> list[Parked]: ...

    async def reset(self, projection: str, tables: list[Table]) -> None:
        """Empty the projection's tables and forget its checkpoint, parked events and
        version (whoever fills the tables again records theirs: ``adopt``)."""

    async def dump(self, table: Table) -> list[tuple[Any, ...]]:
        """Every row, ordered by primary key: what replay-equals-live compares."""

    async def fetch_one(self, sql: str, *args: Any) -> Row | None: ...

    async def fetch_all(self, sql: str, *args: Any) -> list[Row]: ...

    async def search(
        self,
        table: Table,
        text: str,
        where: Mapping[str, Any],
        limit: int,
        condition: Condition | None = None,
    ) -> list[Row]:
        """Full-text search of ``table`` (declared with ``full_text``): its rows that match
        any word of ``text``, among those whose columns equal ``where`` (a None value: the
        column is NULL; only columns of the index's ``scope``) and that meet ``condition``
        (checked inside the query, before the limit), best first. Each has a
        ``rank``: how many of the words it holds, from that row and the text alone (see
        ``agentmem.store.fulltext``)."""
