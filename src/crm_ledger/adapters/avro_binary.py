"""Avro binary for the shapes the event schemas use, compiled once per schema: a writer and a
reader.

fastavro's ``schemaless_writer`` walks the schema for every record; at about 20 microseconds
a touchpoint it was a fifth of the Publisher's time. ``compile_writer`` turns a record schema
into one function per field. It writes the bytes fastavro writes (the tests compare them
over every registered schema and a sweep of values), and only what it is sure of: for any
value it does not handle exactly (a wrong type, an out-of-range number, a missing or extra
field, a string that is not UTF-8) it returns None, and the caller asks fastavro, which
stays the judge of what fits a schema and says why not. A schema with a shape it does not
know (a nested record, an array, a union other than null and one primitive) compiles to
None, so those go to fastavro whole.

``compile_reader`` is the same for reading a message written with the schema it reads into
(the common case: no schema resolution). It returns the record fastavro's
``schemaless_reader`` returns and where it stopped, or None for anything it is not sure of
(bytes past the end, a varint over 64 bits, a negative length or map block, an index out of
range, text that is not UTF-8, a time out of range): fastavro then reads the message again and
says what is wrong. The tests hold it to that over arbitrary and mutated bytes.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    Encoder = Callable[[Any], bytes]
    RecordWriter = Callable[[Mapping[str, Any]], bytes | None]
    SplitWriter = Callable[[Sequence[Any], Mapping[str, Any]], bytes | None]
    Decoder = Callable[[bytes, int], tuple[Any, int]]
    RecordReader = Callable[[bytes, int], tuple[dict[str, Any], int] | None]
    SplitReader = Callable[[bytes, int], tuple[tuple[Any, ...], dict[str, Any], int] | None]

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
    split = compile_split_writer(schema, ())
    if split is None:
        return None

    def write(record: Mapping[str, Any]) -> bytes | None:
        return split((), record)

    return write


def compile_split_writer(schema: Any, head: Sequence[str]) -> SplitWriter | None:
    """A function from a record given in two parts, the values of the ``head`` fields (in
    that order) and a mapping with exactly the schema's other fields, to its Avro binary
    body; or None when ``schema`` has a shape this module does not write or lacks a ``head``
    field. A touchpoint's envelope is its attributes and its type's fields a dict: written
    from the two, it needs no merged record (a third of the encoding's time).

    The function is generated once per schema as one expression over its fields, with no
    loop: each field's encoder and name are bound by the namespace, never spelt in the code.
    """
    shapes = field_shapes(schema)
    if shapes is None or not set(head) <= {name for name, _ in shapes}:
        return None
    namespace: dict[str, Any] = {"_Unsure": _Unsure}
    calls = []
    for i, (name, shape) in enumerate(shapes):
        namespace[f"e{i}"], namespace[f"k{i}"] = _build(shape, _WRITING), name
        calls.append(f"e{i}(head[{head.index(name)}])" if name in head else f"e{i}(rest[k{i}])")
    # Every name read (else KeyError) and as many keys as names: exactly the names, at a
    # tenth of the cost of comparing the key sets.
    namespace["rest_size"] = len({name for name, _ in shapes if name not in head})
    source = (
        "def write(head, rest):\n"
        "    if len(rest) != rest_size:\n"
        "        return None\n"
        "    try:\n"
        f"        return b''.join(({''.join(call + ', ' for call in calls)}))\n"
        "    except (_Unsure, UnicodeError, KeyError):\n"
        "        return None\n"
    )
    exec(source, namespace)  # names and encoders come from the namespace, never the source
    write: SplitWriter = namespace["write"]
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
    "uuid": _uuid,
    "timestamp-millis": _timestamp_millis,
}


# The shapes both directions handle: a primitive or logical type's name, or ("nullable",
# primitive), ("enum", symbols), ("map", values' shape).
Shape = str | tuple[str, Any]
_BASE_TYPES = frozenset({"string", "long", "int", "boolean", "null"})
_LOGICAL_TYPES = {("string", "uuid"): "uuid", ("long", "timestamp-millis"): "timestamp-millis"}


def field_shapes(schema: Any) -> list[tuple[str, Shape]] | None:
    """Each field's name and shape, or None when a field has a shape this module neither
    writes nor reads (or ``schema`` is not a record)."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    names: dict[str, Shape] = {}  # named types, usable by later fields
    try:
        return [(f["name"], _shape(f["type"], names)) for f in schema["fields"]]
    except _Unsure:
        return None


def _shape(avro_type: Any, names: dict[str, Shape]) -> Shape:
    if isinstance(avro_type, str):
        found = avro_type if avro_type in _BASE_TYPES else names.get(avro_type)
        if found is None:
            raise _Unsure
        return found
    if isinstance(avro_type, list):
        if len(avro_type) != 2 or avro_type[0] != "null" or not _is_base(avro_type[1]):
            raise _Unsure
        return ("nullable", avro_type[1])
    if not isinstance(avro_type, dict):
        raise _Unsure
    kind, logical = avro_type.get("type"), avro_type.get("logicalType")
    if logical is not None:
        logical_shape = _LOGICAL_TYPES.get((str(kind), str(logical)))
        if logical_shape is None:  # fastavro writes an unknown one as its base type; rare
            raise _Unsure
        return logical_shape
    if kind == "enum":
        shape = ("enum", tuple(avro_type["symbols"]))
        name, namespace = avro_type["name"], avro_type.get("namespace")
        names[name] = shape
        if namespace and "." not in name:
            names[f"{namespace}.{name}"] = shape
        return shape
    if kind == "map":
        return ("map", _shape(avro_type["values"], names))
    if _is_base(kind) and len(avro_type) == 1:
        return str(kind)
    raise _Unsure


def _is_base(avro_type: Any) -> bool:
    return isinstance(avro_type, str) and avro_type in _BASE_TYPES


class _Kit(NamedTuple):
    """One direction's functions for each shape: writing or reading."""

    primitives: Mapping[str, Any]
    enum: Callable[[Sequence[str]], Any]
    map: Callable[[Any], Any]
    nullable: Callable[[Any], Any]


def _build(shape: Shape, kit: _Kit) -> Any:
    """The encoder or decoder (as ``kit`` says) of one field's shape."""
    if isinstance(shape, str):
        return kit.primitives[shape]
    kind, argument = shape
    if kind == "enum":
        return kit.enum(argument)
    if kind == "map":
        return kit.map(_build(argument, kit))
    return kit.nullable(kit.primitives[argument])


def _nullable(inner: Encoder) -> Encoder:
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


def _enum(symbols: Sequence[str]) -> Encoder:
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


# Reading.


def compile_reader(schema: Any) -> RecordReader | None:
    """A function from (message, offset of the record's first byte) to (the record, the offset
    after it), or None when ``schema`` has a shape this module does not read."""
    split = compile_split_reader(schema, ())
    if split is None:
        return None

    def read(message: bytes, offset: int) -> tuple[dict[str, Any], int] | None:
        done = split(message, offset)
        return None if done is None else (done[1], done[2])

    return read


def compile_split_reader(schema: Any, head: Sequence[str]) -> SplitReader | None:
    """``compile_reader`` returning the record in two parts, as ``compile_split_writer``
    takes it: (the ``head`` fields' values in that order, a dict of the other fields, the
    offset after the record); None for a shape it does not read or a ``head`` field the
    schema lacks. Generated once per schema as straight-line code, names bound by the
    namespace as the writer's are."""
    shapes = field_shapes(schema)
    names = [name for name, _ in shapes or ()]
    if shapes is None or not set(head) <= set(names):
        return None
    namespace: dict[str, Any] = {"_Unsure": _Unsure}
    lines = ["def read(message, offset):", "    try:", "        pass  # a record of no fields"]
    for i, (name, shape) in enumerate(shapes):
        namespace[f"d{i}"], namespace[f"k{i}"] = _build(shape, _READING), name
        lines.append(f"        v{i}, offset = d{i}(message, offset)")
    # The last field of a name wins, as it did in a record filled field by field.
    last = {name: i for i, name in enumerate(names)}
    head_values = "".join(f"v{last[name]}, " for name in head)
    rest = ", ".join(f"k{i}: v{i}" for name, i in last.items() if name not in head)
    lines += [
        "    except (_Unsure, IndexError, ValueError, OverflowError):",
        "        return None",
        f"    return ({head_values}), {{{rest}}}, offset",
    ]
    exec("\n".join(lines) + "\n", namespace)  # names and decoders come from the namespace
    read: SplitReader = namespace["read"]
    return read


def read_long(message: bytes, offset: int) -> tuple[int, int]:
    """A zig-zag varint; _Unsure past 64 bits (fastavro's C reader would wrap it)."""
    byte = message[offset]
    offset += 1
    if byte < 128:
        return (byte >> 1) ^ -(byte & 1), offset
    n, shift = byte & 0x7F, 7
    while True:
        byte = message[offset]
        offset += 1
        n |= (byte & 0x7F) << shift
        if byte < 128:
            break
        shift += 7
        if shift > 63:
            raise _Unsure
    if n >> 64:
        raise _Unsure
    return (n >> 1) ^ -(n & 1), offset


def _read_string(message: bytes, offset: int) -> tuple[str, int]:
    size, offset = read_long(message, offset)
    end = offset + size
    if size < 0 or end > len(message):
        raise _Unsure
    return message[offset:end].decode(), end


def _read_int(message: bytes, offset: int) -> tuple[int, int]:
    value, offset = read_long(message, offset)
    if not _INT[0] <= value <= _INT[1]:
        raise _Unsure
    return value, offset


def _read_boolean(message: bytes, offset: int) -> tuple[bool, int]:
    byte = message[offset]
    if byte > 1:
        raise _Unsure
    return byte == 1, offset + 1


def _read_null(message: bytes, offset: int) -> tuple[None, int]:
    return None, offset


def _read_uuid(message: bytes, offset: int) -> tuple[uuid.UUID, int]:
    text, offset = _read_string(message, offset)
    return uuid.UUID(text), offset


def _read_timestamp_millis(message: bytes, offset: int) -> tuple[datetime, int]:
    millis, offset = read_long(message, offset)
    return _EPOCH + timedelta(microseconds=millis * 1000), offset


_READ_PRIMITIVES: dict[str, Decoder] = {
    "string": _read_string,
    "long": read_long,
    "int": _read_int,
    "boolean": _read_boolean,
    "null": _read_null,
    "uuid": _read_uuid,
    "timestamp-millis": _read_timestamp_millis,
}


def _read_nullable(inner: Decoder) -> Decoder:
    def decode(message: bytes, offset: int) -> tuple[Any, int]:
        branch = message[offset]
        if branch == 0:
            return None, offset + 1
        if branch != 2:  # the zig-zag byte of branch 1
            raise _Unsure
        return inner(message, offset + 1)

    return decode


def _read_enum(symbols: Sequence[str]) -> Decoder:
    def decode(message: bytes, offset: int) -> tuple[str, int]:
        index, offset = read_long(message, offset)
        if not 0 <= index < len(symbols):
            raise _Unsure
        return symbols[index], offset

    return decode


def _read_map(values: Decoder) -> Decoder:
    def decode(message: bytes, offset: int) -> tuple[dict[str, Any], int]:
        result: dict[str, Any] = {}
        while True:
            count, offset = read_long(message, offset)
            if count == 0:
                return result, offset
            if count < 0:  # a block with its byte size; legal, rare, left to fastavro
                raise _Unsure
            for _ in range(count):
                key, offset = _read_string(message, offset)
                result[key], offset = values(message, offset)

    return decode


_WRITING = _Kit(_PRIMITIVES, _enum, _map, _nullable)
_READING = _Kit(_READ_PRIMITIVES, _read_enum, _read_map, _read_nullable)
