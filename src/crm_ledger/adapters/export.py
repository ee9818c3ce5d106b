"""Files for spreadsheets and notebooks: CSV, JSON Lines and Parquet (pyarrow), written a
batch at a time so memory stays bounded whatever the size of the export."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from crm_ledger.errors import InvalidInput, UnreadableFile

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

#: Column kinds the services name, and their Parquet types.
_ARROW = {
    "text": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "time": pa.timestamp("us", tz="UTC"),
}

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


class ExportFile:
    """One file being written: rows of fixed columns, in batches."""

    def __init__(self, path: Path, columns: Mapping[str, str]) -> None:
        kind = FORMATS.get(path.suffix.lower())
        if kind is None:
            msg = f"{path}: the name must end in .csv, .jsonl or .parquet"
            raise InvalidInput(msg)
        self.path, self.kind, self.columns = path, kind, dict(columns)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "parquet":
                fields = [pa.field(n, _ARROW[t]) for n, t in self.columns.items()]
                self.schema = pa.schema(fields)
                self._parquet = pq.ParquetWriter(path, self.schema, compression="zstd")
            else:
                self._file = path.open("w", encoding="utf-8", newline="")
                if kind == "csv":
                    self._csv = csv.DictWriter(self._file, fieldnames=list(self.columns))
                    self._csv.writeheader()
        except OSError as e:
            raise UnreadableFile(f"{path}: cannot write ({e.strerror})") from None
        self.rows = 0

    def write(self, batch: Sequence[Mapping[str, Any]]) -> None:
        """Append rows (dicts with every column)."""
        if not batch:
            return
        if self.kind == "parquet":
            data = {n: [row[n] for row in batch] for n in self.columns}
            self._parquet.write_table(pa.Table.from_pydict(data, schema=self.schema))
        elif self.kind == "csv":
            self._csv.writerows({n: _text(row[n]) for n in self.columns} for row in batch)
        else:
            for row in batch:
                line = {n: _json(row[n]) for n in self.columns}
                self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self.rows += len(batch)

    def close(self) -> None:
        """Finish the file (Parquet writes its footer here)."""
        if self.kind == "parquet":
            self._parquet.close()
        else:
            self._file.close()


def _text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return "" if value is None else value


def _json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
