"""Values that few distinct exist of (a country, a segment, a consent's purpose) are held once
in memory, however many customers' states hold them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crm_ledger.adapters.eventstore import sqlite_env
from crm_ledger.aggregates import customer_uuid
from crm_ledger.application import Ledger
from tests.factories import tp

if TYPE_CHECKING:
    from pathlib import Path

    from crm_ledger.aggregates import Touchpoint


def _fresh(text: str) -> str:
    """An equal text that is another object (as each decoded message's is)."""
    return "".join(list(text))


def test_customers_share_one_copy_of_values_that_few_distinct_exist(tmp_path: Path) -> None:
    def events(c: str) -> list[Touchpoint]:
        return [
            tp(
                "CustomerRegistered",
                c,
                country=_fresh("DE"),
                region=_fresh("north"),
                segment=_fresh("retail"),
                lifecycle_stage=_fresh("prospect"),
                email=_fresh(f"{c}@example.org"),
            ),
            tp("ConsentChanged", c, purpose=_fresh("marketing"), channel=_fresh("email")),
            tp("IdentityLinked", c, system=_fresh("loyalty"), value=_fresh(f"L-{c}")),
        ]

    path = str(tmp_path / "ledger.sqlite")
    with Ledger(sqlite_env(path)) as ledger:
        ledger.record_many(events("P1") + events("P2"))
    with Ledger(sqlite_env(path)) as ledger:  # read back from the store: new texts again
        one, two = (ledger.repository.get(customer_uuid(c)) for c in ("P1", "P2"))
    for name in ("country", "region", "segment"):
        assert one.profile[name] == two.profile[name]
        assert one.profile[name] is two.profile[name], name
    assert one.lifecycle_stage is two.lifecycle_stage
    assert list(one.consent) == list(two.consent) == ["marketing/email"]
    assert next(iter(one.consent)) is next(iter(two.consent))
    assert one.identities[0][0] is two.identities[0][0]
    assert one.profile["email"] != two.profile["email"]
