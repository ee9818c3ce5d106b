"""The domain: aggregates, the touchpoint value and its rules. No infrastructure here."""

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
