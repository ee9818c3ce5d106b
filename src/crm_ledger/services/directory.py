"""Finding customers (by id, e-mail, phone or name prefix) and listing them by segment,
region, country, lifecycle stage, consent or organisation, a keyset page at a time."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crm_ledger.errors import CustomerNotFound, InvalidInput
from crm_ledger.projections.contributions import moment
from crm_ledger.projections.customer_360 import CONSENTS, CUSTOMERS, ORGANISATION_LINKS
from crm_ledger.projections.customer_search import (
    PREFIX_LENGTHS,
    SEARCH,
    SearchKey,
    normal_email,
    normal_name,
    normal_phone,
)
from crm_ledger.services.ports import LIVE, DirectoryStore

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import datetime

    from crm_ledger.application import CustomerView, Ledger
    from crm_ledger.services.read_models import ReadModels

#: Filters of `list` answered by the directory table itself.
DIRECTORY_FILTERS = ("segment", "region", "country")

#: How many customers a lifecycle filter reads, at most, for one page (each is confirmed
#: against the customer's own state); a page cut short says where to carry on.
LIFECYCLE_SCAN = 5_000


@dataclass(frozen=True, slots=True)
class CustomerMatch:
    """A customer found, with what the query matched on."""

    customer_id: str
    matched_on: str
    name: str | None
    email: str | None
    phone: str | None
    lifecycle_stage: str
    merged_into: str | None
    erased: bool


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One customer in a list: directory attributes only (no personal data)."""

    customer_id: str
    segment: str | None
    region: str | None
    country: str | None
    lifecycle_stage: str
    registered_at: datetime | None
    erased: bool


@dataclass(frozen=True, slots=True)
class CustomerPage:
    """One page of a list, and the cursor for the next one (None on the last page)."""

    customers: list[DirectoryEntry]
    next_after: str | None
    scanned: int


@dataclass(frozen=True, slots=True)
class ListFilter:
    """What a customer list is narrowed to (every given filter must hold)."""

    segment: str | None = None
    region: str | None = None
    country: str | None = None
    lifecycle_stage: str | None = None
    consent: tuple[str, str, bool] | None = None  # purpose, channel ("" = all), granted
    organisation: str | None = None


class Directory:
    """Find and list over the directory read models and the blind search index."""

    def __init__(
        self,
        ledger: Callable[[], Ledger],
        models: ReadModels,
        store: DirectoryStore,
        key: SearchKey,
    ) -> None:
        self._ledger = ledger
        self.models = models
        self.store = store
        self.key = key

    @property
    def ledger(self) -> Ledger:
        """The Ledger, opened on first use."""
        return self._ledger()

    def find(self, query: str, limit: int = 20) -> list[CustomerMatch]:
        """Customers whose id, e-mail (exact), phone (its digits) or name (a prefix of the
        whole name or of the last name, two letters at least) is ``query``."""
        text = query.strip()
        if not text:
            raise InvalidInput("give a customer id, an e-mail, a phone number or a name")
        found = self._by_id(text)
        if "@" in text:
            found += self._by_token("email", "email", normal_email(text), limit)
        elif re.fullmatch(r"[+\d][\d\s().-]{5,}", text):
            found += self._by_token("phone", "phone", normal_phone(text), limit)
        elif not found:
            found += self._by_name(normal_name(text), limit)
        return found[:limit]

    def customers(
        self, chosen: ListFilter, *, after: str | None = None, limit: int = 50
    ) -> CustomerPage:
        """One page of surviving customers matching ``chosen``, in id order after ``after``."""
        sets = self.models.sets(LIVE)
        labels = {name: s.label for name, s in sets.items()}
        where = {c: v for c in DIRECTORY_FILTERS if (v := getattr(chosen, c)) is not None}
        page: list[DirectoryEntry] = []
        scanned, cursor = 0, after
        budget = LIFECYCLE_SCAN if chosen.lifecycle_stage else limit
        while len(page) < limit and scanned < budget:
            rows = self.store.directory_page(
                (CUSTOMERS, labels["customer_360"]),
                (CONSENTS, labels["customer_360"]),
                (ORGANISATION_LINKS, labels["customer_360"]),
                where=where,
                consent=chosen.consent,
                organisation=chosen.organisation,
                after=cursor,
                limit=min(limit, budget - scanned) if chosen.lifecycle_stage else limit,
            )
            if not rows:
                return CustomerPage(page, None, scanned)
            for row in rows:
                scanned += 1
                cursor = row["customer_id"]
                entry = self._entry(row)
                if chosen.lifecycle_stage in (None, entry.lifecycle_stage):
                    page.append(entry)
                    if len(page) == limit:
                        break
        return CustomerPage(page, cursor, scanned)

    # Helpers.

    def _by_id(self, text: str) -> list[CustomerMatch]:
        try:
            return [_match(self.ledger.customer(text), "customer_id")]
        except CustomerNotFound:
            return []

    def _by_token(self, kind: str, column: str, value: str, limit: int) -> list[CustomerMatch]:
        if not value:
            return []
        label = self.models.sets(LIVE)["customer_search"].label
        ids = self.store.search((SEARCH, label), column, self.key.token(kind, value), limit)
        matches = []
        for customer_id in ids:
            view = self.ledger.customer(customer_id)
            stored = view.profile.get(column) or ""
            normal = normal_email if kind == "email" else normal_phone
            if normal(stored) == value:  # confirmed: the index only points
                matches.append(_match(view, kind))
        return matches

    def _by_name(self, prefix: str, limit: int) -> list[CustomerMatch]:
        if len(prefix) < min(PREFIX_LENGTHS):
            raise InvalidInput("give at least two letters of a name")
        n = min(len(prefix), max(PREFIX_LENGTHS))
        label = self.models.sets(LIVE)["customer_search"].label
        token = self.key.token("name", prefix[:n])
        ids: list[str] = []
        for column in (f"name_p{n}", f"last_p{n}"):
            ids += self.store.search((SEARCH, label), column, token, limit * 4)
        matches = []
        for customer_id in sorted(set(ids)):
            view = self.ledger.customer(customer_id)
            name = normal_name(view.profile.get("name") or "")
            if name.startswith(prefix) or name.split(" ")[-1].startswith(prefix):
                matches.append(_match(view, "name"))
        return matches[:limit]

    def _entry(self, row: Mapping[str, Any]) -> DirectoryEntry:
        view = self.ledger.customer(row["customer_id"])
        registered = row["registered_at"]
        return DirectoryEntry(
            customer_id=row["customer_id"],
            segment=row["segment"],
            region=row["region"],
            country=row["country"],
            lifecycle_stage=view.lifecycle_stage,
            registered_at=moment(registered) if registered is not None else None,
            erased=bool(row["erased"]),
        )


def _match(view: CustomerView, matched_on: str) -> CustomerMatch:
    profile = view.profile
    return CustomerMatch(
        customer_id=view.customer_id,
        matched_on=matched_on,
        name=profile.get("name"),
        email=profile.get("email"),
        phone=profile.get("phone"),
        lifecycle_stage=view.lifecycle_stage,
        merged_into=view.merged_into,
        erased=view.erased,
    )
