"""Kafka ACLs for least privilege: what a service, the ingest worker and an operator may do
on the ledger's topics and consumer group, granted with the cluster's standard authorizer.

- a **service** publishes touchpoints: Write on the touchpoint topic, nothing else (it cannot
  read it, nor touch the dead-letter topic);
- the **ingest worker**: Read on the touchpoint topic and on its consumer group, Write on the
  dead-letter topic;
- an **operator** inspects and redrives dead letters: Read on the dead-letter topic, Write on
  the touchpoint topic.
Describe comes with each of these; creating topics stays with the administrator who runs
`crm-ledger kafka acls` (a super user, or a principal allowed to Create and Alter ACLs).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
)
from kafka.errors import KafkaError, NoError

from crm_ledger.adapters.kafka.client import KafkaSettings, connect, ensure_topics, refused
from crm_ledger.errors import KafkaUnavailable

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

#: Role -> (operation, resource type, which resource) it is granted.
GRANTS: dict[str, tuple[tuple[ACLOperation, ResourceType, str], ...]] = {
    "service": ((ACLOperation.WRITE, ResourceType.TOPIC, "topic"),),
    "worker": (
        (ACLOperation.READ, ResourceType.TOPIC, "topic"),
        (ACLOperation.READ, ResourceType.GROUP, "group"),
        (ACLOperation.WRITE, ResourceType.TOPIC, "dlq_topic"),
    ),
    "operator": (
        (ACLOperation.READ, ResourceType.TOPIC, "dlq_topic"),
        (ACLOperation.WRITE, ResourceType.TOPIC, "topic"),
    ),
}


@dataclass(frozen=True, slots=True)
class AclBinding:
    """One ACL on the ledger's topics or group."""

    principal: str
    operation: str
    resource_type: str
    resource: str
    permission: str


def grant_acls(settings: KafkaSettings, roles: Sequence[tuple[str, str]]) -> list[AclBinding]:
    """Create the topics if missing, then allow each (role, user) of ``roles`` what its role
    needs; returns every ACL on the ledger's resources afterwards."""
    ensure_topics(settings)
    acls = [
        ACL(
            f"User:{user}",
            "*",
            operation,
            ACLPermissionType.ALLOW,
            ResourcePattern(kind, getattr(settings, which), ACLResourcePatternType.LITERAL),
        )
        for role, user in roles
        for operation, kind, which in GRANTS[role]
    ]
    with _admin(settings, "managing ACLs") as admin:
        if acls:
            failed = admin.create_acls(acls).get("failed") or []
            if failed:
                raise failed[0]() if isinstance(failed[0], type) else failed[0]
        return _bindings(admin, settings)


def list_acls(settings: KafkaSettings) -> list[AclBinding]:
    """Every ACL on the touchpoint and dead-letter topics and the ingest group."""
    with _admin(settings, "describing ACLs") as admin:
        return _bindings(admin, settings)


@contextlib.contextmanager
def _admin(settings: KafkaSettings, doing: str) -> Iterator[KafkaAdminClient]:
    """An admin client; a Kafka error inside is one line (naming the principal if refused)."""
    admin = connect(KafkaAdminClient, settings, request_timeout_ms=30_000)
    try:
        yield admin
    except KafkaError as e:
        raise refused(settings, e, doing) or KafkaUnavailable(
            f"Kafka failed {doing} at {settings.bootstrap}: {e}"
        ) from None
    finally:
        admin.close()


def _bindings(admin: KafkaAdminClient, settings: KafkaSettings) -> list[AclBinding]:
    found: list[AclBinding] = []
    for kind, name in (
        (ResourceType.TOPIC, settings.topic),
        (ResourceType.TOPIC, settings.dlq_topic),
        (ResourceType.GROUP, settings.group),
    ):
        wanted = ACLFilter(
            None,
            None,
            ACLOperation.ANY,
            ACLPermissionType.ANY,
            ResourcePatternFilter(kind, name, ACLResourcePatternType.LITERAL),
        )
        acls, error = admin.describe_acls(wanted)
        if error not in (None, NoError):
            raise error() if isinstance(error, type) else error
        found += [
            AclBinding(
                acl.principal,
                acl.operation.name,
                acl.resource_pattern.resource_type.name,
                acl.resource_pattern.resource_name,
                acl.permission_type.name,
            )
            for acl in acls
        ]
    return sorted(found, key=lambda b: (b.principal, b.resource, b.operation))
