"""The event contract on the wire: a file-backed schema registry, the Confluent wire format
(magic byte 0, 4-byte big-endian schema id, Avro binary body) and JSON <-> Touchpoint
conversion with errors that name the field and the problem. The only importer of fastavro.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, TypeVar

import fastavro
from fastavro.validation import ValidationError, validate

from crm_ledger.adapters.avro_binary import compile_split_reader, compile_split_writer
from crm_ledger.aggregates import CATALOGUE, Touchpoint
from crm_ledger.aggregates.touchpoint import ENVELOPE_FIELDS
from crm_ledger.errors import (
    IncompatibleSchema,
    InvalidEvent,
    SchemaError,
    UndecodableMessage,
    UnreadableFile,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path

    from crm_ledger.adapters.avro_binary import SplitReader, SplitWriter

MAGIC = 0
HEADER = struct.Struct(">bI")
NAMESPACE = "crm_ledger.events"
REGISTRY_FILE = "registry.json"
DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024
_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One registered version of one event type's schema."""

    subject: str
    version: int
    schema_id: int
    schema: dict[str, Any]

    @property
    def full_name(self) -> str:
        """The record's full name: the subject a record-name-strategy client asks for."""
        namespace = self.schema.get("namespace")
        return f"{namespace}.{self.subject}" if namespace else self.subject


class SchemaRegistry:
    """Schemas by id and by subject, kept in ``schemas/registry.json`` beside the .avsc files.

    Every version of every subject is kept; an id is never reused. The .avsc file is the
    latest schema of its subject; ``register`` adds it as a new version when it changed and
    can still read everything written before.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._path = directory / REGISTRY_FILE
        try:
            raw = json.loads(self._path.read_text())
        except FileNotFoundError:
            raw = {"next_id": 1, "subjects": {}}
        except (OSError, ValueError) as e:
            msg = f"{self._path}: cannot read the schema registry: {e}"
            raise SchemaError(msg) from None
        self._next_id: int = raw["next_id"]
        self._versions: dict[str, list[SchemaVersion]] = {
            subject: [SchemaVersion(subject, v["version"], v["id"], v["schema"]) for v in versions]
            for subject, versions in raw["subjects"].items()
        }
        self._by_id = {v.schema_id: v for vs in self._versions.values() for v in vs}
        self._parsed: dict[int, Any] = {}
        self._writers: dict[int, SplitWriter | None] = {}
        self._readers: dict[int, SplitReader | None] = {}

    def subjects(self) -> list[str]:
        """Every registered event type."""
        return sorted(self._versions)

    def versions(self, subject: str) -> list[SchemaVersion]:
        """Every registered version of ``subject``, oldest first."""
        return list(self._versions.get(subject, []))

    def latest(self, subject: str) -> SchemaVersion:
        """The newest registered version of ``subject``."""
        versions = self._versions.get(subject)
        if not versions:
            raise InvalidEvent("type", f"unknown event type {subject!r}")
        return versions[-1]

    def by_id(self, schema_id: int) -> SchemaVersion:
        """The version registered under ``schema_id``."""
        try:
            return self._by_id[schema_id]
        except KeyError:
            msg = f"schema id {schema_id} is not in the registry"
            raise UndecodableMessage(msg) from None

    def subject_of(self, name: str) -> str | None:
        """Our subject for ``name``: an event type, or its record's full name (what clients
        using the record-name subject strategy ask for, e.g. crm_ledger.events.OrderPlaced)."""
        if name in self._versions:
            return name
        namespace, _, short = name.rpartition(".")
        versions = self._versions.get(short)
        if versions and versions[-1].schema.get("namespace") == namespace:
            return short
        return None

    def matching(self, schema: Any, subject: str | None = None) -> SchemaVersion | None:
        """The registered version (of ``subject``, or of any) that writes the same bytes as
        ``schema``: the same Parsing Canonical Form, which fixes the binary encoding."""
        wanted = canonical_form(schema)
        subjects = [subject] if subject else list(self._versions)
        for name in subjects:
            for version in self._versions.get(name, []):
                if canonical_form(version.schema) == wanted:
                    return version
        return None

    def parsed(self, version: SchemaVersion) -> Any:
        """fastavro's parsed form of a version, cached."""
        parsed = self._parsed.get(version.schema_id)
        if parsed is None:
            parsed = fastavro.parse_schema(version.schema)
            self._parsed[version.schema_id] = parsed
        return parsed

    def writer(self, version: SchemaVersion) -> SplitWriter | None:
        """The compiled Avro writer of a version (``avro_binary``) from a touchpoint's envelope
        (``ENVELOPE_FIELDS``' values, in order) and data, or None, cached."""
        return _compiled(self._writers, compile_split_writer, version, ENVELOPE_FIELDS)

    def reader(self, version: SchemaVersion) -> SplitReader | None:
        """The compiled Avro reader of a version (``avro_binary``) into a touchpoint's envelope
        (``ENVELOPE_FIELDS``' values, in order) and data, or None, cached."""
        return _compiled(self._readers, compile_split_reader, version, ENVELOPE_FIELDS)

    def schema_files(self) -> dict[str, dict[str, Any]]:
        """Subject -> schema, from the .avsc files (the latest intended schemas)."""
        files: dict[str, dict[str, Any]] = {}
        for path in sorted(self.directory.glob("*.avsc")):
            try:
                schema = json.loads(path.read_text())
                fastavro.parse_schema(schema)
            except (OSError, ValueError, fastavro.schema.SchemaParseException) as e:
                msg = f"{path}: not a valid Avro schema: {e}"
                raise SchemaError(msg) from None
            if schema.get("name") != path.stem:
                msg = f"{path}: schema name {schema.get('name')!r} does not match the file name"
                raise SchemaError(msg)
            files[path.stem] = schema
        return files

    def check(self) -> list[str]:
        """Problems: any .avsc that cannot read data written with an earlier version."""
        problems = []
        for subject, schema in self.schema_files().items():
            for old in self.versions(subject):
                for problem in compatibility_problems(schema, old.schema):
                    problems.append(f"{subject}: cannot read version {old.version}: {problem}")
        return problems

    def pending(self) -> list[str]:
        """Subjects whose .avsc differs from the latest registered version."""
        files = self.schema_files()
        return [
            s
            for s, schema in files.items()
            if not self._versions.get(s) or self._versions[s][-1].schema != schema
        ]

    def register(self) -> list[SchemaVersion]:
        """Register every changed .avsc as a new version, refusing incompatible ones."""
        problems = self.check()
        if problems:
            raise IncompatibleSchema(problems)
        files = self.schema_files()
        added = []
        for subject in self.pending():
            versions = self._versions.setdefault(subject, [])
            new = SchemaVersion(subject, len(versions) + 1, self._next_id, files[subject])
            self._next_id += 1
            versions.append(new)
            self._by_id[new.schema_id] = new
            added.append(new)
        if added:
            self._save()
        return added

    def _save(self) -> None:
        raw = {
            "note": "Managed by `crm-ledger schemas register`; ids are never reused.",
            "next_id": self._next_id,
            "subjects": {
                s: [{"version": v.version, "id": v.schema_id, "schema": v.schema} for v in vs]
                for s, vs in sorted(self._versions.items())
            },
        }
        self._path.write_text(json.dumps(raw, indent=1) + "\n")


def _compiled(
    cache: dict[int, T | None],
    compile_schema: Callable[[Any, Sequence[str]], T | None],
    version: SchemaVersion,
    head: Sequence[str],
) -> T | None:
    if version.schema_id not in cache:
        cache[version.schema_id] = compile_schema(version.schema, head)
    return cache[version.schema_id]


class Codec:
    """Encodes and decodes touchpoints as Confluent-framed Avro against a registry."""

    def __init__(
        self, registry: SchemaRegistry, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self.registry = registry
        self.max_message_bytes = max_message_bytes

    def encode(self, tp: Touchpoint) -> bytes:
        """The wire bytes of ``tp`` under its type's latest schema; InvalidEvent if they are
        over ``max_message_bytes``, which ``decode`` (so the ingest worker) would refuse."""
        version = self.registry.latest(tp.event_type)
        writer = self.registry.writer(version)
        head = (tp.event_id, tp.customer_id, tp.occurred_at, tp.source, tp.actor, tp.correlation_id)
        body = writer(head, tp.data) if writer is not None else None  # head: ENVELOPE_FIELDS
        message = HEADER.pack(MAGIC, version.schema_id) + body if body is not None else None
        if message is None:
            message = self._fastavro_write(tp, version)
        if len(message) > self.max_message_bytes:
            size, limit = len(message), self.max_message_bytes
            msg = f"is {size:,} bytes encoded, over the {limit:,}-byte limit of a message"
            raise InvalidEvent("record", msg, event_type=tp.event_type)
        return message

    def _fastavro_write(self, tp: Touchpoint, version: SchemaVersion) -> bytes:
        record = to_record(tp)
        # A shape or value the compiled writer leaves to fastavro, which also says what is wrong.
        parsed = self.registry.parsed(version)
        buffer = io.BytesIO()
        buffer.write(HEADER.pack(MAGIC, version.schema_id))
        try:
            fastavro.schemaless_writer(buffer, parsed, record, strict=True)
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as e:
            # The strict writer refuses what breaks the schema; validate() then says where.
            _validate(record, parsed, tp.event_type)
            raise InvalidEvent("record", str(e), event_type=tp.event_type) from None
        return buffer.getvalue()

    def decode(self, message: bytes) -> Touchpoint:
        """The touchpoint in ``message``, read with the writer's schema into the latest one."""
        if len(message) > self.max_message_bytes:
            msg = f"message is {len(message)} bytes, over the {self.max_message_bytes} limit"
            raise UndecodableMessage(msg)
        if len(message) < HEADER.size:
            msg = f"message is {len(message)} bytes; a framed event has at least {HEADER.size}"
            raise UndecodableMessage(msg)
        magic, schema_id = HEADER.unpack_from(message)
        if magic != MAGIC:
            msg = f"magic byte is {magic}, expected {MAGIC} (Confluent wire format)"
            raise UndecodableMessage(msg)
        writer = self.registry.by_id(schema_id)
        reader = self.registry.latest(writer.subject)
        read = self.registry.reader(writer) if writer is reader else None
        parts = read(message, HEADER.size) if read is not None else None
        if parts is not None and type(parts[0][0]) is uuid.UUID:  # the common case
            (event_id, customer_id, occurred_at, source, actor, correlation_id), data, end = parts
            self._check_end(message, end, writer)
            return Touchpoint(
                writer.subject,
                event_id,
                customer_id,
                occurred_at,
                source,
                actor,
                correlation_id,
                data,
            )
        # Another schema to resolve, or bytes only fastavro may judge.
        record, end = self._fastavro_read(message, writer, reader)
        self._check_end(message, end, writer)
        return from_record(writer.subject, record)

    @staticmethod
    def _check_end(message: bytes, end: int, writer: SchemaVersion) -> None:
        rest = len(message) - end
        if rest:
            subject, schema_id = writer.subject, writer.schema_id
            msg = f"{subject} (schema id {schema_id}) has {rest} bytes after the record"
            raise UndecodableMessage(msg)

    def _fastavro_read(
        self, message: bytes, writer: SchemaVersion, reader: SchemaVersion
    ) -> tuple[Any, int]:
        body = io.BytesIO(message)
        body.seek(HEADER.size)
        try:
            record = fastavro.schemaless_reader(
                body, self.registry.parsed(writer), self.registry.parsed(reader)
            )
        except Exception as e:  # fastavro raises EOFError, ValueError, UnicodeError, ...
            msg = f"{writer.subject} (schema id {writer.schema_id}) cannot be decoded: {e!r}"
            raise UndecodableMessage(msg) from None
        return record, body.tell()

    def from_json(self, obj: object) -> Touchpoint:
        """A touchpoint from a JSON object ``{"type": ..., envelope..., fields...}``."""
        if not isinstance(obj, dict):
            raise InvalidEvent("type", "each event must be a JSON object")
        event_type = obj.get("type")
        if not isinstance(event_type, str) or event_type not in CATALOGUE:
            known = ", ".join(sorted(CATALOGUE))
            raise InvalidEvent("type", f"must be one of {known}; got {event_type!r}")
        schema = self.registry.latest(event_type).schema
        record = _json_record(schema, {k: v for k, v in obj.items() if k != "type"})
        return from_record(event_type, record)

    def read_container(self, stream: IO[bytes]) -> Iterator[Touchpoint]:
        """Touchpoints from an Avro object container file of one catalogue type."""
        try:
            reader = fastavro.reader(stream)
        except Exception as e:  # not a container: fastavro raises ValueError and others
            msg = f"not an Avro container file: {e}"
            raise UnreadableFile(msg) from None
        schema: Any = reader.writer_schema
        name = str(schema.get("name", "") if isinstance(schema, dict) else "").rsplit(".", 1)[-1]
        if name not in CATALOGUE:
            msg = f"the file's schema {name!r} is not an event type of the catalogue"
            raise UnreadableFile(msg)
        record: Any
        for record in reader:
            yield from_record(name, record)


def to_record(tp: Touchpoint) -> dict[str, Any]:
    """The Avro record (envelope then type fields) of a touchpoint."""
    return {
        "event_id": tp.event_id,
        "customer_id": tp.customer_id,
        "occurred_at": tp.occurred_at,
        "source": tp.source,
        "actor": tp.actor,
        "correlation_id": tp.correlation_id,
        **tp.data,
    }


def from_record(event_type: str, record: Mapping[str, Any]) -> Touchpoint:
    """A touchpoint from a decoded Avro record of ``event_type``."""
    event_id = record["event_id"]
    return Touchpoint(
        event_type=event_type,
        event_id=event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(event_id),
        customer_id=record["customer_id"],
        occurred_at=record["occurred_at"],
        source=record["source"],
        actor=record.get("actor"),
        correlation_id=record.get("correlation_id"),
        data={k: v for k, v in record.items() if k not in ENVELOPE_FIELDS},
    )


def to_json(tp: Touchpoint) -> dict[str, Any]:
    """The JSON form of a touchpoint (the inverse of ``Codec.from_json``)."""
    out: dict[str, Any] = {"type": tp.event_type}
    for key, value in to_record(tp).items():
        out[key] = _jsonable(value)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _validate(record: dict[str, Any], parsed: Any, event_type: str) -> None:
    try:
        validate(record, parsed, raise_errors=True, strict=True)
    except ValidationError as e:
        first = e.errors[0]
        name = str(getattr(first, "field", "") or "").rsplit(".", 1)[-1] or "record"
        datum = getattr(first, "datum", None)
        problem = f"{datum!r} does not fit Avro type {getattr(first, 'schema', '?')}"
        raise InvalidEvent(name, problem, event_type=event_type) from None


# JSON -> Avro record, with the field named in every error.


def _json_record(schema: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    event_type = schema["name"]
    names = {f["name"] for f in schema["fields"]}
    for key in obj:
        if key not in names:
            raise InvalidEvent(key, "is not a field of this event type", event_type=event_type)
    record = {}
    for f in schema["fields"]:
        name = f["name"]
        if name in obj:
            try:
                record[name] = _json_value(f["type"], obj[name])
            except ValueError as e:
                raise InvalidEvent(name, str(e), event_type=event_type) from None
        elif "default" in f:
            record[name] = f["default"]
        else:
            raise InvalidEvent(name, "is required", event_type=event_type)
    return record


def _json_value(avro_type: Any, value: Any) -> Any:  # noqa: PLR0912 - one branch per Avro type
    if isinstance(avro_type, list):
        if value is None and "null" in avro_type:
            return None
        branches = [t for t in avro_type if t != "null"]
        if value is None:
            raise ValueError("must not be null")
        return _json_value(branches[0], value)
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        kind = avro_type["type"]
        if logical == "timestamp-millis":
            return _timestamp(value)
        if logical == "uuid":
            return _uuid(value)
        if kind == "enum":
            if value not in avro_type["symbols"]:
                raise ValueError(f"must be one of {', '.join(avro_type['symbols'])}; got {value!r}")
            return value
        if kind == "map":
            if not isinstance(value, dict):
                raise ValueError("must be an object")
            return {str(k): _json_value(avro_type["values"], v) for k, v in value.items()}
        if kind == "array":
            if not isinstance(value, list):
                raise ValueError("must be a list")
            return [_json_value(avro_type["items"], v) for v in value]
        return _json_value(kind, value)
    if value is None:
        raise ValueError("must not be null")
    if avro_type == "string":
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {value!r}")
        return value
    if avro_type in ("int", "long"):
        return _integer(value, _INT32 if avro_type == "int" else _INT64)
    if avro_type == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if avro_type in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, got {value!r}")
        return float(value)
    raise ValueError(f"has Avro type {avro_type!r}, which JSON input does not support")


def _integer(value: Any, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float):
            raise ValueError(f"must be a whole number (minor units), got {value!r}")
        raise ValueError(f"must be a whole number, got {value!r}")
    if not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{value} is out of range")
    return value


def _timestamp(value: Any) -> datetime:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"{value} epoch milliseconds is outside the years 1 to 9999") from None
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO 8601 time or epoch milliseconds, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"is not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"needs a time zone, e.g. {value}Z")
    # The wire carries milliseconds; keep exactly what the wire can carry.
    parsed = parsed.astimezone(UTC)
    return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)


def _uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ValueError(f"is not a UUID: {value!r}") from None


def canonical_form(schema: Any) -> str:
    """The schema's Parsing Canonical Form (Avro specification); SchemaError if it is not a
    valid Avro schema."""
    try:
        return str(fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(schema)))
    except (fastavro.schema.SchemaParseException, ValueError, TypeError, KeyError) as e:
        raise SchemaError(f"not a valid Avro schema: {e}") from None


# Schema resolution (Avro specification, "Schema Resolution"): can ``reader`` read ``writer``?


def compatibility_problems(reader: Any, writer: Any) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty if it can)."""
    return _Resolver().problems(reader, writer, "")


class _Resolver:
    def __init__(self) -> None:
        self.reader_names: dict[str, Any] = {}
        self.writer_names: dict[str, Any] = {}

    def problems(self, reader: Any, writer: Any, path: str) -> list[str]:
        reader = self._named(reader, self.reader_names)
        writer = self._named(writer, self.writer_names)
        if isinstance(writer, list):
            return [p for i, w in enumerate(writer) for p in self.problems(reader, w, path)]
        if isinstance(reader, list):
            if any(not self.problems(r, writer, path) for r in reader):
                return []
            return [f"{path or 'record'}: no branch of {_kind(reader)} reads {_kind(writer)}"]
        r_kind, w_kind = _kind(reader), _kind(writer)
        if r_kind not in _PROMOTIONS.get(w_kind, {w_kind}):
            return [f"{path or 'record'}: type changed from {w_kind} to {r_kind}"]
        if r_kind == "record":
            return self._record(reader, writer, path)
        if r_kind == "enum":
            missing = set(writer["symbols"]) - set(reader["symbols"])
            if missing and "default" not in reader:
                return [f"{path}: enum lost symbols {sorted(missing)} and has no default"]
        if r_kind == "array":
            return self.problems(reader["items"], writer["items"], f"{path}[]")
        if r_kind == "map":
            return self.problems(reader["values"], writer["values"], f"{path}{{}}")
        return []

    def _record(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[str]:
        if reader["name"].rsplit(".", 1)[-1] != writer["name"].rsplit(".", 1)[-1]:
            return [f"{path or 'record'}: record renamed {writer['name']} -> {reader['name']}"]
        written = {f["name"]: f for f in writer["fields"]}
        problems = []
        for f in reader["fields"]:
            where = f"{path}.{f['name']}" if path else f["name"]
            if f["name"] in written:
                problems += self.problems(f["type"], written[f["name"]]["type"], where)
            elif "default" not in f:
                problems.append(f"field {where} was added without a default")
        return problems

    def _named(self, schema: Any, names: dict[str, Any]) -> Any:
        if isinstance(schema, str) and schema in names:
            return names[schema]
        if isinstance(schema, dict) and "name" in schema:
            names[schema["name"]] = schema
            names[schema["name"].rsplit(".", 1)[-1]] = schema
        return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return _kind(schema["type"]) if isinstance(schema["type"], dict | list) else schema["type"]
    return str(schema)
