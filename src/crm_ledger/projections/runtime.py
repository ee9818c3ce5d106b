"""Running projections: follow the notification log, write rows and positions together.

Each projection keeps its tables as *table sets*, one per label: the live set (``g1``,
``g2``, ...), a set being rebuilt, and named snapshots replayed as of a past moment. A set's
rows and its position in the log are written in one transaction, and the position is
compare-and-set, so a batch is applied exactly once even when two processes catch up at once.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from crm_ledger.errors import InvalidInput, NotFound, PositionConflict
from crm_ledger.projections.contributions import Changes, Projection, counts_at
from crm_ledger.projections.customer_360 import Customer360
from crm_ledger.projections.journey_timeline import JourneyTimeline
from crm_ledger.projections.lifetime_value import LifetimeValue

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from crm_ledger.application import LogPage, LogRecord

LIVE, BUILDING, RETIRED = "live", "building", "retired"


def snapshot_of(label: str) -> str | None:
    """The snapshot a table set's label names (None for live and building sets)."""
    return label[2:] if label.startswith("s_") else None


SNAPSHOT, SNAPSHOT_BUILDING = "snapshot", "snapshot-building"

#: How many notifications one transaction covers.
DEFAULT_BATCH = 20_000

_SNAPSHOT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def all_projections() -> tuple[Projection, ...]:
    """Every read model the ledger maintains."""
    return (Customer360(), LifetimeValue(), JourneyTimeline())


@dataclass(frozen=True, slots=True)
class TableSet:
    """One projection's tables under one label, and how far into the log they are."""

    projection: str
    label: str
    status: str
    position: int
    as_of: int | None = None
    valid_at: int | None = None
    created: int = 0
    #: The projection's code version the set was built with (None: built before versions).
    version: str | None = None

    @property
    def snapshot(self) -> str | None:
        """The snapshot name, for sets replayed into a snapshot."""
        return snapshot_of(self.label)


@dataclass(frozen=True, slots=True)
class SetWrite:
    """One batch for one table set: its changes and the position they bring it to."""

    table_set: TableSet
    changes: Changes
    position: int


class ProjectionStore(Protocol):
    """Where read models live (the SQL adapter, on SQLite or PostgreSQL)."""

    def table_sets(self) -> list[TableSet]:
        """Every table set, any status."""
        ...

    def create(self, projection: Projection, table_set: TableSet) -> None:
        """Create the set's (empty) tables and record the set; a set being built gets its
        look-up indexes only when promoted (bulk loading is faster without them)."""
        ...

    def write(self, writes: Sequence[SetWrite]) -> None:
        """Apply every write and move each set's position, all in one transaction; raise
        PositionConflict (and apply nothing) if a set is no longer where it was."""
        ...

    def promote(self, projection: Projection, label: str) -> None:
        """Finish a set (indexes built, status final): a rebuilt set becomes live and the old
        live set is retired, in one transaction; a snapshot becomes final."""
        ...

    def drop(self, projection: Projection, label: str) -> None:
        """Drop a set's tables and forget it."""
        ...


class LogSource(Protocol):
    """The ledger's notification log."""

    def read_log(self, after: int, limit: int) -> LogPage:
        """Records after position ``after``."""
        ...

    def log_head(self) -> int:
        """The newest position."""
        ...


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    """Where one table set is, against the head of the log."""

    projection: str
    label: str
    status: str
    position: int
    head: int
    lag: int
    as_of: int | None
    valid_at: int | None


@dataclass(frozen=True, slots=True)
class _Target:
    projection: Projection
    table_set: TableSet


class Projector:
    """Keeps the projections' table sets up to date with the log; rebuilds and replays."""

    def __init__(
        self,
        log: LogSource,
        store: ProjectionStore,
        *,
        projections: Sequence[Projection] | None = None,
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        self.log = log
        self.store = store
        self.projections = {p.name: p for p in (projections or all_projections())}
        self.batch_size = batch_size

    # Live sets.

    def live(self) -> dict[str, TableSet]:
        """The live table set of each projection that has been built."""
        return {s.projection: s for s in self._sets() if s.status == LIVE}

    def catch_up(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Bring every live set up to the head of the log (building the missing ones first,
        and rebuilding those whose code changed since they were built); the number of
        records applied (0 when the new records changed no row, as the access log's)."""
        live = self.live()
        missing = [
            name
            for name, projection in self.projections.items()
            if name not in live or live[name].version != projection_version(type(projection))
        ]
        applied = self.rebuild(missing, progress) if missing else 0
        head = self.log.log_head()
        targets = [_Target(self.projections[n], s) for n, s in self.live().items()]
        return applied + self._run(targets, head, progress)

    def status(self) -> list[ProjectionStatus]:
        """Position and lag of every table set."""
        head = self.log.log_head()
        return [
            ProjectionStatus(
                s.projection,
                s.label,
                s.status,
                s.position,
                head,
                0 if s.status == SNAPSHOT else max(0, head - s.position),
                s.as_of,
                s.valid_at,
            )
            for s in sorted(self._sets(), key=lambda s: (s.projection, s.label))
        ]

    # Rebuilds.

    def rebuild(
        self, names: Sequence[str] = (), progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Build the named projections (all when none are named) into fresh tables in one
        pass over the log, and swap each in when caught up. A rebuild that was interrupted
        carries on where it stopped. Returns the records applied."""
        targets = self._rebuild_targets(names)
        applied = self._run(targets, self.log.log_head(), progress)
        for target in targets:
            self.store.promote(target.projection, target.table_set.label)
        self._drop_retired()
        return applied

    def start_rebuild(self, names: Sequence[str] = ()) -> None:
        """Make the sets the named projections will be rebuilt into (keeping those an
        interrupted rebuild left). A rebuild on several processes does this before it starts
        them, so that its workers, and any left running by a parent that was killed, only
        ever carry on with existing sets and never create one at the same moment as a
        rerun."""
        self._rebuild_targets(names)

    def _rebuild_targets(self, names: Sequence[str]) -> list[_Target]:
        chosen = [self.projection(n) for n in (names or list(self.projections))]
        self._drop_retired()
        sets = self._sets()
        targets = []
        for projection in chosen:
            building = next(
                (s for s in sets if s.projection == projection.name and s.status == BUILDING),
                None,
            )
            if building is None:
                label = _next_label(sets, projection.name)
                version = projection_version(type(projection))
                building = TableSet(projection.name, label, BUILDING, 0, version=version)
                self.store.create(projection, building)
                sets.append(building)
            targets.append(_Target(projection, building))
        return targets

    # Snapshots.

    def replay(
        self,
        into: str,
        *,
        as_of: int | None,
        valid_at: int | None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[TableSet]:
        """Materialise every projection as it stood at ``as_of`` (recorded by then), counting
        only events that occurred by ``valid_at``, into the read-only snapshot ``into``."""
        if not _SNAPSHOT_NAME.match(into):
            msg = f"snapshot name {into!r}: use 1-32 lower-case letters, digits or _"
            raise InvalidInput(msg)
        label = f"s_{into}"
        existing = [s for s in self._sets() if s.label == label]
        if any(s.status == SNAPSHOT for s in existing):
            msg = f"snapshot {into!r} exists; drop it first (crm-ledger projections drop {into})"
            raise InvalidInput(msg)
        if existing and (existing[0].as_of, existing[0].valid_at) != (as_of, valid_at):
            msg = f"snapshot {into!r} was started with other times; drop it first"
            raise InvalidInput(msg)
        have = {s.projection: s for s in existing}
        targets = []
        for name, projection in self.projections.items():
            if name not in have:
                version = projection_version(type(self.projections[name]))
                have[name] = TableSet(
                    name, label, SNAPSHOT_BUILDING, 0, as_of, valid_at, version=version
                )
                self.store.create(projection, have[name])
            targets.append(_Target(projection, have[name]))
        keep = _moment_filter(as_of, valid_at)
        self._run(targets, self.log.log_head(), progress, keep)
        for target in targets:
            self.store.promote(target.projection, label)
        return [s for s in self._sets() if s.label == label]

    def snapshot_sets(self, name: str) -> dict[str, TableSet]:
        """The table sets of a finished snapshot, by projection."""
        found = {s.projection: s for s in self._sets() if s.label == f"s_{name}"}
        if not found or any(s.status != SNAPSHOT for s in found.values()):
            msg = f"no snapshot named {name!r} (see crm-ledger projections status)"
            raise NotFound(msg)
        return found

    def drop_snapshot(self, name: str) -> None:
        """Forget a snapshot and drop its tables."""
        label = f"s_{name}"
        found = [s for s in self._sets() if s.label == label]
        if not found:
            msg = f"no snapshot named {name!r}"
            raise NotFound(msg)
        for s in found:
            self.store.drop(self.projections[s.projection], label)

    # The loop.

    def _run(
        self,
        targets: list[_Target],
        head: int,
        progress: Callable[[int, int], None] | None,
        keep: Callable[[LogRecord], bool] | None = None,
    ) -> int:
        positions = {t.projection.name: t.table_set for t in targets}
        position = min((s.position for s in positions.values()), default=head)
        applied = 0
        while position < head:
            page = self.log.read_log(position, min(self.batch_size, head - position))
            if page.last <= position:
                break
            writes, in_batch = [], 0
            for target in targets:
                current = positions[target.projection.name]
                if current.position >= page.last:
                    continue
                records = page.records
                if keep is not None or current.position > position:
                    records = [
                        r
                        for r in records
                        if r.position > current.position and (keep is None or keep(r))
                    ]
                changes = Changes(target.projection.tables)
                changes.add_all(target.projection, records)
                writes.append(SetWrite(current, changes, page.last))
                positions[target.projection.name] = _moved(current, page.last)
                if not changes.empty:  # records no read model takes (the access log's) move
                    in_batch += len(records)  # the position only
            try:
                self.store.write(writes)
            except PositionConflict:
                # Another process moved these sets on (it applied the batch, or more):
                # carry on from where the store says they are.
                stored = {(s.projection, s.label): s for s in self.store.table_sets()}
                for target in targets:
                    name, label = target.projection.name, target.table_set.label
                    if (name, label) not in stored:
                        raise  # the set was dropped under us
                    positions[name] = stored[name, label]
                position = min(s.position for s in positions.values())
                continue
            applied += in_batch
            position = page.last
            if progress is not None:
                progress(position, head)
        return applied

    def _sets(self) -> list[TableSet]:
        return [s for s in self.store.table_sets() if s.projection in self.projections]

    def projection(self, name: str) -> Projection:
        if name not in self.projections:
            known = ", ".join(sorted(self.projections))
            msg = f"no projection named {name!r}; the projections are {known}"
            raise NotFound(msg)
        return self.projections[name]

    def _drop_retired(self) -> None:
        for s in self._sets():
            if s.status == RETIRED:
                self.store.drop(self.projections[s.projection], s.label)


def _moved(table_set: TableSet, position: int) -> TableSet:
    return dataclasses.replace(table_set, position=position)


@functools.cache
def projection_version(projection_type: type) -> str:
    """The version of a read model's code: a digest of the module that defines it (its
    contributions and tables) and of the framework that merges them, so that a change to
    either rebuilds the tables on the next catch-up."""
    digest = hashlib.sha256()
    for module in (sys.modules[projection_type.__module__], sys.modules[Changes.__module__]):
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


def _next_label(sets: Sequence[TableSet], projection: str) -> str:
    generations = [
        int(s.label[1:]) for s in sets if s.projection == projection and s.label[:1] == "g"
    ]
    return f"g{max(generations, default=0) + 1}"


def _moment_filter(as_of: int | None, valid_at: int | None) -> Callable[[LogRecord], bool]:
    return functools.partial(counts_at, as_of=as_of, valid_at=valid_at)
