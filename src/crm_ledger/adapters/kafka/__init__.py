"""Kafka transport: the Publisher, the exactly-once ingest worker, the dead-letter topic and lag.
The only importer of kafka-python."""

from crm_ledger.adapters.kafka.acls import AclBinding, grant_acls, list_acls
from crm_ledger.adapters.kafka.client import (
    DLQ_TOPIC,
    GROUP,
    HEADER_ROOM,
    TOPIC,
    KafkaSettings,
    ensure_topics,
    max_message_bytes,
    security_config,
)
from crm_ledger.adapters.kafka.ingest import IngestStats, IngestWorker, dead_letter_headers
from crm_ledger.adapters.kafka.operations import (
    DeadLetter,
    KafkaTopics,
    Lag,
    dead_letters,
    lag,
    read_topic,
    redrive,
)
from crm_ledger.adapters.kafka.publisher import Publisher, PublishResult, PublishResults

__all__ = [
    "DLQ_TOPIC",
    "GROUP",
    "HEADER_ROOM",
    "TOPIC",
    "AclBinding",
    "DeadLetter",
    "IngestStats",
    "IngestWorker",
    "KafkaSettings",
    "KafkaTopics",
    "Lag",
    "PublishResult",
    "PublishResults",
    "Publisher",
    "dead_letter_headers",
    "dead_letters",
    "ensure_topics",
    "grant_acls",
    "lag",
    "list_acls",
    "max_message_bytes",
    "read_topic",
    "redrive",
    "security_config",
]
