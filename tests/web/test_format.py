"""Money as people read it on the console's pages."""

from __future__ import annotations

import pytest

from crm_ledger.web.app import money


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
