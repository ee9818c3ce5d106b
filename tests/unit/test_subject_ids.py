"""Aggregate ids are derived from the ids sources use, the same way forever (a ledger's
streams are found by them), and each customer's id is remembered once."""

from __future__ import annotations

from uuid import UUID

from crm_ledger.aggregates.touchpoint import Subject, _named_uuid, customer_uuid, subject_uuid

#: Ids that ledgers already hold (computed before the customer cache was shared).
KNOWN = {
    (Subject.CUSTOMER, "C000142"): UUID("b4575518-c8a1-539c-b6cf-fc557137aeff"),
    (Subject.ORGANISATION, "ORG1"): UUID("4bf22a08-078c-54cd-b43c-2d143b9bbf3f"),
    (Subject.INITIATIVE, "I1"): UUID("1c05f600-5ade-58fe-be6c-9a81b81d6c32"),
}


def test_subject_ids_are_the_ids_ledgers_already_hold() -> None:
    for (subject, source_id), expected in KNOWN.items():
        assert subject_uuid(subject, source_id) == expected
    assert customer_uuid("C000142") == KNOWN[Subject.CUSTOMER, "C000142"]


def test_a_customer_id_is_remembered_once_whichever_function_asks() -> None:
    customer_uuid.cache_clear()
    _named_uuid.cache_clear()
    ids = [f"R{n}" for n in range(50)]
    through_subject = [subject_uuid(Subject.CUSTOMER, i) for i in ids]
    assert [customer_uuid(i) for i in ids] == through_subject
    assert customer_uuid.cache_info().currsize == len(ids)
    assert _named_uuid.cache_info().currsize == 0  # no second entry per customer
    # Organisations with the same source id are other streams, remembered apart.
    assert subject_uuid(Subject.ORGANISATION, "R1") != through_subject[1]
    assert _named_uuid.cache_info().currsize == 1
