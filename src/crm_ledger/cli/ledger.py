"""Ledger commands: init, record, import, history, status, erase, generate."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from crm_ledger.cli.base import (
    Context,
    as_dict,
    cli,
    emit,
    emit_record,
    logged,
    open_services,
    parse_when,
    pass_context,
    plain,
    progress_bar,
    recorded_by,
)
from crm_ledger.errors import InvalidInput
from crm_ledger.services.ports import Moment

if TYPE_CHECKING:
    import io
    from collections.abc import Callable, Iterator

    from rich.progress import TaskID


# init, record, import.


@cli.command()
@pass_context
def init(ctx: Context) -> None:
    """Create the ledger's store (SQLite file or PostgreSQL tables)."""
    from crm_ledger import bootstrap

    with bootstrap.build(ctx.settings, create=True) as services:
        created = bootstrap.create_signing_key(ctx.settings)
        status = services.records.status()
    emit_record(
        ctx,
        as_dict(status)
        | {
            "signing_key": str(bootstrap.audit_keys_dir(ctx.settings))
            + (" (created)" if created else "")
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
    with open_services(ctx) as services:
        try:
            done = services.records.record_json(obj)
        except InvalidInput as e:
            raise InvalidInput(f"{name}: {e}") from None
    emit_record(
        ctx,
        {
            "event_id": done.event_id,
            "type": done.type,
            "customer_id": done.customer_id,
            "result": "recorded" if done.stored else "duplicate (already in the ledger)",
        },
        title="record",
    )


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
    from crm_ledger import bootstrap

    bootstrap.tune_for_throughput()
    chosen = bootstrap.file_sources(ctx.settings, files, "cdnow" if cdnow else kind)
    with open_services(ctx) as services, _import_bar(ctx) as progress:
        report = services.imports.run(chosen, batch_size=batch_size, progress=progress)
    totals = as_dict(report)
    problems = totals.pop("problems")
    emit_record(ctx, totals, title="import")
    for line in problems[:20]:
        click.echo(f"crm-ledger: rejected: {line}", err=True)
    if problems:
        msg = f"{len(problems)} events were refused by the ledger's rules (listed above)"
        raise InvalidInput(msg)


@contextlib.contextmanager
def _import_bar(ctx: Context) -> Iterator[Callable[[str, int, int], None]]:
    """A bar per file, with the rate so far, fed (file, written, total)."""
    with progress_bar(ctx) as bar:
        tasks: dict[str, TaskID] = {}
        started = time.perf_counter()

        def update(name: str, done: int, total: int) -> None:
            if name not in tasks:
                label = f"importing {Path(name).name}"
                tasks[name] = bar.add_task(label, total=total, rate="-")
            rate = done / max(time.perf_counter() - started, 1e-6)
            bar.update(tasks[name], completed=done, rate=f"{rate:,.0f}")

        yield update


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
    topics' retention, and the date is printed. Role: admin (recorded in the access log); on
    a shared PostgreSQL store, a login in the owner role (`crm-ledger db --help`)."""
    with open_services(ctx) as services, logged(services, "erase", customer_id):
        erased = services.audit.erase(customer_id, reason=reason, actor=actor)
    emit_record(ctx, as_dict(erased), title="erased")


@cli.command()
@click.argument("customer_id")
@click.option(
    "--as-of",
    "as_of",
    metavar="TIME",
    help="Only events recorded by TIME (ISO 8601 or checkpoint:N).",
)
@click.option("--limit", type=click.IntRange(1), help="Show only the last N events.")
@pass_context
def history(ctx: Context, customer_id: str, as_of: str | None, limit: int | None) -> None:
    """Every stored event of CUSTOMER_ID with occurred and recorded time, source and actor.
    Role: agent or auditor (personal data; recorded in the access log); on a shared PostgreSQL
    store, not the reader role."""
    as_of_time = recorded_by(ctx, as_of)
    at = Moment(as_of=as_of_time)
    with open_services(ctx) as services, logged(services, "history", customer_id, at):
        entries = services.records.history(customer_id, as_of=as_of_time, limit=limit)
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
    with open_services(ctx) as services:
        status = services.records.status()
    emit_record(ctx, as_dict(status), title="status")


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
@click.option(
    "--split-at",
    "split_at",
    metavar="DATE",
    help="Also write the history as two deliveries: NAME.backfill.jsonl (what occurred "
    "before DATE, less some late arrivals) and NAME.later.jsonl (the rest, the late arrivals "
    "and backdated profile corrections). Import them one after the other to see --as-of "
    "and --valid-at differ.",
)
@pass_context
def generate(ctx: Context, seed: int, customers: int, out: Path, split_at: str | None) -> None:
    """Write a realistic synthetic multi-channel history (18 months, 2024-01-01 to
    2025-06-30) as JSON Lines."""
    from crm_ledger.sources import files as sources
    from crm_ledger.sources.synthetic import generate as build
    from crm_ledger.sources.synthetic import split_waves

    split = parse_when(split_at)
    events, truth = build(seed, customers=customers)
    summary: dict[str, Any] = {"customers": customers}
    if split is not None:
        waves = split_waves(events, truth, split)
        events = sorted(waves.backfill + waves.later, key=lambda e: e.occurred_at)
        for name, part in (("backfill", waves.backfill), ("later", waves.later)):
            sources.write_jsonl(out.with_suffix(f".{name}.jsonl"), part)
            summary[f"{name}_file"] = str(out.with_suffix(f".{name}.jsonl"))
            summary[f"{name}_events"] = len(part)
        summary |= {"late_arrivals": waves.late, "corrected_customers": len(waves.corrected)}
    truth.events = len(events)
    sources.write_jsonl(out, events)
    truth_path = out.with_suffix(".truth.json")
    truth_path.write_text(json.dumps(truth.as_dict(), indent=2) + "\n")
    emit_record(
        ctx,
        {"events": len(events), "file": str(out), "truth": str(truth_path)}
        | summary
        | {"initiative": truth.initiative_id, "true_relative_uplift": truth.relative_uplift},
        title="generated",
    )
