"""``Services``: one ledger's use cases, each part opened (and its module imported) on first
use, all closed together."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from crm_ledger.projections.runtime import ProjectionStore
from crm_ledger.services.ports import ClvStore, DirectoryStore, QueryStore, RowStream

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path
    from types import TracebackType

    from crm_ledger.application import Ledger, LogPage
    from crm_ledger.audit import Auditor
    from crm_ledger.projections.contributions import Projection
    from crm_ledger.projections.runtime import Projector
    from crm_ledger.services.access import AccessLog
    from crm_ledger.services.audit import AuditService
    from crm_ledger.services.directory import Directory
    from crm_ledger.services.exports import Exports, ExportWriter
    from crm_ledger.services.imports import Imports
    from crm_ledger.services.ledger import JsonDecoder, LedgerService
    from crm_ledger.services.operations import (
        Kafka,
        KafkaOperations,
        ProjectionOperations,
        Rebuild,
    )
    from crm_ledger.services.predictions import Holdout, Predictions
    from crm_ledger.services.read_models import Comparison, ReadModels


class ReadModelStore(ProjectionStore, QueryStore, ClvStore, DirectoryStore, RowStream, Protocol):
    """What the read models' store does for every service: ``ProjectionStore`` (runtime),
    ``QueryStore`` (queries) and ``ClvStore`` (predictions) in one, closed with dispose."""

    def dispose(self) -> None:
        """Close its connections."""
        ...


class Charts(Protocol):
    """Draws results into image files."""

    def impact(self, result: Comparison, path: Path) -> None:
        """An initiative's weekly series per group, and its window."""
        ...

    def impact_svg(self, result: Comparison) -> bytes:
        """The same, as SVG bytes (for a page)."""
        ...

    def tracking(self, result: Holdout, path: Path) -> None:
        """A CLV holdout's predicted and actual repeat purchases, calibration end marked."""
        ...


@dataclass(frozen=True, slots=True)
class Wiring:
    """How each part of a ``Services`` is opened, on first use (made by bootstrap)."""

    store: str
    location: str
    open_ledger: Callable[[], Ledger]
    open_read_model_store: Callable[[], ReadModelStore]
    open_auditor: Callable[[Ledger], Auditor]
    open_kafka: Callable[[], Kafka]
    open_decoder: Callable[[], JsonDecoder]
    open_charts: Callable[[], Charts]
    projections: Callable[[Callable[[], Ledger]], tuple[Projection, ...]]
    open_export: Callable[[Path, Mapping[str, str]], ExportWriter]
    search_key: Callable[[], bytes]
    rebuild: Rebuild
    receipts: str
    retention_days: int
    topics: tuple[str, str]
    batch_size: int
    access_flush_seconds: float = 1.0
    #: The log's head read without opening the Ledger; None where the store cannot say so
    #: cheaply (then the Ledger is opened and asked).
    peek_log_head: Callable[[], int | None] = lambda: None


class _Log:
    """The ledger's log for the projection runtime: its head peeked at without opening the
    Ledger, so that a query over read models already up to date never loads the event store
    and the domain; the records are read through the Ledger, opened on first use."""

    def __init__(self, peek_head: Callable[[], int | None], ledger: Callable[[], Ledger]) -> None:
        self._peek_head = peek_head
        self._ledger = ledger

    def log_head(self) -> int:
        head = self._peek_head()
        return self._ledger().log_head() if head is None else head

    def read_log(self, after: int, limit: int) -> LogPage:
        return self._ledger().read_log(after, limit)


class Services:
    """One ledger's use cases, opened lazily, closed once."""

    def __init__(
        self,
        wiring: Wiring,
        *,
        read_only: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.wiring = wiring
        self.read_only = read_only
        self.progress = progress

    @cached_property
    def ledger(self) -> Ledger:
        """The Ledger application (opened on first use)."""
        return self.wiring.open_ledger()

    @cached_property
    def read_model_store(self) -> ReadModelStore:
        """The read models' store (opened on first use)."""
        return self.wiring.open_read_model_store()

    @cached_property
    def projector(self) -> Projector:
        """The projection runtime over the ledger's log and the read models' store."""
        from crm_ledger.projections.runtime import Projector

        store = self.read_model_store  # first: it refuses a place that holds no ledger
        projections = self.wiring.projections(lambda: self.ledger)
        log = _Log(self.wiring.peek_log_head, lambda: self.ledger)
        return Projector(log, store, projections=projections)

    @cached_property
    def read_models(self) -> ReadModels:
        """Queries: 360, value, timeline, top, compare, consent; live, snapshot or as of."""
        from crm_ledger.services.read_models import ReadModels

        return ReadModels(
            lambda: self.ledger,
            self.projector,
            self.read_model_store,
            progress=self.progress,
            read_only=self.read_only,
        )

    @cached_property
    def predictions(self) -> Predictions:
        """Predictive lifetime value: fit, show, top, hold out."""
        from crm_ledger.services.predictions import Predictions

        return Predictions(self.read_models, self.read_model_store)

    @cached_property
    def records(self) -> LedgerService:
        """Status, recording one event, history, key rotation."""
        from crm_ledger.services.ledger import LedgerService

        w = self.wiring
        return LedgerService(
            lambda: self.ledger, w.open_decoder, store=w.store, location=w.location
        )

    @cached_property
    def imports(self) -> Imports:
        """The check-everything-then-write import."""
        from crm_ledger.services.imports import Imports

        return Imports(self.ledger, self.wiring.batch_size)

    @cached_property
    def audit(self) -> AuditService:
        """History with hashes, checkpoints, verification, exports, erasure."""
        from crm_ledger.services.audit import AuditService

        w = self.wiring
        return AuditService(
            self.ledger,
            lambda: w.open_auditor(self.ledger),
            receipts=w.receipts,
            retention_days=w.retention_days,
            topics=list(w.topics),
        )

    @cached_property
    def projections(self) -> ProjectionOperations:
        """Status, catch-up, rebuild and snapshots of the read models."""
        from crm_ledger.services.operations import ProjectionOperations

        return ProjectionOperations(self.projector, self.wiring.rebuild)

    @cached_property
    def kafka(self) -> KafkaOperations:
        """Lag, dead letters, redrive, stored positions."""
        from crm_ledger.services.operations import KafkaOperations

        return KafkaOperations(lambda: self.ledger, self.wiring.open_kafka, self.wiring.topics[0])

    @cached_property
    def directory(self) -> Directory:
        """Find customers by id, e-mail, phone or name; list them by filters, paged."""
        from crm_ledger.projections.customer_search import SearchKey
        from crm_ledger.services.directory import Directory

        key = SearchKey(self.wiring.search_key())
        return Directory(lambda: self.ledger, self.read_models, self.read_model_store, key)

    @cached_property
    def exports(self) -> Exports:
        """Customers, orders, timelines, value and CLV to CSV, JSON Lines or Parquet."""
        from crm_ledger.services.exports import Exports

        return Exports(
            lambda: self.ledger,
            self.read_models,
            self.read_model_store,
            lambda: self.predictions,
            self.wiring.open_export,
        )

    @cached_property
    def charts(self) -> Charts:
        """Charts of comparisons and holdouts (the drawing library loaded on first use)."""
        return self.wiring.open_charts()

    @cached_property
    def access(self) -> AccessLog:
        """The access log: who read a customer's data, who did what as an administrator."""
        from crm_ledger.services.access import AccessLog

        return AccessLog(lambda: self.ledger, flush_every=self.wiring.access_flush_seconds)

    def close(self) -> None:
        """Close what was opened: the access log (appending what is queued), the read
        models' connections, then the ledger."""
        if "access" in self.__dict__:
            self.access.close()
        if "read_model_store" in self.__dict__:
            self.read_model_store.dispose()
        if "ledger" in self.__dict__:
            self.ledger.close()

    def __enter__(self) -> Services:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["ReadModelStore", "Services", "Wiring"]
