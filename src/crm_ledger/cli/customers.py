"""Customer commands: the 360 view, lifetime value, journeys, consent; the as-of options."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from crm_ledger.cli.base import (
    Context,
    F,
    as_dict,
    cli,
    emit,
    emit_record,
    fields_of,
    logged,
    note,
    open_services,
    parse_when,
    pass_context,
    recorded_by,
)
from crm_ledger.errors import InvalidInput
from crm_ledger.projections.lifetime_value import Value, minor_unit_exponent
from crm_ledger.services.ports import Moment

if TYPE_CHECKING:
    from collections.abc import Iterator

    from crm_ledger.projections.journey_timeline import Touch
    from crm_ledger.services.read_models import Customer360View, ReadModels


# Reading.


@cli.group()
def customer() -> None:
    """Look at one customer."""


def _moment_options(f: F) -> F:
    """--as-of, --valid-at and --snapshot: which state of the ledger answers."""
    f = click.option(
        "--snapshot",
        metavar="NAME",
        help="Answer from a snapshot made by `crm-ledger replay --into NAME`.",
    )(f)
    f = click.option(
        "--valid-at",
        "valid_at",
        metavar="TIME",
        help="Count only events that occurred (business time) by TIME.",
    )(f)
    return click.option(
        "--as-of",
        "as_of",
        metavar="TIME",
        help="Answer as the ledger knew it at TIME: only events recorded by then (ISO 8601, "
        "or checkpoint:N for when checkpoint N was signed).",
    )(f)


def moment_from_options(
    ctx: Context, as_of: str | None, valid_at: str | None, snapshot: str | None
) -> Moment:
    if snapshot and (as_of or valid_at):
        msg = "--snapshot already fixes the moment; leave out --as-of/--valid-at"
        raise click.UsageError(msg)
    return Moment(snapshot=snapshot, as_of=recorded_by(ctx, as_of), valid_at=parse_when(valid_at))


@contextlib.contextmanager
def read_models(ctx: Context) -> Iterator[ReadModels]:
    """Read models over the ledger, caught up first (with a progress bar)."""
    with open_services(ctx, "projecting") as services:
        yield services.read_models


def _money(minor: int | None, currency: str | None) -> str:
    """Minor units as an amount for people (tables only; JSON and CSV keep minor units)."""
    if minor is None:
        return ""
    if currency is None:
        return f"{minor:,}"
    decimals = minor_unit_exponent(currency)
    return f"{minor / 10**decimals:,.{decimals}f} {currency}"


def _value_row(ctx: Context, v: Value) -> dict[str, Any]:
    if ctx.output == "table":
        return {
            "subject": v.subject,
            "orders": v.orders,
            "gross": _money(v.gross_minor, v.currency),
            "refunded": _money(v.refunded_minor, v.currency),
            "net": _money(v.net_minor, v.currency),
            "margin": _money(v.margin_minor, v.currency),
            "avg order": _money(v.average_order_minor, v.currency),
            "first order": f"{v.first_order_at:%Y-%m-%d}" if v.first_order_at else "",
            "last order": f"{v.last_order_at:%Y-%m-%d}" if v.last_order_at else "",
            "tenure d": v.tenure_days,
            "orders/month": v.orders_per_month,
        }
    return dataclasses.asdict(v)


@customer.command("show")
@click.argument("customer_id")
@_moment_options
@click.option(
    "--last",
    type=click.IntRange(0, 100),
    default=5,
    show_default=True,
    help="How many of the latest touches to show.",
)
@pass_context
def customer_show(
    ctx: Context,
    customer_id: str,
    as_of: str | None,
    valid_at: str | None,
    snapshot: str | None,
    last: int,
) -> None:
    """The 360 view of CUSTOMER_ID: profile, lifecycle, consent, identities and merges,
    organisations, lifetime value, latest touches, open tickets and latest survey score.

    With --as-of/--valid-at, the customer as the ledger knew them then. Role: agent
    (personal data; recorded in the access log); on a shared PostgreSQL store, not the reader
    role, which may not read customers' events (`crm-ledger db --help`).
    """
    at = moment_from_options(ctx, as_of, valid_at, snapshot)
    with open_services(ctx, "projecting") as services, logged(services, "360", customer_id, at):
        view = services.read_models.view(customer_id, at, last=last)
    record_ = _view_record(ctx, view)
    touches = [_touch_row(ctx, t) for t in view.last_touches]
    if ctx.output == "json":
        record_["lifetime_value"] = [dataclasses.asdict(v) for v in view.values]
        record_["last_touches"] = touches
        emit_record(ctx, record_, title="")
        return
    if ctx.output == "csv":
        record_["last_touches"] = touches
    emit_record(ctx, record_, title=f"customer {customer_id}{_moment_title(at)}")
    if ctx.output == "table" and touches:
        emit(ctx, touches, title=f"latest {len(touches)} touches")


def _view_record(ctx: Context, view: Customer360View) -> dict[str, Any]:
    """The 360 view as one record (LTV per currency: a sentence in tables, fields else)."""
    c = view.customer
    consent = {k: ("granted" if v["granted"] else "withdrawn") for k, v in c.consent.items()}
    record_: dict[str, Any] = {
        "customer_id": c.customer_id,
        **{f"profile.{k}": v for k, v in sorted(c.profile.items())},
        "lifecycle_stage": c.lifecycle_stage,
        "consent": consent,
        "identities": [f"{s}:{v}" for s, v in c.identities],
        "organisations": c.organisations,
        "merged_into": c.merged_into,
        "merged_from": c.merged_from,
        "erased": c.erased,
        "touchpoints": c.touchpoints,
        "channels": view.channels,
        "orders": c.orders,
        "refunds": c.refunds,
        "interactions": c.interactions,
        "active_subscriptions": c.active_subscriptions,
        "open_tickets": c.open_tickets,
        "latest_score": view.latest_score,
        "latest_score_at": view.latest_score_at,
        "first_occurred_at": c.first_occurred_at,
        "last_occurred_at": c.last_occurred_at,
        "first_recorded_at": c.first_recorded_at,
        "last_recorded_at": c.last_recorded_at,
        "stream_version": c.version,
    }
    for v in view.values:
        if ctx.output == "table":
            record_[f"ltv.{v.currency}"] = (
                f"net {_money(v.net_minor, v.currency)} from {v.orders} orders "
                f"(gross {_money(v.gross_minor, v.currency)}, "
                f"refunded {_money(v.refunded_minor, v.currency)})"
            )
        else:
            record_[f"ltv.{v.currency}.net_minor"] = v.net_minor
            record_[f"ltv.{v.currency}.orders"] = v.orders
            record_[f"ltv.{v.currency}.gross_minor"] = v.gross_minor
            record_[f"ltv.{v.currency}.refunded_minor"] = v.refunded_minor
    return record_


@customer.command("report")
@click.argument("customer_id")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="FILE.json or FILE.html; the other of the two is written beside it.",
)
@pass_context
def customer_report(ctx: Context, customer_id: str, out: Path) -> None:
    """The subject-access report of CUSTOMER_ID (a data subject's request): profile, every
    event with both times, consent history, identities, merges, value, predictions, and who
    accessed their data and when; after an erasure, what was erased and when. Written as
    JSON and as a readable HTML page. Role: admin (recorded in the access log); on a shared
    PostgreSQL store, the owner role."""
    from crm_ledger.services.reports import subject_access, to_html, to_json

    if out.suffix not in (".json", ".html"):
        raise InvalidInput(f"--out: FILE.json or FILE.html, got {out}")
    with (
        open_services(ctx, "projecting") as services,
        logged(services, "subject-access-report", customer_id),
    ):
        report = subject_access(services, customer_id)
    written = [out.with_suffix(".json"), out.with_suffix(".html")]
    written[0].write_text(to_json(report))
    written[1].write_text(to_html(report))
    emit_record(
        ctx,
        {
            "customer_id": customer_id,
            "events": len(report["events"]),
            "accesses": len(report["accesses"]),
            "erased": bool(report["erasure"]),
            "files": [str(p) for p in written],
        },
        title="subject-access report",
    )


@customer.command("find")
@click.argument("query")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@pass_context
def customer_find(ctx: Context, query: str, limit: int) -> None:
    """Find customers by QUERY: a customer id, an e-mail address (exact, any case), a phone
    number (its digits) or the start of a name (whole or last name, two letters at least).

    \b
    Examples:
      crm-ledger customer find C000142
      crm-ledger customer find ada.meyer@example.org
      crm-ledger customer find "+31 6 1234 5678"
      crm-ledger customer find "ada me"
    """
    from crm_ledger.services.directory import CustomerMatch

    with open_services(ctx, "projecting") as services:
        found = services.directory.find(query, limit)
    rows = [as_dict(m) for m in found]
    emit(ctx, rows, title=f"customers matching {query!r}", columns=fields_of(CustomerMatch))


@customer.command("list")
@click.option("--segment", help="Only this segment (retail, smb, enterprise, ...).")
@click.option("--region", help="Only this region.")
@click.option("--country", help="Only this country (ISO code).")
@click.option("--lifecycle", help="Only this lifecycle stage (lead, customer, subscriber, ...).")
@click.option(
    "--consent",
    metavar="PURPOSE[:CHANNEL]=yes|no",
    help="Only customers whose latest decision for PURPOSE (and CHANNEL; without one, the "
    "decision for every channel) is yes or no, e.g. marketing:email=no.",
)
@click.option("--organisation", metavar="ID", help="Only contacts of this organisation.")
@click.option("--after", metavar="CUSTOMER_ID", help="The page after this customer id.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@pass_context
def customer_list(
    ctx: Context,
    segment: str | None,
    region: str | None,
    country: str | None,
    lifecycle: str | None,
    consent: str | None,
    organisation: str | None,
    after: str | None,
    limit: int,
) -> None:
    """Customers (survivors of merges) matching every filter, by id, a page at a time; the
    last line says how to get the next page."""
    from crm_ledger.services.directory import DirectoryEntry, ListFilter

    chosen = ListFilter(segment, region, country, lifecycle, _consent(consent), organisation)
    with open_services(ctx, "projecting") as services:
        page = services.directory.customers(chosen, after=after, limit=limit)
    rows = [as_dict(e) for e in page.customers]
    emit(ctx, rows, title=f"customers ({len(rows)})", columns=fields_of(DirectoryEntry))
    if page.next_after:
        note(ctx, f"more may follow: add --after {page.next_after} for the next page")


def _consent(value: str | None) -> tuple[str, str, bool] | None:
    if value is None:
        return None
    subject, sep, answer = value.partition("=")
    purpose, _, channel = subject.partition(":")
    if not sep or not purpose or answer not in ("yes", "no"):
        msg = f"{value!r}: use PURPOSE[:CHANNEL]=yes|no, e.g. marketing:email=no"
        raise click.BadParameter(msg)
    return purpose, channel, answer == "yes"


def _moment_title(at: Moment) -> str:
    parts = []
    if at.snapshot:
        parts.append(f"snapshot {at.snapshot}")
    if at.as_of:
        parts.append(f"as of {at.as_of.isoformat()}")
    if at.valid_at:
        parts.append(f"valid at {at.valid_at.isoformat()}")
    return f" ({', '.join(parts)})" if parts else ""


def _touch_row(ctx: Context, t: Touch) -> dict[str, Any]:
    if ctx.output == "table":
        return {
            "occurred": f"{t.occurred_at:%Y-%m-%d %H:%M}",
            "kind": t.kind,
            "channel": t.channel or "",
            "device": t.device or "",
            "detail": t.detail or "",
            "amount": _money(t.amount_minor, t.currency),
            "score": t.score,
            "gap": _gap(t.gap_seconds),
            "switch": "yes" if t.channel_switch else "",
            "consent": "VIOLATION" if t.consent_violation else "",
        }
    return dataclasses.asdict(t)


def _gap(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


@cli.command()
@click.argument("customer_id", required=False)
@click.option(
    "--top",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Without CUSTOMER_ID: how many of the most valuable to list.",
)
@click.option(
    "--by",
    type=click.Choice(("customer", "organisation")),
    default="customer",
    show_default=True,
    help="List customers, or organisations (the sum of their contacts).",
)
@click.option("--currency", metavar="CODE", help="Rank by value in CODE [the most used].")
@_moment_options
@pass_context
def ltv(
    ctx: Context,
    customer_id: str | None,
    top: int,
    by: str,
    currency: str | None,
    as_of: str | None,
    valid_at: str | None,
    snapshot: str | None,
) -> None:
    """Lifetime value: orders, gross, refunds, net, margin, first and last order, tenure,
    average order value and purchase frequency, per currency (amounts in minor units in
    JSON and CSV). Merged customers count with their survivor.

    With CUSTOMER_ID, that customer; without, the --top most valuable customers or
    organisations.
    """
    at = moment_from_options(ctx, as_of, valid_at, snapshot)
    with read_models(ctx) as models:
        if customer_id:
            values = models.values(customer_id, at)
            title = f"lifetime value of {customer_id}"
        else:
            values = models.top(top, at, by_organisation=by == "organisation", currency=currency)
            title = f"top {top} {by}s by net value"
            message = models.currency_note(at, currency)
            if message:
                note(ctx, f"{message} (--currency chooses)")
    rows = [_value_row(ctx, v) for v in values]
    emit(ctx, rows, title=title + _moment_title(at), columns=fields_of(Value))


@cli.command()
@click.argument("customer_id")
@click.option(
    "--from", "start", metavar="TIME", help="Only touches that occurred at or after TIME."
)
@click.option("--to", "end", metavar="TIME", help="Only touches that occurred before TIME.")
@click.option("--channel", help="Only touches in this channel (email, web, phone, ...).")
@click.option("--limit", type=click.IntRange(1), help="Show only the last N touches.")
@_moment_options
@pass_context
def timeline(
    ctx: Context,
    customer_id: str,
    start: str | None,
    end: str | None,
    channel: str | None,
    limit: int | None,
    as_of: str | None,
    valid_at: str | None,
    snapshot: str | None,
) -> None:
    """CUSTOMER_ID's journey across channels in business-time order: kind, channel, device,
    the gap since the previous touch, and where the customer switched channel."""
    at = moment_from_options(ctx, as_of, valid_at, snapshot)
    with read_models(ctx) as models:
        steps = models.timeline(
            customer_id, at, start=parse_when(start), end=parse_when(end), channel=channel
        )
    if limit:
        steps = steps[-limit:]
    switches = sum(s.channel_switch for s in steps)
    emit(
        ctx,
        [_touch_row(ctx, s) for s in steps],
        title=f"journey of {customer_id}: {len(steps)} touches, {switches} channel switches"
        + _moment_title(at),
    )


@cli.group()
def consent() -> None:
    """Marketing consent: touches made after the customer withdrew it."""


@consent.command("violations")
@click.option("--snapshot", metavar="NAME", help="Within a replayed snapshot.")
@pass_context
def consent_violations_(ctx: Context, snapshot: str | None) -> None:
    """Every marketing touch (an outbound campaign interaction) that occurred while the
    customer's marketing consent for its channel (or for all channels) stood withdrawn,
    by the latest decision in business time. Exits 0; the list is the answer."""
    with read_models(ctx) as models:
        found = models.consent_violations(Moment(snapshot=snapshot))
    rows = [dataclasses.asdict(v) for v in found]
    if ctx.output == "table":
        for row in rows:
            for name in ("occurred_at", "recorded_at", "withdrawn_at"):
                row[name] = f"{row[name]:%Y-%m-%d %H:%M}"
            del row["event_id"]
    from crm_ledger.services.read_models import Violation

    title = f"{len(rows)} marketing touches after consent was withdrawn"
    emit(ctx, rows, title=title, columns=fields_of(Violation))
