"""A realistic, deterministic multi-channel customer history for demos, tests and benchmarks.

Customers join over the first half of an 18-month window. Each has a latent weekly purchase
rate, spend level, engagement level, preferred channels and a weekly chance of lapsing (the
buy-till-you-die story CLV models assume). Organisations have contacts; a few customers are
registered twice and merged, some change consent, a few are erased.

One Initiative (a loyalty programme for region ``north``) multiplies the purchase rate of the
customers in its scope by ``1 + uplift`` while it runs. ``Truth`` records that uplift and its
expected effect per exposed customer-week, so an analysis can be checked against it.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_ledger.aggregates import Touchpoint

START = datetime(2024, 1, 1, tzinfo=UTC)
WEEKS = 78  # 18 months
INITIATIVE_START_WEEK = 36
INITIATIVE_END_WEEK = 62
REGIONS = ("north", "south", "east", "west")
SEGMENTS = ("retail", "retail", "retail", "smb", "enterprise")
COUNTRIES = ("DE", "FR", "NL", "IE", "ES")
CURRENCY = "EUR"
FIRST_NAMES = ("Ada", "Ben", "Chloe", "Dev", "Eva", "Finn", "Grace", "Hugo", "Iris", "Jon")
LAST_NAMES = ("Meyer", "Dubois", "Jansen", "Murphy", "Garcia", "Rossi", "Novak", "Berg")
CHANNEL_KINDS: dict[str, tuple[str, ...]] = {
    "web": ("page_view", "page_view", "page_view", "search"),
    "mobile_app": ("app_open", "page_view", "push_open"),
    "email": ("email_open", "email_open", "email_click"),
    "phone": ("call",),
    "sms": ("sms_click",),
    "chat": ("chat",),
    "social": ("social_engagement",),
    "store": ("visit",),
    "field_sales": ("meeting",),
    "partner": ("referral",),
}
OUTBOUND_KINDS = frozenset({"email_open", "email_click", "push_open", "sms_click"})
DEVICES = {"web": ("desktop", "tablet", "mobile"), "mobile_app": ("ios", "android")}


@dataclass
class Truth:
    """What the generator did, to check analyses against."""

    seed: int
    customers: int
    organisations: int
    events: int = 0
    initiative_id: str = "loyalty-north"
    initiative_scope: dict[str, str] = field(default_factory=lambda: {"region": "north"})
    initiative_start: str = ""
    initiative_end: str = ""
    relative_uplift: float = 0.25
    expected_uplift_orders_per_customer_week: float = 0.0
    expected_uplift_net_revenue_minor_per_customer_week: float = 0.0
    exposed_customer_weeks: int = 0
    merged: list[str] = field(default_factory=list)
    erased: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)


@dataclass
class _Customer:
    customer_id: str
    joined_week: int
    region: str
    segment: str
    country: str
    purchase_rate: float  # orders a week
    spend_mu: float  # log-normal spend per order
    engagement: float  # interactions a week
    lapse: float  # weekly chance of lapsing
    channels: tuple[str, ...]
    lapsed_week: int | None = None


class Generator:
    """Builds the touchpoints of one synthetic history."""

    def __init__(self, seed: int, customers: int = 2500, organisations: int = 80) -> None:
        self.rng = random.Random(seed)
        self.truth = Truth(seed=seed, customers=customers, organisations=organisations)
        self.events: list[Touchpoint] = []
        self.n_customers = customers
        self.n_organisations = organisations

    def run(self) -> tuple[list[Touchpoint], Truth]:
        """All touchpoints in business-time order, and the truth about them."""
        self._initiative()
        self._organisations()
        people = [self._customer(i) for i in range(1, self.n_customers + 1)]
        for person in people:
            self._life(person)
        self._duplicates(people)
        self._erasures(people)
        self.events.sort(key=lambda e: e.occurred_at)
        self.truth.events = len(self.events)
        if self.truth.exposed_customer_weeks:
            self.truth.expected_uplift_orders_per_customer_week /= self.truth.exposed_customer_weeks
            self.truth.expected_uplift_net_revenue_minor_per_customer_week /= (
                self.truth.exposed_customer_weeks
            )
        return self.events, self.truth

    # Building blocks.

    def _id(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def _at(self, week: float) -> datetime:
        seconds = self.rng.uniform(0, 7 * 86400)
        moment = START + timedelta(weeks=week, seconds=seconds)
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

    def _emit(self, event_type: str, about: str, at: datetime, source: str, **data: Any) -> None:
        actor = data.pop("actor", None)
        self.events.append(Touchpoint(event_type, self._id(), about, at, source, actor, None, data))

    def _poisson(self, lam: float) -> int:
        limit, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1

    # The story.

    def _initiative(self) -> None:
        start = START + timedelta(weeks=INITIATIVE_START_WEEK)
        end = START + timedelta(weeks=INITIATIVE_END_WEEK)
        self.truth.initiative_start = start.isoformat()
        self.truth.initiative_end = end.isoformat()
        self._emit(
            "InitiativeStarted",
            self.truth.initiative_id,
            start,
            "strategy",
            name="Loyalty programme (north)",
            scope=dict(self.truth.initiative_scope),
            description="Points on every order for customers in the north region",
            actor="head-of-crm",
        )
        self._emit(
            "InitiativeEnded",
            self.truth.initiative_id,
            end,
            "strategy",
            outcome=None,
            actor="head-of-crm",
        )

    def _organisations(self) -> None:
        for i in range(1, self.n_organisations + 1):
            legal_form = self.rng.choice(("GmbH", "BV", "SA", "Ltd"))
            self._emit(
                "OrganisationRegistered",
                f"ORG{i:04d}",
                self._at(self.rng.uniform(0, 8)),
                "crm",
                name=f"{self.rng.choice(LAST_NAMES)} {legal_form}",
                industry=self.rng.choice(("retail", "media", "health", "public", "finance")),
                country=self.rng.choice(COUNTRIES),
                size=self.rng.choice(("small", "mid", "large")),
            )

    def _customer(self, i: int) -> _Customer:
        rng = self.rng
        channels = tuple(rng.sample(sorted(CHANNEL_KINDS), k=rng.randint(2, 4)))
        return _Customer(
            customer_id=f"C{i:06d}",
            joined_week=rng.randint(0, WEEKS // 2),
            region=rng.choice(REGIONS),
            segment=rng.choice(SEGMENTS),
            country=rng.choice(COUNTRIES),
            purchase_rate=rng.gammavariate(0.9, 0.12),
            spend_mu=rng.gauss(math.log(4500), 0.5),
            engagement=rng.gammavariate(1.5, 0.25),
            lapse=rng.betavariate(1.0, 40.0),
            channels=channels,
        )

    def _life(self, c: _Customer) -> None:
        self._register(c, c.customer_id, c.joined_week)
        for week in range(c.joined_week, WEEKS):
            if self.rng.random() < c.lapse:
                c.lapsed_week = week
                break
            self._week(c, week)

    def _register(self, c: _Customer, customer_id: str, week: int) -> None:
        rng = self.rng
        at = self._at(week)
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        email = f"{first}.{last}.{customer_id}@example.org".lower()
        self._emit(
            "CustomerRegistered",
            customer_id,
            at,
            "signup-service",
            name=f"{first} {last}",
            email=email,
            phone=f"+31 6{rng.randint(10000000, 99999999)}",
            address=None,
            country=c.country,
            region=c.region,
            segment=c.segment,
            lifecycle_stage="lead",
        )
        self._emit("IdentityLinked", customer_id, at, "signup-service", system="email", value=email)
        self._emit(
            "ConsentChanged",
            customer_id,
            at,
            "signup-service",
            purpose="marketing",
            channel=None,
            granted=rng.random() < 0.7,
            method="web_form",
        )
        if c.segment != "retail" and rng.random() < 0.6:
            org = f"ORG{rng.randint(1, self.n_organisations):04d}"
            role = rng.choice(("buyer", "decision_maker", "user", "finance"))
            self._emit(
                "ContactLinkedToOrganisation",
                customer_id,
                at,
                "crm",
                organisation_id=org,
                role=role,
            )

    def _exposed(self, c: _Customer, week: int) -> bool:
        in_scope = all(getattr(c, k) == v for k, v in self.truth.initiative_scope.items())
        return in_scope and INITIATIVE_START_WEEK <= week < INITIATIVE_END_WEEK

    def _week(self, c: _Customer, week: int) -> None:
        rate = c.purchase_rate
        if self._exposed(c, week):
            uplift = self.truth.relative_uplift
            mean_spend = math.exp(c.spend_mu + 0.3**2 / 2)
            self.truth.exposed_customer_weeks += 1
            self.truth.expected_uplift_orders_per_customer_week += rate * uplift
            self.truth.expected_uplift_net_revenue_minor_per_customer_week += (
                rate * uplift * mean_spend * (1 - 0.04 * 0.6)
            )
            rate *= 1 + uplift
        for _ in range(self._poisson(rate)):
            self._order(c, week)
        for _ in range(self._poisson(c.engagement)):
            self._interaction(c, week)
        self._occasional(c, week)

    def _order(self, c: _Customer, week: int) -> None:
        rng = self.rng
        at = self._at(week)
        amount = max(100, int(rng.lognormvariate(c.spend_mu, 0.3)))
        order_id = f"O-{self._id().hex[:12]}"
        self._emit(
            "OrderPlaced",
            c.customer_id,
            at,
            "shop",
            order_id=order_id,
            amount_minor=amount,
            currency=CURRENCY,
            margin_minor=int(amount * rng.uniform(0.15, 0.35)),
            items=rng.randint(1, 4),
            channel=rng.choice(("web", "mobile_app", "store")),
        )
        if rng.random() < 0.04:  # refunds: 4% of orders, 60% of the amount on average
            refund = max(1, int(amount * rng.choice((0.3, 0.6, 0.9))))
            self._emit(
                "OrderRefunded",
                c.customer_id,
                at + timedelta(days=rng.randint(2, 20)),
                "shop",
                order_id=order_id,
                amount_minor=refund,
                currency=CURRENCY,
                reason=rng.choice(("damaged", "not_as_described", "changed_mind")),
            )

    def _interaction(self, c: _Customer, week: int) -> None:
        rng = self.rng
        channel = rng.choice(c.channels)
        kind = rng.choice(CHANNEL_KINDS[channel])
        self._emit(
            "InteractionRecorded",
            c.customer_id,
            self._at(week),
            f"{channel}-tracker",
            channel=channel,
            device=rng.choice(DEVICES[channel]) if channel in DEVICES else None,
            direction="outbound" if kind in OUTBOUND_KINDS else "inbound",
            kind=kind,
            score=None,
            campaign=f"cmp-{week // 4:02d}" if kind in OUTBOUND_KINDS else None,
            note=None,
        )

    def _occasional(self, c: _Customer, week: int) -> None:
        rng = self.rng
        if rng.random() < 0.012:
            self._ticket(c, week)
        if rng.random() < 0.004:
            self._emit(
                "SubscriptionStarted",
                c.customer_id,
                self._at(week),
                "billing",
                subscription_id=f"S-{c.customer_id}-{week}",
                plan="plus",
                amount_minor=999,
                currency=CURRENCY,
                period="month",
            )
        if rng.random() < 0.003:
            self._emit(
                "ConsentChanged",
                c.customer_id,
                self._at(week),
                "preference-centre",
                purpose="marketing",
                channel=rng.choice(("email", "sms", None)),
                granted=rng.random() < 0.3,
                method="preference_centre",
            )

    def _ticket(self, c: _Customer, week: int) -> None:
        """A support ticket, resolved two days later, sometimes followed by a survey."""
        rng = self.rng
        ticket = f"T-{self._id().hex[:10]}"
        at = self._at(week)
        self._emit(
            "SupportTicketOpened",
            c.customer_id,
            at,
            "helpdesk",
            ticket_id=ticket,
            channel=rng.choice(("phone", "email", "chat")),
            priority="normal",
            subject="Question about my order",
        )
        self._emit(
            "SupportTicketResolved",
            c.customer_id,
            at + timedelta(days=2),
            "helpdesk",
            ticket_id=ticket,
            resolution=None,
            satisfaction=rng.randint(3, 10),
        )
        if rng.random() < 0.5:
            self._emit(
                "InteractionRecorded",
                c.customer_id,
                at + timedelta(days=3),
                "surveys",
                channel="email",
                device=None,
                direction="inbound",
                kind="survey_response",
                score=rng.randint(0, 10),
                campaign=None,
                note=None,
            )

    def _duplicates(self, people: list[_Customer]) -> None:
        for c in self.rng.sample(people, k=max(1, len(people) // 100)):
            duplicate_id = f"{c.customer_id}-DUP"
            self._register(c, duplicate_id, c.joined_week)
            at = self._at(min(WEEKS - 1, c.joined_week + 2))
            self._emit(
                "CustomersMerged",
                duplicate_id,
                at,
                "mdm",
                survivor_id=c.customer_id,
                reason="same email",
                actor="data-steward",
            )
            self.truth.merged.append(duplicate_id)

    def _erasures(self, people: list[_Customer]) -> None:
        for c in self.rng.sample(people, k=max(1, len(people) // 400)):
            self._emit(
                "CustomerErased",
                c.customer_id,
                self._at(WEEKS),
                "privacy-desk",
                reason="right to erasure request",
                actor="dpo",
            )
            self.truth.erased.append(c.customer_id)


def generate(seed: int, customers: int = 2500) -> tuple[list[Touchpoint], Truth]:
    """The touchpoints and truth of the synthetic history for ``seed``."""
    return Generator(seed, customers=customers).run()


#: Customers the README's examples look at: always among the corrected ones.
SHOWCASE = ("C000042", "C000142")

#: Of the events that occurred in the weeks just before the split, the share that arrives late.
LATE_SHARE = 0.05
LATE_WINDOW = timedelta(weeks=8)
CORRECTED_SHARE = 0.03


@dataclass
class Waves:
    """A history told in two deliveries, so that "what did the ledger know then" differs from
    "what happened then": the backfill (what occurred before the split, except late arrivals),
    then everything after the split, the late arrivals, and backdated profile corrections."""

    backfill: list[Touchpoint]
    later: list[Touchpoint]
    late: int
    corrected: list[str]


def split_waves(events: list[Touchpoint], truth: Truth, split_at: datetime) -> Waves:
    """Split a generated history at ``split_at`` (business time) into two deliveries.

    Late arrivals are interactions and unrefunded orders from the weeks before the split,
    of customers never merged or erased (so every event stays valid when it arrives);
    corrections are ProfileUpdated events backdated to a day after registration, fixing the
    segment and e-mail a customer was registered with.
    """
    rng = random.Random(truth.seed * 7919 + 1)
    untouchable = set(truth.merged) | set(truth.erased)
    refunded = {e.data["order_id"] for e in events if e.event_type == "OrderRefunded"}
    backfill: list[Touchpoint] = []
    later: list[Touchpoint] = []
    late = 0
    for event in events:
        if event.occurred_at >= split_at:
            later.append(event)
        elif _may_arrive_late(event, split_at, untouchable, refunded) and rng.random() < LATE_SHARE:
            later.append(event)
            late += 1
        else:
            backfill.append(event)
    corrections = _corrections(backfill, untouchable, rng)
    later += corrections
    later.sort(key=lambda e: e.occurred_at)
    return Waves(backfill, later, late, sorted(c.customer_id for c in corrections))


def _may_arrive_late(
    event: Touchpoint, split_at: datetime, untouchable: set[str], refunded: set[str]
) -> bool:
    if event.customer_id in untouchable or event.occurred_at < split_at - LATE_WINDOW:
        return False
    if event.event_type == "InteractionRecorded":
        return True
    return event.event_type == "OrderPlaced" and event.data["order_id"] not in refunded


def _corrections(
    backfill: list[Touchpoint], untouchable: set[str], rng: random.Random
) -> list[Touchpoint]:
    registrations = [
        e
        for e in backfill
        if e.event_type == "CustomerRegistered" and e.customer_id not in untouchable
    ]
    chosen = [
        e for e in registrations if e.customer_id in SHOWCASE or rng.random() < CORRECTED_SHARE
    ]
    corrections = []
    for registered in chosen:
        segment = "smb" if registered.data["segment"] == "retail" else "retail"
        email = str(registered.data["email"]).replace("@example.org", "@mail.example.org")
        data = dict.fromkeys(("name", "phone", "address", "country", "region", "lifecycle_stage"))
        data |= {"email": email, "segment": segment}
        corrections.append(
            Touchpoint(
                "ProfileUpdated",
                uuid.UUID(int=rng.getrandbits(128), version=4),
                registered.customer_id,
                registered.occurred_at + timedelta(days=1),
                "data-quality",
                "dq-review",
                None,
                data,
            )
        )
    return corrections
