"""The one place that wires settings, adapters and the Ledger application together."""

from __future__ import annotations

import functools
import gc
import os
import time
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from crm_ledger.adapters.memory import give_back_free_memory
from crm_ledger.errors import AccessDenied, ConfigurationError, StoreUnavailable
from crm_ledger.projections.customer_search import CustomerSearch, SearchKey
from crm_ledger.projections.runtime import BUILDING, DEFAULT_BATCH, Projector, all_projections
from crm_ledger.services import Services, Wiring

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from crm_ledger.adapters.avro import Codec, SchemaRegistry
    from crm_ledger.adapters.crypto import Ed25519Signer
    from crm_ledger.adapters.eventstore.roles import RoleAccess, RoleGrant
    from crm_ledger.adapters.kafka import (
        AclBinding,
        IngestWorker,
        KafkaSettings,
        KafkaTopics,
        Publisher,
    )
    from crm_ledger.adapters.kafka import IngestStats as IngestStats  # noqa: PLC0414 (the CLI's)
    from crm_ledger.adapters.registry_client import Pushed
    from crm_ledger.adapters.sql import SqlProjectionStore
    from crm_ledger.adapters.users import UserFile
    from crm_ledger.application import Ledger
    from crm_ledger.audit import Auditor, AuditStore, SnapshotCheck
    from crm_ledger.config import Settings
    from crm_ledger.projections.contributions import Projection
    from crm_ledger.projections.runtime import TableSet
    from crm_ledger.services import Charts
    from crm_ledger.services.exports import ExportWriter
    from crm_ledger.sources.files import FileSource


#: The read models' file beside the embedded event store.
PROJECTIONS_FILE = "projections.sqlite"

#: The snapshot seal key's file in the key folder.
SNAPSHOT_KEY_FILE = "snapshot.key"

#: The console's users and its session-signing key, in the key folder.
USERS_FILE = "users.json"
CONSOLE_KEY_FILE = "console.key"

#: The blind search index's key file in the key folder.
SEARCH_KEY_FILE = "search.key"

#: The auditor's copy of the checkpoint receipts, in the key folder unless set elsewhere.
RECEIPTS_FILE = "checkpoint-receipts.jsonl"


#: First-generation GC threshold for bulk writes (CPython's default is 700).
BULK_GC_THRESHOLD = 50_000


def tune_for_throughput() -> None:
    """Tune this process for bulk writes: collect young objects less often, and give what
    each batch frees back to the system.

    A batch keeps thousands of new events alive until its transaction commits, so with the
    default threshold the collector rescans them (and every cached aggregate) many times per
    batch; measured on the ledger benchmark this costs about a quarter of the time.
    """
    _, second, third = gc.get_threshold()
    gc.set_threshold(BULK_GC_THRESHOLD, second, third)
    # What each batch frees goes back to the system, so memory follows the caches' sizes.
    give_back_free_memory()
    # What exists now (modules, settings, clients) lives as long as the process: stop
    # rescanning it in every full collection.
    gc.freeze()


def store_env(settings: Settings, *, create: bool) -> dict[str, str]:
    """eventsourcing settings for the configured store: only ``create`` (``init``) makes a
    ledger; everything else refuses a place that holds none, and every command refuses a
    database another program made."""
    from crm_ledger.adapters import eventstore  # a store's driver only when it is used

    if settings.database_url:
        env: dict[str, str] = eventstore.postgres_env(
            settings.database_url, settings.database_schema
        )
        if not create:
            eventstore.check_postgres_ledger(settings.database_url, settings.database_schema)
        return env
    path = settings.sqlite_path
    if not path.exists():
        if not create:
            msg = f"no ledger at {path}; run `crm-ledger init` or pass --data-dir"
            raise StoreUnavailable(msg)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            msg = f"cannot create the data directory {path.parent}: {e.strerror}"
            raise StoreUnavailable(msg) from None
    eventstore.claim_sqlite(str(path), create=create)
    env = eventstore.sqlite_env(str(path))
    return env


def open_ledger(settings: Settings, *, create: bool = False) -> Ledger:
    """The Ledger on the configured store (created first when ``create``)."""
    # The event store, the domain and the cryptography load here, on a command's first use of
    # the ledger: a query over read models that are up to date never loads them.
    from crm_ledger.adapters.crypto import Keyring
    from crm_ledger.adapters.key_files import secret_key
    from crm_ledger.application import Ledger

    env = store_env(settings, create=create)
    snapshot_key = secret_key(settings.key_folder / SNAPSHOT_KEY_FILE)
    return Ledger(
        env,
        max_future=settings.max_future,
        snapshot_key=snapshot_key,
        keyring=Keyring(settings.key_folder),
        cache_streams=settings.cache_streams,
    )


def build(
    settings: Settings,
    *,
    create: bool = False,
    read_only: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Services:
    """Every use case over the configured ledger, each part opened on first use; close it
    (or use it as a context manager) to release them. ``create`` makes the ledger first
    (``init``); ``read_only`` queries never catch the read models up."""
    if create:
        open_ledger(settings, create=True).close()
    if settings.database_url and not read_only:
        # A role that cannot read the events and their keys (the reader of `db grant`)
        # answers from the read models as the owner last brought them up to date.
        read_only = not store_role(settings).may_project
    wiring = Wiring(
        store=settings.store_name,
        location=settings.database_url or str(settings.sqlite_path),
        open_ledger=lambda: open_ledger(settings),
        open_read_model_store=lambda: open_projection_store(settings),
        open_auditor=lambda ledger: open_auditor(settings, ledger),
        open_kafka=lambda: _kafka_topics(settings),
        open_decoder=lambda: open_codec(settings),
        open_charts=open_charts,
        projections=lambda ledger: projections_of(settings, ledger),
        peek_log_head=lambda: peek_log_head(settings),
        open_export=open_export,
        search_key=lambda: search_key(settings),
        rebuild=functools.partial(rebuild_projections, settings),
        receipts=str(receipts_path(settings)),
        retention_days=settings.kafka_retention_days,
        topics=(settings.kafka_topic, settings.kafka_dlq_topic),
        batch_size=settings.batch_size,
        access_flush_seconds=settings.access_flush_seconds,
    )
    return Services(wiring, read_only=read_only, progress=progress)


def store_role(settings: Settings) -> RoleAccess:
    """What the role of ``settings.database_url`` may do in the ledger's schema."""
    from crm_ledger.adapters.eventstore import roles

    return roles.role_access(_postgres_url(settings), settings.database_schema)


def grant_roles(settings: Settings, prefix: str | None = None) -> list[RoleGrant]:
    """Set up the owner, writer and reader roles on the configured PostgreSQL ledger."""
    from crm_ledger.adapters.eventstore import roles

    url = _postgres_url(settings)
    schema = settings.database_schema
    ledger = open_ledger(settings)
    try:
        recorder = cast("Any", ledger.ledger_recorder)
        events, snapshots = recorder.events_table_name, recorder.snapshots_table
    finally:
        ledger.close()
    open_projection_store(settings).dispose()  # the read models' own tables exist first
    chosen = prefix or ("crm_ledger" if schema == "public" else f"crm_ledger_{schema}")
    return roles.grant_roles(url, schema, prefix=chosen, events=events, snapshots=snapshots)


def _postgres_url(settings: Settings) -> str:
    if not settings.database_url:
        msg = "roles apply to a PostgreSQL store; pass --database-url"
        raise ConfigurationError(msg)
    return settings.database_url


def refusal(settings: Settings, error: BaseException) -> AccessDenied | None:
    """``error`` as one line naming the refused role, if PostgreSQL refused a privilege."""
    if not settings.database_url:
        return None
    from crm_ledger.adapters.eventstore import roles

    found = roles.refusal(error)
    if found is None:
        return None
    user = roles.url_user(settings.database_url)
    return AccessDenied(f"PostgreSQL refused role {user}: {found} (see `crm-ledger db --help`)")


def open_export(path: Path, columns: Mapping[str, str]) -> ExportWriter:
    """A CSV, JSON Lines or Parquet file by ``path``'s suffix (pyarrow loaded on first use)."""
    from crm_ledger.adapters.export import ExportFile

    return ExportFile(path, columns)


def open_users(settings: Settings) -> UserFile:
    """The console's users, in the key folder."""
    from crm_ledger.adapters.users import UserFile

    return UserFile(settings.key_folder / USERS_FILE)


def console_secret(settings: Settings) -> bytes:
    """The key that signs console sessions (made on first use, in the key folder)."""
    from crm_ledger.adapters.key_files import secret_key

    return secret_key(settings.key_folder / CONSOLE_KEY_FILE)


def open_charts() -> Charts:
    """The charts adapter, imported on first use (matplotlib is slow to load)."""
    from crm_ledger.adapters.charts import MatplotlibCharts

    return MatplotlibCharts()


def file_sources(settings: Settings, paths: Sequence[Path], kind: str) -> list[FileSource]:
    """Input files as sources for the import service (``kind`` auto, jsonl, avro, cdnow)."""
    from crm_ledger.sources.files import file_source

    codec = open_codec(settings)
    return [file_source(path, kind, codec) for path in paths]


def open_registry(settings: Settings) -> SchemaRegistry:
    """The schema registry kept in the schemas folder."""
    from crm_ledger.adapters.avro import SchemaRegistry  # fastavro: only when needed

    return SchemaRegistry(settings.schemas_dir)


def push_schemas(settings: Settings, url: str) -> list[Pushed]:
    """Our schemas into the Confluent-compatible registry at ``url``, with our ids."""
    from crm_ledger.adapters.registry_client import push

    return push(open_registry(settings), url)


def open_codec(settings: Settings) -> Codec:
    """The Avro codec over the configured registry."""
    from crm_ledger.adapters.avro import Codec

    return Codec(open_registry(settings))


def _kafka_topics(settings: Settings) -> KafkaTopics:
    from crm_ledger.adapters.kafka import KafkaTopics

    return KafkaTopics(kafka_settings(settings))


def kafka_settings(settings: Settings) -> KafkaSettings:
    """Kafka settings, or a clear error when no cluster is configured."""
    if not settings.kafka_bootstrap:
        msg = (
            "no Kafka cluster configured: set KAFKA_BOOTSTRAP_SERVERS or pass "
            "--bootstrap-servers (scripts/kafka_server.sh start runs one and prints its address)"
        )
        raise ConfigurationError(msg)
    # kafka-python: only when needed
    from crm_ledger.adapters.kafka import KafkaSettings, security_config

    return KafkaSettings(
        bootstrap=settings.kafka_bootstrap,
        topic=settings.kafka_topic,
        dlq_topic=settings.kafka_dlq_topic,
        group=settings.kafka_group,
        partitions=settings.kafka_partitions,
        retention_days=settings.kafka_retention_days,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        # Heartbeats a third of the session, as Kafka advises.
        heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 3, 100),
        check_keys=settings.kafka_check_keys,
        user=settings.kafka_user,
        security=security_config(
            user=settings.kafka_user,
            password=settings.kafka_password,
            mechanism=settings.kafka_sasl_mechanism,
            ca_file=settings.kafka_ca_file,
        ),
    )


def kafka_acls(settings: Settings, roles: Sequence[tuple[str, str]]) -> list[AclBinding]:
    """Grant each (role, user) of ``roles`` its ACLs (creating the topics first); with none,
    the ACLs as they stand."""
    from crm_ledger.adapters.kafka import grant_acls, list_acls

    chosen = kafka_settings(settings)
    return grant_acls(chosen, roles) if roles else list_acls(chosen)


def open_publisher(settings: Settings) -> Publisher:
    """A Publisher for the configured cluster and topic."""
    from crm_ledger.adapters.kafka import Publisher

    return Publisher(kafka_settings(settings), open_codec(settings))


def open_ingest_worker(settings: Settings, ledger: Ledger, **options: Any) -> IngestWorker:
    """An ingest worker feeding ``ledger`` from the configured topic."""
    from crm_ledger.adapters.kafka import IngestWorker

    return IngestWorker(
        ledger,
        open_codec(settings),
        kafka_settings(settings),
        **options,
    )


def open_projection_store(settings: Settings) -> SqlProjectionStore:
    """The read models' store: the ledger's PostgreSQL schema, or a file beside the SQLite
    event store. The ledger is checked first (a place without one, or another program's
    database, is refused before anything is made there), without opening it where its log's
    head can be read directly. SQLAlchemy is imported here, on first use: a process that only
    writes (an ingest worker) is about 14 MB smaller without it."""
    from crm_ledger.adapters.sql import SqlProjectionStore, postgres_engine, sqlite_engine

    if peek_log_head(settings) is None:
        store_env(settings, create=False)
    if settings.database_url:
        engine = postgres_engine(settings.database_url)
        return SqlProjectionStore(engine, schema=settings.database_schema)
    return SqlProjectionStore(sqlite_engine(str(settings.data_dir / PROJECTIONS_FILE)))


def projections_of(settings: Settings, ledger: Callable[[], Ledger]) -> tuple[Projection, ...]:
    """Every read model, the blind search index included (keyed by the key folder's search
    key, reading personal values through the data keys of the ledger ``ledger()`` opens)."""
    key = SearchKey(search_key(settings))

    def opener(stream: bytes, field: str, sealed: Any) -> Any:
        return cast("Any", ledger().mapper).data_keys.open(stream, field, sealed)

    def preload(streams: list[str]) -> None:
        ledger().ledger_recorder.prepare_keys([UUID(hex=s) for s in streams])

    return (*all_projections(), CustomerSearch(key, opener, preload))


def peek_log_head(settings: Settings) -> int | None:
    """The newest position of the ledger's log, read without opening the Ledger (SQLite);
    None when that cannot be said cheaply (PostgreSQL, or no readable ledger file)."""
    if settings.database_url:
        return None
    from crm_ledger.adapters.eventstore.sqlite_head import sqlite_log_head

    return sqlite_log_head(settings.sqlite_path)


def search_key(settings: Settings) -> bytes:
    """The key of the blind search index (made on first use, in the key folder)."""
    from crm_ledger.adapters.key_files import secret_key

    return secret_key(settings.key_folder / SEARCH_KEY_FILE)


def open_projector(
    settings: Settings,
    ledger: Ledger,
    store: SqlProjectionStore,
    *,
    batch_size: int | None = None,
) -> Projector:
    """The projection runtime over ``ledger``'s log and ``store``."""
    projections = projections_of(settings, lambda: ledger)
    return Projector(ledger, store, projections=projections, batch_size=batch_size or DEFAULT_BATCH)


#: Projections by the work a replay does for them, heaviest first.
_BY_WEIGHT = ("journey_timeline", "lifetime_value", "customer_360")


def worker_groups(names: Sequence[str], workers: int) -> list[list[str]]:
    """Split projections over ``workers`` processes: the heaviest alone, the rest shared."""
    chosen = [n for n in _BY_WEIGHT if n in names] + [n for n in names if n not in _BY_WEIGHT]
    count = max(1, min(workers, len(chosen)))
    if count == 1:
        return [chosen]
    groups: list[list[str]] = [[chosen[0]]] + [[] for _ in range(count - 1)]
    for i, name in enumerate(chosen[1:]):
        groups[1 + i % (count - 1)].append(name)
    return groups


def rebuild_projections(
    settings: Settings,
    names: Sequence[str] = (),
    *,
    workers: int | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Rebuild projections (all when none are named), one process per group of projections
    when the machine has the cores: each reads the log on its own and writes its own tables,
    so the heaviest projection no longer waits for the others."""
    with open_ledger(settings) as ledger:
        store = open_projection_store(settings)
        projector = open_projector(settings, ledger, store, batch_size=batch_size)
        chosen = [projector.projection(n).name for n in (names or list(projector.projections))]
        groups = worker_groups(chosen, workers or os.cpu_count() or 1)
        if len(groups) == 1:
            projector.rebuild(chosen, progress)
            return
        head = ledger.log_head()
        projector.start_rebuild(chosen)
        import multiprocessing  # only a rebuild on several cores needs it
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # no inherited database connections
        with ProcessPoolExecutor(len(groups), mp_context=context) as pool:
            running = [
                pool.submit(_rebuild_worker, settings, g, batch_size, os.getpid()) for g in groups
            ]
            while not all(f.done() for f in running):
                time.sleep(0.25)
                if progress is not None:
                    progress(_slowest(store.table_sets(), chosen, head), head)
            for f in running:
                f.result()  # a worker's error surfaces here
        if progress is not None:
            progress(head, head)
        store.engine.dispose()


def _rebuild_worker(
    settings: Settings, names: list[str], batch_size: int | None, parent: int
) -> None:
    tune_for_throughput()

    def stop_if_orphaned(_position: int = 0, _head: int = 0) -> None:
        # A parent killed outright cannot stop its workers; they stop themselves (the
        # batch in flight was committed, so a rerun carries on from here). The parent's pid
        # comes from the parent: a worker still starting when it was killed would otherwise
        # take its new parent (init) for the real one and race the next rebuild.
        if os.getppid() != parent:
            raise SystemExit(1)

    stop_if_orphaned()
    with open_ledger(settings) as ledger:
        store = open_projection_store(settings)
        open_projector(settings, ledger, store, batch_size=batch_size).rebuild(
            names, stop_if_orphaned
        )
        store.engine.dispose()


def _slowest(sets: Sequence[TableSet], names: Sequence[str], head: int) -> int:
    building = [s.position for s in sets if s.projection in names and s.status == BUILDING]
    return min(building, default=head)


def audit_keys_dir(settings: Settings) -> Path:
    """Where the ledger's checkpoint signing keys live: the key folder, outside the data
    folder (a ledger made before keeps using DATA_DIR/audit until its keys are moved)."""
    legacy = settings.data_dir / "audit"
    if settings.keys_dir is None and legacy.is_dir() and not settings.key_folder.is_dir():
        return legacy
    return settings.key_folder


def create_signing_key(settings: Settings) -> bool:
    """Create the checkpoint signing key pair unless it exists; True if created."""
    from crm_ledger.adapters.crypto import create_key_pair

    return create_key_pair(audit_keys_dir(settings))


def open_signer(settings: Settings) -> Ed25519Signer:
    """The checkpoint signer (or verifier, without the private key)."""
    from crm_ledger.adapters.crypto import load_signer

    return load_signer(audit_keys_dir(settings))


def verifier(public_pem: bytes) -> Ed25519Signer:
    """A checker of signatures made by the holder of ``public_pem``'s private key."""
    from crm_ledger.adapters.crypto import Ed25519Signer, load_public_key

    return Ed25519Signer(load_public_key(public_pem))


def open_auditor(settings: Settings, ledger: Ledger) -> Auditor:
    """Checkpoints and verification over ``ledger``'s event store."""
    from crm_ledger.adapters.crypto import Keyring, SealedValues, load_signer
    from crm_ledger.adapters.receipts import ReceiptFile
    from crm_ledger.audit import Auditor

    store = cast("AuditStore", ledger.recorder)
    return Auditor(
        store,
        load_signer(audit_keys_dir(settings)),
        ledger.log_head,
        SealedValues(Keyring(settings.key_folder)),
        cast("SnapshotCheck", ledger.mapper),
        ReceiptFile(receipts_path(settings)),
    )


def receipts_path(settings: Settings) -> Path:
    """The auditor's copy of the checkpoint receipts (outside the database)."""
    return settings.audit_receipts or audit_keys_dir(settings) / RECEIPTS_FILE
