"""A blind search index of customers: keyed hashes (HMAC-SHA256) of each customer's e-mail,
phone and name prefixes, never the values themselves.

Finding a customer by e-mail, phone or name prefix hashes the query with the same key and
looks the hash up. The index holds no personal data: without the search key (kept in the key
folder, outside the database) a hash reveals nothing, and an erased customer's hashes are
blanked by the erasure itself (and never rebuilt, since their sealed values no longer open).
Matches are confirmed against the customer's profile before they are shown.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import TYPE_CHECKING, Any

from crm_ledger.projections.contributions import Column, Rule, Table

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from crm_ledger.application import LogRecord

#: Name prefixes are indexed from 2 to this many characters (longer ones are confirmed).
PREFIX_LENGTHS = range(2, 9)
NAME_COLUMNS = tuple(f"name_p{n}" for n in PREFIX_LENGTHS)
LAST_COLUMNS = tuple(f"last_p{n}" for n in PREFIX_LENGTHS)
TOKEN_COLUMNS = ("email", "phone", *NAME_COLUMNS, *LAST_COLUMNS)

SEARCH = Table(
    "customer_search",
    (
        Column("stream", "text", Rule.KEY),
        Column("customer_id", "text"),
        *(Column(name, "text") for name in TOKEN_COLUMNS),
    ),
    key=("stream",),
    indexes=(("email",), ("phone",), ("name_p2",), ("last_p2",)),
)


def normal_email(value: str) -> str:
    """E-mail addresses compare without case or surrounding spaces."""
    return value.strip().lower()


def normal_phone(value: str) -> str:
    """Phone numbers compare by their digits alone (+31 6-1234 5678 is 31612345678)."""
    return re.sub(r"\D", "", value)


def normal_name(value: str) -> str:
    """Names compare without case, accents kept, runs of spaces as one."""
    return " ".join(value.lower().split())


class SearchKey:
    """The keyed hash every token is made with (the key lives in the key folder)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def token(self, kind: str, value: str) -> str:
        """The token of a normalised value of one kind."""
        digest = hmac.new(self._key, f"{kind}:{value}".encode(), hashlib.sha256).digest()
        return digest[:16].hex()

    def name_tokens(self, name: str) -> dict[str, str]:
        """Tokens of the prefixes of the whole name and of its last word."""
        name = normal_name(name)
        last = name.split(" ")[-1] if name else ""
        tokens = {}
        for n, whole, surname in zip(PREFIX_LENGTHS, NAME_COLUMNS, LAST_COLUMNS, strict=True):
            tokens[whole] = self.token("name", name[:n]) if len(name) >= n else ""
            tokens[surname] = self.token("name", last[:n]) if len(last) >= n else ""
        return tokens


#: The record kinds whose sealed personal values the index opens.
PERSONAL_KINDS = frozenset({"CustomerRegistered", "ProfileUpdated"})


class CustomerSearch:
    """The search index: one row of tokens per customer stream."""

    name: str = "customer_search"
    tables: tuple[Table, ...] = (SEARCH,)
    kinds: frozenset[str] | None = frozenset(
        {"Opened", "CustomerRegistered", "ProfileUpdated", "CustomerErased"}
    )

    def __init__(
        self,
        key: SearchKey,
        opener: Callable[[bytes, str, Any], Any],
        preload: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.key = key
        self.opener = opener
        self.preload = preload

    def prepare(self, records: list[LogRecord]) -> None:
        """Before a page's contributions: load the data keys of the streams whose personal
        values it opens with one look-up (``preload``), instead of one per stream."""
        if self.preload is not None:
            self.preload(list({r.stream: None for r in records if r.kind in PERSONAL_KINDS}))

    def contribute(self, record: LogRecord) -> Iterator[tuple[str, dict[str, Any]]]:
        """The tokens ``record`` sets (or, for an erasure, blanks)."""
        kind, stream = record.kind, record.stream
        if kind == "Opened":
            yield SEARCH.name, {"stream": stream, "customer_id": record.data["customer_id"]}
        elif kind == "CustomerErased":
            yield SEARCH.name, {"stream": stream, **dict.fromkeys(TOKEN_COLUMNS, "")}
        else:
            row: dict[str, Any] = {"stream": stream}
            opened = {f: self._open(stream, f, record.data.get(f)) for f in ("email", "phone")}
            if opened["email"]:
                row["email"] = self.key.token("email", normal_email(opened["email"]))
            if opened["phone"]:
                row["phone"] = self.key.token("phone", normal_phone(opened["phone"]))
            name = self._open(stream, "name", record.data.get("name"))
            if name:
                row |= self.key.name_tokens(name)
            if len(row) > 1:
                yield SEARCH.name, row

    def _open(self, stream: str, field: str, value: Any) -> str | None:
        if value is None:
            return None
        opened = self.opener(bytes.fromhex(stream), field, value)
        return opened if isinstance(opened, str) and opened else None
