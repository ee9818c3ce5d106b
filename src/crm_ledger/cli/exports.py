"""The export command: customers, orders, timelines, value and CLV for spreadsheets and
notebooks."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import click

from crm_ledger.cli.base import (
    Context,
    as_dict,
    cli,
    emit_record,
    logged,
    open_services,
    pass_context,
    progress_bar,
)

KINDS = ("customers", "orders", "timeline", "ltv", "clv")


@cli.command("export")
@click.argument("kind", type=click.Choice(KINDS))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File to write; its suffix chooses the format: .csv, .jsonl or .parquet.",
)
@click.option("--customer", metavar="ID", help="Only this customer (and those merged into it).")
@click.option(
    "--include-personal",
    is_flag=True,
    help="Customers only: add name, e-mail and phone (left out unless asked for).",
)
@pass_context
def export(
    ctx: Context, kind: str, out: Path, customer: str | None, include_personal: bool
) -> None:
    """Write every row of KIND to --out, streamed (memory stays flat): customers (directory
    attributes), orders (placed and refunded, both times), timeline (every touch), ltv (per
    customer and currency, minor units) or clv (the latest model's predictions).

    \b
    Examples:
      crm-ledger export orders --out orders.parquet
      crm-ledger export timeline --customer C000142 --out c142.csv
      crm-ledger export customers --include-personal --out customers.jsonl

    Role: analyst; with --include-personal, admin (recorded in the access log). On a shared
    PostgreSQL store the reader role exports what the read models hold; personal fields
    take the owner role.
    """
    started = time.perf_counter()
    bar = progress_bar(ctx)
    task = bar.add_task(f"exporting {kind}", total=None, rate="-")

    def progress(rows: int) -> None:
        rate = rows / max(time.perf_counter() - started, 1e-6)
        bar.update(task, completed=rows, rate=f"{rate:,.0f}")

    with bar, open_services(ctx, "projecting") as services:
        # Personal data in bulk is an administrative act: it goes in the access log.
        reading = logged(services, "export-personal", customer) if include_personal else None
        with reading or contextlib.nullcontext():
            done = services.exports.export(
                kind, out, customer=customer, include_personal=include_personal, progress=progress
            )
    emit_record(
        ctx, as_dict(done) | {"seconds": round(time.perf_counter() - started, 2)}, title="exported"
    )
