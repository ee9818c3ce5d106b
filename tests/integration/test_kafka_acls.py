"""Kafka principals and ACLs on the real broker's SASL/SCRAM listener (standard authorizer,
allow.everyone.if.no.acl.found=false): `crm-ledger kafka acls` grants each principal its
role, the full publish -> ingest path works with those grants alone, and every principal is
refused what its role does not hold, in one line from the CLI."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from kafka.errors import TopicAuthorizationFailedError
from kafka.structs import TopicPartition

from crm_ledger.adapters.avro import to_json
from kafka import KafkaConsumer, KafkaProducer
from tests.factories import tp
from tests.integration.conftest import Sasl, cli_ledger, init_ledger, run_cli, stored_touchpoints

if TYPE_CHECKING:
    from pathlib import Path

    from crm_ledger.adapters.kafka import KafkaSettings

ACL_FIELDS = ("principal", "operation", "resource_type", "resource", "permission")


def granted(kafka: KafkaSettings, sasl: Sasl, tmp_path: Path, *roles: str) -> list[dict[str, Any]]:
    """Run `kafka acls ROLES` as the administrator; the ACLs it lists."""
    done = run_cli(
        ["--format", "json", "kafka", "acls", *roles], sasl.env(kafka, "admin", tmp_path)
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def refusal(done: Any, principal: str) -> str:
    """The one line a refused command prints (besides `ingest`'s JSON log lines)."""
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"crm-ledger: error: Kafka refused User:{principal}"), lines[0]
    return lines[0]


def poll_until_refused(consumer: KafkaConsumer) -> None:
    """Poll until the broker answers a fetch (a refusal raises), twenty seconds at most."""
    for _ in range(20):
        consumer.poll(timeout_ms=1000)


def events_file(tmp_path: Path, count: int) -> Path:
    source = tmp_path / "events.jsonl"
    batch = [tp("OrderPlaced", f"C{i}", order_id=f"O{i}") for i in range(count)]
    source.write_text("".join(json.dumps(to_json(e)) + "\n" for e in batch))
    return source


def test_publish_to_ingest_works_with_least_privilege(
    kafka: KafkaSettings, sasl: Sasl, tmp_path: Path
) -> None:
    acls = granted(kafka, sasl, tmp_path, "--service", "service", "--worker", "ingest")
    assert {tuple(a[f] for f in ACL_FIELDS) for a in acls} == {
        ("User:service", "WRITE", "TOPIC", kafka.topic, "ALLOW"),
        ("User:ingest", "READ", "TOPIC", kafka.topic, "ALLOW"),
        ("User:ingest", "READ", "GROUP", kafka.group, "ALLOW"),
        ("User:ingest", "WRITE", "TOPIC", kafka.dlq_topic, "ALLOW"),
    }
    data = init_ledger(tmp_path / "data")
    service, worker = sasl.env(kafka, "service", tmp_path), sasl.env(kafka, "ingest", tmp_path)

    published = run_cli(["publish", str(events_file(tmp_path, 30))], service)
    assert published.returncode == 0, published.stderr
    with KafkaProducer(**sasl.client("service")) as raw:  # the service may write any bytes
        raw.send(kafka.topic, key=b"C1", value=b"\x00not avro").get(timeout=30)

    ingested = run_cli(["--data-dir", str(data), "ingest", "--until-caught-up"], worker)
    assert ingested.returncode == 0, ingested.stderr
    with cli_ledger(data) as ledger:
        assert len(stored_touchpoints(ledger)) == 30
    letters = run_cli(["--format", "json", "dlq", "list"], sasl.env(kafka, "admin", tmp_path))
    assert [row["reason"] for row in json.loads(letters.stdout)] != []  # dead-lettered by ingest


def test_a_service_may_not_read_the_topic_nor_write_dead_letters(
    kafka: KafkaSettings, sasl: Sasl, tmp_path: Path
) -> None:
    granted(kafka, sasl, tmp_path, "--service", "service", "--worker", "ingest")
    consumer = KafkaConsumer(**sasl.client("service"), group_id=None, consumer_timeout_ms=5000)
    try:
        consumer.assign([TopicPartition(kafka.topic, 0)])
        with pytest.raises(TopicAuthorizationFailedError):
            poll_until_refused(consumer)
    finally:
        consumer.close()
    producer = KafkaProducer(**sasl.client("service"), max_block_ms=10_000)
    with producer, pytest.raises(TopicAuthorizationFailedError):
        producer.send(kafka.dlq_topic, value=b"forged dead letter").get(timeout=30)

    service = sasl.env(kafka, "service", tmp_path)
    assert f"reading {kafka.dlq_topic}" in refusal(run_cli(["dlq", "list"], service), "service")
    data = init_ledger(tmp_path / "data")
    refusal(run_cli(["--data-dir", str(data), "ingest", "--until-caught-up"], service), "service")


def test_the_worker_may_not_publish_and_an_outsider_may_do_nothing(
    kafka: KafkaSettings, sasl: Sasl, tmp_path: Path
) -> None:
    granted(kafka, sasl, tmp_path, "--service", "service", "--worker", "ingest")
    source = events_file(tmp_path, 3)
    worker = sasl.env(kafka, "ingest", tmp_path)
    assert "writing to" in refusal(run_cli(["publish", str(source)], worker), "ingest")
    outsider = sasl.env(kafka, "outsider", tmp_path)
    refusal(run_cli(["publish", str(source)], outsider), "outsider")
    refusal(run_cli(["dlq", "list"], outsider), "outsider")
    refusal(run_cli(["kafka", "acls", "--service", "outsider"], outsider), "outsider")


def test_a_wrong_password_is_one_line(kafka: KafkaSettings, sasl: Sasl, tmp_path: Path) -> None:
    env = sasl.env(kafka, "service", tmp_path)
    (tmp_path / "service.password").write_text("wrong\n")
    done = run_cli(["publish", str(events_file(tmp_path, 1))], env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"crm-ledger: error: cannot reach Kafka at {sasl.bootstrap} as User:service: no broker "
        "answered, or it refused the user's password or SASL mechanism"
    ]


def test_an_operator_reads_dead_letters_and_nothing_more(
    kafka: KafkaSettings, sasl: Sasl, tmp_path: Path
) -> None:
    granted(kafka, sasl, tmp_path, "--operator", "outsider")
    operator = sasl.env(kafka, "outsider", tmp_path)
    listed = run_cli(["--format", "json", "dlq", "list"], operator)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    redriven = run_cli(["publish", str(events_file(tmp_path, 1))], operator)  # as redrive does
    assert redriven.returncode == 0, redriven.stderr
    data = init_ledger(tmp_path / "data")
    refusal(run_cli(["--data-dir", str(data), "ingest", "--until-caught-up"], operator), "outsider")
