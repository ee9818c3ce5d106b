"""Pushing our schemas into a Confluent-compatible schema registry, keeping our ids.

A client of that registry frames each message with the id the registry gives its schema, and
the ledger decodes by our ids, so the ids must be ours: each version missing there is
imported with its id and version (the registry's IMPORT mode, set on the subject for the
call and put back afterwards). A version the registry already holds under another id is an
error: messages framed with it would be dead-lettered by the ledger.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crm_ledger.errors import CrmLedgerError

if TYPE_CHECKING:
    from crm_ledger.adapters.avro import SchemaRegistry, SchemaVersion

MEDIA = "application/vnd.schemaregistry.v1+json"
TIMEOUT_S = 30


class RegistryRefused(CrmLedgerError):
    """The registry said no, or answered something we cannot use."""


@dataclass(frozen=True, slots=True)
class Pushed:
    """One version of one subject: already there with our id, or imported now."""

    subject: str
    version: int
    schema_id: int
    outcome: str


def push(registry: SchemaRegistry, url: str) -> list[Pushed]:
    """Every version of every subject into the registry at ``url``, with our ids."""
    client = _Client(url)
    done = []
    for subject in registry.subjects():
        for version in registry.versions(subject):
            done.append(_push_one(client, version))
    return done


def _push_one(client: _Client, version: SchemaVersion) -> Pushed:
    name = version.full_name
    schema = json.dumps(version.schema)
    status, found = client.call("POST", f"/subjects/{_q(name)}", {"schema": schema})
    if status == 200:
        if found.get("id") != version.schema_id:
            msg = (
                f"{client.url} has {name} version {version.version} under id {found.get('id')}, "
                f"ours is {version.schema_id}: messages framed with its id would be "
                "dead-lettered; remove the subject there, or use a registry of its own"
            )
            raise RegistryRefused(msg)
        return Pushed(name, version.version, version.schema_id, "already there")
    if status != 404:
        raise RegistryRefused(_refusal(client.url, name, status, found))
    _, mode = client.call("GET", f"/mode/{_q(name)}?defaultToGlobal=true")
    previous = str(mode.get("mode") or "READWRITE")
    _expect(client, "PUT", f"/mode/{_q(name)}?force=true", {"mode": "IMPORT"}, name)
    try:
        body = {
            "schema": schema,
            "schemaType": "AVRO",
            "id": version.schema_id,
            "version": version.version,
        }
        _expect(client, "POST", f"/subjects/{_q(name)}/versions", body, name)
    finally:
        _expect(client, "PUT", f"/mode/{_q(name)}?force=true", {"mode": previous}, name)
    return Pushed(name, version.version, version.schema_id, "imported")


def _expect(client: _Client, method: str, path: str, body: dict[str, Any], name: str) -> None:
    status, answer = client.call(method, path, body)
    if status != 200:
        raise RegistryRefused(_refusal(client.url, name, status, answer))


def _refusal(url: str, subject: str, status: int, answer: dict[str, Any]) -> str:
    said = answer.get("message") or answer.get("error") or f"HTTP {status}"
    code = answer.get("error_code")
    return f"{url} refused {subject}: {said}" + (f" (error {code})" if code else "")


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


class _Client:
    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            msg = f"--registry: an http(s) URL such as http://host:8081, got {url!r}"
            raise RegistryRefused(msg)
        self.url = url.rstrip("/")

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": MEDIA, "Accept": MEDIA},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as e:
            return e.code, _json(e.read())
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            msg = f"cannot reach the schema registry at {self.url}: {reason}"
            raise RegistryRefused(msg) from None


def _json(raw: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(raw)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {"answer": answer}
