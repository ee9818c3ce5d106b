"""The exactly-once ingest worker.

The worker stores each batch's events together with the (topic, partition, next offset)
positions in one ledger transaction, and on every (re)assignment seeks to the ledger's stored
positions, not to Kafka's committed offsets (those are committed after the transaction only so
that lag tools see progress). A crash at any instant therefore neither loses nor duplicates an
event; event_id dedup is a second line of defence. Every message is stored or dead-lettered.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import AuthorizationError, KafkaError, OffsetOutOfRangeError
from kafka.structs import OffsetAndMetadata, TopicPartition

from crm_ledger.adapters.kafka.client import (
    CLOSE_TIMEOUT_MS,
    KafkaSettings,
    open_worker_clients,
    refused,
)
from crm_ledger.adapters.kafka.operations import recreated_topic, topic_offsets
from crm_ledger.application import OutboxLetter, Position
from crm_ledger.errors import (
    BatchesNotStored,
    ConfigurationError,
    InvalidInput,
    KafkaUnavailable,
    StoreUnavailable,
    UndecodableMessage,
    WrongMessageKey,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from crm_ledger.adapters.avro import Codec
    from crm_ledger.aggregates import Touchpoint
    from crm_ledger.application import Ledger


#: An unexpected error on one message (or batch) is retried this many times.
MESSAGE_ATTEMPTS = 3
#: A poll that fails for a reason retrying cannot mend stops the worker after this many.
POLL_ATTEMPTS = 5
#: The error message kept in a dead letter's header, at most.
MAX_REASON_BYTES = 4000
#: Dead letters sent at a time from the outbox, and the pause before retrying a refused one.
OUTBOX_PAGE = 500
OUTBOX_RETRY_S = 30.0
SEND_TIMEOUT_S = 5.0

log = logging.getLogger("crm_ledger.ingest")

# Ingesting.


@dataclass(slots=True)
class IngestStats:
    """What one ingest run did."""

    consumed: int = 0
    recorded: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    assigned: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Messages a second since the start."""
        return self.consumed / max(time.monotonic() - self.started, 1e-9)


class _SeekToLedger(ConsumerRebalanceListener):  # type: ignore[misc]
    """On every assignment, continue from the ledger's stored positions."""

    def __init__(self, worker: IngestWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Store the batches in flight before giving the partitions up: the next owner starts
        # from the positions they store. (This runs on the Kafka client's IO thread, which
        # must not block on the client: the rest of their handling waits for the next poll.)
        self.worker.wait_stored()
        log.info("partitions revoked", extra={"partitions": sorted(p.partition for p in revoked)})

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.worker.wait_stored()
        self.worker.seek_to_ledger(assigned)


def _where(record: Any) -> dict[str, Any]:
    """The log fields that say which message a line is about."""
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def _why(error: BaseException) -> dict[str, Any]:
    """The log fields that say what went wrong."""
    return {"error_class": type(error).__name__, "error": str(error) or repr(error)}


class IngestWorker:
    """Consumes the touchpoint topic into the ledger, exactly once; dead-letters bad messages.

    Every message is either stored or dead-lettered: refusals are written to the ledger's
    outbox in the batch's own transaction and sent to the dead-letter topic from there, so a
    crash between the two loses none, and a dead letter the topic will not take stays in the
    outbox and is tried again instead of stopping ingestion.

    Each batch is committed in the background (SQLite: the ledger's commit process;
    PostgreSQL: its commit thread) while this process polls, decodes and prepares the next;
    a batch is finished (Kafka offsets committed, counted) once stored. Batches in flight
    that are not stored are read again from the ledger's positions.
    """

    def __init__(
        self,
        ledger: Ledger,
        codec: Codec,
        settings: KafkaSettings,
        *,
        max_batch: int = 5000,
        poll_timeout_ms: int = 500,
        on_batch: Callable[[IngestStats], None] | None = None,
        on_assign: Callable[[list[int]], None] | None = None,
        clock: Callable[[], datetime] | None = None,
        background: bool = True,
    ) -> None:
        self.ledger = ledger
        self.codec = codec
        self.settings = settings
        self.max_batch = max_batch
        self.poll_timeout_ms = poll_timeout_ms
        self.on_batch = on_batch
        self.on_assign = on_assign
        self._clock = clock or (lambda: datetime.now(UTC))
        self._stopping, self._outbox_due, self._poll_failures = False, 0.0, 0
        self.stats = IngestStats()
        self._taken = 0  # messages polled, stored or in flight
        self.background = background  # commit batches in the background where the store can
        self._lost: BatchesNotStored | None = None  # batches in flight a callback found lost
        # Batches handed to the ledger and not finished yet, oldest first: their outcome,
        # positions and number of messages.
        self._sent: collections.deque[tuple[_Outcome, list[Position], int]] = collections.deque()
        self._consumer, self._dlq = open_worker_clients(settings, max_batch, SEND_TIMEOUT_S)
        self._consumer.subscribe([settings.topic], listener=_SeekToLedger(self))

    def stop(self) -> None:
        """Finish the batch in hand, then return from ``run`` (safe from a signal handler)."""
        self._stopping = True

    def seek_to_ledger(self, assigned: Sequence[TopicPartition]) -> None:
        """Position each assigned partition at the ledger's stored next offset."""
        stored = self.ledger.positions(self.settings.topic)
        for partition in assigned:
            if partition.partition in stored:
                self._consumer.seek(partition, stored[partition.partition])
            else:
                self._consumer.seek_to_beginning(partition)
        self.stats.assigned = sorted(p.partition for p in assigned)
        if self.on_assign:
            self.on_assign(self.stats.assigned)
        where = {"partitions": self.stats.assigned, "positions": stored}
        log.info("partitions assigned", extra=where)

    def run(
        self,
        *,
        max_events: int | None = None,
        until_idle: float | None = None,
        until_caught_up: bool = False,
    ) -> IngestStats:
        """Ingest until stopped, until ``max_events`` messages, ``until_idle`` seconds idle, or
        (``until_caught_up``) until the ledger holds every message the topic had at the start."""
        try:
            targets = self.end_offsets() if until_caught_up else None
            self._loop(max_events, until_idle, targets)
            self.settle()
        finally:
            self.close()  # the batches in hand are stored first
        return self.stats

    def wait_stored(self) -> None:
        """Wait until every batch handed to the ledger is stored (the next owner of a
        partition starts from its positions). Called on the Kafka client's IO thread, where
        no consumer call may be made: the next ``settle`` finishes the batches."""
        try:
            self.ledger.flush()
        except BatchesNotStored as e:
            self._lost = e

    def settle(self) -> None:
        """Wait for the batches in flight, then finish every batch handed over; batches that
        were not stored are read again from the ledger's positions."""
        try:
            self.ledger.flush()
        except BatchesNotStored as e:
            self._read_again(e)
        self._finish_stored()

    def _finish_stored(self) -> None:
        """Finish the batches the ledger has stored (all but those still in flight)."""
        if self._lost is not None:  # found by a rebalance callback
            lost, self._lost = self._lost, None
            self._read_again(lost)
        while len(self._sent) > self.ledger.batches_in_flight:
            self._finish(*self._sent.popleft())

    def _read_again(self, error: BatchesNotStored, polled: int = 0) -> None:
        """The newest ``error.batches`` batches handed over (and ``polled`` messages in hand)
        were not stored: finish the older ones, and read the rest again from the positions."""
        stored = max(0, len(self._sent) - error.batches)
        for _ in range(stored):
            self._finish(*self._sent.popleft())
        lost = polled + sum(messages for _, _, messages in self._sent)
        self._sent.clear()
        self._taken -= lost
        log.warning(
            "batches not stored; reading them again",
            extra={"topic": self.settings.topic, "messages": lost, **_why(error)},
        )
        self.seek_to_ledger(list(self._consumer.assignment()))

    def _loop(
        self, max_events: int | None, until_idle: float | None, targets: dict[int, int] | None
    ) -> None:
        idle_since = time.monotonic()
        self._send_outbox()  # what an earlier run could not send
        while not self._stopping:
            if targets is not None and self._caught_up(targets):
                return
            limit = self.max_batch
            if max_events is not None:
                limit = min(limit, max_events - self._taken)
                if limit <= 0:
                    return
            records = self._poll(limit)
            if records is None:  # the broker is away: an outage is not idleness
                idle_since = time.monotonic()
                continue
            if records:
                self._ingest(records)
                idle_since = time.monotonic()
                continue
            self.settle()  # nothing new: what is stored is all there is
            self._send_outbox()
            if not self._consumer.assignment():
                # Waiting to join the group (say, for a crashed member's session to time
                # out) is not being idle.
                idle_since = time.monotonic()
            elif until_idle is not None and time.monotonic() - idle_since >= until_idle:
                return

    def end_offsets(self) -> dict[int, int]:
        """Partition -> end offset of the topic now (a partition never read counts from its
        beginning); refuses positions beyond the end (the topic was re-created)."""
        ends, begins = topic_offsets(self._consumer, self.settings.topic)
        stored = self.ledger.positions(self.settings.topic)
        for partition, end in ends.items():
            if stored.get(partition, 0) > end:
                raise ConfigurationError(
                    recreated_topic(self.settings.topic, partition, stored, end)
                )
        return {p: max(end, begins[p]) for p, end in ends.items()}

    def _caught_up(self, targets: dict[int, int]) -> bool:
        stored = self.ledger.positions(self.settings.topic)
        return all(stored.get(p, 0) >= end for p, end in targets.items() if end > 0)

    def _poll(self, limit: int) -> list[Any] | None:
        """The next records; None after a failed poll (waited on, to be tried again)."""
        try:
            polled = self._consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=limit)
        except OffsetOutOfRangeError as e:
            raise ConfigurationError(self._out_of_range(e)) from None
        except AuthorizationError as e:
            doing = f"reading {self.settings.topic} in group {self.settings.group}"
            raise refused(self.settings, e, doing) or KafkaUnavailable(str(e)) from None
        except Exception as e:  # the broker is away, or a fetch cannot be read
            self._poll_failures += 1
            retriable = isinstance(e, KafkaError) and e.retriable
            if not retriable and self._poll_failures >= POLL_ATTEMPTS:
                msg = f"reading {self.settings.topic} keeps failing: {type(e).__name__}: {e}"
                raise KafkaUnavailable(msg) from None
            log.warning("poll failed; retrying", extra={"topic": self.settings.topic, **_why(e)})
            self._pause(1.0)
            return None
        self._poll_failures = 0
        return [r for batch in polled.values() for r in batch]

    def _out_of_range(self, error: OffsetOutOfRangeError) -> str:
        stored = self.ledger.positions(self.settings.topic)
        ends, begins = topic_offsets(self._consumer, self.settings.topic)
        for partition, end in ends.items():
            if stored.get(partition, 0) > end:
                return recreated_topic(self.settings.topic, partition, stored, end)
        lost = {p: (stored[p], begins[p]) for p in stored if p in begins and stored[p] < begins[p]}
        return (
            f"messages of {self.settings.topic} were deleted before the ledger read them "
            f"(partition: (ledger position, first offset left) {lost or error}); raise the "
            "topic's retention, then run `crm-ledger positions reset` to read what is left"
        )

    def _pause(self, seconds: float) -> None:
        """Wait, but wake for a stop within a tenth of a second."""
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(0.1)

    def _ingest(self, records: list[Any]) -> None:
        good: list[tuple[Any, Touchpoint]] = []
        letters: list[OutboxLetter] = []
        for record in records:
            outcome = self._decode(record)
            if isinstance(outcome, Exception):
                letters.append(self._letter(record, outcome))
            else:
                good.append((record, outcome))
        positions = self._positions(records)
        self._taken += len(records)
        try:
            result = self._record(good, positions, letters)
        except BatchesNotStored as e:
            self._read_again(e, polled=len(records))
            return
        # Only the count is kept: the messages themselves are not needed again.
        self._sent.append((result, positions, len(records)))
        self._finish_stored()

    def _finish(self, result: _Outcome, positions: list[Position], messages: int) -> None:
        """A batch is stored: tell Kafka (for lag tools) and the caller, send dead letters."""
        self._commit(positions)
        self.stats.consumed += messages
        self.stats.recorded += result.recorded
        self.stats.duplicates += result.duplicates
        self.stats.dead_lettered += result.dead_lettered
        self.stats.batches += 1
        if self.on_batch:
            self.on_batch(self.stats)
        self._send_outbox()

    def _decode(self, record: Any) -> Touchpoint | Exception:
        """The message's touchpoint, key checked (record_many checks the rest); or why it is
        refused. An unexpected error is retried, then refuses the message (it cannot stop us)."""
        error: Exception = RuntimeError("not tried")
        for _attempt in range(MESSAGE_ATTEMPTS):
            try:
                tp = self.codec.decode(_value(record))
                self._check_key(record, tp)
            except InvalidInput as e:
                return e
            except Exception as e:  # a bug or a fault on one message: bounded retries
                log.warning("message failed; retrying", extra={**_where(record), **_why(e)})
                error = e
                continue
            return tp
        return error

    def _check_key(self, record: Any, tp: Touchpoint) -> None:
        """The key must be the customer id: per-customer order and single-writer streams
        depend on every event of a customer landing on the same partition."""
        if self.settings.check_keys and record.key != tp.customer_id.encode():
            # An event that also breaks the contract is refused for that (InvalidEvent).
            self.ledger.check(tp)
            key = "null" if record.key is None else repr(bytes(record.key[:100]))
            msg = f"message key {key} is not the event's customer_id {tp.customer_id!r}"
            raise WrongMessageKey(msg)

    def _record(
        self, good: list[tuple[Any, Touchpoint]], positions: list[Position], letters: list[Any]
    ) -> _Outcome:
        """Store the batch (waiting out a store outage); if it keeps failing for another
        reason, find the message that fails it."""
        failures = 0
        while True:
            try:
                return self._record_batch(good, positions, letters, wait=failures > 0)
            except BatchesNotStored:
                raise
            except StoreUnavailable as e:
                if self._stopping:
                    raise
                log.warning("store unavailable; retrying", extra=_why(e))
                self._pause(1.0)
            except Exception as e:
                failures += 1
                log.warning(
                    "batch failed; retrying",
                    extra={"topic": self.settings.topic, "attempt": failures, **_why(e)},
                )
                if failures >= MESSAGE_ATTEMPTS:
                    return self._record_one_by_one(good, letters)

    def _record_batch(
        self,
        good: list[tuple[Any, Touchpoint]],
        positions: list[Position],
        letters: list[Any],
        *,
        wait: bool = True,
    ) -> _Outcome:
        result = self.ledger.record_many(
            [tp for _, tp in good],
            positions,
            dead_letters=letters,
            dead_letter_for=lambda i, error: self._letter(good[i][0], error),
            wait=wait or not self.background,
        )
        for rejected in result.rejected:
            self._log_refusal(good[rejected.index][0], rejected.error)
        for letter in letters:
            log.warning(
                "dead-lettered",
                extra={
                    "topic": letter.topic,
                    "partition": letter.partition,
                    "offset": letter.offset,
                    "error_class": letter.error_class,
                    "error": letter.error_message,
                },
            )
        return _Outcome(result.recorded, result.duplicates, len(letters) + len(result.rejected))

    def _record_one_by_one(
        self, good: list[tuple[Any, Touchpoint]], letters: list[OutboxLetter]
    ) -> _Outcome:
        """Each message in its own transaction with its position, in offset order (so a
        crash part way resumes after the last one stored), so that the message that fails
        the batch is dead-lettered and the others are stored."""
        total = _Outcome()
        items: list[tuple[int, int, Any]] = [(r.partition, r.offset, (r, tp)) for r, tp in good]
        items += [(letter.partition, letter.offset, letter) for letter in letters]
        for partition, offset, item in sorted(items, key=lambda i: i[:2]):
            position = Position(self.settings.topic, partition, offset + 1)
            if isinstance(item, OutboxLetter):
                total += self._record_batch([], [position], [item])
                continue
            error: Exception | None = None
            for _attempt in range(MESSAGE_ATTEMPTS):
                try:
                    total += self._record_batch([item], [position], [])
                    error = None
                    break
                except StoreUnavailable:
                    raise
                except Exception as e:
                    error = e
            if error is not None:
                total += self._record_batch([], [position], [self._letter(item[0], error)])
        return total

    def _log_refusal(self, record: Any, error: Exception) -> None:
        log.warning("dead-lettered", extra={**_where(record), **_why(error)})

    def _letter(self, record: Any, error: Exception) -> OutboxLetter:
        """The outbox entry for a refused message: its bytes, where it came from and why."""
        message = str(error) or repr(error)
        return OutboxLetter(
            record.topic,
            record.partition,
            record.offset,
            None if record.key is None else bytes(record.key),
            None if record.value is None else bytes(record.value),
            type(error).__name__,
            message.encode()[:MAX_REASON_BYTES].decode(errors="ignore"),
            self._clock().isoformat(),
        )

    def _positions(self, records: list[Any]) -> list[Position]:
        last: dict[int, int] = {}
        for r in records:
            last[r.partition] = max(last.get(r.partition, -1), r.offset)
        return [Position(self.settings.topic, p, o + 1) for p, o in sorted(last.items())]

    def _send_outbox(self) -> None:
        """Send the outbox's dead letters; one the topic refuses stays and is tried later."""
        if time.monotonic() < self._outbox_due:
            return
        pending = self.ledger.pending_dead_letters(OUTBOX_PAGE)
        while pending and not self._stopping:
            sent = self._send_letters(pending)
            self.ledger.dead_letters_sent(sent)
            if len(sent) < len(pending):
                self._outbox_due = time.monotonic() + OUTBOX_RETRY_S
                return
            pending = self.ledger.pending_dead_letters(OUTBOX_PAGE)

    def _send_letters(self, pending: list[tuple[int, OutboxLetter]]) -> list[int]:
        futures = []
        for letter_id, letter in pending:
            try:
                future = self._dlq.send(
                    self.settings.dlq_topic,
                    key=letter.key,
                    value=letter.value,
                    headers=dead_letter_headers(letter),
                )
            except KafkaError as e:
                self._unsent(letter, e)
                continue
            futures.append((letter_id, letter, future))
        with contextlib.suppress(KafkaError):
            self._dlq.flush(timeout=SEND_TIMEOUT_S)
        sent = []
        for letter_id, letter, future in futures:
            try:
                future.get(timeout=0.1 if future.is_done else SEND_TIMEOUT_S)
            except KafkaError as e:
                self._unsent(letter, e)
                continue
            sent.append(letter_id)
        return sent

    def _unsent(self, letter: OutboxLetter, error: Exception) -> None:
        log.warning(
            "dead letter not sent; kept in the ledger and retried",
            extra={
                "topic": letter.topic,
                "partition": letter.partition,
                "offset": letter.offset,
                "dlq_topic": self.settings.dlq_topic,
                **_why(error),
            },
        )

    def _commit(self, positions: list[Position]) -> None:
        offsets = {
            TopicPartition(self.settings.topic, p.partition): OffsetAndMetadata(
                p.next_offset, "", -1
            )
            for p in positions
        }
        try:
            self._consumer.commit(offsets)
        except KafkaError as e:  # only lag tools read these; the ledger's positions are the truth
            log.warning("offset commit failed", extra={"topic": self.settings.topic, **_why(e)})

    def close(self) -> None:
        """Leave the group and close the clients, within a few seconds even with the broker
        away (whatever was not sent stays in the ledger's outbox)."""
        # The batches in hand are stored first; one waiting out a store outage gives up
        # (unstored, its messages are read again).
        self._stopping = True
        try:
            self.ledger.flush()
        except BatchesNotStored as e:  # read again by the next run, from the ledger's positions
            log.warning("batches not stored at close", extra=_why(e))
        try:
            self._consumer.close(autocommit=False, timeout_ms=CLOSE_TIMEOUT_MS)
        except Exception as e:
            log.warning("closing the consumer failed", extra=_why(e))
        try:
            self._dlq.close(timeout=CLOSE_TIMEOUT_MS / 1000)
        except Exception as e:
            log.warning("closing the dead-letter producer failed", extra=_why(e))


@dataclass(slots=True)
class _Outcome:
    """What storing some messages did."""

    recorded: int = 0
    duplicates: int = 0
    dead_lettered: int = 0

    def __iadd__(self, other: _Outcome) -> _Outcome:
        self.recorded += other.recorded
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        return self


def _value(record: Any) -> bytes:
    if record.value is None:
        msg = "the message has no value (a tombstone): the ledger never deletes events"
        raise UndecodableMessage(msg)
    return bytes(record.value)


def dead_letter_headers(letter: OutboxLetter) -> list[tuple[str, bytes]]:
    """Headers saying why a message was dead-lettered and where it came from."""
    return [
        ("error.class", letter.error_class.encode()),
        ("error.message", letter.error_message.encode()[:MAX_REASON_BYTES]),
        ("source.topic", letter.topic.encode()),
        ("source.partition", str(letter.partition).encode()),
        ("source.offset", str(letter.offset).encode()),
        ("dlq.time", letter.at.encode()),
    ]
