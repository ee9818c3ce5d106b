"""The ``crm-ledger`` command line: parse, call bootstrap and the use cases, print."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from crm_ledger import __version__, bootstrap
from crm_ledger.adapters import sources
from crm_ledger.adapters.avro import to_json
from crm_ledger.adapters.charts import impact_chart, tracking_chart
from crm_ledger.adapters.kafka import IngestStats, dead_letters, lag, redrive
from crm_ledger.aggregates import customer_uuid
from crm_ledger.analytics.impact import METRICS
from crm_ledger.application import BatchResult, Rejection
from crm_ledger.audit import verify_export
from crm_ledger.config import Settings
from crm_ledger.errors import (
    CrmLedgerError,
    IncompatibleSchema,
    InvalidEventInBatch,
    InvalidInput,
    UnreadableFile,
)
from crm_ledger.projections.lifetime_value import minor_unit_exponent
from crm_ledger.projections.model import micros, moment
from crm_ledger.projections.views import Moment

if TYPE_CHECKING:
    from crm_ledger.adapters.avro import Codec
    from crm_ledger.aggregates import Touchpoint
    from crm_ledger.application import Ledger
    from crm_ledger.projections.journey_timeline import Touch
    from crm_ledger.projections.lifetime_value import Value
    from crm_ledger.projections.predictive import ClvModel, Predictions
    from crm_ledger.projections.views import Comparison, ReadModels

F = TypeVar("F", bound=Callable[..., Any])
FORMATS = ("table", "json", "csv")


class Context:
    """What the global options decided, handed to every command."""

    def __init__(self, settings: Settings, output: str) -> None:
        self.settings = settings
        self.output = output
        # Off a terminal (pipes, CI logs) rich would wrap tables at 80 columns.
        self.out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)


pass_context = click.make_pass_decorator(Context)


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        msg = f"{value!r} is not an ISO 8601 time such as 2025-03-01T12:00:00Z"
        raise click.BadParameter(msg) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _moment_of(value: str) -> datetime:
    moment = _when(value)
    if moment is None:
        raise click.BadParameter("a time is required")
    return moment


# Output.


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()  # full precision: a printed time must work as --as-of
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, sort_keys=True)
    if value is None:
        return ""
    return str(value)


def emit(ctx: Context, rows: Sequence[dict[str, Any]], title: str | None = None) -> None:
    """Print rows as a table, JSON (a list of objects) or CSV, by ``--format``."""
    if ctx.output == "json":
        click.echo(json.dumps(list(rows), default=_json_default, indent=2))
        return
    columns = list(rows[0]) if rows else []
    if ctx.output == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _plain(v) for k, v in row.items()} for row in rows)
        click.echo(buffer.getvalue(), nl=False)
        return
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_plain(row[c]) for c in columns))
    ctx.out.print(table)


def emit_record(ctx: Context, record: dict[str, Any], title: str) -> None:
    """Print one object: a two-column table, a JSON object, or CSV field,value rows."""
    if ctx.output == "json":
        click.echo(json.dumps(record, default=_json_default, indent=2))
        return
    emit(ctx, [{"field": k, "value": v} for k, v in record.items()], title=title)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


# Errors: one line, exit code 1.


class LedgerGroup(click.Group):
    """Turns every CrmLedgerError, and every usage error, into one line on stderr and exit
    code 1."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the CLI; a usage error is one line naming the problem and where help is."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as e:
            where = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
            click.echo(f"crm-ledger: error: {e.format_message()}{where}", err=True)
            sys.exit(1)
        except click.ClickException as e:
            click.echo(f"crm-ledger: error: {e.format_message()}", err=True)
            sys.exit(1)
        except click.Abort:
            click.echo("crm-ledger: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, reporting ledger errors without a traceback."""
        try:
            return super().invoke(ctx)
        except CrmLedgerError as e:
            click.echo(f"crm-ledger: error: {e}", err=True)
            ctx.exit(1)
        except BrokenPipeError:
            ctx.exit(1)


@click.group(cls=LedgerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crm-ledger")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the embedded SQLite ledger [env CRM_LEDGER_DATA_DIR; "
    "default ~/.local/share/crm-ledger].",
)
@click.option(
    "--database-url",
    metavar="URL",
    help="PostgreSQL store, postgresql://user:pass@host:5432/db, instead of SQLite "
    "[env CRM_LEDGER_DATABASE_URL].",
)
@click.option(
    "--database-schema",
    metavar="NAME",
    help="PostgreSQL schema to keep the ledger in [env CRM_LEDGER_DATABASE_SCHEMA; public].",
)
@click.option(
    "--schemas-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Folder of the Avro schemas and registry.json [env CRM_LEDGER_SCHEMAS_DIR].",
)
@click.option(
    "--keys-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the keys that must not sit with the data (checkpoint signing, snapshot "
    "seal) [env CRM_LEDGER_KEYS_DIR; default DATA_DIR.keys beside the data folder].",
)
@click.option(
    "--bootstrap-servers",
    metavar="HOST:PORT",
    help="Kafka cluster for publish, ingest, dlq and lag [env KAFKA_BOOTSTRAP_SERVERS].",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="How to print results.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    data_dir: Path | None,
    database_url: str | None,
    database_schema: str | None,
    schemas_dir: Path | None,
    keys_dir: Path | None,
    bootstrap_servers: str | None,
    output: str,
) -> None:
    """crm-ledger: every customer touchpoint as an immutable, schema-checked event.

    Record and import touchpoints, then look at customers and their full history. The
    ledger lives in an SQLite file under --data-dir unless --database-url names PostgreSQL.
    """
    settings = Settings.from_env(
        data_dir=data_dir,
        database_url=database_url,
        database_schema=database_schema,
        schemas_dir=schemas_dir,
        keys_dir=keys_dir,
        kafka_bootstrap=bootstrap_servers,
    )
    ctx.obj = Context(settings, output)


# init, record, import.


@cli.command()
@pass_context
def init(ctx: Context) -> None:
    """Create the ledger's store (SQLite file or PostgreSQL tables)."""
    with bootstrap.open_ledger(ctx.settings, create=True) as ledger:
        where = ctx.settings.database_url or str(ctx.settings.sqlite_path)
        created = bootstrap.create_signing_key(ctx.settings)
        emit_record(
            ctx,
            {
                "store": ctx.settings.store_name,
                "location": where,
                "events": ledger.count_events(),
                "signing_key": str(bootstrap.audit_keys_dir(ctx.settings))
                + (" (created)" if created else ""),
            },
            title="ledger ready",
        )


@cli.command()
@click.argument("source", type=click.File("r"), default="-")
@pass_context
def record(ctx: Context, source: io.TextIOBase) -> None:
    """Record one event given as a JSON object in SOURCE (a file, or - for stdin).

    \b
    Example:
      echo '{"type": "InteractionRecorded", "event_id": "…", "customer_id": "C1",
             "occurred_at": "2025-03-01T10:00:00Z", "source": "web", "channel": "web",
             "direction": "inbound", "kind": "page_view"}' | crm-ledger record
    """
    name = getattr(source, "name", "<stdin>")
    try:
        obj = json.loads(source.read())
    except ValueError as e:
        msg = f"{name}: not a JSON object ({e})"
        raise InvalidInput(msg) from None
    codec = bootstrap.open_codec(ctx.settings)
    try:
        tp = codec.from_json(obj)
    except InvalidInput as e:
        raise InvalidInput(f"{name}: {e}") from None
    with bootstrap.open_ledger(ctx.settings) as ledger:
        stored = ledger.record(tp)
    emit_record(
        ctx,
        {
            "event_id": str(tp.event_id),
            "type": tp.event_type,
            "customer_id": tp.customer_id,
            "result": "recorded" if stored else "duplicate (already in the ledger)",
        },
        title="record",
    )


def _reader(path: Path, kind: str, codec: Codec) -> Iterator[tuple[int, Touchpoint]]:
    if kind == "auto":
        suffix = path.suffix.lower()
        if suffix == ".avro":
            kind = "avro"
        elif suffix in (".jsonl", ".ndjson", ".json"):
            kind = "jsonl"
        elif path.name.upper().startswith("CDNOW"):
            kind = "cdnow"
        else:
            msg = f"{path}: cannot tell the format from the name; pass --kind"
            raise UnreadableFile(msg)
    if kind == "avro":
        return sources.read_avro(path, codec)
    if kind == "cdnow":
        return sources.read_cdnow(path)
    return sources.read_jsonl(path, codec)


def _progress(ctx: Context) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} ev/s"),
        TimeRemainingColumn(),
        console=ctx.err,
        disable=not ctx.err.is_terminal,
        transient=False,
    )


def _batches(
    items: Iterable[tuple[int, Touchpoint]], size: int
) -> Iterator[list[tuple[int, Touchpoint]]]:
    batch: list[tuple[int, Touchpoint]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


@cli.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(["auto", "jsonl", "avro", "cdnow"]),
    default="auto",
    show_default=True,
    help="Input format; auto goes by the file name (.jsonl, .avro, CDNOW*).",
)
@click.option("--cdnow", is_flag=True, help="Shorthand for --kind cdnow.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), help="Events per transaction.")
@pass_context
def import_(
    ctx: Context, files: tuple[Path, ...], kind: str, cdnow: bool, batch_size: int | None
) -> None:
    """Import FILES of events: JSON Lines, Avro container files or CDNOW transaction logs.

    Every file is checked in full first; a bad line stops the import before anything is
    written, naming the file, line and field. Events already in the ledger are skipped, so
    an import can be rerun safely.
    """
    kind = "cdnow" if cdnow else kind
    bootstrap.tune_for_throughput()
    codec = bootstrap.open_codec(ctx.settings)
    size = batch_size or ctx.settings.batch_size
    with bootstrap.open_ledger(ctx.settings) as ledger:
        counts = {path: _check_file(ledger, path, kind, codec) for path in files}
        totals = {"files": len(files), "read": 0, "recorded": 0, "duplicates": 0, "rejected": 0}
        problems: list[str] = []
        for path, count in counts.items():
            result = _write_file(ctx, ledger, path, kind, codec, size, count)
            totals["read"] += count
            totals["recorded"] += result.recorded
            totals["duplicates"] += result.duplicates
            totals["rejected"] += len(result.rejected)
            problems += [f"{path}, line {r.index}: {r.error}" for r in result.rejected]
    emit_record(ctx, totals, title="import")
    for line in problems[:20]:
        click.echo(f"crm-ledger: rejected: {line}", err=True)
    if problems:
        msg = f"{len(problems)} events were refused by the ledger's rules (listed above)"
        raise InvalidInput(msg)


def _check_file(ledger: Ledger, path: Path, kind: str, codec: Codec) -> int:
    count = 0
    for line, tp in _reader(path, kind, codec):
        try:
            ledger.check(tp)
        except InvalidInput as e:
            raise sources.located(path, line, e) from None
        count += 1
    return count


def _write_file(
    ctx: Context, ledger: Ledger, path: Path, kind: str, codec: Codec, size: int, total: int
) -> BatchResult:
    overall = BatchResult()
    started = datetime.now(UTC)
    with _progress(ctx) as progress:
        task = progress.add_task(f"importing {path.name}", total=total, rate="-")
        for batch in _batches(_reader(path, kind, codec), size):
            result = ledger.record_many([tp for _, tp in batch])
            overall.recorded += result.recorded
            overall.duplicates += result.duplicates
            overall.rejected += [
                Rejection(batch[r.index][0], r.event_id, r.error) for r in result.rejected
            ]
            elapsed = max((datetime.now(UTC) - started).total_seconds(), 1e-6)
            done = progress.tasks[0].completed + len(batch)
            progress.update(task, advance=len(batch), rate=f"{done / elapsed:,.0f}")
    return overall


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
        help="Answer as the ledger knew it at TIME: only events recorded by then (ISO 8601).",
    )(f)


def _moment(as_of: str | None, valid_at: str | None, snapshot: str | None) -> Moment:
    if snapshot and (as_of or valid_at):
        msg = "--snapshot already fixes the moment; leave out --as-of/--valid-at"
        raise click.UsageError(msg)
    return Moment(snapshot=snapshot, as_of=_when(as_of), valid_at=_when(valid_at))


@contextlib.contextmanager
def _read_models(ctx: Context) -> Iterator[ReadModels]:
    """Read models over the ledger, with a progress bar while they catch up."""
    with bootstrap.open_ledger(ctx.settings) as ledger, _catch_up_bar(ctx) as progress:
        yield bootstrap.open_read_models(ctx.settings, ledger, progress=progress)


@contextlib.contextmanager
def _catch_up_bar(ctx: Context, label: str = "projecting") -> Iterator[Callable[[int, int], None]]:
    with _progress(ctx) as bar:
        task = bar.add_task(label, total=None, rate="-")
        started = time.perf_counter()
        first: list[int] = []

        def update(position: int, head: int) -> None:
            first[:] = first or [position]
            done = position - first[0]
            rate = done / max(1e-9, time.perf_counter() - started)
            bar.update(task, completed=position, total=head, rate=f"{rate:,.0f}")

        yield update


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

    With --as-of/--valid-at, the customer as the ledger knew them then.
    """
    at = _moment(as_of, valid_at, snapshot)
    with _read_models(ctx) as models:
        view = models.view(customer_id, at, last=last)
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
    at = _moment(as_of, valid_at, snapshot)
    with _read_models(ctx) as models:
        if customer_id:
            values = models.values(customer_id, at)
            title = f"lifetime value of {customer_id}"
        else:
            values = models.top(top, at, by_organisation=by == "organisation", currency=currency)
            title = f"top {top} {by}s by net value"
    emit(ctx, [_value_row(ctx, v) for v in values], title=title + _moment_title(at))


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
    at = _moment(as_of, valid_at, snapshot)
    with _read_models(ctx) as models:
        steps = models.timeline(
            customer_id, at, start=_when(start), end=_when(end), channel=channel
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


@cli.command()
@click.option("--as-of", "as_of", metavar="TIME", help="Only events recorded by TIME.")
@click.option("--valid-at", "valid_at", metavar="TIME", help="Only events that occurred by TIME.")
@click.option("--into", "into", metavar="NAME", required=True, help="Name of the snapshot.")
@pass_context
def replay(ctx: Context, as_of: str | None, valid_at: str | None, into: str) -> None:
    """Materialise every projection as it stood at a moment into the read-only snapshot NAME.

    Query it with --snapshot NAME on customer show, ltv, timeline and compare; an
    interrupted replay, run again, carries on.
    """
    if not as_of and not valid_at:
        raise click.UsageError("give --as-of, --valid-at or both")
    at = _moment(as_of, valid_at, None)
    with bootstrap.open_ledger(ctx.settings) as ledger, _catch_up_bar(ctx, "replaying") as bar:
        store = bootstrap.open_projection_store(ctx.settings)
        projector = bootstrap.open_projector(ledger, store)
        sets = projector.replay(
            into,
            as_of=micros(at.as_of) if at.as_of else None,
            valid_at=micros(at.valid_at) if at.valid_at else None,
            progress=bar,
        )
    emit_record(
        ctx,
        {
            "snapshot": into,
            "as_of": at.as_of,
            "valid_at": at.valid_at,
            "position": max((s.position for s in sets), default=0),
            "projections": sorted(s.projection for s in sets),
        },
        title="snapshot ready",
    )


@cli.group()
def projections() -> None:
    """The read models: where they are, catching up, rebuilding, snapshots."""


@projections.command("status")
@pass_context
def projections_status(ctx: Context) -> None:
    """Each projection's table sets (live, rebuilding, snapshots), position and lag."""
    with bootstrap.open_ledger(ctx.settings) as ledger:
        store = bootstrap.open_projection_store(ctx.settings)
        rows = bootstrap.open_projector(ledger, store).status()
    emit(
        ctx,
        [
            {
                "projection": r.projection,
                "set": r.label,
                "status": r.status,
                "position": r.position,
                "head": r.head,
                "lag": r.lag,
                "as_of": moment(r.as_of) if r.as_of is not None else None,
                "valid_at": moment(r.valid_at) if r.valid_at is not None else None,
            }
            for r in rows
        ],
        title="projections",
    )


@projections.command("run")
@pass_context
def projections_run(ctx: Context) -> None:
    """Catch every live projection up with the ledger (queries also do this first)."""
    with bootstrap.open_ledger(ctx.settings) as ledger, _catch_up_bar(ctx) as bar:
        store = bootstrap.open_projection_store(ctx.settings)
        applied = bootstrap.open_projector(ledger, store).catch_up(bar)
    emit_record(ctx, {"records_applied": applied}, title="caught up")


_BATCH_OPTION = click.option(
    "--batch-size",
    type=click.IntRange(1, 200_000),
    help="Log entries per read-model transaction [20,000].",
)


@projections.command("rebuild")
@click.argument("names", nargs=-1)
@_BATCH_OPTION
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    help="Processes to rebuild with [one per core, at most one per projection].",
)
@pass_context
def projections_rebuild(
    ctx: Context, names: tuple[str, ...], batch_size: int | None, workers: int | None
) -> None:
    """Rebuild projections NAMES (all when none are given) into fresh tables, swapped in
    when caught up. Queries keep using the old tables meanwhile; an interrupted rebuild, run
    again, carries on where it stopped. The heaviest projection gets a process of its own
    when the machine has more than one core."""
    bootstrap.tune_for_throughput()
    started = time.perf_counter()
    with _catch_up_bar(ctx, "rebuilding") as bar:
        bootstrap.rebuild_projections(
            ctx.settings, names, workers=workers, batch_size=batch_size, progress=bar
        )
    seconds = time.perf_counter() - started
    with bootstrap.open_ledger(ctx.settings) as ledger:
        store = bootstrap.open_projection_store(ctx.settings)
        live = bootstrap.open_projector(ledger, store).live()
    emit(
        ctx,
        [
            {"projection": n, "set": s.label, "position": s.position}
            for n, s in sorted(live.items())
            if not names or n in names
        ],
        title=f"rebuilt in {seconds:.1f} s",
    )


@projections.command("drop")
@click.argument("snapshot")
@pass_context
def projections_drop(ctx: Context, snapshot: str) -> None:
    """Drop the snapshot SNAPSHOT and its tables."""
    with bootstrap.open_ledger(ctx.settings) as ledger:
        store = bootstrap.open_projection_store(ctx.settings)
        bootstrap.open_projector(ledger, store).drop_snapshot(snapshot)
    emit_record(ctx, {"dropped": snapshot}, title="snapshot dropped")


@cli.command()
@click.argument("initiative_id")
@click.option(
    "--control",
    "control",
    metavar="KEY=VALUE",
    multiple=True,
    help="Control group by profile (region, segment, country); repeat to narrow. "
    "Default: every customer outside the initiative's scope.",
)
@click.option("--metric", type=click.Choice(METRICS), default="net_revenue", show_default=True)
@click.option("--currency", metavar="CODE", help="Currency of net_revenue [the most used].")
@click.option(
    "--resamples",
    type=click.IntRange(100, 100_000),
    default=2000,
    show_default=True,
    help="Bootstrap resamples for the 95% interval.",
)
@click.option(
    "--chart",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also draw the weekly series and the window into this PNG file.",
)
@click.option(
    "--truth",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The NAME.truth.json `generate` wrote: print the true uplift beside the estimate.",
)
@click.option("--snapshot", metavar="NAME", help="Compare within a replayed snapshot.")
@pass_context
def compare(
    ctx: Context,
    initiative_id: str,
    control: tuple[str, ...],
    metric: str,
    currency: str | None,
    resamples: int,
    chart: Path | None,
    truth: Path | None,
    snapshot: str | None,
) -> None:
    """Did INITIATIVE raise value? Value per customer-week before, during and after its
    window, for the customers in its scope and a control group, and the
    difference-in-differences with a bootstrap 95% confidence interval."""
    chosen = _pairs(control)
    expected = _truth(truth, metric) if truth else None
    with _read_models(ctx) as models:
        result = models.compare(
            initiative_id,
            Moment(snapshot=snapshot),
            control=chosen or None,
            metric=metric,
            currency=currency,
            resamples=resamples,
        )
    if chart:
        impact_chart(result, chart)
    _emit_comparison(ctx, result, expected, chart)


@cli.group("clv")
def clv_() -> None:
    """Predictive lifetime value: BG/NBD (repeat purchasing) and Gamma-Gamma (spend) fitted
    on the ledger's own purchases."""


@contextlib.contextmanager
def _predictions(ctx: Context) -> Iterator[Predictions]:
    with bootstrap.open_ledger(ctx.settings) as ledger, _catch_up_bar(ctx) as progress:
        yield bootstrap.open_predictions(ctx.settings, ledger, progress=progress)


_UNIT_OPTION = click.option(
    "--unit",
    type=click.Choice(("weeks", "days")),
    default="weeks",
    show_default=True,
    help="Time unit of frequency, recency, age and the horizon.",
)
_CURRENCY_OPTION = click.option(
    "--currency", metavar="CODE", help="Purchases in this currency [the most used]."
)


@clv_.command("fit")
@click.option(
    "--calibration-end",
    "calibration_end",
    metavar="DATE",
    required=True,
    help="Use purchases up to and including this day.",
)
@click.option("--as-of", "as_of", metavar="TIME", help="Only purchases recorded by TIME.")
@_CURRENCY_OPTION
@_UNIT_OPTION
@click.option(
    "--horizon",
    type=click.FloatRange(min=0, min_open=True),
    default=52.0,
    show_default=True,
    help="Predict this many time units ahead.",
)
@click.option(
    "--discount",
    type=click.FloatRange(min=0),
    default=0.10,
    show_default=True,
    help="Annual discount rate for the discounted CLV.",
)
@pass_context
def clv_fit(
    ctx: Context,
    calibration_end: str,
    as_of: str | None,
    currency: str | None,
    unit: str,
    horizon: float,
    discount: float,
) -> None:
    """Fit both models on purchases up to --calibration-end, store them with their data
    window, and materialise each customer's predictions (clv show, clv top)."""
    with _predictions(ctx) as predictions:
        model = predictions.fit(
            _moment_of(calibration_end),
            as_of=_when(as_of),
            currency=currency,
            unit=unit,
            horizon=horizon,
            annual_discount=discount,
        )
    _emit_model(ctx, model)


def _emit_model(ctx: Context, model: ClvModel) -> None:
    rows = []
    for fit in (model.bgnbd, model.gamma_gamma):
        for name, value in fit.params.items():
            rows.append({"model": fit.model, "parameter": name, "value": round(value, 6)})
        rows.append(
            {
                "model": fit.model,
                "parameter": "log_likelihood",
                "value": round(fit.log_likelihood, 4),
            }
        )
        rows.append({"model": fit.model, "parameter": "customers", "value": fit.customers})
        rows.append({"model": fit.model, "parameter": "converged", "value": fit.converged})
    if ctx.output == "json":
        click.echo(json.dumps(dataclasses.asdict(model), default=_json_default, indent=2))
        return
    emit(
        ctx,
        rows,
        title=f"CLV model {model.model_id}: purchases in {model.currency} to "
        f"{model.calibration_end:%Y-%m-%d}, {model.unit}, horizon {model.horizon:g}",
    )
    for fit in (model.bgnbd, model.gamma_gamma):
        if not fit.converged and ctx.output == "table":
            ctx.err.print(f"warning: {fit.model} did not converge: {fit.message}")


@clv_.command("show")
@click.argument("customer_id")
@click.option("--model", "model_id", type=int, help="A stored model [the latest].")
@pass_context
def clv_show(ctx: Context, customer_id: str, model_id: int | None) -> None:
    """CUSTOMER_ID's frequency, recency, age, mean spend, probability of being alive,
    expected purchases and spend over the horizon, and discounted CLV."""
    with _predictions(ctx) as predictions:
        model = predictions.model(model_id)
        value = predictions.show(customer_id, model.model_id)
    emit_record(
        ctx,
        dataclasses.asdict(value),
        title=f"CLV of {customer_id} (model {model.model_id}, {model.currency})",
    )


@clv_.command("top")
@click.argument("limit", type=click.IntRange(1), default=10)
@click.option("--model", "model_id", type=int, help="A stored model [the latest].")
@pass_context
def clv_top(ctx: Context, limit: int, model_id: int | None) -> None:
    """The LIMIT customers with the highest predicted (discounted) lifetime value."""
    with _predictions(ctx) as predictions:
        model = predictions.model(model_id)
        values = predictions.top(limit, model.model_id)
    rows = [dataclasses.asdict(c) for c in values]
    if ctx.output == "table":
        rows = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    emit(
        ctx,
        rows,
        title=f"top {limit} by predicted CLV (model {model.model_id}, "
        f"{model.currency}, horizon {model.horizon:g} {model.unit})",
    )


@clv_.command("holdout")
@click.option("--calibration-end", "calibration_end", metavar="DATE", required=True)
@click.option("--holdout-end", "holdout_end", metavar="DATE", required=True)
@_CURRENCY_OPTION
@_UNIT_OPTION
@click.option(
    "--chart",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the tracking chart (weekly and cumulative) into this PNG file.",
)
@pass_context
def clv_holdout(
    ctx: Context,
    calibration_end: str,
    holdout_end: str,
    currency: str | None,
    unit: str,
    chart: Path | None,
) -> None:
    """Fit BG/NBD on the calibration period and compare predicted with actual repeat
    purchases per period through the holdout, and per calibration frequency."""
    start, end = _moment_of(calibration_end), _moment_of(holdout_end)
    with _predictions(ctx) as predictions:
        result = predictions.holdout(start, end, currency=currency, unit=unit)
    if chart:
        tracking_chart(result, chart)
    if ctx.output == "json":
        click.echo(json.dumps(dataclasses.asdict(result), default=_json_default, indent=2))
        return
    rows = [
        {
            "period": f"{p.start:%Y-%m-%d}",
            "holdout": p.holdout,
            "actual": p.actual,
            "predicted": round(p.predicted, 2),
            "cumulative_actual": p.cumulative_actual,
            "cumulative_predicted": round(p.cumulative_predicted, 2),
        }
        for p in result.periods
    ]
    emit(ctx, rows, title=f"repeat purchases per {unit[:-1]}: {result.customers} customers")
    if ctx.output == "table":
        emit(
            ctx,
            [
                {
                    "frequency": g.frequency,
                    "customers": g.customers,
                    "actual": round(g.actual, 3),
                    "predicted": round(g.predicted, 3),
                }
                for g in result.by_frequency
            ],
            title="holdout purchases per customer by calibration frequency",
        )
        error = (result.predicted - result.actual) / max(1, result.actual)
        ctx.out.print(
            f"holdout {result.calibration_end:%Y-%m-%d} to {result.holdout_end:%Y-%m-%d}: "
            f"actual {result.actual:,} repeat purchases, predicted {result.predicted:,.1f} "
            f"({error:+.1%})"
        )
        if chart:
            ctx.out.print(f"chart written to {chart}")


@cli.command()
@click.argument("customer_id")
@click.option("--reason", required=True, help="Why (kept on the CustomerErased event).")
@click.option("--actor", help="Who asked for it (kept on the event).")
@pass_context
def erase(ctx: Context, customer_id: str, reason: str, actor: str | None) -> None:
    """Erase CUSTOMER_ID's personal data: record CustomerErased and destroy the customer's
    data key (and those of customers merged into them). Sealed personal fields become
    unreadable everywhere; orders, amounts, times and channels remain, so totals stay true.
    Kafka cannot delete single records: copies that services published expire with the
    topics' retention, and the date is printed."""
    with bootstrap.open_ledger(ctx.settings) as ledger:
        erased = ledger.erase(customer_id, reason=reason, actor=actor)
    expiry = datetime.now(UTC) + timedelta(days=ctx.settings.kafka_retention_days)
    emit_record(
        ctx,
        {
            "customer_id": customer_id,
            "keys_destroyed": erased,
            "reason": reason,
            "kafka_copies_expire_by": expiry,
            "kafka_topics": [ctx.settings.kafka_topic, ctx.settings.kafka_dlq_topic],
        },
        title="erased",
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
    with _read_models(ctx) as models:
        found = models.consent_violations(Moment(snapshot=snapshot))
    rows = [dataclasses.asdict(v) for v in found]
    if ctx.output == "table":
        for row in rows:
            for name in ("occurred_at", "recorded_at", "withdrawn_at"):
                row[name] = f"{row[name]:%Y-%m-%d %H:%M}"
            del row["event_id"]
    emit(ctx, rows, title=f"{len(rows)} marketing touches after consent was withdrawn")


@cli.group()
def audit() -> None:
    """Tamper-evident history: signed checkpoints and verification."""


@audit.command("checkpoint")
@pass_context
def audit_checkpoint(ctx: Context) -> None:
    """Sign (Ed25519) the current head of every stream's hash chain into a checkpoint.

    The signature covers every field and the link to the previous checkpoint; the receipt is
    appended to the auditor's copy (CRM_LEDGER_AUDIT_RECEIPTS; default in the key folder),
    against which `audit verify` finds checkpoints removed from the database.
    """
    with bootstrap.open_ledger(ctx.settings) as ledger:
        cp = bootstrap.open_auditor(ctx.settings, ledger).checkpoint()
    emit_record(
        ctx,
        {
            "checkpoint": cp.checkpoint_id,
            "created_at": cp.created_at,
            "position": cp.position,
            "streams": cp.streams,
            "digest": cp.digest.hex(),
            "receipt": str(bootstrap.receipts_path(ctx.settings)),
        },
        title="checkpoint signed",
    )


@audit.command("verify")
@click.option(
    "--since",
    type=click.IntRange(1),
    metavar="CHECKPOINT",
    help="Check only against checkpoints from this one on.",
)
@pass_context
def audit_verify(ctx: Context, since: int | None) -> None:
    """Recompute every event's hash and every stream's chain from the stored bytes, compare
    them with the stored chain and the signed checkpoints, and report each modified,
    deleted, reordered or inserted event by stream and version. Exits 1 if anything is wrong."""
    with bootstrap.open_ledger(ctx.settings) as ledger:
        started = time.perf_counter()
        result = bootstrap.open_auditor(ctx.settings, ledger).verify(since=since)
        seconds = time.perf_counter() - started
        names = {f.stream: ledger.stream_name(f.stream) for f in result.findings if f.stream}
    rows = [
        {
            "stream": f.stream.hex() if f.stream else "",
            "subject": names.get(f.stream) or "",
            "version": f.version,
            "problem": f.problem,
            "detail": f.detail,
        }
        for f in result.findings
    ]
    summary = (
        f"{result.events:,} events in {result.streams:,} streams, {result.checkpoints} "
        f"checkpoints checked in {seconds:.1f} s: "
        + ("intact" if result.ok else f"{len(result.findings)} problems")
    )
    if ctx.output == "json":
        click.echo(
            json.dumps(
                {
                    "ok": result.ok,
                    "events": result.events,
                    "streams": result.streams,
                    "checkpoints": result.checkpoints,
                    "findings": rows,
                },
                indent=2,
            )
        )
    elif rows:
        emit(ctx, rows, title=summary)
    else:
        ctx.out.print(summary)
    if not result.ok:
        raise SystemExit(1)


@audit.command("history")
@click.argument("customer_id")
@click.option("--as-of", "as_of", metavar="TIME", help="Only facts recorded by TIME.")
@pass_context
def audit_history(ctx: Context, customer_id: str, as_of: str | None) -> None:
    """Every fact about CUSTOMER_ID: who (actor), which service (source), when it occurred
    and when it was recorded, with the event's content and chain hash."""
    with bootstrap.open_ledger(ctx.settings) as ledger:
        entries = ledger.history(customer_id, as_of=_when(as_of))
        auditor = bootstrap.open_auditor(ctx.settings, ledger)
        links = {
            link.version: link
            for link in auditor.store.stream_chain(customer_uuid(customer_id).bytes)
        }
    rows: list[dict[str, Any]] = []
    for e in entries:
        link = links.get(e.version)
        rows.append(
            {
                "version": e.version,
                "fact": e.event_type,
                "actor": e.actor,
                "source": e.source,
                "occurred_at": e.occurred_at,
                "recorded_at": e.recorded_at,
                "event_id": str(e.event_id),
                "content_hash": link.content.hex() if link else None,
                "chain_hash": link.chained.hex() if link else None,
            }
        )
    if ctx.output == "table":
        for row in rows:
            row["occurred_at"] = f"{row['occurred_at']:%Y-%m-%d %H:%M:%S}"
            row["recorded_at"] = f"{row['recorded_at']:%Y-%m-%d %H:%M:%S}"
            row["content_hash"] = (row["content_hash"] or "")[:12]
            row["chain_hash"] = (row["chain_hash"] or "")[:12]
            del row["event_id"]
    emit(ctx, rows, title=f"audit history of {customer_id}{' as of ' + as_of if as_of else ''}")


@audit.command("export")
@click.argument("customer_id")
@click.option("--out", type=click.File("w"), default="-", help="JSON Lines file [stdout].")
@pass_context
def audit_export(ctx: Context, customer_id: str, out: io.TextIOBase) -> None:
    """Write CUSTOMER_ID's stored events as JSON Lines for an external auditor, with the
    proofs to check them offline (crm-ledger audit verify-export): each event's bytes and
    hashes, the newest checkpoint that signed the stream, and the heads it signed."""
    with bootstrap.open_ledger(ctx.settings) as ledger:
        ledger.customer(customer_id)  # a clear error for an unknown customer
        auditor = bootstrap.open_auditor(ctx.settings, ledger)
        for line in auditor.export(customer_uuid(customer_id).bytes):
            if line["kind"] == "header":
                line["customer_id"] = customer_id
            out.write(json.dumps(line, separators=(",", ":")) + "\n")


@audit.command("verify-export")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--public-key",
    "public_key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The ledger's public key (crm-ledger audit public-key).",
)
@pass_context
def audit_verify_export(ctx: Context, file: Path, public_key: Path) -> None:
    """Check an export offline, with nothing but the file and the public key: every event's
    hashes from its bytes, the chain, the signed head, the checkpoint's digest and signature.
    Exits 1 if anything is wrong."""
    signer = bootstrap.verifier(public_key.read_bytes())
    try:
        lines = [json.loads(line) for line in file.read_bytes().splitlines() if line.strip()]
        if not all(isinstance(line, dict) for line in lines):
            raise ValueError("every line must be a JSON object")
        findings = verify_export(lines, signer)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InvalidInput(f"{file} is not an audit export: {e}") from None
    except RecursionError:
        raise InvalidInput(f"{file} is not an audit export: nested too deeply") from None
    rows = [{"version": f.version, "problem": f.problem, "detail": f.detail} for f in findings]
    events = sum(1 for line in lines if line.get("kind") == "event")
    if ctx.output == "json":
        click.echo(json.dumps({"ok": not findings, "events": events, "findings": rows}, indent=2))
    elif rows:
        emit(ctx, rows, title=f"{file}: {len(rows)} problems")
    else:
        ctx.out.print(f"{file}: {events} events, chain and signed checkpoint verified")
    if findings:
        raise SystemExit(1)


@audit.command("public-key")
@pass_context
def audit_public_key(ctx: Context) -> None:
    """Print the public key that verifies this ledger's checkpoints (PEM)."""
    click.echo(bootstrap.open_signer(ctx.settings).public_pem(), nl=False)


def _pairs(values: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, wanted = value.partition("=")
        if not sep or not key or not wanted:
            raise click.BadParameter(f"{value!r}: use KEY=VALUE, e.g. region=south")
        pairs[key.strip()] = wanted.strip()
    return pairs


_TRUTH_KEYS = {
    "net_revenue": "expected_uplift_net_revenue_minor_per_customer_week",
    "orders": "expected_uplift_orders_per_customer_week",
}


def _truth(path: Path, metric: str) -> float | None:
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UnreadableFile(f"{path}: not a truth file ({e})") from None
    key = _TRUTH_KEYS.get(metric)
    return float(facts[key]) if key and key in facts else None


def _emit_comparison(
    ctx: Context, result: Comparison, expected: float | None, chart: Path | None
) -> None:
    impact = result.impact
    rows: list[dict[str, Any]] = [
        {
            "group": g.group,
            "period": g.period,
            "customers": g.customers,
            "customer_weeks": g.customer_weeks,
            "total": round(g.total, 2),
            "per_customer_week": _round(g.per_customer_week),
            "ci_low": None,
            "ci_high": None,
        }
        for g in impact.groups
    ]
    rows += [
        {
            "group": "difference-in-differences",
            "period": e.period,
            "customers": None,
            "customer_weeks": None,
            "total": None,
            "per_customer_week": _round(e.estimate),
            "ci_low": _round(e.ci_low),
            "ci_high": _round(e.ci_high),
        }
        for e in impact.estimates
    ]
    if expected is not None:
        rows.append(
            {
                "group": "true uplift (generator)",
                "period": "during",
                "customers": None,
                "customer_weeks": None,
                "total": None,
                "per_customer_week": _round(expected),
                "ci_low": None,
                "ci_high": None,
            }
        )
    unit = f"{result.currency} minor units" if result.currency else impact.metric
    if ctx.output == "json":
        document = {
            "initiative": result.initiative,
            "name": result.name,
            "scope": result.scope,
            "control": result.control or "everyone outside the scope",
            "metric": impact.metric,
            "unit": unit,
            "started_at": result.started_at,
            "ended_at": result.ended_at,
            "resamples": impact.resamples,
            "groups": [dataclasses.asdict(g) for g in impact.groups],
            "estimates": [dataclasses.asdict(e) for e in impact.estimates],
            "true_uplift": expected,
            "chart": str(chart) if chart else None,
        }
        click.echo(json.dumps(document, default=_json_default, indent=2))
        return
    scope = ", ".join(f"{k}={v}" for k, v in result.scope.items())
    control = ", ".join(f"{k}={v}" for k, v in (result.control or {}).items()) or "the rest"
    emit(
        ctx,
        rows,
        title=f"{result.initiative}: {impact.metric} per customer-week ({unit}), "
        f"exposed {scope} vs control {control}",
    )
    if ctx.output == "table":
        during = next((e for e in impact.estimates if e.period == "during"), None)
        if during and during.estimate is not None:
            line = (
                f"estimated uplift during the initiative: {during.estimate:,.2f} per "
                f"customer-week (95% CI {during.ci_low:,.2f} to {during.ci_high:,.2f})"
            )
            if expected is not None:
                inside = during.ci_low <= expected <= during.ci_high  # type: ignore[operator]
                line += (
                    f"; true uplift {expected:,.2f} ({'inside' if inside else 'outside'} the CI)"
                )
            ctx.out.print(line)
        if chart:
            ctx.out.print(f"chart written to {chart}")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@cli.command()
@click.argument("customer_id")
@click.option("--as-of", "as_of", metavar="TIME", help="Only events recorded by TIME (ISO 8601).")
@click.option("--limit", type=click.IntRange(1), help="Show only the last N events.")
@pass_context
def history(ctx: Context, customer_id: str, as_of: str | None, limit: int | None) -> None:
    """Every stored event of CUSTOMER_ID with occurred and recorded time, source and actor."""
    with bootstrap.open_ledger(ctx.settings) as ledger:
        entries = ledger.history(customer_id, as_of=_when(as_of))
    if limit:
        entries = entries[-limit:]
    if ctx.output == "table":
        rows = [
            {
                "v": e.version,
                "type": e.event_type,
                "occurred": f"{e.occurred_at:%Y-%m-%d %H:%M:%S}",
                "recorded": f"{e.recorded_at:%Y-%m-%d %H:%M:%S}",
                "source": e.source,
                "actor": e.actor or "",
                "details": _compact(e.details, e.addressed_to),
            }
            for e in entries
        ]
    else:
        rows = [
            {
                "version": e.version,
                "type": e.event_type,
                "occurred_at": e.occurred_at,
                "recorded_at": e.recorded_at,
                "source": e.source,
                "actor": e.actor,
                "addressed_to": e.addressed_to,
                "event_id": str(e.event_id),
                "details": e.details,
            }
            for e in entries
        ]
    emit(ctx, rows, title=f"history of {customer_id} ({len(entries)} events)")


def _compact(details: dict[str, Any], addressed_to: str | None) -> str:
    parts = [f"{k}={_plain(v)}" for k, v in details.items() if v is not None]
    if addressed_to:
        parts.append(f"(sent to {addressed_to})")
    return " ".join(parts)


@cli.command()
@pass_context
def status(ctx: Context) -> None:
    """Where the ledger is and how many events it holds."""
    with bootstrap.open_ledger(ctx.settings) as ledger:
        emit_record(
            ctx,
            {
                "store": ctx.settings.store_name,
                "location": ctx.settings.database_url or str(ctx.settings.sqlite_path),
                "events": ledger.count_events(),
            },
            title="status",
        )


# Schemas.


@cli.group()
def schemas() -> None:
    """The Avro event contract: list, check and register schema versions."""


@schemas.command("list")
@pass_context
def schemas_list(ctx: Context) -> None:
    """Every event type with its registered versions and schema ids."""
    registry = bootstrap.open_registry(ctx.settings)
    rows = [
        {
            "type": s,
            "version": v.version,
            "schema_id": v.schema_id,
            "fields": len(v.schema["fields"]),
        }
        for s in registry.subjects()
        for v in registry.versions(s)
    ]
    emit(ctx, rows, title="schemas")


@schemas.command("check")
@pass_context
def schemas_check(ctx: Context) -> None:
    """Fail unless every schema's latest version reads data written with each earlier one."""
    registry = bootstrap.open_registry(ctx.settings)
    problems = registry.check()
    for problem in problems:
        click.echo(f"incompatible: {problem}", err=True)
    if problems:
        raise IncompatibleSchema([f"{len(problems)} compatibility problems (listed above)"])
    pending = registry.pending()
    emit_record(
        ctx,
        {
            "schemas": len(registry.schema_files()),
            "compatible": True,
            "unregistered_changes": pending,
        },
        title="schemas check",
    )


@schemas.command("register")
@pass_context
def schemas_register(ctx: Context) -> None:
    """Register each changed .avsc as a new version (refused if it breaks compatibility)."""
    added = bootstrap.open_registry(ctx.settings).register()
    emit(
        ctx,
        [{"type": v.subject, "version": v.version, "schema_id": v.schema_id} for v in added],
        title="registered",
    )


# Kafka.


@cli.command()
@click.argument(
    "source", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), default="-"
)
@pass_context
def publish(ctx: Context, source: Path) -> None:
    """Publish JSON Lines events from SOURCE (a file, or - for stdin) to Kafka.

    Every line is validated first; a bad line stops the command before anything is sent.
    Events are Avro in the Confluent wire format, keyed by customer id. Prints where each
    event landed (partition and offset).
    """
    bootstrap.tune_for_throughput()
    codec = bootstrap.open_codec(ctx.settings)
    path = Path("/dev/stdin") if str(source) == "-" else source
    read = list(sources.read_jsonl(path, codec))
    lines, events = [line for line, _ in read], [tp for _, tp in read]
    with bootstrap.open_publisher(ctx.settings) as publisher:
        try:
            results = publisher.publish_many(events)
        except InvalidEventInBatch as e:
            raise sources.located(source, lines[e.index], e.error) from None
    failed = [r for r in results if r.error]
    emit(
        ctx,
        [
            {
                "event_id": r.event_id,
                "customer_id": r.customer_id,
                "partition": r.partition,
                "offset": r.offset,
                "error": r.error,
            }
            for r in results
        ],
        title=f"published {len(results) - len(failed)} of {len(results)}",
    )
    if failed:
        raise InvalidInput(f"{len(failed)} events were not delivered (see the error column)")


def _log_json(stats: IngestStats) -> None:
    click.echo(
        json.dumps(
            {
                "at": datetime.now(UTC).isoformat(),
                "event": "batch",
                "consumed": stats.consumed,
                "recorded": stats.recorded,
                "duplicates": stats.duplicates,
                "dead_lettered": stats.dead_lettered,
                "rate": round(stats.rate),
                "partitions": stats.assigned,
            }
        ),
        err=True,
    )


def _log_event(event: str, **fields: Any) -> None:
    """One JSON log line on stderr."""
    line = {"at": datetime.now(UTC).isoformat(), "event": event, **fields}
    click.echo(json.dumps(line), err=True)


#: Attributes every logging.LogRecord has; anything else on a record came in ``extra``.
_STANDARD_LOG_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _LogFormatter(logging.Formatter):
    """A warning with everything passed in ``extra``: one JSON object a line for machines, or
    ``message: key=value ...`` on a terminal."""

    def __init__(self, *, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD_LOG_FIELDS}
        if self.json_lines:
            line = {
                "at": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname.lower(),
                "event": record.getMessage(),
                **fields,
            }
            return json.dumps(line, default=str)
        details = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{record.levelname.lower()}: {record.getMessage()}" + (
            f" ({details})" if details else ""
        )


def _log_to_stderr(ctx: Context) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_LogFormatter(json_lines=not ctx.err.is_terminal))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)


def _stop_on_signals(stop: Callable[[], None]) -> None:
    """First SIGTERM/SIGINT: finish the batch in hand and stop; a second: stop at once."""
    asked: list[int] = []

    def handle(signum: int, _frame: Any) -> None:
        if asked:
            raise SystemExit(128 + signum)
        asked.append(signum)
        stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)


@cli.command()
@click.option("--max-events", type=click.IntRange(1), help="Stop after this many messages.")
@click.option(
    "--until-idle",
    type=click.FloatRange(0),
    metavar="SECONDS",
    help="Stop when no message arrived for this long.",
)
@click.option(
    "--until-caught-up",
    is_flag=True,
    help="Stop once the ledger holds every message the topic had when the worker started "
    "(waiting for partitions a crashed worker still holds).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 50_000),
    default=5000,
    show_default=True,
    help="Most messages per ledger transaction.",
)
@pass_context
def ingest(
    ctx: Context,
    max_events: int | None,
    until_idle: float | None,
    until_caught_up: bool,
    batch_size: int,
) -> None:
    """Consume the touchpoint topic into the ledger, exactly once.

    Runs until SIGTERM or Ctrl-C (finishing the batch in hand; a second signal stops at
    once), or until --max-events, --until-idle or --until-caught-up. Every message is stored
    or dead-lettered with the reason: bad bytes, a tombstone, a key that is not the event's
    customer_id [env CRM_LEDGER_KAFKA_CHECK_KEYS=false relaxes that], an event_id stored
    before with other content. A crashed worker's partitions are taken over within the
    session timeout [env CRM_LEDGER_KAFKA_SESSION_TIMEOUT_MS; 10000] plus a rebalance. On a
    terminal it shows progress; otherwise it writes one JSON log line per batch to stderr.
    """
    bootstrap.tune_for_throughput()
    _log_to_stderr(ctx)
    with bootstrap.open_ledger(ctx.settings) as ledger:
        progress = _progress(ctx)
        task = progress.add_task("ingesting", total=None, rate="-")

        def on_batch(stats: IngestStats) -> None:
            if ctx.err.is_terminal:
                progress.update(task, completed=stats.consumed, rate=f"{stats.rate:,.0f}")
            else:
                _log_json(stats)

        def on_assign(partitions: list[int]) -> None:
            _log_event("assigned", partitions=partitions)

        worker = bootstrap.open_ingest_worker(
            ctx.settings, ledger, max_batch=batch_size, on_batch=on_batch, on_assign=on_assign
        )
        _stop_on_signals(worker.stop)
        if not ctx.err.is_terminal:
            _log_event("started", topic=ctx.settings.kafka_topic, group=ctx.settings.kafka_group)
        with progress:
            stats = worker.run(
                max_events=max_events, until_idle=until_idle, until_caught_up=until_caught_up
            )
    emit_record(
        ctx,
        {
            "consumed": stats.consumed,
            "recorded": stats.recorded,
            "duplicates": stats.duplicates,
            "dead_lettered": stats.dead_lettered,
            "batches": stats.batches,
            "events_per_second": round(stats.rate),
        },
        title="ingest",
    )


@cli.group()
def keys() -> None:
    """The keys kept outside the database (the key folder, --keys-dir)."""


@keys.command("rotate")
@pass_context
def keys_rotate(ctx: Context) -> None:
    """Wrap every customer's data key by a new key-encryption key and destroy the old one.

    `erase` does this itself; run it after restoring a backup, or on a schedule, so that data
    keys in old WAL segments and backups can no longer be unwrapped.
    """
    with bootstrap.open_ledger(ctx.settings) as ledger:
        count = ledger.rotate_keys()
    emit_record(
        ctx, {"data_keys": count, "key_folder": str(ctx.settings.key_folder)}, title="rotated"
    )


@cli.group()
def positions() -> None:
    """Where the ledger has read its sources (Kafka topics) up to."""


@positions.command("show")
@click.option("--topic", metavar="NAME", help="The topic [default: the touchpoint topic].")
@pass_context
def positions_show(ctx: Context, topic: str | None) -> None:
    """Per partition, the next offset the ledger will read."""
    source = topic or ctx.settings.kafka_topic
    with bootstrap.open_ledger(ctx.settings) as ledger:
        stored = ledger.positions(source)
    emit(
        ctx,
        [{"topic": source, "partition": p, "next_offset": o} for p, o in sorted(stored.items())],
        title=f"positions of {source}",
    )


@positions.command("reset")
@click.option("--topic", metavar="NAME", help="The topic [default: the touchpoint topic].")
@click.confirmation_option(
    "--yes", prompt="Read the topic again from its start?", help="Do not ask first."
)
@pass_context
def positions_reset(ctx: Context, topic: str | None) -> None:
    """Forget how far the ledger read a topic, so ingest reads it from its start.

    For a topic that was deleted and re-created. Nothing is stored twice: events the ledger
    holds are recognised by event_id (and one with other content is dead-lettered).
    """
    source = topic or ctx.settings.kafka_topic
    with bootstrap.open_ledger(ctx.settings) as ledger:
        count = ledger.reset_positions(source)
    emit_record(ctx, {"topic": source, "partitions_reset": count}, title="positions reset")


@cli.group()
def dlq() -> None:
    """The dead-letter topic: messages the ledger could not take, and why."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(1), help="Show only the last N.")
@pass_context
def dlq_list(ctx: Context, limit: int | None) -> None:
    """Every dead letter with its reason and where it came from."""
    letters = dead_letters(bootstrap.kafka_settings(ctx.settings))
    if limit:
        letters = letters[-limit:]
    emit(
        ctx,
        [
            {
                "partition": d.partition,
                "offset": d.offset,
                "source": f"{d.headers.get('source.topic')}/{d.headers.get('source.partition')}"
                f"/{d.headers.get('source.offset')}",
                "error": d.headers.get("error.class"),
                "reason": d.headers.get("error.message"),
                "at": d.headers.get("dlq.time"),
                "bytes": len(d.value),
            }
            for d in letters
        ],
        title=f"dead letters ({len(letters)})",
    )


@dlq.command("redrive")
@pass_context
def dlq_redrive(ctx: Context) -> None:
    """Re-publish dead letters not redriven before to their source topic (after a fix).

    The ingest worker then takes them like any other message; one that still fails returns
    to the dead-letter topic. How far redrive got is kept in the ledger, so each dead letter
    is redriven once.
    """
    with bootstrap.open_ledger(ctx.settings) as ledger:
        letters = redrive(bootstrap.kafka_settings(ctx.settings), ledger)
    emit_record(ctx, {"redriven": len(letters)}, title="dlq redrive")


@cli.command("lag")
@pass_context
def lag_(ctx: Context) -> None:
    """Per partition: the ledger's stored position against the topic's end."""
    kafka = bootstrap.kafka_settings(ctx.settings)
    with bootstrap.open_ledger(ctx.settings) as ledger:
        rows = lag(kafka, ledger)
    emit(
        ctx,
        [
            {
                "partition": r.partition,
                "ledger_position": r.ledger_position,
                "end_offset": r.end_offset,
                "lag": r.lag,
            }
            for r in rows
        ],
        title=f"lag (total {sum(r.lag for r in rows)})",
    )


# Synthetic data.


@cli.command()
@click.option("--seed", type=int, default=7, show_default=True, help="Same seed, same history.")
@click.option("--customers", type=click.IntRange(10), default=2500, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="JSON Lines file to write; the truth goes beside it as NAME.truth.json.",
)
@pass_context
def generate(ctx: Context, seed: int, customers: int, out: Path) -> None:
    """Write a realistic synthetic multi-channel history (18 months) as JSON Lines."""
    from crm_ledger.synthetic import generate as build

    events, truth = build(seed, customers=customers)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for tp in events:
            f.write(json.dumps(to_json(tp), separators=(",", ":")) + "\n")
    truth_path = out.with_suffix(".truth.json")
    truth_path.write_text(json.dumps(truth.as_dict(), indent=2) + "\n")
    emit_record(
        ctx,
        {
            "events": len(events),
            "customers": customers,
            "file": str(out),
            "truth": str(truth_path),
            "initiative": truth.initiative_id,
            "true_relative_uplift": truth.relative_uplift,
        },
        title="generated",
    )


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="crm-ledger")


if __name__ == "__main__":
    main()
