"""Customer 360 directory: who each stream is, where they belong, and whether they merged.

The full 360 screen also shows the Customer aggregate (profile, consent, identities) beside
lifetime value and the timeline; this projection holds what queries across customers need:
segmentation attributes (to match an initiative's scope), organisations, merges and erasure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crm_ledger.projections.contributions import Column, Rule, Table

if TYPE_CHECKING:
    from collections.abc import Iterator

    from crm_ledger.application import LogRecord

#: Profile attributes an initiative's scope (or a control group) can select customers by.
SCOPE_ATTRIBUTES = ("region", "segment", "country")

CUSTOMERS = Table(
    "customers",
    (
        Column("stream", "text", Rule.KEY),
        Column("customer_id", "text"),
        *(Column(name, "text") for name in SCOPE_ATTRIBUTES),
        Column("merged_into", "text"),  # "" once unmerged
        Column("erased", "int", Rule.MAX),
        Column("registered_at", "int", Rule.MIN),
    ),
    key=("stream",),
    indexes=(("customer_id",), ("merged_into",)),
)

#: The latest consent decision per purpose and channel ("" for every channel), in log order
#: as the Customer aggregate applies them.
CONSENTS = Table(
    "customer_consents",
    (
        Column("stream", "text", Rule.KEY),
        Column("purpose", "text", Rule.KEY),
        Column("channel", "text", Rule.KEY),
        Column("granted", "int"),
    ),
    key=("stream", "purpose", "channel"),
)

ORGANISATION_LINKS = Table(
    "customer_organisations",
    (
        Column("stream", "text", Rule.KEY),
        Column("organisation_id", "text", Rule.KEY),
        Column("role", "text"),
        Column("linked_at", "int", Rule.MAX),
    ),
    key=("stream", "organisation_id"),
    indexes=(("organisation_id",),),
)


class Customer360:
    """Directory rows per customer stream, and their organisation links."""

    name: str = "customer_360"
    tables: tuple[Table, ...] = (CUSTOMERS, ORGANISATION_LINKS, CONSENTS)
    kinds: frozenset[str] | None = frozenset(
        {
            "Opened",
            "CustomerRegistered",
            "ProfileUpdated",
            "CustomersMerged",
            "CustomersUnmerged",
            "CustomerErased",
            "ContactLinkedToOrganisation",
            "ConsentChanged",
        }
    )

    def contribute(self, record: LogRecord) -> Iterator[tuple[str, dict[str, Any]]]:
        """The directory changes ``record`` makes."""
        kind, data, stream = record.kind, record.data, record.stream
        if kind == "Opened":
            yield "customers", {"stream": stream, "customer_id": data["customer_id"]}
        elif kind in ("CustomerRegistered", "ProfileUpdated"):
            row = {
                "stream": stream,
                **{a: data.get(a) for a in SCOPE_ATTRIBUTES},
            }
            if kind == "CustomerRegistered":
                row["registered_at"] = record.occurred
            yield "customers", row
        elif kind == "ConsentChanged":
            yield (
                "customer_consents",
                {
                    "stream": stream,
                    "purpose": data["purpose"],
                    "channel": data.get("channel") or "",
                    "granted": int(bool(data["granted"])),
                },
            )
        elif kind == "CustomersMerged":
            yield "customers", {"stream": stream, "merged_into": data["survivor_id"]}
        elif kind == "CustomersUnmerged":
            yield "customers", {"stream": stream, "merged_into": ""}
        elif kind == "CustomerErased":
            yield "customers", {"stream": stream, "erased": 1}
        elif kind == "ContactLinkedToOrganisation":
            yield (
                "customer_organisations",
                {
                    "stream": stream,
                    "organisation_id": data["organisation_id"],
                    "role": data["role"],
                    "linked_at": record.occurred,
                },
            )
