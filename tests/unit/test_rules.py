"""Contract rules beyond types: each names the field and the problem."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crm_ledger.aggregates import check_touchpoint
from crm_ledger.errors import InvalidEvent
from tests.factories import tp

NOW = datetime(2025, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("event", "field", "problem"),
    [
        (tp("OrderPlaced", amount_minor=-1), "amount_minor", "must not be negative"),
        (tp("OrderRefunded", currency="euro"), "currency", "ISO 4217"),
        (tp("OrderPlaced", items=-2), "items", "must be between 0 and 1,000,000"),
        (tp("SubscriptionStarted", amount_minor=5, currency=None), "currency", "ISO 4217"),
        (tp("InteractionRecorded", score=11), "score", "between 0 and 10"),
        (tp("SupportTicketResolved", satisfaction=-1), "satisfaction", "between 0 and 10"),
        (tp("CustomersMerged", "C1", survivor_id="C1"), "survivor_id", "with itself"),
        (tp("ConsentChanged", purpose="spam"), "purpose", "must be one of"),
        (tp("ContactLinkedToOrganisation", organisation_id=""), "organisation_id", "empty"),
        (tp("OrderPlaced", ""), "customer_id", "must not be empty"),
        (tp("OrderPlaced", " C1"), "customer_id", "white space"),
        (tp("OrderPlaced", "C" * 201), "customer_id", "longer than 200"),
        (tp("OrderPlaced", source=""), "source", "must not be empty"),
        (tp("OrderPlaced", at=NOW + timedelta(days=2)), "occurred_at", "in the future"),
        (tp("OrderPlaced", at=datetime(1850, 1, 1, tzinfo=UTC)), "occurred_at", "before 1900"),
    ],
)
def test_a_rule_breach_names_field_and_problem(event, field: str, problem: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidEvent, match=problem) as caught:
        check_touchpoint(event, now=NOW)
    assert caught.value.field == field


def test_valid_events_pass_including_an_hour_of_clock_skew() -> None:
    check_touchpoint(tp("OrderPlaced", at=NOW + timedelta(hours=1)), now=NOW)
    check_touchpoint(tp("SubscriptionStarted", amount_minor=None, currency=None), now=NOW)
    check_touchpoint(tp("OrderPlaced", amount_minor=0), now=NOW)
