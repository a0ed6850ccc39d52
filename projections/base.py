"""What a projection is: a name, the subjects it reads, its tables, and a pure function from a
commit to row operations. The worker does all the I/O."""

from __future__ import annotations

from typing import Protocol

from agentmem.eventlog import StoredCommit
from agentmem.store import RowOp, Table


class Projection(Protocol):
    name: str
    # What its rows are made by: bumped when ``project`` or ``tables`` change what the rows
    # hold. A store whose live tables are of an older version gets the new one built beside
    # them and switched to (``agentmem.projections.build``).
    version: int
    filter_subjects: list[str]
    tables: list[Table]

    def project(self, commit: StoredCommit) -> list[RowOp]:
        """Row operations for one commit. Must be deterministic: replay depends on it."""
        ...
