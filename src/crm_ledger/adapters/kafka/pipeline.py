"""The ingest worker's store stage: a thread that stores one batch while the consumer thread
polls and decodes the next, so that Kafka's client and Avro decoding overlap with the store's
transaction (SQLite and psycopg release the interpreter while they work).

Order is kept: jobs run one at a time in the order submitted, and after one fails none of the
later ones runs (a later batch's positions would otherwise move past the failed one's
messages). Memory is bounded: at most ``depth`` jobs wait, besides the one running.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

_STOP = object()


class StoreStage:
    """Runs submitted jobs in order on one thread (or inline, with ``depth`` 0); their results
    come back, in order, through ``collect``."""

    def __init__(self, depth: int = 1) -> None:
        self.depth = depth
        self._jobs: queue.Queue[Any] = queue.Queue(maxsize=max(depth, 1))
        self._done: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue()
        self._pending = 0  # submitted and not yet collected
        self._lock = threading.Lock()  # collect may also be called from another thread
        self._failed: BaseException | None = None
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, name="ledger-store", daemon=True)
            self._thread.start()

    @property
    def pending(self) -> int:
        """Jobs submitted whose results were not collected yet."""
        return self._pending

    def submit(self, job: Callable[[], Any]) -> None:
        """Queue ``job`` (waiting while ``depth`` jobs already wait); inline, run it now.
        After a job failed, nothing more is queued: its error is raised here."""
        if self._failed is not None:
            raise self._failed
        with self._lock:
            self._pending += 1
        if self._thread is None:
            outcome = _call(job)
            self._failed = outcome[1]
            self._done.put(outcome)
        else:
            self._jobs.put(job)

    def collect(self, *, wait: bool = False) -> list[Any]:
        """Results of the jobs finished so far (with ``wait``: of every job submitted), in
        order; a job's exception is raised here, in the submitting thread."""
        results = []
        with self._lock:
            while self._pending:
                try:
                    value, error = self._done.get(block=wait)
                except queue.Empty:
                    break
                self._pending -= 1
                if error is not None:
                    raise error
                results.append(value)
        return results

    def close(self) -> None:
        """Let the jobs in hand finish (not after a failure), then end the thread."""
        if self._thread is not None:
            self._jobs.put(_STOP)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            if self._failed is not None:  # skipped: an earlier batch failed; say so
                self._done.put((None, self._failed))
                continue
            outcome = _call(job)
            self._failed = outcome[1]
            self._done.put(outcome)


def _call(job: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return job(), None
    except BaseException as e:  # handed to the consumer thread, which re-raises it
        return None, e
