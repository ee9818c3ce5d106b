"""The domain: aggregates, the touchpoint value and its rules. No infrastructure here.

The names below are imported on first use: a query that needs only ``customer_uuid`` does
not define the aggregates' event classes (a tenth of a command's start-up).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {
    "Customer": "customer",
    "Initiative": "initiative",
    "Organisation": "organisation",
    "CATALOGUE": "touchpoint",
    "PERSONAL_FIELDS": "touchpoint",
    "Subject": "touchpoint",
    "Touchpoint": "touchpoint",
    "check_touchpoint": "touchpoint",
    "customer_uuid": "touchpoint",
    "subject_uuid": "touchpoint",
}

if TYPE_CHECKING:
    from crm_ledger.aggregates.customer import Customer
    from crm_ledger.aggregates.initiative import Initiative
    from crm_ledger.aggregates.organisation import Organisation
    from crm_ledger.aggregates.touchpoint import (
        CATALOGUE,
        PERSONAL_FIELDS,
        Subject,
        Touchpoint,
        check_touchpoint,
        customer_uuid,
        subject_uuid,
    )


def __getattr__(name: str) -> object:
    if name in _WHERE:
        return getattr(importlib.import_module(f"crm_ledger.aggregates.{_WHERE[name]}"), name)
    raise AttributeError(name)


__all__ = [
    "CATALOGUE",
    "PERSONAL_FIELDS",
    "Customer",
    "Initiative",
    "Organisation",
    "Subject",
    "Touchpoint",
    "check_touchpoint",
    "customer_uuid",
    "subject_uuid",
]
