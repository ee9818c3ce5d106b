"""The console's local users: names, roles and argon2 password hashes, kept in one file in the
key folder (readable by its owner only), rewritten atomically on every change."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from crm_ledger.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from pathlib import Path

ROLES = ("agent", "analyst", "auditor", "admin")
_NAME = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")
_HASHER = PasswordHasher()
TOKEN_PREFIX = "crml_"
_TOKEN = re.compile(r"^crml_(?P<id>[0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
#: Verified against when a name is unknown, so a missing user costs what a wrong password does.
_DUMMY = _HASHER.hash(secrets.token_hex(16))


@dataclass(frozen=True, slots=True)
class User:
    """A console user (the hash never leaves this module's file)."""

    name: str
    role: str
    disabled: bool = False


class UserFile:
    """Users in ``users.json`` of the key folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, name: str, role: str, password: str) -> User:
        """A new user; refused if the name is taken, the role unknown or the password short."""
        _check(name, role, password)
        users = self._load()
        if name in users:
            raise InvalidInput(f"a user named {name!r} exists already")
        users[name] = {"role": role, "hash": _HASHER.hash(password), "disabled": False}
        self._save(users)
        return User(name, role)

    def passwd(self, name: str, password: str) -> None:
        """Set a user's password."""
        users = self._load()
        record = self._record(users, name)
        _check(name, str(record["role"]), password)
        record["hash"] = _HASHER.hash(password)
        self._save(users)

    def disable(self, name: str) -> None:
        """Stop a user from signing in (their sessions end at the next request)."""
        users = self._load()
        self._record(users, name)["disabled"] = True
        self._save(users)

    def issue_token(self, name: str) -> str:
        """A new API token for user ``name``, acting with their role; only its SHA-256 is
        kept (a token is 256 random bits, so a fast hash is as safe as a slow one for it, and
        checking it costs microseconds per request where argon2 costs tens of milliseconds)."""
        users = self._load()
        record = self._record(users, name)
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        token = f"{TOKEN_PREFIX}{token_id}_{secret}"
        tokens = dict(record.get("tokens") or {})  # type: ignore[call-overload]
        tokens[token_id] = _digest(token)
        record["tokens"] = tokens
        self._save(users)
        return token

    def revoke_tokens(self, name: str) -> int:
        """Revoke every API token of user ``name``; how many there were."""
        users = self._load()
        record = self._record(users, name)
        count = len(record.get("tokens") or {})  # type: ignore[arg-type]
        record["tokens"] = {}
        self._save(users)
        return count

    def by_token(self, token: str) -> User | None:
        """The user an API token belongs to, unless it is unknown, revoked or theirs is
        disabled."""
        match = _TOKEN.match(token)
        if not match:
            return None
        for name, record in self._load().items():
            stored = (record.get("tokens") or {}).get(match["id"])  # type: ignore[attr-defined]
            if stored and hmac.compare_digest(str(stored), _digest(token)):
                return None if record.get("disabled") else self._user(name, record)
        return None

    def every(self) -> list[User]:
        """Every user, by name."""
        return [self._user(n, r) for n, r in sorted(self._load().items())]

    def get(self, name: str) -> User | None:
        """The user called ``name``, if any."""
        record = self._load().get(name)
        return None if record is None else self._user(name, record)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user, if the password is theirs and they are not disabled."""
        record = self._load().get(name)
        try:
            _HASHER.verify(str(record["hash"]) if record else _DUMMY, password)
        except (VerificationError, InvalidHashError):
            return None
        if record is None or record.get("disabled"):
            return None
        return self._user(name, record)

    @staticmethod
    def _user(name: str, record: dict[str, object]) -> User:
        return User(name, str(record["role"]), bool(record.get("disabled")))

    @staticmethod
    def _record(users: dict[str, dict[str, object]], name: str) -> dict[str, object]:
        if name not in users:
            raise NotFound(f"no user named {name!r}")
        return users[name]

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            loaded: dict[str, dict[str, object]] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return loaded

    def _save(self, users: dict[str, dict[str, object]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as f:
            json.dump(users, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check(name: str, role: str, password: str) -> None:
    if not _NAME.match(name):
        raise InvalidInput("a user name is 2 to 32 lowercase letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise InvalidInput(f"the role must be one of {', '.join(ROLES)}, got {role!r}")
    if len(password) < 12:
        raise InvalidInput("a password has at least 12 characters")


__all__ = ["ROLES", "User", "UserFile"]
