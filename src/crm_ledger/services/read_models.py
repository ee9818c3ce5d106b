"""Answers from the read models: lifetime value, journeys, the 360 view, initiative impact.

Live answers come from the live table sets (caught up with the log first); ``snapshot``
answers from a replayed snapshot; ``as_of`` / ``valid_at`` answers for one customer are
projected in memory from that customer's own streams, with the same projection code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crm_ledger.aggregates import customer_uuid
from crm_ledger.analytics.comparison import (
    CONTROL,
    EXPOSED,
    METRICS,
    PASSIVE,
    Activity,
    Impact,
)
from crm_ledger.errors import CustomerNotFound, InitiativeNotFound, InvalidInput, NotBuilt
from crm_ledger.projections.contributions import (
    merge_rows,
    micros,
    moment,
    project,
    week_of,
)
from crm_ledger.projections.customer_360 import CUSTOMERS, ORGANISATION_LINKS, SCOPE_ATTRIBUTES
from crm_ledger.projections.journey_timeline import (
    TOUCHES,
    JourneyTimeline,
    Touch,
    consent_violations,
    journey,
)
from crm_ledger.projections.lifetime_value import LTV, LifetimeValue, Value
from crm_ledger.services.ports import LIVE, Moment, QueryStore

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from crm_ledger.aggregates import Initiative
    from crm_ledger.application import CustomerView, Ledger, LogRecord
    from crm_ledger.projections.contributions import Changes, Table
    from crm_ledger.projections.runtime import Projector, TableSet


@dataclass(frozen=True, slots=True)
class Customer360View:
    """Everything about one customer on one screen."""

    customer: CustomerView
    values: list[Value]
    last_touches: list[Touch]
    touches: int
    channels: dict[str, int]
    latest_score: int | None
    latest_score_at: datetime | None


@dataclass(frozen=True, slots=True)
class InitiativeSummary:
    """An initiative: its id, name, scope and window."""

    initiative_id: str
    name: str | None
    scope: dict[str, str]
    started_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class Comparison:
    """An initiative's impact, with who was compared."""

    initiative: str
    name: str | None
    scope: dict[str, str]
    control: dict[str, str] | None
    currency: str | None
    started_at: datetime
    ended_at: datetime | None
    impact: Impact
    notes: list[str]
    #: Where the data ends (business time): a week after it began is partial.
    data_end: datetime | None = None


@dataclass(frozen=True, slots=True)
class Violation:
    """A marketing touch sent while marketing consent for its channel was withdrawn."""

    customer_id: str
    occurred_at: datetime
    recorded_at: datetime
    channel: str | None
    campaign: str | None
    kind: str | None
    withdrawn_at: datetime
    event_id: str


class ReadModels:
    """Queries over the projections, live, in a snapshot, or as of a moment."""

    def __init__(
        self,
        ledger: Callable[[], Ledger],
        projector: Projector,
        store: QueryStore,
        *,
        progress: Callable[[int, int], None] | None = None,
        read_only: bool = False,
    ) -> None:
        self._ledger = ledger
        self.projector = projector
        self.store = store
        self.progress = progress
        self.read_only = read_only
        self._live: dict[str, TableSet] | None = None

    @property
    def ledger(self) -> Ledger:
        """The Ledger, opened on first use (a query of the read models needs none)."""
        return self._ledger()

    def catch_up(self) -> int:
        """Bring the live read models up to the head of the log (the explicit write step of
        a read-only reader); the number of records applied."""
        applied = self.projector.catch_up(self.progress)
        self._live = None
        return applied

    def sets(self, at: Moment) -> dict[str, TableSet]:
        """The table sets that answer at ``at``: a snapshot's, or the live ones, caught up
        first unless these read models are read-only (then as far as they have got)."""
        if at.snapshot:
            return self.projector.snapshot_sets(at.snapshot)
        if self._live is not None:
            return self._live
        if not self.read_only:
            self.catch_up()
        live = self.projector.live()
        missing = sorted(set(self.projector.projections) - set(live))
        if missing:  # only when read-only: catching up builds them all
            msg = f"the read models {', '.join(missing)} are not built yet; catch up first"
            raise NotBuilt(msg)
        self._live = live
        return live

    # One customer.

    def values(self, customer_id: str, at: Moment = LIVE) -> list[Value]:
        """The customer's lifetime value per currency (merged customers included)."""
        rows = self._rows_of(customer_id, at, (LTV,))[LTV.name]
        return self._values(customer_id, rows, at)

    def _values(self, customer_id: str, rows: list[dict[str, Any]], at: Moment) -> list[Value]:
        by_currency: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_currency.setdefault(row["currency"], []).append(row)
        reference = self._reference(at)
        return [
            Value.of(customer_id, merged, reference)
            for currency in sorted(by_currency)
            if (merged := merge_rows(LTV, by_currency[currency])) is not None
        ]

    def timeline(
        self,
        customer_id: str,
        at: Moment = LIVE,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        channel: str | None = None,
    ) -> list[Touch]:
        """The customer's journey, optionally within [start, end) and in one channel."""
        steps = journey(self._rows_of(customer_id, at, (TOUCHES,))[TOUCHES.name])
        return [
            s
            for s in steps
            if (start is None or s.occurred_at >= start)
            and (end is None or s.occurred_at < end)
            and (channel is None or s.channel == channel)
        ]

    def view(self, customer_id: str, at: Moment = LIVE, *, last: int = 5) -> Customer360View:
        """The 360 view: the customer, their value, and their latest touches."""
        if at.replays_history:
            customer = self.ledger.customer_as_of(customer_id, as_of=at.as_of, valid_at=at.valid_at)
        else:
            customer = self.ledger.customer(customer_id)
        rows = self._rows_of(customer_id, at, (LTV, TOUCHES))
        steps = journey(rows[TOUCHES.name])
        values = self._values(customer_id, rows[LTV.name], at)
        scored = [s for s in steps if s.score is not None]
        channels: dict[str, int] = {}
        for s in steps:
            if s.channel:
                channels[s.channel] = channels.get(s.channel, 0) + 1
        return Customer360View(
            customer=customer,
            values=values,
            last_touches=steps[-last:][::-1],
            touches=len(steps),
            channels=dict(sorted(channels.items(), key=lambda kv: -kv[1])),
            latest_score=scored[-1].score if scored else None,
            latest_score_at=scored[-1].occurred_at if scored else None,
        )

    # Across customers.

    def top(
        self,
        limit: int,
        at: Moment = LIVE,
        *,
        by_organisation: bool = False,
        currency: str | None = None,
    ) -> list[Value]:
        """The customers (or organisations) with the highest net value."""
        if at.replays_history:
            msg = "--as-of/--valid-at apply to one customer; for everyone, replay a snapshot"
            raise InvalidInput(msg)
        sets = self.sets(at)
        ltv = (LTV, sets["lifetime_value"].label)
        currency = currency or self._main_currency(ltv)
        if currency is None:
            return []
        links = (ORGANISATION_LINKS, sets["customer_360"].label) if by_organisation else None
        rows = self.store.top_values(
            ltv, (CUSTOMERS, sets["customer_360"].label), links, currency=currency, limit=limit
        )
        reference = self._reference(at)
        return [Value.of(r["subject"], r, reference) for r in rows]

    def initiatives(self) -> list[InitiativeSummary]:
        """Every initiative the ledger knows."""
        return [
            InitiativeSummary(i.initiative_id, i.name, dict(i.scope), i.started_at, i.ended_at)
            for i in self.ledger.initiatives()
        ]

    def compare(
        self,
        initiative_id: str,
        at: Moment = LIVE,
        *,
        control: Mapping[str, str] | None = None,
        metric: str = "net_revenue",
        currency: str | None = None,
        resamples: int = 2000,
    ) -> Comparison:
        """Value per customer-week before, during and after an initiative, exposed against
        control (everyone outside the scope unless ``control`` selects a group)."""
        initiative, started = self._initiative(initiative_id, at, metric, control)
        scope = dict(initiative.scope)
        sets = self.sets(at)
        requested = currency
        currency = currency or self._main_currency((LTV, sets["lifetime_value"].label))
        groups, canonical = self._groups(sets, scope, control)
        touches = (TOUCHES, sets["journey_timeline"].label)
        rows = self.store.weekly_activity(touches, currency or "", sorted(PASSIVE))
        activity = [
            Activity(canonical.get(stream, stream), week, net, orders, interactions, active > 0)
            for stream, week, active, orders, net, interactions in rows
            if week is not None
        ]
        ended = initiative.ended_at
        from crm_ledger.analytics.impact import measure  # numpy: only when comparing

        impact = measure(
            activity,
            groups,
            metric=metric,
            start_week=week_of(micros(started)),
            end_week=week_of(micros(ended)) if ended else None,
            resamples=resamples,
        )
        _check_groups(impact, scope, control, currency if metric == "net_revenue" else None)
        note = self.currency_note(at, requested) if metric == "net_revenue" else None
        return Comparison(
            initiative=initiative_id,
            name=initiative.name,
            scope=scope,
            control=dict(control) if control else None,
            currency=currency if metric == "net_revenue" else None,
            started_at=started,
            ended_at=ended,
            impact=impact,
            notes=[note] if note else [],
            data_end=_end_of(self.store.last_occurred(touches, sorted(PASSIVE))),
        )

    # Helpers.

    def _initiative(
        self, initiative_id: str, at: Moment, metric: str, control: Mapping[str, str] | None
    ) -> tuple[Initiative, datetime]:
        """The initiative to compare and its start, once the request is known to make
        sense."""
        if metric not in METRICS:
            raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        initiative = self.ledger.initiative(initiative_id)
        if initiative is None or initiative.started_at is None:
            raise InitiativeNotFound(initiative_id)
        for attribute in (*initiative.scope, *(control or {})):
            if attribute not in SCOPE_ATTRIBUTES:
                allowed = ", ".join(SCOPE_ATTRIBUTES)
                msg = f"cannot select customers by {attribute!r}; use {allowed}"
                raise InvalidInput(msg)
        if at.replays_history:
            msg = "compare works on everyone: replay a snapshot and compare within it"
            raise InvalidInput(msg)
        return initiative, initiative.started_at

    def _groups(
        self,
        sets: Mapping[str, TableSet],
        scope: Mapping[str, str],
        control: Mapping[str, str] | None,
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Each surviving customer's group, and each stream's surviving customer."""
        rows = self.store.all_rows(CUSTOMERS, sets["customer_360"].label)
        canonical: dict[str, str] = {}
        groups: dict[str, str] = {}
        for row in rows:
            stream, survivor = row["stream"], row["merged_into"]
            canonical[stream] = customer_uuid(survivor).hex if survivor else stream
            if survivor:
                continue
            if all(row.get(k) == v for k, v in scope.items()):
                groups[stream] = EXPOSED
            elif control is None or all(row.get(k) == v for k, v in control.items()):
                groups[stream] = CONTROL
        return groups, canonical

    def consent_violations(self, at: Moment = LIVE) -> list[Violation]:
        """Every marketing touch made while the customer's marketing consent for its channel
        stood withdrawn, oldest first."""
        sets = self.sets(at)
        names = {
            r["stream"]: r["customer_id"]
            for r in self.store.all_rows(CUSTOMERS, sets["customer_360"].label)
        }
        by_stream: dict[str, list[dict[str, Any]]] = {}
        for row in self.store.consent_rows((TOUCHES, sets["journey_timeline"].label)):
            by_stream.setdefault(row["stream"], []).append(row)
        found = []
        for stream, rows in by_stream.items():
            flagged = consent_violations(rows)
            for row in rows:
                if row["event_id"] in flagged:
                    found.append(
                        Violation(
                            customer_id=names.get(stream, stream),
                            occurred_at=moment(row["occurred"]),
                            recorded_at=moment(row["recorded"]),
                            channel=row["channel"],
                            campaign=row["campaign"],
                            kind=row["detail"],
                            withdrawn_at=moment(flagged[row["event_id"]]),
                            event_id=row["event_id"],
                        )
                    )
        return sorted(found, key=lambda v: (v.occurred_at, v.customer_id))

    def canonical_ids(self, sets: Mapping[str, TableSet]) -> dict[str, str]:
        """Each customer stream's customer id, or its merge survivor's."""
        rows = self.store.all_rows(CUSTOMERS, sets["customer_360"].label)
        return {r["stream"]: r["merged_into"] or r["customer_id"] for r in rows}

    def _rows_of(
        self, customer_id: str, at: Moment, specs: Sequence[Table]
    ) -> dict[str, list[dict[str, Any]]]:
        """Rows of the customer (and whoever was merged into them) in each of ``specs``: from
        the read models, or projected in memory from their streams when travelling in time."""
        if at.replays_history:
            changes = self._project_as_of(customer_id, at)
            return {spec.name: changes.rows(spec.name) for spec in specs}
        sets = self.sets(at)
        streams = self._streams(customer_id, sets["customer_360"].label)
        owners = {LTV.name: "lifetime_value", TOUCHES.name: "journey_timeline"}
        return {
            spec.name: self.store.rows(spec, sets[owners[spec.name]].label, "stream", streams)
            for spec in specs
        }

    def stream_ids(self, customer_id: str) -> list[str]:
        """The customer's stream and those of the customers merged into them."""
        return self._streams(customer_id, self.sets(LIVE)["customer_360"].label)

    def _streams(self, customer_id: str, label: str) -> list[str]:
        own = self.store.rows(CUSTOMERS, label, "customer_id", [customer_id])
        if not own:
            raise CustomerNotFound(customer_id)
        merged = self.store.rows(CUSTOMERS, label, "merged_into", [customer_id])
        return [r["stream"] for r in own + merged]

    def _project_as_of(self, customer_id: str, at: Moment) -> Changes:
        own = [r for r in self.ledger.read_stream(customer_id) if at.counts(r)]
        if not own:
            raise CustomerNotFound(customer_id)
        records = own + [
            r
            for member in _merged_from(own)
            for r in self.ledger.read_stream(member)
            if at.counts(r)
        ]
        return project((LifetimeValue(), JourneyTimeline()), records)

    def _main_currency(self, ltv: tuple[Table, str]) -> str | None:
        found = self.store.currencies(ltv)
        return found[0][0] if found else None

    def currency_note(self, at: Moment, currency: str | None) -> str | None:
        """What a ranking or comparison in one currency leaves out, or picked for the caller:
        None when the ledger holds one currency and none was asked for."""
        sets = self.sets(at)
        found = self.store.currencies((LTV, sets["lifetime_value"].label))
        if not found:
            return None
        chosen = currency or found[0][0]
        others = [f"{code} ({orders:,} orders)" for code, orders in found if code != chosen]
        if not others and currency is None:
            return None
        picked = "" if currency else f"the most used currency, {chosen}, was chosen; "
        left = f"values in {', '.join(others)} are not counted" if others else ""
        if chosen not in {code for code, _ in found}:
            left = f"the ledger holds no {chosen} orders (it holds {', '.join(others)})"
        return (picked + left).rstrip("; ")

    def _reference(self, at: Moment) -> datetime:
        if at.as_of or at.valid_at:
            return min(t for t in (at.as_of, at.valid_at) if t is not None)
        if at.snapshot:
            s = next(iter(self.projector.snapshot_sets(at.snapshot).values()))
            times = [t for t in (s.as_of, s.valid_at) if t is not None]
            return moment(min(times)) if times else moment(s.created)
        return datetime.now(UTC)


def _merged_from(records: Sequence[LogRecord]) -> list[str]:
    """Customers merged into the stream of ``records`` (absorbed and not released since)."""
    merged: list[str] = []
    for r in records:
        if r.kind == "CustomerAbsorbed" and r.data["absorbed_id"] not in merged:
            merged.append(r.data["absorbed_id"])
        elif r.kind == "CustomerReleased" and r.data["released_id"] in merged:
            merged.remove(r.data["released_id"])
    return merged


def _check_groups(
    impact: Impact,
    scope: Mapping[str, str],
    control: Mapping[str, str] | None,
    currency: str | None,
) -> None:
    """Refuse a comparison with an empty side: an estimate against nothing is no answer."""
    during = {g.group: g.customers for g in impact.groups if g.period == "during"}
    for group, who in ((EXPOSED, scope), (CONTROL, control)):
        if during.get(group, 0) == 0:
            described = ", ".join(f"{k}={v}" for k, v in (who or {}).items()) or "the rest"
            unit = f" in {currency}" if currency else ""
            msg = (
                f"the {group} group ({described}) has no activity{unit} during the "
                "initiative's window: there is nothing to compare"
            )
            raise InvalidInput(msg)


def _end_of(last: int | None) -> datetime | None:
    return None if last is None else moment(last)
