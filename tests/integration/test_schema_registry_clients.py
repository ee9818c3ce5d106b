"""A Kafka client that is not ours: confluent-kafka (librdkafka) with its own SchemaRegistryClient
and AvroSerializer, pointed at `crm-ledger serve`, publishes touchpoints that `crm-ledger
ingest` stores exactly as sent; a schema we have not registered is refused by the registry."""

from __future__ import annotations

import json
import socket
import subprocess
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from crm_ledger.adapters.avro import to_record
from crm_ledger.adapters.kafka import ensure_topics
from tests.integration.conftest import (
    CLI,
    ROOT,
    Worker,
    cli_ledger,
    init_ledger,
    kafka_env,
    run_cli,
    wait_until,
)
from tests.integration.test_kafka import events, expected, stored

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from crm_ledger.adapters.kafka import KafkaSettings

PASSWORD = "correct horse battery"


@pytest.fixture
def registry_url(tmp_path: Path) -> Iterator[str]:
    """`crm-ledger serve` on a free port (its schema registry needs no sign-in)."""
    data = init_ledger(tmp_path / "console")
    added = run_cli(
        ["--data-dir", str(data), "users", "add", "ops", "--role", "admin", "--password", PASSWORD]
    )
    assert added.returncode == 0, added.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(CLI), "--data-dir", str(data), "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def listening() -> bool:
        assert server.poll() is None, server.communicate()[1]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    try:
        wait_until(listening, 60, "crm-ledger serve listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.communicate(timeout=30)


@pytest.fixture
def clients() -> Iterator[list[SchemaRegistryClient]]:
    """Registry clients made by a test, closed after it."""
    made: list[SchemaRegistryClient] = []
    yield made
    for client in made:
        client.close()


def _serializer(
    made: list[SchemaRegistryClient], url: str, schema: dict[str, Any], **conf: Any
) -> AvroSerializer:
    client = SchemaRegistryClient({"url": url})
    made.append(client)
    settings = {"subject.name.strategy": record_subject_name_strategy, **conf}
    return AvroSerializer(client, json.dumps(schema), conf=settings)


def test_confluent_s_avro_serializer_publishes_what_ingest_stores(
    kafka: KafkaSettings, registry_url: str, tmp_path: Path, clients: list[Any]
) -> None:
    ensure_topics(kafka)
    batch = events(400, seed=21)
    schemas = {
        e.event_type: json.loads((ROOT / "schemas" / f"{e.event_type}.avsc").read_text())
        for e in batch
    }
    # Half look their schema's id up, half "register" it (answered with the id it has).
    serializers = {
        kind: _serializer(clients, registry_url, schema, **{"auto.register.schemas": n % 2 == 0})
        for n, (kind, schema) in enumerate(sorted(schemas.items()))
    }
    context = SerializationContext(kafka.topic, MessageField.VALUE)
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True})
    for event in batch:
        value = serializers[event.event_type](to_record(event), context)
        producer.produce(kafka.topic, key=event.customer_id.encode(), value=value)
    assert producer.flush(60) == 0

    data = init_ledger(tmp_path / "ledger")
    worker = Worker(["--data-dir", str(data), "ingest", "--until-caught-up"], kafka_env(kafka))
    code, _, err = worker.finish(timeout=300)
    assert code == 0, err[-2000:]
    with cli_ledger(data) as ledger:
        assert stored(ledger) == expected(batch)


def test_a_schema_we_have_not_registered_is_refused(registry_url: str, clients: list[Any]) -> None:
    schema = json.loads((ROOT / "schemas" / "OrderPlaced.avsc").read_text())
    schema["fields"] = [*schema["fields"], {"name": "coupon", "type": "string", "default": ""}]
    serializer = _serializer(clients, registry_url, schema)  # auto-registers by default
    record = {f["name"]: None for f in schema["fields"]}
    context = SerializationContext("any", MessageField.VALUE)
    with pytest.raises(SchemaRegistryError) as refused:
        serializer(record, context)
    assert refused.value.error_code == 42205
    assert "read-only" in refused.value.error_message
    client = SchemaRegistryClient({"url": registry_url})
    clients.append(client)
    assert "crm_ledger.events.OrderPlaced" in client.get_subjects()
    assert client.test_compatibility("crm_ledger.events.OrderPlaced", _schema_of(schema))


def _schema_of(schema: dict[str, Any]) -> Any:
    from confluent_kafka.schema_registry import Schema

    return Schema(json.dumps(schema), "AVRO")
