"""A real Apache Kafka broker for the session, and helpers to read back what the ledger holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from crm_ledger.adapters.kafka import KafkaSettings
from crm_ledger.aggregates.envelope import Touched, own_fields

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from crm_ledger.application import Ledger

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = ROOT / "scripts" / "kafka_server.sh"
CLI = Path(sys.executable).with_name("crm-ledger")


class Worker:
    """A `crm-ledger` process whose stderr is read as it comes, so a test can wait for what
    it says (an assignment, a batch) instead of sleeping."""

    #: Every worker a test started: the ``_no_worker_outlives_its_test`` fixture kills those
    #: still running when the test ends, so one failure does not leak into the next test.
    running: ClassVar[list[Worker]] = []

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [str(CLI), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        Worker.running.append(self)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines so far."""
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def wait_for(
        self,
        seen: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 120,
        *,
        or_exit: bool = False,
    ) -> None:
        """Wait until ``seen(logs)`` holds (or, with ``or_exit``, the worker ended); fail
        (with the worker's stderr) if neither happens in time."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not seen(self.logs):
                ended = self.process.poll() is not None and not self._reader.is_alive()
                if ended and or_exit:
                    return
                left = deadline - time.monotonic()
                if left <= 0 or ended:
                    tail = "\n".join(self.lines[-30:])
                    pytest.fail(f"the worker never got there (exit {self.process.poll()}):\n{tail}")
                self._changed.wait(min(left, 0.5))

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        """Wait for the exit: (exit code, stdout, stderr)."""
        out, _ = self.process.communicate(timeout=timeout)
        self._reader.join(timeout=10)
        return self.process.returncode, out, "\n".join(self.lines)

    def kill(self) -> None:
        """End the process now (if it still runs) and release its pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._reader.join(timeout=10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def stop(self, signum: int, timeout: float = 60) -> float:
        """Send ``signum`` and wait for the exit; seconds it took."""
        sent = time.monotonic()
        self.process.send_signal(signum)
        self.process.wait(timeout=timeout)
        return time.monotonic() - sent


def cli_ledger(data_dir: Path, *, database_url: str | None = None, schema: str = "public") -> Any:
    """The ledger a `crm-ledger --data-dir DATA_DIR` process writes, opened the same way (its
    key folder, DATA_DIR.keys, holds the key-encryption key of its data keys)."""
    from crm_ledger.bootstrap import open_ledger
    from crm_ledger.config import Settings

    settings = Settings(data_dir=data_dir, database_url=database_url, database_schema=schema)
    return open_ledger(settings)


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `crm-ledger ARGS` to its end (two minutes at most)."""
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, check=False, timeout=120
    )


def init_ledger(data_dir: Path, *options: str) -> Path:
    """An empty ledger in ``data_dir`` (commands other than `init` refuse a folder without)."""
    made = run_cli(["--data-dir", str(data_dir), *options, "init"])
    assert made.returncode == 0, made.stderr
    return data_dir


def wait_until(holds: Callable[[], bool], timeout: float, what: str) -> None:
    """Check ``holds()`` every fifth of a second until it does; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not holds():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.2)


def batches(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-batch log lines."""
    return [e for e in logs if e.get("event") == "batch"]


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    yield
    while Worker.running:
        Worker.running.pop().kill()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The broker: KAFKA_BOOTSTRAP_SERVERS if set, else one this session starts and stops."""
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
        return
    started = subprocess.run(
        [str(KAFKA_SCRIPT), "start"], capture_output=True, text=True, check=False, timeout=600
    )
    if started.returncode != 0:
        pytest.fail(
            "could not start Apache Kafka with scripts/kafka_server.sh (it needs Java 17 and "
            f"Maven, or set KAFKA_BOOTSTRAP_SERVERS): {started.stderr.strip()[-2000:]}"
        )
    yield started.stdout.strip()
    subprocess.run([str(KAFKA_SCRIPT), "stop"], check=False, timeout=120)


@pytest.fixture
def kafka(kafka_bootstrap: str) -> KafkaSettings:
    """Fresh topics and consumer group for one test."""
    name = uuid.uuid4().hex[:10]
    return KafkaSettings(
        bootstrap=kafka_bootstrap,
        topic=f"touchpoints-{name}",
        dlq_topic=f"touchpoints-{name}.dlq",
        group=f"ingest-{name}",
    )


def kafka_env(kafka: KafkaSettings) -> dict[str, str]:
    """Environment that points a `crm-ledger` process at these topics."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "CRM_LEDGER_KAFKA_TOPIC": kafka.topic,
        "CRM_LEDGER_KAFKA_DLQ_TOPIC": kafka.dlq_topic,
        "CRM_LEDGER_KAFKA_GROUP": kafka.group,
    }


@dataclass(frozen=True)
class Stored:
    """A touchpoint as the ledger stored it."""

    event_type: str
    occurred_at: Any
    source: str
    data: dict[str, Any]


def stored_touchpoints(ledger: Ledger) -> list[tuple[str, Stored]]:
    """Every stored touchpoint (not the ledger's bookkeeping events), with its event_id."""
    out = []
    start = 1
    while True:
        page = ledger.recorder.select_notifications(start=start, limit=5000)
        if not page:
            return out
        for n in page:
            event = ledger.mapper.to_domain_event(n)
            if isinstance(event, Touched) and event.counts_as_touch:
                stored = Stored(
                    type(event).__name__, event.occurred_at, event.source, own_fields(event)
                )
                out.append((str(event.event_id), stored))
        start = page[-1].id + 1


@dataclass(frozen=True)
class Sasl:
    """The broker's SASL/SCRAM listener and its users (made by the storage tool at format)."""

    bootstrap: str
    passwords: dict[str, str]

    def client(self, user: str, password: str | None = None) -> dict[str, Any]:
        """kafka-python settings to connect as ``user``."""
        return {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": user,
            "sasl_plain_password": password or self.passwords[user],
        }

    def env(self, kafka: KafkaSettings, user: str, folder: Path) -> dict[str, str]:
        """Environment for a `crm-ledger` process acting as ``user`` on these topics (its
        password in a file, as a service keeps it)."""
        secret = folder / f"{user}.password"
        secret.write_text(self.passwords.get(user, "not-the-password") + "\n")
        secret.chmod(0o600)
        return {
            **kafka_env(kafka),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CRM_LEDGER_KAFKA_USER": user,
            "CRM_LEDGER_KAFKA_PASSWORD_FILE": str(secret),
        }


@pytest.fixture(scope="session")
def sasl(kafka_bootstrap: str) -> Sasl:
    """The SASL listener of the broker scripts/kafka_server.sh runs (a failure if it is not
    that broker: an external KAFKA_BOOTSTRAP_SERVERS has no users this suite knows)."""
    shown = subprocess.run(
        [str(KAFKA_SCRIPT), "sasl"], capture_output=True, text=True, check=False, timeout=60
    )
    lines = shown.stdout.split()
    if shown.returncode != 0 or len(lines) < 3:
        pytest.fail(
            "the ACL tests need the SASL/SCRAM listener of scripts/kafka_server.sh "
            f"(`scripts/kafka_server.sh sasl` said: {shown.stderr.strip()[-500:]})"
        )
    pairs = iter(lines[1:])
    return Sasl(lines[0], dict(zip(pairs, pairs, strict=True)))
