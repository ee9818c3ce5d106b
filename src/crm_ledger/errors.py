"""The one exception hierarchy of crm-ledger.

::

    CrmLedgerError                      anything the ledger reports to a user
    ├── InvalidInput                    input that cannot be accepted (exit code 1)
    │   ├── InvalidEvent                an event breaks the contract: names the field and problem
    │   ├── InvalidEventInBatch         the same, for the event at ``index`` of a batch
    │   ├── UndecodableMessage          bytes that are not a Confluent-framed Avro event
    │   ├── WrongMessageKey             a Kafka message not keyed by its event's customer_id
    │   └── UnreadableFile              an input file that cannot be opened or parsed
    ├── RejectedEvent                   a valid event that a domain rule refuses
    │   ├── ErasedCustomerError         personal data sent for an erased customer
    │   ├── ConflictingDuplicate        an event_id stored before, sent again with other content
    │   └── MergeError                  a merge or unmerge that does not fit the customers' state
    ├── NotFound
    │   ├── CustomerNotFound
    │   ├── OrganisationNotFound
    │   └── InitiativeNotFound
    ├── SchemaError                     the schema registry or a schema file is wrong
    │   └── IncompatibleSchema          a new schema version cannot read older data
    ├── ConfigurationError              settings that cannot work
    ├── StoreUnavailable                the event store cannot be reached or opened
    │   ├── BatchesNotStored            batches committed in the background failed: send them again
    │   └── KafkaUnavailable            the Kafka cluster cannot be reached, or refused a request
    ├── AccessDenied                    the store or the cluster refused the connected role
    ├── PositionConflict                another process moved a read model's position first
    └── UntrustedSnapshot               a stored snapshot whose seal does not match (never used)

The CLI turns any ``CrmLedgerError`` into one line on stderr and exit code 1; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class CrmLedgerError(Exception):
    """Base of every error the ledger reports to a user."""


class InvalidInput(CrmLedgerError):
    """Input that cannot be accepted."""


class InvalidEvent(InvalidInput):
    """An event breaks the contract; ``field`` and ``problem`` say where and how."""

    def __init__(self, field: str, problem: str, *, event_type: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.event_type = event_type
        where = f"{event_type}.{field}" if event_type else field
        super().__init__(f"{where}: {problem}")


class InvalidEventInBatch(InvalidInput):
    """The event at ``index`` (from 0) of a batch is invalid; ``error`` says how."""

    def __init__(self, index: int, error: InvalidInput) -> None:
        self.index = index
        self.error = error
        super().__init__(f"event {index + 1}: {error}")


class UndecodableMessage(InvalidInput):
    """Bytes that are not a Confluent-framed Avro event the registry knows."""


class WrongMessageKey(InvalidInput):
    """A Kafka message whose key is not its event's customer_id."""


class UnreadableFile(InvalidInput):
    """An input file that cannot be opened or parsed."""


class RejectedEvent(CrmLedgerError):
    """A valid event that a domain rule refuses."""


class ErasedCustomerError(RejectedEvent):
    """Personal data was sent for a customer who has been erased."""

    def __init__(self, customer_id: str, field: str) -> None:
        self.customer_id = customer_id
        self.field = field
        super().__init__(
            f"customer {customer_id} was erased and accepts no personal data ({field})"
        )


class ConflictingDuplicate(RejectedEvent):
    """An event_id the ledger already holds, sent again with different content."""

    def __init__(self, event_id: str, stored: str, received: str) -> None:
        self.event_id = event_id
        self.stored = stored
        self.received = received
        super().__init__(
            f"event_id {event_id} is stored with other content "
            f"(stored sha256:{stored}, received sha256:{received})"
        )


class MergeError(RejectedEvent):
    """A merge or unmerge that does not fit the customers' current state."""


class NotFound(CrmLedgerError):
    """Something asked for by id is not in the ledger."""


class CustomerNotFound(NotFound):
    """No customer with this id."""

    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        super().__init__(f"customer {customer_id!r} not found")


class OrganisationNotFound(NotFound):
    """No organisation with this id."""

    def __init__(self, organisation_id: str) -> None:
        self.organisation_id = organisation_id
        super().__init__(f"organisation {organisation_id!r} not found")


class InitiativeNotFound(NotFound):
    """No initiative with this id."""

    def __init__(self, initiative_id: str) -> None:
        self.initiative_id = initiative_id
        super().__init__(f"initiative {initiative_id!r} not found")


class NotBuilt(NotFound):
    """A read-only reader was asked for read models that were never built."""


class SchemaError(CrmLedgerError):
    """The schema registry or a schema file is wrong."""


class IncompatibleSchema(SchemaError):
    """A schema's latest version cannot read data written with an earlier version."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class ConfigurationError(CrmLedgerError):
    """Settings that cannot work."""


class StoreUnavailable(CrmLedgerError):
    """The event store cannot be reached or opened."""


class BatchesNotStored(StoreUnavailable):
    """Batches handed to the store to commit in the background were not stored (the first
    failed, the others were refused after it): ``batches`` of them were in flight (the call
    that raises stores nothing either). The caller sends them again, from its own record of
    what is stored (a Kafka worker re-reads from the ledger's positions)."""

    def __init__(self, reason: str, batches: int) -> None:
        super().__init__(f"{batches} batch(es) in flight were not stored: {reason}")
        self.reason = reason
        self.batches = batches


class KafkaUnavailable(StoreUnavailable):
    """The Kafka cluster cannot be reached, or refused a request."""


class AccessDenied(CrmLedgerError):
    """The store or the cluster refused the role this process connects as."""


class PositionConflict(CrmLedgerError):
    """Another process moved a table set's position first; this batch was not applied."""


class UntrustedSnapshot(CrmLedgerError):
    """A stored snapshot whose seal does not match its content: it is never used."""
