"""Projections on each real store: what lifetime value, journeys, the directory, rebuilds,
snapshots and time travel give a user. Same bodies on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from crm_ledger.application import Ledger
from crm_ledger.bootstrap import projections_of
from crm_ledger.config import Settings
from crm_ledger.errors import CustomerNotFound, InvalidInput, NotFound, PositionConflict
from crm_ledger.projections.contributions import Changes, micros
from crm_ledger.projections.lifetime_value import LifetimeValue
from crm_ledger.projections.runtime import (
    BUILDING,
    LIVE,
    Projector,
    SetWrite,
    _Target,
)
from crm_ledger.services.read_models import Moment
from tests.factories import AT, spy_on_key_look_ups, tp
from tests.projections.conftest import dump

if TYPE_CHECKING:
    from pathlib import Path

    from crm_ledger.adapters.sql import SqlProjectionStore
    from crm_ledger.aggregates import Touchpoint
    from crm_ledger.services.read_models import ReadModels

DAY = timedelta(days=1)


def order(customer: str, amount: int, *, days: int = 0, currency: str = "EUR", **more: object):
    return tp(
        "OrderPlaced",
        customer,
        at=AT + days * DAY,
        order_id=f"O-{customer}-{days}-{amount}",
        amount_minor=amount,
        currency=currency,
        **more,
    )


def test_lifetime_value_per_currency_with_refunds_and_margin(
    ledger: Ledger, models: ReadModels
) -> None:
    ledger.record_many(
        [
            tp("CustomerRegistered", "C1"),
            order("C1", 1000, days=1, margin_minor=200, items=2),
            order("C1", 3000, days=11, margin_minor=None, items=1),
            tp("OrderRefunded", "C1", at=AT + 12 * DAY, amount_minor=500, currency="EUR"),
            order("C1", 700, days=5, currency="USD", margin_minor=70, items=1),
        ]
    )
    values = {v.currency: v for v in models.values("C1")}
    eur, usd = values["EUR"], values["USD"]
    assert (eur.orders, eur.gross_minor, eur.refunds, eur.refunded_minor) == (2, 4000, 1, 500)
    assert eur.net_minor == 3500
    assert eur.margin_minor == 200  # only the order that knew its margin
    assert eur.items == 3
    assert eur.average_order_minor == 2000
    assert eur.first_order_at == AT + DAY
    assert eur.last_order_at == AT + 11 * DAY
    assert (usd.orders, usd.net_minor, usd.margin_minor) == (1, 700, 70)


def test_a_merged_customer_counts_with_the_survivor_until_unmerged(
    ledger: Ledger, models: ReadModels
) -> None:
    ledger.record_many(
        [
            tp("CustomerRegistered", "S1"),
            tp("CustomerRegistered", "D1"),
            order("S1", 1000),
            order("D1", 250, days=1),
            tp("CustomersMerged", "D1", at=AT + 2 * DAY, survivor_id="S1"),
            order("D1", 50, days=3),  # routed to S1
        ]
    )
    (value,) = models.values("S1")
    assert (value.orders, value.net_minor) == (3, 1300)
    assert len([t for t in models.timeline("S1") if t.kind == "OrderPlaced"]) == 3
    top = models.top(5)
    assert [(v.subject, v.net_minor) for v in top] == [("S1", 1300)]

    ledger.record(tp("CustomersUnmerged", "D1", at=AT + 4 * DAY, survivor_id="S1"))
    models._live = None  # a new question catches up again
    assert models.values("S1")[0].net_minor == 1050  # S1's own and the routed order
    assert models.values("D1")[0].net_minor == 250
    assert {v.subject for v in models.top(5)} == {"S1", "D1"}


def test_journey_is_in_business_time_with_gaps_and_channel_switches(
    ledger: Ledger, models: ReadModels
) -> None:
    ledger.record_many(
        [
            tp("InteractionRecorded", "C1", at=AT + 2 * DAY, channel="email", kind="email_open"),
            tp("CustomerRegistered", "C1", at=AT),  # arrives late, happened first
            tp("InteractionRecorded", "C1", at=AT + DAY, channel="web", kind="page_view"),
            order("C1", 990, days=3, channel="web"),
        ]
    )
    steps = models.timeline("C1")
    assert [s.kind for s in steps] == [
        "CustomerRegistered",
        "InteractionRecorded",
        "InteractionRecorded",
        "OrderPlaced",
    ]
    assert [s.channel for s in steps] == [None, "web", "email", "web"]
    assert [s.gap_seconds for s in steps] == [None, 86400.0, 86400.0, 86400.0]
    assert [s.channel_switch for s in steps] == [False, False, True, True]
    assert steps[3].amount_minor == 990
    only_web = models.timeline("C1", channel="web", start=AT + 2 * DAY)
    assert [s.kind for s in only_web] == ["OrderPlaced"]


def test_unknown_customer_is_not_found(models: ReadModels) -> None:
    with pytest.raises(CustomerNotFound):
        models.values("nobody")


def test_catching_up_applies_each_event_once(
    ledger: Ledger, projector: Projector, projection_store: SqlProjectionStore
) -> None:
    ledger.record_many([order("C1", 100, days=d) for d in range(10)])
    projector.catch_up()
    assert projector.catch_up() == 0  # nothing new
    ledger.record_many([order("C1", 100, days=d) for d in range(10, 15)])
    projector.catch_up()
    rows = dump(projection_store, projector, projector.live())
    assert len(rows["touches"]) == 15
    ((_, _, orders, gross, *_),) = rows["ltv"]
    assert (orders, gross) == (15, 1500)
    assert all(s.lag == 0 for s in projector.status())


def test_a_stale_writer_is_refused_and_carries_on_from_the_stored_position(
    ledger: Ledger, projection_store: SqlProjectionStore
) -> None:
    ledger.record_many([order("C1", 100, days=d) for d in range(5)])
    first, second = Projector(ledger, projection_store), Projector(ledger, projection_store)
    first.catch_up()
    stale = first.live()
    ledger.record_many([order("C1", 100, days=d) for d in range(5, 8)])
    second.catch_up()
    # The first projector still believes its sets are where they were: its batch is refused
    # (compare-and-set on the position) and it carries on from the stored position.
    moved = [s.position for s in second.live().values()]
    with pytest.raises(PositionConflict):
        projection_store.write([SetWrite(s, Changes(()), 99) for s in stale.values()])
    targets = [_Target(first.projections[n], s) for n, s in stale.items()]
    assert first._run(targets, ledger.log_head(), None) == 0
    rows = dump(projection_store, first, first.live())
    assert len(rows["touches"]) == 8
    assert [s.position for s in first.live().values()] == moved


def test_rebuild_swaps_in_fresh_tables_and_an_interrupted_one_finishes(
    ledger: Ledger, projector: Projector, projection_store: SqlProjectionStore
) -> None:
    ledger.record_many([order(f"C{i % 4}", 100 + i, days=i) for i in range(40)])
    projector.catch_up()
    before = dump(projection_store, projector, projector.live())
    old_label = projector.live()["journey_timeline"].label

    class Stop(Exception):
        pass

    def stop_after_two(position: int, head: int) -> None:
        if position >= 14:
            raise Stop

    with pytest.raises(Stop):
        projector.rebuild(["journey_timeline", "lifetime_value"], stop_after_two)
    building = [s for s in projection_store.table_sets() if s.status == BUILDING]
    assert {s.projection for s in building} == {"journey_timeline", "lifetime_value"}
    assert projector.live()["journey_timeline"].label == old_label  # still answering

    projector.rebuild(["journey_timeline", "lifetime_value"])
    live = projector.live()
    assert live["journey_timeline"].label != old_label
    assert {s.status for s in projection_store.table_sets()} == {LIVE}
    assert dump(projection_store, projector, live) == before


def test_a_rebuilds_sets_are_made_before_its_workers_start_so_none_of_them_makes_one(
    ledger: Ledger, projector: Projector, projection_store: SqlProjectionStore
) -> None:
    """A parent killed mid-rebuild can leave a worker running; if workers made their own sets,
    such a worker and the rerun could both pick the next label at once. The parent makes them
    first; a worker (or rerun) then carries on with those."""
    ledger.record_many([order(f"C{i % 4}", 100 + i, days=i) for i in range(10)])
    projector.catch_up()
    names = ["journey_timeline", "lifetime_value"]
    projector.start_rebuild(names)
    made = [s for s in projection_store.table_sets() if s.status == BUILDING]
    assert {s.projection for s in made} == set(names)
    creations: list[str] = []
    real_create = projection_store.create

    def create(projection: Any, table_set: Any) -> None:
        creations.append(table_set.label)
        real_create(projection, table_set)

    projection_store.create = create  # type: ignore[method-assign]
    projector.rebuild(names)  # what each worker runs
    assert creations == []
    live = projector.live()
    assert {live[n].label for n in names} == {s.label for s in made}


def test_replay_into_a_snapshot_as_of_a_moment(
    ledger: Ledger, projector: Projector, models: ReadModels
) -> None:
    ledger.record_many([tp("CustomerRegistered", "C1"), order("C1", 1000, days=1)])
    moment_one = datetime.now(UTC)
    ledger.record_many([order("C1", 2000, days=-30)])  # recorded later, occurred earlier
    projector.replay("then", as_of=micros(moment_one), valid_at=None)
    projector.replay("early", as_of=None, valid_at=micros(AT))

    then = Moment(snapshot="then")
    assert [v.net_minor for v in models.values("C1", then)] == [1000]
    assert [v.net_minor for v in models.values("C1", Moment(snapshot="early"))] == [2000]
    assert [v.net_minor for v in models.values("C1")] == [3000]
    # The same moment, projected in memory from the customer's stream.
    assert models.values("C1", Moment(as_of=moment_one)) == models.values("C1", then)
    assert models.view("C1", Moment(as_of=moment_one)).customer.orders == 1
    assert [s.status for s in projector.status() if s.label == "s_then"] == ["snapshot"] * 3

    with pytest.raises(InvalidInput, match="exists"):
        projector.replay("then", as_of=micros(moment_one), valid_at=None)
    projector.drop_snapshot("then")
    with pytest.raises(NotFound):
        models.values("C1", then)


def test_organisations_roll_up_their_contacts(ledger: Ledger, models: ReadModels) -> None:
    ledger.record_many(
        [
            tp("ContactLinkedToOrganisation", "C1", organisation_id="ORG1"),
            tp("ContactLinkedToOrganisation", "C2", organisation_id="ORG1"),
            tp("ContactLinkedToOrganisation", "C3", organisation_id="ORG2"),
            order("C1", 100),
            order("C2", 200),
            order("C3", 250),
        ]
    )
    top = models.top(10, by_organisation=True)
    assert [(v.subject, v.orders, v.net_minor) for v in top] == [
        ("ORG1", 2, 300),
        ("ORG2", 1, 250),
    ]


def test_initiative_impact_difference_in_differences(ledger: Ledger, models: ReadModels) -> None:
    start = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday
    events = [
        tp("InitiativeStarted", "I1", at=start, scope={"region": "north"}),
        tp("InitiativeEnded", "I1", at=start + timedelta(weeks=4)),
    ]
    for i in range(6):
        exposed = i < 3
        c = f"C{i}"
        events.append(
            tp(
                "CustomerRegistered",
                c,
                at=start - timedelta(weeks=4),
                region="north" if exposed else "south",
            )
        )
        for week in range(-4, 8):
            during = 0 <= week < 4
            orders = 2 if exposed and during else 1
            for k in range(orders):
                at = start + timedelta(weeks=week, days=1 + k)
                events.append(
                    tp(
                        "OrderPlaced",
                        c,
                        at=at,
                        order_id=f"{c}-{week}-{k}",
                        amount_minor=1000,
                        currency="EUR",
                    )
                )
    ledger.record_many(events)
    result = models.compare("I1", metric="orders", resamples=200)
    during, after = result.impact.estimates
    assert during.period == "during"
    assert during.estimate == pytest.approx(1.0)
    assert during.ci_low <= 1.0 <= during.ci_high
    assert after.estimate == pytest.approx(0.0)
    money = models.compare("I1", metric="net_revenue", resamples=200)
    assert money.impact.estimates[0].estimate == pytest.approx(1000.0)
    assert money.currency == "EUR"
    exposed_before = next(
        g for g in result.impact.groups if (g.group, g.period) == ("exposed", "before")
    )
    assert (exposed_before.customers, exposed_before.customer_weeks) == (3, 12)

    with pytest.raises(InvalidInput, match="cannot select customers by 'planet'"):
        models.compare("I1", control={"planet": "mars"})
    with pytest.raises(NotFound):
        models.compare("nope")


def test_marketing_after_a_withdrawal_is_flagged_whatever_the_arrival_order(
    ledger: Ledger, models: ReadModels
) -> None:
    def campaign(days: int, channel: str) -> Touchpoint:
        return tp(
            "InteractionRecorded",
            "C1",
            at=AT + days * DAY,
            channel=channel,
            direction="outbound",
            kind=f"{channel}_open",
            campaign="spring",
        )

    def consent(days: int, granted: bool, channel: str | None = None) -> Touchpoint:
        return tp(
            "ConsentChanged",
            "C1",
            at=AT + days * DAY,
            purpose="marketing",
            channel=channel,
            granted=granted,
        )

    ledger.record_many(
        [
            campaign(5, "sms"),  # arrives first, happened after the withdrawal below
            consent(0, True),
            campaign(1, "email"),  # consent granted: fine
            consent(2, False, "sms"),  # withdrawn for sms only
            campaign(3, "email"),  # still fine
            consent(6, False),  # withdrawn everywhere
            campaign(7, "email"),  # violation
            consent(8, True, "email"),  # granted again for email
            campaign(9, "email"),  # fine
            campaign(9, "sms"),  # violation (sms still withdrawn)
            tp(
                "InteractionRecorded",
                "C1",
                at=AT + 10 * DAY,
                channel="sms",
                direction="inbound",
                kind="sms_reply",
            ),  # not marketing
        ]
    )
    flagged = [(s.occurred_at, s.channel) for s in models.timeline("C1") if s.consent_violation]
    assert flagged == [(AT + 5 * DAY, "sms"), (AT + 7 * DAY, "email"), (AT + 9 * DAY, "sms")]
    listed = models.consent_violations()
    assert [(v.customer_id, v.occurred_at, v.channel) for v in listed] == [
        ("C1", AT + 5 * DAY, "sms"),
        ("C1", AT + 7 * DAY, "email"),
        ("C1", AT + 9 * DAY, "sms"),
    ]
    assert listed[0].withdrawn_at == AT + 2 * DAY
    assert listed[1].withdrawn_at == AT + 6 * DAY


class ChangedLifetimeValue(LifetimeValue):
    """The lifetime value read model as a new release would ship it (its code differs)."""


def test_a_read_model_whose_code_changed_rebuilds_itself_on_the_next_catch_up(
    ledger: Ledger, projector: Projector, projection_store: SqlProjectionStore
) -> None:
    ledger.record_many([order(f"C{i % 3}", 100 + i, days=i) for i in range(12)])
    projector.catch_up()
    before = {name: s.label for name, s in projector.live().items()}
    assert projector.catch_up() == 0  # same code: nothing to do

    released = Projector(
        ledger,
        projection_store,
        projections=[
            projector.projections["customer_360"],
            ChangedLifetimeValue(),
            projector.projections["journey_timeline"],
        ],
    )
    seen: list[tuple[int, int]] = []
    assert released.catch_up(lambda position, head: seen.append((position, head))) > 0
    after = {name: s.label for name, s in released.live().items()}
    assert after["lifetime_value"] != before["lifetime_value"]  # rebuilt...
    assert after["customer_360"] == before["customer_360"]  # ...and only it
    assert after["journey_timeline"] == before["journey_timeline"]
    assert seen  # with progress
    assert seen[-1][0] == seen[-1][1] == ledger.log_head()
    assert released.catch_up() == 0
    rows = dump(projection_store, released, released.live())
    assert len(rows["ltv"]) == 3


def test_the_search_index_loads_a_pages_data_keys_with_one_look_up(
    store_env: dict[str, str], projection_store: SqlProjectionStore, tmp_path: Path
) -> None:
    """Its contributions open each registration's sealed e-mail, phone and name: the keys of a
    page's streams come with one look-up, not one per stream (a rebuild reads thousands)."""
    customers = [f"S{n}" for n in range(12)]
    with Ledger(store_env) as writer:
        writer.record_many([tp("CustomerRegistered", c, name=f"Ada {c}") for c in customers])
    with Ledger(store_env) as ledger:  # no key in memory yet
        asked, one_by_one = spy_on_key_look_ups(ledger)
        settings = Settings(data_dir=tmp_path / "data")
        projections = projections_of(settings, lambda: ledger)
        projector = Projector(ledger, projection_store, projections=projections, batch_size=100)
        projector.rebuild(["customer_search"])
        assert one_by_one == []
        assert [len(a) for a in asked] == [len(customers)]  # one page, one look-up
        search = projector.live()["customer_search"]
        [table] = projector.projections["customer_search"].tables
        rows = projection_store.all_rows(table, search.label)
        assert len(rows) == len(customers)
        assert all(r["email"] for r in rows)  # the keys found opened every e-mail
