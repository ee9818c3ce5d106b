"""Readers that turn input files into touchpoints, each with its line (or record) number."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, BinaryIO

from crm_ledger.adapters.avro import to_json
from crm_ledger.aggregates import Touchpoint
from crm_ledger.aggregates.touchpoint import ID_NAMESPACE
from crm_ledger.errors import InvalidInput, UnreadableFile

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from crm_ledger.adapters.avro import Codec

CDNOW_SOURCE = "cdnow"
CDNOW_CURRENCY = "USD"


@dataclass(frozen=True, slots=True)
class FileSource:
    """One input file of a known (or guessed) format, readable more than once (the
    import service's ``Source``)."""

    path: Path
    kind: str
    codec: Codec

    @property
    def name(self) -> str:
        """The path, as errors name it."""
        return str(self.path)

    def read(self) -> Iterator[tuple[int, Touchpoint]]:
        """(line number, touchpoint) pairs."""
        if self.kind == "avro":
            return read_avro(self.path, self.codec)
        if self.kind == "cdnow":
            return read_cdnow(self.path)
        return read_jsonl(self.path, self.codec)


def file_source(path: Path, kind: str, codec: Codec) -> FileSource:
    """``path`` as a source; ``auto`` goes by the name (.avro, .jsonl/.ndjson/.json,
    CDNOW*)."""
    if kind == "auto":
        suffix = path.suffix.lower()
        if suffix == ".avro":
            kind = "avro"
        elif suffix in (".jsonl", ".ndjson", ".json"):
            kind = "jsonl"
        elif path.name.upper().startswith("CDNOW"):
            kind = "cdnow"
        else:
            msg = f"{path}: cannot tell the format from the name; pass --kind"
            raise UnreadableFile(msg)
    return FileSource(path, kind, codec)


def write_jsonl(path: Path, touchpoints: Iterable[Touchpoint]) -> None:
    """Write ``touchpoints`` as JSON Lines (the folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for touchpoint in touchpoints:
            f.write(json.dumps(to_json(touchpoint), separators=(",", ":")) + "\n")


def located(path: Path, line: int, error: Exception) -> InvalidInput:
    """An error that names the file and line it came from."""
    return InvalidInput(f"{path}, line {line}: {error}")


def read_jsonl(path: Path, codec: Codec) -> Iterator[tuple[int, Touchpoint]]:
    """Touchpoints from JSON Lines: one event object per line; blank lines are skipped."""
    for number, text in _text_lines(path):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise located(path, number, InvalidInput(f"not valid JSON ({e})")) from None
        except RecursionError:
            msg = "not valid JSON (nested too deeply)"
            raise located(path, number, InvalidInput(msg)) from None
        try:
            yield number, codec.from_json(obj)
        except InvalidInput as e:
            raise located(path, number, e) from None


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The file's lines, numbered from 1, read as UTF-8: a line that is not says so."""
    with _open_bytes(path) as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problem = f"is not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                raise UnreadableFile(f"{path}, line {number}: {problem}") from None


def read_avro(path: Path, codec: Codec) -> Iterator[tuple[int, Touchpoint]]:
    """Touchpoints from an Avro object container file; numbers count records from 1."""
    with _open_bytes(path) as stream:
        try:
            yield from enumerate(codec.read_container(stream), start=1)
        except UnreadableFile as e:
            raise UnreadableFile(f"{path}: {e}") from None


def read_cdnow(path: Path) -> Iterator[tuple[int, Touchpoint]]:
    """OrderPlaced events from a CDNOW transaction log (master or 1/10 sample layout).

    Master rows are ``customer date cds dollars`` (after a header); sample rows are
    ``master_customer sample_customer date cds dollars``. Customers keep their master id, so
    both files describe the same customers, and event ids are derived from the row's content
    (with a counter for identical rows), so importing either file twice, or both, stores
    each purchase once.
    """
    seen: Counter[tuple[str, ...]] = Counter()
    for number, text in _text_lines(path):
        cols = text.split()
        if not cols or cols[0] == "customer_id":
            continue
        try:
            customer, day, cds, dollars = _cdnow_columns(cols)
            row = (customer, day, cds, dollars)
            seen[row] += 1
            yield number, _cdnow_order(row, seen[row])
        except (ValueError, InvalidOperation) as e:
            raise located(path, number, InvalidInput(f"not a CDNOW row ({e})")) from None


def _cdnow_columns(cols: list[str]) -> tuple[str, str, str, str]:
    if len(cols) == 4:
        customer, day, cds, dollars = cols
    elif len(cols) == 5:
        customer, _sample_id, day, cds, dollars = cols
    else:
        msg = f"expected 4 or 5 columns, found {len(cols)}"
        raise ValueError(msg)
    return str(int(customer)), day, cds, dollars


def _cdnow_order(row: tuple[str, str, str, str], occurrence: int) -> Touchpoint:
    customer, day, cds, dollars = row
    cents = Decimal(dollars) * 100
    if cents != cents.to_integral_value():
        msg = f"dollar value {dollars} is not whole cents"
        raise ValueError(msg)
    key = f"cdnow:{customer}:{day}:{cds}:{dollars}:{occurrence}"
    return Touchpoint(
        event_type="OrderPlaced",
        event_id=uuid.uuid5(ID_NAMESPACE, key),
        customer_id=customer,
        occurred_at=datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC),
        source=CDNOW_SOURCE,
        data={
            "order_id": f"{customer}-{day}-{occurrence}",
            "amount_minor": int(cents),
            "currency": CDNOW_CURRENCY,
            "margin_minor": None,
            "items": int(cds),
            "channel": None,
        },
    )


def _open_bytes(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as e:
        raise UnreadableFile(f"{path}: {e.strerror}") from None
