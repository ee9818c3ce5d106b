"""A real Apache Kafka broker for the session, and helpers to read back what the ledger holds."""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from crm_ledger.adapters.kafka import KafkaSettings
from crm_ledger.aggregates.envelope import Touched, own_fields

if TYPE_CHECKING:
    from collections.abc import Iterator

    from crm_ledger.application import Ledger

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = ROOT / "scripts" / "kafka_server.sh"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The broker: KAFKA_BOOTSTRAP_SERVERS if set, else one this session starts and stops."""
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
        return
    started = subprocess.run(
        [str(KAFKA_SCRIPT), "start"], capture_output=True, text=True, check=False, timeout=600
    )
    if started.returncode != 0:
        pytest.fail(
            "could not start Apache Kafka with scripts/kafka_server.sh (it needs Java 17 and "
            f"Maven, or set KAFKA_BOOTSTRAP_SERVERS): {started.stderr.strip()[-2000:]}"
        )
    yield started.stdout.strip()
    subprocess.run([str(KAFKA_SCRIPT), "stop"], check=False, timeout=120)


@pytest.fixture
def kafka(kafka_bootstrap: str) -> KafkaSettings:
    """Fresh topics and consumer group for one test."""
    name = uuid.uuid4().hex[:10]
    return KafkaSettings(
        bootstrap=kafka_bootstrap,
        topic=f"touchpoints-{name}",
        dlq_topic=f"touchpoints-{name}.dlq",
        group=f"ingest-{name}",
    )


def kafka_env(kafka: KafkaSettings) -> dict[str, str]:
    """Environment that points a `crm-ledger` process at these topics."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "CRM_LEDGER_KAFKA_TOPIC": kafka.topic,
        "CRM_LEDGER_KAFKA_DLQ_TOPIC": kafka.dlq_topic,
        "CRM_LEDGER_KAFKA_GROUP": kafka.group,
    }


@dataclass(frozen=True)
class Stored:
    """A touchpoint as the ledger stored it."""

    event_type: str
    occurred_at: Any
    source: str
    data: dict[str, Any]


def stored_touchpoints(ledger: Ledger) -> list[tuple[str, Stored]]:
    """Every stored touchpoint (not the ledger's bookkeeping events), with its event_id."""
    out = []
    start = 1
    while True:
        page = ledger.recorder.select_notifications(start=start, limit=5000)
        if not page:
            return out
        for n in page:
            event = ledger.mapper.to_domain_event(n)
            if isinstance(event, Touched) and event.counts_as_touch:
                stored = Stored(
                    type(event).__name__, event.occurred_at, event.source, own_fields(event)
                )
                out.append((str(event.event_id), stored))
        start = page[-1].id + 1
