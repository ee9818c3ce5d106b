"""Imports: every file checked in full before anything is written, then written in batches;
events already in the ledger are skipped, so an import can be rerun safely."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Protocol

from crm_ledger.errors import InvalidInput

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from crm_ledger.aggregates import Touchpoint
    from crm_ledger.application import Ledger


class Source(Protocol):
    """A file of touchpoints that can be read more than once, numbered by line."""

    @property
    def name(self) -> str:
        """How errors name the source (its path)."""
        ...

    def read(self) -> Iterator[tuple[int, Touchpoint]]:
        """(line number, touchpoint) pairs, raising InvalidInput at the first bad line."""
        ...


@dataclass(slots=True)
class ImportReport:
    """What an import did, and each event the ledger's rules refused (by file and line)."""

    files: int = 0
    read: int = 0
    recorded: int = 0
    duplicates: int = 0
    rejected: int = 0
    problems: list[str] = field(default_factory=list)


class Imports:
    """The two-pass import over one ledger."""

    def __init__(self, ledger: Ledger, batch_size: int) -> None:
        self.ledger = ledger
        self.batch_size = batch_size

    def check(self, source: Source) -> int:
        """Check every event of ``source`` against the ledger's rules; the number of events.
        The first bad one raises InvalidInput naming the source and line."""
        count = 0
        for line, touchpoint in source.read():
            try:
                self.ledger.check(touchpoint)
            except InvalidInput as e:
                raise InvalidInput(f"{source.name}, line {line}: {e}") from None
            count += 1
        return count

    def run(
        self,
        sources: Sequence[Source],
        *,
        batch_size: int | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> ImportReport:
        """Check every source, then write them in order, ``batch_size`` events a transaction."""
        totals = {s.name: self.check(s) for s in sources}
        report = ImportReport(files=len(sources))
        size = batch_size or self.batch_size
        for source in sources:
            done = 0
            for batch in _batches(source.read(), size):
                result = self.ledger.record_many([t for _, t in batch])
                report.recorded += result.recorded
                report.duplicates += result.duplicates
                report.rejected += len(result.rejected)
                report.problems += [
                    f"{source.name}, line {batch[r.index][0]}: {r.error}" for r in result.rejected
                ]
                done += len(batch)
                if progress is not None:
                    progress(source.name, done, totals[source.name])
            report.read += totals[source.name]
        return report


def _batches(
    items: Iterator[tuple[int, Touchpoint]], size: int
) -> Iterator[list[tuple[int, Touchpoint]]]:
    while batch := list(islice(items, size)):
        yield batch


__all__ = ["ImportReport", "Imports", "Source"]
