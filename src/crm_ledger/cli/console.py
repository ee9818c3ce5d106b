"""The web console: serve it, and manage its users."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import click

from crm_ledger.cli.base import (
    Context,
    as_dict,
    cli,
    emit,
    emit_record,
    logged,
    open_services,
    pass_context,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

ROLES = ("agent", "analyst", "auditor", "admin")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8600, show_default=True)
@pass_context
def serve(ctx: Context, host: str, port: int) -> None:
    """Serve the web console (search, the customer 360 as of any moment, journeys, value,
    initiatives, operations) and its JSON API on HOST:PORT, over this ledger, with the
    Confluent Schema Registry API over our schemas (read-only) for Kafka clients. Sign in
    with a user made by `crm-ledger users add`; stop with Ctrl-C."""
    from crm_ledger import bootstrap
    from crm_ledger.web.server import serve as run

    users = bootstrap.open_users(ctx.settings)
    if not users.every():
        msg = "no console users yet: add one with `crm-ledger users add NAME --role admin`"
        raise click.UsageError(msg)
    # Read-only: catching up is the console's explicit, exclusive step (see web.app.Console).
    with bootstrap.build(ctx.settings, read_only=True) as services:
        services.read_models.catch_up()
        click.echo(f"crm-ledger console on http://{host}:{port}/ (Ctrl-C stops it)", err=True)
        registry = bootstrap.open_registry(ctx.settings)
        run(services, users, bootstrap.console_secret(ctx.settings), (host, port), registry)


@cli.group()
def users() -> None:
    """The console's users: names, roles (agent, analyst, auditor, admin), passwords, API
    tokens. An administrator's act: each change is recorded in the access log (once the
    ledger exists)."""


@contextlib.contextmanager
def _user_change(ctx: Context, action: str, name: str) -> Iterator[None]:
    """Record a change of user NAME in the access log, allowed or refused; a key folder
    without a ledger yet (users made before `init`) has no log to record into."""
    if not (ctx.settings.database_url or ctx.settings.sqlite_path.exists()):
        yield
        return
    with open_services(ctx) as services, logged(services, action, name):
        yield


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.password_option(help="At least 12 characters (asked for when not given).")
@pass_context
def users_add(ctx: Context, name: str, role: str, password: str) -> None:
    """Add user NAME with ROLE."""
    from crm_ledger import bootstrap

    with _user_change(ctx, "user-add", name):
        user = bootstrap.open_users(ctx.settings).add(name, role, password)
    emit_record(ctx, {"name": user.name, "role": user.role}, title="user added")


@users.command("list")
@pass_context
def users_list(ctx: Context) -> None:
    """Every user with their role and whether they are disabled."""
    from crm_ledger import bootstrap

    rows = [as_dict(u) for u in bootstrap.open_users(ctx.settings).every()]
    emit(ctx, rows, title="users", columns=("name", "role", "disabled"))


@users.command("disable")
@click.argument("name")
@pass_context
def users_disable(ctx: Context, name: str) -> None:
    """Stop NAME from signing in (their open sessions end at their next request)."""
    from crm_ledger import bootstrap

    with _user_change(ctx, "user-disable", name):
        bootstrap.open_users(ctx.settings).disable(name)
    emit_record(ctx, {"name": name, "disabled": True}, title="user disabled")


@users.command("passwd")
@click.argument("name")
@click.password_option(help="At least 12 characters (asked for when not given).")
@pass_context
def users_passwd(ctx: Context, name: str, password: str) -> None:
    """Set NAME's password."""
    from crm_ledger import bootstrap

    with _user_change(ctx, "user-passwd", name):
        bootstrap.open_users(ctx.settings).passwd(name, password)
    emit_record(ctx, {"name": name, "password": "changed"}, title="password changed")


@users.command("token")
@click.argument("name")
@pass_context
def users_token(ctx: Context, name: str) -> None:
    """Issue an API token for user NAME: programs send it as `Authorization: Bearer TOKEN` to
    the console's /api/ routes and act with NAME's role. It is printed once; only its hash
    is kept."""
    from crm_ledger import bootstrap

    with _user_change(ctx, "user-token", name):
        token = bootstrap.open_users(ctx.settings).issue_token(name)
    click.echo(token)
    click.echo(f"an API token for {name}: shown once, keep it secret", err=True)


@users.command("revoke-tokens")
@click.argument("name")
@pass_context
def users_revoke_tokens(ctx: Context, name: str) -> None:
    """Revoke every API token of user NAME."""
    from crm_ledger import bootstrap

    with _user_change(ctx, "user-revoke-tokens", name):
        count = bootstrap.open_users(ctx.settings).revoke_tokens(name)
    emit_record(ctx, {"name": name, "revoked": count}, title="tokens revoked")
