"""Audit commands (checkpoints, verification, history, exports) and the key folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from crm_ledger.cli.base import (
    Context,
    as_dict,
    cli,
    emit,
    emit_record,
    fields_of,
    logged,
    note,
    open_services,
    pass_context,
    recorded_by,
)
from crm_ledger.errors import (
    InvalidInput,
)
from crm_ledger.services.ports import Moment

if TYPE_CHECKING:
    import io


@cli.group()
def audit() -> None:
    """Tamper-evident history: signed checkpoints and verification."""


@audit.command("checkpoint")
@pass_context
def audit_checkpoint(ctx: Context) -> None:
    """Sign (Ed25519) the current head of every stream's hash chain into a checkpoint.

    The signature covers every field and the link to the previous checkpoint; the receipt is
    appended to the auditor's copy (CRM_LEDGER_AUDIT_RECEIPTS; default in the key folder),
    against which `audit verify` finds checkpoints removed from the database. Role: auditor
    or admin (recorded in the access log); on a shared PostgreSQL store, the owner role.
    """
    with open_services(ctx) as services, logged(services, "checkpoint", None):
        signed = services.audit.checkpoint()
    emit_record(ctx, as_dict(signed), title="checkpoint signed")


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
    with open_services(ctx) as services:
        result = services.audit.verify(since)
    rows = [as_dict(f) for f in result.findings]
    summary = (
        f"{result.events:,} stored events ({result.touchpoints:,} touchpoints, the rest "
        f"opening streams) in {result.streams:,} streams, {result.checkpoints} "
        f"checkpoints checked in {result.seconds:.1f} s: "
        + ("intact" if result.ok else f"{len(result.findings)} problems")
    )
    if ctx.output == "json":
        click.echo(
            json.dumps(
                {
                    "ok": result.ok,
                    "events": result.events,
                    "touchpoints": result.touchpoints,
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
@click.option(
    "--as-of",
    "as_of",
    metavar="TIME",
    help="Only facts recorded by TIME (ISO 8601 or checkpoint:N).",
)
@pass_context
def audit_history(ctx: Context, customer_id: str, as_of: str | None) -> None:
    """Every fact about CUSTOMER_ID: who (actor), which service (source), when it occurred
    and when it was recorded, with the event's content and chain hash."""
    as_of_time = recorded_by(ctx, as_of)
    at = Moment(as_of=as_of_time)
    with open_services(ctx) as services, logged(services, "audit-history", customer_id, at):
        rows = [as_dict(e) for e in services.audit.history(customer_id, as_of_time)]
    if ctx.output == "table":
        for row in rows:
            row["occurred_at"] = f"{row['occurred_at']:%Y-%m-%d %H:%M:%S}"
            row["recorded_at"] = f"{row['recorded_at']:%Y-%m-%d %H:%M:%S}"
            row["content_hash"] = (row["content_hash"] or "")[:12]
            row["chain_hash"] = (row["chain_hash"] or "")[:12]
            del row["event_id"]
    from crm_ledger.services.audit import AuditEntry

    title = f"audit history of {customer_id}{' as of ' + as_of if as_of else ''}"
    emit(ctx, rows, title=title, columns=fields_of(AuditEntry))


@audit.command("export")
@click.argument("customer_id")
@click.option("--out", type=click.File("w"), default="-", help="JSON Lines file [stdout].")
@pass_context
def audit_export(ctx: Context, customer_id: str, out: io.TextIOBase) -> None:
    """Write CUSTOMER_ID's stored events as JSON Lines for an external auditor, with the
    proofs to check them offline (crm-ledger audit verify-export): each event's bytes and
    hashes, the newest checkpoint that signed the stream, and the heads it signed. Role:
    auditor (recorded in the access log); on a shared PostgreSQL store, the owner role (the
    reader may not read customers' events)."""
    events = 0
    with open_services(ctx) as services, logged(services, "audit-export", customer_id):
        for line in services.audit.export(customer_id):
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
            events += line["kind"] == "event"
    where = getattr(out, "name", "<stdout>")
    note(ctx, f"exported {events} events of {customer_id} with their proofs to {where}")


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
    from crm_ledger import bootstrap

    signer = bootstrap.verifier(public_key.read_bytes())
    try:
        lines = [json.loads(line) for line in file.read_bytes().splitlines() if line.strip()]
        if not all(isinstance(line, dict) for line in lines):
            raise ValueError("every line must be a JSON object")
        from crm_ledger.audit import verify_export

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
    from crm_ledger import bootstrap

    click.echo(bootstrap.open_signer(ctx.settings).public_pem(), nl=False)


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
    with open_services(ctx) as services:
        count = services.records.rotate_keys()
    emit_record(
        ctx, {"data_keys": count, "key_folder": str(ctx.settings.key_folder)}, title="rotated"
    )
