"""Database roles on a shared PostgreSQL store: ``db grant`` and ``db role``."""

from __future__ import annotations

import click

from crm_ledger.cli.base import Context, as_dict, cli, emit, emit_record, pass_context

ROLES_HELP = """Least privilege on a shared PostgreSQL store.

\b
`db grant` sets up three group roles (NOLOGIN) on the ledger's schema:
  PREFIX_owner   DDL and the administrator's path: erase, projections rebuild and
                 catch-up, audit checkpoint, dlq reset; owns every table
  PREFIX_writer  ingest and import: INSERT events, chain rows, receipts, keys,
                 snapshots, dead letters; positions only move forward
  PREFIX_reader  analysts: SELECT on the read models, and its own reads appended
                 to the access log; no customer event, chain row or data key
No role may UPDATE, DELETE or TRUNCATE events, chain rows, receipts or checkpoints (a
trigger refuses it, the owner included). Give people and services login roles in a group:

\b
  CREATE ROLE ingest LOGIN PASSWORD '…' IN ROLE crm_ledger_writer;
  CREATE ROLE ana LOGIN PASSWORD '…' IN ROLE crm_ledger_reader;
  CREATE ROLE ops LOGIN PASSWORD '…' IN ROLE crm_ledger_owner;
  ALTER ROLE ops SET role = 'crm_ledger_owner';  -- read models it makes stay readable

The CLI acts as the role its --database-url connects with; a refused statement is one
line and exit code 1.
"""


@cli.group(help=ROLES_HELP)
def db() -> None:
    pass


@db.command()
@click.option(
    "--prefix",
    metavar="NAME",
    help="Role names start with this [default: crm_ledger, or crm_ledger_SCHEMA for a "
    "schema other than public].",
)
@pass_context
def grant(ctx: Context, prefix: str | None) -> None:
    """Create the owner, writer and reader roles and grant each what it needs.

    Role: a PostgreSQL superuser (or a role with CREATEROLE that owns the ledger). Brings
    the read models up to date first, so the reader has tables to read; run it again after
    a schema change. Safe to repeat.
    """
    from crm_ledger import bootstrap

    with bootstrap.build(ctx.settings) as services:
        services.projections.catch_up()
    grants = bootstrap.grant_roles(ctx.settings, prefix)
    emit(ctx, [as_dict(g) for g in grants], title="roles")


@db.command()
@pass_context
def role(ctx: Context) -> None:
    """Which role this process connects as, and what it may do in the ledger's schema."""
    from crm_ledger import bootstrap

    access = bootstrap.store_role(ctx.settings)
    emit_record(ctx, as_dict(access), title="database role")
