"""A publish_many's results, kept as columns, read back as one PublishResult per event."""

from __future__ import annotations

import pytest

from crm_ledger.adapters.kafka import PublishResult, PublishResults
from tests.factories import tp


def test_results_read_back_in_order_with_their_errors() -> None:
    events = [tp("InteractionRecorded", f"C{i}") for i in range(3)]
    results = PublishResults(events)
    results.add(2, 40)
    results.add(None, None, "KafkaTimeoutError('Batch expired')")
    results.add(0, 0)
    expected = [
        PublishResult(events[0].event_id, "C0", 2, 40),
        PublishResult(events[1].event_id, "C1", None, None, "KafkaTimeoutError('Batch expired')"),
        PublishResult(events[2].event_id, "C2", 0, 0),
    ]
    assert list(results) == expected
    assert len(results) == 3
    assert results.failed == 1
    assert results[-2] == expected[1]
    assert results[1:] == expected[1:]
    assert [r for r in results if r.error] == [expected[1]]
    with pytest.raises(IndexError):
        results[3]


def test_no_results_yet_is_empty() -> None:
    results = PublishResults([tp("InteractionRecorded", "C0")])
    assert list(results) == []
    assert results.failed == 0
    with pytest.raises(IndexError):
        results[0]
