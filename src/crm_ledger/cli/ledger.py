"""Ledger commands: init, record, import, history, status, erase, generate."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from crm_ledger import bootstrap
from crm_ledger.adapters.avro import to_json
from crm_ledger.application import BatchResult, Rejection
from crm_ledger.cli.base import (
    Context,
    cli,
    emit,
    emit_record,
    parse_when,
    pass_context,
    plain,
    progress_bar,
)
from crm_ledger.errors import (
    InvalidInput,
    UnreadableFile,
)
from crm_ledger.sources import files as sources

if TYPE_CHECKING:
    import io
    from collections.abc import Iterable, Iterator

    from crm_ledger.adapters.avro import Codec
    from crm_ledger.aggregates import Touchpoint
    from crm_ledger.application import Ledger


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
    with progress_bar(ctx) as progress:
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


@cli.command()
@click.argument("customer_id")
@click.option("--as-of", "as_of", metavar="TIME", help="Only events recorded by TIME (ISO 8601).")
@click.option("--limit", type=click.IntRange(1), help="Show only the last N events.")
@pass_context
def history(ctx: Context, customer_id: str, as_of: str | None, limit: int | None) -> None:
    """Every stored event of CUSTOMER_ID with occurred and recorded time, source and actor."""
    with bootstrap.open_ledger(ctx.settings) as ledger:
        entries = ledger.history(customer_id, as_of=parse_when(as_of))
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
    parts = [f"{k}={plain(v)}" for k, v in details.items() if v is not None]
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
    from crm_ledger.sources.synthetic import generate as build

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
