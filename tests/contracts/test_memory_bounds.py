"""What a writing process keeps per stream (aggregate, data key, chain head) is bounded by one
setting, and a stream it let go of is read again from the store, sealed data and chain
included."""

from __future__ import annotations

import tracemalloc
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from crm_ledger.adapters.eventstore import sqlite_env
from crm_ledger.aggregates import Customer
from crm_ledger.application import Ledger
from crm_ledger.config import Settings
from crm_ledger.errors import BatchesNotStored, ConfigurationError
from tests.contracts.verifying import assert_verified
from tests.factories import AT, tp

if TYPE_CHECKING:
    from pathlib import Path

    from crm_ledger.aggregates import Touchpoint

CUSTOMERS = [f"S{i:02d}" for i in range(24)]
LIMIT = 5


def _batches() -> list[list[Touchpoint]]:
    """Every customer registered, then rounds of profile changes (personal data sealed with
    each customer's key) and orders, in rotation, so each batch touches customers the cache
    let go of."""
    batches = [[tp("CustomerRegistered", c, name=f"Name {c}") for c in CUSTOMERS]]
    for n in range(4):
        at = AT + timedelta(hours=n + 1)
        batches.append(
            [tp("ProfileUpdated", c, at=at, email=f"{c}.{n}@example.org") for c in CUSTOMERS]
            + [tp("OrderPlaced", c, at=at, order_id=f"{c}-{n}") for c in CUSTOMERS[::3]]
        )
    return batches


def _views(ledger: Ledger) -> dict[str, Any]:
    return {
        c: (v.profile, v.orders, v.touchpoints, v.version)
        for c in CUSTOMERS
        for v in [ledger.customer(c)]
    }


def _in_memory(ledger: Ledger) -> tuple[int, int, int]:
    recorder: Any = ledger.recorder
    cache: Any = ledger.repository.cache
    return len(cache.cache), len(recorder.data_keys.keys), len(recorder.heads.known)


@pytest.mark.parametrize("wait", [True, False], ids=["waited", "background"])
def test_a_writer_keeps_at_most_cache_streams_and_reads_the_others_again(
    tmp_path: Path, wait: bool
) -> None:
    batches = _batches()
    with Ledger(sqlite_env(str(tmp_path / "roomy.sqlite"))) as roomy:
        for batch in batches:
            roomy.record_many(batch)
        expected = _views(roomy)
        assert _in_memory(roomy)[0] == len(CUSTOMERS)  # the default keeps them all
    with Ledger(sqlite_env(str(tmp_path / "tight.sqlite")), cache_streams=LIMIT) as ledger:
        highest = (0, 0, 0)
        for batch in batches:
            result = ledger.record_many(batch, wait=wait)
            assert not result.rejected
            ledger.flush()
            highest = tuple(map(max, highest, _in_memory(ledger)))  # type: ignore[assignment]
        aggregates, keys, heads = highest
        assert aggregates <= LIMIT
        assert keys <= LIMIT
        assert heads <= 2 * LIMIT
        assert _views(ledger) == expected  # keys and heads read again: the same history
        assert_verified(ledger, tmp_path / "keys")


def test_the_bounds_hold_after_a_batch_in_flight_failed(tmp_path: Path) -> None:
    env = sqlite_env(str(tmp_path / "ledger.sqlite"))
    with Ledger(env, cache_streams=LIMIT) as ledger, Ledger(env) as other:
        ledger.record_many([tp("CustomerRegistered", "F1")], wait=False)
        ledger.flush()
        other.record(tp("InteractionRecorded", "F1"))  # moves F1 on behind this ledger
        ledger.record_many([tp("OrderPlaced", "F1", order_id="O1")], wait=False)
        with pytest.raises(BatchesNotStored):
            ledger.flush()
        # Everything in memory was forgotten, and the limits it is kept to stay.
        recorder: Any = ledger.recorder
        assert (recorder.heads.limit, recorder.data_keys.limit) == (2 * LIMIT, LIMIT)


def test_the_setting_comes_from_the_environment_and_refuses_nonsense() -> None:
    assert Settings.from_env({}).cache_streams == 100_000
    assert Settings.from_env({"CRM_LEDGER_CACHE_STREAMS": "2500"}).cache_streams == 2500
    for bad in ("0", "-3", "many"):
        with pytest.raises(ConfigurationError, match="CRM_LEDGER_CACHE_STREAMS"):
            Settings.from_env({"CRM_LEDGER_CACHE_STREAMS": bad})


def test_a_batchs_stored_events_hold_their_state_at_its_own_size(tmp_path: Path) -> None:
    # A batch's stored events all live until it is stored: with orjson's write buffer kept
    # (4 to 8 KB each), 5,000 of them took 37 MB.
    customer = Customer("M1")
    for n in range(2000):
        customer.record(tp("InteractionRecorded", "M1", at=AT + timedelta(seconds=n)))
    events = customer.collect_events()[1:]
    with Ledger(sqlite_env(str(tmp_path / "ledger.sqlite"))) as ledger:
        tracemalloc.start()
        try:
            stored = [ledger.mapper.to_stored_event(e) for e in events]
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    largest = max(len(s.state) for s in stored)
    assert 200 < largest < 1000
    assert held / len(stored) < largest + 512
