"""What a projection is: tables whose rows are built from commutative contributions.

A projection turns each log record into small row *contributions*. Every column of a keyed
table has a merge rule (sum, min, max, or last non-null value), so contributions to the same
row combine the same way in memory (within a batch, or for one customer's time travel) and in
SQL (an upsert per row per batch). Sums, minima and maxima do not depend on how records are
batched nor on the order they arrive in; "last" follows the log's order, as the aggregates do.
Append-only tables (the timeline) take one row per record, given as a tuple of the table's
column values in declaration order (the bulk of every replay, so no dict per row).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable

    from crm_ledger.application import LogRecord


class Rule(Enum):
    """How a column combines an existing value with a contribution."""

    KEY = "key"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    LAST = "last"  # the latest non-null contribution, in log order


@dataclass(frozen=True, slots=True)
class Column:
    """A column: its name, its type (``int``, ``text`` or ``float``) and its merge rule."""

    name: str
    type: str
    rule: Rule = Rule.LAST


@dataclass(frozen=True, slots=True)
class Table:
    """A read-model table: keyed rows built by merging, or append-only rows."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    append_only: bool = False
    indexes: tuple[tuple[str, ...], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every column name, key first, in declaration order."""
        return tuple(c.name for c in self.columns)


class Projection(Protocol):
    """A read model: its tables and the contributions each log record makes to them."""

    name: str
    tables: tuple[Table, ...]
    #: The record kinds it reads (None: all); the runtime passes it no others.
    kinds: frozenset[str] | None

    def contribute(self, record: LogRecord) -> Iterable[tuple[str, Any]]:
        """(table name, row) pairs for ``record``: a dict contribution for a keyed table, a
        tuple of every column for an append-only one; none for records it ignores."""
        ...


class Changes:
    """Contributions of many records, combined per row: what one batch writes."""

    def __init__(self, tables: Iterable[Table]) -> None:
        self.tables = {t.name: t for t in tables}
        self.appended: dict[str, list[tuple[Any, ...]]] = {
            t.name: [] for t in self.tables.values() if t.append_only
        }
        self.merged: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        self._rules = {t.name: _merge_rules(t) for t in self.tables.values()}

    def add(self, table_name: str, row: Any) -> None:
        """Take one contribution."""
        table = self.tables[table_name]
        if table.append_only:
            self.appended[table_name].append(row)
            return
        rows = self.merged.setdefault(table_name, {})
        key = tuple(row[k] for k in table.key)
        known = rows.get(key)
        if known is None:
            rows[key] = complete(table, row)
        else:
            combine(self._rules[table_name], known, row)

    def add_all(self, projection: Projection, records: Iterable[LogRecord]) -> None:
        """Take every contribution ``projection`` makes for ``records`` (the replay loop)."""
        add = self.add
        appended = self.appended
        contribute = projection.contribute
        kinds = projection.kinds
        if kinds is not None:
            records = [r for r in records if r.kind in kinds]
        prepare = getattr(projection, "prepare", None)  # optional: see CustomerSearch
        if prepare is not None:
            records = list(records)
            prepare(records)
        for record in records:
            for table_name, row in contribute(record):
                if type(row) is tuple:  # an append-only table's row
                    appended[table_name].append(row)
                else:
                    add(table_name, row)

    @property
    def empty(self) -> bool:
        """Whether no record contributed a row."""
        return not any(self.appended.values()) and not any(self.merged.values())

    def rows(self, table_name: str) -> list[dict[str, Any]]:
        """The combined rows of one table, as dicts."""
        table = self.tables[table_name]
        if table.append_only:
            names = table.names
            return [dict(zip(names, row, strict=True)) for row in self.appended.get(table_name, ())]
        return list(self.merged.get(table_name, {}).values())

    def tuples(self, table_name: str) -> list[tuple[Any, ...]]:
        """The appended rows of an append-only table, as column tuples."""
        return self.appended.get(table_name, [])


def complete(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with every column present: sums default to 0, the rest to None."""
    return {c.name: row.get(c.name, 0 if c.rule is Rule.SUM else None) for c in table.columns}


def combine(rules: list[tuple[str, Rule]], known: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge contribution ``new`` into row ``known`` in place, column by column."""
    for name, rule in rules:
        value = new.get(name)
        if value is None:
            continue
        old = known[name]
        if old is None:
            known[name] = value
        elif rule is Rule.SUM:
            known[name] = old + value
        elif rule is Rule.MIN:
            if value < old:
                known[name] = value
        elif rule is Rule.MAX:
            if value > old:
                known[name] = value
        else:
            known[name] = value


def _merge_rules(table: Table) -> list[tuple[str, Rule]]:
    return [(c.name, c.rule) for c in table.columns if c.rule is not Rule.KEY]


def merge_rows(table: Table, rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """Rows of ``table`` combined into one (to roll up several keys), or None if none."""
    rules = _merge_rules(table)
    result: dict[str, Any] | None = None
    for row in rows:
        if result is None:
            result = dict(row)
        else:
            combine(rules, result, row)
    return result


def project(projections: Iterable[Projection], records: Iterable[LogRecord]) -> Changes:
    """Every table of ``projections`` built in memory from ``records`` (one customer's
    history, for time travel), exactly as a replay into SQL would build it."""
    chosen = list(projections)
    changes = Changes(t for p in chosen for t in p.tables)
    records = list(records)
    for projection in chosen:
        changes.add_all(projection, records)
    return changes


def counts_at(record: LogRecord, *, as_of: int | None, valid_at: int | None) -> bool:
    """Whether ``record`` was recorded by ``as_of`` and occurred by ``valid_at`` (µs; None:
    no limit). The ledger's bookkeeping has no business time and counts once recorded."""
    if as_of is not None and record.recorded > as_of:
        return False
    return valid_at is None or record.occurred is None or record.occurred <= valid_at


# Times in read models: whole microseconds since 1970-01-01 UTC (sortable, dialect-free).

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
WEEK_MICROS = 7 * 86_400 * 1_000_000
#: 1970-01-01 was a Thursday; weeks start on Monday.
_MONDAY_OFFSET = 3 * 86_400 * 1_000_000


def micros(moment: datetime) -> int:
    """``moment`` as microseconds since the epoch."""
    return (moment - EPOCH) // MICROSECOND


def moment(value: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime."""
    return EPOCH + value * MICROSECOND


def week_of(value: int) -> int:
    """The Monday-based week number of a time in microseconds."""
    return (value + _MONDAY_OFFSET) // WEEK_MICROS


def week_start(week: int) -> datetime:
    """The Monday 00:00 UTC that starts ``week``."""
    return moment(week * WEEK_MICROS - _MONDAY_OFFSET)
