"""What operators ask: the read models' state (status, catch up, rebuild, snapshots) and the
Kafka side (lag, dead letters, redrive, stored positions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from crm_ledger.projections.contributions import micros, moment
from crm_ledger.projections.runtime import snapshot_of

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from datetime import datetime

    from crm_ledger.application import Ledger
    from crm_ledger.projections.runtime import Projector


@dataclass(frozen=True, slots=True)
class ProjectionRow:
    """One table set of one projection, against the head of the log."""

    projection: str
    set: str
    status: str
    position: int
    head: int
    lag: int
    as_of: datetime | None
    valid_at: datetime | None
    #: The snapshot's name, for a set replayed into one (what `--snapshot` takes).
    snapshot: str | None = None


@dataclass(frozen=True, slots=True)
class LiveSet:
    """The live table set of a projection and how far it has read."""

    projection: str
    set: str
    position: int


@dataclass(frozen=True, slots=True)
class SnapshotMade:
    """A snapshot replayed as of a moment."""

    snapshot: str
    as_of: datetime | None
    valid_at: datetime | None
    position: int
    projections: list[str]


class Rebuild(Protocol):
    """Rebuilds projections, in worker processes where the machine has the cores."""

    def __call__(
        self,
        names: Sequence[str],
        *,
        workers: int | None,
        batch_size: int | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        """Rebuild ``names`` (every projection when empty)."""
        ...


class ProjectionOperations:
    """Status, catch-up, rebuild and snapshots of the read models."""

    def __init__(self, projector: Projector, rebuild: Rebuild) -> None:
        self.projector = projector
        self._rebuild = rebuild

    def status(self) -> list[ProjectionRow]:
        """Every table set (live, rebuilding, snapshots) with its position and lag."""
        return [
            ProjectionRow(
                projection=r.projection,
                set=r.label,
                status=r.status,
                position=r.position,
                head=r.head,
                lag=r.lag,
                as_of=moment(r.as_of) if r.as_of is not None else None,
                valid_at=moment(r.valid_at) if r.valid_at is not None else None,
                snapshot=snapshot_of(r.label),
            )
            for r in self.projector.status()
        ]

    def catch_up(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Bring every live projection up to the head of the log; records applied."""
        return self.projector.catch_up(progress)

    def rebuild(
        self,
        names: Sequence[str] = (),
        *,
        workers: int | None = None,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[LiveSet]:
        """Rebuild ``names`` (all when empty) into fresh tables; the live sets after."""
        for name in names:
            self.projector.projection(name)  # an unknown name fails before any work
        self._rebuild(names, workers=workers, batch_size=batch_size, progress=progress)
        return [
            LiveSet(n, s.label, s.position)
            for n, s in sorted(self.projector.live().items())
            if not names or n in names
        ]

    def replay(
        self,
        into: str,
        *,
        as_of: datetime | None,
        valid_at: datetime | None,
        progress: Callable[[int, int], None] | None = None,
    ) -> SnapshotMade:
        """Materialise every projection as it stood at a moment into the snapshot ``into``."""
        sets = self.projector.replay(
            into,
            as_of=micros(as_of) if as_of else None,
            valid_at=micros(valid_at) if valid_at else None,
            progress=progress,
        )
        return SnapshotMade(
            snapshot=into,
            as_of=as_of,
            valid_at=valid_at,
            position=max((s.position for s in sets), default=0),
            projections=sorted(s.projection for s in sets),
        )

    def drop(self, snapshot: str) -> None:
        """Drop the snapshot and its tables."""
        self.projector.drop_snapshot(snapshot)


# Kafka.


class Letter(Protocol):
    """A dead letter as the Kafka adapter reads it."""

    @property
    def partition(self) -> int:
        """The partition."""
        ...

    @property
    def offset(self) -> int:
        """Its offset in the dead-letter topic."""
        ...

    @property
    def value(self) -> bytes:
        """The original message bytes."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Where it came from and why it was refused."""
        ...


class PartitionLag(Protocol):
    """A partition's stored position against its end, as the Kafka adapter reads it."""

    @property
    def partition(self) -> int:
        """The partition."""
        ...

    @property
    def ledger_position(self) -> int:
        """The next offset the ledger will read."""
        ...

    @property
    def end_offset(self) -> int:
        """The end of the partition."""
        ...

    @property
    def lag(self) -> int:
        """Messages not taken yet."""
        ...


class Kafka(Protocol):
    """The Kafka adapter's operations on the configured topics."""

    @property
    def topic(self) -> str:
        """The touchpoint topic."""
        ...

    def dead_letters(self) -> Sequence[Letter]:
        """Every message in the dead-letter topic."""
        ...

    def redrive(self, ledger: Ledger) -> Sequence[Any]:
        """Re-publish dead letters not redriven before; those re-published."""
        ...

    def lag(self, ledger: Ledger) -> Sequence[PartitionLag]:
        """Per partition, the ledger's stored position against the topic's end."""
        ...


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One dead letter: where it came from, why it was refused, when and how big."""

    partition: int
    offset: int
    source: str
    error: str | None
    reason: str | None
    at: str | None
    bytes: int


@dataclass(frozen=True, slots=True)
class LagRow:
    """One partition: the ledger's next offset against the end of the topic."""

    partition: int
    ledger_position: int
    end_offset: int
    lag: int


@dataclass(frozen=True, slots=True)
class PositionRow:
    """The next offset the ledger will read in one partition of a topic."""

    topic: str
    partition: int
    next_offset: int


class KafkaOperations:
    """Lag, dead letters, redrive and stored positions (Kafka opened on first use)."""

    def __init__(
        self, ledger: Callable[[], Ledger], kafka: Callable[[], Kafka], topic: str
    ) -> None:
        self._ledger = ledger  # opened only by what needs it (not the dead-letter list)
        self._kafka = kafka
        self.topic = topic

    def dead_letters(self, limit: int | None = None) -> list[DeadLetterRow]:
        """Dead letters, oldest first (the last ``limit`` when given)."""
        letters = list(self._kafka().dead_letters())
        if limit:
            letters = letters[-limit:]
        return [
            DeadLetterRow(
                partition=d.partition,
                offset=d.offset,
                source=f"{d.headers.get('source.topic')}/{d.headers.get('source.partition')}"
                f"/{d.headers.get('source.offset')}",
                error=d.headers.get("error.class"),
                reason=d.headers.get("error.message"),
                at=d.headers.get("dlq.time"),
                bytes=len(d.value),
            )
            for d in letters
        ]

    def redrive(self) -> int:
        """Re-publish the dead letters not redriven before; how many."""
        return len(self._kafka().redrive(self._ledger()))

    def lag(self) -> list[LagRow]:
        """Per partition: stored position, end offset, lag."""
        return [
            LagRow(r.partition, r.ledger_position, r.end_offset, r.lag)
            for r in self._kafka().lag(self._ledger())
        ]

    def positions(self, topic: str | None = None) -> list[PositionRow]:
        """The stored positions of ``topic`` (the touchpoint topic by default)."""
        source = topic or self.topic
        stored = self._ledger().positions(source)
        return [PositionRow(source, p, o) for p, o in sorted(stored.items())]

    def reset_positions(self, topic: str | None = None) -> int:
        """Forget the stored positions of ``topic``; partitions reset."""
        return self._ledger().reset_positions(topic or self.topic)
