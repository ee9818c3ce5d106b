"""The services on the in-memory ledger store and an in-memory read-model database: no files,
no servers. What the CLI and the console both call, tested once here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import pytest

from crm_ledger.adapters.avro import Codec, SchemaRegistry, to_json
from crm_ledger.adapters.eventstore import memory_env
from crm_ledger.adapters.sql import SqlProjectionStore, sqlite_engine
from crm_ledger.application import Ledger
from crm_ledger.errors import CustomerNotFound, InvalidInput, NotBuilt
from crm_ledger.projections.customer_search import CustomerSearch, SearchKey
from crm_ledger.projections.runtime import all_projections
from crm_ledger.services import Services, Wiring
from crm_ledger.services.read_models import LIVE
from tests.conftest import SCHEMAS
from tests.factories import AT, tp

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from crm_ledger.aggregates import Touchpoint
    from crm_ledger.projections.contributions import Projection


@dataclass
class ListSource:
    """A source of touchpoints held in a list (the import service's port)."""

    name: str
    touchpoints: list[Touchpoint]
    reads: int = 0

    def read(self) -> Iterator[tuple[int, Touchpoint]]:
        self.reads += 1
        yield from enumerate(self.touchpoints, start=1)


class NoKafka:
    """A Kafka port that must never be reached."""

    topic = "crm.touchpoints"

    def dead_letters(self) -> Sequence[Any]:
        return []

    def redrive(self, ledger: Ledger) -> Sequence[Any]:
        raise AssertionError("not expected")

    def lag(self, ledger: Ledger) -> Sequence[Any]:
        raise AssertionError("not expected")


def _no_rebuild(*_args: Any, **_kwargs: Any) -> None:
    raise AssertionError("not expected")


def _projections(ledger: Callable[[], Ledger]) -> tuple[Projection, ...]:
    def opener(stream: bytes, field: str, sealed: Any) -> Any:  # opens the ledger when used
        return cast("Any", ledger().mapper).data_keys.open(stream, field, sealed)

    return (*all_projections(), CustomerSearch(SearchKey(b"k" * 32), opener))


def _services(opened: list[str], *, read_only: bool = False) -> Services:
    def open_ledger() -> Ledger:
        opened.append("ledger")
        return Ledger(memory_env())

    wiring = Wiring(
        store="memory",
        location="(in memory)",
        open_ledger=open_ledger,
        open_read_model_store=lambda: SqlProjectionStore(sqlite_engine(":memory:")),
        open_auditor=lambda ledger: pytest.fail("the auditor is not used here"),
        open_kafka=NoKafka,
        open_decoder=lambda: Codec(SchemaRegistry(SCHEMAS)),
        open_charts=lambda: pytest.fail("no charts here"),
        projections=_projections,
        search_key=lambda: b"k" * 32,
        open_export=lambda path, columns: pytest.fail("no exports here"),
        rebuild=_no_rebuild,
        receipts="(none)",
        retention_days=7,
        topics=("crm.touchpoints", "crm.touchpoints.dlq"),
        batch_size=2,
    )
    return Services(wiring, read_only=read_only)


def _history() -> list[Touchpoint]:
    return [
        tp("CustomerRegistered", "C1"),
        tp("OrderPlaced", "C1", at=AT + timedelta(days=1)),
        tp("OrderPlaced", "C2", at=AT + timedelta(days=2), order_id="O2"),
    ]


def test_parts_open_on_first_use_and_bad_input_opens_nothing() -> None:
    opened: list[str] = []
    with _services(opened) as services:
        assert opened == []
        assert services.kafka.dead_letters() == []  # Kafka only: the ledger stays closed
        assert opened == []
        with pytest.raises(InvalidInput, match="type"):
            services.records.record_json({"type": "Nope"})
        assert opened == []
        event = to_json(tp("CustomerRegistered", "C9"))
        done = services.records.record_json(event)
        assert (done.customer_id, done.stored, opened) == ("C9", True, ["ledger"])
        again = services.records.record_json(event)
        assert (again.event_id, again.stored) == (done.event_id, False)
        assert services.records.status().events == 1


def test_an_import_checks_everything_before_writing_and_counts_what_it_did() -> None:
    with _services([]) as services:
        good = ListSource("good.jsonl", _history())
        bad_event = tp("OrderPlaced", "C3", at=datetime.now(UTC) + timedelta(days=30))
        bad = ListSource("bad.jsonl", [tp("CustomerRegistered", "C3"), bad_event])
        with pytest.raises(InvalidInput, match=r"^bad\.jsonl, line 2: "):
            services.imports.run([good, bad])
        assert services.records.status().events == 0  # nothing written: bad was checked first
        seen: list[tuple[str, int, int]] = []
        report = services.imports.run([good], progress=lambda *a: seen.append(a))
        assert (report.files, report.read, report.recorded, report.duplicates) == (1, 3, 3, 0)
        assert seen == [("good.jsonl", 2, 3), ("good.jsonl", 3, 3)]  # batches of two
        rerun = services.imports.run([good])
        assert (rerun.recorded, rerun.duplicates) == (0, 3)


def test_read_only_queries_never_write_and_catching_up_is_explicit() -> None:
    opened: list[str] = []
    with _services(opened, read_only=True) as services:
        services.imports.run([ListSource("h.jsonl", _history())])
        with pytest.raises(NotBuilt, match="catch up first"):
            services.read_models.values("C1")
        assert services.projections.status() == []  # the failed query built nothing
        assert services.read_models.catch_up() > 0
        [value] = services.read_models.values("C1", LIVE)
        assert (value.orders, value.net_minor, value.currency) == (1, 1299, "EUR")
        services.imports.run([ListSource("more.jsonl", [tp("OrderPlaced", "C1", order_id="O9")])])
        assert services.read_models.values("C1")[0].orders == 1  # read-only: not caught up
        assert {r.lag for r in services.projections.status()} == {1}
        services.read_models.catch_up()
        assert services.read_models.values("C1")[0].orders == 2


def test_erasure_says_when_the_kafka_copies_expire() -> None:
    with _services([]) as services:
        services.imports.run([ListSource("h.jsonl", _history())])
        before = datetime.now(UTC)
        erased = services.audit.erase("C1", reason="asked", actor="dpo")
        assert erased.keys_destroyed == ["C1"]
        assert erased.kafka_topics == ["crm.touchpoints", "crm.touchpoints.dlq"]
        delay = erased.kafka_copies_expire_by - before
        assert timedelta(days=7) <= delay < timedelta(days=7, minutes=1)
        with pytest.raises(CustomerNotFound):
            services.audit.erase(f"nobody-{uuid.uuid4()}", reason="x")


def test_history_is_limited_to_the_last_events_and_as_of() -> None:
    with _services([]) as services:
        services.imports.run([ListSource("h.jsonl", _history())])
        entries = services.records.history("C1")
        assert [e.event_type for e in entries] == ["CustomerRegistered", "OrderPlaced"]
        assert [e.event_type for e in services.records.history("C1", limit=1)] == ["OrderPlaced"]
        long_ago = datetime(2000, 1, 1, tzinfo=UTC)
        assert services.records.history("C1", as_of=long_ago) == []
