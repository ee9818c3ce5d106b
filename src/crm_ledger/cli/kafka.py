"""Kafka commands: publish, ingest, positions, dead letters and lag."""

from __future__ import annotations

import json
import logging
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from crm_ledger.cli.base import (
    Context,
    as_dict,
    cli,
    emit,
    emit_record,
    fields_of,
    logged,
    open_services,
    pass_context,
    progress_bar,
)
from crm_ledger.errors import (
    InvalidEventInBatch,
    InvalidInput,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.progress import Progress

    from crm_ledger.bootstrap import IngestStats


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
    from crm_ledger import bootstrap

    bootstrap.tune_for_throughput()
    path = Path("/dev/stdin") if str(source) == "-" else source
    read = list(bootstrap.file_sources(ctx.settings, [path], "jsonl")[0].read())
    lines, events = [line for line, _ in read], [tp for _, tp in read]
    with bootstrap.open_publisher(ctx.settings) as publisher:
        try:
            results = publisher.publish_many(events)
        except InvalidEventInBatch as e:
            raise InvalidInput(f"{source}, line {lines[e.index]}: {e.error}") from None
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


def _batch_reporter(ctx: Context, progress: Progress) -> Callable[[IngestStats], None]:
    """Per batch: the progress bar on a terminal, else one JSON log line."""
    task = progress.add_task("ingesting", total=None, rate="-")

    def on_batch(stats: IngestStats) -> None:
        if ctx.err.is_terminal:
            progress.update(task, completed=stats.consumed, rate=f"{stats.rate:,.0f}")
        else:
            _log_json(stats)

    return on_batch


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
    from crm_ledger import bootstrap

    bootstrap.tune_for_throughput()
    _log_to_stderr(ctx)
    progress = progress_bar(ctx)
    with open_services(ctx) as services:
        worker = bootstrap.open_ingest_worker(
            ctx.settings,
            services.ledger,
            max_batch=batch_size,
            on_batch=_batch_reporter(ctx, progress),
            on_assign=lambda partitions: _log_event("assigned", partitions=partitions),
        )
        _stop_on_signals(worker.stop)
        if not ctx.err.is_terminal:
            _log_event("started", topic=ctx.settings.kafka_topic, group=ctx.settings.kafka_group)
        with progress:
            stats = worker.run(
                max_events=max_events, until_idle=until_idle, until_caught_up=until_caught_up
            )
    emit_record(ctx, _ingest_summary(stats), title="ingest")


def _ingest_summary(stats: Any) -> dict[str, int]:
    return {
        "consumed": stats.consumed,
        "recorded": stats.recorded,
        "duplicates": stats.duplicates,
        "dead_lettered": stats.dead_lettered,
        "batches": stats.batches,
        "events_per_second": round(stats.rate),
    }


@cli.group()
def positions() -> None:
    """Where the ledger has read its sources (Kafka topics) up to."""


@positions.command("show")
@click.option("--topic", metavar="NAME", help="The topic [default: the touchpoint topic].")
@pass_context
def positions_show(ctx: Context, topic: str | None) -> None:
    """Per partition, the next offset the ledger will read."""
    with open_services(ctx) as services:
        rows = services.kafka.positions(topic)
    source = topic or ctx.settings.kafka_topic
    from crm_ledger.services.operations import PositionRow

    emit(
        ctx,
        [as_dict(r) for r in rows],
        title=f"positions of {source}",
        columns=fields_of(PositionRow),
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
    with open_services(ctx) as services:
        count = services.kafka.reset_positions(source)
    emit_record(ctx, {"topic": source, "partitions_reset": count}, title="positions reset")


@cli.group()
def dlq() -> None:
    """The dead-letter topic: messages the ledger could not take, and why."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(1), help="Show only the last N.")
@pass_context
def dlq_list(ctx: Context, limit: int | None) -> None:
    """Every dead letter with its reason and where it came from."""
    with open_services(ctx) as services:
        letters = services.kafka.dead_letters(limit)
    emit(
        ctx,
        [as_dict(d) for d in letters],
        title=f"dead letters ({len(letters)})",
    )


@dlq.command("redrive")
@pass_context
def dlq_redrive(ctx: Context) -> None:
    """Re-publish dead letters not redriven before to their source topic (after a fix).

    The ingest worker then takes them like any other message; one that still fails returns
    to the dead-letter topic. How far redrive got is kept in the ledger, so each dead letter
    is redriven once. Role: admin (recorded in the access log); Kafka: a principal with the
    operator ACLs (`crm-ledger kafka acls --help`).
    """
    with open_services(ctx) as services, logged(services, "redrive", None):
        count = services.kafka.redrive()
    emit_record(ctx, {"redriven": count}, title="dlq redrive")


@cli.command("lag")
@pass_context
def lag_(ctx: Context) -> None:
    """Per partition: the ledger's stored position against the topic's end."""
    with open_services(ctx) as services:
        rows = services.kafka.lag()
    emit(
        ctx,
        [as_dict(r) for r in rows],
        title=f"lag (total {sum(r.lag for r in rows)})",
    )


ACLS_HELP = """Kafka principals and ACLs: least privilege on the ledger's topics.

\b
With no option, lists the ACLs on the touchpoint and dead-letter topics and the ingest
group. Each option grants a SASL user one role (repeat it for more users):
  --service USER   Write on the touchpoint topic: publish, and nothing else
  --worker USER    Read on the touchpoint topic and the ingest group, Write on the
                   dead-letter topic: `crm-ledger ingest`
  --operator USER  Read on the dead-letter topic, Write on the touchpoint topic:
                   `dlq list`, `dlq redrive`, `lag`
Run it as a super user or a principal allowed to create topics and ACLs; it creates the
topics first. The cluster must run an authorizer with allow.everyone.if.no.acl.found=false
(scripts/kafka_server.sh's test broker does, on its SASL listener). Users authenticate with
--kafka-user and --kafka-password-file (or CRM_LEDGER_KAFKA_USER / _PASSWORD).
"""


@cli.group()
def kafka() -> None:
    """Kafka administration: principals and ACLs."""


@kafka.command(help=ACLS_HELP)
@click.option("--service", "services", multiple=True, metavar="USER")
@click.option("--worker", "workers", multiple=True, metavar="USER")
@click.option("--operator", "operators", multiple=True, metavar="USER")
@pass_context
def acls(
    ctx: Context, services: tuple[str, ...], workers: tuple[str, ...], operators: tuple[str, ...]
) -> None:
    from crm_ledger import bootstrap

    roles = [("service", u) for u in services] + [("worker", u) for u in workers]
    roles += [("operator", u) for u in operators]
    bindings = bootstrap.kafka_acls(ctx.settings, roles)
    emit(ctx, [as_dict(b) for b in bindings], title="ACLs", columns=ACL_COLUMNS)


ACL_COLUMNS = ("principal", "operation", "resource_type", "resource", "permission")
