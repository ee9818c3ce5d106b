"""The root command, its options and context, and the one-line error handling every command
shares; plus how results are printed (table, JSON, CSV) and progress bars."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import getpass
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from crm_ledger import __version__
from crm_ledger.config import Settings, read_secret
from crm_ledger.errors import CrmLedgerError, InvalidInput, NotFound

if TYPE_CHECKING:
    from crm_ledger.services import Services
    from crm_ledger.services.ports import Moment

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


def parse_when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        msg = f"{value!r} is not an ISO 8601 time such as 2025-03-01T12:00:00Z"
        raise click.BadParameter(msg) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def recorded_by(ctx: Context, value: str | None) -> datetime | None:
    """An --as-of value: an ISO 8601 time, or checkpoint:N for the moment the ledger signed
    checkpoint N (what it knew then, by a signed record of it)."""
    if value is None or not value.startswith("checkpoint:"):
        return parse_when(value)
    number = value.removeprefix("checkpoint:")
    if not number.isdigit():
        msg = f"{value!r}: use checkpoint:N with N a checkpoint number (audit checkpoint)"
        raise click.BadParameter(msg)
    with build(ctx.settings) as services:
        return services.audit.checkpoint_time(int(number))


def parse_moment(value: str) -> datetime:
    moment = parse_when(value)
    if moment is None:
        raise click.BadParameter("a time is required")
    return moment


# Output.


def plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()  # full precision: a printed time must work as --as-of
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, sort_keys=True)
    if value is None:
        return ""
    return str(value)


def emit(
    ctx: Context,
    rows: Sequence[dict[str, Any]],
    title: str | None = None,
    *,
    columns: Sequence[str] = (),
) -> None:
    """Print rows as a table, JSON (a list of objects) or CSV, by ``--format``. No rows is
    "nothing matched" in a table, [] in JSON and the header alone in CSV (``columns``)."""
    if ctx.output == "json":
        click.echo(json.dumps(list(rows), default=json_default, indent=2))
        return
    columns = list(rows[0]) if rows else list(columns)
    if not rows and ctx.output == "table":
        ctx.out.print(f"{title}: nothing matched" if title else "nothing matched")
        return
    if ctx.output == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: plain(v) for k, v in row.items()} for row in rows)
        click.echo(buffer.getvalue(), nl=False)
        return
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(plain(row[c]) for c in columns))
    ctx.out.print(table)


def emit_record(ctx: Context, record: dict[str, Any], title: str) -> None:
    """Print one object: a two-column table, a JSON object, or CSV field,value rows."""
    if ctx.output == "json":
        click.echo(json.dumps(record, default=json_default, indent=2))
        return
    emit(ctx, [{"field": k, "value": v} for k, v in record.items()], title=title)


def json_default(value: Any) -> Any:
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
        except Exception as e:
            denied = _refused(ctx, e)
            if denied is None:
                raise
            click.echo(f"crm-ledger: error: {denied}", err=True)
            ctx.exit(1)


def _refused(ctx: click.Context, error: Exception) -> CrmLedgerError | None:
    """``error`` as one line if the store refused the connected role a privilege."""
    obj = ctx.find_object(Context)
    if obj is None or not obj.settings.database_url:
        return None
    from crm_ledger import bootstrap

    return bootstrap.refusal(obj.settings, error)


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
    "--kafka-user",
    metavar="NAME",
    help="SASL user to authenticate to Kafka as [env CRM_LEDGER_KAFKA_USER].",
)
@click.option(
    "--kafka-password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File whose first line is the Kafka user's password [env CRM_LEDGER_KAFKA_PASSWORD "
    "or CRM_LEDGER_KAFKA_PASSWORD_FILE].",
)
@click.option(
    "--kafka-sasl-mechanism",
    type=click.Choice(["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]),
    help="SASL mechanism [env CRM_LEDGER_KAFKA_SASL_MECHANISM; default SCRAM-SHA-512].",
)
@click.option(
    "--kafka-ca-file",
    type=click.Path(dir_okay=False, exists=True),
    help="CA certificate that turns on TLS to Kafka (SASL_SSL) [env CRM_LEDGER_KAFKA_CA_FILE].",
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
    kafka_user: str | None,
    kafka_password_file: Path | None,
    kafka_sasl_mechanism: str | None,
    kafka_ca_file: str | None,
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
        kafka_user=kafka_user,
        kafka_password=read_secret(kafka_password_file) if kafka_password_file else None,
        kafka_sasl_mechanism=kafka_sasl_mechanism,
        kafka_ca_file=kafka_ca_file,
    )
    ctx.obj = Context(settings, output)


def progress_bar(ctx: Context) -> Progress:
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


def build(settings: Settings, **options: Any) -> Services:
    """bootstrap.build, imported when a command first needs it (the CLI starts without the
    event store, SQL, Kafka and numpy)."""
    from crm_ledger import bootstrap

    return bootstrap.build(settings, **options)


@contextlib.contextmanager
def open_services(ctx: Context, label: str | None = None) -> Iterator[Services]:
    """The services for one command; with a ``label``, a progress bar while the read models
    catch up."""
    if label is None:
        with build(ctx.settings) as services:
            yield services
        return
    with catch_up_bar(ctx, label) as bar, build(ctx.settings, progress=bar) as services:
        yield services


@contextlib.contextmanager
def logged(
    services: Services, action: str, subject: str | None, at: Moment | None = None
) -> Iterator[None]:
    """Record in the access log that this command (run by the operating-system user) read a
    customer's data or acted as an administrator, and what came of it; appended when the
    services close, before the command exits."""
    outcome = "allowed"
    try:
        yield
    except NotFound:
        outcome = "not-found"
        raise
    except InvalidInput:
        outcome = "invalid"
        raise
    except Exception as e:
        ctx = click.get_current_context(silent=True)
        outcome = "refused" if ctx is not None and _refused(ctx, e) else "failed"
        raise
    except BaseException:
        outcome = "failed"
        raise
    finally:
        services.access.record(
            actor=_os_user(),
            role="cli",
            client="cli",
            action=action,
            subject=subject,
            outcome=outcome,
            as_of=at.as_of if at else None,
            valid_at=at.valid_at if at else None,
        )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container, say)
        return f"uid:{os.getuid()}"


@contextlib.contextmanager
def catch_up_bar(ctx: Context, label: str = "projecting") -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr fed (position, head) pairs."""
    with progress_bar(ctx) as bar:
        task = bar.add_task(label, total=None, rate="-")
        started = time.perf_counter()
        first: list[int] = []

        def update(position: int, head: int) -> None:
            first[:] = first or [position]
            done = position - first[0]
            rate = done / max(1e-9, time.perf_counter() - started)
            bar.update(task, completed=position, total=head, rate=f"{rate:,.0f}")

        yield update


def as_dict(result: Any) -> dict[str, Any]:
    """A service's dataclass result as the dict JSON, CSV and tables print."""
    return dataclasses.asdict(result)


def fields_of(kind: Any) -> list[str]:
    """The column names of a service's dataclass (the CSV header when nothing matched)."""
    return [f.name for f in dataclasses.fields(kind)]


def note(ctx: Context, message: str) -> None:
    """Tell the user something about the answer (on stderr, so stdout stays data)."""
    ctx.err.print(f"crm-ledger: note: {message}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="crm-ledger")
