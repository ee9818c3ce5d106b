"""Invariant: a customer's state does not depend on how its events were batched."""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_ledger.adapters.eventstore import sqlite_env
from crm_ledger.application import Ledger
from tests.factories import AT, tp

if TYPE_CHECKING:
    from crm_ledger.aggregates import Touchpoint

CUSTOMERS = ["C1", "C2", "C3"]
RECORDED_TIMES = {"first_recorded_at", "last_recorded_at"}


@st.composite
def histories(draw: st.DrawFn) -> list[Touchpoint]:
    """Random mixed histories of three customers, with merges, erasure and duplicates."""
    kinds = st.sampled_from(
        [
            "CustomerRegistered",
            "ProfileUpdated",
            "IdentityLinked",
            "ConsentChanged",
            "InteractionRecorded",
            "OrderPlaced",
            "OrderRefunded",
            "SubscriptionStarted",
            "SubscriptionCancelled",
            "SupportTicketOpened",
            "SupportTicketResolved",
            "ContactLinkedToOrganisation",
            "CustomerErased",
            "CustomersMerged",
            "CustomersUnmerged",
        ]
    )
    events = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(kinds)
        customer = draw(st.sampled_from(CUSTOMERS))
        extra = {}
        if kind in ("CustomersMerged", "CustomersUnmerged"):
            extra["survivor_id"] = draw(st.sampled_from([c for c in CUSTOMERS if c != customer]))
        if kind == "ConsentChanged":
            extra["granted"] = draw(st.booleans())
        at = AT + timedelta(hours=draw(st.integers(0, 1000)))
        events.append(tp(kind, customer, at=at, **extra))
    if events and draw(st.booleans()):
        events.append(draw(st.sampled_from(events)))  # a re-sent event
    return events


def _state(events: list[Touchpoint], cuts: list[int]) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory() as folder,
        Ledger(sqlite_env(str(Path(folder) / "l.sqlite"))) as ledger,
    ):
        bounds = [0, *sorted(set(cuts)), len(events)]
        for start, stop in itertools.pairwise(bounds):
            ledger.record_many(events[start:stop])
        states: dict[str, object] = {"events": ledger.count_events()}
        for customer in CUSTOMERS:
            try:
                view = dataclasses.asdict(ledger.customer(customer))
            except Exception as e:
                states[customer] = type(e).__name__
                continue
            states[customer] = {k: v for k, v in view.items() if k not in RECORDED_TIMES}
        return states


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=histories(), data=st.data())
def test_state_is_the_same_however_events_are_batched(events: list[Touchpoint], data) -> None:  # type: ignore[no-untyped-def]
    cuts = data.draw(st.lists(st.integers(0, len(events)), max_size=6))
    one_by_one = list(range(len(events)))
    assert _state(events, cuts) == _state(events, []) == _state(events, one_by_one)
