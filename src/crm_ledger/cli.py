"""The ``crm-ledger`` command line: parse, call bootstrap and the use cases, print."""

from __future__ import annotations

import csv
import io
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from crm_ledger import __version__, bootstrap
from crm_ledger.adapters import sources
from crm_ledger.adapters.avro import to_json
from crm_ledger.adapters.kafka import IngestStats, dead_letters, lag, redrive
from crm_ledger.application import BatchResult, Rejection
from crm_ledger.config import Settings
from crm_ledger.errors import (
    CrmLedgerError,
    IncompatibleSchema,
    InvalidEventInBatch,
    InvalidInput,
    UnreadableFile,
)

if TYPE_CHECKING:
    from crm_ledger.adapters.avro import Codec
    from crm_ledger.aggregates import Touchpoint
    from crm_ledger.application import Ledger

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
    """Turns every CrmLedgerError into one line on stderr and exit code 1."""

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
        emit_record(
            ctx,
            {"store": ctx.settings.store_name, "location": where, "events": ledger.count_events()},
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
    with bootstrap.open_ledger(ctx.settings, create=True) as ledger:
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
    with bootstrap.open_ledger(ctx.settings, create=True) as ledger:
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


@customer.command("show")
@click.argument("customer_id")
@pass_context
def customer_show(ctx: Context, customer_id: str) -> None:
    """Profile, lifecycle, consent, identities, organisations and merge state of CUSTOMER_ID."""
    with bootstrap.open_ledger(ctx.settings) as ledger:
        view = ledger.customer(customer_id)
    consent = {k: ("granted" if v["granted"] else "withdrawn") for k, v in view.consent.items()}
    record_ = {
        "customer_id": view.customer_id,
        **{f"profile.{k}": v for k, v in sorted(view.profile.items())},
        "lifecycle_stage": view.lifecycle_stage,
        "consent": consent,
        "identities": [f"{s}:{v}" for s, v in view.identities],
        "organisations": view.organisations,
        "merged_into": view.merged_into,
        "merged_from": view.merged_from,
        "erased": view.erased,
        "touchpoints": view.touchpoints,
        "orders": view.orders,
        "refunds": view.refunds,
        "interactions": view.interactions,
        "active_subscriptions": view.active_subscriptions,
        "open_tickets": view.open_tickets,
        "first_occurred_at": view.first_occurred_at,
        "last_occurred_at": view.last_occurred_at,
        "first_recorded_at": view.first_recorded_at,
        "last_recorded_at": view.last_recorded_at,
        "stream_version": view.version,
    }
    emit_record(ctx, record_, title=f"customer {customer_id}")


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


@cli.command()
@click.option("--max-events", type=click.IntRange(1), help="Stop after this many messages.")
@click.option(
    "--until-idle",
    type=click.FloatRange(0),
    metavar="SECONDS",
    help="Stop when no message arrived for this long.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 50_000),
    default=5000,
    show_default=True,
    help="Most messages per ledger transaction.",
)
@pass_context
def ingest(ctx: Context, max_events: int | None, until_idle: float | None, batch_size: int) -> None:
    """Consume the touchpoint topic into the ledger, exactly once.

    Runs until SIGTERM or Ctrl-C (finishing the batch in hand), or until --max-events or
    --until-idle. Bad messages go to the dead-letter topic with the reason. On a terminal it
    shows progress; otherwise it writes one JSON log line per batch to stderr.
    """
    bootstrap.tune_for_throughput()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with bootstrap.open_ledger(ctx.settings, create=True) as ledger:
        progress = _progress(ctx)
        task = progress.add_task("ingesting", total=None, rate="-")

        def on_batch(stats: IngestStats) -> None:
            if ctx.err.is_terminal:
                progress.update(task, completed=stats.consumed, rate=f"{stats.rate:,.0f}")
            else:
                _log_json(stats)

        def on_assign(partitions: list[int]) -> None:
            click.echo(
                json.dumps(
                    {
                        "at": datetime.now(UTC).isoformat(),
                        "event": "assigned",
                        "partitions": partitions,
                    }
                ),
                err=True,
            )

        worker = bootstrap.open_ingest_worker(
            ctx.settings, ledger, max_batch=batch_size, on_batch=on_batch, on_assign=on_assign
        )
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: worker.stop())
        with progress:
            stats = worker.run(max_events=max_events, until_idle=until_idle)
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
    with bootstrap.open_ledger(ctx.settings, create=True) as ledger:
        letters = redrive(bootstrap.kafka_settings(ctx.settings), ledger)
    emit_record(ctx, {"redriven": len(letters)}, title="dlq redrive")


@cli.command("lag")
@pass_context
def lag_(ctx: Context) -> None:
    """Per partition: the ledger's stored position against the topic's end."""
    with bootstrap.open_ledger(ctx.settings, create=True) as ledger:
        rows = lag(bootstrap.kafka_settings(ctx.settings), ledger)
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
