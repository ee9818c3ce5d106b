"""The Avro event contract: list, check, register."""

from __future__ import annotations

import click

from crm_ledger.cli.base import Context, as_dict, cli, emit, emit_record, pass_context
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
@click.option(
    "--registry",
    "registry_url",
    metavar="URL",
    help="Instead, push every registered version into the Confluent-compatible schema "
    "registry at URL with our ids (imported in its IMPORT mode; an id it gave another "
    "schema is an error), so its clients frame messages the ledger reads.",
)
@pass_context
def schemas_register(ctx: Context, registry_url: str | None) -> None:
    """Register each changed .avsc as a new version (refused if it breaks compatibility);
    with --registry URL, push the registered versions into another registry."""
    from crm_ledger import bootstrap

    if registry_url:
        pushed = [as_dict(p) for p in bootstrap.push_schemas(ctx.settings, registry_url)]
        emit(
            ctx, pushed, title=registry_url, columns=("subject", "version", "schema_id", "outcome")
        )
        return
    added = bootstrap.open_registry(ctx.settings).register()
    rows = [{"type": v.subject, "version": v.version, "schema_id": v.schema_id} for v in added]
    if not rows and ctx.output == "table":
        ctx.out.print("registered nothing: every schema is registered as it is")
        return
    emit(ctx, rows, title="registered", columns=("type", "version", "schema_id"))
