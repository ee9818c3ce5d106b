"""Money as people read it on the console's pages."""

from __future__ import annotations

from typing import Any

import pytest

from crm_ledger.web.app import amount, money
from tests.web.conftest import signed_in


@pytest.mark.parametrize(
    ("minor", "currency", "shown"),
    [
        (37818, "EUR", "378.18 EUR"),
        (-150, "EUR", "-1.50 EUR"),
        (123456789, "USD", "1,234,567.89 USD"),
        (1234, "JPY", "1,234 JPY"),
        (0, "EUR", "0.00 EUR"),
        (None, "EUR", ""),
    ],
)
def test_money(minor: int | None, currency: str, shown: str) -> None:
    assert money(minor, currency) == shown


@pytest.mark.parametrize(
    ("value", "currency", "shown"),
    [(40.17, "EUR", "0.40"), (-28162.0, "EUR", "-281.62"), (3.5, None, "3.50"), (7, "JPY", "7.00")],
)
def test_comparison_amounts_in_major_units(value: float, currency: str | None, shown: str) -> None:
    assert amount(value, currency) == shown


def test_the_initiative_page_shows_the_estimates_in_major_units(console: dict[str, Any]) -> None:
    client = signed_in(console["app"], "analyst")
    result = client.get("/api/initiatives/loyalty").json()
    assert result["currency"] == "EUR"
    page = client.get("/initiatives/loyalty").text
    for estimate in result["impact"]["estimates"]:
        if estimate["estimate"] is not None:
            assert f'<td class="estimate">{estimate["estimate"] / 100:,.2f}</td>' in page
    assert "per customer-week (EUR)" in page
