"""Read models in SQL (SQLAlchemy Core): table sets, batched upserts, and the queries on them.

On SQLite the read models live in their own file beside the event store (``projections.sqlite``),
so catching up never holds the event store's write lock; on PostgreSQL they live in the
ledger's schema. Times are BIGINT microseconds since the epoch, so both dialects sort and
compare them the same way.
"""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from crm_ledger.errors import PositionConflict, StoreUnavailable
from crm_ledger.projections.contributions import Rule
from crm_ledger.projections.runtime import (
    BUILDING,
    LIVE,
    RETIRED,
    SNAPSHOT,
    SNAPSHOT_BUILDING,
    TableSet,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from sqlalchemy.engine import Connection, Engine

    from crm_ledger.projections.contributions import Projection, Table
    from crm_ledger.projections.runtime import SetWrite

_TYPES: dict[str, Any] = {"int": sa.BigInteger, "text": sa.Text, "float": sa.Float}

#: Per-customer figures of a fitted CLV model.
CLV_COLUMNS = (
    "frequency",
    "recency",
    "age",
    "monetary",
    "p_alive",
    "expected_purchases",
    "expected_spend",
    "clv",
)

#: Parameters per IN (...) look-up (SQLite allows 32,766).
IN_CHUNK = 5_000


class SqlProjectionStore:
    """Table sets of read models in one SQL database."""

    def __init__(self, engine: Engine, *, schema: str | None = None) -> None:
        self.engine = engine
        self.schema = schema
        self.metadata = sa.MetaData(schema=schema)
        self.sets = sa.Table(
            "crm_projection_sets",
            self.metadata,
            sa.Column("projection", sa.Text, primary_key=True),
            sa.Column("label", sa.Text, primary_key=True),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("position", sa.BigInteger, nullable=False),
            sa.Column("as_of", sa.BigInteger),
            sa.Column("valid_at", sa.BigInteger),
            sa.Column("created", sa.BigInteger, nullable=False),
        )
        # Apart from the sets, so that stores made before versions existed gain it as a table.
        self.versions = sa.Table(
            "crm_projection_versions",
            self.metadata,
            sa.Column("projection", sa.Text, primary_key=True),
            sa.Column("label", sa.Text, primary_key=True),
            sa.Column("version", sa.Text, nullable=False),
        )
        self.clv_models, self.clv_customers = _clv_tables(self.metadata)
        self._tables: dict[tuple[str, str], sa.Table] = {}
        self._upserts: dict[tuple[str, str], Any] = {}
        with self._begin() as conn:
            self.metadata.create_all(
                conn,
                tables=[self.sets, self.versions, self.clv_models, self.clv_customers],
                checkfirst=True,
            )

    # Table sets.

    def dispose(self) -> None:
        """Close the store's pooled connections."""
        self.engine.dispose()

    def table_sets(self) -> list[TableSet]:
        """Every table set, any status."""
        s, v = self.sets, self.versions
        joined = s.outerjoin(v, (v.c.projection == s.c.projection) & (v.c.label == s.c.label))
        with self._connect() as conn:
            rows = conn.execute(sa.select(s, v.c.version).select_from(joined)).mappings().all()
        return [TableSet(**dict(r)) for r in rows]

    def create(self, projection: Projection, table_set: TableSet) -> None:
        """Create the set's (empty) tables and record the set. Sets being built get their
        look-up indexes when promoted: bulk loading without them is twice as fast."""
        building = table_set.status in (BUILDING, SNAPSHOT_BUILDING)
        with self._begin() as conn:
            for spec in projection.tables:
                table = self.table(spec, table_set.label)
                # Left over from an unrecorded attempt.
                conn.execute(sa.schema.DropTable(table, if_exists=True))
                conn.execute(sa.schema.CreateTable(table))
                if not building:
                    for index in table.indexes:
                        index.create(conn)
            conn.execute(
                sa.insert(self.sets).values(
                    projection=table_set.projection,
                    label=table_set.label,
                    status=table_set.status,
                    position=table_set.position,
                    as_of=table_set.as_of,
                    valid_at=table_set.valid_at,
                    created=time.time_ns() // 1000,
                )
            )
            if table_set.version is not None:
                conn.execute(
                    sa.delete(self.versions).where(
                        self.versions.c.projection == table_set.projection,
                        self.versions.c.label == table_set.label,
                    )
                )
                conn.execute(
                    sa.insert(self.versions).values(
                        projection=table_set.projection,
                        label=table_set.label,
                        version=table_set.version,
                    )
                )

    def write(self, writes: Sequence[SetWrite]) -> None:
        """Apply every write and move each set's position in one transaction."""
        with self._begin() as conn:
            for w in writes:
                # The position first: it takes the write lock, and refuses a stale batch.
                moved = conn.execute(
                    sa.update(self.sets)
                    .where(
                        self.sets.c.projection == w.table_set.projection,
                        self.sets.c.label == w.table_set.label,
                        self.sets.c.position == w.table_set.position,
                    )
                    .values(position=w.position)
                )
                if moved.rowcount != 1:
                    msg = f"{w.table_set.projection}/{w.table_set.label} moved on"
                    raise PositionConflict(msg)
                for name, spec in w.changes.tables.items():
                    if spec.append_only:
                        self._append(conn, spec, w.table_set.label, w.changes.tuples(name))
                    else:
                        self._apply(conn, spec, w.table_set.label, w.changes.rows(name))

    def promote(self, projection: Projection, label: str) -> None:
        """Finish a set: build its indexes; a rebuilt set becomes live (retiring the old one)
        and a snapshot final, in one transaction."""
        s = self.sets.c
        mine = (s.projection == projection.name) & (s.label == label)
        with self._begin() as conn:
            status = conn.execute(sa.select(s.status).where(mine)).scalar_one()
            if status not in (BUILDING, SNAPSHOT_BUILDING):
                return
            for spec in projection.tables:
                for index in self.table(spec, label).indexes:
                    index.create(conn, checkfirst=True)
            if status == BUILDING:
                conn.execute(
                    sa.update(self.sets)
                    .where(s.projection == projection.name, s.status == LIVE)
                    .values(status=RETIRED)
                )
            new_status = LIVE if status == BUILDING else SNAPSHOT
            conn.execute(sa.update(self.sets).where(mine).values(status=new_status))

    def drop(self, projection: Projection, label: str) -> None:
        """Drop a set's tables and forget it."""
        with self._begin() as conn:
            for spec in projection.tables:
                # IF EXISTS in the statement itself: two rebuild workers may drop the same
                # retired set at once, and a check-then-drop races.
                conn.execute(sa.schema.DropTable(self.table(spec, label), if_exists=True))
            for table in (self.sets, self.versions):
                conn.execute(
                    sa.delete(table).where(
                        table.c.projection == projection.name, table.c.label == label
                    )
                )

    # Queries.

    def rows(
        self, spec: Table, label: str, column: str, values: Sequence[Any]
    ) -> list[dict[str, Any]]:
        """Rows of a table set's table whose ``column`` is one of ``values``."""
        table = self.table(spec, label)
        found: list[dict[str, Any]] = []
        with self._connect() as conn:
            for start in range(0, len(values), IN_CHUNK):
                chunk = list(values[start : start + IN_CHUNK])
                query = sa.select(table).where(table.c[column].in_(chunk))
                found.extend(dict(r) for r in conn.execute(query).mappings())
        return found

    def all_rows(self, spec: Table, label: str) -> list[dict[str, Any]]:
        """Every row of a table set's table, in key order."""
        table = self.table(spec, label)
        query = sa.select(table).order_by(*(table.c[k] for k in spec.key))
        with self._connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def top_values(
        self,
        ltv: tuple[Table, str],
        customers: tuple[Table, str],
        links: tuple[Table, str] | None,
        *,
        currency: str,
        limit: int,
    ) -> list[dict[str, Any]]:
        """The ``limit`` customers (merged customers counted with their survivor) or, with
        ``links``, organisations with the highest net value in ``currency``."""
        v = self.table(*ltv)
        c = self.table(*customers)
        subject: Any
        if links is None:
            subject = sa.case(
                (sa.func.coalesce(c.c.merged_into, "") != "", c.c.merged_into),
                else_=c.c.customer_id,
            )
            source = v.join(c, c.c.stream == v.c.stream)
        else:
            link = self.table(*links)
            subject = link.c.organisation_id
            source = v.join(link, link.c.stream == v.c.stream)
        net = sa.func.sum(v.c.gross_minor - v.c.refunded_minor)
        query = (
            sa.select(
                subject.label("subject"),
                _total(v.c.orders).label("orders"),
                _total(v.c.gross_minor).label("gross_minor"),
                _total(v.c.refunds).label("refunds"),
                _total(v.c.refunded_minor).label("refunded_minor"),
                _total(v.c.margin_minor).label("margin_minor"),
                _total(v.c.margin_orders).label("margin_orders"),
                _total(v.c["items"]).label("items"),
                sa.func.min(v.c.first_order_at).label("first_order_at"),
                sa.func.max(v.c.last_order_at).label("last_order_at"),
            )
            .select_from(source)
            .where(v.c.currency == currency)
            .group_by(subject)
            .order_by(net.desc(), subject)
            .limit(limit)
        )
        with self._connect() as conn:
            return [{**r, "currency": currency} for r in conn.execute(query).mappings()]

    def currencies(self, ltv: tuple[Table, str]) -> list[tuple[str, int]]:
        """Currencies with how many orders each, most orders first."""
        v = self.table(*ltv)
        orders = _total(v.c.orders)
        query = sa.select(v.c.currency, orders).group_by(v.c.currency).order_by(orders.desc())
        with self._connect() as conn:
            return [(r[0], int(r[1])) for r in conn.execute(query)]

    def last_occurred(self, touches: tuple[Table, str], passive: Sequence[str]) -> int | None:
        """The business time of the latest touch of a kind not in ``passive`` (where the
        data ends: refunds and resolutions trail after it)."""
        t = self.table(*touches)
        query = sa.select(sa.func.max(t.c.occurred)).where(t.c.kind.not_in(list(passive)))
        with self._connect() as conn:
            value = conn.execute(query).scalar()
        return None if value is None else int(value)

    def weekly_activity(
        self, touches: tuple[Table, str], currency: str, passive: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        """Per stream and week: active touches (kinds not in ``passive``), orders, net revenue
        in ``currency``, interactions."""
        t = self.table(*touches)
        money = t.c.kind.in_(("OrderPlaced", "OrderRefunded")) & (t.c.currency == currency)
        query = sa.select(
            t.c.stream,
            t.c.week,
            _total(sa.case((t.c.kind.in_(list(passive)), 0), else_=1)),
            _total(sa.case((t.c.kind == "OrderPlaced", 1), else_=0)),
            _total(sa.case((money, t.c.amount_minor), else_=0)),
            _total(sa.case((t.c.kind == "InteractionRecorded", 1), else_=0)),
        ).group_by(t.c.stream, t.c.week)
        with self._connect() as conn:
            return [tuple(r) for r in conn.execute(query)]

    def search(self, index: tuple[Table, str], column: str, token: str, limit: int) -> list[str]:
        """Customer ids whose ``column`` token is ``token`` (the blind search index)."""
        t = self.table(*index)
        query = (
            sa.select(t.c.customer_id)
            .where(t.c[column] == token)
            .order_by(t.c.customer_id)
            .limit(limit)
        )
        with self._connect() as conn:
            return [r[0] for r in conn.execute(query) if r[0]]

    def directory_page(
        self,
        customers: tuple[Table, str],
        consents: tuple[Table, str],
        links: tuple[Table, str],
        *,
        where: Mapping[str, str],
        consent: tuple[str, str, bool] | None,
        organisation: str | None,
        after: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Surviving customers (not merged into another) matching every filter, in id order
        after ``after``: a keyset page, so a page costs the same wherever it starts."""
        c = self.table(*customers)
        query = sa.select(c).where(sa.func.coalesce(c.c.merged_into, "") == "")
        for column, value in where.items():
            query = query.where(c.c[column] == value)
        if consent is not None:
            k = self.table(*consents)
            purpose, channel, granted = consent
            query = query.where(
                sa.exists().where(
                    (k.c.stream == c.c.stream)
                    & (k.c.purpose == purpose)
                    & (k.c.channel == channel)
                    & (k.c.granted == int(granted))
                )
            )
        if organisation is not None:
            o = self.table(*links)
            query = query.where(
                sa.exists().where(
                    (o.c.stream == c.c.stream) & (o.c.organisation_id == organisation)
                )
            )
        if after is not None:
            query = query.where(c.c.customer_id > after)
        query = query.order_by(c.c.customer_id).limit(limit)
        with self._connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def stream_rows(
        self,
        spec: Table,
        label: str,
        *,
        where: Mapping[str, Sequence[Any]] | None = None,
        batch: int = 10_000,
    ) -> Iterator[list[dict[str, Any]]]:
        """Every row of a table (``where``: column -> allowed values), ``batch`` rows at a
        time, read with a server-side cursor so memory stays bounded."""
        table = self.table(spec, label)
        query = sa.select(table)
        for column, values in (where or {}).items():
            query = query.where(table.c[column].in_(list(values)))
        with self._connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(query)
            for part in result.mappings().partitions(batch):
                yield [dict(r) for r in part]

    def consent_rows(self, touches: tuple[Table, str]) -> list[dict[str, Any]]:
        """Timeline rows that marketing consent is about: consent changes and outbound
        campaign touches."""
        t = self.table(*touches)
        query = sa.select(t).where(
            (t.c.kind == "ConsentChanged")
            | ((t.c.direction == "outbound") & t.c.campaign.is_not(None))
        )
        with self._connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def purchases(
        self, touches: tuple[Table, str], currency: str, *, until: int, as_of: int | None
    ) -> list[tuple[str, int, int]]:
        """(stream, occurred, amount in minor units) of every order in ``currency`` that
        occurred before ``until`` (and was recorded by ``as_of``)."""
        t = self.table(*touches)
        query = sa.select(t.c.stream, t.c.occurred, t.c.amount_minor).where(
            t.c.kind == "OrderPlaced", t.c.currency == currency, t.c.occurred < until
        )
        if as_of is not None:
            query = query.where(t.c.recorded <= as_of)
        with self._connect() as conn:
            return [(r[0], int(r[1]), int(r[2])) for r in conn.execute(query)]

    def save_clv(self, model: dict[str, Any], rows: Sequence[dict[str, Any]]) -> int:
        """Store a fitted model and its per-customer predictions; the new model's id."""
        with self._begin() as conn:
            model_id = conn.execute(
                sa.insert(self.clv_models).values(**model).returning(self.clv_models.c.model_id)
            ).scalar_one()
            for start in range(0, len(rows), IN_CHUNK):
                chunk = [{**r, "model_id": model_id} for r in rows[start : start + IN_CHUNK]]
                conn.execute(sa.insert(self.clv_customers), chunk)
        return int(model_id)

    def clv_model(self, model_id: int | None) -> dict[str, Any] | None:
        """A stored model (the latest when ``model_id`` is None)."""
        m = self.clv_models
        query = sa.select(m)
        query = (
            query.order_by(m.c.model_id.desc()).limit(1)
            if model_id is None
            else query.where(m.c.model_id == model_id)
        )
        with self._connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def clv_rows(
        self, model_id: int, *, customers: Sequence[str] = (), top: int | None = None
    ) -> list[dict[str, Any]]:
        """Per-customer predictions of a model: some customers, or the ``top`` by value."""
        c = self.clv_customers
        query = sa.select(c).where(c.c.model_id == model_id)
        if customers:
            query = query.where(c.c.customer_id.in_(list(customers)))
        if top is not None:
            query = query.order_by(c.c.clv.desc(), c.c.customer_id).limit(top)
        with self._connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # Plumbing.

    def table(self, spec: Table, label: str) -> sa.Table:
        """The SQLAlchemy table of ``spec`` in the set ``label``."""
        key = (spec.name, label)
        table = self._tables.get(key)
        if table is None:
            name = f"crm_{spec.name}__{label}"
            # Keyed tables are clustered by their key (no rowid B-tree on SQLite); append-only
            # tables are written in arrival order and found through an index on their key,
            # which keeps the bulk of each row out of the random-order B-tree.
            keyed = not spec.append_only
            columns = [
                sa.Column(
                    c.name,
                    _TYPES[c.type],
                    primary_key=keyed and c.name in spec.key,
                    autoincrement=False,
                )
                for c in spec.columns
            ]
            lookups = spec.indexes if keyed else (spec.key[:2], *spec.indexes)
            indexes = [sa.Index(f"{name}__{'_'.join(cols)}", *cols) for cols in lookups]
            table = sa.Table(name, self.metadata, *columns, *indexes, sqlite_with_rowid=not keyed)
            self._tables[key] = table
        return table

    def _prepared(self, spec: Table, label: str) -> tuple[str, tuple[str, ...] | None]:
        """The statement that writes rows of ``spec`` (insert, or upsert by the merge rules),
        compiled once, and the parameter order when the driver takes positional ones."""
        key = (spec.name, label)
        prepared = self._upserts.get(key)
        if prepared is None:
            statement = self._statement(spec, self.table(spec, label))
            compiled = statement.compile(dialect=self.engine.dialect, column_keys=spec.names)
            names = tuple(compiled.positiontup) if compiled.positional else None
            prepared = self._upserts[key] = (str(compiled), names)
        return cast("tuple[str, tuple[str, ...] | None]", prepared)

    # Rows go straight to the driver with the statement compiled once: SQLAlchemy's per-row
    # parameter processing doubled the time of a batch, and these columns need no conversion.

    def _apply(self, conn: Connection, spec: Table, label: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        sql, names = self._prepared(spec, label)
        if names is None:
            conn.exec_driver_sql(sql, rows)
        else:
            conn.exec_driver_sql(sql, [tuple(map(row.__getitem__, names)) for row in rows])

    def _append(
        self, conn: Connection, spec: Table, label: str, rows: list[tuple[Any, ...]]
    ) -> None:
        if not rows:
            return
        sql, names = self._prepared(spec, label)
        if names is None:
            conn.exec_driver_sql(sql, [dict(zip(spec.names, r, strict=True)) for r in rows])
        elif names == spec.names:
            conn.exec_driver_sql(sql, rows)
        else:
            at = [spec.names.index(n) for n in names]
            conn.exec_driver_sql(sql, [tuple(r[i] for i in at) for r in rows])

    def _statement(self, spec: Table, table: sa.Table) -> Any:
        # The store's own dialect's upsert, imported when first used (PostgreSQL's pulls in
        # every driver module of the dialect).
        dialect = importlib.import_module(f"sqlalchemy.dialects.{self.engine.dialect.name}")
        insert = dialect.insert(table)
        if spec.append_only:
            return insert
        new = insert.excluded
        merged = {
            c.name: _merge(c.rule, table.c[c.name], new[c.name])
            for c in spec.columns
            if c.rule is not Rule.KEY
        }
        return insert.on_conflict_do_update(index_elements=list(spec.key), set_=merged)

    def _connect(self) -> Any:
        try:
            return self.engine.connect()
        except OperationalError as e:
            raise StoreUnavailable(f"cannot open the read models: {e.orig}") from None

    def _begin(self) -> Any:
        try:
            return self.engine.begin()
        except OperationalError as e:
            raise StoreUnavailable(f"cannot open the read models: {e.orig}") from None


def _total(expression: Any) -> Any:
    """SUM as a whole number on every dialect (PostgreSQL sums BIGINT as NUMERIC)."""
    return sa.cast(sa.func.sum(expression), sa.BigInteger)


def _merge(rule: Rule, old: Any, new: Any) -> Any:
    if rule is Rule.SUM:
        return old + new
    if rule is Rule.LAST:
        return sa.func.coalesce(new, old)
    better = new < old if rule is Rule.MIN else new > old
    return sa.case((new.is_(None), old), (old.is_(None), new), (better, new), else_=old)


def _clv_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The stored CLV fits and their per-customer predictions."""
    models = sa.Table(
        "crm_clv_models",
        metadata,
        sa.Column("model_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("fitted_at", sa.BigInteger, nullable=False),
        sa.Column("calibration_end", sa.BigInteger, nullable=False),
        sa.Column("as_of", sa.BigInteger),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("unit", sa.Text, nullable=False),
        sa.Column("horizon", sa.Float, nullable=False),
        sa.Column("annual_discount", sa.Float, nullable=False),
        sa.Column("fits", sa.Text, nullable=False),  # JSON: both models' fits
    )
    customers = sa.Table(
        "crm_clv_customers",
        metadata,
        sa.Column("model_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("customer_id", sa.Text, primary_key=True),
        *(sa.Column(name, sa.Float, nullable=False) for name in CLV_COLUMNS),
        sa.Index("crm_clv_customers__model_value", "model_id", "clv"),
    )
    return models, customers


def sqlite_engine(path: str) -> Engine:
    """An engine on the read-model file at ``path`` (WAL, so readers never wait)."""
    engine = sa.create_engine(f"sqlite:///{path}")

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # Big pages: the timeline is appended in bulk (only takes effect on a new file).
        cursor.execute("PRAGMA page_size=16384")
        cursor.execute("PRAGMA journal_mode=WAL")
        # Read models can be rebuilt from the log; a crash loses at most the last batches,
        # and their positions with them.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA cache_size=-16384")
        cursor.execute("PRAGMA wal_autocheckpoint=4096")
        cursor.close()

    return engine


def postgres_engine(url: str) -> Engine:
    """An engine on the PostgreSQL server at ``url`` (psycopg 3)."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return sa.create_engine(url, pool_pre_ping=True)
