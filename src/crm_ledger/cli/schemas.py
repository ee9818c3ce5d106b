"""The Avro event contract: list, check, register."""

from __future__ import annotations

import click

from crm_ledger.cli.base import Context, cli, emit, emit_record, pass_context
from crm_ledger.errors import (
    IncompatibleSchema,
)

# Schemas.


@cli.group()
def schemas() -> None:
    """The Avro event contract: list, check and register schema versions."""


@schemas.command("list")
@pass_context
def schemas_list(ctx: Context) -> None:
    """Every event type with its registered versions and schema ids."""
    from crm_ledger import bootstrap

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
    from crm_ledger import bootstrap

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
    from crm_ledger import bootstrap

    added = bootstrap.open_registry(ctx.settings).register()
    rows = [{"type": v.subject, "version": v.version, "schema_id": v.schema_id} for v in added]
    if not rows and ctx.output == "table":
        ctx.out.print("registered nothing: every schema is registered as it is")
        return
    emit(ctx, rows, title="registered", columns=("type", "version", "schema_id"))
