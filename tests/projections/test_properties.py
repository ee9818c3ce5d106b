"""Properties of the projections, over random histories (Hypothesis, on SQLite files):
replay as of T equals the live state captured at T; lifetime value and journeys do not
depend on batch sizes nor on arrival order; an interrupted rebuild, rerun, ends identical."""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_ledger.adapters.eventstore import sqlite_env
from crm_ledger.adapters.sql import SqlProjectionStore, sqlite_engine
from crm_ledger.application import Ledger
from crm_ledger.errors import CustomerNotFound
from crm_ledger.projections.contributions import micros
from crm_ledger.projections.runtime import Projector
from crm_ledger.services.read_models import Moment, ReadModels
from tests.clock import moment_between
from tests.factories import AT, tp
from tests.projections.conftest import dump

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager

    from crm_ledger.aggregates import Touchpoint

CUSTOMERS = ("C0", "C1", "C2", "C3")
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

moments = st.integers(0, 24 * 90).map(lambda h: AT + timedelta(hours=h))
customers = st.sampled_from(CUSTOMERS)


@st.composite
def plain_events(draw: st.DrawFn) -> Touchpoint:
    """A touchpoint whose meaning does not depend on arrival order."""
    kind = draw(st.sampled_from(["order", "order", "refund", "touch", "register", "link"]))
    c, at = draw(customers), draw(moments)
    if kind == "order":
        return tp(
            "OrderPlaced",
            c,
            at=at,
            amount_minor=draw(st.integers(1, 50_000)),
            currency=draw(st.sampled_from(["EUR", "USD"])),
            margin_minor=draw(st.none() | st.integers(0, 9_000)),
            items=draw(st.integers(1, 5)),
            order_id=f"O{draw(st.integers(1, 99))}",
        )
    if kind == "refund":
        return tp(
            "OrderRefunded",
            c,
            at=at,
            amount_minor=draw(st.integers(1, 9_000)),
            currency=draw(st.sampled_from(["EUR", "USD"])),
        )
    if kind == "touch":
        return tp(
            "InteractionRecorded",
            c,
            at=at,
            channel=draw(st.sampled_from(["web", "email", "phone"])),
            score=draw(st.none() | st.integers(0, 10)),
        )
    if kind == "link":
        return tp(
            "ContactLinkedToOrganisation",
            c,
            at=at,
            organisation_id=draw(st.sampled_from(["ORG1", "ORG2"])),
        )
    return tp("CustomerRegistered", c, at=at, region=draw(st.sampled_from(["north", "south"])))


@st.composite
def any_events(draw: st.DrawFn) -> Touchpoint:
    """Plain touchpoints, merges and unmerges (which the ledger may refuse)."""
    if draw(st.integers(0, 9)) == 0:
        absorbed, survivor = draw(st.lists(customers, min_size=2, max_size=2, unique=True))
        kind = draw(st.sampled_from(["CustomersMerged", "CustomersUnmerged"]))
        return tp(kind, absorbed, at=draw(moments), survivor_id=survivor)
    return draw(plain_events())


def split(events: list[Touchpoint], cuts: list[int]) -> list[list[Touchpoint]]:
    """``events`` in consecutive batches at the ``cuts`` positions."""
    edges = sorted({0, len(events), *(c % (len(events) + 1) for c in cuts)})
    return [events[a:b] for a, b in itertools.pairwise(edges) if b > a]


class World:
    """A ledger, its read-model store and projector in a throwaway folder."""

    def __init__(self, folder: Path, batch_size: int) -> None:
        self.ledger = Ledger(sqlite_env(str(folder / "ledger.sqlite")))
        self.engine = sqlite_engine(str(folder / "projections.sqlite"))
        self.store = SqlProjectionStore(self.engine)
        self.projector = Projector(self.ledger, self.store, batch_size=batch_size)
        self.models = ReadModels(lambda: self.ledger, self.projector, self.store)

    def record(self, batches: list[list[Touchpoint]]) -> None:
        for batch in batches:
            self.ledger.record_many(batch)

    def live(self, *tables: str) -> dict[str, list[tuple[Any, ...]]]:
        rows = dump(self.store, self.projector, self.projector.live())
        return {t: rows[t] for t in tables} if tables else rows

    def close(self) -> None:
        self.engine.dispose()
        self.ledger.close()


def world(batch_size: int) -> AbstractContextManager[World]:
    from contextlib import contextmanager

    @contextmanager
    def make() -> Iterator[World]:
        with tempfile.TemporaryDirectory() as folder:
            w = World(Path(folder), batch_size)
            try:
                yield w
            finally:
                w.close()

    return make()


def answers(models: ReadModels, customer: str, at: Moment) -> Any:
    """What a user sees for ``customer`` at ``at``: lifetime value and journey."""
    try:
        return models.values(customer, at), models.timeline(customer, at)
    except CustomerNotFound:
        return "not found"


@SETTINGS
@given(
    events=st.lists(any_events(), min_size=1, max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=5),
    cut=st.integers(0, 6),
    batch_size=st.integers(1, 25),
)
def test_replay_as_of_t_equals_the_live_state_captured_at_t(
    events: list[Touchpoint], cuts: list[int], cut: int, batch_size: int
) -> None:
    batches = split(events, cuts)
    cut %= len(batches) + 1
    with world(batch_size) as w:
        w.record(batches[:cut])
        w.projector.catch_up()
        captured = w.live()
        seen = {c: answers(w.models, c, Moment()) for c in CUSTOMERS}
        moment = moment_between()
        w.record(batches[cut:])

        snapshot = w.projector.replay("then", as_of=micros(moment), valid_at=None)
        assert dump(w.store, w.projector, {s.projection: s for s in snapshot}) == captured
        for c in CUSTOMERS:
            assert answers(w.models, c, Moment(snapshot="then")) == answers(
                w.models, c, Moment(as_of=moment)
            )
            # values at the moment are what the live models said then (tenure aside)
            then = answers(w.models, c, Moment(as_of=moment))
            assert _without_tenure(then) == _without_tenure(seen[c])


def _without_tenure(answer: Any) -> Any:
    if answer == "not found":
        return answer
    values, steps = answer
    return [(v.currency, v.orders, v.net_minor, v.margin_minor) for v in values], steps


@SETTINGS
@given(
    events=st.lists(plain_events(), min_size=1, max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=6),
    other_cuts=st.lists(st.integers(0, 40), max_size=6),
    order=st.randoms(use_true_random=False),
    batch_sizes=st.tuples(st.integers(1, 30), st.integers(1, 30)),
)
def test_value_and_journeys_do_not_depend_on_batches_or_arrival_order(
    events: list[Touchpoint],
    cuts: list[int],
    other_cuts: list[int],
    order: Any,
    batch_sizes: tuple[int, int],
) -> None:
    shuffled = list(events)
    order.shuffle(shuffled)
    with world(batch_sizes[0]) as first, world(batch_sizes[1]) as second:
        first.record(split(events, cuts))
        second.record(split(shuffled, other_cuts))
        first.projector.catch_up()
        second.projector.catch_up()
        recorded = _column("touches", "recorded", first.projector)
        assert first.live("ltv") == second.live("ltv")
        assert _drop(first.live("touches"), recorded) == _drop(second.live("touches"), recorded)
        assert first.live("customer_organisations") == second.live("customer_organisations")
        for c in CUSTOMERS:
            a, b = answers(first.models, c, Moment()), answers(second.models, c, Moment())
            if a != "not found":
                assert _without_tenure(a)[0] == _without_tenure(b)[0]
                assert [_step(s) for s in a[1]] == [_step(s) for s in b[1]]


def _column(table: str, name: str, projector: Projector) -> int:
    for p in projector.projections.values():
        for t in p.tables:
            if t.name == table:
                return t.names.index(name)
    raise KeyError(table)


def _drop(rows: dict[str, list[tuple[Any, ...]]], index: int) -> list[tuple[Any, ...]]:
    (table,) = rows.values()
    return sorted(r[:index] + r[index + 1 :] for r in table)


def _step(step: Any) -> tuple[Any, ...]:
    return (
        step.occurred_at,
        step.kind,
        step.channel,
        step.amount_minor,
        step.gap_seconds,
        step.channel_switch,
        step.event_id,
    )


class Interrupted(Exception):
    pass


def stop_at(batch: int) -> Callable[[int, int], None]:
    calls = [0]

    def progress(position: int, head: int) -> None:
        calls[0] += 1
        if calls[0] == batch:
            raise Interrupted

    return progress


@SETTINGS
@given(
    events=st.lists(any_events(), min_size=1, max_size=40),
    batch_size=st.integers(1, 10),
    stops=st.lists(st.integers(1, 8), max_size=3),
)
def test_an_interrupted_rebuild_rerun_ends_identical(
    events: list[Touchpoint], batch_size: int, stops: list[int]
) -> None:
    with world(batch_size) as w:
        w.record([events])
        w.projector.catch_up()
        uninterrupted = w.live()
        for stop in stops:
            with contextlib.suppress(Interrupted):
                w.projector.rebuild([], stop_at(stop))
        w.projector.rebuild([])
        assert w.live() == uninterrupted
        assert {s.status for s in w.store.table_sets()} == {"live"}
