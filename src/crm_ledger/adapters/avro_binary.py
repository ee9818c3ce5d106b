"""Avro binary for the shapes the event schemas use, compiled once per schema.

fastavro's ``schemaless_writer`` walks the schema for every record; at about 20 microseconds
a touchpoint it was a fifth of the Publisher's time. ``compile_writer`` turns a record schema
into one function per field. It writes the bytes fastavro writes (the tests compare them
over every registered schema and a sweep of values), and only what it is sure of: for any
value it does not handle exactly (a wrong type, an out-of-range number, a missing or extra
field, a string that is not UTF-8) it returns None, and the caller asks fastavro, which
stays the judge of what fits a schema and says why not. A schema with a shape it does not
know (a nested record, an array, a union other than null and one primitive) compiles to
None, so those go to fastavro whole.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    Encoder = Callable[[Any], bytes]
    RecordWriter = Callable[[Mapping[str, Any]], bytes | None]

_INT = (-(2**31), 2**31 - 1)
_LONG = (-(2**63), 2**63 - 1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_BYTE = [bytes([n]) for n in range(128)]
# -64..63 zig-zag to one byte; a length (0..63) is the common case of every string.
_SMALL = {n: _ONE_BYTE[(n << 1) ^ (n >> 63)] for n in range(-64, 64)}
_NULL_BRANCH, _VALUE_BRANCH = b"\x00", b"\x02"


class _Unsure(Exception):
    """A value this writer does not encode itself; fastavro decides."""


def compile_writer(schema: Any) -> RecordWriter | None:
    """A function from a record (a mapping with exactly the schema's fields) to its Avro
    binary body, or None when ``schema`` has a shape this module does not write."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    names: dict[str, Encoder] = {}  # named types, usable by later fields
    try:
        fields = [(f["name"], _encoder(f["type"], names)) for f in schema["fields"]]
    except _Unsure:
        return None
    field_names = frozenset(name for name, _ in fields)

    def write(record: Mapping[str, Any]) -> bytes | None:
        if record.keys() != field_names:
            return None
        try:
            return b"".join([encode(record[name]) for name, encode in fields])
        except (_Unsure, UnicodeError):
            return None

    return write


def zigzag(n: int) -> bytes:
    """A long as Avro writes it: zig-zag, then 7 bits a byte, lowest first."""
    if type(n) is not int:
        raise _Unsure
    small = _SMALL.get(n)
    if small is not None:
        return small
    if not _LONG[0] <= n <= _LONG[1]:
        raise _Unsure
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 128:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string(value: Any) -> bytes:
    if type(value) is not str:
        raise _Unsure
    raw = value.encode()
    size = len(raw)
    return (_SMALL[size] if size < 64 else zigzag(size)) + raw


def _int(value: Any) -> bytes:
    if type(value) is not int or not _INT[0] <= value <= _INT[1]:
        raise _Unsure
    return zigzag(value)


def _boolean(value: Any) -> bytes:
    if type(value) is not bool:
        raise _Unsure
    return b"\x01" if value else b"\x00"


def _null(value: Any) -> bytes:
    if value is not None:
        raise _Unsure
    return b""


def _uuid(value: Any) -> bytes:
    # fastavro writes a UUID as its hyphenated text and passes a string through unchanged.
    return _string(str(value) if type(value) is uuid.UUID else value)


def _timestamp_millis(value: Any) -> bytes:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # fastavro reads a naive time in the machine's zone
            raise _Unsure
        try:
            delta = value - _EPOCH
        except TypeError:
            raise _Unsure from None
        value = (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000
    return zigzag(value)


_PRIMITIVES: dict[str, Encoder] = {
    "string": _string,
    "long": zigzag,
    "int": _int,
    "boolean": _boolean,
    "null": _null,
}
_LOGICAL: dict[tuple[str, str], Encoder] = {
    ("string", "uuid"): _uuid,
    ("long", "timestamp-millis"): _timestamp_millis,
}


def _encoder(avro_type: Any, names: dict[str, Encoder]) -> Encoder:
    """The encoder of one field's type; _Unsure for a shape this module does not write."""
    if isinstance(avro_type, str):
        found = _PRIMITIVES.get(avro_type) or names.get(avro_type)
        if found is None:
            raise _Unsure
        return found
    if isinstance(avro_type, list):
        return _nullable(avro_type, names)
    if not isinstance(avro_type, dict):
        raise _Unsure
    kind = avro_type.get("type")
    logical = avro_type.get("logicalType")
    if logical is not None:
        logical_encoder = _LOGICAL.get((str(kind), str(logical)))
        if logical_encoder is None:
            raise _Unsure  # fastavro writes an unknown logical type as its base type; rare
        return logical_encoder
    if kind == "enum":
        encoder = _enum(avro_type["symbols"])
        name = avro_type["name"]
        namespace = avro_type.get("namespace")
        names[name] = encoder
        if namespace and "." not in name:
            names[f"{namespace}.{name}"] = encoder
        return encoder
    if kind == "map":
        return _map(_encoder(avro_type["values"], names))
    if isinstance(kind, str) and kind in _PRIMITIVES and len(avro_type) == 1:
        return _PRIMITIVES[kind]
    raise _Unsure


def _nullable(branches: list[Any], names: dict[str, Encoder]) -> Encoder:
    if len(branches) != 2 or branches[0] != "null" or not isinstance(branches[1], str):
        raise _Unsure
    if branches[1] not in _PRIMITIVES:
        raise _Unsure
    inner = _PRIMITIVES[branches[1]]
    if inner is _string:  # the commonest field type of all, inlined

        def nullable_string(value: Any) -> bytes:
            if value is None:
                return _NULL_BRANCH
            if type(value) is not str:
                raise _Unsure
            raw = value.encode()
            size = len(raw)
            return _VALUE_BRANCH + (_SMALL[size] if size < 64 else zigzag(size)) + raw

        return nullable_string

    def encode(value: Any) -> bytes:
        if value is None:
            return _NULL_BRANCH
        return _VALUE_BRANCH + inner(value)

    return encode


def _enum(symbols: list[str]) -> Encoder:
    index = {symbol: zigzag(i) for i, symbol in enumerate(symbols)}

    def encode(value: Any) -> bytes:
        if type(value) is not str or value not in index:
            raise _Unsure
        return index[value]

    return encode


def _map(values: Encoder) -> Encoder:
    def encode(value: Any) -> bytes:
        if type(value) is not dict:
            raise _Unsure
        if not value:
            return b"\x00"
        parts = [zigzag(len(value))]
        for key, item in value.items():
            parts.append(_string(key))
            parts.append(values(item))
        parts.append(b"\x00")
        return b"".join(parts)

    return encode
