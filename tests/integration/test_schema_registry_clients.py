"""A Kafka client that is not ours: confluent-kafka (librdkafka) with its own SchemaRegistryClient
and AvroSerializer, pointed at `crm-ledger serve`, publishes touchpoints that `crm-ledger
ingest` stores exactly as sent; a schema we have not registered is refused by the registry."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from crm_ledger.adapters.avro import SchemaRegistry, to_record
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


def _push(url: str, schemas: Path | None = None) -> Any:
    env = {**os.environ, "CRM_LEDGER_SCHEMAS_DIR": str(schemas)} if schemas else None
    return run_cli(["--format", "json", "schemas", "register", "--registry", url], env)


def test_pushing_to_a_registry_that_holds_our_ids_changes_nothing(registry_url: str) -> None:
    pushed = _push(registry_url)
    assert pushed.returncode == 0, pushed.stderr
    rows = json.loads(pushed.stdout)
    ours = SchemaRegistry(ROOT / "schemas")
    assert len(rows) == sum(len(ours.versions(s)) for s in ours.subjects())
    assert {r["outcome"] for r in rows} == {"already there"}
    assert {r["schema_id"] for r in rows} == {
        v.schema_id for s in ours.subjects() for v in ours.versions(s)
    }


def test_pushing_refuses_an_id_the_registry_gave_another_schema(
    registry_url: str, tmp_path: Path
) -> None:
    schemas = _copy_schemas(tmp_path)
    registry = json.loads((schemas / "registry.json").read_text())
    registry["subjects"]["OrderPlaced"][-1]["id"] = 999
    (schemas / "registry.json").write_text(json.dumps(registry))
    pushed = _push(registry_url, schemas)
    assert pushed.returncode == 1
    (line,) = pushed.stderr.strip().splitlines()
    assert "crm_ledger.events.OrderPlaced" in line
    assert "ours is 999" in line


def test_pushing_a_new_version_to_a_read_only_registry_is_refused_in_one_line(
    registry_url: str, tmp_path: Path
) -> None:
    schemas = _copy_schemas(tmp_path)
    avsc = schemas / "OrderPlaced.avsc"
    schema = json.loads(avsc.read_text())
    schema["fields"].append({"name": "coupon", "type": "string", "default": ""})
    avsc.write_text(json.dumps(schema))
    env = {**os.environ, "CRM_LEDGER_SCHEMAS_DIR": str(schemas)}
    assert run_cli(["schemas", "register"], env).returncode == 0  # a new version, locally
    pushed = _push(registry_url, schemas)
    assert pushed.returncode == 1
    (line,) = pushed.stderr.strip().splitlines()
    assert "refused crm_ledger.events.OrderPlaced" in line
    assert "read-only" in line
    assert "42205" in line


@pytest.mark.parametrize("url", ["http://127.0.0.1:9", "ftp://example.org", "not a url"])
def test_pushing_to_nowhere_is_one_line(url: str) -> None:
    pushed = _push(url)
    assert pushed.returncode != 0
    assert len(pushed.stderr.strip().splitlines()) == 1, pushed.stderr
    assert "Traceback" not in pushed.stderr


def _copy_schemas(tmp_path: Path) -> Path:
    copy = tmp_path / "schemas"
    shutil.copytree(ROOT / "schemas", copy)
    return copy
