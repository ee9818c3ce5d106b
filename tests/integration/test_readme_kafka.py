"""The README's Kafka examples run as written against the test broker (fresh topics), after
the examples of tests/e2e/test_readme.py made their point on the demo ledger."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tests.integration.conftest import Sasl, init_ledger, kafka_env
from tests.readme import examples, run_refusing, shell

if TYPE_CHECKING:
    from pathlib import Path

    from crm_ledger.adapters.kafka import KafkaSettings


def test_the_kafka_examples_run_as_written(kafka: KafkaSettings, tmp_path: Path) -> None:
    env = {**kafka_env(kafka), "CRM_LEDGER_DATA_DIR": str(init_ledger(tmp_path / "ledger"))}
    [block] = examples("kafka")
    outputs = {}
    for command in block.commands():
        result = shell(command, tmp_path, env)
        assert result.returncode == 0, f"README line {block.line}: {command}\n{result.stderr}"
        assert result.stdout.strip(), f"README line {block.line}: {command} printed nothing"
        outputs[command.split(" #")[0].strip()] = result.stdout
    published = outputs["crm-ledger publish events.jsonl"]
    caught_up = outputs["crm-ledger ingest --until-caught-up"]
    count = len((tmp_path / "events.jsonl").read_text().splitlines())
    assert f"published {count} of {count}" in published
    assert "recorded" in caught_up
    status = shell("crm-ledger --format json status", tmp_path, env)
    assert json.loads(status.stdout)["events"] == count  # every published event, once
    assert "nothing matched" in outputs["crm-ledger dlq list"]

    [snippet] = examples("kafka-python")
    (tmp_path / "publish.py").write_text(snippet.text)
    result = shell("python publish.py", tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{count} published"


def test_the_acl_examples_run_as_written(kafka: KafkaSettings, sasl: Sasl, tmp_path: Path) -> None:
    env = {
        **sasl.env(kafka, "admin", tmp_path),
        "CRM_LEDGER_DATA_DIR": str(init_ledger(tmp_path / "ledger")),
    }
    for user in ("service", "ingest", "outsider"):
        (tmp_path / f"{user}.pw").write_text(sasl.passwords[user] + "\n")
    events = shell("crm-ledger generate --customers 10 --out events.jsonl", tmp_path, env)
    assert events.returncode == 0, events.stderr
    [block] = examples("kafka-acls")
    outputs = run_refusing(block, tmp_path, env, "crm-ledger: error: Kafka refused User:service")
    count = len((tmp_path / "events.jsonl").read_text().splitlines())
    assert f"published {count} of {count}" in outputs[1]
    status = shell("crm-ledger --format json status", tmp_path, env)
    assert json.loads(status.stdout)["events"] == count
