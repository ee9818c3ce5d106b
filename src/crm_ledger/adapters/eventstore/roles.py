"""Least privilege on a shared PostgreSQL store: three group roles, the grants each needs, and
the triggers and row-level security that refuse what grants alone cannot.

- **owner** (``PREFIX_owner``) owns the schema and every table: DDL, and the administrator's
  path — erasure (a data key set to NULL, then ``VACUUM FULL``, which PostgreSQL allows only
  to the owner), projection rebuilds and catch-up, checkpoints, position resets.
- **writer** (``PREFIX_writer``) is the ingest worker and importer: it may add events, chain
  rows, receipts, data keys, snapshots and dead letters, and move its positions forward; it
  may not change or remove any of them, nor read the read models.
- **reader** (``PREFIX_reader``) is the analyst: it reads the read models (the projection
  tables, now and as they are made later) and appends its own reads to the access log; it
  cannot see any event, chain row or data key of a customer.

eventsourcing serialises appends with ``LOCK TABLE … IN EXCLUSIVE MODE``, which PostgreSQL
allows only to a role holding UPDATE, DELETE or TRUNCATE on the table; so the roles that
append hold UPDATE on the events table, and a statement trigger refuses every UPDATE, DELETE
and TRUNCATE on the append-only tables, for every role the owner included (the owner can
drop the trigger — DDL is its job — and the hash chain still finds any change it then makes).
Refusals carry SQLSTATE 42501 (insufficient_privilege), as PostgreSQL's own do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.sql import SQL, Identifier, Literal

from crm_ledger.adapters.eventstore.postgres import check_url
from crm_ledger.application.access import ACCESS_STREAM
from crm_ledger.errors import StoreUnavailable

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Tables no role may change or empty once written.
#: (The events table, whose rows carry the hash chain, is append-only too.)
APPEND_ONLY = ("ledger_receipts", "ledger_checkpoints", "ledger_checkpoint_heads")
#: The policies ``grant_roles`` makes (dropped first, so that it can run again).
POLICIES = ("crm_ledger_roles", "crm_ledger_access_read", "crm_ledger_access_append")
#: Topics of the initiatives' events, which the reader may read.
INITIATIVE_TOPICS = "crm_ledger.aggregates.initiative:%"
#: The ledger's own tables besides the events and snapshots (everything else is a read model).
LEDGER_TABLES = (*APPEND_ONLY, "ledger_keys", "ledger_positions", "ledger_outbox")


@dataclass(frozen=True, slots=True)
class RoleGrant:
    """What one role may do after ``grant_roles``."""

    role: str
    purpose: str
    may: str
    refused: str


@dataclass(frozen=True, slots=True)
class RoleAccess:
    """What the connected role may do in the ledger's schema."""

    user: str
    may_create: bool  # DDL in the schema (the owner)
    may_project: bool  # read events and data keys, and so catch the read models up


def role_names(prefix: str) -> tuple[str, str, str]:
    """(owner, writer, reader) for ``prefix``."""
    return f"{prefix}_owner", f"{prefix}_writer", f"{prefix}_reader"


def grant_roles(
    url: str, schema: str, *, prefix: str, events: str, snapshots: str
) -> list[RoleGrant]:
    """Create (or bring up to date) the three roles on the ledger in ``schema`` and hand them
    their privileges, in one transaction. Run it as a superuser, or as a role with CREATEROLE
    that owns the ledger's tables; run it again after adding tables by hand."""
    owner, writer, reader = role_names(prefix)
    try:
        with psycopg.connect(url, connect_timeout=10) as conn, conn.transaction():
            for role in (owner, writer, reader):
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname=%s", [role]).fetchone():
                    continue
                conn.execute(SQL("CREATE ROLE {} NOLOGIN").format(Identifier(role)))
            tables = [
                str(row[0])
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname=%s", [schema]
                ).fetchall()
            ]
            if events not in tables:
                msg = f"no ledger in schema {schema!r}; run `crm-ledger init` first"
                raise StoreUnavailable(msg)
            plan = _Plan(schema, (owner, writer, reader), tables, events)
            for statement in plan.statements(snapshots):
                conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as e:
        msg = f"PostgreSQL refused to set up the roles: {e.diag.message_primary or e}"
        raise StoreUnavailable(msg) from None
    except psycopg.OperationalError as e:
        raise StoreUnavailable(f"cannot reach PostgreSQL: {_first_line(e)}") from None
    return [
        RoleGrant(
            owner,
            "DDL; erasure, rebuilds, catch-up, checkpoints (the administrator)",
            "everything in the schema but changing appended rows",
            "UPDATE/DELETE/TRUNCATE of events, chain, receipts, checkpoints",
        ),
        RoleGrant(
            writer,
            "ingest and import",
            "INSERT events, chain rows, receipts, keys, snapshots; move positions forward",
            "UPDATE/DELETE of anything appended; positions backward; read models; DDL",
        ),
        RoleGrant(
            reader,
            "analysts: the read models",
            "SELECT read models; append its reads to the access log",
            "every customer event, chain row and data key; any change; DDL",
        ),
    ]


#: The functions behind the triggers and the reader's policy ({} is the schema).
FUNCTIONS = (
    "CREATE OR REPLACE FUNCTION {}.crm_ledger_append_only() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '% on %.% refused: the ledger is "
    "append-only', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME "
    "USING ERRCODE = 'insufficient_privilege'; END $$",
    "CREATE OR REPLACE FUNCTION {}.crm_ledger_refuse_read() RETURNS boolean "
    "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'role % may read the access log "
    "and the read models, not customers'' events', current_user "
    "USING ERRCODE = 'insufficient_privilege'; END $$",
    "CREATE OR REPLACE FUNCTION {}.crm_ledger_forward_only() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN IF NEW.next_offset < OLD.next_offset THEN "
    "RAISE EXCEPTION 'moving % partition % back from % to % refused: positions only "
    "move forward', OLD.source, OLD.partition, OLD.next_offset, NEW.next_offset "
    "USING ERRCODE = 'insufficient_privilege'; END IF; RETURN NEW; END $$",
)

#: Hands eventsourcing's insert function and its row type to the owner with the tables.
OWN_ROUTINES = (
    "DO $$ DECLARE f regprocedure; c regtype; BEGIN "
    "FOR f IN SELECT p.oid::regprocedure FROM pg_proc p "
    "WHERE p.pronamespace = {schema}::regnamespace LOOP "
    "EXECUTE format('ALTER FUNCTION %s OWNER TO %I', f, {owner}); END LOOP; "
    "FOR c IN SELECT t.oid::regtype FROM pg_type t JOIN pg_class k ON k.oid = t.typrelid "
    "WHERE t.typnamespace = {schema}::regnamespace AND k.relkind = 'c' LOOP "
    "EXECUTE format('ALTER TYPE %s OWNER TO %I', c, {owner}); END LOOP; END $$"
)


class _Plan:
    """The statements of ``grant_roles``, in the order they run."""

    def __init__(
        self, schema: str, roles: tuple[str, str, str], tables: Sequence[str], events: str
    ) -> None:
        self.schema_name, self.owner_name = schema, roles[0]
        self.s = Identifier(schema)
        self.o, self.w, self.r = (Identifier(name) for name in roles)
        self.tables, self.events = list(tables), events

    def t(self, name: str) -> Any:
        return SQL("{}.{}").format(self.s, Identifier(name))

    def statements(self, snapshots: str) -> list[Any]:
        return [
            *self.ownership(),
            *self.grants(),
            *self.triggers(),
            *(self.snapshots(snapshots) if snapshots in self.tables else []),
            *self.policies(),
        ]

    def ownership(self) -> list[Any]:
        s, o = self.s, self.o
        return [
            SQL("GRANT {} TO CURRENT_USER").format(o),
            SQL("ALTER SCHEMA {} OWNER TO {}").format(s, o),
            *(SQL("ALTER TABLE {} OWNER TO {}").format(self.t(n), o) for n in self.tables),
            SQL(OWN_ROUTINES).format(schema=Literal(s.as_string()), owner=Literal(self.owner_name)),
        ]

    def grants(self) -> list[Any]:
        s, o, w, r, t, events = self.s, self.o, self.w, self.r, self.t, self.events
        ledger = {events, *LEDGER_TABLES}
        read_models = [n for n in self.tables if n not in ledger and not n.endswith("_snapshots")]
        return [
            SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM PUBLIC, {}, {}").format(s, w, r),
            SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM PUBLIC, {}, {}").format(s, w, r),
            SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC, {}, {}").format(s, w, r),
            SQL("GRANT USAGE ON SCHEMA {} TO {}, {}").format(s, w, r),
            # UPDATE only for eventsourcing's LOCK TABLE; a trigger refuses every UPDATE.
            SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}, {}").format(t(events), w, r),
            SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(s, w),
            SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(t(f"{events}_notification_id_seq"), r),
            SQL("GRANT SELECT, INSERT ON {}, {} TO {}").format(
                t("ledger_receipts"), t("ledger_keys"), w
            ),
            SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(t("ledger_positions"), w),
            SQL("GRANT SELECT, INSERT, DELETE ON {} TO {}").format(t("ledger_outbox"), w),
            *(SQL("GRANT SELECT ON {} TO {}").format(t(name), r) for name in read_models),
            SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON TABLES TO {}"
            ).format(o, s, r),
        ]

    def triggers(self) -> list[Any]:
        s = self.s
        return [
            *(SQL(function).format(s) for function in FUNCTIONS),
            *(
                SQL(
                    "CREATE OR REPLACE TRIGGER crm_ledger_append_only BEFORE UPDATE OR DELETE "
                    "OR TRUNCATE ON {} FOR EACH STATEMENT "
                    "EXECUTE FUNCTION {}.crm_ledger_append_only()"
                ).format(self.t(name), s)
                for name in (self.events, *APPEND_ONLY)
                if name in self.tables
            ),
            SQL(
                "CREATE OR REPLACE TRIGGER crm_ledger_forward_only BEFORE UPDATE ON {} "
                "FOR EACH ROW EXECUTE FUNCTION {}.crm_ledger_forward_only()"
            ).format(self.t("ledger_positions"), s),
        ]

    def snapshots(self, snapshots: str) -> list[Any]:
        table = self.t(snapshots)
        return [
            SQL("GRANT SELECT, INSERT ON {} TO {}").format(table, self.w),
            # Snapshots are a cache: the reader finds none and replays the events it may read.
            SQL("GRANT SELECT ON {} TO {}").format(table, self.r),
            *self._secured(table),
        ]

    def policies(self) -> list[Any]:
        """Row-level security, forced on the owner too: the reader's rows are the access
        log's and the initiatives' (which hold no personal data; ``compare`` reads them); a
        customer's row in the reader's way is a refusal, not an empty answer."""
        table = self.t(self.events)
        stream = Literal(str(ACCESS_STREAM))
        public = SQL("topic LIKE {}").format(Literal(INITIATIVE_TOPICS))
        return [
            *self._secured(table),
            SQL(
                "CREATE POLICY crm_ledger_access_read ON {} FOR SELECT TO {} "
                "USING (originator_id = {} OR {} OR {}.crm_ledger_refuse_read())"
            ).format(table, self.r, stream, public, self.s),
            SQL(
                "CREATE POLICY crm_ledger_access_append ON {} FOR INSERT TO {} "
                "WITH CHECK (originator_id = {})"
            ).format(table, self.r, stream),
        ]

    def _secured(self, table: Any) -> list[Any]:
        """Row-level security on ``table``: every row for the owner and writer, none for
        anyone else but by the policies added after."""
        return [
            SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table),
            SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(table),
            *(
                SQL("DROP POLICY IF EXISTS {} ON {}").format(Identifier(policy), table)
                for policy in POLICIES
            ),
            SQL(
                "CREATE POLICY crm_ledger_roles ON {} TO {}, {} USING (true) WITH CHECK (true)"
            ).format(table, self.o, self.w),
        ]


def role_access(url: str, schema: str) -> RoleAccess:
    """What the role ``url`` connects as may do in ``schema``: catching the read models up
    takes reading the data keys and writing the read models' table of positions."""
    check_url(url)
    keys, sets = f'"{schema}".ledger_keys', f'"{schema}".crm_projection_sets'
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT current_user, has_schema_privilege(current_user, %(s)s, 'CREATE'), "
                "to_regclass(%(k)s) IS NOT NULL AND has_table_privilege(%(k)s, 'SELECT') AND "
                "CASE WHEN to_regclass(%(p)s) IS NULL "
                "THEN has_schema_privilege(current_user, %(s)s, 'CREATE') "
                "ELSE has_table_privilege(%(p)s, 'UPDATE') END",
                {"s": schema, "k": keys, "p": sets},
            ).fetchone()
    except psycopg.OperationalError as e:
        raise StoreUnavailable(f"cannot reach PostgreSQL: {_first_line(e)}") from None
    assert row is not None  # a SELECT without FROM gives one row
    return RoleAccess(str(row[0]), bool(row[1]), bool(row[2]))


def refusal(error: BaseException) -> str | None:
    """PostgreSQL's own words if ``error`` (or what caused it) is a refused privilege."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, psycopg.errors.InsufficientPrivilege):
            return current.diag.message_primary or str(current)
        orig = getattr(current, "orig", None)
        current = (
            orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
        )
    return None


def url_user(url: str) -> str:
    """The role a PostgreSQL URL connects as (libpq's default when it names none)."""
    return unquote(urlsplit(url).username or "") or "the default role"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
