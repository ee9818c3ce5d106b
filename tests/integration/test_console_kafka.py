"""The console's operations page on a real broker: ingest positions and lag per partition, the
dead letters with their reasons, and a redrive by an admin (refused to anyone else)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crm_ledger import bootstrap
from crm_ledger.adapters.kafka import ensure_topics
from crm_ledger.config import Settings
from crm_ledger.web.app import create_app
from kafka import KafkaProducer
from tests.factories import tp
from tests.integration.conftest import Worker, init_ledger, kafka_env
from tests.web.conftest import PASSWORD, csrf_of, signed_in

if TYPE_CHECKING:
    from pathlib import Path

    from crm_ledger.adapters.avro import Codec
    from crm_ledger.adapters.kafka import KafkaSettings


def test_operations_show_lag_and_dead_letters_and_an_admin_redrives(
    kafka: KafkaSettings, codec: Codec, tmp_path: Path
) -> None:
    ensure_topics(kafka)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    producer.send(kafka.topic, key=b"C1", value=codec.encode(tp("CustomerRegistered", "C1")))
    producer.send(kafka.topic, key=b"C2", value=b"\x00\x00\x00\x00\x07not avro at all")
    producer.flush()
    producer.close()
    env = kafka_env(kafka)
    data = init_ledger(tmp_path / "ledger")
    code, _, err = Worker(["--data-dir", str(data), "ingest", "--until-caught-up"], env).finish()
    assert code == 0, err[-2000:]

    settings = Settings.from_env(env, data_dir=data)
    with bootstrap.build(settings, read_only=True) as services:
        users = bootstrap.open_users(settings)
        for role in ("admin", "agent"):
            users.add(role, role, PASSWORD)
        app = create_app(services, users, b"s" * 32)
        admin = signed_in(app, "admin")
        shown: dict[str, Any] = admin.get("/api/operations/kafka").json()
        assert shown["error"] is None
        assert shown["topic"] == kafka.topic
        assert sum(r["end_offset"] for r in shown["lag"]) == 2
        assert [r["lag"] for r in shown["lag"]] == [0] * kafka.partitions
        (letter,) = shown["dead_letters"]
        assert "schema id 7" in (letter["reason"] or ""), letter
        page = admin.get("/operations/kafka")
        assert "schema id 7" in page.text
        assert 'id="redrive"' in page.text

        agent = signed_in(app, "agent")
        assert agent.post("/operations/redrive", data={"csrf": csrf_of(agent)}).status_code == 403
        done = admin.post("/operations/redrive", data={"csrf": csrf_of(admin)})
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/operations?redriven=1"
        assert "1 dead letters re-published" in admin.get(done.headers["location"]).text
        again = admin.post("/operations/redrive", data={"csrf": csrf_of(admin)})
        assert again.headers["location"] == "/operations?redriven=0"  # each letter once
