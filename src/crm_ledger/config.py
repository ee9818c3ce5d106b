"""Settings: built once (CLI flags > environment ``CRM_LEDGER_*`` > defaults), passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crm_ledger.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping

ENV_PREFIX = "CRM_LEDGER_"
DB_FILE = "ledger.sqlite"


def _default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "crm-ledger"


def _default_schemas_dir() -> Path:
    # src/crm_ledger/config.py -> the project's schemas/ folder.
    return Path(__file__).resolve().parents[2] / "schemas"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable about a ledger process."""

    data_dir: Path = field(default_factory=lambda: _default_data_dir(os.environ))
    #: Keys that must not sit with the data: the checkpoint signing key and the snapshot seal
    #: key (default: a folder beside the data folder, NAME.keys).
    keys_dir: Path | None = None
    #: The auditor's copy of checkpoint receipts (default: in the key folder).
    audit_receipts: Path | None = None
    database_url: str | None = None
    database_schema: str = "public"
    schemas_dir: Path = field(default_factory=_default_schemas_dir)
    batch_size: int = 10_000
    #: Streams whose aggregate, data key and chain head a writing process keeps in memory
    #: (about 2.8 KB each): the bound on a writer's memory that grows with the customers.
    cache_streams: int = 100_000
    max_future: timedelta = timedelta(days=1)
    kafka_bootstrap: str | None = None
    kafka_topic: str = "crm.touchpoints"
    kafka_dlq_topic: str = "crm.touchpoints.dlq"
    kafka_group: str = "crm-ledger-ingest"
    kafka_partitions: int = 6
    kafka_retention_days: int = 7
    #: A crashed ingest worker's partitions are taken over within this (plus a rebalance).
    kafka_session_timeout_ms: int = 10_000
    #: Dead-letter messages whose Kafka key is not their event's customer_id.
    kafka_check_keys: bool = True
    #: SASL: the user this process authenticates as, its password, the mechanism, and the
    #: CA file that turns on TLS (SASL_SSL).
    kafka_user: str | None = None
    kafka_password: str | None = field(default=None, repr=False)
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_ca_file: str | None = None
    #: A server appends queued access records this often (the most a crash can lose).
    access_flush_seconds: int = 1

    @property
    def key_folder(self) -> Path:
        """Where the keys live: ``keys_dir``, or NAME.keys beside the data folder."""
        return self.keys_dir or self.data_dir.with_name(f"{self.data_dir.name}.keys")

    @property
    def sqlite_path(self) -> Path:
        """The embedded store's file."""
        return self.data_dir / DB_FILE

    @property
    def store_name(self) -> str:
        """``postgres`` or ``sqlite``."""
        return "postgres" if self.database_url else "sqlite"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``CRM_LEDGER_*`` variables, then ``overrides`` that are not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {"data_dir": _default_data_dir(env)}
        if env.get(f"{ENV_PREFIX}DATA_DIR"):
            values["data_dir"] = Path(env[f"{ENV_PREFIX}DATA_DIR"])
        if env.get(f"{ENV_PREFIX}DATABASE_URL"):
            values["database_url"] = env[f"{ENV_PREFIX}DATABASE_URL"]
        if env.get(f"{ENV_PREFIX}DATABASE_SCHEMA"):
            values["database_schema"] = env[f"{ENV_PREFIX}DATABASE_SCHEMA"]
        if env.get(f"{ENV_PREFIX}KEYS_DIR"):
            values["keys_dir"] = Path(env[f"{ENV_PREFIX}KEYS_DIR"])
        if env.get(f"{ENV_PREFIX}AUDIT_RECEIPTS"):
            values["audit_receipts"] = Path(env[f"{ENV_PREFIX}AUDIT_RECEIPTS"])
        if env.get(f"{ENV_PREFIX}SCHEMAS_DIR"):
            values["schemas_dir"] = Path(env[f"{ENV_PREFIX}SCHEMAS_DIR"])
        values.update(_kafka_values(env))
        if env.get(f"{ENV_PREFIX}ACCESS_FLUSH_SECONDS"):
            name = f"{ENV_PREFIX}ACCESS_FLUSH_SECONDS"
            values["access_flush_seconds"] = _positive_int(name, env)
        if env.get(f"{ENV_PREFIX}CACHE_STREAMS"):
            values["cache_streams"] = _positive_int(f"{ENV_PREFIX}CACHE_STREAMS", env)
        if env.get(f"{ENV_PREFIX}BATCH_SIZE"):
            values["batch_size"] = _positive_int(f"{ENV_PREFIX}BATCH_SIZE", env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("data_dir", "schemas_dir", "keys_dir"):
            if name in values:
                values[name] = Path(values[name])
        return cls(**values)


def _kafka_values(env: Mapping[str, str]) -> dict[str, Any]:
    """The Kafka settings given in ``env``."""
    values: dict[str, Any] = {}
    bootstrap = env.get(f"{ENV_PREFIX}KAFKA_BOOTSTRAP") or env.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        values["kafka_bootstrap"] = bootstrap
    for name in ("topic", "dlq_topic", "group"):
        if env.get(f"{ENV_PREFIX}KAFKA_{name.upper()}"):
            values[f"kafka_{name}"] = env[f"{ENV_PREFIX}KAFKA_{name.upper()}"]
    if env.get(f"{ENV_PREFIX}KAFKA_RETENTION_DAYS"):
        values["kafka_retention_days"] = _positive_int(f"{ENV_PREFIX}KAFKA_RETENTION_DAYS", env)
    if env.get(f"{ENV_PREFIX}KAFKA_SESSION_TIMEOUT_MS"):
        values["kafka_session_timeout_ms"] = _positive_int(
            f"{ENV_PREFIX}KAFKA_SESSION_TIMEOUT_MS", env
        )
    if env.get(f"{ENV_PREFIX}KAFKA_CHECK_KEYS"):
        values["kafka_check_keys"] = _flag(f"{ENV_PREFIX}KAFKA_CHECK_KEYS", env)
    for name in ("user", "password", "sasl_mechanism", "ca_file"):
        if env.get(f"{ENV_PREFIX}KAFKA_{name.upper()}"):
            values[f"kafka_{name}"] = env[f"{ENV_PREFIX}KAFKA_{name.upper()}"]
    if env.get(f"{ENV_PREFIX}KAFKA_PASSWORD_FILE"):
        values["kafka_password"] = read_secret(Path(env[f"{ENV_PREFIX}KAFKA_PASSWORD_FILE"]))
    return values


def read_secret(path: Path) -> str:
    """A password kept in a file (its first line), or a ConfigurationError naming the file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        msg = f"cannot read the password file {path}: {getattr(e, 'strerror', None) or e}"
        raise ConfigurationError(msg) from None
    if not lines or not lines[0]:
        msg = f"the password file {path} is empty"
        raise ConfigurationError(msg)
    return lines[0]


def _flag(name: str, env: Mapping[str, str]) -> bool:
    value = env[name].strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    msg = f"{name} must be true or false, got {env[name]!r}"
    raise ConfigurationError(msg)


def _positive_int(name: str, env: Mapping[str, str]) -> int:
    try:
        value = int(env[name])
    except ValueError:
        msg = f"{name} must be a whole number, got {env[name]!r}"
        raise ConfigurationError(msg) from None
    if value < 1:
        msg = f"{name} must be at least 1, got {value}"
        raise ConfigurationError(msg)
    return value
